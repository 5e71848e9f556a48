"""How every agent consumes a record: retried if transient, dead-lettered if its own fault.

Infrastructure failures crash the worker; a record never stops its partition.

The protocol, for each record of an agent's stream:
  1. acks are manual. Faust's own iteration acks a record in a `finally`, also when the handler
     raised, and the acked offset is committed, so a failed record would be lost;
  2. the handler runs; a failure is one of three kinds (`failure_kind`):
     * transient (broker unreachable, request timed out, leader moved): retried in place with
       exponential backoff. Retrying in place blocks only this partition and keeps the order of
       a product line's events, which quarantine and escalation rely on (a disposition must not
       overtake its nonconformance); retry topics would reorder them;
     * the record's own (a bug or a value the stage did not foresee: OverflowError on a date,
       RecursionError on deep JSON, an output too large for Kafka): it becomes a dead letter on
       `quality.dlq.v1` (stage = the agent's, reason code `unexpected`, reason = the exception's
       type and message and the record's coordinates; an escaped ContractError keeps its own
       code) and the partition moves on. Crashing instead would read the record again after the
       restart and crash again: one bad record would stop every product line of its partition;
     * infrastructure (retries of a transient failure spent, Kafka errors not about the record,
       the state store, MemoryError, OSError): the worker crashes WITHOUT acking, and after the
       restart the record is read again. Dead-lettering these would throw good records away;
  3. the record is acked once it is handled, or once its dead letter is delivered (acknowledged
     by the broker; a letter too large for Kafka goes again without the original record, which
     `dlq replay` reads at its source); Faust commits its offset after flushing the producer.
Expected bad input never reaches step 2's second kind: the stages turn it into dead letters
with their own reason codes. Before each retry and before a dead letter the agent's
`on_failure` runs, so in-memory indexes that may be ahead of the tables (which are only written
after delivery) are rebuilt.

`consume_batches` is the same protocol for a batch of records (`Stream.noack_take`): the handler
computes every record's outputs in order, sends them all without awaiting each acknowledgement,
awaits them together, only then writes its tables, and the records are acked after that. A
retry or a crash redoes the whole batch; its outputs are deterministic, so a republished record
is absorbed downstream exactly as a single redelivered record is. One producer keeps the order of
records sent to a partition, so a product line's outputs keep their input order. A batch that
fails with a record's failure is handled again one record at a time, in order, each as its own
batch (the handler's single-record case) and acked after it: only the record that fails on its
own is dead-lettered, the others proceed, and acks stay in offset order (a batch of one is
dead-lettered at once). The records were admitted by the guard with the batch, so its order
holds; a crash midway leaves the rest unacked, to be read again.

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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import faust
from aiokafka.errors import (
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faust.exceptions import FaustError
from faust.streams import _current_event, current_event

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ConfigurationError, ContractError
from qmsflow.kafka.headers import header_pairs
from qmsflow.quality.dead_letter import DEFAULT_MAX_BYTES, dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from streams.changelog_state import stored_form
from streams.offset_guard import offset_guard
from streams.outbox import CONTENT_TYPE, Outbox

log = logging.getLogger(__name__)

#: most records per batch: one produce request then carries hundreds of records instead of one,
#: and a batch's outputs still fit aiokafka's default 32 MiB send buffer many times over
BATCH_MAX = 1000
#: seconds a partly filled batch waits for more records: the latency a quiet partition pays;
#: under load batches fill while the previous one is being delivered, so this rarely applies
BATCH_WITHIN = 0.005

#: Kafka errors about one record (its size, its timestamp), not about the cluster
RECORD_KAFKA_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTimestampError,
)


class InfrastructureFailure(Exception):
    """The cluster refused something that is not about one record (authorisation, a topic)."""


#: failures of the worker's means, not of a record: the cluster, Faust, memory, the disk
INFRASTRUCTURE_ERRORS = (
    KafkaError,
    FaustError,
    MemoryError,
    OSError,
    ConfigurationError,
    InfrastructureFailure,
)
#: where state-store code lives: an exception raised there is the store's (RocksDB raises plain
#: Exceptions), not the record's
_STORE_PATHS = ("/faust/stores/", "/rocksdict/")


class FailureKind(Enum):
    """What a handler's exception says about the record it was handling (module docstring)."""

    TRANSIENT = "transient"  # retried in place
    RECORD = "record"  # dead-lettered; the partition moves on
    INFRASTRUCTURE = "infrastructure"  # the worker crashes without acking


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried before the worker gives up."""

    attempts: int = 6  # 0.5 + 1 + 2 + 4 + 8 s ≈ 15 s: longer than a broker leader election
    first_delay: float = 0.5
    factor: float = 2.0

    def delays(self) -> list[float]:
        """Seconds to wait before each retry (one fewer than attempts)."""
        return [self.first_delay * self.factor**n for n in range(self.attempts - 1)]


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and the errors it was raised from (Faust wraps Kafka's in ProducerSendError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def is_transient(error: BaseException) -> bool:
    """Worth retrying: Kafka marks its retriable errors; timeouts and lost connections are too."""
    for cause in _chain(error):
        if getattr(cause, "retriable", False):
            return True
        # aiokafka's KafkaTimeoutError (a send not acknowledged in time) is not marked
        # retriable, but a slow or failing-over broker is exactly what a retry is for.
        if isinstance(cause, TimeoutError | ConnectionError | KafkaTimeoutError):
            return True
    return False


def failure_kind(error: BaseException) -> FailureKind:
    """Whether `error` is worth a retry, the record's fault, or the infrastructure's."""
    causes = list(_chain(error))
    if any(isinstance(cause, RECORD_KAFKA_ERRORS) for cause in causes):
        return FailureKind.RECORD
    if is_transient(error):
        return FailureKind.TRANSIENT
    if any(isinstance(cause, INFRASTRUCTURE_ERRORS) or _raised_in_store(cause) for cause in causes):
        return FailureKind.INFRASTRUCTURE
    return FailureKind.RECORD


def _raised_in_store(error: BaseException) -> bool:
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = traceback.tb_frame.f_code.co_filename.replace("\\", "/")
    return any(path in filename for path in _STORE_PATHS)


class UnexpectedFailure(Exception):
    """A handler's exception as its dead letter tells it: type and message."""


