"""Debezium streams the demo ERP database into cdc.erp.public.<table> as JSON envelopes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from connectors.debezium import registration
from qmsflow.settings import Settings
from qmsflow.stack.connect import LocalConnect, connect_url
from qmsflow.stack.postgres import CDC_PASSWORD, CDC_ROLE, ERP_DATABASE

pytestmark = pytest.mark.integration

#: a snapshot of the small demo database and the first change arrive within seconds
ARRIVAL_TIMEOUT = 60.0

#: a deleted connector's task lets go of its replication slot within seconds
SLOT_RELEASE_TIMEOUT = 30.0


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


@dataclass
class ErpCdc:
    """One connector of this test: its topics, its own supplier row and the source database."""

    bootstrap: str
    prefix: str
    erp_conninfo: str
    supplier_id: str

    def topic(self, table: str) -> str:
        """The CDC topic of a table in the `public` schema."""
        return f"{self.prefix}cdc.erp.public.{table}"

    def execute(self, statement: str, *params: Any) -> None:
        """Run one statement on the source database, committed."""
        with psycopg.connect(self.erp_conninfo, autocommit=True) as connection:
            connection.execute(statement, params)

    def consume_until(
        self, table: str, done: Callable[[list[tuple[Any, Any]]], bool]
    ) -> list[tuple[Any, Any]]:
        """Read (key, value) pairs of a table's topic from the start until `done` holds.

        A tombstone's value is None; keys and values are decoded JSON.
        """
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"{self.prefix}cdc-test-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                # the topic appears once the snapshot starts; find it within a second
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        records: list[tuple[Any, Any]] = []
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        try:
            consumer.subscribe([self.topic(table)])
            while not done(records):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"expected the awaited records on {self.topic(table)} within "
                        f"{ARRIVAL_TIMEOUT:.0f} s; got {len(records)}: {records[-5:]}"
                    )
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        continue
                    pytest.fail(f"consuming {self.topic(table)}: {error}")
                key, value = message.key(), message.value()
                records.append(
                    (
                        json.loads(key) if key is not None else None,
                        json.loads(value) if value is not None else None,
                    )
                )
        finally:
            consumer.close()
        return records


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

    The test's own supplier row is inserted first, so it is part of the snapshot.
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
    )
    cdc.execute(
        "insert into supplier (supplier_id, name, country, address) values (%s, %s, %s, %s)",
        cdc.supplier_id,
        "Test Moulding Ltd",
        "IE",
        "Unit 1, Test Park",
    )
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
        cdc.execute("delete from supplier where supplier_id = %s", cdc.supplier_id)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(topic_prefix)]
        topics += [f"__debezium-heartbeat.{topic_prefix}cdc.erp"]
        existing = set(admin.list_topics(timeout=10).topics)
        doomed = [t for t in topics if t in existing]
        if doomed:
            for future in admin.delete_topics(doomed).values():
                future.result(timeout=30)


def _ours(supplier_id: str) -> Callable[[tuple[Any, Any]], bool]:
    return lambda record: record[0] == {"supplier_id": supplier_id}


class TestSnapshot:
    def test_existing_rows_arrive_as_reads(self, erp_cdc: ErpCdc) -> None:
        """Rows present when the connector starts arrive with op "r", keyed by primary key."""
        records = erp_cdc.consume_until(
            "supplier", lambda seen: any(map(_ours(erp_cdc.supplier_id), seen))
        )

        by_key = {json.dumps(key): value for key, value in records}
        ours = by_key[json.dumps({"supplier_id": erp_cdc.supplier_id})]
        seeded = by_key.get(json.dumps({"supplier_id": "SUP-0017"}))
        assert ours["op"] == "r"
        assert ours["before"] is None
        assert ours["after"]["name"] == "Test Moulding Ltd"
        assert seeded is not None and seeded["op"] == "r"
        assert seeded["after"]["name"] == "Corrib Precision Moulding"
        assert ours["source"]["lsn"] > 0 and ours["ts_ms"] > 0


class TestChanges:
    def test_update_carries_full_before_and_after(self, erp_cdc: ErpCdc) -> None:
        """An UPDATE arrives as op "u" whose before and after hold every column."""
        erp_cdc.consume_until("supplier", lambda seen: any(map(_ours(erp_cdc.supplier_id), seen)))
        erp_cdc.execute(
            "update supplier set approval_status = 'disqualified', updated_at = now() "
            "where supplier_id = %s",
            erp_cdc.supplier_id,
        )

        records = erp_cdc.consume_until(
            "supplier",
            lambda seen: any(
                _ours(erp_cdc.supplier_id)(r) and r[1] is not None and r[1]["op"] == "u"
                for r in seen
            ),
        )

        update = next(
            value
            for key, value in records
            if key == {"supplier_id": erp_cdc.supplier_id} and value and value["op"] == "u"
        )
        columns = {"supplier_id", "name", "country", "approval_status", "address", "updated_at"}
        assert set(update["before"]) == columns == set(update["after"])
        assert update["before"]["approval_status"] == "approved"
        assert update["after"]["approval_status"] == "disqualified"
        assert update["before"]["address"] == update["after"]["address"] == "Unit 1, Test Park"
        assert isinstance(update["source"]["lsn"], int) and update["ts_ms"] > 0

    def test_delete_is_followed_by_a_tombstone(self, erp_cdc: ErpCdc) -> None:
        """A DELETE arrives as op "d" with the full row in before, then a null-valued tombstone."""
        erp_cdc.consume_until("supplier", lambda seen: any(map(_ours(erp_cdc.supplier_id), seen)))
        erp_cdc.execute("delete from supplier where supplier_id = %s", erp_cdc.supplier_id)

        records = erp_cdc.consume_until(
            "supplier",
            lambda seen: any(_ours(erp_cdc.supplier_id)(r) and r[1] is None for r in seen),
        )

        ours = [value for key, value in records if key == {"supplier_id": erp_cdc.supplier_id}]
        assert [v["op"] if v is not None else None for v in ours] == ["r", "d", None]
        delete = ours[1]
        assert delete["after"] is None
        assert delete["before"]["name"] == "Test Moulding Ltd"
        assert delete["before"]["country"] == "IE"
        assert delete["source"]["lsn"] > 0 and delete["ts_ms"] > 0
