"""The ingest agent: every ingest topic → normalise + dedup → `quality.events.v1` or the DLQ."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import header_pairs
from qmsflow.quality.dedup import SeenEvent, forgotten
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.event_time import advance, ceiling_us, clamp
from qmsflow.quality.ingest import (
    CANONICAL_SUBJECT,
    DEAD_LETTER_SUBJECT,
    DeadLettered,
    Duplicate,
    IngestStage,
    RawMessage,
)
from qmsflow.scaling import home_partition
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog
from streams.processing import BatchOutbox, DeadLetters, consume_batches, handling
from streams.product_lines import SWEEP_PER_MARK, canonical_headers

log = logging.getLogger(__name__)


def register_ingest_agent(
    app: faust.App,
    settings: Settings,
    stage: IngestStage,
    codec: AvroCodec,
    catalog: TopicCatalog,
) -> None:
    """Declare the ingest agent, its dedup table and its output topics on the app.

    The protocol, per batch of records (at-least-once in, effectively-once out; batching in
    streams.processing):
      1. decode + normalise each record in order; a failure becomes a dead letter;
      2. look the event_id up among the ids accepted earlier in the batch, then in the dedup
         table; a duplicate is counted and dropped;
      3. send the batch's canonical events and dead letters, then await every acknowledgement;
      4. only then record the event_ids in the table (its changelog write is the commit point
         of dedup: a crash before it replays the batch and step 3 republishes the same
         events, which the sink's primary key absorbs);
      5. the records are acked; Faust commits their offsets after flushing the producer.
    Memory of an event_id ends `dedup_retention` after its event time, measured against the
    partition's watermark (the newest `recorded_at` it has remembered, never past the wall clock
    plus `max_clock_skew`, also when read back from the table), so a replay forgets
    exactly what the original run forgot: a mark older than that is ignored when looked up, and
    each batch sweeps a few times as many stored marks as it wrote, deleting the expired ones, so
    the table stays about the retention's size. Nothing is kept in memory per id: the marks live
    in the table's RocksDB store.
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
    # a record written under an older partition count (stale producer metadata after a scale)
    # is forwarded to its key's home partition, where its dedup marks are (qmsflow.scaling)
    partitions = catalog["quality.events.v1"].partitions
    rehome = {t: app.topic(t, key_serializer="raw", value_serializer="raw") for t in ingest_topics}
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
    retention_us = int(settings.dedup_retention.total_seconds() * 1_000_000)
    watermarks: dict[int, int] = {}  # partition → newest recorded_at_us remembered
    rebuilt: list[bool] = []  # watermarks read from the table since the last assignment
    sweep_from: dict[int, bytes | None] = {}  # partition → stored key the next sweep starts at
    # memory store: partition → ids still to visit in this pass (a snapshot, refilled when empty)
    sweep_queue: dict[int, deque[str]] = {}

    @app.on_partitions_revoked.connect
    def forget_watermarks(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        watermarks.clear()  # partitions moved: re-read from the recovered table
        rebuilt.clear()
        sweep_from.clear()
        sweep_queue.clear()

    def watermark(partition: int) -> int:
        if not rebuilt:
            for stored in seen_table.values():
                seen = SeenEvent(*stored)
                previous = watermarks.get(seen.partition, 0)
                watermarks[seen.partition] = max(previous, seen.recorded_at_us)
            # a mark from a future recorded_at (kept by an older version) must not make the
            # partition forget every id
            limit = ceiling_us(datetime.now(UTC), settings.max_clock_skew)
            for stored_partition, stored_us in watermarks.items():
                watermarks[stored_partition] = clamp(stored_us, limit)
            rebuilt.append(True)
        return watermarks.get(partition, 0)

    def remembered(event_id: str) -> SeenEvent | None:
        stored = seen_table.get(event_id)
        if stored is None:
            return None
        seen = SeenEvent(*stored)
        return None if forgotten(seen, watermark(seen.partition), retention_us) else seen

    def sweep(partition: int, event: Any, budget: int) -> None:
        """Delete the expired marks among the next `budget` stored ones of the partition.

        Resumes where the last sweep stopped; each deletion writes a changelog tombstone.
        """
        store: Any = seen_table.data
        horizon_us = watermark(partition) - retention_us
        expired: list[str] = []
        if hasattr(store, "_db_for_partition"):  # RocksDB: resume where the last sweep stopped
            scanned, resume = 0, None
            db = store._db_for_partition(partition)
            for raw_key, raw_value in db.items(from_key=sweep_from.get(partition)):
                if raw_key == store.offset_key:
                    continue
                if scanned == budget:
                    resume = raw_key
                    break
                scanned += 1
                if SeenEvent(*store._decode_value(raw_value)).recorded_at_us < horizon_us:
                    expired.append(store._decode_key(raw_key))
            sweep_from[partition] = resume  # None: the next sweep starts again at the first key
        else:  # the memory store (experiments, chaos tests): the same budget, over a snapshot
            # of the partition's ids taken once per pass (a whole scan per batch made ingest
            # quadratic: 50 events/s at 100,000 marks)
            queue = sweep_queue.get(partition)
            if not queue:
                queue = sweep_queue[partition] = deque(
                    event_id
                    for event_id, stored in seen_table.items()
                    if SeenEvent(*stored).partition == partition
                )
            for _ in range(min(budget, len(queue))):
                event_id = queue.popleft()
                stored = seen_table.get(event_id)
                if stored is not None and SeenEvent(*stored).recorded_at_us < horizon_us:
                    expired.append(event_id)
        handling(event)  # the tombstones go to this partition's changelog
        for event_id in expired:
            seen_table.pop(event_id, None)

    async def handle_batch(events: Sequence[Any]) -> None:
        # ids accepted earlier in this batch: the table learns them only after delivery
        accepted: dict[str, SeenEvent] = {}
        out = BatchOutbox(codec, stage="ingest", topic_prefix=settings.topic_prefix)
        emitted: list[tuple[Any, QualityEvent, SeenEvent]] = []
        counted: Counter[tuple[str, str | None]] = Counter()
        dead: list[str] = []
        for event in events:
            handling(event)
            message = _raw_message(event.message)
            home = home_partition(message.key, message.partition, partitions)
            if home is not None and message.value is not None:
                kept = [(k, v) for k, v in message.headers if v and k != "content-type"]
                out.add_encoded(rehome[message.topic], message.key, message.value, kept)
                continue
            # The span continues the producer's traceparent, or starts the event's trace.
            with telemetry.stage_span("ingest", message.headers) as span:
                judged = judge(message, span, accepted, counted)
                if isinstance(judged, DeadLettered):
                    dead.append(judged.letter["reason_code"])
                    _add_dead_letter(out, dlq, judged.letter, message)
                elif judged is not None:
                    outcome, seen, value = judged
                    out.event_type = outcome["event_type"]
                    out.add_encoded(
                        canonical,
                        outcome["product_line"].encode("utf-8"),
                        value,
                        canonical_headers(message, span),
                    )
                    accepted[outcome["event_id"]] = seen
                    emitted.append((event, outcome, seen))
        await out.deliver()
        for (logical_topic, event_type), n in counted.items():
            telemetry.record_event("in", "ingest", logical_topic, event_type, n)
        for reason in dead:
            telemetry.record_dead_letter("ingest", reason)
        now = datetime.now(UTC)
        limit = ceiling_us(now, settings.max_clock_skew)
        written: dict[int, tuple[Any, int]] = {}  # partition → (its last event, marks written)
        for event, outcome, seen in emitted:
            handling(event)
            telemetry.record_end_to_end("quality.events.v1", outcome["recorded_at"], now)
            seen_table[outcome["event_id"]] = list(seen)
            watermarks[seen.partition] = advance(
                watermark(seen.partition), seen.recorded_at_us, limit
            )
            written[seen.partition] = (event, written.get(seen.partition, (None, 0))[1] + 1)
        for partition, (event, count) in written.items():
            sweep(partition, event, SWEEP_PER_MARK * count)

    def judge(
        message: RawMessage,
        span: Any,
        accepted: dict[str, SeenEvent],
        counted: Counter[tuple[str, str | None]],
    ) -> tuple[QualityEvent, SeenEvent, bytes] | DeadLettered | None:
        """The canonical event to emit (encoded), a dead letter, or None for a duplicate."""
        logical_topic = message.topic.removeprefix(settings.topic_prefix)
        outcome = stage.decode(message)
        if isinstance(outcome, DeadLettered):
            counted[(logical_topic, None)] += 1
            return outcome
        telemetry.annotate(span, outcome)
        counted[(logical_topic, outcome["event_type"])] += 1
        stored = accepted.get(outcome["event_id"])
        if stored is None:
            stored = remembered(outcome["event_id"])
        judged = stage.judge(outcome, message, stored)
        if isinstance(judged, Duplicate | DeadLettered):
            return None if isinstance(judged, Duplicate) else judged
        # After judging: the dedup fingerprint covers content, not which delivery traced it.
        outcome["trace_id"] = telemetry.trace_id_hex(span)
        try:
            encoded = codec.encode(CANONICAL_SUBJECT, dict(outcome))
        except ContractError as error:  # our canonical contract and model disagree: a bug
            log.exception("canonical encode failed at %s", message.coordinates)
            return stage.reject(message, error, stage="ingest")
        return outcome, judged.seen, encoded

    @app.agent(source, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[Any]) -> None:
        await consume_batches(
            app,
            stream,
            handle_batch,
            dead_letters=DeadLetters(
                dlq, codec, "ingest", settings.topic_prefix, settings.dead_letter_max_bytes
            ),
            max_records=settings.stream_batch_max,
        )


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


def _add_dead_letter(out: BatchOutbox, dlq: faust.TopicT, letter: Any, message: RawMessage) -> None:
    log.warning("dead letter %s: %s", letter["reason_code"], letter["reason"])
    out.event_type = None
    out.add(
        dlq,
        DEAD_LETTER_SUBJECT,
        message.key,
        dict(letter),
        [("qmsflow.reason", letter["reason_code"].encode())],
    )
