"""Issue 4 acceptance: source-database edits reach the golden tables through real Debezium.

The demo source database `erp`; a Kafka Connect worker process of this module's own (REST port,
group, state topics), running a Debezium connector of its own (topic prefix, replication slot,
publication); the real worker and sink processes. Rows inserted, updated and deleted in `erp`
appear in qms.golden_record and qms.golden_record_history within 10 seconds of their commit; a
calibration disagreement appears in qms.md_conflict; stopping (SIGTERM) and killing (SIGKILL)
the Connect worker and killing the stream worker mid-stream loses and doubles no version; an
event naming a lot the ERP creates afterwards is parked, then released.

The module's own Connect worker is the one killed: the stack's shared worker on 18083 serves
other environments and is never touched. With KAFKA_CONNECT_URL set (a Connect cluster this
test does not own) the connector is registered there and the Connect restart test is skipped.

Every entity the tests edit has an id derived from the prefix, so the shared source and sink
databases (other environments' connectors, `make run`) never see the same rows; they are
deleted from the source database at the end, with the module's topics, slot and publication.
Every wait polls a condition against a deadline; none is a sleep standing in for one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import socket
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from connectors.debezium import registration
from connectors.postgres_sink.migrations import migrate
from connectors.postgres_sink.rows import BINDINGS
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.produce import DemoPublisher
from qmsflow.demo.scenarios import bad_supplier_lot
from qmsflow.kafka.admin import consumed_offsets, create_topics, end_offsets
from qmsflow.settings import Settings
from qmsflow.stack.connect import LocalConnect, connect_url
from qmsflow.stack.postgres import CDC_PASSWORD, CDC_ROLE, ERP_DATABASE
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment, wait_for

pytestmark = pytest.mark.integration

#: the acceptance bound: a committed source change is in the golden tables within this
LATENCY_BOUND = 10.0

#: how long one change may take before the test fails outright (a missed change, not a slow
#: one; the 10 s bound is asserted separately on the measured latencies)
STEP_TIMEOUT = 60.0

#: a cold Connect worker (~70 jars, its state topics), the connector's snapshot of the demo
#: database, worker start-up and the snapshot's golden records through the sink: about a
#: minute alone, several times that beside a full parallel test run on two CPUs
START_TIMEOUT = 300.0

#: a restarted Connect worker rejoins its group (after SIGKILL only once the dead member's
#: 10 s session expired) and restarts the connector from its committed offsets
CONNECT_RESTART_TIMEOUT = 180.0

#: the killed worker's consumer-group membership expires after this (Faust's default is 60 s,
#: which would make the restart wait a minute for the dead member); short, so the test is too
WORKER_SESSION_TIMEOUT = "10"

#: a deleted connector's task lets go of its replication slot within seconds
SLOT_RELEASE_TIMEOUT = 60.0

#: seconds between rounds of source edits in the restart test: slower than Connect's 5 s
#: offset flush would leave nothing to redeliver after a SIGKILL, faster floods the log
EDIT_PACE = 0.5

#: every table the connector captures; the worker finds the CDC topics at start-up only
CAPTURED = registration.load(registration.ERP_POSTGRES).config["table.include.list"].split(",")

#: the master-data topics the sink writes to the golden tables
MD_TOPICS = [b.topic for b in BINDINGS if b.topic.startswith("md.")]

#: latencies measured by the tests, printed at the end of the module
LATENCIES: list[tuple[str, float]] = []


@dataclass
class Environment:
    """The module's Connect worker and connector, stream worker and sink, and both databases."""

    settings: Settings
    processes: PipelineProcesses
    connect: LocalConnect | None  # None: an external Connect cluster, not this test's to stop
    connect_url: str
    connector: str
    erp: str  # conninfo of the source database
    dsn: str  # the sink database
    tag: str  # upper-case prefix without the dot, for entity ids
    created: dict[str, list[str]] = field(default_factory=dict)  # table -> ids to delete

    @property
    def environment(self) -> str:
        """The key of this environment's golden rows: its topic prefix (migration 0011)."""
        return self.settings.topic_prefix

    @property
    def like(self) -> str:
        """LIKE pattern of this environment's topics, for lineage columns."""
        return self.settings.topic_prefix + "%"

    def commit(self, statement: str, *params: Any) -> float:
        """Run one statement on the source database, committed; returns the commit's instant."""
        with psycopg.connect(self.erp, autocommit=True) as connection:
            connection.execute(statement, params)
        return time.monotonic()

    def remember(self, table: str, entity_id: str) -> None:
        """Delete this row from the source database at the end of the module."""
        self.created.setdefault(table, []).append(entity_id)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a query on the sink database."""
        with psycopg.connect(self.dsn) as connection:
            return [tuple(r) for r in connection.execute(query, params).fetchall()]

    def golden(self, kind: str, entity_id: str) -> tuple[Any, ...] | None:
        """(version, fields, deleted, source_system) of this environment's golden record."""
        found = self.rows(
            "SELECT version, fields, deleted, source_system FROM qms.golden_record"
            " WHERE environment = %s AND kind = %s AND entity_id = %s",
            self.environment,
            kind,
            entity_id,
        )
        return found[0] if found else None

    def history(self, kind: str, entity_id: str) -> list[tuple[Any, ...]]:
        """(version, valid_to is set, source, lsn, fields) per history row, by version."""
        return self.rows(
            "SELECT version, valid_to IS NOT NULL, source, lsn, fields"
            " FROM qms.golden_record_history"
            " WHERE environment = %s AND kind = %s AND entity_id = %s ORDER BY version",
            self.environment,
            kind,
            entity_id,
        )

    def within_bound(self, what: str, committed: float, reached: Callable[[], bool]) -> float:
        """Poll until `reached`; record, print and return the latency since `committed`."""
        deadline = committed + STEP_TIMEOUT
        while not reached():
            self.processes.assert_alive()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not in the golden tables {STEP_TIMEOUT:.0f} s after the commit\n"
                    + self.processes.log_tail()
                )
            time.sleep(0.1)
        latency = time.monotonic() - committed
        LATENCIES.append((what, latency))
        print(f"latency {latency:5.2f} s  {what}")
        return latency

    def settled(self) -> bool:
        """The stream worker has consumed every CDC record and the sink every md record.

        Once both hold and no source edit is pending, nothing is in flight: a doubled or a
        missing version would be in the tables by now.
        """
        cdc = [self.settings.topic(f"cdc.erp.{table}") for table in CAPTURED]
        group = self.settings.topic(self.settings.app_id)
        done = consumed_offsets(self.settings, group, cdc)
        if any(done.get(topic, 0) < n for topic, n in end_offsets(self.settings, cdc).items()):
            return False
        md = [self.settings.topic(t) for t in MD_TOPICS]
        sinked = dict(
            self.rows(
                "SELECT topic, sum(next_offset) FROM qms.sink_offsets"
                " WHERE consumer_group = %s AND topic = ANY(%s) GROUP BY topic",
                self.settings.topic(f"{self.settings.app_id}-sink"),
                md,
            )
        )
        return all(sinked.get(topic, 0) >= n for topic, n in end_offsets(self.settings, md).items())

    def connector_running(self) -> bool:
        """The connector and all its tasks report RUNNING on this module's Connect worker."""
        status = registration.status(self.connect_url, self.connector)
        if status is None or status.get("connector", {}).get("state") != "RUNNING":
            return False
        tasks = status.get("tasks", [])
        return bool(tasks) and all(task.get("state") == "RUNNING" for task in tasks)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _drop_slot(conninfo: str, slot: str) -> None:
    deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while True:
            row = connection.execute(
                "select active from pg_replication_slots where slot_name = %s", (slot,)
            ).fetchone()
            if row is None:
                return
            if not row[0]:
                connection.execute("select pg_drop_replication_slot(%s)", (slot,))
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replication slot {slot} still active after the connector")
            time.sleep(0.5)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete the module's topics: its prefix's, and Debezium's heartbeat topic named after it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=30).topics if prefix in t]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # already gone
                future.result()


