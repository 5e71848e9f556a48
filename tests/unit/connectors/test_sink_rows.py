"""Row mapping of the stage outputs the sink loads, from records decoded by the real codec."""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from connectors.postgres_sink.migrations import load_migrations
from connectors.postgres_sink.rows import (
    BINDINGS,
    ESCALATED_EVENT_TYPES,
    HOLD_ACTIONS,
    INCIDENT_STATUSES,
    PARKING_STATUSES,
    SEVERITIES,
    Row,
    TableBinding,
    TableWrite,
)
from connectors.postgres_sink.sink import PostgresSink, _first_per_key
from qmsflow.contracts import AvroCodec, FileSchemaRegistry
from qmsflow.quality.event import Coordinates
from qmsflow.settings import PROJECT_ROOT
from tests.unit.connectors import stage_records as records

AT = Coordinates("env.quality.stage.v1", 2, 41)
CODEC = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
BY_TOPIC = {b.topic: b for b in BINDINGS}


def at(topic: str) -> Coordinates:
    """AT on `topic` itself under prefix `env.`: environment-keyed rows are read from the name."""
    return Coordinates(f"env.{topic}", AT.partition, AT.offset)


def binding(topic: str) -> TableBinding:
    return BY_TOPIC[topic]


def decoded(topic: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as the sink sees it: encoded with the topic's contract, then decoded."""
    subject = binding(topic).subject
    return CODEC.decode(CODEC.encode(subject, record), subject).record


def as_dict(write: TableWrite, row: Row) -> dict[str, Any]:
    assert len(row) == len(write.columns)
    return dict(zip(write.columns, row, strict=True))


def rows_of(topic: str, record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    rec = decoded(topic, record)
    return {
        w.table: [as_dict(w, r) for r in w.to_rows(rec, at(topic))] for w in binding(topic).writes
    }


def migrations_sql() -> str:
    return "\n".join(m.sql for m in load_migrations())


class TestIncidentRows:
    def test_incident_becomes_one_incident_row_and_one_row_per_member(self) -> None:
        """An incident view is one qms.incident row and one qms.incident_member row per member."""
        members = records.event_ids(3)
        rows = rows_of("quality.incidents.v1", records.incident(members=members))
        (incident,) = rows["qms.incident"]
        assert incident["incident_id"] == uuid.UUID(records.incident_id("lot:L2611-0042", 1))
        assert incident["status"] == "open"
        assert incident["revision"] == incident["member_count"] == 3
        assert incident["event_types"] == ["inspection_result", "nonconformance"]
        assert incident["opened_at"] == records.T0
        assert "member_event_ids" not in incident
        lineage = at("quality.incidents.v1")
        assert (incident["kafka_topic"], incident["kafka_partition"], incident["kafka_offset"]) == (
            lineage.topic,
            lineage.partition,
            lineage.offset,
        )
        assert incident["environment"] == "env."
        assert {m["environment"] for m in rows["qms.incident_member"]} == {"env."}
        assert [m["event_id"] for m in rows["qms.incident_member"]] == [
            uuid.UUID(e) for e in members
        ]
        assert {m["incident_id"] for m in rows["qms.incident_member"]} == {incident["incident_id"]}

    def test_incident_write_upserts_and_member_write_inserts_only(self) -> None:
        """Only qms.incident is upserted, keeping the newest revision, closing at equal ones."""
        incident_write, member_write = binding("quality.incidents.v1").writes
        assert incident_write.upsert is not None
        assert incident_write.upsert.newest_first[0] == "revision DESC"
        assert incident_write.upsert.newest_first[-1] == "kafka_offset DESC"
        assert "qms.incident.revision < EXCLUDED.revision" in incident_write.upsert.replaces_when
        assert "incident_id" not in incident_write.updated_columns
        assert incident_write.key == ("environment", "incident_id")
        assert member_write.upsert is None
        assert member_write.key == ("environment", "incident_id", "event_id")

    def test_incident_read_under_another_topic_is_refused(self) -> None:
        """An incident whose topic is not quality.incidents.v1 has no environment: a ValueError."""
        rec = decoded("quality.incidents.v1", records.incident())
        for write in binding("quality.incidents.v1").writes:
            with pytest.raises(ValueError, match=r"quality\.incidents\.v1"):
                write.to_rows(rec, AT)

    def test_malformed_member_id_is_refused_with_its_position(self) -> None:
        """A member id that is not a UUID fails the mapping, naming the field."""
        rec = decoded("quality.incidents.v1", records.incident(members=("not-a-uuid",)))
        with pytest.raises(ValueError, match=r"member_event_ids\[0\]"):
            binding("quality.incidents.v1").writes[1].to_rows(rec, at("quality.incidents.v1"))


class TestOtherStageRows:
    def test_alert_row_keeps_every_field(self) -> None:
        """An alert maps field for field, ids as UUIDs."""
        record = records.alert()
        (row,) = rows_of("quality.alerts.v1", record)["qms.alert"]
        assert row["alert_id"] == uuid.UUID(record["alert_id"])
        assert row["first_event_id"] == uuid.UUID(record["first_event_id"])
        assert row["summary"] == record["summary"]
        assert row["raised_at"] == records.T0
        assert row["environment"] == "env."

    def test_quarantine_command_row_keeps_the_sap_posting(self) -> None:
        """A RELEASE keeps its action, lot, stock type and movement type."""
        record = records.quarantine_command("L2611-0042", "RELEASE", hours=5)
        (row,) = rows_of("inventory.quarantine-commands.v1", record)["qms.quarantine_command"]
        assert (
            row["action"],
            row["lot_id"],
            row["target_stock_type"],
            row["sap_movement_type"],
        ) == (
            "RELEASE",
            "L2611-0042",
            "UNRESTRICTED",
            "343",
        )
        assert row["issued_at"] == records.T0 + timedelta(hours=5)
        assert row["part_number"] == "PN-30105-A"
        assert row["environment"] == "env."

    def test_escalation_row_keeps_level_and_due_date(self) -> None:
        """An escalation keeps its level, due date (a date) and recipient."""
        (row,) = rows_of("capa.escalations.v1", records.escalation(level=2))["qms.escalation"]
        assert (row["level"], row["due_date"], row["recipient_role"]) == (
            2,
            date(2026, 2, 20),
            "qa_manager",
        )
        assert row["escalation_id"] == uuid.UUID(records.escalation_id("QMS:CAPA-77", 2))
        assert row["environment"] == "env."

    @pytest.mark.parametrize(
        ("topic", "record", "id_column"),
        [
            ("quality.alerts.v1", records.alert(), "alert_id"),
            ("inventory.quarantine-commands.v1", records.quarantine_command(), "command_id"),
            ("capa.escalations.v1", records.escalation(), "escalation_id"),
        ],
    )
    def test_content_keyed_outputs_are_keyed_by_environment(
        self, topic: str, record: dict[str, Any], id_column: str
    ) -> None:
        """Ids are uuid5s of content, alike in every environment: the key leads with environment."""
        (write,) = binding(topic).writes
        assert write.key == ("environment", id_column) and write.upsert is None
        rec = decoded(topic, record)
        (prod,) = write.to_rows(rec, Coordinates(topic, 0, 1))
        (val,) = write.to_rows(rec, Coordinates(f"tval.{topic}", 0, 1))
        key = [write.columns.index(c) for c in write.key]
        same_id = uuid.UUID(record[id_column])
        assert [prod[i] for i in key] == ["", same_id]
        assert [val[i] for i in key] == ["tval.", same_id]

    @pytest.mark.parametrize(
        ("topic", "record"),
        [
            ("quality.alerts.v1", records.alert()),
            ("inventory.quarantine-commands.v1", records.quarantine_command()),
            ("capa.escalations.v1", records.escalation()),
        ],
    )
    def test_output_read_under_another_topic_is_refused(
        self, topic: str, record: dict[str, Any]
    ) -> None:
        """A record whose topic is not its binding's has no environment: a ValueError."""
        (write,) = binding(topic).writes
        with pytest.raises(ValueError, match=re.escape(topic)):
            write.to_rows(decoded(topic, record), AT)

    def test_parked_row_keeps_the_event_as_json(self) -> None:
        """A parking step keeps its status, missing references and the event JSON."""
        event_id = records.event_ids(1)[0]
        (row,) = rows_of("quality.parked.v1", records.parked(event_id, "RELEASED"))[
            "qms.parked_event"
        ]
        assert row["status"] == "RELEASED"
        assert row["missing_references"] == ["lot:L2611-0042"]
        assert row["deadline_at"] - row["parked_at"] == records.PARKING_DEADLINE
        assert orjson.loads(row["event_json"])["event_id"] == event_id

    @pytest.mark.parametrize(
        ("topic", "record", "field", "bad"),
        [
            ("quality.incidents.v1", records.incident(), "status", "reopened"),
            ("quality.incidents.v1", records.incident(), "severity", "catastrophic"),
            ("quality.alerts.v1", records.alert(), "severity", "high"),
            ("inventory.quarantine-commands.v1", records.quarantine_command(), "action", "BLOCK"),
            ("capa.escalations.v1", records.escalation(), "event_type", "deviation"),
            ("capa.escalations.v1", records.escalation(), "level", 0),
            ("quality.parked.v1", records.parked(records.event_ids(1)[0]), "event_json", "{no"),
        ],
    )
    def test_value_the_table_would_refuse_fails_the_mapping(
        self, topic: str, record: dict[str, Any], field: str, bad: Any
    ) -> None:
        """A value a CHECK constraint would refuse is a ValueError: it dead-letters one record."""
        rec = {**decoded(topic, record), field: bad}
        with pytest.raises(ValueError, match=field):
            for write in binding(topic).writes:
                write.to_rows(rec, at(topic))


class TestBindingsMatchTheMigrations:
    def test_every_output_topic_is_bound(self) -> None:
        """Every canonical, dead-letter and output topic in topics.toml reaches Postgres."""
        from qmsflow.topics import load_catalog

        declared = {
            t.name
            for t in load_catalog().topics
            if t.role in ("canonical", "dead-letter", "output")
        }
        assert declared <= set(BY_TOPIC)

    @pytest.mark.parametrize(
        "write", [w for b in BINDINGS for w in b.writes], ids=lambda w: w.table
    )
    def test_columns_and_key_exist_in_the_table(self, write: TableWrite) -> None:
        """Every column a write names is declared in its table, and the key is its primary key."""
        schema, name = write.table.split(".")
        match = re.search(
            rf"CREATE TABLE {schema}\.{name} \((.*?)\n\);", migrations_sql(), re.DOTALL
        )
        assert match, f"{write.table} is not created by any migration"
        body = match.group(1)
        declared = set(re.findall(r"^\s{4}([a-z_]+)\s", body, re.MULTILINE))
        declared |= set(
            re.findall(rf"ALTER TABLE {schema}\.{name} ADD COLUMN ([a-z_]+)", migrations_sql())
        )
        assert set(write.columns) <= declared
        assert {"kafka_topic", "kafka_partition", "kafka_offset", "loaded_at"} <= declared
        rekeyed = re.findall(
            rf"ALTER TABLE {schema}\.{name}\s[^;]*?ADD PRIMARY KEY \(([^)]*)\)", migrations_sql()
        )
        if rekeyed:  # a later migration replaced the primary key: the last one holds
            assert rekeyed[-1] == ", ".join(write.key)
        elif len(write.key) == 1:
            assert re.search(rf"^\s{{4}}{write.key[0]}\s+\S+ PRIMARY KEY", body, re.MULTILINE)
        else:
            assert f"PRIMARY KEY ({', '.join(write.key)})" in body

    @pytest.mark.parametrize(
        ("table", "column", "allowed"),
        [
            ("incident", "status", INCIDENT_STATUSES),
            ("incident", "severity", SEVERITIES),
            ("alert", "severity", SEVERITIES),
            ("quarantine_command", "action", HOLD_ACTIONS),
            ("escalation", "event_type", ESCALATED_EVENT_TYPES),
            ("parked_event", "status", PARKING_STATUSES),
        ],
    )
    def test_check_constraints_allow_exactly_the_domain_values(
        self, table: str, column: str, allowed: frozenset[str]
    ) -> None:
        """The CHECK list of an enum column is the domain type's values, no more, no less."""
        body = re.search(rf"CREATE TABLE qms\.{table} \((.*?)\n\);", migrations_sql(), re.DOTALL)
        assert body
        check = re.search(rf"CHECK \({column} IN \(([^)]*)\)\)", body.group(1))
        assert check, f"qms.{table}.{column} has no CHECK"
        assert set(re.findall(r"'([^']*)'", check.group(1))) == allowed


class TestSinkBuffering:
    @staticmethod
    def _sink() -> PostgresSink:
        # add() never touches the connection: buffering is pure
        no_connection: Any = None
        return PostgresSink(no_connection, CODEC, consumer_group="g", topic_prefix="t.")

    def test_incident_buffers_its_row_and_its_members(self) -> None:
        """One incident record buffers one incident row plus one row per member."""
        sink = self._sink()
        value = CODEC.encode(
            "quality.incidents.v1-value", records.incident(members=records.event_ids(4))
        )
        sink.add("t.quality.incidents.v1", 0, 9, b"k", value)
        assert sink.pending == 1 + 4
        assert "t.quality.parked.v1" in sink.topics

    def test_record_failing_one_table_buffers_no_row_at_all(self) -> None:
        """A record whose second table's mapping fails becomes one dead letter and no rows."""
        sink = self._sink()
        value = CODEC.encode(
            "quality.incidents.v1-value", records.incident(members=("not-a-uuid",))
        )
        sink.add("t.quality.incidents.v1", 0, 9, b"k", value)
        assert sink.pending == 1  # the dead letter only


class TestStraightCopy:
    def test_only_insert_only_writes_whose_keys_do_not_recur_are_copied_straight(self) -> None:
        """Events are copied into their table; upserts and recurring members go through staging."""
        straight = {w.table for b in BINDINGS for w in b.writes if w.copied_straight}
        assert "qms.quality_event" in straight
        assert "qms.dead_letter" in straight
        assert "qms.incident" not in straight  # upserted
        assert "qms.incident_member" not in straight  # every view re-sends its members
        assert "qms.golden_record" not in straight
        assert all(w.upsert is None for b in BINDINGS for w in b.writes if w.table in straight)

    def test_rows_without_a_repeated_key_are_copied_as_they_are(self) -> None:
        """No key twice: the very rows, in their order."""
        (write,) = binding("quality.alerts.v1").writes
        rows = [
            write.to_rows(records.alert(f"lot:L{n}"), at("quality.alerts.v1"))[0] for n in range(3)
        ]
        assert _first_per_key(write, rows) is rows

    def test_a_key_met_twice_keeps_the_lowest_offset(self) -> None:
        """As the staged INSERT's DISTINCT ON (key) … ORDER BY kafka_offset keeps."""
        (write,) = binding("quality.alerts.v1").writes
        record = records.alert("lot:L1")
        later, earlier = (
            write.to_rows(record, Coordinates("env.quality.alerts.v1", p, o))[0]
            for p, o in ((0, 9), (1, 4))
        )
        other = write.to_rows(records.alert("lot:L2"), at("quality.alerts.v1"))[0]
        kept = _first_per_key(write, [later, other, earlier])
        assert sorted(kept, key=lambda r: r[-1]) == [earlier, other]
