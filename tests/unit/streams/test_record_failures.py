"""The worker rejects records, not partitions: what fails on its own is dead-lettered, in order.

Faust's streams, its app and the offset guard are replaced by fakes (named so below): these
tests drive the protocol of streams/processing.py, not Kafka; the integration test
tests/integration/test_record_failures.py runs the real worker against the real broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import pytest
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFenced,
)
from faust.exceptions import ProducerSendError

from qmsflow.contracts import AvroCodec, FileSchemaRegistry
from qmsflow.errors import LimitError
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import PROJECT_ROOT
from streams import processing
from streams.processing import (
    DeadLetters,
    FailureKind,
    RetryPolicy,
    consume,
    consume_batches,
    failure_kind,
)

CODEC = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
TOPIC = "t.qms.capa.v1"
NO_WAIT = RetryPolicy(attempts=3, first_delay=0.0)


@dataclass
class FakeMessage:
    """A consumed Kafka record as Faust hands it over."""

    offset: int
    topic: str = TOPIC
    partition: int = 0
    key: bytes | None = b"line-1"
    value: bytes | None = b"payload"
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: float | None = 1_767_225_600.0


@dataclass
class FakeEvent:
    """A Faust event: the record, and what happened to it."""

    message: FakeMessage


class FakeDeadLetterTopic:
    """Stands in for the `quality.dlq.v1` topic: acknowledges each send on the next loop turn.

    `journal` is shared with the fake stream, so a test sees deliveries and acks in order.
    """

    def __init__(self, journal: list[str], *, refuse_larger_than: int | None = None) -> None:
        self.journal = journal
        self.sent: list[bytes] = []
        self.refuse_larger_than = refuse_larger_than

    async def send(self, *, key: bytes | None, value: bytes, headers: Any) -> Any:
        """Refuse a value over the limit as aiokafka does; else acknowledge it soon."""
        if self.refuse_larger_than is not None and len(value) > self.refuse_larger_than:
            raise ProducerSendError("Error while sending") from MessageSizeTooLargeError()
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acknowledge() -> None:
            self.sent.append(value)
            self.journal.append("dead letter delivered")
            ack.set_result(None)

        asyncio.get_running_loop().call_soon(acknowledge)
        return ack

    def get_topic_name(self) -> str:
        """The physical topic name."""
        return "t.quality.dlq.v1"

    def letters(self) -> list[dict[str, Any]]:
        """The delivered dead letters, decoded."""
        return [CODEC.decode(value, DEAD_LETTER_SUBJECT).record for value in self.sent]


class FakeStream:
    """A Faust stream in manual-ack mode, yielding the given batches (or their records)."""

    def __init__(self, batches: list[list[FakeEvent]], journal: list[str]) -> None:
        self.batches = batches
        self.journal = journal

    def noack_take(self, max_records: int, within: float) -> AsyncIterator[list[FakeEvent]]:
        """The batches as given."""

        async def take() -> AsyncIterator[list[FakeEvent]]:
            for batch in self.batches:
                yield batch

        return take()

    def noack(self) -> FakeStream:
        """Itself: acks are manual already."""
        return self

    def events(self) -> AsyncIterator[FakeEvent]:
        """Every record of every batch, in order."""

        async def each() -> AsyncIterator[FakeEvent]:
            for batch in self.batches:
                for event in batch:
                    yield event

        return each()

    async def ack(self, event: FakeEvent) -> None:
        """Note the ack in the journal."""
        self.journal.append(f"ack {event.message.offset}")


class FakeApp:
    """Records a crash instead of stopping a worker."""

    def __init__(self) -> None:
        self.crashed: BaseException | None = None

    async def crash(self, error: BaseException) -> None:
        """Note the crash."""
        self.crashed = error


class FakeGuard:
    """An offset guard that admits every record (the guard has its own tests)."""

    def reader(self) -> int:
        """One reader is all these tests need."""
        return 0

    async def admit(self, event: Any, reader: int) -> bool:
        """Every record, in the order given."""
        return True


@pytest.fixture(autouse=True)
def admit_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "offset_guard", lambda app: FakeGuard())


def _events(*offsets: int) -> list[FakeEvent]:
    return [FakeEvent(FakeMessage(offset)) for offset in offsets]


class Harness:
    """One agent's consume loop over fake batches, with a handler that fails as told."""

    def __init__(self, batches: list[list[FakeEvent]], *, letter_limit: int | None = None):
        self.journal: list[str] = []
        self.app = FakeApp()
        self.stream = FakeStream(batches, self.journal)
        self.dlq = FakeDeadLetterTopic(self.journal, refuse_larger_than=letter_limit)
        self.dead_letters = DeadLetters(
            cast(faust.TopicT, self.dlq), CODEC, "quality", topic_prefix="t."
        )
        self.failures = 0

    def on_failure(self) -> None:
        """Count the agent's index rebuilds."""
        self.failures += 1

    def run(self, handle: Any, *, batches: bool = True) -> None:
        """Consume every record with `handle`, batched or one at a time, until the end."""
        app = cast(faust.App, self.app)
        stream = cast(faust.StreamT[Any], self.stream)
        if batches:
            run = consume_batches(
                app,
                stream,
                handle,
                dead_letters=self.dead_letters,
                on_failure=self.on_failure,
                policy=NO_WAIT,
                max_records=10,
            )
        else:
            run = consume(
                app,
                stream,
                handle,
                dead_letters=self.dead_letters,
                on_failure=self.on_failure,
                policy=NO_WAIT,
            )
        asyncio.run(run)