#: source rows to delete at the end, children before parents (foreign keys)
_CLEANUP = (
    ("erp.batch", "lot_id"),
    ("mes.lot", "lot_id"),
    ("qms.supplier_approval", "supplier_id"),
    ("erp.supplier", "supplier_id"),
    ("plm.customer_spec", "spec_id"),
    ("qms.equipment_status", "equipment_id"),
    ("cmms.asset", "equipment_id"),
)


@pytest.fixture(scope="module")
def env(
    kafka_bootstrap: str,
    postgres_dsn: str,
    stack_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Environment]:
    """Connect worker, connector (own slot and publication), topics, worker and sink."""
    erp = make_conninfo(postgres_dsn, dbname=ERP_DATABASE)
    try:
        psycopg.connect(erp, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no demo source database {ERP_DATABASE} beside {postgres_dsn}: {exc}")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    tag = prefix.strip(".").upper()
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=postgres_dsn,
        topic_prefix=prefix,
        sink_batch_size=200,
    )
    external = connect_url(stack_settings)
    connect = (
        None
        if external is not None
        else LocalConnect(
            settings,
            port=_free_port(),
            home=tmp_path_factory.mktemp("connect"),
            group_id=settings.topic("connect"),
            storage_topic_prefix=settings.topic("connect-"),
        )
    )
    url = connect.url if connect is not None else external or ""
    slot = registration.slot_name(prefix)
    publication = f"qmsflow_cdc_{tag.lower()}"
    connector = f"{prefix}erp-postgres"
    child_env = {
        **environment(settings, kafka_bootstrap, postgres_dsn),
        "QMSFLOW_TICK_INTERVAL": "1",
        "BROKER_SESSION_TIMEOUT": WORKER_SESSION_TIMEOUT,
        "BROKER_HEARTBEAT_INTERVAL": "1",
    }
    processes = PipelineProcesses(settings, child_env, tmp_path_factory.mktemp("cdc-e2e"))
    environment_ = Environment(settings, processes, connect, url, connector, erp, postgres_dsn, tag)
    cdc_role = make_conninfo(erp, user=CDC_ROLE, password=CDC_PASSWORD)
    # each clean-up is registered as its resource appears and runs even when another fails
    # (last in, first out): a failed step must not leave a JVM, slot or topics behind
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_report_latencies)
        cleanup.callback(_delete_topics, kafka_bootstrap, prefix)
        cleanup.callback(_delete_source_rows, erp, environment_.created)
        create_topics(settings, load_catalog(), echo=lambda _line: None)
        migrate(postgres_dsn, echo=lambda _line: None)
        # the tables' owner (the sink's role) may publish them; the connector's own publication
        # keeps the shared one (`make run`'s connector) out of this module's hands
        with psycopg.connect(erp, autocommit=True) as connection:
            connection.execute(
                sql.SQL("create publication {} for table {}").format(
                    sql.Identifier(publication),
                    sql.SQL(", ").join(sql.Identifier(*table.split(".")) for table in CAPTURED),
                )
            )
        cleanup.callback(_drop_publication, erp, publication)
        cleanup.callback(_drop_slot, cdc_role, slot)  # once no task holds it
        if connect is not None:
            cleanup.callback(connect.down, lambda _line: None)
            connect.up(lambda _line: None)
        cleanup.callback(_delete_connector, environment_)
        registration.register(
            url,
            registration.ERP_POSTGRES,
            {
                "name": connector,
                "topic.prefix": settings.topic("cdc.erp"),
                "slot.name": slot,
                "publication.name": publication,
            },
            timeout=START_TIMEOUT,
        )
        cdc_topics = [settings.topic(f"cdc.erp.{table}") for table in CAPTURED]
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        # the master-data agent subscribes to the CDC topics it finds at start-up
        wait_for(
            lambda: set(cdc_topics) <= set(admin.list_topics(timeout=10).topics),
            timeout=START_TIMEOUT,
            what="the snapshot to create every CDC topic",
        )
        cleanup.callback(processes.stop)
        processes.start_worker()
        processes.start_sink()
        wait_for(
            environment_.settled,
            timeout=START_TIMEOUT,
            what="the worker to fold the snapshot into golden records, and the sink to store them",
            alive=processes.assert_alive,
        )
        yield environment_
        # Faust's shutdown waits for ticks fetched before the master-data feed was ready
        # (see tests/integration/test_golden_records.py): stop only once they are consumed
        ticks = [settings.topic("quality.ticks.v1")]
        group = settings.topic(settings.app_id)
        wait_for(
            lambda: consumed_offsets(settings, group, ticks).get(ticks[0], 0) > 0,
            timeout=STEP_TIMEOUT,
            what="the quality agent to consume ticks",
        )


