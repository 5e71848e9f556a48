"""Issue 4 acceptance: source-database edits reach the golden tables through real Debezium.

The demo source database `erp`, a Debezium connector of this module's own (topic prefix and
replication slot), the real worker and sink processes: rows inserted, updated and deleted in
`erp` appear in qms.golden_record and qms.golden_record_history within 10 seconds of their
commit; a calibration disagreement appears in qms.md_conflict; restarting the connector's task
and SIGKILLing the worker mid-stream loses and doubles no version; an event naming a lot the ERP
creates afterwards is parked, then released.

Every entity the tests edit has an id derived from the prefix, so the shared source and sink
databases (other environments' connectors, `make run`) never see the same rows; they are
deleted from the source database at the end.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from connectors.debezium import registration
from connectors.postgres_sink.migrations import migrate
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

#: how long a step may take before it fails outright (a missed change, not a slow one)
STEP_TIMEOUT = 30.0

#: connector registration plus the snapshot of the small demo database, worker start-up and
#: the snapshot's golden records through the sink
START_TIMEOUT = 120.0

#: the killed worker's consumer-group membership expires after this (Faust's default is 60 s,
#: which would make the restart wait a minute for the dead member); short, so the test is too
WORKER_SESSION_TIMEOUT = "10"

#: a deleted connector's task lets go of its replication slot within seconds
SLOT_RELEASE_TIMEOUT = 30.0

#: every table the connector captures; the worker finds the CDC topics at start-up only
CAPTURED = registration.load(registration.ERP_POSTGRES).config["table.include.list"].split(",")

#: latencies measured by the tests, printed at the end of the module
LATENCIES: list[tuple[str, float]] = []


@dataclass
class Environment:
    """The module's connector, worker and sink, and its handles on both databases."""

    settings: Settings
    processes: PipelineProcesses
    connect_url: str
    connector: str
    erp: str  # conninfo of the source database
    dsn: str  # the sink database
    tag: str  # upper-case prefix without the dot, for entity ids
    created: dict[str, list[str]] = field(default_factory=dict)  # table -> ids to delete

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
            " WHERE kind = %s AND entity_id = %s AND kafka_topic LIKE %s",
            kind,
            entity_id,
            self.like,
        )
        return found[0] if found else None

    def history(self, kind: str, entity_id: str) -> list[tuple[Any, ...]]:
        """(version, valid_to is set, source, lsn, fields) per history row, by version."""
        return self.rows(
            "SELECT version, valid_to IS NOT NULL, source, lsn, fields"
            " FROM qms.golden_record_history WHERE kind = %s AND entity_id = %s"
            " AND kafka_topic LIKE %s ORDER BY version",
            kind,
            entity_id,
            self.like,
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


def _kafka_connect(settings: Settings) -> str:
    external = connect_url(settings)
    if external is not None:
        return external
    connect = LocalConnect(settings)
    connect.up(lambda _line: None)
    return connect.url


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
    """Connector (own prefix and slot), topics, migrations, worker and sink, torn down after."""
    erp = make_conninfo(postgres_dsn, dbname=ERP_DATABASE)
    try:
        psycopg.connect(erp, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no demo source database {ERP_DATABASE} beside {postgres_dsn}: {exc}")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=postgres_dsn,
        topic_prefix=prefix,
        sink_batch_size=200,
    )
    url = _kafka_connect(stack_settings)
    create_topics(settings, load_catalog(), echo=lambda _line: None)
    migrate(postgres_dsn, echo=lambda _line: None)
    slot = registration.slot_name(prefix)
    connector = f"{prefix}erp-postgres"
    child_env = {
        **environment(settings, kafka_bootstrap, postgres_dsn),
        "QMSFLOW_TICK_INTERVAL": "1",
        "BROKER_SESSION_TIMEOUT": WORKER_SESSION_TIMEOUT,
        "BROKER_HEARTBEAT_INTERVAL": "1",
    }
    processes = PipelineProcesses(settings, child_env, tmp_path_factory.mktemp("cdc-e2e"))
    environment_ = Environment(
        settings, processes, url, connector, erp, postgres_dsn, prefix.strip(".").upper()
    )
    try:
        registration.register(
            url,
            registration.ERP_POSTGRES,
            {"name": connector, "topic.prefix": settings.topic("cdc.erp"), "slot.name": slot},
        )
        cdc_topics = [settings.topic(f"cdc.erp.{table}") for table in CAPTURED]
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        # the master-data agent subscribes to the CDC topics it finds at start-up
        wait_for(
            lambda: set(cdc_topics) <= set(admin.list_topics(timeout=10).topics),
            timeout=START_TIMEOUT,
            what="the snapshot to create every CDC topic",
        )
        processes.start_worker()
        processes.start_sink()
        group = settings.topic(settings.app_id)
        wait_for(
            lambda: _caught_up(settings, group, cdc_topics),
            timeout=START_TIMEOUT,
            what="the worker to fold the snapshot into golden records",
            alive=processes.assert_alive,
        )
        yield environment_
        # Faust's shutdown waits for ticks fetched before the master-data feed was ready
        # (see tests/integration/test_golden_records.py): stop only once they are consumed
        ticks = [settings.topic("quality.ticks.v1")]
        wait_for(
            lambda: consumed_offsets(settings, group, ticks).get(ticks[0], 0) > 0,
            timeout=STEP_TIMEOUT,
            what="the quality agent to consume ticks",
        )
    finally:
        processes.stop()
        registration.delete(url, connector)
        _drop_slot(make_conninfo(erp, user=CDC_ROLE, password=CDC_PASSWORD), slot)
        with psycopg.connect(erp, autocommit=True) as connection:
            for table, column in _CLEANUP:
                ids = environment_.created.get(table, [])
                if ids:
                    connection.execute(
                        f"delete from {table} where {column} = any(%s)",
                        (ids,),
                    )
        if LATENCIES:
            print(
                "\nchange → golden tables latency: "
                + ", ".join(f"{what} {s:.2f} s" for what, s in LATENCIES)
                + f"; max {max(s for _, s in LATENCIES):.2f} s"
            )


def _caught_up(settings: Settings, group: str, topics: list[str]) -> bool:
    ends = end_offsets(settings, topics)
    done = consumed_offsets(settings, group, topics)
    return all(done.get(topic, 0) >= n for topic, n in ends.items())


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
        env.commit(
            "insert into qms.equipment_status (equipment_id, calibration_status)"
            " values (%s, 'CALIBRATED')",
            equipment,
        )

        def conflicts() -> list[tuple[Any, ...]]:
            return env.rows(
                "SELECT winning_source, winning_value, losing_source, losing_value"
                " FROM qms.md_conflict WHERE kind = 'equipment' AND entity_id = %s"
                " AND kafka_topic LIKE %s ORDER BY detected_at",
                equipment,
                env.like,
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


class TestRestarts:
    def test_connector_restart_and_worker_kill_lose_and_double_nothing(
        self, env: Environment
    ) -> None:
        """Changes made across a connector task restart and a worker SIGKILL: each one version.

        Every changed supplier ends with exactly one history version per committed change,
        versions 1..n without a gap, each opened by a distinct source LSN.
        """
        suppliers = [f"SUP-{env.tag}-R{i}" for i in range(3)]
        updates = 15
        for supplier in suppliers:
            env.remember("erp.supplier", supplier)
        failures: list[BaseException] = []

        def edit() -> None:
            try:
                for supplier in suppliers:
                    env.commit(
                        "insert into erp.supplier (supplier_id, name, country_code)"
                        " values (%s, 'Restart Supplier rev 0', 'DE')",
                        supplier,
                    )
                for revision in range(1, updates + 1):
                    for supplier in suppliers:
                        env.commit(
                            "update erp.supplier set name = %s, updated_at = now()"
                            " where supplier_id = %s",
                            f"Restart Supplier rev {revision}",
                            supplier,
                        )
                    time.sleep(0.8)
            except BaseException as error:  # reported by the test thread
                failures.append(error)

        editing = threading.Thread(target=edit, daemon=True)
        editing.start()
        time.sleep(2.0)
        _restart_connector_task(env)
        time.sleep(2.0)
        worker = env.processes.worker
        assert worker is not None
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        env.processes.start_worker()
        editing.join(60)
        assert not editing.is_alive() and not failures, failures

        expected = updates + 1
        wait_for(
            lambda: all(len(env.history("supplier", s)) >= expected for s in suppliers),
            timeout=START_TIMEOUT,
            what=f"{expected} versions of each restart supplier",
            alive=env.processes.assert_alive,
        )
        time.sleep(3.0)  # a doubled change would arrive within the sink's next batches
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


def _restart_connector_task(env: Environment) -> None:
    """Restart the connector and its task through Connect's REST API; wait until RUNNING."""
    name = env.connector
    code, body = registration.http_transport(
        "POST",
        f"{env.connect_url}/connectors/{name}/restart?includeTasks=true&onlyFailed=false",
        None,
    )
    assert code in (200, 202, 204), (code, body)
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        status = registration.status(env.connect_url, name)
        tasks = [] if status is None else status.get("tasks", [])
        running = status is not None and status["connector"].get("state") == "RUNNING"
        if running and tasks and all(t.get("state") == "RUNNING" for t in tasks):
            return
        assert time.monotonic() < deadline, f"connector {name} not RUNNING again: {status}"
        time.sleep(0.2)


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
