"""The offset guard: which records an agent handles and whose acks may move a committed offset.

The consumer, flow control and messages are fakes standing in for Faust's (named as such); the
rule itself is the guard's real code.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import pytest

from streams.offset_guard import Admission, OffsetGuard, ReadOffsets, admission


@dataclass(frozen=True)
class FakeTP:
    topic: str
    partition: int


TP = FakeTP("mes.inspection-result.v1", 0)


class FakeFlowControl:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        """Whether records flow (False while a rebalance suspends them)."""
        return self.active


@dataclass(eq=False)
class FakeMessage:
    """Faust's message: one reference per agent it was delivered to; the last ack is final."""

    offset: int
    generation_id: int
    refcount: int = 1
    tp: Any = TP
    acked: bool = False

    @property
    def topic(self) -> str:
        """The record's topic."""
        return str(self.tp.topic)

    def ack(self, consumer: Any) -> bool:
        """Drop one reference; the final one reaches the consumer's ack, as in Faust."""
        if self.acked:
            return False
        self.refcount -= 1
        return bool(consumer.ack(self)) if self.refcount == 0 else False


@dataclass
class FakeEvent:
    message: FakeMessage
    consumer: Any

    def ack(self) -> bool:
        """Faust's Event.ack: the message's ack against the app's consumer."""
        return self.message.ack(self.consumer)


class FakeConsumerThread:
    """aiokafka's consumer thread: runs what it is handed, here on the caller's loop."""

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> FakeConsumerThread:
        return self

    def seek(self, tp: Any, offset: int) -> None:
        """Note the seek, as aiokafka's consumer would apply it."""
        self.consumer.seeks.append((tp, offset))

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        """Run `fun` as the consumer thread would."""
        return fun(*args)


@dataclass
class FakeConsumer:
    """Records the acks Faust would count and the seeks; commits as Faust's `_new_offset`."""

    committed: int | None = 100
    earliest: int = 0
    counted: list[int] = field(default_factory=list)
    seeks: list[tuple[Any, int]] = field(default_factory=list)
    _unacked_messages: set[FakeMessage] = field(default_factory=set)
    log_start_lookups: int = 0

    def __post_init__(self) -> None:
        # as Faust keeps it after seeking to the committed offsets: a committed 0 is None
        self._committed_offset: dict[Any, int | None] = {TP: self.committed or None}
        self._acked: dict[Any, list[int]] = {}
        self._thread = FakeConsumerThread(self)

    def ack(self, message: FakeMessage) -> bool:
        """Faust's own ack: every call here counts toward the committed offset."""
        message.acked = True
        self.counted.append(message.offset)
        self._acked.setdefault(message.tp, []).append(message.offset)
        return True

    flow_active: bool = True
    perform_seeks: int = 0

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its committed offset (noted only)."""
        self.perform_seeks += 1

    def _new_offset(self, tp: Any) -> int | None:
        """Faust's commit offset without its gap check: one past the first consecutive run."""
        acked = sorted(self._acked.get(tp, []))
        if not acked:
            return None
        end = acked[0]
        while end + 1 in acked:
            end += 1
        return end + 1

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        """The log start offsets."""
        self.log_start_lookups += 1
        return {tp: self.earliest for tp in tps}

    def assignment(self) -> set[Any]:
        """The partitions assigned to this worker."""
        return {TP}


class FakeTables:
    changelog_topics: frozenset[str] = frozenset({"qmsflow-dedup-seen-changelog"})


class FakeApp:
    tables = FakeTables()

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.flow_control = FakeFlowControl()
        self.consumer_generation_id = 7


@pytest.fixture
def consumer() -> FakeConsumer:
    return FakeConsumer()


@pytest.fixture
def app(consumer: FakeConsumer) -> FakeApp:
    return FakeApp(consumer)


def positioned(app: FakeApp, consumer: FakeConsumer) -> OffsetGuard:
    """A guard on `consumer` after Faust positioned the partitions and resumed the streams."""
    guard = OffsetGuard(cast(faust.App, app))
    guard.install(consumer)
    asyncio.run(consumer.perform_seek())
    return guard


