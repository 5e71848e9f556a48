"""How each sinked topic's records become rows: tables, columns, conflict keys. Pure mapping.

A topic binds to one or more table writes (an incident is one `qms.incident` row plus one
`qms.incident_member` row per member). A write is insert-only unless it names an `Upsert`:
insert-only keeps the first row stored under a key; an upsert replaces it with a newer view
when the upsert's rule says so. Values a table's CHECK constraint would refuse are refused here
first, as a `ValueError`, so one bad record becomes a dead letter instead of failing its batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

import orjson

from qmsflow.quality.correlation import IncidentStatus
from qmsflow.quality.data_dictionary import CanonicalSeverity
from qmsflow.quality.escalation import DUE_DATE_FIELD
from qmsflow.quality.event import Coordinates
from qmsflow.quality.integrity import ParkingStatus
from qmsflow.quality.quarantine import HoldAction

Row = tuple[Any, ...]
RowMapper = Callable[[Mapping[str, Any], Coordinates], list[Row]]

#: the values the migrations' CHECK constraints allow, taken from the domain's own types
SEVERITIES: frozenset[str] = frozenset(get_args(CanonicalSeverity))
INCIDENT_STATUSES: frozenset[str] = frozenset(get_args(IncidentStatus))
HOLD_ACTIONS: frozenset[str] = frozenset(get_args(HoldAction))
PARKING_STATUSES: frozenset[str] = frozenset(get_args(ParkingStatus))
ESCALATED_EVENT_TYPES: frozenset[str] = frozenset(DUE_DATE_FIELD)

#: lineage every sink table ends with (plus `loaded_at`, which the database fills in)
LINEAGE_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")


@dataclass(frozen=True)
class Upsert:
    """How a newer record replaces the stored row of its key.

    `newest_first` orders a batch's rows of one key so the first is the one to keep (after the
    key columns, in ORDER BY syntax); `replaces_when` is the ON CONFLICT … WHERE condition over
    the stored row (the table's name) and the incoming one (`EXCLUDED`). Both must agree: the
    row a batch keeps is the row the batch's records, applied one by one, would have left.
    """

    newest_first: tuple[str, ...]
    replaces_when: str


@dataclass(frozen=True)
class TableWrite:
    """Rows of one table made from a topic's records; insert-only unless `upsert` is set."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the conflict key: the table's primary key
    to_rows: RowMapper
    upsert: Upsert | None = None

    @property
    def updated_columns(self) -> tuple[str, ...]:
        """The columns an upsert overwrites: all but the key."""
        return tuple(c for c in self.columns if c not in self.key)


@dataclass(frozen=True)
class TableBinding:
    """A topic sinked into one or more tables."""

    topic: str  # logical topic name
    subject: str
    writes: tuple[TableWrite, ...]


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
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)


def dead_letter_row(letter: Mapping[str, Any], at: Coordinates) -> Row:
    """A `qms.dead_letter` row from a decoded `quality.dlq.v1` record."""
    original_ms = letter["original_timestamp"]
    headers = [
        {"key": h["key"], "value": None if h["value"] is None else h["value"].hex()}
        for h in letter["headers"]
    ]
    return (
        letter["dead_letter_id"],
        letter["reason_code"],
        letter["reason"],
        letter["stage"],
        letter["topic"],
        letter["partition"],
        letter["offset"],
        letter["key"],
        letter["value"],
        _json(headers),
        None if original_ms is None else _from_millis(original_ms),
        letter["failed_at"],
        letter["schema_id"],
        at.topic,
        at.partition,
        at.offset,
    )


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


INCIDENT_COLUMNS = (
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


INCIDENT_MEMBER_COLUMNS = ("incident_id", "event_id", *LINEAGE_COLUMNS)


def incident_member_rows(incident: Mapping[str, Any], at: Coordinates) -> list[Row]:
    """One `qms.incident_member` row per member event of a `quality.incidents.v1` record."""
    incident_id = _uuid(incident["incident_id"], "incident_id")
    return [
        (incident_id, _uuid(event_id, f"member_event_ids[{n}]"), *_lineage(at))
        for n, event_id in enumerate(incident["member_event_ids"])
    ]


ALERT_COLUMNS = (
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
                ("incident_id",),
                _single(incident_row),
                INCIDENT_UPSERT,
            ),
            # members only ever grow from one view to the next, so the union of every view's
            # members, insert-only, is the newest view's member set whatever the arrival order
            _insert_only(
                "qms.incident_member",
                INCIDENT_MEMBER_COLUMNS,
                ("incident_id", "event_id"),
                incident_member_rows,
            ),
        ),
    ),
    TableBinding(
        "quality.alerts.v1",
        "quality.alerts.v1-value",
        (_insert_only("qms.alert", ALERT_COLUMNS, "alert_id", _single(alert_row)),),
    ),
    TableBinding(
        "inventory.quarantine-commands.v1",
        "inventory.quarantine-commands.v1-value",
        (
            _insert_only(
                "qms.quarantine_command",
                QUARANTINE_COMMAND_COLUMNS,
                "command_id",
                _single(quarantine_command_row),
            ),
        ),
    ),
    TableBinding(
        "capa.escalations.v1",
        "capa.escalations.v1-value",
        (
            _insert_only(
                "qms.escalation", ESCALATION_COLUMNS, "escalation_id", _single(escalation_row)
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
)
