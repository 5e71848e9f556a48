"""Normalise: a decoded ingest record → the canonical quality event.

Canonical means: status and severity in the data dictionary's terms (the source's own words kept
beside them), units as UCUM codes, times as UTC, and the key/product-line contract enforced.
Anything that cannot be mapped raises NormalisationError; the agent dead-letters it with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from qmsflow.errors import NormalisationError
from qmsflow.quality.data_dictionary import DataDictionary
from qmsflow.quality.event import PAYLOAD_RECORD, Coordinates, Lineage, QualityEvent

#: per measured record type: the payload field naming the characteristic, and its numeric fields
_MEASURED: dict[str, tuple[str, tuple[str, ...]]] = {
    "lab_result": ("analyte", ("result_value", "spec_low", "spec_high")),
    "inspection_result": ("characteristic", ("measured_value", "lower_limit", "upper_limit")),
    "environmental_reading": ("parameter", ("value", "alert_limit", "action_limit")),
}
#: per record type: the payload field whose word classifies the defect, and how to read it
_DEFECT_FIELD = {
    "nonconformance": "defect_code",
    "inspection_result": "result",
    "lab_result": "result_status",
}


def normalise(
    record: Mapping[str, Any],
    *,
    expected_event_type: str,
    key: bytes | None,
    coordinates: Coordinates,
    schema_id: int,
    subject: str,
    schema_version: int,
    dictionary: DataDictionary,
    ingested_at: datetime,
) -> QualityEvent:
    """Map one decoded record to the canonical model, or raise NormalisationError saying why."""
    event_type = record["event_type"]
    if event_type != expected_event_type:
        raise NormalisationError(
            f"event_type: topic {coordinates.topic} carries {expected_event_type!r} events, "
            f"got {event_type!r}"
        )
    product_line = record["product_line"]
    if key is None or key.decode("utf-8", "replace") != product_line:
        raise NormalisationError(
            f"key: the message key must be the product line {product_line!r} (it decides the "
            f"partition), got {key!r}"
        )
    event_id = _event_id(record["event_id"])

    source_severity = record.get("severity")
    payload, defect_category = _normalise_payload(event_type, record["payload"], dictionary)
    return {
        "event_id": event_id,
        "event_type": event_type,
        "source_system": record["source_system"],
        "source_record_id": record["source_record_id"],
        "occurred_at": _utc(record["occurred_at"], "occurred_at"),
        "recorded_at": _utc(record["recorded_at"], "recorded_at"),
        "product_line": product_line,
        "site": record["site"],
        "lot_id": record.get("lot_id"),
        "part_number": record.get("part_number"),
        "supplier_id": record.get("supplier_id"),
        "equipment_id": record.get("equipment_id"),
        "severity": (
            None if source_severity is None else dictionary.canonical_severity(source_severity)
        ),
        "source_severity": source_severity,
        "status": dictionary.canonical_status(record["status"]),
        "source_status": record["status"],
        "signature": record.get("signature"),
        "audit": record.get("audit"),
        "correlation_id": record.get("correlation_id"),
        "synthetic": bool(record.get("synthetic", False)),
        "lineage": Lineage(
            topic=coordinates.topic,
            partition=coordinates.partition,
            offset=coordinates.offset,
            schema_id=schema_id,
            subject=subject,
            schema_version=schema_version,
            ingested_at=ingested_at,
        ),
        "trace_id": None,
        "payload": (PAYLOAD_RECORD[event_type], payload),
        "defect_category": defect_category,
    }


def _normalise_payload(
    event_type: str, payload: Mapping[str, Any], dictionary: DataDictionary
) -> tuple[dict[str, Any], str | None]:
    """Canonical units and declared precision in the payload; the event's defect category."""
    normalised = dict(payload)
    unit = normalised.get("unit")
    if unit is not None:
        normalised["unit"] = unit = dictionary.canonical_unit(unit, field="payload.unit")
    measured = _MEASURED.get(event_type)
    if measured is not None:
        name_field, value_fields = measured
        characteristic = dictionary.characteristic_of(str(normalised.get(name_field, "")))
        if characteristic is not None:
            if unit is not None and unit != characteristic.unit:
                raise NormalisationError(
                    f"payload.unit: {normalised[name_field]!r} is declared in "
                    f"{characteristic.unit!r}, got {unit!r}; values are never compared across "
                    "units"
                )
            for field in value_fields:
                if normalised.get(field) is not None:
                    normalised[field] = characteristic.quantise(Decimal(normalised[field]))
    defect_field = _DEFECT_FIELD.get(event_type)
    category = None
    if defect_field is not None:
        word = str(normalised.get(defect_field, ""))
        where = f"payload.{defect_field}"
        category = (
            dictionary.defect_category_of(word, field=where)
            if event_type == "nonconformance"
            else dictionary.result_category(word, field=where)
        )
    return normalised, category


def _event_id(value: uuid.UUID | str) -> str:
    """Fastavro yields uuid.UUID for the uuid logical type; older writers may send plain text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NormalisationError(f"event_id: expected a UUID, got {value!r}") from None


def _utc(moment: datetime, field: str) -> datetime:
    """Times are compared across sites and systems, so they are stored in UTC only."""
    if moment.tzinfo is None:
        raise NormalisationError(f"{field}: expected a UTC timestamp, got a naive {moment}")
    return moment.astimezone(UTC)
