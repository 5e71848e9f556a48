"""The master-data agent's pure parts: topic discovery, routing, publication plans, sink rows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.postgres_sink.rows import (
    BINDINGS,
    GOLDEN_RECORD_COLUMNS,
    GOLDEN_RECORD_IDS,
    GOLDEN_VERSION_HEADER,
)
from connectors.postgres_sink.sink import PostgresSink
from qmsflow.contracts import AvroCodec, FileSchemaRegistry
from qmsflow.quality.cdc import ChangeEvent, parse_change
from qmsflow.quality.golden_record import (
    GoldenState,
    apply_change,
    entity_of,
    load_survivorship_rules,
)
from qmsflow.settings import PROJECT_ROOT
from streams.golden_records import (
    GOLDEN_VERSION_HEADER as AGENT_VERSION_HEADER,
)
from streams.golden_records import (
    cdc_topics,
    golden_topic,
    history_to_avro,
    plan_publication,
    rules_source,
    state_key,
)

RULES = load_survivorship_rules()
CODEC = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z in ms
ASSET = {
    "equipment_id": "EQ-7",
    "description": "CMM Zeiss Contura",
    "site": "BOS1",
    "calibration_status": "CALIBRATED",
    "calibration_due": 20_600,
}


def change(
    topic: str,
    op: str,
    row: dict[str, Any],
    *,
    lsn: int,
    offset: int,
    ts: int = T0,
    id_column: str = "equipment_id",
) -> ChangeEvent:
    """A Debezium change of `row` on `topic` (`cdc.erp.<schema>.<table>`), parsed."""
    _, _, schema, table = topic.rsplit(".", 3)
    key = {id_column: row[id_column]}
    value = {
        "before": key if op == "d" else None,
        "after": None if op == "d" else row,
        "op": op,
        "source": {"ts_ms": ts, "db": "plant", "schema": schema, "table": table, "lsn": lsn},
        "ts_ms": ts + 5,
    }
    parsed = parse_change(topic, 0, offset, json.dumps(key), json.dumps(value))
    assert isinstance(parsed, ChangeEvent)
    return rules_source(parsed, RULES)


def fold(*changes: ChangeEvent) -> tuple[GoldenState, list[Any]]:
    """Apply changes in order to one record's state; the publication plan of each."""
    first = entity_of(changes[0], RULES)
    assert first is not None
    state = GoldenState(kind=first[0], entity_id=first[1])
    plans = []
    for c in changes:
        outcome = apply_change(state, c, RULES)
        plans.append(plan_publication(outcome, c))
        state = outcome.state
    return state, plans


class TestTopicDiscovery:
    def test_only_this_environments_change_topics_are_read(self) -> None:
        """Change topics of the prefix are found, sorted; other environments' are not."""
        names = [
            "t1.cdc.erp.qms.equipment_status",
            "t1.cdc.erp.cmms.asset",
            "t2.cdc.erp.cmms.asset",
            "cdc.erp.cmms.asset",
            "t1.md.equipment.v1",
        ]
        assert cdc_topics(names, "t1.") == [
            "t1.cdc.erp.cmms.asset",
            "t1.cdc.erp.qms.equipment_status",
        ]

    def test_connector_topics_that_are_not_tables_are_left_out(self) -> None:
        """Transaction metadata and heartbeat topics carry no row changes."""
        names = ["cdc.erp.transaction", "__debezium-heartbeat.cdc.erp", "cdc.erp.", "cdc.erp.a.b.c"]
        assert cdc_topics(names, "") == []


class TestRouting:
    def test_schema_naming_a_system_is_the_source_system(self) -> None:
        """`cdc.erp.cmms.asset` is CMMS's table, as the survivorship rules name it."""
        c = change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0)
        assert c.source_system == "CMMS"
        assert entity_of(c, RULES) == ("equipment", "EQ-7")

    def test_public_schema_keeps_the_system_of_the_topic_prefix(self) -> None:
        """The one-schema layout (`cdc.erp.public.supplier`) still routes to the ERP."""
        row = {"supplier_id": "S-1", "name": "Acme", "country_code": "DE", "asl_status": "approved"}
        c = change("cdc.erp.public.supplier", "c", row, lsn=3, offset=0, id_column="supplier_id")
        assert c.source_system == "ERP"
        assert entity_of(c, RULES) == ("supplier", "S-1")

    def test_table_no_rule_uses_is_not_routed(self) -> None:
        """A bill of materials feeds no golden record: it is ignored, not an error."""
        row = {"parent_part": "P-1", "child_part": "P-2", "quantity": "1.000"}
        c = change("cdc.erp.erp.bom", "c", row, lsn=4, offset=0, id_column="parent_part")
        assert entity_of(c, RULES) is None

    def test_state_key_and_topic_of_a_kind(self) -> None:
        """The table key is kind:id; customer specifications go to md.customer-spec.v1."""
        assert state_key("equipment", "EQ-7") == "equipment:EQ-7"
        assert golden_topic("customer_spec") == "md.customer-spec.v1"


