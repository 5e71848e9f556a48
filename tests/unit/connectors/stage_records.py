"""Realistic stage outputs, built with the stages' own record classes and their `to_avro()`."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from qmsflow.quality.correlation import ALERT_NAMESPACE, Alert, IncidentRecord, incident_id
from qmsflow.quality.escalation import Escalation, escalation_id
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.integrity import ParkedRecord, ParkingStatus, Reference
from qmsflow.quality.quarantine import HoldAction, QuarantineCommand, command_id

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
PARKING_DEADLINE = timedelta(hours=4)


def event_ids(count: int, salt: str = "") -> tuple[str, ...]:
    """Sorted, distinct, deterministic event ids."""
    return tuple(
        sorted(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{salt}event-{n}")) for n in range(count))
    )


def incident(
    root_cause_key: str = "lot:L2611-0042",
    *,
    members: tuple[str, ...] | None = None,
    status: str = "open",
    ordinal: int = 1,
) -> dict[str, Any]:
    """An incident view whose revision is its member count, as the correlation stage emits it."""
    members = members if members is not None else event_ids(2, root_cause_key)
    return IncidentRecord(
        incident_id=incident_id(root_cause_key, ordinal),
        root_cause_key=root_cause_key,
        ordinal=ordinal,
        status=status,  # type: ignore[arg-type]
        severity="major",
        opened_at=T0,
        last_at=T0 + timedelta(hours=len(members)),
        member_count=len(members),
        member_event_ids=members,
        suppressed_alerts=len(members) - 1,
        event_types=("inspection_result", "nonconformance"),
        source_systems=("MES", "QMS"),
        product_line="sterile-injectables",
        site="BOS1",
        revision=len(members),
    ).to_avro()


def alert(root_cause_key: str = "lot:L2611-0042") -> dict[str, Any]:
    """The alert the first incident on a root cause raised."""
    opened = incident_id(root_cause_key, 1)
    return Alert(
        alert_id=str(uuid.uuid5(ALERT_NAMESPACE, opened)),
        incident_id=opened,
        root_cause_key=root_cause_key,
        severity="major",
        raised_at=T0,
        product_line="sterile-injectables",
        site="BOS1",
        summary=f"QMS nonconformance NCR-1042 on {root_cause_key}: crack in vial neck",
        first_event_id=event_ids(1, root_cause_key)[0],
        first_event_type="nonconformance",
        source_system="QMS",
    ).to_avro()


def quarantine_command(
    lot_id: str = "L2611-0042", action: HoldAction = "HOLD", *, hours: int = 0
) -> dict[str, Any]:
    """A HOLD (stock to BLOCKED) or RELEASE (back to UNRESTRICTED) of the lot's first hold."""
    return QuarantineCommand(
        command_id=command_id(lot_id, 1, action),
        action=action,
        lot_id=lot_id,
        part_number="PN-30105-A",
        product_line="sterile-injectables",
        site="BOS1",
        reason="NCR-1042 major nonconformance: crack"
        + (" — closed" if action == "RELEASE" else ""),
        trigger_event_id=event_ids(1, lot_id + action)[0],
        trigger_event_type="nonconformance",
        trigger_source_record_id="NCR-1042",
        issued_at=T0 + timedelta(hours=hours),
        target_stock_type="BLOCKED" if action == "HOLD" else "UNRESTRICTED",
        sap_movement_type="350" if action == "HOLD" else "343",
    ).to_avro()


def escalation(record_key: str = "QMS:CAPA-77", level: int = 1) -> dict[str, Any]:
    """A CAPA past due reaching an escalation level."""
    return Escalation(
        escalation_id=escalation_id(record_key, level),
        record_key=record_key,
        event_type="capa",
        source_record_id=record_key.partition(":")[2],
        level=level,
        due_date=date(2026, 2, 20),
        overdue_days=10,
        escalated_at=T0,
        recipient_role="qa_manager",
        product_line="sterile-injectables",
        site="BOS1",
        title="CAPA-77 Vial neck cracks on line 3",
    ).to_avro()


def quality_event(event_id: str, lot_id: str = "L2611-0042") -> QualityEvent:
    """A canonical nonconformance naming a lot not yet in master data."""
    return {
        "event_id": event_id,
        "event_type": "nonconformance",
        "source_system": "QMS",
        "source_record_id": "NCR-1041",
        "occurred_at": T0,
        "recorded_at": T0 + timedelta(seconds=1, microseconds=7),
        "product_line": "sterile-injectables",
        "site": "BOS1",
        "lot_id": lot_id,
        "part_number": "PN-30105-A",
        "supplier_id": None,
        "equipment_id": None,
        "severity": "major",
        "source_severity": "Major",
        "status": "open",
        "source_status": "Draft",
        "signature": None,
        "audit": None,
        "correlation_id": None,
        "synthetic": False,
        "lineage": {
            "topic": "qms.nonconformance.v1",
            "partition": 1,
            "offset": 7,
            "schema_id": 8,
            "subject": "qms.nonconformance.v1-value",
            "schema_version": 2,
            "ingested_at": T0,
        },
        "trace_id": None,
        "payload": (
            "io.qmsflow.quality.Nonconformance",
            {"quantity": Decimal("12.000"), "due": date(2026, 12, 1), "lots": [lot_id]},
        ),
    }


def parked(
    event_id: str, status: ParkingStatus = "PARKED", lot_id: str = "L2611-0042"
) -> dict[str, Any]:
    """One step of an event's parking trail, waiting for its lot."""
    return ParkedRecord(
        event=quality_event(event_id, lot_id),
        missing=(Reference("lot", lot_id),),
        parked_at=T0,
        status=status,
    ).to_avro(PARKING_DEADLINE)