def failure_letter(
    error: BaseException,
    *,
    stage: str,
    coordinates: Coordinates,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    timestamp_ms: int | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    whole: bool = True,
) -> dict[str, Any]:
    """The dead letter of a record a handler failed on, whole or without the original record.

    Not `whole`: the original made the letter itself too large; `dlq replay` reads it at the
    source. A ContractError keeps its own reason code; anything else is `unexpected`.
    """
    if isinstance(error, ContractError):
        told: Exception = error
    else:
        told = UnexpectedFailure(f"{type(error).__name__}: {error}")
        if not whole:
            told = UnexpectedFailure(f"{told} (original record left out: too large)")
    return dict(
        dead_letter(
            told,
            stage=stage,
            coordinates=coordinates,
            key=key if whole else None,
            value=value if whole else None,
            headers=list(headers) if whole else [],
            timestamp_ms=timestamp_ms,
            failed_at=datetime.now(UTC),
            max_bytes=max_bytes,
        )
    )


@dataclass(frozen=True)
class DeadLetters:
    """Where an agent's failed records go: `quality.dlq.v1`, Avro-encoded, under its stage."""

    topic: faust.TopicT
    codec: AvroCodec
    stage: str
    topic_prefix: str = ""
    max_bytes: int = DEFAULT_MAX_BYTES  # of the original record a letter embeds

    def letter(self, message: Any, error: BaseException, *, whole: bool = True) -> dict[str, Any]:
        """The dead letter of a Faust `message`, whole or without the original record."""
        timestamp = getattr(message, "timestamp", None)
        return failure_letter(
            error,
            stage=self.stage,
            coordinates=Coordinates(message.topic, message.partition, message.offset),
            key=message.key,
            value=message.value,
            headers=header_pairs(message.headers),
            timestamp_ms=int(timestamp * 1000) if timestamp else None,
            max_bytes=self.max_bytes,
            whole=whole,
        )

    async def deliver(self, message: Any, error: BaseException, *, whole: bool = True) -> str:
        """Send the dead letter of `message` and wait for the broker's ack; its reason code."""
        letter = self.letter(message, error, whole=whole)
        outbox = Outbox(self.codec, stage=self.stage, topic_prefix=self.topic_prefix)
        code = letter["reason_code"]
        outbox.add(
            self.topic,
            DEAD_LETTER_SUBJECT,
            message.key,
            letter,
            [("qmsflow.reason", code.encode())],
        )
        await outbox.deliver()
        telemetry.record_dead_letter(self.stage, code)
        return str(code)


