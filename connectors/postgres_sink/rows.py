"""How each sinked topic's records become rows: table, columns, conflict key. Pure mapping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from qmsflow.quality.event import Coordinates

Row = tuple[Any, ...]


@dataclass(frozen=True)
class TableBinding:
    """A topic sinked into one table; rows with an existing key are left as they are."""

    topic: str  # logical topic name
    subject: str
    table: str
    columns: tuple[str, ...]
    key: str
    to_row: Callable[[Mapping[str, Any], Coordinates], Row]


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


BINDINGS: tuple[TableBinding, ...] = (
    TableBinding(
        "quality.events.v1",
        "quality.events.v1-value",
        "qms.quality_event",
        QUALITY_EVENT_COLUMNS,
        "event_id",
        quality_event_row,
    ),
    TableBinding(
        "quality.dlq.v1",
        "quality.dlq.v1-value",
        "qms.dead_letter",
        DEAD_LETTER_COLUMNS,
        "dead_letter_id",
        dead_letter_row,
    ),
)
