"""Traces and metrics: W3C trace context on records, one span per stage, Prometheus metrics.

A trace is one event. The ingest agent continues the producer's `traceparent` header (or starts a
trace) and writes the trace id into the canonical event; every later stage opens its span as a
child of the `traceparent` on the record it consumes and puts its own span's `traceparent` on
every record it produces. Spans carry the correlation id as the `qmsflow.correlation_id`
attribute. Export: OTLP/HTTP when `QMSFLOW_OTLP_ENDPOINT` is set, JSON lines to
`QMSFLOW_TRACE_FILE` when that is set (both may be). Metrics live in prometheus_client's default
registry and are served on `/metrics` when a port is given; without one they are still counted,
which is cheap and keeps the code paths the same.
"""

from __future__ import annotations

import contextvars
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from qmsflow.quality.sla import SlaVerdict
from qmsflow.settings import Settings

__all__ = [
    "CORRELATION_HEADER",
    "TRACEPARENT",
    "JsonLinesSpanExporter",
    "TraceParent",
    "annotate",
    "child_headers",
    "current_correlation_id",
    "exporting",
    "header_value",
    "observe_stage",
    "output_headers",
    "parse_traceparent",
    "record_dead_letter",
    "record_end_to_end",
    "record_event",
    "record_lag",
    "record_sla",
    "record_span",
    "stage_span",
    "start_telemetry",
    "trace_id_hex",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
CORRELATION_HEADER = "correlation_id"
#: span attribute naming the business correlation id (not an OTel semantic convention)
CORRELATION_ATTRIBUTE = "qmsflow.correlation_id"

# ---- W3C trace context -----------------------------------------------------------------------

#: version 00 exactly; a future version's extra fields are ignored, as the spec asks
_TRACEPARENT = re.compile(
    r"^(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
    r"(?P<rest>-.*)?$"
)


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A parsed W3C `traceparent`: the caller's trace id, span id and sampled flag."""

    trace_id: int
    span_id: int
    sampled: bool

    @property
    def trace_id_hex(self) -> str:
        """The trace id as 32 lowercase hex digits (as stored in `qms.quality_event`)."""
        return f"{self.trace_id:032x}"

    def header(self) -> str:
        """The `traceparent` header value (version 00)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"

    def span_context(self) -> SpanContext:
        """The remote parent for OpenTelemetry."""
        flags = TraceFlags(TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT)
        return SpanContext(self.trace_id, self.span_id, is_remote=True, trace_flags=flags)

    @classmethod
    def of(cls, span: Span) -> TraceParent | None:
        """The traceparent naming `span`, or None for an invalid (no-op) span."""
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return cls(ctx.trace_id, ctx.span_id, bool(ctx.trace_flags & TraceFlags.SAMPLED))


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """Parse a `traceparent` header; None when absent or invalid (the stage starts a new trace).

    Invalid means: not `vv-<32 hex>-<16 hex>-<2 hex>`, version ff, version 00 with extra fields,
    or an all-zero trace or span id (W3C Trace Context §3.2).
    """
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    match = _TRACEPARENT.match(text.strip())
    if match is None or match["version"] == "ff":
        return None
    if match["version"] == "00" and match["rest"]:
        return None
    trace_id, span_id = int(match["trace"], 16), int(match["span"], 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, bool(int(match["flags"], 16) & 0x01))


def header_value(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    """The last value of header `name` as text (Kafka allows repeats; the last one wins)."""
    found = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


def output_headers(
    span: Span,
    incoming: Sequence[tuple[str, bytes | None]] = (),
    *,
    correlation_id: str | None = None,
) -> list[tuple[str, bytes]]:
    """Headers for a record produced inside `span`, so the next stage continues the trace.

    They are the span's traceparent, the incoming tracestate and the correlation id (the incoming
    header's, else `correlation_id`).
    """
    parent = TraceParent.of(span)
    traceparent = None if parent is None else parent.header()
    return _carried(traceparent, incoming, correlation_id)


def _carried(
    traceparent: str | None,
    incoming: Sequence[tuple[str, bytes | None]],
    correlation_id: str | None,
) -> list[tuple[str, bytes]]:
    """The traceparent, then the incoming tracestate and correlation id carried on."""
    headers: list[tuple[str, bytes]] = []
    if traceparent is not None:
        headers.append((TRACEPARENT, traceparent.encode("ascii")))
    state = header_value(incoming, TRACESTATE)
    if state is not None:
        headers.append((TRACESTATE, state.encode("utf-8")))
    correlation = header_value(incoming, CORRELATION_HEADER) or correlation_id
    if correlation is not None:
        headers.append((CORRELATION_HEADER, correlation.encode("utf-8")))
    return headers


def trace_id_hex(span: Span) -> str | None:
    """The span's trace id as 32 hex digits, or None for a no-op span."""
    parent = TraceParent.of(span)
    return None if parent is None else parent.trace_id_hex


# ---- spans -----------------------------------------------------------------------------------

#: the correlation id of the record being handled, for log lines (qmsflow.logging_setup)
_CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "qmsflow_correlation_id", default=None
)


