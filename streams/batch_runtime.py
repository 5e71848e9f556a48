"""The batch runtime: product-line stages fed whole batches by librdkafka, one commit protocol.

`QMSFLOW_WORKER_RUNTIME=batch` runs the ingest and quality stages as one processor
(streams/product_lines.py) on batches read by a confluent-kafka consumer and published by a
confluent-kafka producer, instead of two Faust agents reading every record through Faust's and
aiokafka's per-record layers. It runs as a task of the Faust worker (Faust still runs
correlation, golden records, master data and the web and metrics endpoints), on the worker's
event loop, never blocking it for longer than a restore.

The commit protocol, for every batch (all records the consumer has buffered, up to
`stream_batch_max`, across the partitions this worker holds):
  1. **process**: each record, a partition's records merged across its topics in timestamp
     order (streams/merge_order.py; each topic-partition's offset order kept), goes through the
     processor with the batch's `BatchTables`: reads see the batch's earlier
     writes; writes are staged, never applied; outputs are queued. Expired dedup marks are
     staged as tombstones (a few per mark written).
  2. **deliver**: the outputs are produced in order (one producer keeps a partition's order) and
     every delivery report is awaited; any failure fails the batch.
  3. **apply state**: the staged writes become changelog records, produced and awaited; only
     then are they applied to the in-memory tables. A crash before this replays the batch, and
     step 2 republishes the same outputs (deterministic ids), which consumers absorb; a crash
     after it replays records whose dedup marks are stored, so nothing is published twice by
     the ingest half.
  4. **commit**: the offsets after the batch's last records are committed, synchronously.
  5. metrics of the delivered outputs are recorded.
A failure in 1–3 is one of three kinds (streams/processing.py `failure_kind`): transient (the
whole batch again, after a backoff, from step 1), the record's own (a batch is handled again one
record at a time, each committed on its own; the single failing record becomes one `unexpected`
dead letter and is committed), or infrastructure (the task raises and the worker crashes without
committing; after the restart the batch is read again).

Ticks do not travel through `quality.ticks.v1` here: every `tick_interval` the runtime runs
each held partition's time-driven work (release and expiry of parked events, escalation) as a
batch of its own through steps 1–3.

Assignment is Kafka's range assignor, not cooperative-sticky: range gives a member the same
partition numbers of every subscribed topic with the same partition count, so all of a product
line's topics (and its state) stay with one worker. A partition kept across a rebalance keeps its
tables; a newly assigned one is restored from its changelogs before its first record (see
streams/changelog_state.py); a lost assignment (session expired) drops all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.kafka.producer import create_producer
from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT, RawMessage
from qmsflow.settings import Settings
from streams.changelog_state import BatchTables, ChangelogRecord, ChangelogState
from streams.merge_order import TimestampMerge
from streams.outbox import CONTENT_TYPE
from streams.processing import (
    FailureKind,
    InfrastructureFailure,
    RetryPolicy,
    failure_kind,
    failure_letter,
)
from streams.product_lines import ProductLineProcessor
from streams.quality_processor import AfterDelivery

log = logging.getLogger(__name__)

#: seconds between polls of an empty consumer queue: the latency a quiet partition pays
IDLE_SECONDS = 0.005
#: seconds a partition's records wait for an input that is behind and has nothing fetched
#: (streams/merge_order.py); Kafka Streams' max.task.idle.ms
MAX_IDLE_SECONDS = 0.5
#: records buffered for ordering beyond which they are released without waiting
MAX_BUFFERED = 50_000
#: seconds one flush waits before the loop checks again (librdkafka's own delivery timeout
#: bounds the whole wait: a report, success or failure, comes for every record)
_FLUSH_WAIT_SECONDS = 1.0
#: seconds the committed offsets of a new assignment may take to arrive
_COMMITTED_TIMEOUT = 10.0
#: delivery errors that are about the record itself (its size), not the cluster
_RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})
#: delivery errors a retry may cure although librdkafka does not mark them retriable
_TRANSIENT_ERRORS = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
)


#: record headers as confluent-kafka's produce() types them
_Headers = list[tuple[str, str | bytes | None]] | None


class RecordRejected(Exception):
    """The broker refused one of the batch's outputs for its own sake (too large)."""


class DeliveryInterrupted(Exception):
    """A delivery failed in a way a retry may cure (timeout, leader moved, connection lost)."""

    retriable = True


def delivery_failure(error: KafkaError) -> Exception:
    """The exception a failed delivery report stands for, by `failure_kind`'s three kinds."""
    if error.code() in _RECORD_ERRORS:
        return RecordRejected(error.str())
    if error.retriable() or error.code() in _TRANSIENT_ERRORS:
        return DeliveryInterrupted(error.str())
    return InfrastructureFailure(error.str())


