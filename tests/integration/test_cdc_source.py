"""Debezium streams the demo plant database into cdc.erp.<schema>.<table> as JSON envelopes.

The database holds one schema per source system (erp, plm, mes, cmms, qms, hr, lms, portal);
the last test folds the snapshot of every captured table into golden records.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from connectors.debezium import registration
from qmsflow.demo.traffic import PLANT
from qmsflow.quality.cdc import ChangeEvent, parse_change
from qmsflow.quality.golden_record import (
    Conflict,
    EntityKind,
    GoldenState,
    apply_change,
    entity_of,
    golden_to_customer_spec,
    golden_to_employee,
    golden_to_equipment,
    golden_to_lot,
    golden_to_part,
    golden_to_supplier,
    load_survivorship_rules,
)
from qmsflow.settings import Settings
from qmsflow.stack.connect import LocalConnect, connect_url
from qmsflow.stack.postgres import CDC_PASSWORD, CDC_ROLE, ERP_DATABASE

pytestmark = pytest.mark.integration

#: a snapshot of the small demo database and the first change arrive within seconds
ARRIVAL_TIMEOUT = 60.0

#: a deleted connector's task lets go of its replication slot within seconds
SLOT_RELEASE_TIMEOUT = 30.0

#: Debezium's marks of a table's last snapshot row, and of the whole snapshot's last row
SNAPSHOT_ENDS = frozenset({"last_in_data_collection", "last"})

#: every table the connector captures, `<schema>.<table>`, as the connector file lists them
CAPTURED = registration.load(registration.ERP_POSTGRES).config["table.include.list"].split(",")

#: the md.* datum of each kind, to prove a golden record is complete
ADAPTERS: dict[EntityKind, Callable[[GoldenState], dict[str, Any]]] = {
    "supplier": golden_to_supplier,
    "part": golden_to_part,
    "lot": golden_to_lot,
    "equipment": golden_to_equipment,
    "employee": golden_to_employee,
    "customer_spec": golden_to_customer_spec,
}

#: the disagreements erp_seed.sql plants on purpose: (kind, entity, field, winner, loser)
SEEDED_CONFLICTS = {
    ("supplier", "SUP-0128", "approval_status", ("QMS", "CONDITIONAL"), ("ERP", "APPROVED")),
    (
        "equipment",
        "EQ-PH-METER-07",
        "calibration_status",
        ("CMMS", "CALIBRATED"),
        ("QMS", "OUT_OF_TOLERANCE"),
    ),
}


@pytest.fixture(scope="module")
def kafka_connect(
    kafka_bootstrap: str, postgres_dsn: str, stack_settings: Settings, pytestconfig: pytest.Config
) -> Iterator[str]:
    """The Connect REST URL: KAFKA_CONNECT_URL, else the local worker, started if needed."""
    external = connect_url(stack_settings)
    if external is not None:
        yield external
        return
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def echo(line: str) -> None:
        # past pytest's capture: the first jar fetch takes half a minute and should show
        if capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    connect = LocalConnect(stack_settings)
    connect.up(echo)
    yield connect.url


@dataclass(frozen=True)
class Received:
    """One record read from a CDC topic, raw as the broker holds it."""

    topic: str
    partition: int
    offset: int
    raw_key: bytes | None
    raw_value: bytes | None

    @property
    def key(self) -> Any:
        """The decoded key: the row's primary-key columns."""
        return None if self.raw_key is None else json.loads(self.raw_key)

    @property
    def value(self) -> Any:
        """The decoded envelope, or None for a tombstone."""
        return None if self.raw_value is None else json.loads(self.raw_value)