def current_correlation_id() -> str | None:
    """The correlation id of the record this task is handling, if any."""
    return _CORRELATION_ID.get()


#: (provider, its tracer): `trace.get_tracer` builds a new Tracer (scope, warnings filter) on
#: every call, ~4% of the worker's CPU when it was called once per span
_TRACER: list[tuple[object, trace.Tracer]] = []


def _tracer() -> trace.Tracer:
    provider = trace.get_tracer_provider()
    if not _TRACER or _TRACER[0][0] is not provider:
        _TRACER[:] = [(provider, provider.get_tracer("qmsflow"))]
    return _TRACER[0][1]


@contextmanager
def stage_span(
    stage: str,
    headers: Sequence[tuple[str, bytes | None]] = (),
    *,
    start_time_ns: int | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
    links: Sequence[Link] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span for one stage's handling of one record, child of the record's `traceparent`.

    Without a (valid) traceparent the span starts a new trace. The stage's latency is observed
    in `qmsflow_stage_seconds` when the span ends, also when the body raises.
    """
    parent = parse_traceparent(header_value(headers, TRACEPARENT))
    correlation = header_value(headers, CORRELATION_HEADER)
    if not _exporting:
        # Nothing listens: a span context with fresh ids carries the trace on (traceparent,
        # trace id in the canonical event) without the SDK's span, which cost ~50 µs per event.
        token = _CORRELATION_ID.set(correlation)
        span = _unrecorded_span(parent)
        current = otel_context.attach(trace.set_span_in_context(span))  # log lines name it
        started = time.perf_counter()
        try:
            yield span
        finally:
            _stage_histogram(stage).observe(time.perf_counter() - started)
            otel_context.detach(current)
            _CORRELATION_ID.reset(token)
        return
    context = (
        Context()
        if parent is None
        else trace.set_span_in_context(NonRecordingSpan(parent.span_context()))
    )
    attrs: dict[str, Any] = {"qmsflow.stage": stage, **(attributes or {})}
    if correlation is not None:
        attrs[CORRELATION_ATTRIBUTE] = correlation
    token = _CORRELATION_ID.set(correlation)
    started = time.perf_counter()
    try:
        with _tracer().start_as_current_span(
            stage,
            context=context,
            kind=kind,
            attributes=attrs,
            links=list(links),
            start_time=start_time_ns,
        ) as span:
            yield span
    finally:
        _stage_histogram(stage).observe(time.perf_counter() - started)
        _CORRELATION_ID.reset(token)


#: stage → its `qmsflow_stage_seconds` child: `labels()` costs a lock and a tuple per call
_STAGE_HISTOGRAMS: dict[str, Any] = {}


def _stage_histogram(stage: str) -> Any:
    child = _STAGE_HISTOGRAMS.get(stage)
    if child is None:
        child = _STAGE_HISTOGRAMS[stage] = STAGE_SECONDS.labels(stage)
    return child


def observe_stage(stage: str, started: float) -> None:
    """Record a stage's time on one record since `started` (a perf_counter reading)."""
    _stage_histogram(stage).observe(time.perf_counter() - started)


def child_headers(
    parent: Span,
    incoming: Sequence[tuple[str, bytes | None]],
    *,
    correlation_id: str | None = None,
) -> list[tuple[str, bytes]]:
    """Output headers of a stage run inside `parent`'s handling of the same record, unrecorded.

    What `stage_span` + `output_headers` give when nothing exports spans (a child span id in
    the parent's trace, the tracestate and correlation id carried on), without parsing the
    parent's header back or switching the OpenTelemetry context: the fused product-line stages
    call it once per event (`observe_stage` times the stage).
    """
    context = parent.get_span_context()
    if not context.is_valid:
        return output_headers(parent, incoming, correlation_id=correlation_id)
    flags = "01" if context.trace_flags & TraceFlags.SAMPLED else "00"
    span_id = _IDS.getrandbits(64) or 1
    traceparent = f"00-{context.trace_id:032x}-{span_id:016x}-{flags}"
    return _carried(traceparent, incoming, correlation_id)


def _unrecorded_span(parent: TraceParent | None) -> Span:
    """A child of `parent` (or a new trace's root) that records nothing, as the SDK would make.

    The SDK's default sampler follows the parent's sampled flag and samples new traces, so the
    headers written downstream are the same whether or not an exporter listens.
    """
    span_id = _IDS.getrandbits(64) or 1
    if parent is None:
        context = SpanContext(
            _IDS.getrandbits(128) or 1, span_id, is_remote=False, trace_flags=_SAMPLED
        )
    else:
        flags = _SAMPLED if parent.sampled else _NOT_SAMPLED
        context = SpanContext(parent.trace_id, span_id, is_remote=False, trace_flags=flags)
    return NonRecordingSpan(context)


#: ids of unrecorded spans: random, as OpenTelemetry's RandomIdGenerator makes them
_IDS = random.Random()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def record_span(
    name: str,
    headers: Sequence[tuple[str, bytes | None]],
    *,
    start_time_ns: int,
    end_time_ns: int,
    links: Sequence[Link] = (),
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Record a finished span, child of the record's `traceparent`, with explicit times.

    For work done for many records at once (a sink batch): each record's trace gets its own
    span covering the batch, linked to the batch's span.
    """
    parent = parse_traceparent(header_value(headers, TRACEPARENT))
    context = (
        Context()
        if parent is None
        else trace.set_span_in_context(NonRecordingSpan(parent.span_context()))
    )
    attrs: dict[str, Any] = dict(attributes or {})
    correlation = header_value(headers, CORRELATION_HEADER)
    if correlation is not None:
        attrs[CORRELATION_ATTRIBUTE] = correlation
    span = _tracer().start_span(
        name, context=context, attributes=attrs, links=list(links), start_time=start_time_ns
    )
    span.end(end_time=end_time_ns)


def annotate(span: Span, event: Mapping[str, Any]) -> None:
    """Name the event on its span (id, type, source record, correlation id) and in log lines."""
    if not span.is_recording():
        correlation = event.get("correlation_id")
        if correlation and _CORRELATION_ID.get() is None:
            _CORRELATION_ID.set(str(correlation))
        return
    span.set_attribute("qmsflow.event_id", str(event["event_id"]))
    span.set_attribute("qmsflow.event_type", str(event["event_type"]))
    span.set_attribute("qmsflow.source_record_id", str(event["source_record_id"]))
    correlation = event.get("correlation_id")
    if correlation and _CORRELATION_ID.get() is None:
        span.set_attribute(CORRELATION_ATTRIBUTE, str(correlation))
        _CORRELATION_ID.set(str(correlation))


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line (tests, debugging).

    Several processes may append to one file: each line is written with a single `write` on a
    file opened in append mode, which POSIX keeps whole for lines this short.
    """

    def __init__(self, path: Path, service: str) -> None:
        self._path = path
        self._service = service
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans; never raises (telemetry must not stop the pipeline)."""
        lines = b"".join(orjson.dumps(self._document(s)) + b"\n" for s in spans)
        try:
            with self._lock, self._path.open("ab") as out:
                out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _document(self, span: ReadableSpan) -> dict[str, Any]:
        ctx = span.context
        parent = span.parent
        return {
            "service": self._service,
            "name": span.name,
            "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
            "span_id": f"{ctx.span_id:016x}" if ctx else None,
            "parent_span_id": f"{parent.span_id:016x}" if parent else None,
            "start_ns": span.start_time,
            "end_ns": span.end_time,
            "attributes": dict(span.attributes or {}),
            "links": [
                {"trace_id": f"{ln.context.trace_id:032x}", "span_id": f"{ln.context.span_id:016x}"}
                for ln in span.links
            ],
        }

    def shutdown(self) -> None:
        """Nothing is held open between exports."""


_started: set[str] = set()
_start_lock = threading.Lock()
_exporting = False


def exporting() -> bool:
    """Whether finished spans go anywhere (an OTLP endpoint or a trace file is configured).

    Spans that only carry a trace id onward are always made; this tells a caller whether the
    extra spans it would record only for export (the sink's per-record spans) are worth making.
    """
    return _exporting


def start_telemetry(settings: Settings, service: str, *, metrics_port: int = 0) -> None:
    """Install the tracer provider and its exporters, and serve `/metrics` on `metrics_port`.

    Idempotent per process (a second call does nothing). The provider is installed even with no
    exporter, so trace ids are still propagated and written to the canonical events.
    """
    with _start_lock:
        if _started:
            return
        _started.add(service)
        # a ratio below 1 records that share of new traces; a child follows its parent's flag
        sampler = ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
        provider = TracerProvider(
            resource=Resource.create({"service.name": service}), sampler=sampler
        )
        if settings.otlp_endpoint:
            # imported here: the exporter pulls in protobuf and requests, needed only when used
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        if settings.trace_file is not None:
            # synchronous, so a test reading the file sees a span as soon as its stage is done
            exporter = JsonLinesSpanExporter(settings.trace_file, service)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        global _exporting
        _exporting = bool(settings.otlp_endpoint) or settings.trace_file is not None
        if metrics_port > 0:
            start_http_server(metrics_port)


# ---- metrics ---------------------------------------------------------------------------------

EVENTS_IN = Counter(
    "qmsflow_events_in",
    "Records consumed, per stage, topic and event type.",
    ["stage", "topic", "event_type"],
)
EVENTS_OUT = Counter(
    "qmsflow_events_out",
    "Records produced (acknowledged by the broker), per stage, topic and event type.",
    ["stage", "topic", "event_type"],
)
DEAD_LETTERS = Counter(
    "qmsflow_dead_letters", "Records dead-lettered, per stage and reason code.", ["stage", "reason"]
)
PARKED = Counter(
    "qmsflow_parked", "Events parked for missing master data, per missing kind.", ["reason"]
)
#: from 5 ms (a fused in-memory stage) to 30 s (a stage retrying through a leader election)
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_SECONDS = Histogram(
    "qmsflow_stage_seconds",
    "Time one stage spends on one record.",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
#: up to an hour: the SLAs are minutes, and a backlog after an outage is what this must show
_E2E_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
END_TO_END_SECONDS = Histogram(
    "qmsflow_end_to_end_seconds",
    "From the event's recorded_at to the output's production, per output topic.",
    ["output"],
    buckets=_E2E_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "qmsflow_consumer_lag",
    "Records between a partition's high watermark and the consumer's position.",
    ["group", "topic", "partition"],
)
SINK_ROWS = Counter("qmsflow_sink_rows", "Rows the sink inserted or upserted.", ["table"])
SLA_CHECKS = Counter(
    "qmsflow_sla_checks",
    "Outputs measured against an SLA, per SLA and outcome.",
    ["sla", "outcome"],
)
SLA_BREACHES = Counter("qmsflow_sla_breaches", "Outputs later than their SLA allows.", ["sla"])
SLA_COMPLIANCE = Gauge(
    "qmsflow_sla_compliance_ratio",
    "Share of measured outputs within their SLA since this process started.",
    ["sla"],
)

_sla_counts: dict[str, list[int]] = {}  # sla → [met, measured]


def record_event(
    direction: str, stage: str, topic: str, event_type: str | None, count: int = 1
) -> None:
    """Count `count` records into (`in`) or out of (`out`) a stage."""
    counter = EVENTS_IN if direction == "in" else EVENTS_OUT
    counter.labels(stage, topic, event_type or "unknown").inc(count)


def record_dead_letter(stage: str, reason: str) -> None:
    """Count one dead letter."""
    DEAD_LETTERS.labels(stage, reason).inc()


def record_end_to_end(output: str, recorded_at: datetime, now: datetime | None = None) -> None:
    """Observe recorded_at → now for an output just produced (negative clock skew counts as 0)."""
    elapsed = ((now or datetime.now(UTC)) - recorded_at).total_seconds()
    END_TO_END_SECONDS.labels(output).observe(max(elapsed, 0.0))


def record_lag(group: str, topic: str, partition: int, lag: int) -> None:
    """Set one partition's consumer lag."""
    CONSUMER_LAG.labels(group, topic, str(partition)).set(max(lag, 0))


def record_sla(verdict: SlaVerdict) -> None:
    """Count one SLA measurement and update the SLA's compliance ratio."""
    name = verdict.rule.name
    counts = _sla_counts.setdefault(name, [0, 0])
    counts[1] += 1
    if verdict.met:
        counts[0] += 1
        SLA_CHECKS.labels(name, "met").inc()
    else:
        SLA_CHECKS.labels(name, "breached").inc()
        SLA_BREACHES.labels(name).inc()
    SLA_COMPLIANCE.labels(name).set(counts[0] / counts[1])