def _delete_connector(env: Environment) -> None:
    """Delete the module's connector, unless its own Connect worker is not running."""
    if env.connect is None or env.connect.running_pid() is not None:
        registration.delete(env.connect_url, env.connector)


def _drop_publication(erp: str, publication: str) -> None:
    with psycopg.connect(erp, autocommit=True) as connection:
        connection.execute(
            sql.SQL("drop publication if exists {}").format(sql.Identifier(publication))
        )


def _delete_source_rows(erp: str, created: dict[str, list[str]]) -> None:
    with psycopg.connect(erp, autocommit=True) as connection:
        for table, column in _CLEANUP:
            ids = created.get(table, [])
            if ids:
                connection.execute(f"delete from {table} where {column} = any(%s)", (ids,))


def _report_latencies() -> None:
    if LATENCIES:
        print(
            "\nchange → golden tables latency: "
            + ", ".join(f"{what} {s:.2f} s" for what, s in LATENCIES)
            + f"; max {max(s for _, s in LATENCIES):.2f} s"
        )


class TestSourceChanges:
    def test_inserts_updates_and_deletes_reach_the_golden_tables_within_10_s(
        self, env: Environment
    ) -> None:
        """Each committed insert, update and delete is in golden record and history in 10 s."""
        supplier = f"SUP-{env.tag}"
        lot = f"L{env.tag}-A"
        spec = f"CS-{env.tag}"
        env.remember("erp.supplier", supplier)
        env.remember("erp.batch", lot)
        env.remember("plm.customer_spec", spec)

        at = env.commit(
            "insert into erp.supplier (supplier_id, name, country_code, asl_status, address)"
            " values (%s, 'Ballina Medical Plastics', 'IE', 'APPROVED', 'Ballina, Co. Mayo')",
            supplier,
        )
        env.within_bound(
            "insert erp.supplier → supplier v1",
            at,
            lambda: (
                (g := env.golden("supplier", supplier)) is not None
                and g[0] == 1
                and [h[0] for h in env.history("supplier", supplier)] == [1]
            ),
        )
        golden = env.golden("supplier", supplier)
        assert golden is not None
        assert golden[1]["approval_status"] == "APPROVED" and golden[3] == "ERP"

        at = env.commit(
            "update erp.supplier set asl_status = 'CONDITIONAL', updated_at = now()"
            " where supplier_id = %s",
            supplier,
        )
        env.within_bound(
            "update erp.supplier.asl_status → supplier v2",
            at,
            lambda: (
                (g := env.golden("supplier", supplier)) is not None
                and g[0] == 2
                and [(h[0], h[1]) for h in env.history("supplier", supplier)]
                == [(1, True), (2, False)]
            ),
        )
        golden = env.golden("supplier", supplier)
        assert golden is not None and golden[1]["approval_status"] == "CONDITIONAL"

        at = env.commit(
            "insert into erp.batch (lot_id, part_number, product_line, plant, supplier_id,"
            " stock_status, manufactured_at) values (%s, 'PN-20311-D', 'catheters', 'CORK2',"
            " %s, 'QUARANTINE', now())",
            lot,
            supplier,
        )
        env.within_bound(
            "insert erp.batch → lot v1",
            at,
            lambda: (
                (g := env.golden("lot", lot)) is not None
                and g[0] == 1
                and len(env.history("lot", lot)) == 1
            ),
        )
        golden = env.golden("lot", lot)
        assert golden is not None and golden[1]["status"] == "QUARANTINE"

        env.commit(
            "insert into plm.customer_spec (spec_id, customer, part_number, characteristic,"
            " lower_limit, upper_limit, unit, revision) values (%s, 'Northside Hospital Group',"
            " 'PN-20311-D', 'burst pressure', 2.5, 4.0, 'bar', 'A')",
            spec,
        )
        wait_for(
            lambda: (g := env.golden("customer_spec", spec)) is not None and g[0] == 1,
            timeout=STEP_TIMEOUT,
            what=f"customer spec {spec} v1",
            alive=env.processes.assert_alive,
        )
        at = env.commit("delete from plm.customer_spec where spec_id = %s", spec)
        env.within_bound(
            "delete plm.customer_spec → golden deleted",
            at,
            lambda: (
                (g := env.golden("customer_spec", spec)) is not None
                and g[2] is True
                and [(h[0], h[1]) for h in env.history("customer_spec", spec)] == [(1, True)]
            ),
        )
        golden = env.golden("customer_spec", spec)
        assert golden is not None and golden[1] is None and golden[0] == 2

        assert all(s <= LATENCY_BOUND for _, s in LATENCIES), LATENCIES