class TestOneBadRecordInABatch:
    def test_only_the_failing_record_is_dead_lettered_and_the_rest_proceed(self) -> None:
        """A ValueError on offset 2 of 0..4: one dead letter for 2, 0..4 handled and acked."""
        harness = Harness([_events(0, 1, 2, 3, 4), _events(5, 6)])
        handled: list[int] = []

        async def handle(events: Sequence[FakeEvent]) -> None:
            offsets = [event.message.offset for event in events]
            if 2 in offsets:
                raise ValueError("due_date out of range")
            handled.extend(offsets)

        harness.run(handle)
        assert harness.app.crashed is None
        assert handled == [0, 1, 3, 4, 5, 6]
        letters = harness.dlq.letters()
        assert len(letters) == 1
        (letter,) = letters
        assert (letter["topic"], letter["partition"], letter["offset"]) == (TOPIC, 0, 2)
        assert letter["stage"] == "quality"
        assert letter["reason_code"] == "unexpected"
        assert letter["reason"] == (f"ValueError: due_date out of range (at {TOPIC}[0]@2)")
        assert letter["value"] == b"payload"
        assert harness.journal == [
            "ack 0",
            "ack 1",
            "dead letter delivered",  # delivered before its record is acked
            "ack 2",
            "ack 3",
            "ack 4",
            "ack 5",
            "ack 6",
        ]
        assert harness.failures == 2  # the batch, then record 2 alone: indexes rebuilt each time

    def test_a_record_failing_alone_in_its_batch_is_dead_lettered_at_once(self) -> None:
        """A one-record batch is not handled a second time before its dead letter."""
        harness = Harness([_events(7)])
        calls = 0

        async def handle(events: Sequence[FakeEvent]) -> None:
            nonlocal calls
            calls += 1
            raise OverflowError("date value out of range")

        harness.run(handle)
        assert calls == 1
        assert [letter["offset"] for letter in harness.dlq.letters()] == [7]
        assert harness.journal == ["dead letter delivered", "ack 7"]

    def test_an_output_too_large_for_kafka_is_the_records_failure(self) -> None:
        """The MessageSizeTooLargeError of aiokafka, wrapped by Faust, dead-letters the record."""
        harness = Harness([_events(0, 1)])

        async def handle(events: Sequence[FakeEvent]) -> None:
            if any(event.message.offset == 1 for event in events):
                raise ProducerSendError("Error while sending") from MessageSizeTooLargeError()

        harness.run(handle)
        assert harness.app.crashed is None
        assert [letter["offset"] for letter in harness.dlq.letters()] == [1]
        assert harness.journal[-2:] == ["dead letter delivered", "ack 1"]

    def test_a_dead_letter_too_large_itself_is_sent_without_the_original(self) -> None:
        """The partition moves on even when the original record cannot travel in its letter."""
        batch = _events(0)
        batch[0].message.value = b"x" * 5000
        harness = Harness([batch], letter_limit=2000)

        async def handle(events: Sequence[FakeEvent]) -> None:
            raise ValueError("bad")

        harness.run(handle)
        (letter,) = harness.dlq.letters()
        assert letter["value"] is None and letter["key"] is None
        assert "original record left out" in letter["reason"]
        assert harness.journal == ["dead letter delivered", "ack 0"]

    def test_an_escaped_contract_error_keeps_its_reason_code(self) -> None:
        """A ContractError the stage did not catch is still the record's, with its own code."""
        harness = Harness([_events(0)])

        async def handle(events: Sequence[FakeEvent]) -> None:
            raise LimitError("after.spec_json is nested 10,000 levels; at most 64")

        harness.run(handle)
        (letter,) = harness.dlq.letters()
        assert letter["reason_code"] == "limits"


