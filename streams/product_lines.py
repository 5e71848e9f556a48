"""Every product-line-keyed stage of an ingest record in one pass: the batch runtime's processor.

Normalise → dedup → integrity → signature, quarantine, escalation, SLA → correlation hand-off.
All of them key by product line, and the ingest topics are partitioned by product line like
`quality.events.v1`, so one processor on the ingest partition does what the Faust runtime's
ingest and quality agents do with a topic hop between them: one decode per event instead of
two, one pass instead of two consumers' per-record machinery. `quality.events.v1` is still
published, for the sink and every other reader. Correlation keeps its re-keying hop.

The trace keeps its shape: an `ingest` span continuing the producer's traceparent and a
`quality` span as its child, so a trace looks the same under either runtime.

Pure with respect to the engine: the runtime (streams/batch_runtime.py) hands in records and a
batch's `Tables`, collects the `Outputs`, and owns delivery, state and commits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.quality.dedup import SeenEvent, forgotten
from qmsflow.quality.ingest import (
    CANONICAL_SUBJECT,
    DEAD_LETTER_SUBJECT,
    DeadLettered,
    Duplicate,
    IngestStage,
    RawMessage,
)
from qmsflow.scaling import home_partition
from streams.changelog_state import DEDUP_TABLE, BatchTables, ChangelogState
from streams.quality_processor import (
    AfterDelivery,
    CanonicalInput,
    Outputs,
    QualityProcessor,
    Tables,
)

log = logging.getLogger(__name__)

#: stored dedup marks a batch may delete per mark it writes: more than one, so expired marks
#: leave faster than new ones arrive and the table stays about the retention's size
SWEEP_PER_MARK = 4
#: incoming headers carried onto outputs, so a trace and a correlation id cross the pipeline
PROPAGATED_HEADERS = frozenset({"traceparent", "tracestate", "correlation_id", "source_system"})


class ProductLineProcessor:
    """The ingest and quality stages fused, over the ingest topics' records and ticks."""

    def __init__(
        self,
        stage: IngestStage,
        quality: QualityProcessor,
        codec: AvroCodec,
        state: ChangelogState,
        *,
        topic_prefix: str,
        partitions: int,
        retention_us: int,
    ) -> None:
        self._stage = stage
        self.quality = quality
        self._codec = codec
        self._state = state
        self._prefix = topic_prefix
        self._partitions = partitions
        self._retention_us = retention_us
        #: (logical topic, event type) → records read, counted per batch
        self.counted: Counter[tuple[str, str | None]] = Counter()

    def on_record(
        self,
        message: RawMessage,
        out: Outputs,
        tables: Tables,
        after: AfterDelivery,
        limit: datetime,
    ) -> str | None:
        """One ingest record; returns the event_id it marked as seen, if any."""
        home = home_partition(message.key, message.partition, self._partitions)
        if home is not None and message.value is not None:
            # written under an older partition count: forwarded to where its marks are
            kept = [(k, v) for k, v in message.headers if v and k != "content-type"]
            out.event_type = None
            out.add_encoded(
                message.topic.removeprefix(self._prefix), message.key, message.value, kept
            )
            return None
        with telemetry.stage_span("ingest", message.headers) as span:
            judged = self._judge(message, span, tables)
            if judged is None:
                return None
            if isinstance(judged, DeadLettered):
                self._dead_letter(judged, message, out, after)
                return None
            event, value = judged
            out.event_type = event["event_type"]
            outgoing = canonical_headers(message, span)
            out.add_encoded("quality.events.v1", event["product_line"], value, outgoing)
            after.append(_end_to_end(event["recorded_at"]))
        canonical = CanonicalInput(
            event, value, message.topic, message.partition, message.offset, message.key
        )
        if telemetry.exporting():
            with telemetry.stage_span("quality", outgoing) as span:
                telemetry.annotate(span, event)
                headers = telemetry.output_headers(
                    span, outgoing, correlation_id=event["correlation_id"]
                )
                self.quality.on_canonical(canonical, headers, out, tables, after, limit)
        else:  # the quality span's ids without its machinery: nothing records it
            started = time.perf_counter()
            headers = telemetry.child_headers(
                span, outgoing, correlation_id=event["correlation_id"]
            )
            self.quality.on_canonical(canonical, headers, out, tables, after, limit)
            telemetry.observe_stage("quality", started)
        return str(event["event_id"])

    def _judge(
        self, message: RawMessage, span: Any, tables: Tables
    ) -> tuple[Any, bytes] | DeadLettered | None:
        """The canonical event and its encoding, a dead letter, or None for a duplicate."""
        logical_topic = message.topic.removeprefix(self._prefix)
        outcome = self._stage.decode(message)
        if isinstance(outcome, DeadLettered):
            self.counted[(logical_topic, None)] += 1
            return outcome
        telemetry.annotate(span, outcome)
        self.counted[(logical_topic, outcome["event_type"])] += 1
        stored = tables.get(DEDUP_TABLE, outcome["event_id"])
        seen = None if stored is None else SeenEvent(*stored)
        if seen is not None and forgotten(
            seen, self._state.watermark(seen.partition), self._retention_us
        ):
            seen = None
        judged = self._stage.judge(outcome, message, seen)
        if isinstance(judged, Duplicate):
            return None
        if isinstance(judged, DeadLettered):
            return judged
        # After judging: the dedup fingerprint covers content, not which delivery traced it.
        outcome["trace_id"] = telemetry.trace_id_hex(span)
        try:
            value = self._codec.encode(CANONICAL_SUBJECT, dict(outcome))
        except ContractError as error:  # our canonical contract and model disagree: a bug
            log.exception("canonical encode failed at %s", message.coordinates)
            return self._stage.reject(message, error, stage="ingest")
        tables.put(DEDUP_TABLE, outcome["event_id"], list(judged.seen))
        return outcome, value

    def _dead_letter(
        self, judged: DeadLettered, message: RawMessage, out: Outputs, after: AfterDelivery
    ) -> None:
        letter = judged.letter
        log.warning("dead letter %s: %s", letter["reason_code"], letter["reason"])
        out.event_type = None
        code = str(letter["reason_code"])
        out.add(
            "quality.dlq.v1",
            DEAD_LETTER_SUBJECT,
            message.key,
            dict(letter),
            [("qmsflow.reason", code.encode())],
        )
        after.append(lambda: telemetry.record_dead_letter("ingest", code))

    def sweep(self, marked: Counter[int], tables: BatchTables) -> None:
        """Stage tombstones for expired dedup marks: a few per mark each partition wrote."""
        for partition, count in marked.items():
            tables.partition = partition
            horizon = self._state.watermark(partition) - self._retention_us
            for event_id in self._state.expired_marks(partition, horizon, SWEEP_PER_MARK * count):
                tables.put(DEDUP_TABLE, event_id, None)


def canonical_headers(message: RawMessage, span: Any) -> list[tuple[str, bytes]]:
    """Headers of the canonical event judged inside `span`: trace, correlation, source system."""
    headers = [
        (k, v)
        for k, v in message.headers
        if k in PROPAGATED_HEADERS and k != telemetry.TRACEPARENT and v is not None
    ]
    # the producer's traceparent is replaced by the ingest span's: the next stage is its child
    parent = telemetry.TraceParent.of(span)
    if parent is not None:
        headers.append((telemetry.TRACEPARENT, parent.header().encode("ascii")))
    return headers


def _end_to_end(recorded_at: datetime) -> Any:
    return lambda: telemetry.record_end_to_end("quality.events.v1", recorded_at, datetime.now(UTC))