async def consume(
    app: faust.App,
    stream: faust.StreamT[Any],
    handle: Callable[[Any], Awaitable[None]],
    *,
    dead_letters: DeadLetters,
    on_failure: Callable[[], None] = lambda: None,
    policy: RetryPolicy = RetryPolicy(),
) -> None:
    """Run `handle(message)` for every record of `stream`, following the module's protocol."""

    async def handle_event(event: Any) -> None:
        await handle(event.message)

    await _consume_events(
        app, stream, handle_event, dead_letters=dead_letters, on_failure=on_failure, policy=policy
    )


async def _consume_events(
    app: faust.App,
    stream: faust.StreamT[Any],
    handle: Callable[[Any], Awaitable[None]],
    *,
    dead_letters: DeadLetters,
    on_failure: Callable[[], None],
    policy: RetryPolicy,
) -> None:
    guard = offset_guard(app)
    reader = guard.reader()
    manual: Any = stream.noack()  # type: ignore[attr-defined]  # on Stream, not on StreamT
    async for event in manual.events():
        if not await guard.admit(event, reader):
            continue
        try:
            await handle(event)
        except Exception as error:

            async def again(events: Sequence[Any]) -> None:
                await handle(events[0])

            recovery = Recovery(app, again, manual.ack, dead_letters, on_failure, policy)
            if not await recovery.recover([event], error):
                return
            continue  # acked by the recovery
        await manual.ack(event)


async def _dead_letter(
    app: faust.App,
    message: Any,
    error: Exception,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
) -> bool:
    """Deliver the dead letter of `message`; False if the worker had to crash instead.

    Its delivery is retried like a transient failure; a letter too large for Kafka is sent
    again without the original record, so even then the partition moves on.
    """
    log.error(
        "dead-lettering %s[%s]@%s (%s): %s",
        message.topic,
        message.partition,
        message.offset,
        dead_letters.stage,
        error,
        exc_info=error,
    )
    delays = iter(policy.delays())
    whole = True
    while True:
        try:
            await dead_letters.deliver(message, error, whole=whole)
            return True
        except Exception as failure:
            if whole and _too_large(failure):
                whole = False
                continue
            kind = failure_kind(failure)
            delay = next(delays, None) if kind is FailureKind.TRANSIENT else None
            if delay is None:
                log.error("could not dead-letter the record; crashing", exc_info=failure)
                await app.crash(failure)
                return False
            log.warning(
                "transient failure (%s); retrying the dead letter in %.1f s", failure, delay
            )
            await asyncio.sleep(delay)


def _too_large(error: BaseException) -> bool:
    return any(isinstance(cause, RECORD_KAFKA_ERRORS) for cause in _chain(error))


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
    dead_letters: DeadLetters,
    on_failure: Callable[[], None] = lambda: None,
    policy: RetryPolicy = RetryPolicy(),
    max_records: int = BATCH_MAX,
    within: float = BATCH_WITHIN,
) -> None:
    """Run `handle(events)` for batches of `stream`'s events, following the module's protocol.

    With `max_records` 1 each record is its own batch, read as `consume` reads it (no take
    buffer): the same handler then runs with per-record delivery, the safe fallback.
    """

    async def one_at_a_time(event: Any) -> None:
        await handle([event])

    if max_records <= 1:
        await _consume_events(
            app,
            stream,
            one_at_a_time,
            dead_letters=dead_letters,
            on_failure=on_failure,
            policy=policy,
        )
        return
    guard = offset_guard(app)
    reader = guard.reader()
    batches: Any = stream.noack_take(max_records, within)  # type: ignore[attr-defined]
    async for taken in batches:
        events = [event for event in taken if await guard.admit(event, reader)]
        if not events:
            continue
        try:
            await handle(events)
        except Exception as error:
            recovery = Recovery(app, handle, stream.ack, dead_letters, on_failure, policy)
            if not await recovery.recover(events, error):
                return
            continue  # acked by the recovery
        for event in events:
            await stream.ack(event)


