"""How every agent consumes a record: manual acks, transient failures retried in place.

The protocol, for each record of an agent's stream:
  1. acks are manual. Faust's own iteration acks a record in a `finally`, also when the handler
     raised, and the acked offset is committed, so a failed record would be lost;
  2. the handler runs; a transient failure (broker unreachable, request timed out, leader moved)
     is retried in place with exponential backoff. Retrying in place blocks only this partition
     and keeps the order of a product line's events, which quarantine and escalation rely on (a
     disposition must not overtake its nonconformance); retry topics would reorder them;
  3. on success the record is acked; Faust commits its offset after flushing the producer;
  4. when the retries are spent, or the failure is not transient, the worker crashes WITHOUT
     acking: after the restart the record is read again. Bad input never gets here: the stages
     turn it into dead letters.
Before each retry the agent's `on_failure` runs, so in-memory indexes that may be ahead of the
tables (which are only written after delivery) are rebuilt.

`consume_batches` is the same protocol for a batch of records (`Stream.noack_take`): the handler
computes every record's outputs in order, sends them all without awaiting each acknowledgement,
awaits them together, only then writes its tables, and the records are acked after that. A
retry or a crash redoes the whole batch; its outputs are deterministic, so a republished record
is absorbed downstream exactly as a single redelivered record is. One producer keeps the order of
records sent to a partition, so a product line's outputs keep their input order.

Both ask the app's `OffsetGuard` before handling a record: only records of the current
consumer generation, in offset order, are handled, and only their acks move a committed offset
(Faust's own bookkeeping lets a rebalance commit past records nobody handled; see
`streams/offset_guard.py`).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.errors import KafkaTimeoutError
from faust.streams import _current_event

from qmsflow import telemetry
from streams.offset_guard import offset_guard
from streams.outbox import CONTENT_TYPE, Outbox

log = logging.getLogger(__name__)

#: most records per batch: one produce request then carries hundreds of records instead of one,
#: and a batch's outputs still fit aiokafka's default 32 MiB send buffer many times over
BATCH_MAX = 1000
#: seconds a partly filled batch waits for more records: the latency a quiet partition pays;
#: under load batches fill while the previous one is being delivered, so this rarely applies
BATCH_WITHIN = 0.005


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried before the worker gives up."""

    attempts: int = 6  # 0.5 + 1 + 2 + 4 + 8 s ≈ 15 s: longer than a broker leader election
    first_delay: float = 0.5
    factor: float = 2.0

    def delays(self) -> list[float]:
        """Seconds to wait before each retry (one fewer than attempts)."""
        return [self.first_delay * self.factor**n for n in range(self.attempts - 1)]


def is_transient(error: BaseException) -> bool:
    """Worth retrying: Kafka marks its retriable errors; timeouts and lost connections are too."""
    if getattr(error, "retriable", False):
        return True
    # aiokafka's KafkaTimeoutError (a send not acknowledged in time) is not marked retriable,
    # but a slow or failing-over broker is exactly what a retry is for.
    return isinstance(error, TimeoutError | ConnectionError | KafkaTimeoutError)


async def consume(
    app: faust.App,
    stream: faust.StreamT[Any],
    handle: Callable[[Any], Awaitable[None]],
    *,
    on_failure: Callable[[], None] = lambda: None,
    policy: RetryPolicy = RetryPolicy(),
) -> None:
    """Run `handle(message)` for every record of `stream`, following the module's protocol."""

    async def handle_event(event: Any) -> None:
        await handle(event.message)

    await _consume_events(app, stream, handle_event, on_failure=on_failure, policy=policy)


