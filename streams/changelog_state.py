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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from rocksdict import BlockBasedOptions, Cache, Options, Rdict

from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.dedup import SeenEvent
from qmsflow.quality.event_time import advance, ceiling_us, clamp
from qmsflow.settings import Settings

log = logging.getLogger(__name__)

DEDUP_TABLE = "dedup-seen"
_MISSING = object()
#: records between restore progress lines
_PROGRESS_EVERY = 100_000
_RESTORE_POLL_SECONDS = 0.1


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

    def __init__(
        self, settings: Settings, tables: Sequence[str], local_dir: Path | None = None
    ) -> None:
        self._settings = settings
        #: where the dedup marks are kept on disk (RocksDB per partition); None: in memory
        self._local_dir = local_dir
        self._sweep_from: dict[int, bytes | None] = {}  # partition → where the next scan starts
        self.names = tuple(tables)
        #: table → partition → key → value: a key lives in the partition that wrote it, and may
        #: live in several (the scaling tool copies a mark to each partition it may belong to)
        self.values: dict[str, dict[int, Any]] = {name: {} for name in self.names}
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
            if rows is not None:
                value = rows.get(key, _MISSING)
                if value is not _MISSING:
                    return value
        for other, rows in partitions.items():
            if other != partition:
                value = rows.get(key, _MISSING)
                if value is not _MISSING:
                    return value
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
                rows = self.values[name].pop(partition, None)
                if isinstance(rows, MarkStore):
                    rows.close()  # its files stay: the partition may come back
            self.watermarks.pop(partition, None)
            self._sweep_from.pop(partition, None)
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
            restored = self._restore_tables(consumer, partitions)
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

    def _rows(self, name: str, partition: int) -> dict[str, Any] | MarkStore:
        """The rows of `name` in `partition`, opened (a RocksDB store for local marks)."""
        partitions = self.values[name]
        rows = partitions.get(partition)
        if rows is None:
            if name == DEDUP_TABLE and self._local_dir is not None:
                path = self._local_dir / f"{name}-{partition}"
                rows = partitions[partition] = MarkStore(path, self._settings)
            else:
                rows = partitions[partition] = {}
        return rows

    def _restore_tables(self, consumer: Consumer, partitions: set[int]) -> int:
        """Read every table's changelog partitions at once: one assignment, one fetch loop.

        (Table after table, each small table waited out a poll of its own: 3 s for 71 records.)
        """
        names = {self.changelog_topic(name): name for name in self.names}
        ends: dict[tuple[str, int], int] = {}
        starts: list[TopicPartition] = []
        for topic, name in names.items():
            for partition in partitions:
                rows = self._rows(name, partition)
                start = rows.offset if isinstance(rows, MarkStore) else None
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
                if start is not None and not low <= start <= high:
                    log.warning(
                        "%s[%d]: local store at %d, log %d..%d: read whole",
                        topic,
                        partition,
                        start,
                        low,
                        high,
                    )
                    rows.clear()
                    start = None
                if high > max(low, start or 0):
                    ends[(topic, partition)] = high
                    first = OFFSET_BEGINNING if start is None else start
                    starts.append(TopicPartition(topic, partition, first))
        if not ends:
            return 0
        consumer.assign(starts)
        restored = 0
        while ends:
            for message in consumer.consume(10_000, _RESTORE_POLL_SECONDS):
                topic = message.topic() or ""
                if message.error() is not None:
                    raise RuntimeError(f"restoring {topic}: {message.error()}")
                at = (topic, message.partition() or 0)
                offset = message.offset() or 0
                if at not in ends or offset >= ends[at]:
                    continue
                key = orjson.loads(message.key() or b"null")
                raw = message.value()
                rows = self.values[names[topic]][at[1]]
                if raw is None:
                    rows.pop(key, None)
                else:
                    rows[key] = orjson.loads(raw)
                restored += 1
                if restored % _PROGRESS_EVERY == 0:
                    log.info("restoring changelogs: %d records", restored)
                if offset + 1 >= ends[at]:
                    del ends[at]
                    if isinstance(rows, MarkStore):
                        rows.offset = offset + 1
        consumer.unassign()
        return restored

    def _rebuild_dedup_index(self, partition: int) -> None:
        if DEDUP_TABLE not in self.values:
            return
        rows = self._rows(DEDUP_TABLE, partition)
        if isinstance(rows, MarkStore):  # on disk: swept by scanning, nothing kept per mark
            newest = max(
                (SeenEvent(*stored).recorded_at_us for _, stored in rows.items()), default=0
            )
        else:
            marks = sorted((SeenEvent(*stored).recorded_at_us, key) for key, stored in rows.items())
            self.expiry[partition] = deque(marks)
            newest = marks[-1][0] if marks else 0
        if newest:
            # a mark from a future recorded_at must not make the partition forget every id
            limit = ceiling_us(datetime.now(UTC), self._settings.max_clock_skew)
            self.watermarks[partition] = clamp(newest, limit)

    def expired_marks(self, partition: int, horizon_us: int, budget: int) -> list[str]:
        """Up to `budget` marks of `partition` recorded before `horizon_us`, oldest first.

        A mark written again later (a conflict's new fingerprint) is skipped here and found
        again at its newer place in the queue.
        """
        marks = self.values.get(DEDUP_TABLE, {}).get(partition, {})
        if isinstance(marks, MarkStore):
            return self._scan_expired(marks, partition, horizon_us, budget)
        queue = self.expiry.get(partition)
        expired: list[str] = []
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
                None if value is None else orjson.dumps(value, default=stored_form),
            )
            for (name, key), (partition, value) in writes.items()
        ]

    def _scan_expired(
        self, marks: MarkStore, partition: int, horizon_us: int, budget: int
    ) -> list[str]:
        """Expired marks among the next `budget` stored ones.

        Resumes where the last scan stopped, as Faust's sweep over its RocksDB store does.
        """
        expired: list[str] = []
        resume = None
        marked = marks.items(from_key=self._sweep_from.get(partition))
        for scanned, (key, stored) in enumerate(marked):
            if scanned == budget:
                resume = key
                break
            if SeenEvent(*stored).recorded_at_us < horizon_us:
                expired.append(key)
        self._sweep_from[partition] = None if resume is None else resume.encode("utf-8")
        return expired

    def apply(
        self,
        writes: dict[tuple[str, str], tuple[int, Any]],
        now: datetime,
        changelog_ends: dict[tuple[str, int], int] | None = None,
    ) -> None:
        """Write a batch's staged writes into the tables (after their changelog records).

        `changelog_ends`: the offset after each changelog partition's last delivered record, so
        a local store knows where its restore resumes.
        """
        limit = ceiling_us(now, self._settings.max_clock_skew)
        for (name, key), (partition, value) in writes.items():
            rows = self._rows(name, partition)
            if value is None:
                rows.pop(key, None)
                continue
            rows[key] = value
            if name == DEDUP_TABLE:
                seen = SeenEvent(*value)
                if not isinstance(rows, MarkStore):
                    self.expiry.setdefault(partition, deque()).append((seen.recorded_at_us, key))
                previous = self.watermarks.get(partition, 0)
                self.watermarks[partition] = advance(previous, seen.recorded_at_us, limit)
        for (topic, partition), end in (changelog_ends or {}).items():
            store = self.values[DEDUP_TABLE].get(partition)
            if isinstance(store, MarkStore) and topic == self.changelog_topic(DEDUP_TABLE):
                store.offset = end


