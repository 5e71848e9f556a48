"""How a topic's product lines spread over its partitions, and what that caps scale-out at.

Stateful topics are keyed by product line, and a key's partition is murmur2(key) mod N
(`qmsflow.partitioner`), so all of one line's records sit on one partition and one worker
handles them. Partitions and workers help only as far as the lines spread: a topic keeps at
most as many partitions busy as it has distinct lines, and lines whose hashes collide share a
partition whatever the worker count. Pure: traffic shares in, figures out.

A share is a fraction of the topic's records (0..1). Skew is the busiest partition's share
over an even one (1/N): 1.0 is perfectly even, N means everything on one partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from qmsflow.partitioner import partition_for

__all__ = [
    "ASSIGNORS",
    "UNKEYED",
    "Assignor",
    "LineShare",
    "PartitionShare",
    "Recommendation",
    "Spread",
    "assign",
    "misplaced_lines",
    "observed_spread",
    "planned_spread",
    "read_line_weights",
    "recommend",
    "scaled_sample",
    "traffic_shares",
]

#: How a consumer group hands partitions to its members (see `assign`).
Assignor = Literal["range", "round-robin", "load-aware"]
ASSIGNORS: tuple[Assignor, ...] = ("range", "round-robin", "load-aware")

#: how a sample names records without a key (Java's producer spreads those, murmur2 never sees them)
UNKEYED = "(no key)"

# Shares are sums of floats; a skew this close to the limit counts as within it.
_EPSILON = 1e-9


@dataclass(frozen=True)
class LineShare:
    """One product line and its share of the topic's records."""

    line: str
    share: float


@dataclass(frozen=True)
class PartitionShare:
    """One partition: the lines on it, busiest first, and its share of the topic's records."""

    partition: int
    share: float
    lines: tuple[LineShare, ...]


@dataclass(frozen=True)
class Spread:
    """Every partition of a topic with its share; shares sum to 1."""

    partitions: tuple[PartitionShare, ...]  # by partition number, 0..N-1

    @property
    def count(self) -> int:
        """The number of partitions."""
        return len(self.partitions)

    @property
    def busiest(self) -> PartitionShare:
        """The partition with the largest share (the lowest number on a tie)."""
        return max(self.partitions, key=lambda p: (p.share, -p.partition))

    @property
    def skew(self) -> float:
        """The busiest partition's share over an even share (1/N); 1.0 is even."""
        return self.busiest.share * self.count

    @property
    def busy(self) -> int:
        """Partitions that carry any traffic; more workers than this idle."""
        return sum(1 for p in self.partitions if p.share > 0)

    def busiest_worker(self, workers: int, assignor: Assignor) -> float:
        """The largest share one of `workers` consumers gets: the group's throughput ceiling.

        A group goes only as fast as its busiest member, so `1 / busiest_worker` is the speed-up
        over one worker, per-record cost being equal.
        """
        shares = [p.share for p in self.partitions]
        owned = assign(self.count, workers, assignor, shares)
        return max(sum(shares[p] for p in member) for member in owned)


@dataclass(frozen=True)
class Recommendation:
    """The smallest candidate count within tolerance (None: none is), and every candidate.

    Without `workers` the busiest partition is held to even (1/N); with it, the busiest of that
    many workers under `assignor` is held to 1/workers.
    """

    partitions: int | None
    tolerance: float
    candidates: tuple[Spread, ...]  # by partition count
    workers: int | None = None
    assignor: Assignor = "range"

    def load(self, spread: Spread) -> float:
        """How far above even the judged share is: 1.0 even, 1.25 a quarter above."""
        if self.workers is None:
            return spread.skew
        return spread.busiest_worker(self.workers, self.assignor) * self.workers

    @property
    def most_even(self) -> Spread:
        """The candidate with the lowest load (the smallest count on a tie)."""
        return min(self.candidates, key=lambda s: (self.load(s), s.count))

    @property
    def heaviest_line(self) -> LineShare:
        """The busiest line: no count gets a partition, nor a worker, below its share."""
        return max(
            (line for p in self.candidates[0].partitions for line in p.lines),
            key=lambda line: (line.share, line.line),
        )


def traffic_shares(weights: Mapping[str, float]) -> dict[str, float]:
    """Normalise per-line weights (records, a rate, or 1 each) to shares that sum to 1."""
    if not weights:
        raise ValueError("no product lines given")
    negative = sorted(line for line, weight in weights.items() if weight < 0)
    if negative:
        raise ValueError(f"a line's weight is a share of traffic, ≥ 0; negative for {negative}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the weights sum to 0: at least one line must carry traffic")
    return {line: weight / total for line, weight in weights.items()}