class Deliveries:
    """Records produced for one step of a batch, and their delivery reports."""

    def __init__(self, producer: Producer, *, track_ends: bool = False) -> None:
        self._producer = producer
        self.sent = 0
        self.reported = 0
        self.error: KafkaError | None = None
        #: (topic, partition) → the offset after the last record delivered there (track_ends)
        self.ends: dict[tuple[str, int], int] = {}
        self._on_delivery = self._report_end if track_ends else self._report

    def _report(self, error: KafkaError | None, message: Message) -> None:
        self.reported += 1
        if error is not None and self.error is None:
            self.error = error

    def _report_end(self, error: KafkaError | None, message: Message) -> None:
        self.reported += 1
        if error is not None:
            if self.error is None:
                self.error = error
            return
        at = (message.topic() or "", message.partition() or 0)
        self.ends[at] = max(self.ends.get(at, 0), (message.offset() or 0) + 1)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one record; a full local queue is drained first (never dropped)."""
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    headers=cast(_Headers, headers),  # a list, as librdkafka requires
                    on_delivery=self._on_delivery,
                    **extra,
                )
                break
            except BufferError:
                self._producer.poll(0.01)
        self.sent += 1

    async def settled(self) -> None:
        """Wait until every queued record is reported; raise for the first failure.

        The wait is librdkafka's flush in a worker thread (the reports are served there), not
        a poll loop on the event loop: polling every millisecond cost a loop turn each time.
        """
        self._producer.poll(0)
        loop = asyncio.get_running_loop()
        while self.reported < self.sent:
            await loop.run_in_executor(None, self._producer.flush, _FLUSH_WAIT_SECONDS)
        if self.error is not None:
            raise delivery_failure(self.error)


class ProducedOutputs:
    """A batch's outputs by logical topic (the `Outputs` protocol), encoded as they come."""

    def __init__(self, codec: AvroCodec, topic_prefix: str) -> None:
        self._codec = codec
        self._prefix = topic_prefix
        self.event_type: str | None = None
        self.records: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]], Any]] = []

    def add(
        self,
        topic: str,
        subject: str,
        key: str | bytes | None,
        record: dict[str, Any],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Encode `record` under `subject` and queue it."""
        self.add_encoded(topic, key, self._codec.encode(subject, record), headers)

    def add_encoded(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue an already encoded value, counted under the current input's event type."""
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        framed = [*headers, ("content-type", CONTENT_TYPE)]
        self.records.append((topic, raw_key, value, framed, self.event_type))

    def count(self) -> None:
        """Count the delivered outputs, per topic and input event type."""
        counts = Counter((topic, event_type) for topic, _, _, _, event_type in self.records)
        for (topic, event_type), n in counts.items():
            telemetry.record_event("out", "product-lines", topic, event_type, n)


def committed_starts(
    consumer: Consumer, partitions: Sequence[TopicPartition]
) -> dict[tuple[str, int], int]:
    """The committed offset of each newly assigned topic-partition that has one.

    One request at assignment; without it (the broker did not answer) a quiet input counts as
    behind, which costs the merge its idle wait but never its order.
    """
    try:
        stored = consumer.committed(list(partitions), timeout=_COMMITTED_TIMEOUT)
    except KafkaException as error:
        log.warning("committed offsets not read (%s): quiet inputs wait out the idle limit", error)
        return {}
    return {(tp.topic, tp.partition): tp.offset for tp in stored if tp.offset >= 0}


def lagging(consumer: Consumer, key: tuple[str, int], starts: dict[tuple[str, int], int]) -> bool:
    """Whether the broker holds records of a topic-partition that this consumer has not read.

    librdkafka's position is unknown until a record of the topic-partition has been read, so a
    quiet input (a product line's recalls) counts from where it started: its committed offset,
    or without one the log start (`auto.offset.reset` is earliest). Otherwise it looked behind
    for good, and each of its partition's batches waited out the merge's idle limit.
    """
    tp = TopicPartition(*key)
    low, high = consumer.get_watermark_offsets(tp, cached=True)
    if high < 0:  # nothing fetched yet: unknown, so possibly behind
        return True
    position = consumer.position([tp])[0].offset
    if position < 0:
        position = starts.get(key, low)
    return position < 0 or position < high


class BatchRuntime:
    """Consumes the ingest topics in batches and runs the product-line processor on them."""

    def __init__(
        self,
        settings: Settings,
        processor: ProductLineProcessor,
        state: ChangelogState,
        codec: AvroCodec,
        *,
        ingest_topics: Sequence[str],
        policy: RetryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._state = state
        self._codec = codec
        self._topics = list(ingest_topics)
        self._policy = policy or RetryPolicy()
        self._producer = create_producer(settings)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": settings.ingest_group,
                "partition.assignment.strategy": "range",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": int(settings.worker_session_timeout * 1000),
                **librdkafka_security(settings),
            }
        )
        self._next_tick = time.monotonic() + settings.tick_interval
        self._merge = TimestampMerge(max_idle=MAX_IDLE_SECONDS, max_buffered=MAX_BUFFERED)
        self._assigned: set[tuple[str, int]] = set()
        #: where each assigned topic-partition started: its committed offset
        self._starts: dict[tuple[str, int], int] = {}

    # ---- assignment ---------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        held = {tp.partition for tp in partitions}
        log.info("assigned partitions %s of %d topics", sorted(held), len(self._topics))
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._starts = committed_starts(consumer, partitions)
        self._state.hold(held)
        self._processor.quality.forget()  # its indexes are rebuilt from the held tables

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No batch is in flight: callbacks run inside consume(), between batches. The tables
        # stay until the next assignment tells which partitions remain ours (a lost assignment
        # calls `_on_lost` instead).
        log.info("partitions revoked: %s", sorted({tp.partition for tp in partitions}))
        self._merge.clear()  # not processed, not committed: read again by their next owner
        self._assigned = set()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("assignment lost (session expired): dropping every table")
        self._merge.clear()
        self._assigned = set()
        self._state.drop(set(self._state.held))
        self._processor.quality.forget()

    # ---- the loop -----------------------------------------------------------------------

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Consume, process and commit until `stopping()`; raises on infrastructure failure."""
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not stopping():
                messages = self._consumer.consume(self._settings.stream_batch_max, 0)
                if time.monotonic() >= self._next_tick:
                    await self._tick()
                self._merge.add(_raw(m) for m in messages if _readable(m))
                records = self._merge.release(
                    self._assigned,
                    self._lagging,
                    self._settings.stream_batch_max,
                    time.monotonic(),
                )
                if not records:
                    await asyncio.sleep(IDLE_SECONDS)
                    continue
                await self._handle(records)
        finally:
            self._consumer.close()  # leaves the group: the partitions move at once
            self._producer.flush(30)

    def describe(self) -> str:
        """Where each held topic-partition stands, for the worker's state dump (SIGUSR1)."""
        lines = [
            f"batch runtime: group {self._settings.ingest_group}, tables of partitions "
            f"{sorted(self._state.held)}, {len(self._merge)} records buffered for ordering",
            "topic[partition] batch position highwater",
        ]
        for topic, partition in sorted(self._assigned):
            tp = TopicPartition(topic, partition)
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            position = self._consumer.position([tp])[0].offset
            lines.append(f"{topic}[{partition}] batch {position} {high}")
        return "\n".join(lines) + "\n"

    def _lagging(self, key: tuple[str, int]) -> bool:
        """Whether the broker holds records of this topic-partition not fetched yet."""
        return lagging(self._consumer, key, self._starts)

    async def _handle(self, records: Sequence[RawMessage]) -> None:
        """Steps 1–4 for `records`, with the recovery of the module docstring."""
        delays = iter(self._policy.delays())
        while True:
            try:
                outputs, after = await self._process_and_deliver(records)
            except Exception as error:
                self._processor.quality.forget()  # its indexes may be ahead of the tables
                kind = failure_kind(error)
                delay = next(delays, None) if kind is FailureKind.TRANSIENT else None
                if delay is not None:
                    log.warning("transient failure (%s); retrying in %.1f s", error, delay)
                    await asyncio.sleep(delay)
                    continue
                if kind is FailureKind.RECORD and len(records) > 1:
                    log.warning(
                        "a batch of %d failed (%s: %s); handling its records one at a time",
                        len(records),
                        type(error).__name__,
                        error,
                    )
                    for record in records:
                        await self._handle([record])
                    return
                if kind is FailureKind.RECORD:
                    await self._dead_letter(records[0], error)
                    self._commit(records)
                    return
                log.error("giving up on a batch of %d records; crashing", len(records))
                raise
            self._commit(records)
            outputs.count()
            for record_metrics in after:
                record_metrics()
            return

    async def _process_and_deliver(
        self, records: Sequence[RawMessage]
    ) -> tuple[ProducedOutputs, AfterDelivery]:
        """Steps 1–3: process, deliver the outputs, then write and apply the state."""
        tables = BatchTables(self._state)
        outputs = ProducedOutputs(self._codec, self._settings.topic_prefix)
        after: AfterDelivery = []
        limit = self._processor.quality.limit(datetime.now(UTC))
        marked: Counter[int] = Counter()
        processor = self._processor
        processor.counted.clear()  # a retried batch counts its records once
        for record in records:
            tables.partition = record.partition
            if processor.on_record(record, outputs, tables, after, limit) is not None:
                marked[record.partition] += 1
        processor.sweep(marked, tables)
        for (topic, event_type), n in processor.counted.items():
            telemetry.record_event("in", "product-lines", topic, event_type, n)
        await self._deliver(outputs, tables)
        return outputs, after

    async def _deliver(self, outputs: ProducedOutputs, tables: BatchTables) -> None:
        """Steps 2 and 3: the outputs, then the changelog records, each awaited; then apply."""
        deliveries = Deliveries(self._producer)
        for topic, key, value, headers, _ in outputs.records:
            deliveries.produce(self._settings.topic(topic), key, value, headers)
        await deliveries.settled()
        if not tables.writes:
            return
        changelog = self._state.changelog_records(tables.writes)
        ends = await self._write_changelog(changelog)
        self._state.apply(tables.writes, datetime.now(UTC), ends)

    async def _write_changelog(
        self, records: Sequence[ChangelogRecord]
    ) -> dict[tuple[str, int], int]:
        """Produce the changelog records and await them; where each changelog partition ends."""
        deliveries = Deliveries(self._producer, track_ends=True)
        for record in records:
            deliveries.produce(record.topic, record.key, record.value, partition=record.partition)
        await deliveries.settled()
        return deliveries.ends

    def _commit(self, records: Sequence[RawMessage]) -> None:
        """Step 4: commit the offset after each partition's last record of the batch."""
        last: dict[tuple[str, int], int] = {}
        for record in records:
            last[(record.topic, record.partition)] = record.offset
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as error:  # a rebalance took the partition: its records come again
            log.warning(
                "commit of %d partitions failed (%s): they will be read again", len(offsets), error
            )

    async def _dead_letter(self, record: RawMessage, error: Exception) -> None:
        """Deliver the `unexpected` dead letter of the one record that failed on its own."""
        log.error(
            "dead-lettering %s[%s]@%s (product-lines): %s",
            record.topic,
            record.partition,
            record.offset,
            error,
            exc_info=error,
        )
        for whole in (True, False):
            letter = failure_letter(
                error,
                stage="ingest",
                coordinates=Coordinates(record.topic, record.partition, record.offset),
                key=record.key,
                value=record.value,
                headers=record.headers,
                timestamp_ms=record.timestamp_ms,
                max_bytes=self._settings.dead_letter_max_bytes,
                whole=whole,
            )
            code = str(letter["reason_code"])
            deliveries = Deliveries(self._producer)
            deliveries.produce(
                self._settings.topic("quality.dlq.v1"),
                record.key,
                self._codec.encode(DEAD_LETTER_SUBJECT, letter),
                [("qmsflow.reason", code.encode()), ("content-type", CONTENT_TYPE)],
            )
            try:
                await deliveries.settled()
            except RecordRejected:
                continue  # the letter itself too large: again without the original record
            telemetry.record_dead_letter("ingest", code)
            return

    async def _tick(self) -> None:
        """Each held partition's time-driven work, as a batch through steps 1–3."""
        self._next_tick = time.monotonic() + self._settings.tick_interval
        tables = BatchTables(self._state)
        outputs = ProducedOutputs(self._codec, self._settings.topic_prefix)
        after: AfterDelivery = []
        now = datetime.now(UTC)
        canonical = self._settings.topic("quality.events.v1")
        for partition in sorted(self._state.held):
            tables.partition = partition
            self._processor.quality.on_tick(partition, now, canonical, outputs, tables, after)
        try:
            await self._deliver(outputs, tables)
        except Exception as error:
            self._processor.quality.forget()
            if failure_kind(error) is FailureKind.INFRASTRUCTURE:
                raise
            log.warning("tick failed (%s); the next tick does its work", error)
            return
        outputs.count()
        for record_metrics in after:
            record_metrics()


def _readable(message: Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("consumer error: %s", error)
        if error.fatal():
            raise InfrastructureFailure(error.str())
    return False


def _raw(message: Message) -> RawMessage:
    _, timestamp = message.timestamp()
    return RawMessage(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=message.headers() or [],  # type: ignore[arg-type]  # librdkafka: (str, bytes)
        timestamp_ms=timestamp if timestamp > 0 else None,
    )
