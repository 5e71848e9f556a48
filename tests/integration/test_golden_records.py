"""Debezium-shaped changes on cdc.erp.<schema>.<table> become golden records in Kafka and Postgres.

The test writes the change records itself (JSON envelopes, as Connect's JsonConverter without
schemas writes them) to one-partition compacted topics, so it does not depend on a Connect worker,
then runs the real worker and sink processes of its own environment (topic prefix).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from connectors.postgres_sink.migrations import migrate
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.kafka.admin import consumed_offsets, create_topics, end_offsets
from qmsflow.kafka.headers import header_pairs
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment, wait_for

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z in ms
#: the change topics of this test: CMMS and QMS feed equipment, the ERP suppliers; the bill of
#: materials feeds no golden record and must be ignored
TABLES = ("cmms.asset", "qms.equipment_status", "erp.supplier", "erp.bom")
#: worker start-up (Faust, table recovery) plus the first records through the sink
START_TIMEOUT = 180.0
STEP_TIMEOUT = 60.0


class Cdc:
    """Writes Debezium change envelopes to this environment's CDC topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = create_producer(settings)

    def topic(self, table: str) -> str:
        """The prefixed topic of `<schema>.<table>`."""
        return self.settings.topic(f"cdc.erp.{table}")

    def change(
        self, table: str, op: str, key: dict[str, Any], row: dict[str, Any] | None, *, lsn: int
    ) -> None:
        """One change of `<schema>.<table>` committed at LSN `lsn` (source time follows it)."""
        schema, name = table.split(".")
        envelope = {
            "before": key if op == "d" else None,
            "after": row,
            "op": op,
            "source": {
                "connector": "postgresql",
                "name": "cdc.erp",
                "ts_ms": T0 + lsn,
                "snapshot": "false",
                "db": "plant",
                "schema": schema,
                "table": name,
                "txId": lsn,
                "lsn": lsn,
            },
            "ts_ms": T0 + lsn + 5,
        }
        self.raw(table, json.dumps(key).encode(), json.dumps(envelope).encode())
        if op == "d":
            self.raw(table, json.dumps(key).encode(), None)  # Debezium's tombstone after a delete

    def raw(self, table: str, key: bytes, value: bytes | None) -> None:
        """Write one record as is (a malformed envelope, a tombstone)."""
        self.producer.produce(self.topic(table), key=key, value=value)

    def flush(self) -> None:
        """Wait until the broker has acknowledged everything written."""
        assert self.producer.flush(30) == 0


@contextlib.contextmanager
def _running_pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, logs: Path
) -> Iterator[PipelineProcesses]:
    """The CDC topics, worker and sink of one environment (topic prefix), stopped after."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=postgres_dsn,
        topic_prefix=topic_prefix,
        sink_batch_size=200,
    )
    create_topics(settings, load_catalog(), echo=lambda _line: None)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    # as the Debezium source creates them: one partition (LSN order), compacted
    wanted = [
        NewTopic(settings.topic(f"cdc.erp.{t}"), 1, 1, config={"cleanup.policy": "compact"})
        for t in TABLES
    ]
    for future in admin.create_topics(wanted, operation_timeout=30).values():
        future.result()
    # The worker declares its master-data agent on the CDC topics the broker lists at start-up;
    # a just-created topic can be missing from that list on a busy broker for a moment.
    cdc_names = {t.topic for t in wanted}
    wait_for(
        lambda: cdc_names <= set(admin.list_topics(timeout=10).topics),
        timeout=STEP_TIMEOUT,
        what=f"the broker to list {sorted(cdc_names)}",
    )
    migrate(postgres_dsn, echo=lambda _line: None)
    processes = PipelineProcesses(
        settings, environment(settings, kafka_bootstrap, postgres_dsn), logs
    )
    try:
        processes.start_worker()  # finds the CDC topics at start-up: they exist by now
        processes.start_sink()
        yield processes
        # The quality agent holds the ticks it has fetched unacknowledged until the master-data
        # feed is ready (several seconds after start-up), and Faust's shutdown waits for them: a
        # worker stopped before that does not stop within PipelineProcesses' grace period. This
        # test is faster than that, so it waits until the ticks are consumed.
        ticks = [settings.topic("quality.ticks.v1")]
        group = settings.topic(settings.app_id)
        wait_for(
            lambda: consumed_offsets(settings, group, ticks).get(ticks[0], 0) > 0,
            timeout=STEP_TIMEOUT,
            what="the quality agent to start consuming (master data ready)",
            alive=processes.assert_alive,
        )
    finally:
        processes.stop()


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    with _running_pipeline(kafka_bootstrap, postgres_dsn, topic_prefix, tmp_path) as processes:
        yield processes


@pytest.fixture
def second_pipeline(
    kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    """A second environment beside `pipeline`'s: its own prefix, topics deleted after."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    logs = tmp_path / "second"
    logs.mkdir()
    try:
        with _running_pipeline(kafka_bootstrap, postgres_dsn, prefix, logs) as processes:
            yield processes
    finally:
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):  # already gone
                    future.result()