class TestConflicts:
    def test_cmms_and_qms_disagreeing_on_calibration_is_a_conflict_row(
        self, env: Environment
    ) -> None:
        """CMMS CALIBRATED against QMS OUT_OF_TOLERANCE lands in qms.md_conflict; CMMS wins."""
        equipment = f"EQ-{env.tag}"
        env.remember("cmms.asset", equipment)
        env.remember("qms.equipment_status", equipment)
        env.commit(
            "insert into cmms.asset (equipment_id, description, site, calibration_status,"
            " calibration_due) values (%s, 'torque analyser', 'CORK2', 'CALIBRATED',"
            " current_date + 180)",
            equipment,
        )
        # one source at a time: the worker reads the CMMS and QMS topics in no fixed order
        # between them, and the versions asserted below follow the order they are applied in
        wait_for(
            lambda: (g := env.golden("equipment", equipment)) is not None and g[0] == 1,
            timeout=STEP_TIMEOUT,
            what=f"equipment {equipment} v1",
            alive=env.processes.assert_alive,
        )
        qms_topic = env.settings.topic("cdc.erp.qms.equipment_status")
        before = end_offsets(env.settings, [qms_topic]).get(qms_topic, 0)
        env.commit(
            "insert into qms.equipment_status (equipment_id, calibration_status)"
            " values (%s, 'CALIBRATED')",
            equipment,
        )

        def conflicts() -> list[tuple[Any, ...]]:
            return env.rows(
                "SELECT winning_source, winning_value, losing_source, losing_value"
                " FROM qms.md_conflict WHERE environment = %s AND kind = 'equipment'"
                " AND entity_id = %s ORDER BY detected_at",
                env.environment,
                equipment,
            )

        # the agreeing QMS row captured, folded and everything it produced stored: only then
        # does "no conflict row" mean the agent reported none
        wait_for(
            lambda: (
                end_offsets(env.settings, [qms_topic]).get(qms_topic, 0) > before and env.settled()
            ),
            timeout=STEP_TIMEOUT,
            what="the agreeing QMS calibration status to be captured, folded and stored",
            alive=env.processes.assert_alive,
        )
        assert conflicts() == [], "agreeing sources are no conflict"

        at = env.commit(
            "update qms.equipment_status set calibration_status = 'OUT_OF_TOLERANCE',"
            " investigation_id = 'INV-2207', updated_at = now() where equipment_id = %s",
            equipment,
        )
        env.within_bound(
            "update qms.equipment_status → md_conflict",
            at,
            lambda: conflicts() == [("CMMS", "CALIBRATED", "QMS", "OUT_OF_TOLERANCE")],
        )
        golden = env.golden("equipment", equipment)
        assert golden is not None
        assert (golden[0], golden[1]["calibration_status"]) == (1, "CALIBRATED")

        at = env.commit(
            "update cmms.asset set calibration_status = 'DUE', updated_at = now()"
            " where equipment_id = %s",
            equipment,
        )
        env.within_bound(
            "update cmms.asset → equipment v2 + md_conflict",
            at,
            lambda: (
                len(conflicts()) == 2
                and (g := env.golden("equipment", equipment)) is not None
                and g[0] == 2
            ),
        )
        assert conflicts()[1] == ("CMMS", "DUE", "QMS", "OUT_OF_TOLERANCE")


