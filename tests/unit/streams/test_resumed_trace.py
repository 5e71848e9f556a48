"""A released parked event's traceparent: its own trace id, a stable stand-in parent."""

from __future__ import annotations

from typing import Any, cast

from qmsflow import telemetry
from streams.quality_processor import resumed_trace

EVENT_ID = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def test_the_event_trace_id_with_a_parent_derived_from_the_event() -> None:
    """Parsable, in the event's trace, the same for every release of the same event."""
    headers = resumed_trace(cast(Any, {"event_id": EVENT_ID, "trace_id": TRACE_ID}))
    parent = telemetry.parse_traceparent(telemetry.header_value(headers, telemetry.TRACEPARENT))
    assert parent is not None
    assert f"{parent.span_context().trace_id:032x}" == TRACE_ID
    assert f"{parent.span_context().span_id:016x}" == EVENT_ID.replace("-", "")[:16]


def test_an_event_without_a_trace_starts_none() -> None:
    """No trace id (e.g. traced before tracing existed): the release starts a new trace."""
    assert resumed_trace(cast(Any, {"event_id": EVENT_ID, "trace_id": None})) == []
