"""The canonical quality event: what `quality.events.v1` carries and the sink stores.

Its Avro contract is `schemas/avro/quality.events.v1-value`; these TypedDicts describe the same
record for the type checker at no run-time cost (the hot path passes plain dicts to fastavro).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple, NotRequired, TypedDict, cast

#: payload record name per event type: the branch of the canonical payload union
PAYLOAD_RECORD = {
    "nonconformance": "io.qmsflow.quality.Nonconformance",
    "capa": "io.qmsflow.quality.Capa",
    "deviation": "io.qmsflow.quality.Deviation",
    "audit_finding": "io.qmsflow.quality.AuditFinding",
    "supplier_corrective_action": "io.qmsflow.quality.SupplierCorrectiveAction",
    "inspection_result": "io.qmsflow.quality.InspectionResult",
    "lab_result": "io.qmsflow.quality.LabResult",
    "environmental_reading": "io.qmsflow.quality.EnvironmentalReading",
    "calibration_event": "io.qmsflow.quality.CalibrationEvent",
    "recall": "io.qmsflow.quality.Recall",
}


class Coordinates(NamedTuple):
    """Where a record sits in Kafka: the lineage every output and row points back to."""

    topic: str
    partition: int
    offset: int


class Lineage(TypedDict):
    """Source coordinates and contract version of the record a canonical event came from."""

    topic: str
    partition: int
    offset: int
    schema_id: int
    subject: str
    schema_version: int
    ingested_at: datetime


class QualityEvent(TypedDict):
    """A normalised quality event (canonical status, severity and units; UTC times)."""

    event_id: str
    event_type: str
    source_system: str
    source_record_id: str
    occurred_at: datetime
    recorded_at: datetime
    product_line: str
    site: str
    lot_id: str | None
    part_number: str | None
    supplier_id: str | None
    equipment_id: str | None
    severity: str | None
    source_severity: str | None
    status: str
    source_status: str
    signature: dict[str, Any] | None
    audit: dict[str, Any] | None
    correlation_id: str | None
    synthetic: bool
    lineage: Lineage
    trace_id: str | None
    payload: tuple[str, dict[str, Any]]
    #: canonical defect category (data dictionary); None for conforming results and other types.
    #: Added in quality.events.v1-value v2: events decoded from v1 data carry None.
    defect_category: NotRequired[str | None]


def event_from_avro(record: Mapping[str, Any]) -> QualityEvent:
    """A decoded `quality.events.v1` record as a QualityEvent.

    fastavro hands back the payload union as a bare dict and uuids as uuid.UUID; the stages
    expect the payload's record name beside it (as the writer used) and ids as text.
    """
    event = dict(record)
    event["event_id"] = str(record["event_id"])
    payload = record["payload"]
    if not isinstance(payload, tuple):
        event["payload"] = (PAYLOAD_RECORD[record["event_type"]], payload)
    return cast(QualityEvent, event)
