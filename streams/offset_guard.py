"""Which records an agent may handle, and whose acks may move a partition's committed offset.

The rule: a partition's offset is committed only past records every agent reading it handled in
order, from the offset the current assignment (consumer generation) began at. A commit past a
record an agent never handled loses it for good: the partition's next owner starts after it.

faust-streaming 0.15.3 breaks that rule around rebalances (the chaos suite's rebalance storm
lost 6 to 28 of 8,000 events through it):
  * its streams ack the records they skip while a rebalance suspends the flow or because they
    were read in an earlier generation (`Stream._py_aiter`: "we want to ack the filtered out
    message"), so skipped, unhandled offsets count as done;
  * a record prefetched before the rebalance can reach the stream first, after which its drain
    loop drops the re-read records below it as already read (faust-streaming#221);
  * at revocation it forgets the partition's committed offset and takes acks nonetheless, and
    it keeps a committed offset of 0 as "unknown"; with no known committed offset its commit
    skips the gap check and commits the first run of acked offsets wherever that run starts,
    and the check it does make lets one unacked record through (`min(acked) - committed > 1`).

So each agent asks `admit()` before handling a record: only records read in the current
generation while records flow, after Faust has positioned the generation's partitions at their
committed offsets, and for each partition the next offset in order, are handled. (Faust resumes
the flow while it restores the tables from their changelogs, and stream records fetched before
that can reach the agents then: handled, they would meet half-restored tables, and their start
offset would be guessed before Faust has read the committed offsets. In the worker-kill scenario
every restarted worker re-read its partitions from offset 0 that way; at 100,000 events the
re-reads outgrew the time between kills.)
A record past the next expected offset means Faust dropped the ones between: the partition is
sought back to the expected offset and read again. For that re-read to arrive, Faust's drain
loop must not drop records below the highest offset it delivered (its "read offset", which the
stale records in flight push past the seek), so `ReadOffsets` answers "nothing read yet" for
these partitions and the guard refuses the duplicates instead.

Acks: Faust counts a record once every agent reading its topic has acked its copy (the quality
and correlation agents both read the ticks). An agent gives up its share of a record it refuses;
a record refused as stale or as past a hole is marked, and its final ack is then recorded as
nothing. Commits start exactly at the generation's first offset. Refusing a record is always
safe: the partition's owner, this worker or another, reads it again from the committed offset,
and a record handled twice is absorbed downstream like any redelivery.

`GuardedApp` installs the guard when Faust creates the consumer, before any record is fetched.
Compacted inputs (the CDC change topics) legitimately have holes in their offsets: their agents
declare them with `allow_holes()`; they keep Faust's read offsets and gap tracking (which let
commits pass compacted-away offsets), and their admission still refuses stale and re-read
records.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import faust

log = logging.getLogger(__name__)

#: seconds before a partition still waiting for the record it was sought back to is sought again
REREAD_AFTER = 5.0
#: seconds a log-start lookup may take before the worker treats the broker as failing
LOOKUP_TIMEOUT = 15.0
#: seconds of flow without resumed streams (table recovery) before the guard says so
UNPOSITIONED_WARN_AFTER = 60.0


class Admission(Enum):
    """What an agent does with a record of a partition it is reading in order."""

    HANDLE = "handle"  # the next record in order
    DUPLICATE = "duplicate"  # at or below what was handled already: read twice after a seek
    HOLE = "hole"  # past the next record: the ones between were dropped before the agent


def admission(expected: int, offset: int, *, holes: bool) -> Admission:
    """The verdict for the record at `offset` when `expected` is the next offset to handle."""
    if offset < expected:
        return Admission.DUPLICATE
    if offset == expected or holes:
        return Admission.HANDLE
    return Admission.HOLE


@dataclass
class PartitionRun:
    """One agent's progress through one partition within one consumer generation."""

    generation: int
    expected: int  # the next offset to handle
    sought_to: int | None = None  # the offset the partition was last sought back to
    sought_at: float = 0.0


@dataclass
class GuardCounts:
    """What the guard refused, for logs and tests."""

    stale: int = 0  # read in an earlier generation or while the flow was suspended
    duplicates: int = 0
    holes: int = 0
    rereads: int = 0
    refused_acks: int = 0
    held_commits: int = 0  # commits held because the partition's first offset was not acked


class ReadOffsets(defaultdict[Any, int | None]):
    """Faust's per-partition "highest offset delivered", hidden for strictly ordered topics.

    Faust's drain loop drops every record below it; after a seek back, records still in flight
    push it past the seek and the re-read is dropped too. Reading None for these partitions
    makes the loop deliver everything; the guard refuses what was handled already. Compacted
    inputs and the tables' changelogs (read by Faust's recovery, not by an agent) keep it.
    """

    def __init__(self, keeps_faust_order: Callable[[str], bool]) -> None:
        super().__init__(lambda: None)
        self.keeps_faust_order = keeps_faust_order

    def __getitem__(self, tp: Any) -> int | None:
        if self.keeps_faust_order(tp.topic):
            return super().__getitem__(tp)
        return None