@pytest.fixture
def guard(app: FakeApp, consumer: FakeConsumer) -> Iterator[OffsetGuard]:
    yield positioned(app, consumer)


def record(
    consumer: FakeConsumer, offset: int, generation: int = 7, *, readers: int = 1
) -> FakeEvent:
    return FakeEvent(FakeMessage(offset, generation, refcount=readers), consumer)


def admit_all(guard: OffsetGuard, events: list[FakeEvent], reader: int = 0) -> list[bool]:
    async def run() -> list[bool]:
        return [await guard.admit(event, reader) for event in events]

    return asyncio.run(run())


class TestAdmission:
    @pytest.mark.parametrize(
        ("offset", "holes", "verdict"),
        [
            (10, False, Admission.HANDLE),
            (9, False, Admission.DUPLICATE),
            (11, False, Admission.HOLE),
            (11, True, Admission.HANDLE),
            (9, True, Admission.DUPLICATE),
        ],
    )
    def test_verdicts_against_the_next_expected_offset(
        self, offset: int, holes: bool, verdict: Admission
    ) -> None:
        """Handle the next offset; below it is a re-read, above it a hole (unless compacted)."""
        assert admission(10, offset, holes=holes) is verdict


class TestAdmit:
    def test_a_generation_starts_at_the_committed_offset_and_reads_in_order(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """The start is the committed offset Faust looked up; records in order are handled."""
        events = [record(consumer, offset) for offset in (100, 101, 102)]
        assert admit_all(guard, events) == [True, True, True]
        assert consumer.log_start_lookups == 0

    def test_without_a_committed_offset_the_generation_starts_at_the_log_start(
        self, app: FakeApp
    ) -> None:
        """A group's first generation starts at the log start, not wherever acks begin."""
        consumer = FakeConsumer(committed=None, earliest=40)
        app.consumer = consumer
        guard = positioned(app, consumer)
        assert admit_all(guard, [record(consumer, 41), record(consumer, 40)]) == [False, True]
        assert consumer.seeks == [(TP, 40)]  # 41 came first: 40 was dropped, read it again

    def test_a_record_past_the_expected_one_seeks_back_once_and_is_not_handled(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """Faust dropped the records between: the partition is read again from the expected one."""
        events = [record(consumer, offset) for offset in (105, 106, 100, 101)]
        assert admit_all(guard, events) == [False, False, True, True]
        assert consumer.seeks == [(TP, 100)]
        assert (guard.counts.holes, guard.counts.rereads) == (2, 1)
        assert consumer.counted == []  # refused records gave up their reference, uncounted

    def test_a_re_read_that_does_not_arrive_is_asked_for_again(
        self, guard: OffsetGuard, consumer: FakeConsumer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A seek racing a fetch can be lost; the worker's timer seeks once more."""
        assert admit_all(guard, [record(consumer, 105)]) == [False]
        asyncio.run(guard.reread_stalled())
        assert consumer.seeks == [(TP, 100)]  # not yet: the first seek is recent
        monkeypatch.setattr("streams.offset_guard.REREAD_AFTER", 0.0)
        asyncio.run(guard.reread_stalled())
        assert consumer.seeks == [(TP, 100), (TP, 100)]
        assert admit_all(guard, [record(consumer, 100)]) == [True]
        asyncio.run(guard.reread_stalled())
        assert len(consumer.seeks) == 2  # the run moved on: nothing to wait for

    def test_records_read_twice_after_a_seek_are_handled_once(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """Re-read records below the expected offset are refused, not handled twice."""
        events = [record(consumer, offset) for offset in (100, 101, 100, 101)]
        assert admit_all(guard, events) == [True, True, False, False]
        assert guard.counts.duplicates == 2

    def test_records_of_an_earlier_generation_or_a_suspended_flow_are_refused(
        self, guard: OffsetGuard, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """Records read before the rebalance are left to the partition's owner, uncounted."""
        stale = record(consumer, 100, generation=6)
        consumer._unacked_messages.add(stale.message)
        assert admit_all(guard, [stale]) == [False]
        assert stale.message not in consumer._unacked_messages  # a revocation does not wait
        app.flow_control.active = False
        assert admit_all(guard, [record(consumer, 100)]) == [False]
        assert guard.counts.stale == 2
        assert consumer.counted == []

    def test_records_deleted_by_retention_are_skipped_not_awaited(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """Offsets below the log start can never be read again: the run moves on."""
        consumer.earliest = 150  # committed 100, but 100..149 expired before anyone read them
        assert admit_all(guard, [record(consumer, 150)]) == [True]
        assert consumer.seeks == []

    def test_compacted_inputs_admit_holes(self, guard: OffsetGuard, consumer: FakeConsumer) -> None:
        """Compaction leaves holes; re-read records are still refused."""
        guard.allow_holes([TP.topic])
        events = [record(consumer, offset) for offset in (103, 107, 105)]
        assert admit_all(guard, events) == [True, True, False]


class TestAcks:
    def test_only_acks_of_admitted_records_count(
        self, guard: OffsetGuard, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """Faust acks the records its streams skip; those acks must not move the offset."""
        handled = record(consumer, 100)
        assert admit_all(guard, [handled]) == [True]
        skipped = record(consumer, 101)  # skipped by Faust's stream, never admitted
        assert skipped.ack() is False
        assert handled.ack() is True
        assert consumer.counted == [100]
        assert skipped.message.acked  # recorded as acked, so Faust does not wait for it

    def test_acks_of_a_topic_no_agent_admits_are_refused_with_a_warning(
        self, guard: OffsetGuard, consumer: FakeConsumer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An agent bypassing the guard would never commit: the log says why, once."""
        unguarded = FakeTP("quality.alerts.v1", 0)
        for offset in (0, 1):
            assert FakeEvent(FakeMessage(offset, 7, tp=unguarded), consumer).ack() is False
        warnings = [r for r in caplog.records if "not counted" in r.getMessage()]
        assert len(warnings) == 1
        assert "quality.alerts.v1" in warnings[0].getMessage()

    def test_records_before_faust_positioned_the_generation_wait_for_it(
        self, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """Faust lets records flow while it restores the tables; they are read again later.

        Handled then, they would meet half-restored tables and start the partition at a guess
        (the committed offsets are read when the partitions are positioned).
        """
        guard = OffsetGuard(cast(faust.App, app))
        guard.install(consumer)
        early = record(consumer, 100)
        assert admit_all(guard, [early]) == [False]
        assert early.ack() is False and consumer.counted == []
        asyncio.run(consumer.perform_seek())  # recovery done: partitions at their commits
        events = [record(consumer, offset) for offset in (100, 101)]
        assert admit_all(guard, events) == [True, True]
        assert guard.counts.stale == 1

    def test_a_quiet_partitions_records_refused_before_the_flow_are_read_again(
        self, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """No later record comes to reveal the gap, so the guard seeks back on its own.

        The chaos suite's worker-kill scenario left the tails of its low-volume partitions
        unread this way: 205 of 10,000 events, on the worker that stayed up.
        """
        guard = OffsetGuard(cast(faust.App, app))
        guard.install(consumer)
        assert admit_all(guard, [record(consumer, 100), record(consumer, 101)]) == [False] * 2
        asyncio.run(consumer.perform_seek())
        asyncio.run(guard.reread_stalled())
        assert consumer.seeks == [(TP, 100)]
        events = [record(consumer, offset) for offset in (100, 101)]
        assert admit_all(guard, events) == [True, True]
        asyncio.run(guard.reread_stalled())
        assert consumer.seeks == [(TP, 100)]  # handled: nothing more to read again

    def test_records_refused_then_read_again_by_faust_need_no_seek(
        self, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """Faust's own seek to the commits delivered them again: the flag clears quietly."""
        guard = OffsetGuard(cast(faust.App, app))
        guard.install(consumer)
        assert admit_all(guard, [record(consumer, 100)]) == [False]
        asyncio.run(consumer.perform_seek())
        assert admit_all(guard, [record(consumer, 100), record(consumer, 101)]) == [True, True]
        asyncio.run(guard.reread_stalled())
        assert consumer.seeks == []

    def test_a_generation_left_unpositioned_for_a_minute_is_reported_once(
        self, app: FakeApp, consumer: FakeConsumer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A recovery that never ends would otherwise hold every record without a word."""
        guard = OffsetGuard(cast(faust.App, app))
        guard.install(consumer)
        for now in (0.0, 30.0, 61.0, 120.0):
            guard._note_unpositioned(now)
        warnings = [r for r in caplog.records if "streams not resumed" in r.getMessage()]
        assert [w.getMessage() for w in warnings] == [
            "generation 7: streams not resumed 61 s after the flow was (table recovery still "
            "running?); their records wait"
        ]

    def test_a_seek_back_while_the_flow_is_stopped_opens_no_generation(
        self, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """Faust's fetcher also seeks to the commits mid-rebalance; that is not the resume."""
        guard = positioned(app, consumer)
        app.consumer_generation_id = 8
        consumer.flow_active = False
        asyncio.run(consumer.perform_seek())
        consumer.flow_active = True
        assert admit_all(guard, [record(consumer, 100, generation=8)]) == [False]
        asyncio.run(consumer.perform_seek())
        assert admit_all(guard, [record(consumer, 100, generation=8)]) == [True]

    def test_an_ack_after_the_generation_changed_does_not_count(
        self, guard: OffsetGuard, app: FakeApp, consumer: FakeConsumer
    ) -> None:
        """A batch finishing after the rebalance began is read again by the new generation."""
        first, second = record(consumer, 100), record(consumer, 101)
        assert admit_all(guard, [first, second]) == [True, True]
        app.flow_control.active = False  # the rebalance starts while the batch is delivered
        assert first.ack() is False
        app.flow_control.active = True
        app.consumer_generation_id = 8
        assert second.ack() is False
        assert consumer.counted == []
        assert guard.counts.refused_acks == 2

    def test_a_record_two_agents_read_counts_once_both_handled_it(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """The quality and correlation agents both read the ticks."""
        tick = record(consumer, 100, readers=2)
        assert admit_all(guard, [tick], reader=0) == [True]
        assert admit_all(guard, [tick], reader=1) == [True]
        assert tick.ack() is False  # the first agent done: one reference left
        assert tick.ack() is True
        assert consumer.counted == [100]

    def test_a_re_read_copy_both_agents_handled_already_is_let_go(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """Both agents give up their references: nothing waits for it, nothing counts twice."""
        first = record(consumer, 100, readers=2)
        assert admit_all(guard, [first], reader=0) == [True]
        assert admit_all(guard, [first], reader=1) == [True]
        assert first.ack() is False and first.ack() is True
        again = record(consumer, 100, readers=2)
        consumer._unacked_messages.add(again.message)
        assert admit_all(guard, [again], reader=0) == [False]
        assert admit_all(guard, [again], reader=1) == [False]
        assert again.message.acked
        assert again.message not in consumer._unacked_messages
        assert consumer.counted == [100]

    def test_a_record_one_agent_skipped_past_a_hole_does_not_count(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """Agent 0 still waits for 100: agent 1's ack of 101 must not move the offset."""
        assert admit_all(guard, [record(consumer, 100)], reader=1) == [True]
        later = record(consumer, 101, readers=2)
        assert admit_all(guard, [later], reader=0) == [False]
        assert admit_all(guard, [later], reader=1) == [True]
        assert later.ack() is False
        assert consumer.counted == []


class TestCommits:
    def test_a_commit_waits_for_the_generations_first_offset(self, app: FakeApp) -> None:
        """Faust knows no committed offset (a committed 0): acks 5 and 6 alone commit nothing."""
        consumer = FakeConsumer(committed=0, earliest=0)
        app.consumer = consumer
        guard = positioned(app, consumer)
        events = [record(consumer, offset) for offset in range(7)]
        assert admit_all(guard, events) == [True] * 7
        for event in events[5:]:
            assert event.ack()
        assert consumer._new_offset(TP) is None
        assert guard.counts.held_commits == 1
        for event in events[:5]:
            assert event.ack()
        assert consumer._new_offset(TP) == 7

    def test_a_commit_continues_at_the_committed_offset(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """Faust's own check lets one unacked record through; the guard does not."""
        events = [record(consumer, offset) for offset in (100, 101, 102)]
        assert admit_all(guard, events) == [True, True, True]
        assert events[1].ack() and events[2].ack()
        assert consumer._new_offset(TP) is None
        assert events[0].ack()
        assert consumer._new_offset(TP) == 103


class TestReadOffsets:
    def test_strictly_ordered_topics_read_as_nothing_delivered_yet(self) -> None:
        """Faust's drain loop then drops no record; a re-read after a seek gets through."""
        compacted = FakeTP("cdc.erp.cmms.asset", 0)
        offsets = ReadOffsets(lambda topic: topic == compacted.topic)
        offsets[TP] = 619
        offsets[compacted] = 12
        assert offsets[TP] is None
        assert offsets[compacted] == 12  # compacted topics and changelogs keep Faust's
        assert offsets[FakeTP("cdc.erp.cmms.asset", 1)] is None  # nothing read yet

    def test_installing_the_guard_replaces_the_consumers_read_offsets(
        self, guard: OffsetGuard, consumer: FakeConsumer
    ) -> None:
        """The drain loop binds the map when it starts, so the guard must be installed first."""
        assert isinstance(consumer._read_offset, ReadOffsets)  # type: ignore[attr-defined]


class TestFaustInternals:
    """The Faust internals the guard replaces or relies on.

    A Faust upgrade that moves them fails here, not silently in a rebalance.
    """

    def test_the_drain_loop_reads_the_consumers_read_offsets(self) -> None:
        """`ReadOffsets` works only while the drain loop reads `_read_offset` by item."""
        from faust.transport.consumer import Consumer

        source = inspect.getsource(Consumer._drain_messages)
        assert "self._read_offset.__getitem__" in source
        assert "offset >= r_offset" in source

    def test_commits_and_acks_go_through_the_methods_the_guard_wraps(self) -> None:
        """The final ack reaches `consumer.ack`; commits ask `_new_offset` per partition."""
        from faust.transport.consumer import Consumer
        from faust.types.tuples import ConsumerMessage

        assert "consumer.ack(self)" in inspect.getsource(ConsumerMessage.on_final_ack)
        assert "self._new_offset(tp)" in inspect.getsource(Consumer._filter_committable_offsets)
        assert "self._committed_offset.update" in inspect.getsource(Consumer.perform_seek)

    def test_streams_resume_through_perform_seek_with_the_flow_on(self) -> None:
        """The guard opens a generation when Faust positions its partitions after recovery.

        Faust resumes the flow to read the changelogs, then seeks the stream partitions to
        their commits (`perform_seek`) before resuming them; its fetcher also seeks back while
        the flow is stopped.
        """
        from faust.tables.recovery import Recovery
        from faust.transport.consumer import Consumer

        resume = inspect.getsource(Recovery._resume_streams)
        completed = inspect.getsource(Recovery.on_recovery_completed)
        for source in (resume, completed):
            assert source.index("consumer.perform_seek()") < source.index("flow_control.resume()")
        assert "Resuming flow" in inspect.getsource(Recovery._restart_recovery.fun)
        getmany = inspect.getsource(Consumer.getmany)
        assert getmany.index("if self.flow_active") < getmany.index("self.perform_seek()")