def planned_spread(
    weights: Mapping[str, float],
    partitions: int,
    place: Callable[[str, int], int] = partition_for,
) -> Spread:
    """Where each line lands among `partitions` (Java's murmur2 by default), with the shares."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    shares = traffic_shares(weights)
    lines: dict[int, list[LineShare]] = {p: [] for p in range(partitions)}
    for line, share in shares.items():
        lines[place(line, partitions)].append(LineShare(line, share))
    return _spread(lines, {p: sum(s.share for s in on) for p, on in lines.items()})


def observed_spread(
    samples: Mapping[int, Mapping[str, float]], records: Mapping[int, int]
) -> Spread:
    """A topic's spread as read from the broker: records per partition, and a sample of keys.

    `records` holds every partition's record count (high minus low watermark); `samples` the
    key counts read from (the tail of) each partition. A line's share on a partition is its
    part of the sample times the partition's share, so a partial sample scales up. For several
    co-partitioned topics read as one, sum their `scaled_sample`s and records per partition.
    """
    total = sum(records.values())
    if total <= 0:
        raise ValueError("the topic holds no records: nothing to measure")
    lines: dict[int, list[LineShare]] = {}
    shares: dict[int, float] = {}
    for partition, count in records.items():
        shares[partition] = count / total
        keys = samples.get(partition, {})
        sampled = sum(keys.values())
        lines[partition] = [
            LineShare(line, shares[partition] * n / sampled) for line, n in keys.items() if n
        ]
    return _spread(lines, shares)


def scaled_sample(keys: Mapping[str, int], records: int) -> dict[str, float]:
    """Key counts of a partial sample scaled to the partition's `records`.

    Summing two topics' raw samples would weigh a quiet topic read in full like a busy one read
    in part; scaled, each key counts for the records it stands for.
    """
    sampled = sum(keys.values())
    return {key: n * records / sampled for key, n in keys.items()} if sampled else {}


def _spread(lines: Mapping[int, list[LineShare]], shares: Mapping[int, float]) -> Spread:
    return Spread(
        tuple(
            PartitionShare(p, shares[p], tuple(sorted(lines[p], key=lambda s: (-s.share, s.line))))
            for p in sorted(shares)
        )
    )


def misplaced_lines(spread: Spread) -> tuple[tuple[str, int, int], ...]:
    """Lines found on a partition murmur2 does not give them: (line, found on, murmur2's).

    A producer with another partitioner writes them there (librdkafka's default is CRC32), and
    then one line's records are split over two partitions and lose their order.
    """
    return tuple(
        (line.line, p.partition, home)
        for p in spread.partitions
        for line in p.lines
        if line.line != UNKEYED and (home := partition_for(line.line, spread.count)) != p.partition
    )


def assign(
    partitions: int, workers: int, assignor: Assignor, shares: Sequence[float] = ()
) -> tuple[tuple[int, ...], ...]:
    """The partitions each of `workers` group members owns, members sorted by member id.

    - `range`: Kafka's RangeAssignor (the Java and librdkafka default, the sink's): member i
      gets a contiguous range; the first N mod W members get one partition more;
    - `round-robin`: partition p to member p mod W; Faust's copartitioned assignor (the
      worker's) deals partitions out this way to a fresh group, then keeps them sticky;
    - `load-aware`: largest share first, each to the least loaded member (needs `shares`); no
      Kafka assignor knows loads, so this is the best a group could reach, not what it gets.
    """
    if workers < 1:
        raise ValueError(f"a group has at least one member, got {workers}")
    if assignor == "range":
        per, extra = divmod(partitions, workers)
        starts = [i * per + min(i, extra) for i in range(workers + 1)]
        return tuple(tuple(range(starts[i], starts[i + 1])) for i in range(workers))
    if assignor == "round-robin":
        return tuple(tuple(range(i, partitions, workers)) for i in range(workers))
    if len(shares) != partitions:
        raise ValueError(f"load-aware assignment needs {partitions} shares, got {len(shares)}")
    owned: list[list[int]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for partition in sorted(range(partitions), key=lambda p: (-shares[p], p)):
        member = min(range(workers), key=lambda i: (load[i], i))
        owned[member].append(partition)
        load[member] += shares[partition]
    return tuple(tuple(sorted(member)) for member in owned)


def recommend(
    weights: Mapping[str, float],
    candidates: Iterable[int],
    tolerance: float,
    workers: int | None = None,
    assignor: Assignor = "range",
) -> Recommendation:
    """The smallest candidate count whose busiest partition is within `tolerance` of even.

    Given `workers`, the busiest worker's share is held to 1/workers instead. The busiest
    partition can never carry less than the heaviest line, so once N exceeds the lines' count
    larger counts only look worse against 1/N; a plant with few lines finds no count at all.
    """
    if tolerance < 0:
        raise ValueError(f"the tolerance is a fraction above even, ≥ 0; got {tolerance}")
    spreads = tuple(planned_spread(weights, n) for n in sorted(set(candidates)))
    if not spreads:
        raise ValueError("no candidate partition counts given")
    judged = Recommendation(None, tolerance, spreads, workers, assignor)
    chosen = next((s.count for s in spreads if judged.load(s) <= 1.0 + tolerance + _EPSILON), None)
    return Recommendation(chosen, tolerance, spreads, workers, assignor)


def read_line_weights(text: str) -> dict[str, float]:
    """Parse product lines as an SRE writes them: `a,b=2,c` or one per line, `# comments`.

    A weight is `line=weight` or `line weight` (records, a rate, any unit); a line without one
    weighs 1. A line named twice adds up.
    """
    weights: dict[str, float] = {}
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, _, weight = entry.replace("=", " ").partition(" ")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(
                f"expected `line` or `line=weight` with a number, got {entry!r}"
            ) from None
        weights[name] = weights.get(name, 0.0) + value
    if not weights:
        raise ValueError("no product lines given")
    return weights
