"""W3C traceparent parsing and propagation onto output records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from qmsflow import telemetry
from qmsflow.telemetry import JsonLinesSpanExporter, TraceParent, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HEADER = f"00-{TRACE}-00f067aa0ba902b7-01"


class TestParse:
    def test_valid_header_parses(self) -> None:
        """A version-00 header yields its trace id, span id and sampled flag."""
        parent = parse_traceparent(HEADER.encode())
        assert parent == TraceParent(int(TRACE, 16), 0x00F067AA0BA902B7, True)
        assert parent.header() == HEADER and parent.trace_id_hex == TRACE

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "garbage",
            f"00-{TRACE}-00f067aa0ba902b7",  # no flags
            f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
            f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
            f"ff-{TRACE}-00f067aa0ba902b7-01",  # forbidden version
            f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
            f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # hex must be lowercase
        ],
    )
    def test_invalid_headers_start_a_new_trace(self, value: str | None) -> None:
        """An absent or malformed header parses to None."""
        assert parse_traceparent(value) is None

    def test_future_version_keeps_the_known_fields(self) -> None:
        """A later version's extra fields are ignored, as W3C asks."""
        parent = parse_traceparent(f"01-{TRACE}-00f067aa0ba902b7-00-whatever")
        assert parent is not None and not parent.sampled


@pytest.fixture
def spans(tmp_path: Path) -> Iterator[Path]:
    """A private tracer provider writing to a JSON-lines file, installed for the test."""
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path, "test")))
    original = telemetry._tracer
    telemetry._tracer = lambda: provider.get_tracer("test")  # type: ignore[assignment]
    telemetry._exporting = True  # spans are recorded only when an exporter listens
    try:
        yield path
    finally:
        telemetry._tracer = original  # type: ignore[assignment]
        telemetry._exporting = False


def _read(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


class TestPropagation:
    def test_stage_span_continues_the_incoming_trace(self, spans: Path) -> None:
        """A stage's span is a child of the record's traceparent and names its correlation id."""
        headers = [("traceparent", HEADER.encode()), ("correlation_id", b"corr-7")]
        with telemetry.stage_span("quality", headers) as span:
            out = dict(telemetry.output_headers(span, headers))
            assert telemetry.current_correlation_id() == "corr-7"
        [written] = _read(spans)
        assert written["trace_id"] == TRACE and written["parent_span_id"] == "00f067aa0ba902b7"
        assert written["attributes"] == {
            "qmsflow.stage": "quality",
            "qmsflow.correlation_id": "corr-7",
        }
        child = parse_traceparent(out["traceparent"])
        assert child is not None and child.trace_id_hex == TRACE
        assert child.header().split("-")[2] == written["span_id"]
        assert out["correlation_id"] == b"corr-7"

    def test_without_traceparent_a_new_trace_starts(self, spans: Path) -> None:
        """No header: a root span with a fresh trace id, still propagated to outputs."""
        with telemetry.stage_span("ingest") as span:
            trace_id = telemetry.trace_id_hex(span)
            out = dict(telemetry.output_headers(span, correlation_id="from-event"))
        [written] = _read(spans)
        assert written["parent_span_id"] is None and written["trace_id"] == trace_id
        assert out["correlation_id"] == b"from-event"

    def test_recorded_span_has_explicit_times_and_parent(self, spans: Path) -> None:
        """A batch's per-record span keeps the record's trace and the given times."""
        telemetry.record_span(
            "sink", [("traceparent", HEADER.encode())], start_time_ns=10, end_time_ns=20
        )
        [written] = _read(spans)
        assert (written["trace_id"], written["start_ns"], written["end_ns"]) == (TRACE, 10, 20)


class TestNothingListening:
    """With no exporter no span is recorded, yet every output carries the trace on."""

    def test_child_of_the_incoming_trace(self) -> None:
        """Same trace id, a new span id, the parent's sampled flag; nothing recorded."""
        assert not telemetry.exporting()
        for flags in ("01", "00"):
            headers = [("traceparent", f"00-{TRACE}-00f067aa0ba902b7-{flags}".encode())]
            with telemetry.stage_span("ingest", headers) as span:
                assert not span.is_recording()
                out = parse_traceparent(
                    dict(telemetry.output_headers(span, headers))["traceparent"]
                )
            assert out is not None and out.trace_id_hex == TRACE
            assert out.span_id not in (0, 0x00F067AA0BA902B7)
            assert out.sampled is (flags == "01")

    def test_a_child_stage_in_the_same_handling_continues_the_trace(self) -> None:
        """The fused quality half continues the ingest span's trace, as stage_span would.

        Same trace id and flags, its own span id, the tracestate and correlation id carried on.
        """
        for flags in ("01", "00"):
            incoming = [
                ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-{flags}".encode()),
                ("tracestate", b"vendor=1"),
            ]
            with telemetry.stage_span("ingest", incoming) as ingest:
                parent = TraceParent.of(ingest)
                outgoing = telemetry.output_headers(ingest, incoming)
            child = dict(telemetry.child_headers(ingest, outgoing, correlation_id="corr-9"))
            out = parse_traceparent(child["traceparent"])
            assert parent is not None and out is not None
            assert out.trace_id_hex == TRACE and out.sampled is (flags == "01")
            assert out.span_id not in (0, parent.span_id)
            assert child["tracestate"] == b"vendor=1" and child["correlation_id"] == b"corr-9"

    def test_new_traces_differ_and_are_sampled(self) -> None:
        """Without a traceparent each record starts its own, sampled trace, as the SDK would."""
        seen = set()
        for _ in range(50):
            with telemetry.stage_span("ingest") as span:
                parent = TraceParent.of(span)
            assert parent is not None and parent.sampled and parent.trace_id != 0
            seen.add(parent.trace_id)
        assert len(seen) == 50

    def test_log_lines_still_name_the_span(self) -> None:
        """The unrecorded span is the current one, so log lines carry its ids."""
        from opentelemetry import trace

        headers = [("traceparent", HEADER.encode()), ("correlation_id", b"corr-3")]
        with telemetry.stage_span("quality", headers) as span:
            current = trace.get_current_span().get_span_context()
            assert current.span_id == span.get_span_context().span_id
            assert current.trace_id == int(TRACE, 16)
            assert telemetry.current_correlation_id() == "corr-3"
        assert not trace.get_current_span().get_span_context().is_valid