async def _consume_events(
    app: faust.App,
    stream: faust.StreamT[Any],
    handle: Callable[[Any], Awaitable[None]],
    *,
    on_failure: Callable[[], None],
    policy: RetryPolicy,
) -> None:
    guard = offset_guard(app)
    reader = guard.reader()
    manual: Any = stream.noack()  # type: ignore[attr-defined]  # on Stream, not on StreamT
    async for event in manual.events():
        if not await guard.admit(event, reader):
            continue
        delays = iter(policy.delays())
        while True:
            try:
                await handle(event)
                break
            except Exception as error:
                on_failure()
                delay = next(delays, None) if is_transient(error) else None
                if delay is None:
                    log.exception(
                        "giving up on %s[%s]@%s; crashing without acknowledging it",
                        event.message.topic,
                        event.message.partition,
                        event.message.offset,
                    )
                    await app.crash(error)
                    return
                log.warning("transient failure (%s); retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
        await manual.ack(event)


def handling(event: Any) -> None:
    """Make `event` Faust's current event, as its own iteration does for one record at a time.

    Tables read and write the store and changelog partition of the current event, so inside a
    batch it must be set to each record before that record's reads and writes.
    """
    _current_event.set(weakref.ref(event))


async def consume_batches(
    app: faust.App,
    stream: faust.StreamT[Any],
    handle: Callable[[Sequence[Any]], Awaitable[None]],
    *,
    on_failure: Callable[[], None] = lambda: None,
    policy: RetryPolicy = RetryPolicy(),
    max_records: int = BATCH_MAX,
    within: float = BATCH_WITHIN,
) -> None:
    """Run `handle(events)` for batches of `stream`'s events, following the module's protocol.

    With `max_records` 1 each record is its own batch, read as `consume` reads it (no take
    buffer): the same handler then runs with per-record delivery, the safe fallback.
    """
    if max_records <= 1:

        async def one_at_a_time(event: Any) -> None:
            await handle([event])

        await _consume_events(app, stream, one_at_a_time, on_failure=on_failure, policy=policy)
        return
    guard = offset_guard(app)
    reader = guard.reader()
    batches: Any = stream.noack_take(max_records, within)  # type: ignore[attr-defined]
    async for taken in batches:
        events = [event for event in taken if await guard.admit(event, reader)]
        if not events:
            continue
        delays = iter(policy.delays())
        while True:
            try:
                await handle(events)
                break
            except Exception as error:
                on_failure()
                delay = next(delays, None) if is_transient(error) else None
                if delay is None:
                    first = events[0].message
                    log.exception(
                        "giving up on a batch of %d from %s[%s]@%s; crashing without acking it",
                        len(events),
                        first.topic,
                        first.partition,
                        first.offset,
                    )
                    await app.crash(error)
                    return
                log.warning("transient failure (%s); retrying the batch in %.1f s", error, delay)
                await asyncio.sleep(delay)
        for event in events:
            await stream.ack(event)


class BatchOutbox(Outbox):
    """The outputs of a batch of inputs: sent in order, awaited together, counted per input type.

    `event_type` is set to each input's type before its outputs are added, so the
    `qmsflow_events_out` counter keeps its per-type labels although one batch mixes types.
    """

    def __init__(self, codec: Any, *, stage: str = "stream", topic_prefix: str = "") -> None:
        super().__init__(codec, stage=stage, topic_prefix=topic_prefix)
        self._batch_stage = stage
        self._batch_prefix = topic_prefix
        self._records: list[tuple[Any, bytes | None, bytes, list[tuple[str, bytes]], Any]] = []

    def add_encoded(
        self,
        topic: faust.TopicT,
        key: str | bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue an encoded value, counted under the current input's event type."""
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        framed = [*headers, ("content-type", CONTENT_TYPE)]
        self._records.append((topic, raw_key, value, framed, self.event_type))

    def __len__(self) -> int:
        return len(self._records)

    async def deliver(self) -> None:
        """Send everything queued, in order, and wait until the broker has acknowledged all."""
        records, self._records = self._records, []
        if not records:
            return
        futures = [
            await topic.send(key=key, value=value, headers=headers)
            for topic, key, value, headers, _ in records
        ]
        await asyncio.gather(*futures)
        counts = Counter(
            (topic.get_topic_name().removeprefix(self._batch_prefix), event_type)
            for topic, _, _, _, event_type in records
        )
        for (name, event_type), n in counts.items():
            telemetry.record_event("out", self._batch_stage, name, event_type, n)