class TestPublication:
    def test_complete_record_is_published_with_its_version(self) -> None:
        """A complete golden record is an md datum the md topic's schema accepts."""
        _, (plan,) = fold(change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0))
        assert (plan.publish, plan.version) == ("upsert", 1)
        assert plan.record is not None
        datum = CODEC.decode(
            CODEC.encode("md.equipment.v1-value", dict(plan.record)), "md.equipment.v1-value"
        )
        assert datum.record["calibration_status"] == "CALIBRATED"
        assert datum.record["source_system"] == "CMMS"

    def test_record_lacking_a_required_field_is_withheld_but_kept(self) -> None:
        """QMS alone knows only the calibration status: withheld until CMMS fills the rest."""
        qms = {"equipment_id": "EQ-7", "calibration_status": "OUT_OF_TOLERANCE"}
        state, (plan,) = fold(change("cdc.erp.qms.equipment_status", "c", qms, lsn=5, offset=0))
        assert plan.publish == "none" and plan.record is None
        assert set(plan.withheld) == {"description", "site"}
        assert state.golden == {"calibration_status": "OUT_OF_TOLERANCE"}
        assert [h["version"] for h in plan.history] == [1]

    def test_redelivered_change_publishes_nothing(self) -> None:
        """The same change again (same LSN, later offset) changes nothing."""
        first = change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0)
        again = change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=9)
        state, _ = fold(first)
        outcome = apply_change(state, again, RULES)
        plan = plan_publication(outcome, again)
        assert not outcome.applied
        assert (plan.publish, plan.conflicts, plan.history) == ("none", (), ())

    def test_disagreement_is_one_conflict_while_it_lasts(self) -> None:
        """CMMS and QMS disagreeing on the calibration status is reported once."""
        qms = {"equipment_id": "EQ-7", "calibration_status": "OUT_OF_TOLERANCE"}
        _, plans = fold(
            change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0),
            change("cdc.erp.qms.equipment_status", "c", qms, lsn=20, offset=0, ts=T0 + 1000),
            change("cdc.erp.qms.equipment_status", "u", qms, lsn=21, offset=1, ts=T0 + 2000),
        )
        conflicts = [c for plan in plans for c in plan.conflicts]
        assert len(conflicts) == 1
        avro = conflicts[0].to_avro()
        assert (avro["winning_source"], avro["losing_source"]) == ("CMMS", "QMS")
        CODEC.encode("md.conflicts.v1-value", avro)

    def test_delete_from_every_source_is_a_tombstone(self) -> None:
        """The last live source deleting the entity publishes a tombstone and closes history."""
        state, plans = fold(
            change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0),
            change("cdc.erp.cmms.asset", "d", ASSET, lsn=11, offset=1, ts=T0 + 1000),
        )
        assert plans[-1].publish == "tombstone" and plans[-1].record is None
        assert plans[-1].version == 2
        closing = plans[-1].history
        assert [(h["version"], h["valid_to"] is not None) for h in closing] == [(1, True)]
        assert state.golden is None


class TestHistory:
    def test_history_row_carries_the_change_lineage(self) -> None:
        """An SCD-2 row is an md.history.v1 datum naming the CDC record that wrote it."""
        c = change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=3)
        _, (plan,) = fold(c)
        (row,) = plan.history
        assert (row["cdc_topic"], row["cdc_partition"], row["cdc_offset"]) == (c.topic, 0, 3)
        assert json.loads(row["fields_json"])["site"] == "BOS1"
        decoded = CODEC.decode(CODEC.encode("md.history.v1-value", row), "md.history.v1-value")
        assert decoded.record["valid_to"] is None and decoded.record["lsn"] == 10

    def test_history_avro_keeps_an_unknown_lsn_null(self) -> None:
        """An incremental-snapshot row has no LSN; its history row says so."""
        c = change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=3)
        outcome = apply_change(GoldenState(kind="equipment", entity_id="EQ-7"), c, RULES)
        row = history_to_avro(outcome.history[0], c)
        assert row["version"] == 1 and row["source"] == "CMMS"