@dataclass(frozen=True)
class Recovery:
    """What happens after `handle(events)` raised: one procedure for records and batches."""

    app: faust.App
    handle: Callable[[Sequence[Any]], Awaitable[None]]
    ack: Callable[[Any], Awaitable[Any]]
    dead_letters: DeadLetters
    on_failure: Callable[[], None]
    policy: RetryPolicy

    async def recover(self, events: Sequence[Any], error: Exception) -> bool:
        """Retry, dead-letter the one record, handle a batch one record at a time, or crash.

        True once every record is handled or dead-lettered, and acked in offset order; False
        after the worker was told to crash (nothing more acked).
        """
        delays = iter(self.policy.delays())
        while True:
            self.on_failure()
            kind = failure_kind(error)
            delay = next(delays, None) if kind is FailureKind.TRANSIENT else None
            if delay is not None:
                log.warning("transient failure (%s); retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
                try:
                    await self.handle(events)
                except Exception as again:
                    error = again
                    continue
                return await self._ack(events)
            if kind is FailureKind.RECORD and len(events) == 1:
                letter = _dead_letter(
                    self.app, events[0].message, error, self.dead_letters, self.policy
                )
                return await letter and await self._ack(events)
            if kind is FailureKind.RECORD:
                log.warning(
                    "a batch of %d failed (%s: %s); handling its records one at a time",
                    len(events),
                    type(error).__name__,
                    error,
                )
                for event in events:  # in offset order, each acked once handled or lettered
                    try:
                        await self.handle([event])
                    except Exception as own:
                        if not await self.recover([event], own):
                            return False
                        continue
                    await self.ack(event)
                return True
            first = events[0].message
            log.error(
                "giving up on %d record(s) from %s[%s]@%s; crashing without acking",
                len(events),
                first.topic,
                first.partition,
                first.offset,
                exc_info=error,
            )
            await self.app.crash(error)
            return False

    async def _ack(self, events: Sequence[Any]) -> bool:
        for event in events:
            await self.ack(event)
        return True


class BatchOutbox(Outbox):
    """The outputs of a batch of inputs: sent in order, awaited together, counted per input type.

    `event_type` is set to each input's type before its outputs are added, so the
    `qmsflow_events_out` counter keeps its per-type labels although one batch mixes types.
    """

    def __init__(
        self,
        codec: Any,
        *,
        stage: str = "stream",
        topic_prefix: str = "",
        topics: Mapping[str, faust.TopicT] | None = None,
    ) -> None:
        super().__init__(codec, stage=stage, topic_prefix=topic_prefix, topics=topics)
        self._batch_stage = stage
        self._batch_prefix = topic_prefix
        self._records: list[tuple[Any, bytes | None, bytes, list[tuple[str, bytes]], Any]] = []

    def add_encoded(
        self,
        topic: faust.TopicT | str,
        key: str | bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue an encoded value, counted under the current input's event type."""
        topic = self.resolve(topic)
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


class StagedWrites:
    """Faust table writes of a batch of inputs, held back until their outputs are acknowledged.

    Reads go through it, so a later event of the batch (or the second of two events released by
    one tick) sees the earlier one's effect. Each write remembers the input it was staged for:
    Faust writes a key to the changelog partition of the current input. A table is named (looked
    up in `tables`) or given as the table itself.
    """

    def __init__(self, tables: Mapping[str, Any] | None = None) -> None:
        self._tables = dict(tables or {})
        self._writes: dict[tuple[int, str], tuple[Any, str, Any, Any]] = {}

    def _table(self, table: Any) -> Any:
        return self._tables[table] if isinstance(table, str) else table

    def get(self, table: Any, key: str) -> Any:
        """The value as it will be once applied: staged if staged, else the table's."""
        resolved = self._table(table)
        staged = self._writes.get((id(resolved), key))
        return resolved.get(key) if staged is None else staged[2]

    def put(self, table: Any, key: str, value: Any) -> None:
        """Stage a write for the current input; None deletes the key."""
        resolved = self._table(table)
        self._writes[(id(resolved), key)] = (resolved, key, value, current_event())

    def rows(self, table: Any) -> Iterable[tuple[str, Any]]:
        """The table's stored rows (what this worker's partitions hold)."""
        return self._table(table).items()  # type: ignore[no-any-return]

    def apply(self) -> None:
        """Write everything staged to the tables (after delivery)."""
        for table, key, value, event in self._writes.values():
            if event is not None:
                handling(event)
            if value is None:
                table.pop(key, None)
            elif hasattr(value, "to_dict"):  # an object kept by the batch runtime's tables
                table[key] = stored_form(value)
            else:
                table[key] = value
        self._writes.clear()