@dataclass
class ErpCdc:
    """One connector of this test: its topics, its own supplier row and the source database.

    `entities_before` holds the ids of every golden-record source table just before the
    connector was registered: the entities the snapshot must contain, unless another test
    sharing the source database deletes them meanwhile.
    """

    bootstrap: str
    prefix: str
    erp_conninfo: str
    supplier_id: str
    entities_before: dict[EntityKind, set[str]]

    def topic(self, table: str) -> str:
        """The CDC topic of a `<schema>.<table>`: `<prefix>cdc.erp.<schema>.<table>`."""
        return f"{self.prefix}cdc.erp.{table}"

    def execute(self, statement: str, *params: Any) -> None:
        """Run one statement on the source database, committed."""
        with psycopg.connect(self.erp_conninfo, autocommit=True) as connection:
            connection.execute(statement, params)

    def consume_until(
        self, tables: str | list[str], done: Callable[[list[Received]], bool]
    ) -> list[Received]:
        """Read the tables' topics from the start until `done` holds for what was read."""
        topics = [self.topic(t) for t in ([tables] if isinstance(tables, str) else tables)]
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.prefix}cdc-test-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                # the topics appear once the snapshot starts; find them within a second
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        records: list[Received] = []
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        try:
            consumer.subscribe(topics)
            while not done(records):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"expected the awaited records on {topics} within "
                        f"{ARRIVAL_TIMEOUT:.0f} s; got {len(records)}: "
                        f"{Counter(r.topic for r in records)}"
                    )
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        continue
                    pytest.fail(f"consuming {topics}: {error}")
                records.append(
                    Received(
                        topic=message.topic() or "",
                        partition=message.partition() or 0,
                        offset=message.offset() or 0,
                        raw_key=message.key(),
                        raw_value=message.value(),
                    )
                )
        finally:
            consumer.close()
        return records

    def entities(self) -> dict[EntityKind, set[str]]:
        """The ids of every golden-record source table, by kind, now."""
        return _source_entities(self.erp_conninfo)


def _source_entities(conninfo: str) -> dict[EntityKind, set[str]]:
    found: dict[EntityKind, set[str]] = {}
    with psycopg.connect(conninfo) as connection:
        for source in load_survivorship_rules().sources:
            query = sql.SQL("select {} from {}").format(
                sql.Identifier(source.id_column),
                sql.Identifier(source.system.lower(), source.table),
            )
            ids = {str(row[0]) for row in connection.execute(query)}
            found.setdefault(source.kind, set()).update(ids)
    return found


def _drop_slot(conninfo: str, slot: str) -> None:
    """Drop the test's replication slot once its connector has let go of it."""
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
                pytest.fail(f"replication slot {slot} still active {SLOT_RELEASE_TIMEOUT:.0f} s")
            time.sleep(0.5)


@pytest.fixture
def erp_cdc(
    kafka_connect: str, kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str
) -> Iterator[ErpCdc]:
    """A connector on the erp database with this test's topic prefix and slot, torn down after.

    The test's own erp.supplier row is inserted first, so it is part of the snapshot.
    """
    erp = make_conninfo(postgres_dsn, dbname=ERP_DATABASE)
    cdc_role = make_conninfo(erp, user=CDC_ROLE, password=CDC_PASSWORD)
    try:
        psycopg.connect(erp, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no demo source database {ERP_DATABASE} beside {postgres_dsn}: {exc}")
    cdc = ErpCdc(
        bootstrap=kafka_bootstrap,
        prefix=topic_prefix,
        erp_conninfo=erp,
        supplier_id=f"SUP-T{topic_prefix.strip('.').upper()}",
        entities_before={},
    )
    cdc.execute(
        "insert into erp.supplier (supplier_id, name, country_code, address) "
        "values (%s, %s, %s, %s)",
        cdc.supplier_id,
        "Test Moulding Ltd",
        "IE",
        "Unit 1, Test Park",
    )
    cdc.entities_before = _source_entities(erp)
    slot = registration.slot_name(topic_prefix)
    name = f"{topic_prefix}erp-postgres"
    try:
        registration.register(
            kafka_connect,
            registration.ERP_POSTGRES,
            {"name": name, "topic.prefix": f"{topic_prefix}cdc.erp", "slot.name": slot},
        )
        yield cdc
    finally:
        registration.delete(kafka_connect, name)
        _drop_slot(cdc_role, slot)
        cdc.execute("delete from erp.supplier where supplier_id = %s", cdc.supplier_id)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(topic_prefix)]
        topics += [f"__debezium-heartbeat.{topic_prefix}cdc.erp"]
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [t for t in topics if t in existing]
        if doomed:
            for future in admin.delete_topics(doomed).values():
                future.result(timeout=30)


