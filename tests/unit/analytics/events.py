"""Canonical quality events that encode with the quality.events.v1 contract, for tests."""

from __future__ import annotations

from typing import Any

from tests.unit.connectors import stage_records as records

NONCONFORMANCE = (
    "io.qmsflow.quality.Nonconformance",
    {
        "title": "Particulate in vial",
        "description": "Visible particles found at 100% inspection",
        "nc_source": "internal",
        "defect_code": "defect",
    },
)


def canonical_event(event_id: str, **overrides: Any) -> dict[str, Any]:
    """A nonconformance event (valid Avro payload) with `overrides` applied."""
    return {**records.quality_event(event_id), "payload": NONCONFORMANCE, **overrides}