def _rows(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]


def _md_records(
    settings: Settings, topic: str, key: str
) -> list[tuple[dict[str, Any] | None, int]]:
    """Every value of `key` on an md topic, decoded (None for a tombstone), with its version."""
    codec = AvroCodec(open_registry(settings))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.topic("golden-records-test-reader"),
            "enable.auto.commit": False,
        }
    )
    name = settings.topic(topic)
    try:
        partitions = consumer.list_topics(name, timeout=30).topics[name].partitions
        ends = {}
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=30)
            ends[p] = high
        consumer.assign([TopicPartition(name, p, 0) for p in partitions if ends[p] > 0])
        found: list[tuple[dict[str, Any] | None, int]] = []
        reached: dict[int, int] = {}
        while any(reached.get(p, 0) < high for p, high in ends.items() if high > 0):
            for message in consumer.consume(100, 1.0):
                if message.error() is not None:
                    continue
                reached[message.partition() or 0] = (message.offset() or 0) + 1
                if (message.key() or b"").decode() != key:
                    continue
                headers = dict(header_pairs(message.headers()))
                version = int(headers["golden-version"] or b"0")
                value = message.value()
                record = None if value is None else codec.decode(value, f"{topic}-value").record
                found.append((record, version))
        return found
    finally:
        consumer.close()


