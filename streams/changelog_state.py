"""The batch runtime's tables: in memory, one changelog topic per table, Faust's format.

A table is a dict per name over the partitions this worker holds; every write is also a record
on the table's changelog topic, `<prefix><app id>-<table>-changelog`, partition = the input's
partition, key and value JSON (a tombstone deletes), exactly as Faust writes its tables. So the
two runtimes read each other's state: a worker switched from `faust` to `batch` (or back) restores
the same marks, holds and parked events.

Restoring a partition reads its changelog partitions from the beginning up to the high watermark
seen when the restore starts; the changelogs are compacted (dedup marks also expire by
retention), so the read is bounded by the live keys. Values stay Python objects between batches;
only a write is serialised (for its changelog record).

`BatchTables` is one batch's view: reads go through its staged writes (read-your-writes), and
nothing reaches the tables or the changelogs until the runtime applies it after delivery.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.dedup import SeenEvent
from qmsflow.quality.event_time import advance, ceiling_us, clamp
from qmsflow.settings import Settings

log = logging.getLogger(__name__)

DEDUP_TABLE = "dedup-seen"
#: records between restore progress lines
_PROGRESS_EVERY = 100_000
_RESTORE_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ChangelogRecord:
    """One table write as its changelog record."""

    topic: str
    partition: int
    key: bytes
    value: bytes | None  # None: a tombstone


class ChangelogState:
    """The tables of the partitions this worker holds, restored from and written to changelogs.

    The dedup table also keeps, per partition, its watermark (the newest `recorded_at` of a mark,
    never past the wall clock plus `max_clock_skew`) and its marks in the order they were
    written, so expired marks are found from the front without scanning.
    """

    def __init__(self, settings: Settings, tables: Sequence[str]) -> None:
        self._settings = settings
        self.names = tuple(tables)
        #: table → partition → key → value: a key lives in the partition that wrote it, and may
        #: live in several (the scaling tool copies a mark to each partition it may belong to)
        self.values: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in self.names}
        self.held: set[int] = set()
        self.watermarks: dict[int, int] = {}  # partition → newest recorded_at_us remembered
        self.expiry: dict[int, deque[tuple[int, str]]] = {}  # partition → (recorded_at_us, id)

    def changelog_topic(self, table: str) -> str:
        """The changelog topic of `table`, named as Faust names it."""
        return f"{self._settings.topic_prefix}{self._settings.app_id}-{table}-changelog"

    def get(self, table: str, key: str, partition: int | None = None) -> Any:
        """The stored value of `key`: `partition`'s first, else any held partition's, or None.

        Faust's store answers the same way (the current event's partition, then the others).
        """
        partitions = self.values[table]
        if partition is not None:
            rows = partitions.get(partition)
            if rows is not None and key in rows:
                return rows[key]
        for rows in partitions.values():
            if key in rows:
                return rows[key]
        return None

    def rows(self, table: str) -> Iterable[tuple[str, Any]]:
        """Every stored row of `table`, partition after partition."""
        return (row for rows in self.values[table].values() for row in rows.items())

    def watermark(self, partition: int) -> int:
        """The dedup watermark of `partition` (µs since the epoch; 0 before its first mark)."""
        return self.watermarks.get(partition, 0)

    def hold(self, partitions: set[int]) -> None:
        """Keep exactly `partitions`: drop the others' rows, restore the new ones."""
        self.drop(self.held - partitions)
        new = partitions - self.held
        if new:
            self.restore(new)

    def drop(self, partitions: set[int]) -> None:
        """Forget the rows of `partitions` (revoked: another worker holds them now)."""
        if not partitions:
            return
        for partition in partitions:
            for name in self.names:
                self.values[name].pop(partition, None)
            self.watermarks.pop(partition, None)
            self.expiry.pop(partition, None)
        self.held -= partitions

    def restore(self, partitions: set[int]) -> None:
        """Read the changelogs of `partitions` up to their current ends into the tables."""
        started = time.monotonic()
        consumer = Consumer(
            {
                "bootstrap.servers": self._settings.bootstrap_servers,
                "group.id": f"{self._settings.topic('qmsflow-restore')}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                **librdkafka_security(self._settings),
            }
        )
        try:
            restored = 0
            for name in self.names:
                restored += self._restore_table(consumer, name, partitions)
        finally:
            consumer.close()
        for partition in partitions:
            self._rebuild_dedup_index(partition)
        self.held |= partitions
        log.info(
            "restored %d changelog records of partitions %s in %.1f s",
            restored,
            sorted(partitions),
            time.monotonic() - started,
        )

    def _restore_table(self, consumer: Consumer, name: str, partitions: set[int]) -> int:
        topic = self.changelog_topic(name)
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > low:
                ends[partition] = high
        if not ends:
            return 0
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        tables = self.values[name]
        restored = 0
        while ends:
            for message in consumer.consume(10_000, _RESTORE_POLL_SECONDS):
                if message.error() is not None:
                    raise RuntimeError(f"restoring {topic}: {message.error()}")
                partition, offset = message.partition() or 0, message.offset() or 0
                if partition not in ends or offset >= ends[partition]:
                    continue
                key = orjson.loads(message.key() or b"null")
                raw = message.value()
                rows = tables.setdefault(partition, {})
                if raw is None:
                    rows.pop(key, None)
                else:
                    rows[key] = orjson.loads(raw)
                restored += 1
                if restored % _PROGRESS_EVERY == 0:
                    log.info("restoring %s: %d records", topic, restored)
                if offset + 1 >= ends[partition]:
                    del ends[partition]
        consumer.unassign()
        return restored

    def _rebuild_dedup_index(self, partition: int) -> None:
        if DEDUP_TABLE not in self.values:
            return
        rows = self.values[DEDUP_TABLE].get(partition, {})
        marks = sorted((SeenEvent(*stored).recorded_at_us, key) for key, stored in rows.items())
        self.expiry[partition] = deque(marks)
        if marks:
            # a mark from a future recorded_at must not make the partition forget every id
            limit = ceiling_us(datetime.now(UTC), self._settings.max_clock_skew)
            self.watermarks[partition] = clamp(marks[-1][0], limit)

    def expired_marks(self, partition: int, horizon_us: int, budget: int) -> list[str]:
        """Up to `budget` marks of `partition` recorded before `horizon_us`, oldest first.

        A mark written again later (a conflict's new fingerprint) is skipped here and found
        again at its newer place in the queue.
        """
        queue = self.expiry.get(partition)
        expired: list[str] = []
        marks = self.values.get(DEDUP_TABLE, {}).get(partition, {})
        while queue and len(expired) < budget and queue[0][0] < horizon_us:
            recorded_at_us, key = queue.popleft()
            stored = marks.get(key)
            if stored is not None and stored[1] == recorded_at_us:
                expired.append(key)
        return expired

    def changelog_records(
        self, writes: dict[tuple[str, str], tuple[int, Any]]
    ) -> list[ChangelogRecord]:
        """The changelog records of a batch's staged writes, in the order they were staged."""
        return [
            ChangelogRecord(
                self.changelog_topic(name),
                partition,
                orjson.dumps(key),
                None if value is None else orjson.dumps(value),
            )
            for (name, key), (partition, value) in writes.items()
        ]

    def apply(self, writes: dict[tuple[str, str], tuple[int, Any]], now: datetime) -> None:
        """Write a batch's staged writes into the tables (after their changelog records)."""
        limit = ceiling_us(now, self._settings.max_clock_skew)
        for (name, key), (partition, value) in writes.items():
            rows = self.values[name].setdefault(partition, {})
            if value is None:
                rows.pop(key, None)
                continue
            rows[key] = value
            if name == DEDUP_TABLE:
                seen = SeenEvent(*value)
                self.expiry.setdefault(partition, deque()).append((seen.recorded_at_us, key))
                previous = self.watermarks.get(partition, 0)
                self.watermarks[partition] = advance(previous, seen.recorded_at_us, limit)


class BatchTables:
    """One batch's reads and staged writes over a `ChangelogState` (the `Tables` protocol).

    `partition` is set by the runtime to the partition of the input being processed: a write
    belongs to it, as a Faust table write belongs to the current event's partition.
    """

    def __init__(self, state: ChangelogState) -> None:
        self._state = state
        self.partition = 0
        self.writes: dict[tuple[str, str], tuple[int, Any]] = {}

    def get(self, table: str, key: str) -> Any:
        """The value as it will be once applied: staged if staged, else the table's."""
        staged = self.writes.get((table, key))
        return self._state.get(table, key, self.partition) if staged is None else staged[1]

    def put(self, table: str, key: str, value: Any) -> None:
        """Stage a write to the current input's partition; None deletes the key."""
        self.writes.pop((table, key), None)  # re-inserted last: changelog order is write order
        self.writes[(table, key)] = (self.partition, value)

    def rows(self, table: str) -> Iterable[tuple[str, Any]]:
        """Every stored row of `table` (staged writes not included, as with Faust tables)."""
        return self._state.rows(table)