class OffsetGuard:
    """The admission and ack rule of one app's consumer (see the module docstring)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.counts = GuardCounts()
        self._runs: dict[tuple[int, Any], PartitionRun] = {}
        self._starts: dict[Any, tuple[int, int]] = {}  # partition → (generation, first offset)
        self._starting: dict[tuple[Any, int], asyncio.Future[int]] = {}
        self._admitted: weakref.WeakSet[Any] = weakref.WeakSet()
        self._marked: weakref.WeakSet[Any] = weakref.WeakSet()  # refused by some agent
        self._holes_topics: set[str] = set()
        self._guarded_topics: set[str] = set()  # topics whose agents ask `admit`
        self._readers = itertools.count()
        self._consumer: Any = None
        #: the generation whose partitions Faust has sought to their committed offsets
        self._positioned: int | None = None
        self._unpositioned_since: tuple[int, float] | None = None  # (generation, loop time)
        #: partition → highest offset refused as stale, until the flowing generation re-reads it
        self._refused_stale: dict[Any, int] = {}

    def _keeps_faust_order(self, topic: str) -> bool:
        return topic in self._holes_topics or topic in self.app.tables.changelog_topics

    def flow_state(self) -> str:
        """The flow as the guard sees it, for state dumps."""
        if not self.app.flow_control.is_active():
            return "no (rebalance)"
        if self._flowing_generation() is None:
            return f"yes, generation not positioned yet (last positioned {self._positioned})"
        return "yes"

    def expected_offsets(self) -> dict[Any, list[tuple[int, int, int | None]]]:
        """Per partition of the current generation: (reader, next offset, sought-back offset)."""
        generation = self.app.consumer_generation_id
        expected: dict[Any, list[tuple[int, int, int | None]]] = defaultdict(list)
        for (reader, tp), run in self._runs.items():
            if run.generation == generation:
                expected[tp].append((reader, run.expected, run.sought_to))
        return expected

    def allow_holes(self, topics: Iterable[str]) -> None:
        """Declare compacted input topics, whose offsets may legitimately be missing."""
        self._holes_topics.update(topics)

    def reader(self) -> int:
        """A token for one agent's stream: each agent reads a partition at its own pace."""
        return next(self._readers)

    def _flowing_generation(self) -> int | None:
        """The current generation once its streams resumed, else None (rebalance, recovery)."""
        if not self.app.flow_control.is_active():
            return None
        generation = int(self.app.consumer_generation_id)
        return generation if generation == self._positioned else None

    def install(self, consumer: Any) -> None:
        """Guard `consumer`: acks go through `counts_ack`, commits through `commit_head_ok`.

        Its `perform_seek` marks the generation whose partitions are positioned, after which
        records of that generation may be handled.
        """
        self._consumer = consumer
        consumer._read_offset = ReadOffsets(self._keeps_faust_order)
        faust_ack = consumer.ack
        faust_new_offset = consumer._new_offset

        def ack(message: Any) -> bool:
            if self.counts_ack(message):
                return bool(faust_ack(message))
            message.acked = True
            consumer._unacked_messages.discard(message)
            return False

        def new_offset(tp: Any) -> int | None:
            if not self.commit_head_ok(tp):
                return None
            return faust_new_offset(tp)  # type: ignore[no-any-return]

        consumer.ack = ack
        consumer._new_offset = new_offset
        faust_perform_seek = consumer.perform_seek

        async def perform_seek() -> None:
            generation = self.app.consumer_generation_id
            await faust_perform_seek()
            # Faust seeks here as it resumes the streams after recovery (flow on); with the flow
            # stopped it is its fetcher seeking back mid-rebalance, which opens nothing
            if consumer.flow_active and self.app.consumer_generation_id == generation:
                self._positioned = generation

        consumer.perform_seek = perform_seek

    def counts_ack(self, message: Any) -> bool:
        """Whether `message`'s final ack may move its partition's committed offset."""
        generation = self._flowing_generation()
        if (
            generation is not None
            and message.generation_id == generation
            and message in self._admitted
            and message not in self._marked
        ):
            self._admitted.discard(message)
            return True
        self.counts.refused_acks += 1
        if message.topic not in self._guarded_topics:
            # an agent that does not admit through the guard never commits: say so, once
            self._guarded_topics.add(message.topic)
            log.warning(
                "acks on %s are not counted: its agent does not admit records through the "
                "offset guard (streams.processing.consume / consume_batches)",
                message.topic,
            )
        return False

    def commit_head_ok(self, tp: Any) -> bool:
        """Whether the partition's lowest acked offset is where its commit must continue.

        That is the committed offset, or the generation's first offset while Faust knows none.
        """
        acked = self._consumer._acked.get(tp)
        if not acked or tp.topic in self._holes_topics:
            return True
        head = self._consumer._committed_offset.get(tp)
        if head is None:
            start = self._starts.get(tp)
            if start is None or start[0] != self.app.consumer_generation_id:
                self.counts.held_commits += 1
                return False
            head = start[1]
        if min(acked) == head:
            return True
        self.counts.held_commits += 1
        return False

    async def admit(self, event: Any, reader: int) -> bool:
        """Whether `reader` may handle `event` now; a refused event gives up its reference."""
        if self._consumer is None:
            raise RuntimeError("the offset guard is not installed: build the app as GuardedApp")
        message = event.message
        self._guarded_topics.add(message.topic)
        generation = self._flowing_generation()
        run = None
        if generation is not None and message.generation_id == generation:
            run = await self._run(reader, message.tp, generation)
        if run is None:  # read before this generation, during a rebalance, or while it began
            self.counts.stale += 1
            # Read again once the generation flows: if no later record of the partition comes
            # to reveal the gap, nothing else would (a quiet partition's tail would wait).
            previous = self._refused_stale.get(message.tp, -1)
            self._refused_stale[message.tp] = max(previous, message.offset)
            return self._refuse(event, mark=True)
        holes = message.topic in self._holes_topics
        verdict = admission(run.expected, message.offset, holes=holes)
        if verdict is Admission.HOLE and await self._expired(message.tp, run):
            verdict = admission(run.expected, message.offset, holes=holes)
        if verdict is Admission.HANDLE:
            run.expected = message.offset + 1
            self._admitted.add(message)
            return True
        if verdict is Admission.DUPLICATE:  # this agent handled and acked the offset already
            self.counts.duplicates += 1
            return self._refuse(event, mark=False)
        self.counts.holes += 1
        await self._reread(message.tp, run, message.offset)
        return self._refuse(event, mark=True)

    def _refuse(self, event: Any, *, mark: bool) -> bool:
        """Give up this agent's reference to `event`; `mark`: it was not handled here."""
        if mark:
            self._marked.add(event.message)
        event.ack()  # the last reference's ack reaches `counts_ack`
        return False

    async def _run(self, reader: int, tp: Any, generation: int) -> PartitionRun | None:
        run = self._runs.get((reader, tp))
        if run is not None and run.generation == generation:
            return run
        start = await self._generation_start(tp, generation)
        if start is None:
            return None
        run = self._runs[(reader, tp)] = PartitionRun(generation=generation, expected=start)
        return run

    async def _generation_start(self, tp: Any, generation: int) -> int | None:
        """The offset `generation` reads `tp` from; None if the generation ended meanwhile."""
        start = self._starts.get(tp)
        if start is None or start[0] != generation:
            key = (tp, generation)
            starting = self._starting.get(key)
            if starting is None:  # one lookup per partition and generation
                starting = asyncio.ensure_future(self._start_offset(tp))
                self._starting[key] = starting
                starting.add_done_callback(lambda _: self._starting.pop(key, None))
            offset = await asyncio.shield(starting)
            if self._flowing_generation() != generation:
                return None
            # every reader of the partition awaited the same lookup: the same start
            start = self._starts[tp] = (generation, offset)
            log.debug("%s: generation %d starts at offset %d", tp, generation, start[1])
        return start[1]

    async def _start_offset(self, tp: Any) -> int:
        """Where this generation reads `tp` from: its committed offset, else the log start.

        Faust looked the committed offset up when it positioned the partitions (`perform_seek`,
        which admission waits for); asking the group coordinator here instead would deadlock a
        rebalance, which waits for this very record to be released. Faust keeps a committed 0 as
        None; then, as with no commit at all, reading starts at the log start
        (auto.offset.reset=earliest).
        """
        committed = self._consumer._committed_offset.get(tp)
        if committed is not None:
            return int(committed)
        return await self._log_start(tp)

    async def _log_start(self, tp: Any) -> int:
        earliest = await asyncio.wait_for(
            self._consumer.earliest_offsets(tp), timeout=LOOKUP_TIMEOUT
        )
        return int(earliest.get(tp) or 0)

    async def _expired(self, tp: Any, run: PartitionRun) -> bool:
        """Whether the records the run waits for were deleted by retention (then it moves on).

        Asked once per seek: while a re-read is pending the answer does not change.
        """
        if self._reread_pending(run):
            return False
        earliest = await self._log_start(tp)
        if run.expected >= earliest:
            return False
        log.warning("%s: offsets %d..%d expired unread", tp, run.expected, earliest - 1)
        run.expected = earliest
        return True

    def _reread_pending(self, run: PartitionRun) -> bool:
        now = asyncio.get_running_loop().time()
        return run.sought_to == run.expected and now - run.sought_at < REREAD_AFTER

    async def _reread(self, tp: Any, run: PartitionRun, offset: int) -> None:
        """Seek `tp` back to the record the run waits for (at most once per REREAD_AFTER)."""
        if self._reread_pending(run):
            return
        log.warning(
            "%s: record %d arrived while %d was expected; reading again from %d",
            tp,
            offset,
            run.expected,
            run.expected,
        )
        await self._seek(tp, run)

    async def _seek(self, tp: Any, run: PartitionRun) -> None:
        """Seek `tp` back to the run's expected offset, in the consumer's own thread.

        aiokafka's seek wakes its fetcher through a future of that thread's loop; a wake-up set
        from another thread can be lost, and the re-read then waits for unrelated traffic.
        """
        run.sought_to, run.sought_at = run.expected, asyncio.get_running_loop().time()
        self.counts.rereads += 1
        thread = self._consumer._thread
        try:
            await thread.call_thread(thread._ensure_consumer().seek, tp, run.expected)
        except Exception:  # revoked meanwhile: its next owner reads it from the committed offset
            log.warning("could not seek %s back to %d", tp, run.expected, exc_info=True)

    async def reread_stalled(self) -> None:
        """Seek again every partition still waiting for the record it was sought back to."""
        generation = self._flowing_generation()
        now = asyncio.get_running_loop().time()
        if generation is None:
            self._note_unpositioned(now)
            return
        self._unpositioned_since = None
        assigned = self._consumer.assignment()
        await self._reread_refused_stale(generation, assigned)
        for (_, tp), run in list(self._runs.items()):
            if (
                run.generation == generation
                and run.sought_to == run.expected
                and now - run.sought_at >= REREAD_AFTER
                and tp in assigned
            ):
                log.warning("%s: still waiting for record %d; reading again", tp, run.expected)
                await self._seek(tp, run)

    async def _reread_refused_stale(self, generation: int, assigned: Any) -> None:
        """Seek back every partition whose refused records this generation has not handled.

        A record refused as stale (read before the generation flowed) is read again only if
        something seeks its partition back; a later record past it would reveal the gap, but a
        partition whose traffic has stopped gets none.
        """
        for tp, offset in list(self._refused_stale.items()):
            if self._flowing_generation() != generation:
                return
            if tp not in assigned:
                del self._refused_stale[tp]  # its next owner reads it from the committed offset
                continue
            runs = [
                run
                for (_, run_tp), run in self._runs.items()
                if run_tp == tp and run.generation == generation
            ]
            if runs:
                run = min(runs, key=lambda r: r.expected)
            else:  # no record of it handled yet in this generation: read it from its start
                start = await self._generation_start(tp, generation)
                if start is None:
                    return
                run = PartitionRun(generation=generation, expected=start)
            if run.expected > offset:
                del self._refused_stale[tp]  # handled since
                continue
            if self._reread_pending(run):
                continue
            log.warning(
                "%s: record %d was refused before the generation flowed; reading again from %d",
                tp,
                offset,
                run.expected,
            )
            await self._seek(tp, run)

    def _note_unpositioned(self, now: float) -> None:
        """Warn once when records flow but Faust has not resumed the generation's streams."""
        generation = self.app.consumer_generation_id
        if not self.app.flow_control.is_active():
            self._unpositioned_since = None
            return
        if self._unpositioned_since is None or self._unpositioned_since[0] != generation:
            self._unpositioned_since = (generation, now)
        elif now - self._unpositioned_since[1] >= UNPOSITIONED_WARN_AFTER:
            log.warning(
                "generation %s: streams not resumed %.0f s after the flow was (table recovery "
                "still running?); their records wait",
                generation,
                now - self._unpositioned_since[1],
            )
            self._unpositioned_since = (generation, float("inf"))  # once per generation


_GUARDS: weakref.WeakKeyDictionary[faust.App, OffsetGuard] = weakref.WeakKeyDictionary()


def offset_guard(app: faust.App) -> OffsetGuard:
    """The app's guard (one per app)."""
    guard = _GUARDS.get(app)
    if guard is None:
        guard = _GUARDS[app] = OffsetGuard(app)
    return guard


class GuardedApp(faust.App):
    """A Faust app whose consumer is guarded from its creation, before any record is read."""

    logger = logging.getLogger("faust.app.base")  # its service logs keep Faust's logger name

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

        @self.timer(interval=REREAD_AFTER)
        async def reread_stalled_partitions() -> None:
            # a re-read that did not arrive (the seek raced a fetch) is asked for again
            await offset_guard(self).reread_stalled()

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        offset_guard(self).install(consumer)
        return consumer