class TestGoldenRecords:
    def test_changes_become_golden_records_conflicts_history_and_deletes(
        self, pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """CMMS and QMS changes of one equipment make one golden record with SCD-2 history.

        The calibration disagreement lands once in qms.md_conflict; redelivered changes add no
        version; a delete from both sources tombstones the record (deleted in Postgres); a
        malformed envelope is dead-lettered and a table no rule uses is ignored.
        """
        settings = pipeline.settings
        prefix = settings.topic_prefix
        like = prefix + "%"
        equipment = f"EQ-{prefix.strip('.')}"
        supplier = f"SUP-{prefix.strip('.')}"
        asset_key = {"equipment_id": equipment}
        asset = {
            **asset_key,
            "description": "CMM Zeiss Contura",
            "site": "BOS1",
            "calibration_status": "CALIBRATED",
            "calibration_due": 20_600,
        }
        status = {**asset_key, "calibration_status": "OUT_OF_TOLERANCE"}
        cdc = Cdc(settings)
        # one source at a time: the worker reads the topics in no fixed order between them,
        # and the versions asserted below follow the order the sources' changes are applied in
        cdc.change("cmms.asset", "c", asset_key, asset, lsn=100)
        supplier_row = {
            "supplier_id": supplier,
            "name": "Acme GmbH",
            "country_code": "DE",
            "asl_status": "approved",
        }
        cdc.change("erp.supplier", "c", {"supplier_id": supplier}, supplier_row, lsn=150)
        bom_key = {"parent_part": "P-1", "child_part": "P-2"}
        cdc.change("erp.bom", "c", bom_key, {**bom_key, "quantity": "2.000"}, lsn=160)
        cdc.raw("cmms.asset", json.dumps(asset_key).encode(), b"{not a debezium envelope")
        cdc.flush()

        def golden(kind: str, entity_id: str) -> tuple[Any, ...] | None:
            found = _rows(
                postgres_dsn,
                "SELECT version, deleted, fields, source_system FROM qms.golden_record"
                " WHERE kind = %s AND entity_id = %s AND kafka_topic LIKE %s",
                kind,
                entity_id,
                like,
            )
            return found[0] if found else None

        def history() -> list[tuple[Any, ...]]:
            return _rows(
                postgres_dsn,
                "SELECT version, valid_to IS NOT NULL, source, lsn FROM qms.golden_record_history"
                " WHERE kind = 'equipment' AND entity_id = %s ORDER BY version",
                equipment,
            )

        def conflicts() -> list[tuple[Any, ...]]:
            return _rows(
                postgres_dsn,
                "SELECT field, winning_value, winning_source, losing_value, losing_source"
                " FROM qms.md_conflict WHERE kind = 'equipment' AND entity_id = %s",
                equipment,
            )

        wait_for(
            lambda: golden("equipment", equipment) is not None,
            timeout=START_TIMEOUT,
            what="the first golden record",
            alive=pipeline.assert_alive,
        )
        cdc.change("qms.equipment_status", "c", asset_key, status, lsn=200)
        cdc.flush()
        wait_for(
            lambda: golden("supplier", supplier) is not None and len(conflicts()) == 1,
            timeout=START_TIMEOUT,
            what="the supplier's golden record and the calibration conflict",
            alive=pipeline.assert_alive,
        )
        version, deleted, fields, source = golden("equipment", equipment) or ()
        assert (version, deleted, source) == (1, False, "CMMS")
        assert fields["calibration_status"] == "CALIBRATED"  # CMMS is trusted over QMS
        assert conflicts() == [
            ("calibration_status", "CALIBRATED", "CMMS", "OUT_OF_TOLERANCE", "QMS")
        ]
        assert history() == [(1, False, "CMMS", 100)]
        wait_for(
            lambda: bool(
                _rows(
                    postgres_dsn,
                    "SELECT 1 FROM qms.dead_letter WHERE stage = 'master-data'"
                    " AND source_topic = %s",
                    cdc.topic("cmms.asset"),
                )
            ),
            timeout=STEP_TIMEOUT,
            what="the malformed envelope's dead letter",
            alive=pipeline.assert_alive,
        )

        # ---- redelivery (a Connect restart resends from its last committed offset)
        cdc.change("cmms.asset", "c", asset_key, asset, lsn=100)
        cdc.change("qms.equipment_status", "c", asset_key, status, lsn=200)
        cdc.flush()
        group = settings.topic(settings.app_id)
        watched = [cdc.topic(t) for t in TABLES]
        wait_for(
            lambda: consumed_offsets(settings, group, watched) == end_offsets(settings, watched),
            timeout=STEP_TIMEOUT,
            what="the worker to consume the redelivered changes",
            alive=pipeline.assert_alive,
        )
        assert history() == [(1, False, "CMMS", 100)], "a redelivered change adds no version"
        assert len(conflicts()) == 1

        # ---- a real update, then a delete from every source
        cdc.change(
            "cmms.asset", "u", asset_key, {**asset, "description": "CMM Contura G2"}, lsn=300
        )
        cdc.flush()
        wait_for(
            lambda: (golden("equipment", equipment) or (0,))[0] == 2,
            timeout=STEP_TIMEOUT,
            what="version 2 of the golden record",
            alive=pipeline.assert_alive,
        )
        cdc.change("cmms.asset", "d", asset_key, None, lsn=400)
        cdc.flush()
        wait_for(
            lambda: len(history()) == 3,
            timeout=STEP_TIMEOUT,
            what="version 3: QMS's calibration status alone",
            alive=pipeline.assert_alive,
        )
        cdc.change("qms.equipment_status", "d", asset_key, None, lsn=500)
        cdc.flush()
        wait_for(
            lambda: (golden("equipment", equipment) or (0, False))[1] is True,
            timeout=STEP_TIMEOUT,
            what="the golden record to be marked deleted",
            alive=pipeline.assert_alive,
        )
        version, deleted, fields, source = golden("equipment", equipment) or ()
        assert (version, deleted, fields, source) == (4, True, None, None)
        # v3 (QMS's calibration status alone) lacked description and site: kept in history,
        # withheld from md.equipment.v1
        wait_for(
            lambda: [v for v, closed, _, _ in history() if closed] == [1, 2, 3],
            timeout=STEP_TIMEOUT,
            what="SCD-2 versions 1..3, all closed",
            alive=pipeline.assert_alive,
        )
        assert [(v, s, lsn) for v, _, s, lsn in history()] == [
            (1, "CMMS", 100),
            (2, "CMMS", 300),
            (3, "CMMS", 400),  # CMMS deleting its row left only QMS's calibration status
        ]

        published = _md_records(settings, "md.equipment.v1", equipment)
        assert [v for _, v in published] == [1, 2, 4]
        assert published[0][0] is not None and published[0][0]["description"] == "CMM Zeiss Contura"
        assert published[-1][0] is None  # the tombstone: compaction forgets the equipment
        assert len(conflicts()) == 1
        assert _rows(
            postgres_dsn,
            "SELECT count(*) FROM qms.golden_record WHERE entity_id = 'P-1'"
            " AND kafka_topic LIKE %s",
            like,
        ) == [(0,)]


class TestEnvironments:
    def test_two_environments_with_the_same_ids_keep_their_own_master_data(
        self,
        pipeline: PipelineProcesses,
        second_pipeline: PipelineProcesses,
        postgres_dsn: str,
    ) -> None:
        """Two topic prefixes sharing one database, same entity ids: each keeps its own rows.

        The same supplier id carries another name in each environment, and the same equipment
        disagreement in both makes the same conflict id twice. Keyed without the environment,
        the second environment's golden record and history overwrote the first's, and its
        conflict was dropped as a duplicate (migration 0011).
        """
        run = uuid.uuid4().hex[:8].upper()  # the same ids in both environments, new per run
        equipment = f"EQ-SHARED-{run}"
        supplier = f"SUP-SHARED-{run}"
        asset_key = {"equipment_id": equipment}
        asset = {
            **asset_key,
            "description": "torque analyser",
            "site": "CORK2",
            "calibration_status": "CALIBRATED",
            "calibration_due": 20_600,
        }
        names = {
            pipeline.settings.topic_prefix: "Acme Validation GmbH",
            second_pipeline.settings.topic_prefix: "Acme Production GmbH",
        }
        feeds = {p.settings.topic_prefix: Cdc(p.settings) for p in (pipeline, second_pipeline)}
        for prefix, cdc in feeds.items():
            cdc.change("cmms.asset", "c", asset_key, asset, lsn=100)
            row = {
                "supplier_id": supplier,
                "name": names[prefix],
                "country_code": "IE",
                "asl_status": "APPROVED",
            }
            cdc.change("erp.supplier", "c", {"supplier_id": supplier}, row, lsn=150)
            cdc.flush()

        def alive() -> None:
            pipeline.assert_alive()
            second_pipeline.assert_alive()

        def environments(table: str, kind: str, entity_id: str) -> list[str]:
            return [
                r[0]
                for r in _rows(
                    postgres_dsn,
                    f"SELECT environment FROM {table} WHERE kind = %s AND entity_id = %s"
                    " ORDER BY environment",
                    kind,
                    entity_id,
                )
            ]

        both = sorted(names)
        # one source at a time, as in the test above: CMMS first, then QMS disagreeing
        wait_for(
            lambda: environments("qms.golden_record", "equipment", equipment) == both,
            timeout=START_TIMEOUT,
            what="the equipment's golden record in both environments",
            alive=alive,
        )
        status = {**asset_key, "calibration_status": "OUT_OF_TOLERANCE"}
        for cdc in feeds.values():
            cdc.change("qms.equipment_status", "c", asset_key, status, lsn=200)
            cdc.flush()
        wait_for(
            lambda: (
                environments("qms.md_conflict", "equipment", equipment) == both
                and environments("qms.golden_record", "supplier", supplier) == both
                and environments("qms.golden_record_history", "supplier", supplier) == both
            ),
            timeout=STEP_TIMEOUT,
            what="conflict, supplier and its history in both environments",
            alive=alive,
        )

        assert _rows(
            postgres_dsn,
            "SELECT environment, version, fields->>'name', kafka_topic FROM qms.golden_record"
            " WHERE kind = 'supplier' AND entity_id = %s ORDER BY environment",
            supplier,
        ) == [(prefix, 1, names[prefix], f"{prefix}md.supplier.v1") for prefix in both]
        assert _rows(
            postgres_dsn,
            "SELECT environment, version, fields->>'name' FROM qms.golden_record_history"
            " WHERE kind = 'supplier' AND entity_id = %s ORDER BY environment",
            supplier,
        ) == [(prefix, 1, names[prefix]) for prefix in both]
        conflicts = _rows(
            postgres_dsn,
            "SELECT environment, conflict_id, winning_value, losing_value FROM qms.md_conflict"
            " WHERE kind = 'equipment' AND entity_id = %s ORDER BY environment",
            equipment,
        )
        assert [(c[0], c[2], c[3]) for c in conflicts] == [
            (prefix, "CALIBRATED", "OUT_OF_TOLERANCE") for prefix in both
        ]
        assert conflicts[0][1] == conflicts[1][1], "the same disagreement, the same conflict id"
