"""The rebalance guard: records read before a rebalance are neither handled nor acked.

The broker-backed proof is the chaos suite's rebalance storm (scenario 5); these tests pin the
rule and the consumer wrapper with a fake consumer, app and flow control.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from streams.processing import acknowledgeable, guard_acks, unacked_at_commit


class TestAcknowledgeable:
    def test_a_record_of_the_current_generation_is_acked_while_records_flow(self) -> None:
        """The normal case: read and handled in the same generation."""
        assert acknowledgeable(7, 7, True)

    def test_not_while_a_rebalance_suspends_the_flow(self) -> None:
        """During a revocation Faust forgot the partition's committed offset: no ack then."""
        assert not acknowledgeable(7, 7, False)

    def test_not_a_record_read_in_an_older_generation(self) -> None:
        """After the rebalance the partition is re-read from its committed offset instead."""
        assert not acknowledgeable(6, 7, True)
        assert not acknowledgeable(None, 7, True)


class TestUnackedAtCommit:
    def test_a_run_starting_at_the_committed_offset_may_be_committed(self) -> None:
        """The normal case: every record from the committed offset on was acked."""
        assert not unacked_at_commit([40, 41, 42], 40)

    def test_a_single_unacked_record_at_the_committed_offset_blocks_the_commit(self) -> None:
        """Faust's own check (`min(acked) - committed > 1`) lets exactly this one through."""
        assert unacked_at_commit([41, 42], 40)

    def test_nothing_to_decide_without_acks_or_a_known_committed_offset(self) -> None:
        """No acks, or no committed offset known yet: Faust's own rule applies."""
        assert not unacked_at_commit([], 40)
        assert not unacked_at_commit([41], None)


@dataclass(frozen=True)
class FakeMessage:
    topic: str
    partition: int
    offset: int
    generation_id: int


class FakeGaps:
    def overlaps(self, offset: int) -> bool:
        """No offsets without records here."""
        return False


@dataclass
class FakeConsumer:
    """Keeps acks as Faust's consumer does; its commit offset is the end of the acked run."""

    acked: list[int] = field(default_factory=list)
    _unacked_messages: set[FakeMessage] = field(default_factory=set)
    _committed_offset: dict[Any, int | None] = field(default_factory=dict)
    sought: list[tuple[Any, int]] = field(default_factory=list)

    def ack(self, message: FakeMessage) -> bool:
        """Faust's ack: the offset becomes committable."""
        self._unacked_messages.discard(message)
        self.acked.append(message.offset)
        return True

    @property
    def _acked(self) -> dict[Any, list[int]]:
        return {"t0": self.acked}

    @property
    def _gap(self) -> dict[Any, FakeGaps]:
        return {"t0": FakeGaps()}

    def _new_offset(self, tp: Any) -> int | None:
        return max(self.acked) + 1 if self.acked else None

    async def seek(self, tp: Any, offset: int) -> None:
        """Where the partition is read from next."""
        self.sought.append((tp, offset))


class FakeFlowControl:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        """False while a rebalance suspends the flow."""
        return self.active


class FakeApp:
    def __init__(self) -> None:
        self.consumer = FakeConsumer()
        self.consumer_generation_id = 3
        self.flow_control = FakeFlowControl()


def guarded() -> tuple[Any, FakeConsumer]:
    app = FakeApp()
    guard_acks(app)  # type: ignore[arg-type]
    return app, app.consumer


class TestGuardAcks:
    def test_current_acks_pass_through(self) -> None:
        """Acks of this generation reach Faust's bookkeeping unchanged."""
        _, consumer = guarded()
        assert consumer.ack(FakeMessage("t", 0, 10, 3))
        assert consumer.acked == [10]

    def test_acks_during_a_revocation_are_refused_and_not_waited_for(self) -> None:
        """Faust acks the records its stream skips while the flow is suspended: refused."""
        app, consumer = guarded()
        skipped = FakeMessage("t", 0, 11, 3)
        consumer._unacked_messages.add(skipped)
        app.flow_control.active = False
        assert not consumer.ack(skipped)
        assert consumer.acked == []
        assert skipped not in consumer._unacked_messages

    def test_stale_acks_after_the_rebalance_are_refused(self) -> None:
        """A record read in generation 3 and finished in generation 4 is left to be re-read."""
        app, consumer = guarded()
        app.consumer_generation_id = 4
        assert not consumer.ack(FakeMessage("t", 0, 12, 3))
        assert consumer.ack(FakeMessage("t", 0, 12, 4))
        assert consumer.acked == [12]

    def test_commit_waits_for_the_record_at_the_committed_offset_and_rereads_it(self) -> None:
        """Offset 40 was never acked: nothing is committed, the partition is read from 40 again."""

        async def scenario() -> tuple[list[int | None], list[tuple[Any, int]]]:
            _, consumer = guarded()
            consumer._committed_offset["t0"] = 40
            for offset in (41, 42):
                consumer.ack(FakeMessage("t", 0, offset, 3))
            blocked = [consumer._new_offset("t0"), consumer._new_offset("t0")]
            await asyncio.sleep(0)  # the seek runs
            consumer.ack(FakeMessage("t", 0, 40, 3))
            return [*blocked, consumer._new_offset("t0")], consumer.sought

        offsets, sought = asyncio.run(scenario())
        assert offsets == [None, None, 43]
        assert sought == [("t0", 40)]  # once, not at every commit

    def test_guarding_twice_wraps_once(self) -> None:
        """Every agent installs the guard; the consumer is wrapped only the first time."""
        app, consumer = guarded()
        wrapped = consumer.ack
        guard_acks(app)
        assert consumer.ack is wrapped
