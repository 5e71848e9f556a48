"""How each sinked topic's records become rows: tables, columns, conflict keys. Pure mapping.

A topic binds to one or more table writes (an incident is one `qms.incident` row plus one
`qms.incident_member` row per member). A write is insert-only unless it names an `Upsert`:
insert-only keeps the first row stored under a key; an upsert replaces it with a newer view
when the upsert's rule says so. An insert-only write whose keys come again by design
(`keys_recur`: every incident view re-sends its members) is told apart from one where a stored
key is only ever a redelivery: the sink copies the latter straight into its table. A binding
may lift record headers into the record (`header_fields`), and a write of a compacted topic may
map a tombstone (null value) to rows (`on_tombstone`); a tombstone on any other topic is a dead
letter. Values a table's CHECK constraint would refuse are refused here first, as a
`ValueError`, so one bad record becomes a dead letter instead of failing its batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import orjson

from qmsflow.quality.correlation import IncidentStatus
from qmsflow.quality.data_dictionary import CanonicalSeverity
from qmsflow.quality.dead_letter import (
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    clean_text,
    storable_text,
)
from qmsflow.quality.escalation import DUE_DATE_FIELD
from qmsflow.quality.event import Coordinates
from qmsflow.quality.golden_record import EntityKind
from qmsflow.quality.integrity import ParkingStatus
from qmsflow.quality.quarantine import HoldAction
from qmsflow.quality.sla import SlaOutput

Row = tuple[Any, ...]
RowMapper = Callable[[Mapping[str, Any], Coordinates], list[Row]]
#: rows for a tombstone: (message key as text, the binding's header fields, coordinates)
TombstoneMapper = Callable[[str, Mapping[str, str], Coordinates], list[Row]]

#: the values the migrations' CHECK constraints allow, taken from the domain's own types
SEVERITIES: frozenset[str] = frozenset(get_args(CanonicalSeverity))
INCIDENT_STATUSES: frozenset[str] = frozenset(get_args(IncidentStatus))
HOLD_ACTIONS: frozenset[str] = frozenset(get_args(HoldAction))
PARKING_STATUSES: frozenset[str] = frozenset(get_args(ParkingStatus))
ESCALATED_EVENT_TYPES: frozenset[str] = frozenset(DUE_DATE_FIELD)
GOLDEN_KINDS: frozenset[str] = frozenset(get_args(EntityKind))
SLA_OUTPUTS: frozenset[str] = frozenset(get_args(SlaOutput))

#: the header carrying a golden record's version on md.<entity>.v1 (the Avro datum has none)
GOLDEN_VERSION_HEADER = "golden-version"

#: lineage every sink table ends with (plus `loaded_at`, which the database fills in)
LINEAGE_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")


@dataclass(frozen=True)
class Upsert:
    """How a newer record replaces the stored row of its key.

    `newest_first` orders a batch's rows of one key so the first is the one to keep (after the
    key columns, in ORDER BY syntax); `replaces_when` is the ON CONFLICT … WHERE condition over
    the stored row (the table's name) and the incoming one (`EXCLUDED`). Both must agree: the
    row a batch keeps is the row the batch's records, applied one by one, would have left.
    `rank` is `newest_first` in Python, over a row as a column → value mapping: the row of
    lowest rank is the first; the sink narrows a batch with it before sending it, so the
    staging table gets one row per key (a test holds it to the ORDER BY, in Postgres).
    """

    newest_first: tuple[str, ...]
    replaces_when: str
    rank: Callable[[Mapping[str, Any]], tuple[Any, ...]]


@dataclass(frozen=True)
class TableWrite:
    """Rows of one table made from a topic's records; insert-only unless `upsert` is set."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the conflict key: the table's primary key
    to_rows: RowMapper
    upsert: Upsert | None = None
    on_tombstone: TombstoneMapper | None = None  # only for compacted topics
    #: an insert-only key that later records send again as a matter of course, not by redelivery
    keys_recur: bool = False

    @property
    def updated_columns(self) -> tuple[str, ...]:
        """The columns an upsert overwrites: all but the key."""
        return tuple(c for c in self.columns if c not in self.key)

    @property
    def copied_straight(self) -> bool:
        """Whether a batch of new keys may be copied into the table itself, without staging.

        True for insert-only writes whose keys do not recur: a stored key is then a redelivery,
        rare enough that the sink rewrites its batch through staging when one is met.
        """
        return self.upsert is None and not self.keys_recur


@dataclass(frozen=True)
class TableBinding:
    """A topic sinked into one or more tables."""

    topic: str  # logical topic name
    subject: str
    writes: tuple[TableWrite, ...]
    header_fields: tuple[tuple[str, str], ...] = ()  # (header name, record field it becomes)

    @property
    def accepts_tombstones(self) -> bool:
        """Whether a null value maps to rows (compacted topics) instead of a dead letter."""
        return any(w.on_tombstone is not None for w in self.writes)

    def fields_from_headers(self, headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
        """The declared headers as record fields (UTF-8 text); absent headers are left out."""
        if not self.header_fields:  # most topics lift none: skip the per-record walk
            return {}
        wanted = dict(self.header_fields)
        return {
            wanted[name]: value.decode("utf-8")
            for name, value in headers
            if name in wanted and value is not None
        }


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, default=_json_default).decode("utf-8")


def _json_default(value: Any) -> Any:
    # Decimals stay exact as strings; bytes (none expected) as hex rather than failing the batch.
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


QUALITY_EVENT_COLUMNS = (
    "event_id",
    "event_type",
    "source_system",
    "source_record_id",
    "occurred_at",
    "recorded_at",
    "product_line",
    "site",
    "lot_id",
    "part_number",
    "supplier_id",
    "equipment_id",
    "severity",
    "source_severity",
    "status",
    "source_status",
    "signature",
    "audit",
    "correlation_id",
    "synthetic",
    "payload_type",
    "payload",
    "defect_category",
    "trace_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "source_schema_id",
    "source_subject",
    "source_schema_version",
    "ingested_at",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)


def quality_event_row(event: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.quality_event` row from a decoded `quality.events.v1` record."""
    lineage = event["lineage"]
    payload = event["payload"]
    if isinstance(payload, tuple):  # fastavro's (record name, value) union notation
        payload = payload[1]
    return (
        event["event_id"],
        event["event_type"],
        event["source_system"],
        event["source_record_id"],
        event["occurred_at"],
        event["recorded_at"],
        event["product_line"],
        event["site"],
        event["lot_id"],
        event["part_number"],
        event["supplier_id"],
        event["equipment_id"],
        event["severity"],
        event["source_severity"],
        event["status"],
        event["source_status"],
        _json(event["signature"]),
        _json(event["audit"]),
        event["correlation_id"],
        event["synthetic"],
        event["event_type"],
        _json(payload),
        event.get("defect_category"),  # absent in events written with schema v1
        event["trace_id"],
        lineage["topic"],
        lineage["partition"],
        lineage["offset"],
        lineage["schema_id"],
        lineage["subject"],
        lineage["schema_version"],
        lineage["ingested_at"],
        at.topic,
        at.partition,
        at.offset,
    )


DEAD_LETTER_COLUMNS = (
    "dead_letter_id",
    "reason_code",
    "reason",
    "stage",
    "source_topic",
    "source_partition",
    "source_offset",
    "original_key",
    "original_value",
    "headers",
    "original_timestamp",
    "failed_at",
    "schema_id",
    "value_length",
    "value_digest",
    "value_truncated",
    "headers_dropped",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)


def dead_letter_row(letter: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.dead_letter` row from a decoded `quality.dlq.v1` record (v1 or v2).

    Text is made storable again here, whoever wrote the record: a dead letter Postgres refuses
    would become a dead letter of the sink, whose row could be refused the same way. jsonb
    refuses NUL in header names too; such a name is stored with U+FFFD.
    """
    original_ms = letter["original_timestamp"]
    headers = [
        {
            "key": clean_text(h["key"]),
            "value": None if h["value"] is None else h["value"].hex(),
        }
        for h in letter["headers"]
    ]
    value_length = letter.get("value_length")
    return (
        letter["dead_letter_id"],
        storable_text(letter["reason_code"], MAX_NAME_CHARS),
        storable_text(letter["reason"], MAX_REASON_CHARS),
        storable_text(letter["stage"], MAX_NAME_CHARS),
        clean_text(letter["topic"]),
        letter["partition"],
        letter["offset"],
        letter["key"],
        letter["value"],
        _json(headers),
        None if original_ms is None else _from_millis(original_ms),
        letter["failed_at"],
        letter["schema_id"],
        None if value_length is None or value_length < 0 else value_length,
        _sha256_hex(letter.get("value_sha256")),
        bool(letter.get("value_truncated", False)),
        max(int(letter.get("headers_dropped", 0)), 0),
        at.topic,
        at.partition,
        at.offset,
    )


def _sha256_hex(digest: str | None) -> str | None:
    # only a well-formed digest is kept: replay compares it, and it must never fail the row
    if digest is None or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest


def _from_millis(value: int | datetime) -> datetime:
    # fastavro already turns timestamp-millis into datetime; accept a raw int as well.
    return value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)


def _uuid(value: Any, field: str) -> uuid.UUID:
    # fastavro hands uuid logical types over as UUID objects; a raw str is checked the same way
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{field}: expected a UUID, got {value!r}") from None


def _one_of(value: Any, allowed: frozenset[str], field: str) -> str:
    if value not in allowed:
        raise ValueError(f"{field}: expected one of {sorted(allowed)}, got {value!r}")
    return str(value)


def _at_least(value: Any, minimum: int, field: str) -> int:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field}: expected an integer ≥ {minimum}, got {value!r}")
    return value


def _lineage(at: Coordinates) -> Row:
    return (at.topic, at.partition, at.offset)


def _environment(at: Coordinates, topic: str) -> str:
    """The topic prefix `at` was read under: the environment of golden and stage-output rows."""
    if not at.topic.endswith(topic):
        raise ValueError(f"topic: expected a name ending in {topic!r}, got {at.topic!r}")
    return at.topic.removesuffix(topic)


def _md_topic(kind: EntityKind) -> str:
    return f"md.{kind.replace('_', '-')}.v1"


INCIDENT_COLUMNS = (
    "environment",
    "incident_id",
    "root_cause_key",
    "ordinal",
    "status",
    "severity",
    "opened_at",
    "last_at",
    "member_count",
    "suppressed_alerts",
    "event_types",
    "source_systems",
    "product_line",
    "site",
    "revision",
    *LINEAGE_COLUMNS,
)


def incident_row(incident: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.incident` row from a decoded `quality.incidents.v1` record (members aside)."""
    return (
        _environment(at, "quality.incidents.v1"),
        _uuid(incident["incident_id"], "incident_id"),
        incident["root_cause_key"],
        _at_least(incident["ordinal"], 1, "ordinal"),
        _one_of(incident["status"], INCIDENT_STATUSES, "status"),
        _one_of(incident["severity"], SEVERITIES, "severity"),
        incident["opened_at"],
        incident["last_at"],
        _at_least(incident["member_count"], 1, "member_count"),
        _at_least(incident["suppressed_alerts"], 0, "suppressed_alerts"),
        list(incident["event_types"]),
        list(incident["source_systems"]),
        incident["product_line"],
        incident["site"],
        _at_least(incident["revision"], 1, "revision"),
        *_lineage(at),
    )


INCIDENT_MEMBER_COLUMNS = ("environment", "incident_id", "event_id", *LINEAGE_COLUMNS)


def incident_member_rows(incident: Mapping[str, Any], at: Coordinates) -> list[Row]:
    """One `qms.incident_member` row per member event of a `quality.incidents.v1` record."""
    environment = _environment(at, "quality.incidents.v1")
    incident_id = _uuid(incident["incident_id"], "incident_id")
    return [
        (environment, incident_id, _uuid(event_id, f"member_event_ids[{n}]"), *_lineage(at))
        for n, event_id in enumerate(incident["member_event_ids"])
    ]


ALERT_COLUMNS = (
    "environment",
    "alert_id",
    "incident_id",
    "root_cause_key",
    "severity",
    "raised_at",
    "product_line",
    "site",
    "summary",
    "first_event_id",
    "first_event_type",
    "source_system",
    *LINEAGE_COLUMNS,
)


def alert_row(alert: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.alert` row from a decoded `quality.alerts.v1` record."""
    return (
        _environment(at, "quality.alerts.v1"),
        _uuid(alert["alert_id"], "alert_id"),
        _uuid(alert["incident_id"], "incident_id"),
        alert["root_cause_key"],
        _one_of(alert["severity"], SEVERITIES, "severity"),
        alert["raised_at"],
        alert["product_line"],
        alert["site"],
        alert["summary"],
        _uuid(alert["first_event_id"], "first_event_id"),
        alert["first_event_type"],
        alert["source_system"],
        *_lineage(at),
    )


QUARANTINE_COMMAND_COLUMNS = (
    "environment",
    "command_id",
    "action",
    "lot_id",
    "part_number",
    "product_line",
    "site",
    "reason",
    "trigger_event_id",
    "trigger_event_type",
    "trigger_source_record_id",
    "issued_at",
    "target_stock_type",
    "sap_movement_type",
    *LINEAGE_COLUMNS,
)


def quarantine_command_row(command: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.quarantine_command` row from a decoded `inventory.quarantine-commands.v1` record."""
    return (
        _environment(at, "inventory.quarantine-commands.v1"),
        _uuid(command["command_id"], "command_id"),
        _one_of(command["action"], HOLD_ACTIONS, "action"),
        command["lot_id"],
        command["part_number"],
        command["product_line"],
        command["site"],
        command["reason"],
        _uuid(command["trigger_event_id"], "trigger_event_id"),
        command["trigger_event_type"],
        command["trigger_source_record_id"],
        command["issued_at"],
        command["target_stock_type"],
        command["sap_movement_type"],
        *_lineage(at),
    )


ESCALATION_COLUMNS = (
    "environment",
    "escalation_id",
    "record_key",
    "event_type",
    "source_record_id",
    "level",
    "due_date",
    "overdue_days",
    "escalated_at",
    "recipient_role",
    "product_line",
    "site",
    "title",
    *LINEAGE_COLUMNS,
)


def escalation_row(escalation: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.escalation` row from a decoded `capa.escalations.v1` record."""
    return (
        _environment(at, "capa.escalations.v1"),
        _uuid(escalation["escalation_id"], "escalation_id"),
        escalation["record_key"],
        _one_of(escalation["event_type"], ESCALATED_EVENT_TYPES, "event_type"),
        escalation["source_record_id"],
        _at_least(escalation["level"], 1, "level"),
        escalation["due_date"],
        escalation["overdue_days"],
        escalation["escalated_at"],
        escalation["recipient_role"],
        escalation["product_line"],
        escalation["site"],
        escalation["title"],
        *_lineage(at),
    )


SIGNATURE_CHECK_COLUMNS = (
    "check_id",
    "event_id",
    "event_type",
    "source_system",
    "source_record_id",
    "product_line",
    "signer_id",
    "printed_name",
    "meaning",
    "signed_at",
    "status",
    "problems",
    "checked_at",
    *LINEAGE_COLUMNS,
)


def signature_check_row(check: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.signature_check` row from a decoded `quality.signature-checks.v1` record."""
    return (
        _uuid(check["check_id"], "check_id"),
        _uuid(check["event_id"], "event_id"),
        check["event_type"],
        check["source_system"],
        check["source_record_id"],
        check["product_line"],
        check["signer_id"],
        check["printed_name"],
        check["meaning"],
        check["signed_at"],
        _one_of(check["status"], frozenset({"valid", "invalid"}), "status"),
        list(check["problems"]),
        check["checked_at"],
        *_lineage(at),
    )


PARKED_EVENT_COLUMNS = (
    "event_id",
    "status",
    "event_type",
    "product_line",
    "missing_references",
    "parked_at",
    "deadline_at",
    "event_json",
    *LINEAGE_COLUMNS,
)


def parked_event_row(parked: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.parked_event` row: one park, release or expiry from `quality.parked.v1`."""
    event_json = parked["event_json"]
    try:
        orjson.loads(event_json)
    except orjson.JSONDecodeError as error:
        raise ValueError(f"event_json: expected a JSON document, got {error}") from None
    return (
        _uuid(parked["event_id"], "event_id"),
        _one_of(parked["status"], PARKING_STATUSES, "status"),
        parked["event_type"],
        parked["product_line"],
        list(parked["missing_references"]),
        parked["parked_at"],
        parked["deadline_at"],
        event_json,
        *_lineage(at),
    )


#: each md.<entity>.v1 topic's golden record kind and the datum field holding its id (the key)
GOLDEN_RECORD_IDS: dict[EntityKind, str] = {
    "lot": "lot_id",
    "part": "part_number",
    "supplier": "supplier_id",
    "equipment": "equipment_id",
    "employee": "employee_id",
    "customer_spec": "spec_id",
}

GOLDEN_RECORD_COLUMNS = (
    "environment",
    "kind",
    "entity_id",
    "fields",
    "version",
    "source_system",
    "updated_at",
    "deleted",
    *LINEAGE_COLUMNS,
)

#: md datum fields that are columns of their own rather than part of `fields`
_GOLDEN_STAMP = frozenset({"golden_version", "source_system", "updated_at", "deleted"})


def _golden_version(fields: Mapping[str, Any]) -> int | None:
    """The golden version from the record's header; None from producers that send none."""
    text = fields.get("golden_version")
    if text is None:
        return None
    try:
        version = int(text)
    except ValueError:
        raise ValueError(f"golden_version: expected an integer, got {text!r}") from None
    return _at_least(version, 1, "golden_version")


def golden_record_rows(kind: EntityKind) -> RowMapper:
    """The `qms.golden_record` row of a decoded md.<entity>.v1 datum of `kind`."""
    id_field = GOLDEN_RECORD_IDS[kind]

    def to_rows(datum: Mapping[str, Any], at: Coordinates) -> list[Row]:
        fields = {k: v for k, v in datum.items() if k != id_field and k not in _GOLDEN_STAMP}
        return [
            (
                _environment(at, _md_topic(kind)),
                kind,
                datum[id_field],
                _json(fields),
                _golden_version(datum),
                datum["source_system"],
                datum["updated_at"],
                bool(datum["deleted"]),
                *_lineage(at),
            )
        ]

    return to_rows


def golden_tombstone_rows(kind: EntityKind) -> TombstoneMapper:
    """The `qms.golden_record` row of an md.<entity>.v1 tombstone: the record is deleted."""

    def to_rows(entity_id: str, fields: Mapping[str, str], at: Coordinates) -> list[Row]:
        environment = _environment(at, _md_topic(kind))
        version = _golden_version(fields)
        return [(environment, kind, entity_id, None, version, None, None, True, *_lineage(at))]

    return to_rows


GOLDEN_HISTORY_COLUMNS = (
    "environment",
    "kind",
    "entity_id",
    "version",
    "valid_from",
    "valid_to",
    "source",
    "lsn",
    "fields",
    "cdc_topic",
    "cdc_partition",
    "cdc_offset",
    *LINEAGE_COLUMNS,
)


def golden_history_row(row: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.golden_record_history` row from a decoded `md.history.v1` record."""
    try:
        fields = orjson.loads(row["fields_json"])
    except orjson.JSONDecodeError as error:
        raise ValueError(f"fields_json: expected a JSON object, got {error}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"fields_json: expected a JSON object, got {type(fields).__name__}")
    valid_to = row["valid_to"]
    if valid_to is not None and valid_to < row["valid_from"]:
        raise ValueError(f"valid_to: expected ≥ valid_from {row['valid_from']}, got {valid_to}")
    return (
        _environment(at, "md.history.v1"),
        _one_of(row["kind"], GOLDEN_KINDS, "kind"),
        row["entity_id"],
        _at_least(row["version"], 1, "version"),
        row["valid_from"],
        valid_to,
        row["source"],
        row["lsn"],
        row["fields_json"],
        row["cdc_topic"],
        row["cdc_partition"],
        row["cdc_offset"],
        *_lineage(at),
    )


MD_CONFLICT_COLUMNS = (
    "environment",
    "conflict_id",
    "kind",
    "entity_id",
    "field",
    "winning_value",
    "winning_source",
    "winning_ts",
    "losing_value",
    "losing_source",
    "losing_ts",
    "rule",
    "detected_at",
    *LINEAGE_COLUMNS,
)


def md_conflict_row(conflict: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.md_conflict` row from a decoded `md.conflicts.v1` record."""
    return (
        _environment(at, "md.conflicts.v1"),
        _uuid(conflict["conflict_id"], "conflict_id"),
        _one_of(conflict["kind"], GOLDEN_KINDS, "kind"),
        conflict["entity_id"],
        conflict["field"],
        conflict["winning_value"],
        conflict["winning_source"],
        conflict["winning_ts"],
        conflict["losing_value"],
        conflict["losing_source"],
        conflict["losing_ts"],
        conflict["rule"],
        conflict["detected_at"],
        *_lineage(at),
    )


SLA_BREACH_COLUMNS = (
    "breach_id",
    "sla",
    "interface",
    "event_id",
    "event_type",
    "source_system",
    "source_record_id",
    "product_line",
    "site",
    "output",
    "output_id",
    "recorded_at",
    "produced_at",
    "elapsed_ms",
    "limit_ms",
    "trace_id",
    "correlation_id",
    "synthetic",
    *LINEAGE_COLUMNS,
)


def sla_breach_row(breach: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.sla_breach` row from a decoded `ops.sla-breaches.v1` record."""
    return (
        _uuid(breach["breach_id"], "breach_id"),
        breach["sla"],
        breach["interface"],
        _uuid(breach["event_id"], "event_id"),
        breach["event_type"],
        breach["source_system"],
        breach["source_record_id"],
        breach["product_line"],
        breach["site"],
        _one_of(breach["output"], SLA_OUTPUTS, "output"),
        breach["output_id"],
        breach["recorded_at"],
        breach["produced_at"],
        _at_least(breach["elapsed_ms"], 0, "elapsed_ms"),
        _at_least(breach["limit_ms"], 1, "limit_ms"),
        breach["trace_id"],
        breach["correlation_id"],
        breach["synthetic"],
        *_lineage(at),
    )


def _single(to_row: Callable[[Mapping[str, Any], Coordinates], Row]) -> RowMapper:
    def to_rows(record: Mapping[str, Any], at: Coordinates) -> list[Row]:
        return [to_row(record, at)]

    return to_rows


def _insert_only(
    table: str, columns: tuple[str, ...], key: str | tuple[str, ...], to_rows: RowMapper
) -> TableWrite:
    return TableWrite(table, columns, (key,) if isinstance(key, str) else key, to_rows)


#: an incident is a sequence of full views; the stored row is the newest: the highest revision,
#: and at the same revision the closing view (which keeps the last open view's revision) beats
#: the open one. Among equal views the newest delivery is kept, for its lineage.
INCIDENT_UPSERT = Upsert(
    newest_first=("revision DESC", "(status = 'closed') DESC", "kafka_offset DESC"),
    replaces_when=(
        "qms.incident.revision < EXCLUDED.revision OR (qms.incident.revision = EXCLUDED.revision"
        " AND qms.incident.status = 'open' AND EXCLUDED.status = 'closed')"
    ),
    rank=lambda r: (-r["revision"], r["status"] != "closed", -r["kafka_offset"]),
)


#: a golden record's newest view is the latest on its compacted md topic: a key lives in one
#: partition, so its offsets only grow, whoever produced it (the master-data agent, which also
#: sends the golden version, or a loader that sends none); a republished view replaces the row
#: with the same values and its own lineage. Recreating an md topic restarts its offsets: its
#: rows in qms.golden_record must be deleted with it (see migration 0004).
GOLDEN_RECORD_UPSERT = Upsert(
    newest_first=("kafka_offset DESC",),
    replaces_when="qms.golden_record.kafka_offset < EXCLUDED.kafka_offset",
    rank=lambda r: (-r["kafka_offset"],),
)

#: a version's row is written open (valid_to NULL) and later closed: the closing row replaces
#: the open one, once; nothing replaces a closed row (see migration 0004)
GOLDEN_HISTORY_UPSERT = Upsert(
    newest_first=("(valid_to IS NULL)", "kafka_offset"),
    replaces_when=("qms.golden_record_history.valid_to IS NULL AND EXCLUDED.valid_to IS NOT NULL"),
    rank=lambda r: (r["valid_to"] is None, r["kafka_offset"]),
)


def _golden_binding(kind: EntityKind) -> TableBinding:
    topic = _md_topic(kind)
    return TableBinding(
        topic,
        f"{topic}-value",
        (
            TableWrite(
                "qms.golden_record",
                GOLDEN_RECORD_COLUMNS,
                ("environment", "kind", "entity_id"),
                golden_record_rows(kind),
                GOLDEN_RECORD_UPSERT,
                on_tombstone=golden_tombstone_rows(kind),
            ),
        ),
        header_fields=((GOLDEN_VERSION_HEADER, "golden_version"),),
    )


BINDINGS: tuple[TableBinding, ...] = (
    TableBinding(
        "quality.events.v1",
        "quality.events.v1-value",
        (
            _insert_only(
                "qms.quality_event", QUALITY_EVENT_COLUMNS, "event_id", _single(quality_event_row)
            ),
        ),
    ),
    TableBinding(
        "quality.dlq.v1",
        "quality.dlq.v1-value",
        (
            _insert_only(
                "qms.dead_letter", DEAD_LETTER_COLUMNS, "dead_letter_id", _single(dead_letter_row)
            ),
        ),
    ),
    TableBinding(
        "quality.incidents.v1",
        "quality.incidents.v1-value",
        (
            TableWrite(
                "qms.incident",
                INCIDENT_COLUMNS,
                ("environment", "incident_id"),
                _single(incident_row),
                INCIDENT_UPSERT,
            ),
            # members only ever grow from one view to the next, so the union of every view's
            # members, insert-only, is the newest view's member set whatever the arrival order;
            # each view re-sends them all, so their keys recur
            TableWrite(
                "qms.incident_member",
                INCIDENT_MEMBER_COLUMNS,
                ("environment", "incident_id", "event_id"),
                incident_member_rows,
                keys_recur=True,
            ),
        ),
    ),
    TableBinding(
        "quality.alerts.v1",
        "quality.alerts.v1-value",
        (
            _insert_only(
                "qms.alert", ALERT_COLUMNS, ("environment", "alert_id"), _single(alert_row)
            ),
        ),
    ),
    TableBinding(
        "inventory.quarantine-commands.v1",
        "inventory.quarantine-commands.v1-value",
        (
            _insert_only(
                "qms.quarantine_command",
                QUARANTINE_COMMAND_COLUMNS,
                ("environment", "command_id"),
                _single(quarantine_command_row),
            ),
        ),
    ),
    TableBinding(
        "capa.escalations.v1",
        "capa.escalations.v1-value",
        (
            _insert_only(
                "qms.escalation",
                ESCALATION_COLUMNS,
                ("environment", "escalation_id"),
                _single(escalation_row),
            ),
        ),
    ),
    TableBinding(
        "quality.signature-checks.v1",
        "quality.signature-checks.v1-value",
        (
            _insert_only(
                "qms.signature_check",
                SIGNATURE_CHECK_COLUMNS,
                "check_id",
                _single(signature_check_row),
            ),
        ),
    ),
    TableBinding(
        "quality.parked.v1",
        "quality.parked.v1-value",
        (
            _insert_only(
                "qms.parked_event",
                PARKED_EVENT_COLUMNS,
                ("event_id", "status"),
                _single(parked_event_row),
            ),
        ),
    ),
    TableBinding(
        "md.conflicts.v1",
        "md.conflicts.v1-value",
        (
            _insert_only(
                "qms.md_conflict",
                MD_CONFLICT_COLUMNS,
                ("environment", "conflict_id"),
                _single(md_conflict_row),
            ),
        ),
    ),
    TableBinding(
        "md.history.v1",
        "md.history.v1-value",
        (
            TableWrite(
                "qms.golden_record_history",
                GOLDEN_HISTORY_COLUMNS,
                ("environment", "kind", "entity_id", "version"),
                _single(golden_history_row),
                GOLDEN_HISTORY_UPSERT,
            ),
        ),
    ),
    TableBinding(
        "ops.sla-breaches.v1",
        "ops.sla-breaches.v1-value",
        (_insert_only("qms.sla_breach", SLA_BREACH_COLUMNS, "breach_id", _single(sla_breach_row)),),
    ),
    *(_golden_binding(kind) for kind in GOLDEN_RECORD_IDS),
)