def stored_form(value: Any) -> Any:
    """The JSON-able form of a table value kept as an object (its `to_dict()`).

    Objects live in the tables between batches; only the changelog (and a Faust table) gets
    their dict, the format Faust's own tables hold, so either runtime restores the other's.
    """
    to_dict = getattr(value, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"a table value must be JSON-able or have to_dict(), got {value!r}")
    return to_dict()


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


def store_options(settings: Settings) -> Options:
    """RocksDB options bounded as the worker bounds Faust's table stores (`QMSFLOW_ROCKSDB_*`)."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(settings.rocksdb_write_buffer_size)
    options.set_max_write_buffer_number(settings.rocksdb_max_write_buffers)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(settings.rocksdb_block_cache_size))
    options.set_block_based_table_factory(table)
    return options


class MarkStore:
    """One partition's dedup marks in RocksDB, plus the changelog offset they include.

    Dict-like for the few operations the tables use; keys are event ids, values the marks as
    JSON. The changelog offset lets a restart read only the changelog's tail; a lost directory
    is read whole again.
    """

    _OFFSET_KEY = b"\x00changelog-offset"  # sorts before every event id

    def __init__(self, path: Path, settings: Settings | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = Rdict(str(path), store_options(settings or Settings()))

    @property
    def offset(self) -> int | None:
        """The changelog offset after the last record this store holds, if known."""
        raw = self._db.get(self._OFFSET_KEY)
        return None if raw is None else int(raw)

    @offset.setter
    def offset(self, value: int) -> None:
        self._db[self._OFFSET_KEY] = str(value).encode("ascii")

    def get(self, key: str, default: Any = None) -> Any:
        """The mark of `key`, or `default`."""
        raw = self._db.get(key.encode("utf-8"))
        return default if raw is None else orjson.loads(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._db.get(key.encode("utf-8")) is not None

    def __getitem__(self, key: str) -> Any:
        raw = self._db.get(key.encode("utf-8"))
        if raw is None:
            raise KeyError(key)
        return orjson.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self._db[key.encode("utf-8")] = orjson.dumps(value)

    def pop(self, key: str, default: Any = None) -> Any:
        """Delete `key`; its former mark, or `default`."""
        raw_key = key.encode("utf-8")
        raw = self._db.get(raw_key)
        if raw is None:
            return default
        del self._db[raw_key]
        return orjson.loads(raw)

    def items(self, from_key: bytes | None = None) -> Iterator[tuple[str, Any]]:
        """Every mark, in key order, from `from_key` on."""
        for raw_key, raw in self._db.items(from_key=from_key):
            if raw_key != self._OFFSET_KEY:
                yield bytes(raw_key).decode("utf-8"), orjson.loads(raw)  # type: ignore[arg-type]

    def clear(self) -> None:
        """Delete every mark and the offset (the local copy no longer matches the log)."""
        keys = [raw_key for raw_key, _ in self._db.items()]
        for raw_key in keys:
            del self._db[raw_key]

    def close(self) -> None:
        """Close the database; its files stay."""
        self._db.close()