def _ours(supplier_id: str) -> Callable[[Received], bool]:
    return lambda record: record.key == {"supplier_id": supplier_id}


class TestSnapshot:
    def test_existing_rows_arrive_as_reads(self, erp_cdc: ErpCdc) -> None:
        """Rows present when the connector starts arrive with op "r", keyed by primary key."""
        records = erp_cdc.consume_until(
            "erp.supplier", lambda seen: any(map(_ours(erp_cdc.supplier_id), seen))
        )

        by_key = {json.dumps(r.key): r.value for r in records}
        ours = by_key[json.dumps({"supplier_id": erp_cdc.supplier_id})]
        seeded = by_key.get(json.dumps({"supplier_id": "SUP-0017"}))
        assert ours["op"] == "r"
        assert ours["before"] is None
        assert ours["after"]["name"] == "Test Moulding Ltd"
        assert (ours["source"]["schema"], ours["source"]["table"]) == ("erp", "supplier")
        assert seeded is not None and seeded["op"] == "r"
        assert seeded["after"]["name"] == "Corrib Precision Moulding"
        assert ours["source"]["lsn"] > 0 and ours["ts_ms"] > 0

    def test_every_captured_table_has_its_topic(self, erp_cdc: ErpCdc) -> None:
        """Each table <schema>.<table> is snapshotted into <prefix>cdc.erp.<schema>.<table>."""
        records = erp_cdc.consume_until(CAPTURED, _snapshot_complete(erp_cdc))

        topics = {r.topic for r in records}
        assert topics == {erp_cdc.topic(t) for t in CAPTURED}
        for record in records:
            if record.value is None:  # another test deleted a row of its own meanwhile
                continue
            source = record.value["source"]
            assert record.topic == erp_cdc.topic(f"{source['schema']}.{source['table']}")


class TestChanges:
    def test_update_carries_full_before_and_after(self, erp_cdc: ErpCdc) -> None:
        """An UPDATE arrives as op "u" whose before and after hold every column."""
        erp_cdc.consume_until(
            "erp.supplier", lambda seen: any(map(_ours(erp_cdc.supplier_id), seen))
        )
        erp_cdc.execute(
            "update erp.supplier set asl_status = 'DISQUALIFIED', updated_at = now() "
            "where supplier_id = %s",
            erp_cdc.supplier_id,
        )

        records = erp_cdc.consume_until(
            "erp.supplier",
            lambda seen: any(
                _ours(erp_cdc.supplier_id)(r) and r.value is not None and r.value["op"] == "u"
                for r in seen
            ),
        )

        update = next(
            r.value
            for r in records
            if _ours(erp_cdc.supplier_id)(r) and r.value and r.value["op"] == "u"
        )
        columns = {"supplier_id", "name", "country_code", "asl_status", "address", "updated_at"}
        assert set(update["before"]) == columns == set(update["after"])
        assert update["before"]["asl_status"] == "APPROVED"
        assert update["after"]["asl_status"] == "DISQUALIFIED"
        assert update["before"]["address"] == update["after"]["address"] == "Unit 1, Test Park"
        assert isinstance(update["source"]["lsn"], int) and update["ts_ms"] > 0

    def test_delete_is_followed_by_a_tombstone(self, erp_cdc: ErpCdc) -> None:
        """A DELETE arrives as op "d" with the full row in before, then a null-valued tombstone."""
        erp_cdc.consume_until(
            "erp.supplier", lambda seen: any(map(_ours(erp_cdc.supplier_id), seen))
        )
        erp_cdc.execute("delete from erp.supplier where supplier_id = %s", erp_cdc.supplier_id)

        records = erp_cdc.consume_until(
            "erp.supplier",
            lambda seen: any(_ours(erp_cdc.supplier_id)(r) and r.value is None for r in seen),
        )

        ours = [r.value for r in records if _ours(erp_cdc.supplier_id)(r)]
        assert [v["op"] if v is not None else None for v in ours] == ["r", "d", None]
        delete = ours[1]
        assert delete["after"] is None
        assert delete["before"]["name"] == "Test Moulding Ltd"
        assert delete["before"]["country_code"] == "IE"
        assert delete["source"]["lsn"] > 0 and delete["ts_ms"] > 0