@dataclass
class SupplierEditor:
    """Commits rounds of source edits from a thread until stopped: one update per supplier.

    `rounds` counts the rounds committed so far; after `stop()`, each supplier has had one
    insert and exactly `rounds` updates, each changing its name (so each is a new version).
    """

    env: Environment
    suppliers: list[str]
    rounds: int = 0
    failure: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Insert the suppliers, then update them every EDIT_PACE seconds in a thread."""
        self._thread = threading.Thread(target=self._run, name="supplier-editor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for supplier in self.suppliers:
                self.env.commit(
                    "insert into erp.supplier (supplier_id, name, country_code)"
                    " values (%s, 'Restart Supplier rev 0', 'DE')",
                    supplier,
                )
            while not self._stop.is_set():
                revision = self.rounds + 1
                for supplier in self.suppliers:
                    self.env.commit(
                        "update erp.supplier set name = %s, updated_at = now()"
                        " where supplier_id = %s",
                        f"Restart Supplier rev {revision}",
                        supplier,
                    )
                self.rounds = revision
                self._stop.wait(EDIT_PACE)
        except BaseException as error:  # reported by the test thread
            self.failure = error

    def wait_rounds(self, more: int, what: str) -> None:
        """Wait until `more` further rounds are committed (the source keeps changing)."""
        target = self.rounds + more
        wait_for(
            lambda: self.rounds >= target or self.failure is not None,
            timeout=STEP_TIMEOUT,
            what=f"{more} rounds of source edits {what}",
        )
        assert self.failure is None, self.failure

    def halt(self) -> None:
        """Let the thread end after its current round, without waiting for it."""
        self._stop.set()

    def stop(self) -> int:
        """Stop after the current round; return the rounds committed."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(STEP_TIMEOUT)
        assert not self._thread.is_alive(), "the editing thread did not stop"
        assert self.failure is None, self.failure
        return self.rounds


