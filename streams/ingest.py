"""The ingest agent: every ingest topic → normalise + dedup → `quality.events.v1` or the DLQ."""

from __future__ import annotations

import logging
from typing import Any

import faust

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import header_pairs
from qmsflow.quality.dedup import RetentionQueue, SeenEvent
from qmsflow.quality.ingest import (
    CANONICAL_SUBJECT,
    DEAD_LETTER_SUBJECT,
    DeadLettered,
    Duplicate,
    IngestStage,
    RawMessage,
)
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog
from streams.processing import consume

log = logging.getLogger(__name__)

#: content-type header of every record qmsflow publishes (Confluent-framed Avro)
CONTENT_TYPE = b"application/vnd.confluent.avro"
#: incoming headers carried onto outputs, so a trace and a correlation id cross the pipeline
PROPAGATED_HEADERS = frozenset({"traceparent", "tracestate", "correlation_id", "source_system"})


def register_ingest_agent(
    app: faust.App,
    settings: Settings,
    stage: IngestStage,
    codec: AvroCodec,
    catalog: TopicCatalog,
) -> None:
    """Declare the ingest agent, its dedup table and its output topics on the app.

    The per-record protocol (at-least-once in, effectively-once out):
      1. decode + normalise; a failure is published to the DLQ and awaited, then acknowledged;
      2. look the event_id up in the dedup table; a duplicate is counted and acknowledged;
      3. publish the canonical event and await the broker's acknowledgement;
      4. only then record the event_id in the table (its changelog write is the commit point
         of dedup: a crash before it replays the record and step 3 republishes the same
         event, which the sink's primary key absorbs);
      5. Faust commits the input offset after flushing the producer.
    Memory of an event_id ends `dedup_retention` after its event time (see RetentionQueue).
    """
    ingest_topics = [settings.topic(t.name) for t in catalog.by_role("ingest")]
    source = app.topic(
        *ingest_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        acks=True,
    )
    canonical = app.topic(
        settings.topic("quality.events.v1"), key_serializer="raw", value_serializer="raw"
    )
    dlq = app.topic(settings.topic("quality.dlq.v1"), key_serializer="raw", value_serializer="raw")
    retention_ms = int(settings.dedup_retention.total_seconds() * 1000)
    seen_table = app.Table(
        "dedup-seen",
        default=None,
        key_type=str,  # values are [fingerprint, recorded_at_us, partition] as JSON
        partitions=catalog["quality.events.v1"].partitions,
        # Compact keeps one mark per id; delete drops marks older than the retention, so a
        # recovering worker never restores ids it would have forgotten anyway.
        extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": retention_ms},
    )
    retention: list[RetentionQueue] = []  # built from the table on the first record

    @app.on_partitions_revoked.connect
    def forget_retention(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        retention.clear()  # partitions moved: rebuild from the recovered table

    def expiry_queue() -> RetentionQueue:
        if not retention:
            queue = RetentionQueue(settings.dedup_retention)
            for event_id, stored in seen_table.items():
                queue.remember(event_id, SeenEvent(*stored))
            retention.append(queue)
        return retention[0]

    async def handle(record: Any) -> None:
        message = _raw_message(record)
        # The span continues the producer's traceparent, or starts the event's trace.
        with telemetry.stage_span("ingest", message.headers) as span:
            await handle_traced(message, span)

    async def handle_traced(message: RawMessage, span: Any) -> None:
        logical_topic = message.topic.removeprefix(settings.topic_prefix)
        outcome = stage.decode(message)
        if isinstance(outcome, DeadLettered):
            telemetry.record_event("in", "ingest", logical_topic, None)
            await _publish_dead_letter(dlq, codec, outcome.letter, message)
            return
        telemetry.annotate(span, outcome)
        telemetry.record_event("in", "ingest", logical_topic, outcome["event_type"])
        stored = seen_table.get(outcome["event_id"])
        judged = stage.judge(outcome, message, None if stored is None else SeenEvent(*stored))
        if isinstance(judged, Duplicate):
            return
        if isinstance(judged, DeadLettered):
            await _publish_dead_letter(dlq, codec, judged.letter, message)
            return
        # After judging: the dedup fingerprint covers content, not which delivery traced it.
        outcome["trace_id"] = telemetry.trace_id_hex(span)
        try:
            encoded = codec.encode(CANONICAL_SUBJECT, dict(outcome))
        except ContractError as error:  # our canonical contract and model disagree: a bug
            log.exception("canonical encode failed at %s", message.coordinates)
            rejected = stage.reject(message, error, stage="ingest")
            await _publish_dead_letter(dlq, codec, rejected.letter, message)
            return
        delivered = await canonical.send(
            key=outcome["product_line"].encode("utf-8"),
            value=encoded,
            headers=_output_headers(message, span),
        )
        await delivered
        telemetry.record_event("out", "ingest", "quality.events.v1", outcome["event_type"])
        telemetry.record_end_to_end("quality.events.v1", outcome["recorded_at"])
        seen_table[outcome["event_id"]] = list(judged.seen)
        queue = expiry_queue()
        queue.remember(outcome["event_id"], judged.seen)
        for expired in queue.advance(message.partition, judged.seen.recorded_at_us):
            seen_table.pop(expired, None)

    @app.agent(source, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[Any]) -> None:
        await consume(app, stream, handle)


def _raw_message(msg: Any) -> RawMessage:
    return RawMessage(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        headers=header_pairs(msg.headers),
        timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None,
    )


def _output_headers(message: RawMessage, span: Any) -> list[tuple[str, bytes]]:
    headers = [(k, v) for k, v in message.headers if k in PROPAGATED_HEADERS and v is not None]
    # the producer's traceparent is replaced by the ingest span's: the next stage is its child
    headers = [(k, v) for k, v in headers if k != telemetry.TRACEPARENT]
    parent = telemetry.TraceParent.of(span)
    if parent is not None:
        headers.append((telemetry.TRACEPARENT, parent.header().encode("ascii")))
    headers.append(("content-type", CONTENT_TYPE))
    return headers


async def _publish_dead_letter(
    dlq: faust.TopicT, codec: AvroCodec, letter: Any, message: RawMessage
) -> None:
    log.warning("dead letter %s: %s", letter["reason_code"], letter["reason"])
    telemetry.record_dead_letter("ingest", letter["reason_code"])
    delivered = await dlq.send(
        key=message.key,
        value=codec.encode(DEAD_LETTER_SUBJECT, dict(letter)),
        headers=[
            ("content-type", CONTENT_TYPE),
            ("qmsflow.reason", letter["reason_code"].encode()),
        ],
    )
    await delivered