def _snapshot_complete(cdc: ErpCdc) -> Callable[[list[Received]], bool]:
    """Whether every captured table's snapshot has arrived, to its last row.

    Debezium marks a table's last snapshot row `source.snapshot=last_in_data_collection` (the
    whole snapshot's last row `last`), and a topic keeps its order: once the marker is read,
    the table's snapshot is. Not a count of rows taken beforehand: tests sharing the source
    database insert and delete rows of their own while this snapshot runs.
    """
    topics = {cdc.topic(t) for t in CAPTURED}

    def done(seen: list[Received]) -> bool:
        marked = {
            r.topic
            for r in seen
            if r.value is not None and r.value["source"].get("snapshot") in SNAPSHOT_ENDS
        }
        return marked >= topics

    return done


class TestGoldenRecords:
    def test_snapshot_folds_into_golden_records(self, erp_cdc: ErpCdc) -> None:
        """The snapshot of every table yields a complete golden record per seeded entity.

        The seeded disagreements (SUP-0128 approval, EQ-PH-METER-07 calibration) are conflicts.
        """
        rules = load_survivorship_rules()
        records = erp_cdc.consume_until(CAPTURED, _snapshot_complete(erp_cdc))

        states: dict[tuple[EntityKind, str], GoldenState] = {}
        conflicts: list[Conflict] = []
        for record in records:
            change = parse_change(
                record.topic, record.partition, record.offset, record.raw_key, record.raw_value
            )
            assert isinstance(change, ChangeEvent), record
            routed = entity_of(change, rules)
            assert routed is not None, f"{change.source_system}.{change.table} feeds no record"
            outcome = apply_change(states.get(routed) or GoldenState(*routed), change, rules)
            states[routed] = outcome.state
            conflicts.extend(outcome.conflicts)

        # present before the snapshot and still present now: in the snapshot for sure (other
        # tests add and delete rows of their own in the shared source database meanwhile)
        now = erp_cdc.entities()
        expected = {
            kind: ids & now.get(kind, set()) for kind, ids in erp_cdc.entities_before.items()
        }
        assert {s.supplier_id for s in PLANT.suppliers} <= expected["supplier"]
        assert {p.number for p in PLANT.parts} <= expected["part"]
        assert {e.equipment_id for e in PLANT.equipment} <= expected["equipment"]
        assert {e.employee_id for e in PLANT.employees} <= expected["employee"]
        assert expected["lot"] and expected["customer_spec"]
        for kind, ids in expected.items():
            for entity_id in ids:
                state = states.get((kind, entity_id))
                assert state is not None and state.golden is not None, (kind, entity_id)
                assert ADAPTERS[kind](state)  # complete: the md.* datum builds
        employee = golden_to_employee(states[("employee", "E1001")])
        assert employee["printed_name"] == "Maria Okafor"
        assert "qa_approver" in employee["roles"]
        assert {t["course"] for t in employee["trainings"]} >= {"SOP-QA-011"}
        assert golden_to_lot(states[("lot", "L2601-0007")])["parent_lot_ids"] == [
            "L2601-0008",
            "L2601-0009",
        ]
        # other environments' tests add entities (and disagreements) of their own to the shared
        # source database while this snapshot runs: only the seed's entities are asserted
        seeded = {s.supplier_id for s in PLANT.suppliers} | {
            e.equipment_id for e in PLANT.equipment
        }
        found = {
            (
                c.kind,
                c.entity_id,
                c.field,
                (c.winning_source, c.winning_value),
                (c.losing_source, c.losing_value),
            )
            for c in conflicts
            if c.entity_id in seeded
        }
        assert found == SEEDED_CONFLICTS