class TestPerRecordConsume:
    def test_a_failing_record_is_dead_lettered_and_the_next_handled(self) -> None:
        """`consume` (the master-data agent) rejects the record, not the partition."""
        harness = Harness([_events(0, 1, 2)])
        handled: list[int] = []

        async def handle(message: FakeMessage) -> None:
            if message.offset == 1:
                raise RecursionError("maximum recursion depth exceeded")
            handled.append(message.offset)

        harness.run(handle, batches=False)
        assert harness.app.crashed is None
        assert handled == [0, 2]
        (letter,) = harness.dlq.letters()
        assert letter["reason"].startswith("RecursionError: maximum recursion depth exceeded")
        assert harness.journal == ["ack 0", "dead letter delivered", "ack 1", "ack 2"]


class TestTransientAndInfrastructure:
    def test_a_transient_failure_is_retried_not_dead_lettered(self) -> None:
        """A send timing out once: the batch is retried and acked, no dead letter."""
        harness = Harness([_events(0, 1)])
        attempts = 0

        async def handle(events: Sequence[FakeEvent]) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise KafkaTimeoutError()

        harness.run(handle)
        assert attempts == 2
        assert harness.dlq.sent == []
        assert harness.journal == ["ack 0", "ack 1"]
        assert harness.app.crashed is None

    def test_spent_retries_crash_without_acking(self) -> None:
        """A broker that stays away is the infrastructure's failure: crash, nothing acked."""
        harness = Harness([_events(0, 1)])

        async def handle(events: Sequence[FakeEvent]) -> None:
            raise KafkaTimeoutError()

        harness.run(handle)
        assert isinstance(harness.app.crashed, KafkaTimeoutError)
        assert harness.journal == []
        assert harness.dlq.sent == []

    @pytest.mark.parametrize(
        "error",
        [MemoryError(), ProducerFenced(), OSError(28, "No space left on device")],
        ids=["memory", "kafka", "disk"],
    )
    def test_an_infrastructure_failure_crashes_without_acking(self, error: Exception) -> None:
        """Dead-lettering these would throw good records away: the worker crashes instead."""
        harness = Harness([_events(0, 1)])

        async def handle(events: Sequence[FakeEvent]) -> None:
            raise error

        harness.run(handle)
        assert harness.app.crashed is error
        assert harness.journal == []
        assert harness.dlq.sent == []

    def test_an_infrastructure_failure_of_one_record_in_the_fallback_crashes(self) -> None:
        """Records before it stay acked (handled), the failing one and those after are not."""
        harness = Harness([_events(0, 1, 2)])

        async def handle(events: Sequence[FakeEvent]) -> None:
            offsets = [event.message.offset for event in events]
            if len(offsets) > 1:
                raise ValueError("some record of the batch")
            if offsets == [1]:
                raise MemoryError()

        harness.run(handle)
        assert isinstance(harness.app.crashed, MemoryError)
        assert harness.journal == ["ack 0"]


def _raise_in(filename: str) -> BaseException:
    """An exception whose innermost frame is code from `filename`."""
    code = compile("raise Exception('IO error: No space left on device')", filename, "exec")
    try:
        exec(code)
    except Exception as error:
        return error
    raise AssertionError("unreachable")


class TestFailureKind:
    def test_record_kafka_errors_are_the_records(self) -> None:
        """Too large an output is about the record, also wrapped by Faust."""
        assert failure_kind(MessageSizeTooLargeError()) is FailureKind.RECORD
        wrapped = ProducerSendError("Error while sending")
        wrapped.__cause__ = MessageSizeTooLargeError()
        assert failure_kind(wrapped) is FailureKind.RECORD

    def test_transient_kafka_errors_wrapped_by_faust_are_transient(self) -> None:
        """Faust's ProducerSendError hides a timeout in its cause."""
        wrapped = ProducerSendError("Error while sending")
        wrapped.__cause__ = KafkaTimeoutError()
        assert failure_kind(wrapped) is FailureKind.TRANSIENT

    def test_store_errors_are_infrastructure(self) -> None:
        """RocksDB raises plain Exceptions: where they come from tells them apart."""
        in_store = _raise_in("/venv/site-packages/faust/stores/rocksdb.py")
        assert failure_kind(in_store) is FailureKind.INFRASTRUCTURE
        in_agent = _raise_in("/work/streams/quality.py")
        assert failure_kind(in_agent) is FailureKind.RECORD

    def test_bugs_and_limits_are_the_records(self) -> None:
        """What only this record triggers is dead-lettered."""
        for error in (OverflowError(), RecursionError(), KeyError("x"), ValueError()):
            assert failure_kind(error) is FailureKind.RECORD
