"""The order in which a product line's records from several topics reach its stages.

A product line's events arrive on ten ingest topics, and quarantine and escalation depend on
their order (a disposition must not overtake its nonconformance). A consumer fetches each
topic-partition on its own: during a replay or after an outage one fetch can bring a thousand
lab results before the nonconformance that came first, so "the order the consumer returned them"
would differ between the live run and a replay, and so would the decisions.

So the batch runtime releases a partition's records in (timestamp, topic, offset) order, merged
across its topic-partitions, the way Kafka Streams picks a task's next record: the smallest
timestamp among the heads of the buffered topic-partitions, and only while no topic-partition of
the partition is empty and still lagging (it could hold an earlier record). A lagging input that
stays empty past `max_idle` seconds (Kafka Streams' `max.task.idle.ms`), or a buffer past
`max_buffered` records, releases anyway: order is worth a wait, not a stall. Each
topic-partition's own offset order is always kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from qmsflow.quality.ingest import RawMessage

TopicPartitionKey = tuple[str, int]


class TimestampMerge:
    """Fetched records buffered per topic-partition, released in timestamp order per partition."""

    def __init__(self, *, max_idle: float, max_buffered: int) -> None:
        self._max_idle = max_idle
        self._max_buffered = max_buffered
        self._queues: dict[TopicPartitionKey, deque[RawMessage]] = {}
        self._buffered = 0
        self._blocked_since: dict[int, float] = {}  # partition → when a lagging input held it

    def __len__(self) -> int:
        return self._buffered

    def add(self, records: Iterable[RawMessage]) -> None:
        """Buffer fetched records (in the order fetched: offset order per topic-partition)."""
        for record in records:
            self._queues.setdefault((record.topic, record.partition), deque()).append(record)
            self._buffered += 1

    def clear(self) -> None:
        """Drop everything buffered (partitions revoked: their new owner reads them again)."""
        self._queues.clear()
        self._buffered = 0
        self._blocked_since.clear()

    def release(
        self,
        assigned: Iterable[TopicPartitionKey],
        lagging: Callable[[TopicPartitionKey], bool],
        limit: int,
        now: float,
    ) -> list[RawMessage]:
        """Up to `limit` records, per partition in (timestamp, topic, offset) order.

        `assigned`: every topic-partition this consumer holds; `lagging(tp)`: whether the broker
        holds records of `tp` not fetched yet.
        """
        by_partition: dict[int, list[TopicPartitionKey]] = {}
        for tp in assigned:
            by_partition.setdefault(tp[1], []).append(tp)
        released: list[RawMessage] = []
        overflowing = self._buffered > self._max_buffered
        for partition, inputs in sorted(by_partition.items()):
            if len(released) >= limit:
                break
            released += self._release_partition(
                partition, inputs, lagging, limit - len(released), now, overflowing
            )
        self._buffered -= len(released)
        return released

    def _release_partition(
        self,
        partition: int,
        inputs: Sequence[TopicPartitionKey],
        lagging: Callable[[TopicPartitionKey], bool],
        limit: int,
        now: float,
        overflowing: bool,
    ) -> list[RawMessage]:
        queues = {tp: self._queues.setdefault(tp, deque()) for tp in inputs}
        if not any(queues.values()):
            self._blocked_since.pop(partition, None)
            return []
        behind = [tp for tp in inputs if lagging(tp)]
        patient = not overflowing

        def blocked() -> bool:
            """An input that may hold an earlier record has nothing buffered."""
            return patient and any(not queues[tp] for tp in behind)

        if blocked():
            since = self._blocked_since.setdefault(partition, now)
            if now - since < self._max_idle:
                return []
            patient = False  # waited long enough: release what is here
        released: list[RawMessage] = []
        while len(released) < limit and not blocked():
            heads = [queue for queue in queues.values() if queue]
            if not heads:
                break
            released.append(min(heads, key=_order).popleft())
        if released:
            self._blocked_since.pop(partition, None)
        return released


def _order(queue: deque[RawMessage]) -> tuple[int, str, int]:
    head = queue[0]
    return (head.timestamp_ms if head.timestamp_ms is not None else -1, head.topic, head.offset)