class TestSinkRows:
    @staticmethod
    def _sink() -> PostgresSink:
        no_connection: Any = None  # add() never touches the connection
        return PostgresSink(no_connection, CODEC, consumer_group="g", topic_prefix="t.")

    @staticmethod
    def _buffered(sink: PostgresSink, table: str) -> list[dict[str, Any]]:
        rows: list[tuple[Any, ...]] = sink._rows[table]  # what flush would write
        return [dict(zip(GOLDEN_RECORD_COLUMNS, r, strict=True)) for r in rows]

    def test_every_md_topic_and_the_history_are_bound(self) -> None:
        """The six golden-record topics, conflicts and history all reach Postgres."""
        bound = {b.topic for b in BINDINGS}
        assert {golden_topic(k) for k in GOLDEN_RECORD_IDS} <= bound
        assert {"md.conflicts.v1", "md.history.v1"} <= bound
        assert AGENT_VERSION_HEADER == GOLDEN_VERSION_HEADER

    def test_golden_record_row_takes_its_version_from_the_header(self) -> None:
        """An md record becomes one golden_record row at the header's version."""
        _, (plan,) = fold(change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0))
        assert plan.record is not None
        sink = self._sink()
        value = CODEC.encode("md.equipment.v1-value", dict(plan.record))
        sink.add("t.md.equipment.v1", 1, 4, b"EQ-7", value, [(GOLDEN_VERSION_HEADER, b"1")])
        (row,) = self._buffered(sink, "qms.golden_record")
        assert (row["kind"], row["entity_id"], row["version"], row["deleted"]) == (
            "equipment",
            "EQ-7",
            1,
            False,
        )
        assert json.loads(row["fields"])["calibration_status"] == "CALIBRATED"

    def test_golden_rows_are_keyed_by_the_environment_they_were_read_in(self) -> None:
        """The topic prefix is the row's environment, first in the key (migration 0011)."""
        _, (plan,) = fold(change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0))
        assert plan.record is not None
        value = CODEC.encode("md.equipment.v1-value", dict(plan.record))
        sink = self._sink()
        sink.add("t.md.equipment.v1", 1, 4, b"EQ-7", value, [(GOLDEN_VERSION_HEADER, b"1")])
        sink.add("t.md.equipment.v1", 1, 5, b"EQ-7", None, [(GOLDEN_VERSION_HEADER, b"2")])
        rows = self._buffered(sink, "qms.golden_record")
        assert [(r["environment"], r["kind"], r["entity_id"]) for r in rows] == [
            ("t.", "equipment", "EQ-7")
        ] * 2
        (write,) = next(b for b in BINDINGS if b.topic == "md.equipment.v1").writes
        assert write.key == ("environment", "kind", "entity_id")
        keys = {b.topic: b.writes[0].key for b in BINDINGS}
        assert keys["md.history.v1"][0] == keys["md.conflicts.v1"][0] == "environment"

    def test_tombstone_on_an_md_topic_marks_the_record_deleted(self) -> None:
        """A null value on a compacted md topic is a deleted row, not a dead letter."""
        sink = self._sink()
        sink.add("t.md.equipment.v1", 1, 5, b"EQ-7", None, [(GOLDEN_VERSION_HEADER, b"2")])
        assert not sink._dead
        (row,) = self._buffered(sink, "qms.golden_record")
        assert (row["entity_id"], row["version"], row["deleted"], row["fields"]) == (
            "EQ-7",
            2,
            True,
            None,
        )

    def test_md_record_from_another_producer_has_no_version(self) -> None:
        """A loader that sends no golden-version header still lands, without a version."""
        _, (plan,) = fold(change("cdc.erp.cmms.asset", "c", ASSET, lsn=10, offset=0))
        assert plan.record is not None
        sink = self._sink()
        value = CODEC.encode("md.equipment.v1-value", dict(plan.record))
        sink.add("t.md.equipment.v1", 1, 4, b"EQ-7", value)
        sink.add("t.md.equipment.v1", 1, 5, b"EQ-8", None)
        rows = self._buffered(sink, "qms.golden_record")
        assert [(r["entity_id"], r["version"], r["deleted"]) for r in rows] == [
            ("EQ-7", None, False),
            ("EQ-8", None, True),
        ]

    @pytest.mark.parametrize(
        ("topic", "key", "headers"),
        [
            ("t.quality.events.v1", b"LINE-1", []),
            ("t.md.equipment.v1", None, [(GOLDEN_VERSION_HEADER, b"2")]),
            ("t.md.equipment.v1", b"EQ-7", [(GOLDEN_VERSION_HEADER, b"two")]),
        ],
        ids=["not-compacted", "no-key", "bad-version"],
    )
    def test_other_tombstones_are_dead_letters(
        self, topic: str, key: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> None:
        """A tombstone on a non-md topic, without a key or with a bad version is dead-lettered."""
        sink = self._sink()
        sink.add(topic, 0, 1, key, None, headers)
        assert sink.pending == 1 and len(sink._dead) == 1