def _cdc_changes(
    env: Environment, table: str, key: str, ids: set[str]
) -> list[tuple[str, int, int]]:
    """(id, LSN, offset) of every change of `ids` on a one-partition CDC topic, in order."""
    topic = env.settings.topic(f"cdc.erp.{table}")
    found = []
    for offset, raw_key, raw_value in _read_topic(env.settings, topic):
        if raw_key is None or raw_value is None:
            continue
        row_id = json.loads(raw_key).get(key)
        if row_id in ids:
            found.append((row_id, int(json.loads(raw_value)["source"]["lsn"]), offset))
    return found


def _history_records(env: Environment, ids: set[str]) -> Counter[tuple[str, int, bool]]:
    """How often each (id, version, closing) SCD-2 record is on md.history.v1."""
    codec = AvroCodec(open_registry(env.settings))
    seen: Counter[tuple[str, int, bool]] = Counter()
    for _, _, raw_value in _read_topic(env.settings, env.settings.topic("md.history.v1")):
        if raw_value is None:
            continue
        row = codec.decode(raw_value, "md.history.v1-value").record
        if row["entity_id"] in ids:
            seen[(row["entity_id"], row["version"], row["valid_to"] is not None)] += 1
    return seen


def _read_topic(settings: Settings, topic: str) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """Every (offset, key, value) on `topic` up to its current end, all partitions from 0."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.topic("cdc-e2e-reader"),
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        reached: dict[int, int] = {}
        deadline = time.monotonic() + STEP_TIMEOUT
        while any(reached.get(p, 0) < end for p, end in ends.items() if end > 0):
            assert time.monotonic() < deadline, f"could not read {topic} to {ends}"
            for message in consumer.consume(500, 1.0):
                if message.error() is not None:
                    continue
                reached[message.partition() or 0] = (message.offset() or 0) + 1
                yield message.offset() or 0, message.key(), message.value()
    finally:
        consumer.close()


class TestRestarts:
    def test_connect_and_worker_restarts_lose_and_double_nothing(
        self, env: Environment, request: pytest.FixtureRequest
    ) -> None:
        """Across a Connect SIGTERM, a Connect SIGKILL and a worker SIGKILL: each change once.

        The source keeps changing throughout, also while a process is down. Every changed
        supplier ends with exactly one history version per committed change, versions 1..n
        without a gap, each opened by a distinct source LSN that the CDC topic holds.
        """
        connect = env.connect
        if connect is None:
            pytest.skip("KAFKA_CONNECT_URL names a Connect cluster this test must not stop")
        suppliers = [f"SUP-{env.tag}-R{i}" for i in range(3)]
        for supplier in suppliers:
            env.remember("erp.supplier", supplier)
        editor = SupplierEditor(env, suppliers)
        request.addfinalizer(editor.halt)  # a failed test must not leave the thread editing
        cdc_topic = env.settings.topic("cdc.erp.erp.supplier")

        def cdc_end() -> int:
            return end_offsets(env.settings, [cdc_topic]).get(cdc_topic, 0)

        def flowing(what: str) -> None:
            """Every round committed so far has reached the golden history."""
            wanted = 1 + editor.rounds
            wait_for(
                lambda: all(len(env.history("supplier", s)) >= wanted for s in suppliers),
                timeout=CONNECT_RESTART_TIMEOUT,
                what=f"{wanted} versions of each restart supplier {what}",
                alive=env.processes.assert_alive,
            )

        def restart_connect(what: str) -> None:
            connect.up(lambda _line: None)
            wait_for(
                env.connector_running,
                timeout=CONNECT_RESTART_TIMEOUT,
                what=f"the connector RUNNING again after {what}",
            )

        editor.start()
        editor.wait_rounds(2, "before any restart")
        flowing("before any restart")

        # 1. Connect stopped cleanly: its task commits its offsets on the way down
        stopped_at = time.monotonic()
        clean = connect.down(lambda _line: None)
        stopped_end = cdc_end()  # what Connect wrote before its stop
        print(f"\nConnect SIGTERM: stopped {'cleanly' if clean else 'only by SIGKILL'}", end="")
        editor.wait_rounds(3, "while Connect is stopped")
        restart_connect("SIGTERM")
        flowing("after the Connect SIGTERM")
        print(f"; changes flowing again {time.monotonic() - stopped_at:.1f} s after the stop")

        # 2. Connect killed: no task stop, no offset commit; it resends from its last flush
        killed_at = time.monotonic()
        assert connect.kill() is not None
        killed_end = cdc_end()
        editor.wait_rounds(3, "while Connect is dead")
        restart_connect("SIGKILL")
        flowing("after the Connect SIGKILL")
        print(f"Connect SIGKILL: changes flowing again after {time.monotonic() - killed_at:.1f} s")

        # 3. the stream worker killed: its uncommitted CDC records are folded again
        killed_at = time.monotonic()
        worker = env.processes.worker
        assert worker is not None
        worker.send_signal(signal.SIGKILL)
        worker.wait(STEP_TIMEOUT)
        editor.wait_rounds(2, "while the worker is dead")
        env.processes.start_worker()
        editor.wait_rounds(2, "after the worker restart")
        updates = editor.stop()
        expected = updates + 1
        flowing("after the worker SIGKILL")
        print(f"worker SIGKILL: all {expected} versions after {time.monotonic() - killed_at:.1f} s")

        wait_for(
            env.settled,
            timeout=CONNECT_RESTART_TIMEOUT,
            what="every CDC record folded and every md record stored",
            alive=env.processes.assert_alive,
        )
        for supplier in suppliers:
            history = env.history("supplier", supplier)
            versions = [h[0] for h in history]
            lsns = [h[3] for h in history]
            assert versions == list(range(1, expected + 1)), (supplier, versions)
            assert len(set(lsns)) == len(lsns) == expected, (supplier, lsns)
            assert [h[1] for h in history] == [True] * updates + [False]
            assert history[-1][4]["name"] == f"Restart Supplier rev {updates}"
            golden = env.golden("supplier", supplier)
            assert golden is not None and golden[0] == expected
            assert golden[1]["name"] == f"Restart Supplier rev {updates}"

        # the source side: every committed change is on the CDC topic (Connect lost nothing);
        # copies beyond one are Connect's redeliveries, which the agent absorbed
        changes = _cdc_changes(env, "erp.supplier", "supplier_id", set(suppliers))
        for supplier in suppliers:
            lsns = sorted({lsn for (s, lsn, _) in changes if s == supplier})
            assert lsns == sorted(h[3] for h in env.history("supplier", supplier)), supplier
        first: set[tuple[str, int]] = set()
        redelivered: Counter[str] = Counter()
        for supplier, lsn, offset in changes:
            if (supplier, lsn) in first:
                after = "SIGKILL" if offset >= killed_end else "SIGTERM"
                redelivered[after if offset >= stopped_end else "no restart"] += 1
            first.add((supplier, lsn))
        published = _history_records(env, set(suppliers))
        print(
            f"{len(suppliers)} suppliers × (1 insert + {updates} updates) ="
            f" {expected * len(suppliers)} changes:"
            f" {len(changes)} CDC records (redelivered: {dict(redelivered) or 0}),"
            f" {sum(published.values())} md.history.v1 records"
            f" ({sum(published.values()) - len(published)} republished),"
            f" {expected * len(suppliers)} history rows"
        )


class TestLateLot:
    def test_an_event_on_a_lot_created_later_is_parked_then_released(
        self, env: Environment
    ) -> None:
        """A nonconformance naming an unknown lot parks; INSERT into erp.batch releases it."""
        lot = f"L{env.tag}-LATE"
        env.remember("erp.batch", lot)
        seed = zlib.crc32(env.settings.topic_prefix.encode())
        scenario = bad_supplier_lot(seed, datetime.now(UTC) - timedelta(hours=1))
        template = next(r for r in scenario.trouble if r.topic == "qms.nonconformance.v1")
        event = copy.deepcopy(template)
        event.record.update(lot_id=lot, event_id=str(uuid.uuid4()))
        event.record["payload"]["affected_lots"] = [lot]
        event_id = event.record["event_id"]
        DemoPublisher(env.settings).events([event])

        def statuses() -> set[str]:
            return {
                r[0]
                for r in env.rows(
                    "SELECT status FROM qms.parked_event WHERE event_id = %s::uuid"
                    " AND kafka_topic LIKE %s",
                    event_id,
                    env.like,
                )
            }

        wait_for(
            lambda: "PARKED" in statuses(),
            timeout=START_TIMEOUT,
            what=f"event {event_id} on unknown lot {lot} to be parked",
            alive=env.processes.assert_alive,
        )
        assert statuses() == {"PARKED"}

        at = env.commit(
            "insert into erp.batch (lot_id, part_number, product_line, plant, supplier_id,"
            " stock_status, manufactured_at) values (%s, %s, %s, %s, %s, 'RELEASED', now())",
            lot,
            scenario.part_number,
            scenario.product_line,
            event.record["site"],
            scenario.supplier_id,
        )
        env.within_bound(
            "insert erp.batch → parked event RELEASED",
            at,
            lambda: statuses() == {"PARKED", "RELEASED"},
        )
        wait_for(
            lambda: (
                env.rows(
                    "SELECT count(*) FROM qms.quality_event WHERE event_id = %s::uuid"
                    " AND kafka_topic LIKE %s",
                    event_id,
                    env.like,
                )
                == [(1,)]
            ),
            timeout=STEP_TIMEOUT,
            what=f"the released event {event_id} in qms.quality_event",
            alive=env.processes.assert_alive,
        )


def test_latencies_are_reported(env: Environment, capsys: pytest.CaptureFixture[str]) -> None:
    """Every measured change → golden-tables latency is within the 10 s bound."""
    assert LATENCIES, "no latency measured"
    with capsys.disabled():
        for what, seconds in LATENCIES:
            print(f"\n  {seconds:5.2f} s  {what}", end="")
        print()
    assert max(s for _, s in LATENCIES) <= LATENCY_BOUND
