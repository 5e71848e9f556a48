"""The Postgres sink: Kafka records → `qms` rows, with the Kafka offsets in the same transaction.

Commit protocol (implemented here and nowhere else):
  1. on partition assignment, each partition is positioned at the `next_offset` stored in
     `qms.sink_offsets` (the beginning when there is none); Kafka's committed offsets are ignored;
  2. `add()` decodes a record into the buffers of its topic's tables (one topic may write
     several, e.g. an incident and its members) and notes its partition's next offset; a record
     that does not decode or map becomes a dead letter (stage `sink`) instead of rows, and so
     does a tombstone, except on a compacted topic whose binding maps it (a golden record's
     tombstone marks its row deleted);
  3. `flush()` first publishes those dead letters and waits for the broker's acknowledgement;
  4. then, in ONE Postgres transaction: per table, write the buffered rows (below), append the
     regulated records' hash-chained audit rows (`qmsflow.audit`), and upsert every touched
     partition's next offset into `qms.sink_offsets`; COMMIT. A table is written one of two
     ways:
     - straight: an insert-only table whose keys do not recur (`TableWrite.copied_straight`)
       gets one COPY of the batch's first row per key into the table itself, and the audit
       rows are appended without looking up records already chained; a key (or audit record)
       already stored is then a redelivery, which Postgres reports as a unique violation
       (23505): the transaction is rolled back and the batch written again staged, and so is
       the next batch (a replay comes in runs) until a staged batch meets no stored key;
     - staged: COPY into a temporary staging table, then INSERT … SELECT DISTINCT ON (key) …
       ON CONFLICT (key) DO NOTHING (or, for a table written by upsert, DO UPDATE … WHERE the
       incoming row is newer); always so for upserted tables and keys that recur;
  4a. if Postgres refuses a row (`database_verdict` says REJECT_RECORD: a data exception, a
     program limit, an integrity violation, a NUL psycopg will not send), that transaction is
     rolled back and the batch is written again in a new one, split into SAVEPOINTs: a part
     that fails is rolled back to its savepoint and halved, down to single records (a record
     is all its tables' rows or none), and a record that fails on its own is rejected. The
     audit rows are appended per part inside its savepoint, so only kept records are chained
     (the chain head is read from the table each time, never cached). Each rejected record
     becomes a dead letter (`sink-rejected`, stage `sink`, the database's message and SQLSTATE),
     published and acknowledged before the COMMIT, which stores every partition's offset as in
     step 4; a rejected record of the dead-letter topic itself is logged at ERROR and counted,
     never re-lettered (that would loop; the original stays in Kafka). The parts are written
     staged. A clean batch costs nothing extra: no savepoint, one COPY per table (and one
     INSERT per staged table);
  5. only after the commit is the offset also committed to Kafka (asynchronously, so lag tools
     see progress; step 1 never reads it back).
`run_sink` runs steps 3–5 of one batch in a writer thread while the main thread consumes and
decodes the next (`WritePipeline`): one batch in flight at most, its Kafka commit made by the
main thread once the write has returned, a failed batch put back in front of the next.
A crash anywhere before step 4's COMMIT leaves neither rows nor offsets, so the records are read
again (a dead letter already published is published again under its deterministic id, and
`qms.dead_letter` stores it once); a crash after it finds the offsets stored, so they are not.
Losing Postgres (SQLSTATE class 08, 57P01–57P03, or no answer at all) is handled the same way
without exiting: the buffer is dropped, the sink waits for the database with backoff, then seeks
every assigned partition back to its stored offset, so a COMMIT whose answer was lost is neither
redone nor missed. Other refusals keep the buffer: a serialization failure or deadlock (40)
writes the batch again at once, a shortage (53, 58, a lock or statement timeout) after a
backoff; anything else (42 permissions or syntax, a missing table) is a configuration or code
error, not a record's fault, and the sink exits naming it.
Rows are never doubled: the conflict key (the record's own deterministic id) absorbs the
redelivery of a record already written under another offset, e.g. a republished event after an
agent restart. An upserted row changes only when a record newer by its table's rule arrives
(`rows.Upsert`), so a redelivered or older view writes nothing either.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from threading import Event
from typing import Any, cast

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from opentelemetry.trace import Link, SpanKind

from connectors.postgres_sink.rows import BINDINGS, Row, TableBinding, TableWrite
from qmsflow import telemetry
from qmsflow.audit import append_audit_trail
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import Headers
from qmsflow.kafka.security import librdkafka_security
from qmsflow.logging_setup import configure_logging
from qmsflow.quality.dead_letter import DEFAULT_MAX_BYTES, dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import Settings

log = logging.getLogger(__name__)

#: links a batch span keeps to its records' traces; OTel's default span limit is 128 links
_MAX_BATCH_LINKS = 128
#: seconds between consumer-lag samples: Prometheus scrapes every 15–30 s, so finer is wasted
_LAG_INTERVAL = 10.0
#: backoff while Postgres is unreachable or short of resources: the first retry soon, then at
#: most this often
_RECONNECT_FIRST_SECONDS = 0.5
_RECONNECT_MAX_SECONDS = 5.0
#: seconds of one consume call: how soon the main thread sees a write end (or a stop)
_CONSUME_SLICE = 0.01
#: seconds a thread holds the GIL while another waits for it (CPython's default is 0.005)
_SWITCH_INTERVAL = 0.0005
#: the logical dead-letter topic: its records are never dead-lettered again (that would loop)
DEAD_LETTER_TOPIC = "quality.dlq.v1"


class SinkRejected(ContractError):
    """Postgres refused a record's rows: a value its contract allows but a table does not."""

    reason_code = "sink-rejected"

    def __init__(self, error: psycopg.Error) -> None:
        self.sqlstate = error.sqlstate
        message = error.diag.message_primary or str(error) or type(error).__name__
        if error.sqlstate is None:
            where = "refused by psycopg before sending, no SQLSTATE"
        else:
            where = f"SQLSTATE {error.sqlstate}"
        super().__init__(f"Postgres refused the record's rows: {message} ({where})")


class DatabaseVerdict(Enum):
    """What the sink does about an error Postgres (or psycopg) raised while writing."""

    REJECT_RECORD = "reject-record"  # the record's own fault: dead-letter it, keep the rest
    RECONNECT = "reconnect"  # the session is gone: drop the buffer, wait, rewind (step 1)
    RETRY_BATCH = "retry-batch"  # a transient conflict: roll back and write the batch again
    WAIT_AND_RETRY = "wait-and-retry"  # the server is short of something: back off, retry
    FATAL = "fatal"  # a configuration or code error: no record's fault, exit naming it


#: SQLSTATE classes of a record's own values: data exception, integrity violation, program limit
_REJECT_CLASSES = frozenset({"22", "23", "54"})
#: the server ends or refuses the session: admin/crash shutdown, cannot connect now
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})
#: transient shortages: insufficient resources, system (I/O) errors, a lock or statement timeout
_WAIT_CLASSES = frozenset({"53", "58"})
_WAIT_STATES = frozenset({"55P03", "57014"})


def database_verdict(error: psycopg.Error, *, connection_closed: bool = False) -> DatabaseVerdict:
    """Classify a write error: a record to reject, a session to replace, a batch to retry, or fatal.

    Pure: only the error's type and SQLSTATE (and whether the connection is closed) decide.
    Client-side errors have no SQLSTATE: psycopg's DataError is a value it will not send (a NUL
    in text), any other OperationalError a connection that failed; the rest are code errors.
    """
    if connection_closed:
        return DatabaseVerdict.RECONNECT
    state = error.sqlstate
    if state is None:
        if isinstance(error, psycopg.DataError):
            return DatabaseVerdict.REJECT_RECORD
        if isinstance(error, psycopg.OperationalError):
            return DatabaseVerdict.RECONNECT
        return DatabaseVerdict.FATAL
    category = state[:2]
    if category == "08" or state in _SESSION_ENDED:
        return DatabaseVerdict.RECONNECT
    if category in _REJECT_CLASSES:
        return DatabaseVerdict.REJECT_RECORD
    if category == "40":
        return DatabaseVerdict.RETRY_BATCH
    if category in _WAIT_CLASSES or state in _WAIT_STATES:
        return DatabaseVerdict.WAIT_AND_RETRY
    return DatabaseVerdict.FATAL


@dataclass(slots=True)
class BufferedRecord:
    """One record's rows in every table it writes, with its original for a dead letter."""

    at: Coordinates
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    timestamp_ms: int | None
    rows: list[tuple[str, list[Row]]]


@dataclass(slots=True)
class Batch:
    """What the sink buffered since its last write: rows, records, offsets, dead letters.

    The unit of one transaction (protocol step 4): `run_sink` hands a filled batch to its writer
    thread and fills the next meanwhile; a batch that fails is put back in front of the next.
    """

    rows: dict[str, list[Row]] = field(default_factory=lambda: defaultdict(list))
    records: list[BufferedRecord] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    dead: list[dict[str, Any]] = field(default_factory=list)
    dead_published: int = 0  # of the dead letters, already acknowledged by the broker
    messages: int = 0  # Kafka records added
    traced: list[tuple[str, Headers]] = field(default_factory=list)  # (logical topic, headers)

    @property
    def pending(self) -> int:
        """Rows and dead letters in the batch."""
        return sum(len(r) for r in self.rows.values()) + len(self.dead)

    def extend(self, later: Batch) -> None:
        """Append a batch of later records (the one filled while this one was being written)."""
        for table, rows in later.rows.items():
            self.rows[table].extend(rows)
        self.records.extend(later.records)
        self.next_offsets.update(later.next_offsets)  # a later offset of a partition wins
        self.dead.extend(later.dead)  # not yet published: they follow this batch's own
        self.messages += later.messages
        self.traced.extend(later.traced)


@dataclass
class SinkStats:
    """What the sink has done since it started."""

    batches: int = 0
    rows_offered: int = 0
    rows_inserted: int = 0  # inserted or, by an upsert, replaced
    dead_letters: int = 0
    records_rejected: int = 0  # records whose rows Postgres refused (step 4a)
    last_flush_seconds: float = 0.0
    by_table: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class PostgresSink:
    """Buffers rows per table and writes them, with their offsets, in one transaction."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        codec: AvroCodec,
        *,
        consumer_group: str,
        topic_prefix: str = "",
        bindings: Sequence[TableBinding] = BINDINGS,
        dead_letters: Callable[[list[dict[str, Any]]], None] | None = None,
        dead_letter_max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._conn = conn
        self._codec = codec
        self._group = consumer_group
        self._bindings = {f"{topic_prefix}{b.topic}": b for b in bindings}
        self._writes = {w.table: w for b in bindings for w in b.writes}
        self._publish_dead_letters = dead_letters
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._batch = Batch()  # the one add() fills
        # whether the next batch is tried straight (step 4): not while a replay meets stored keys
        self._straight = True
        self._audit_known = 0  # records of the last tables written already in the audit trail
        # staging tables created on this connection by a committed transaction: a rolled-back
        # one takes its CREATE with it
        self._staging_made: set[str] = set()
        self._staging_making: set[str] = set()
        self.stats = SinkStats()

    @property
    def topics(self) -> list[str]:
        """The physical topics this sink consumes."""
        return list(self._bindings)

    @property
    def pending(self) -> int:
        """Rows and dead letters buffered since the last flush."""
        return self._batch.pending

    @property
    def buffered(self) -> int:
        """Kafka records added since the last flush (or `detach`)."""
        return self._batch.messages

    @property
    def _rows(self) -> dict[str, list[Row]]:
        return self._batch.rows

    @property
    def _dead(self) -> list[dict[str, Any]]:
        return self._batch.dead

    def trace(self, logical_topic: str, headers: Headers) -> None:
        """Note a traced record of the batch being filled: its span ends with the batch."""
        self._batch.traced.append((logical_topic, headers))

    def prepare(self) -> None:
        """Create this session's staging tables of the tables always written staged.

        Outside any batch: a new session's first batch need not pay for the CREATEs (a table
        staged only to replay a redelivery gets its staging table when first needed).
        """
        staged = [w for w in self._writes.values() if not w.copied_straight]
        with self._conn.transaction():
            for write in staged:
                self._conn.execute(_make_staging(write))
        self._staging_made.update(w.table for w in staged)

    def stored_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offset to read per (topic, partition), from `qms.sink_offsets`."""
        wanted = list(partitions)
        rows = self._conn.execute(
            "SELECT topic, partition, next_offset FROM qms.sink_offsets"
            " WHERE consumer_group = %s AND (topic, partition) IN"
            " (SELECT * FROM unnest(%s::text[], %s::int[]))",
            (self._group, [t for t, _ in wanted], [p for _, p in wanted]),
        ).fetchall()
        self._conn.commit()
        return {(t, p): o for t, p, o in rows}

    def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] = (),
        timestamp_ms: int | None = None,
    ) -> None:
        """Buffer one record (step 2)."""
        binding = self._bindings[topic]
        batch = self._batch
        batch.messages += 1
        at = Coordinates(topic, partition, offset)
        try:
            lifted = binding.fields_from_headers(headers)
            if value is None:
                mapped = _tombstone_rows(binding, key, lifted, at)
            else:
                decoded = self._codec.decode(value, binding.subject)
                record = {**decoded.record, **lifted} if lifted else decoded.record
                # map every table's rows before buffering any, so a record is all rows or none
                mapped = [(w.table, w.to_rows(record, at)) for w in binding.writes]
            rows_by_table = batch.rows
            for table, rows in mapped:
                rows_by_table[table].extend(rows)
            if mapped:
                batch.records.append(BufferedRecord(at, key, value, headers, timestamp_ms, mapped))
        except (ContractError, KeyError, TypeError, ValueError) as error:
            batch.dead.append(self._dead_letter(error, at, key, value, headers, timestamp_ms))
        batch.next_offsets[(topic, partition)] = offset + 1

    def flush(self) -> dict[tuple[str, int], int]:
        """Write everything buffered (steps 3–4a); return the offsets now committed.

        On an error other than a rejected row, the buffer is kept: flushing again retries it.
        """
        batch = self._batch
        committed = self.write(batch)
        if self._batch is batch:
            self._batch = Batch()
        return committed

    def detach(self) -> Batch:
        """Take the buffered batch out, to be written by `write` while `add` fills a new one."""
        batch, self._batch = self._batch, Batch()
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose write failed, in front of what was buffered since."""
        batch.extend(self._batch)
        self._batch = batch

    def write(self, batch: Batch) -> dict[tuple[str, int], int]:
        """Write one batch (steps 3–4a); return the offsets now committed.

        The batch itself is left as it was but for its dead letters' acknowledgement: on an
        error other than a rejected row, writing it again retries it. The connection must not
        be used by another thread meanwhile.
        """
        if not batch.next_offsets:
            return {}
        started = time.perf_counter()
        if len(batch.dead) > batch.dead_published:
            self._publish(batch.dead[batch.dead_published :])
            batch.dead_published = len(batch.dead)
        rejected: list[tuple[BufferedRecord, psycopg.Error]] = []
        relettered = 0
        written: dict[str, int]
        self._staging_making.clear()
        try:
            written = self._write_batch(batch)
        except psycopg.Error as error:
            if database_verdict(error, connection_closed=self._conn.closed) is not (
                DatabaseVerdict.REJECT_RECORD
            ):
                raise
            log.warning("Postgres refused the batch (%s); finding the records at fault", error)
            self._staging_making.clear()  # rolled back with the transaction
            written = defaultdict(int)
            with self._conn.transaction():
                self._write_bisected(batch.records, written, rejected, known_to_fail=True)
                relettered = self._reject(rejected)
                self._store_offsets(batch.next_offsets)
        self._staging_made |= self._staging_making
        committed = dict(batch.next_offsets)
        self.stats.batches += 1
        self.stats.rows_offered += sum(len(r) for r in batch.rows.values())
        for table, n in written.items():
            self.stats.by_table[table] += n
        self.stats.rows_inserted += sum(written.values())
        self.stats.records_rejected += len(rejected)
        self.stats.dead_letters += len(batch.dead) + relettered
        self.stats.last_flush_seconds = time.perf_counter() - started
        return committed

    def _write_batch(self, batch: Batch) -> dict[str, int]:
        """Step 4 for the whole batch: straight if it may be, staged when a stored key is met."""
        if self._straight:
            try:
                with self._conn.transaction():
                    written = self._write_tables(batch.rows, straight=True)
                    self._store_offsets(batch.next_offsets)
                return written
            except psycopg.errors.UniqueViolation as error:
                log.info(
                    "batch meets a stored key (%s): a redelivery; writing it staged",
                    error.diag.constraint_name or error,
                )
                self._straight = False
                self._staging_making.clear()  # rolled back with the transaction
        with self._conn.transaction():
            written = self._write_tables(batch.rows, straight=False)
            self._store_offsets(batch.next_offsets)
        # a batch whose straight-copied tables took every row, and whose records were none in
        # the audit trail yet, met no stored key: the replay is over, the next batch is tried
        # straight again
        self._straight = self._audit_known == 0 and all(
            written.get(table, 0) == len(rows)
            for table, rows in batch.rows.items()
            if self._writes[table].copied_straight
        )
        return written

    def _write_tables(
        self,
        rows_by_table: Mapping[str, list[Row]],
        *,
        straight: bool = False,
        fresh_staging: bool = False,
    ) -> dict[str, int]:
        """Each table's rows, then their audit trail; the rows inserted or updated per table.

        `straight` copies tables that allow it into themselves and appends the audit rows
        without looking up known records: a stored key raises UniqueViolation (step 4).
        """
        writes = self._writes
        written: dict[str, int] = {}
        for table, rows in rows_by_table.items():
            if not rows:
                continue
            write = writes[table]
            if straight and write.copied_straight:
                written[table] = _copy_straight(self._conn, write, rows)
            elif fresh_staging:  # under a savepoint that may roll its CREATE back: made anew
                written[table] = _write_staged(self._conn, write, rows, fresh_staging=True)
            else:
                made = table in self._staging_made or table in self._staging_making
                written[table] = _write_staged(self._conn, write, rows, create=not made)
                self._staging_making.add(table)
        # Part 11 audit trail: the regulated records' chained audit rows, in this same
        # transaction (protocol in qmsflow.audit)
        self._audit_known = append_audit_trail(
            self._conn,
            {t: (writes[t].columns, rows) for t, rows in rows_by_table.items()},
            look_up_known=not straight,
        ).known
        return written

    def _write_bisected(
        self,
        records: list[BufferedRecord],
        written: dict[str, int],
        rejected: list[tuple[BufferedRecord, psycopg.Error]],
        *,
        known_to_fail: bool,
    ) -> None:
        """Write `records` under a savepoint; if Postgres refuses a row, halve and recurse.

        A part `known_to_fail` (the whole batch, or the second half after a clean first half) is
        halved without trying it; a single record is always tried on its own before rejection.
        """
        if not records:
            return
        if not known_to_fail or len(records) == 1:
            try:
                with self._conn.transaction():  # nested: a SAVEPOINT
                    part = self._write_tables(_rows_by_table(records), fresh_staging=True)
            except psycopg.Error as error:
                if database_verdict(error, connection_closed=self._conn.closed) is not (
                    DatabaseVerdict.REJECT_RECORD
                ):
                    raise
                if len(records) == 1:
                    rejected.append((records[0], error))
                    return
            else:
                for table, n in part.items():
                    written[table] += n
                return
        middle = len(records) // 2
        before = len(rejected)
        self._write_bisected(records[:middle], written, rejected, known_to_fail=False)
        clean_first_half = len(rejected) == before
        self._write_bisected(records[middle:], written, rejected, known_to_fail=clean_first_half)

    def _reject(self, rejected: list[tuple[BufferedRecord, psycopg.Error]]) -> int:
        """Dead-letter the records Postgres refused, before the caller's COMMIT; how many."""
        letters = []
        for record, error in rejected:
            refusal = SinkRejected(error)
            if self._bindings[record.at.topic].topic == DEAD_LETTER_TOPIC:
                # a dead letter of a dead letter would be refused again, and again: log it; the
                # original stays on the dead-letter topic
                log.error(
                    "dead letter %s[%d]@%d not stored and not re-lettered: %s",
                    *record.at,
                    refusal,
                )
                telemetry.record_dead_letter("sink", "sink-rejected-dead-letter")
                continue
            log.warning("record %s[%d]@%d rejected: %s", *record.at, refusal)
            letters.append(
                self._dead_letter(
                    refusal,
                    record.at,
                    record.key,
                    record.value,
                    record.headers,
                    record.timestamp_ms,
                )
            )
        if letters:
            self._publish(letters)
        return len(letters)

    def _dead_letter(
        self,
        error: Exception,
        at: Coordinates,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        timestamp_ms: int | None,
    ) -> dict[str, Any]:
        return dict(
            dead_letter(
                error,
                stage="sink",
                coordinates=at,
                key=key,
                value=value,
                headers=headers,
                timestamp_ms=timestamp_ms,
                failed_at=datetime.now(UTC),
                max_bytes=self._dead_letter_max_bytes,
            )
        )

    def _publish(self, letters: list[dict[str, Any]]) -> None:
        if self._publish_dead_letters is None:
            raise RuntimeError("records to dead-letter but no dead-letter publisher configured")
        self._publish_dead_letters(letters)

    def _store_offsets(self, next_offsets: Mapping[tuple[str, int], int]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO qms.sink_offsets (consumer_group, topic, partition, next_offset)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer_group, topic, partition)"
                " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                [(self._group, t, p, o) for (t, p), o in next_offsets.items()],
            )

    def reconnected(self, conn: psycopg.Connection[Any]) -> None:
        """Continue on a new connection after the old one was lost; the buffer is dropped."""
        self._conn = conn
        self._staging_made.clear()  # temporary tables died with the old session
        self.discard()

    def discard(self) -> None:
        """Drop everything buffered (after a flush, or when partitions are taken away)."""
        self._batch = Batch()


def _rows_by_table(records: Iterable[BufferedRecord]) -> dict[str, list[Row]]:
    """The records' rows per table, in record order."""
    by_table: dict[str, list[Row]] = defaultdict(list)
    for record in records:
        for table, rows in record.rows:
            by_table[table].extend(rows)
    return by_table


def _tombstone_rows(
    binding: TableBinding, key: bytes | None, fields: Mapping[str, str], at: Coordinates
) -> list[tuple[str, list[Row]]]:
    """A tombstone's rows on a compacted topic whose writes map one; else a ContractError."""
    if not binding.accepts_tombstones:
        raise ContractError("value: expected an Avro record, got a tombstone (null)")
    if not key:
        raise ContractError("key: expected the entity id on a tombstone, got none")
    entity_id = key.decode("utf-8")
    return [
        (w.table, w.on_tombstone(entity_id, fields, at))
        for w in binding.writes
        if w.on_tombstone is not None
    ]


def _first_per_key(write: TableWrite, rows: list[Row]) -> list[Row]:
    """One row per key: the first delivery (lowest `kafka_offset`), as the staged INSERT keeps.

    The rows themselves when no key repeats, which is the common case.
    """
    offset = write.columns.index("kafka_offset")
    positions = [write.columns.index(c) for c in write.key]
    first: dict[Any, Row] = {}
    if len(positions) == 1:
        (position,) = positions
        for row in rows:
            key = row[position]
            kept = first.setdefault(key, row)
            if kept is not row and row[offset] < kept[offset]:
                first[key] = row
    else:
        for row in rows:
            key = tuple(row[p] for p in positions)
            kept = first.setdefault(key, row)
            if kept is not row and row[offset] < kept[offset]:
                first[key] = row
    return rows if len(first) == len(rows) else list(first.values())


def _newest_per_key(write: TableWrite, rows: list[Row]) -> list[Row]:
    """One row per key of an upserted table: the first by its `Upsert.rank`, as DISTINCT ON keeps.

    The rows themselves when no key repeats.
    """
    assert write.upsert is not None
    rank = write.upsert.rank
    columns = write.columns
    positions = [columns.index(c) for c in write.key]
    kept: dict[Any, tuple[tuple[Any, ...], Row]] = {}
    for row in rows:
        key = tuple(row[p] for p in positions)
        ranked = rank(dict(zip(columns, row, strict=True)))
        held = kept.get(key)
        if held is None or ranked < held[0]:
            kept[key] = (ranked, row)
    return rows if len(kept) == len(rows) else [row for _, row in kept.values()]


def _copy_straight(conn: psycopg.Connection[Any], write: TableWrite, rows: list[Row]) -> int:
    """COPY the batch's first row per key into the table itself; the rows inserted.

    Raises UniqueViolation if a key is already stored (a redelivery): the caller writes the
    batch again staged (step 4).
    """
    with conn.cursor() as cur:
        with cur.copy(f"COPY {write.table} ({', '.join(write.columns)}) FROM STDIN") as copy:
            for row in _first_per_key(write, rows):
                copy.write_row(row)
        return cur.rowcount


def _staging(write: TableWrite) -> str:
    return "sink_staging_" + write.table.replace(".", "_")


def _make_staging(write: TableWrite) -> str:
    """The session's staging table of `write`: emptied by every COMMIT, gone with the session."""
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {_staging(write)} "
        f"(LIKE {write.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


def _write_staged(
    conn: psycopg.Connection[Any],
    write: TableWrite,
    rows: list[Row],
    fresh_staging: bool = False,
    *,
    create: bool = True,
) -> int:
    """COPY into a staging table, then one INSERT that skips (or, upserting, updates) stored keys.

    `fresh_staging` empties the staging table first: within one transaction a savepoint that
    was kept (step 4a) leaves its rows there until COMMIT. `create=False` trusts the session to
    hold the staging table already (a committed transaction made it): one round trip less.
    Returns the rows inserted or updated.
    """
    staging = _staging(write)
    columns = ", ".join(write.columns)
    key = ", ".join(write.key)
    if fresh_staging:
        conn.execute(f"{_make_staging(write)}; DELETE FROM {staging}")
    elif create:
        conn.execute(_make_staging(write))
    if write.upsert is None:
        # A batch may hold one key twice (a republished record). DISTINCT ON keeps the earliest
        # copy, so lineage points at the first delivery.
        keep_first = "kafka_offset"
        on_conflict = "DO NOTHING"
    else:
        # Postgres refuses DO UPDATE for a key met twice in one statement, so the batch is first
        # narrowed to the one row per key its records, applied in turn, would have left.
        keep_first = ", ".join(write.upsert.newest_first)
        assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in write.updated_columns)
        on_conflict = (
            f"DO UPDATE SET {assignments}, loaded_at = now() WHERE {write.upsert.replaces_when}"
        )
    # the batch narrowed to the row per key the INSERT keeps, before sending it: a record's
    # views and members recur (an incident's every view re-sends them all)
    narrowed = _first_per_key(write, rows) if write.upsert is None else _newest_per_key(write, rows)
    with conn.cursor() as cur:
        with cur.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
            for row in narrowed:
                copy.write_row(row)
        cur.execute(
            f"INSERT INTO {write.table} ({columns}) "
            f"SELECT DISTINCT ON ({key}) {columns} FROM {staging} "
            f"ORDER BY {key}, {keep_first} "
            f"ON CONFLICT ({key}) {on_conflict}"
        )
        return cur.rowcount


def run_sink(
    settings: Settings, *, stop: Event | None = None, echo: Callable[[str], None] = print
) -> SinkStats:
    """Consume the sinked topics into Postgres until stopped (SIGTERM, SIGINT or `stop`)."""
    stop = stop or Event()
    _stop_on_signals(stop)
    # the writer thread waits on Postgres while the main thread decodes: let it have the GIL
    # back soon after its answer arrives, not after CPython's default 5 ms
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_INTERVAL)
    try:
        return _run_sink(settings, stop, echo)
    finally:
        sys.setswitchinterval(switch_interval)


def _run_sink(settings: Settings, stop: Event, echo: Callable[[str], None]) -> SinkStats:
    if threading.current_thread() is threading.main_thread():  # a test's thread keeps its logs
        configure_logging(settings, service="sink")
    telemetry.start_telemetry(settings, "qmsflow-sink", metrics_port=settings.sink_metrics_port)
    codec = AvroCodec(open_registry(settings))
    group = settings.topic(f"{settings.app_id}-sink")
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            **librdkafka_security(settings),
        }
    )

    def publish_dead_letters(letters: list[dict[str, Any]]) -> None:
        for letter in letters:
            telemetry.record_dead_letter("sink", letter["reason_code"])
            producer.produce(
                settings.topic("quality.dlq.v1"),
                key=letter["key"],
                value=codec.encode(DEAD_LETTER_SUBJECT, letter),
            )
        if producer.flush(30) > 0:
            raise RuntimeError("dead letters not acknowledged by the broker within 30 s")

    # named after the group, so a DBA (and a test) can find the sink's session in pg_stat_activity
    application_name = f"qmsflow-sink {group}"[:63]
    conn: psycopg.Connection[Any] = psycopg.connect(settings.dsn, application_name=application_name)
    sink = PostgresSink(
        conn,
        codec,
        consumer_group=group,
        topic_prefix=settings.topic_prefix,
        dead_letters=publish_dead_letters,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
    )
    sink.prepare()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            # A crashed sink's partitions are reassigned only when its session expires;
            # librdkafka's default 45 s would stall the load that long after every crash.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            **librdkafka_security(settings),
        }
    )

    pipeline = WritePipeline(
        sink,
        lambda batch: _write_traced(sink, batch),
        lambda offsets: _commit(consumer, offsets),
    )

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        pipeline.settle()  # the connection is the main thread's again
        stored = sink.stored_offsets((p.topic, p.partition) for p in partitions)
        for p in partitions:
            p.offset = stored.get((p.topic, p.partition), OFFSET_BEGINNING)
        c.assign(partitions)
        echo(f"sink assigned {len(partitions)} partitions, resuming from Postgres offsets")

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        pipeline.drain()

    consumer.subscribe(sink.topics, on_assign=on_assign, on_revoke=on_revoke)
    lag_sampled = time.monotonic()
    # per-record spans only when they are exported: unexported, they cost 13% of the sink
    exporting = telemetry.exporting()
    backoff = _RECONNECT_FIRST_SECONDS  # while Postgres is short of resources (53, 58, …)
    batch_size = settings.sink_batch_size
    # Batches are filled in slices of consume (so a write that ends is seen soon): one is
    # written once it has waited the batch timeout, once it holds a fair share of a batch and
    # no write is in flight, or once a burst ends; while one is written the next fills, up to
    # a whole batch (a busy sink writes back to back, sizing its batches by the time a write
    # takes, and decodes while Postgres works). A trickle batches as before: by the timeout.
    slice_seconds = min(settings.sink_batch_timeout, _CONSUME_SLICE)
    fair_share = max(batch_size // 8, 1)
    filling_since = arrived = 0.0  # when the buffered batch got its first and last records
    try:
        while not stop.is_set():
            try:
                # no write in flight: a fair share is enough to start one, decoding the rest
                # while it runs
                room = (batch_size if pipeline.busy else fair_share) - sink.buffered
                messages = consumer.consume(room, slice_seconds) if room > 0 else []
                if messages:
                    arrived = time.monotonic()
                    if not sink.buffered:
                        filling_since = arrived
                consumed: Counter[str] = Counter()  # counted per batch: a label lookup per record
                for message in messages:
                    if message.error() is not None and _is_error(message):
                        continue
                    # a consumed record's headers are (str, bytes | None) pairs already (its
                    # type also allows what a producer may pass): header_pairs would copy them
                    headers = cast(Headers, message.headers() or [])
                    topic = message.topic() or ""
                    stamp_type, stamp = message.timestamp()
                    sink.add(
                        topic,
                        message.partition() or 0,
                        message.offset() or 0,
                        message.key(),
                        message.value(),
                        headers,
                        stamp if stamp_type else None,
                    )
                    consumed[topic] += 1
                    if exporting and telemetry.header_value(headers, telemetry.TRACEPARENT):
                        sink.trace(topic.removeprefix(settings.topic_prefix), headers)
                for topic, count in consumed.items():
                    logical = topic.removeprefix(settings.topic_prefix)
                    telemetry.record_event("in", "sink", logical, None, count)
                if pipeline.busy and sink.buffered < batch_size:
                    continue  # fill the next batch while this one is written
                written = pipeline.settle()  # waits only when the next batch is full
                if written:
                    backoff = _RECONNECT_FIRST_SECONDS
                if sink.buffered and (
                    sink.buffered >= fair_share
                    or time.monotonic() - filling_since >= settings.sink_batch_timeout
                    # a burst that ended: its records came faster than a fair share per batch
                    # timeout, then a slice brought none (a trickle still waits out the timeout)
                    or (
                        not messages
                        and sink.buffered * settings.sink_batch_timeout
                        >= (arrived - filling_since + slice_seconds) * fair_share
                    )
                ):
                    pipeline.submit()
            except psycopg.Error as error:
                verdict = database_verdict(error, connection_closed=conn.closed)
                if verdict is DatabaseVerdict.RECONNECT:
                    fresh = _reconnect(settings, conn, stop, error, application_name)
                    if fresh is None:
                        break  # stopped while waiting for Postgres: the records are read again
                    conn = fresh
                    sink.reconnected(conn)  # its staging tables are made again when first used
                    _rewind_to_stored(consumer, sink)
                    continue
                if verdict is DatabaseVerdict.RETRY_BATCH:
                    # the buffer is kept: the next pass flushes it again, with what it consumes
                    log.warning("Postgres rolled the batch back (%s); writing it again", error)
                    continue
                if verdict is DatabaseVerdict.WAIT_AND_RETRY:
                    log.warning(
                        "Postgres cannot take the batch now (%s, SQLSTATE %s); retry in %.1f s",
                        error,
                        error.sqlstate,
                        backoff,
                    )
                    if stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, _RECONNECT_MAX_SECONDS)
                    continue
                # FATAL, or a record's error outside the rows (step 4a found no record at fault)
                log.critical(
                    "Postgres refused the sink's own statements (%s, SQLSTATE %s): a configuration"
                    " or code error, not a record's fault; the sink stops, nothing is committed",
                    error,
                    error.sqlstate,
                )
                raise
            if time.monotonic() - lag_sampled >= _LAG_INTERVAL:
                _report_lag(consumer, group)
                lag_sampled = time.monotonic()
        if not conn.closed:
            pipeline.drain()
    finally:
        pipeline.close()
        consumer.close()
        conn.close()
    return sink.stats


def _reconnect(
    settings: Settings,
    lost: psycopg.Connection[Any],
    stop: Event,
    error: psycopg.Error,
    application_name: str,
) -> psycopg.Connection[Any] | None:
    """Wait for Postgres with capped backoff; the new connection, or None once stopped."""
    log.warning("Postgres connection lost (%s); waiting for the database", error)
    lost.close()
    delay = _RECONNECT_FIRST_SECONDS
    waited_from = time.monotonic()
    while not stop.wait(delay):
        try:
            conn = psycopg.connect(
                settings.dsn, connect_timeout=5, application_name=application_name
            )
        except psycopg.OperationalError as still:
            log.warning(
                "Postgres still unavailable after %.0f s (%s); retry in %.0f s",
                time.monotonic() - waited_from,
                still,
                delay,
            )
            delay = min(delay * 2, _RECONNECT_MAX_SECONDS)
            continue
        log.warning("Postgres back after %.1f s; resuming", time.monotonic() - waited_from)
        return conn
    return None


def _rewind_to_stored(consumer: Consumer, sink: PostgresSink) -> None:
    """Seek each assigned partition to its offset in `qms.sink_offsets` (protocol step 1)."""
    assigned = consumer.assignment()
    stored = sink.stored_offsets((tp.topic, tp.partition) for tp in assigned)
    for tp in assigned:
        offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


class WritePipeline:
    """At most one batch in flight: written by a thread of its own while the next one fills.

    The commit protocol is unchanged: a batch's offsets are committed to Kafka (`commit`) only
    by `settle`, once its write (`write`: one Postgres transaction, offsets included) has
    returned them; a write that raised commits nothing, and its batch is put back in front of
    the sink's buffer, to be written again with what was consumed since (or dropped with it on
    reconnection). The connection is used by one thread at a time: the main thread settles the
    write in flight before any statement of its own (assignment, revocation, the last flush).
    """

    def __init__(
        self,
        sink: PostgresSink,
        write: Callable[[Batch], Mapping[tuple[str, int], int]],
        commit: Callable[[Mapping[tuple[str, int], int]], None],
    ) -> None:
        self._sink = sink
        self._write = write
        self._commit = commit
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: tuple[Future[Mapping[tuple[str, int], int]], Batch] | None = None

    @property
    def busy(self) -> bool:
        """Whether a write is in flight and not finished yet."""
        return self._in_flight is not None and not self._in_flight[0].done()

    def submit(self) -> None:
        """Hand the sink's buffered batch to the writer thread; one must not be in flight."""
        if self._in_flight is not None:
            raise RuntimeError("a batch is already in flight: settle it first")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sink-writer")
        batch = self._sink.detach()
        self._in_flight = (self._executor.submit(self._write, batch), batch)

    def settle(self) -> bool:
        """Wait for the write in flight, then commit its offsets to Kafka; whether one was.

        A write that raised puts its batch back into the sink and raises here.
        """
        if self._in_flight is None:
            return False
        future, batch = self._in_flight
        self._in_flight = None
        try:
            offsets = future.result()
        except BaseException:
            self._sink.restore(batch)
            raise
        self._commit(offsets)
        return True

    def drain(self) -> None:
        """Settle the write in flight, then write what is buffered here and commit it.

        A write that raises puts its batch back into the sink, as `settle` does.
        """
        self.settle()
        if not self._sink.buffered:
            return
        batch = self._sink.detach()
        try:
            offsets = self._write(batch)
        except BaseException:
            self._sink.restore(batch)
            raise
        self._commit(offsets)

    def close(self) -> None:
        """Wait for a write still in flight (after an error elsewhere) and stop the thread."""
        if self._in_flight is not None:
            future, _batch = self._in_flight
            self._in_flight = None
            try:
                self._commit(future.result())
            except Exception as error:  # the records are read again: nothing was committed
                log.warning("the last batch was not written (%s)", error)
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _write_traced(sink: PostgresSink, batch: Batch) -> dict[tuple[str, int], int]:
    """Write a batch in a `sink.batch` span; then one `sink` span per traced record.

    The batch span links (up to 128 of) its records' traces; each record's own span is a child
    of the span that produced the record, covers the batch and links back to it, so an event's
    trace ends at the transaction that wrote its row. Returns the offsets committed.
    """
    traced = batch.traced
    before = dict(sink.stats.by_table)
    links = []
    for _, headers in traced[:_MAX_BATCH_LINKS]:
        parent = telemetry.parse_traceparent(telemetry.header_value(headers, telemetry.TRACEPARENT))
        if parent is not None:
            links.append(Link(parent.span_context()))
    started_ns = time.time_ns()
    with telemetry.stage_span(
        "sink.batch",
        kind=SpanKind.INTERNAL,
        links=links,
        attributes={"qmsflow.records": batch.pending},
    ) as span:
        committed = sink.write(batch)
    ended_ns = time.time_ns()
    for table, rows in sink.stats.by_table.items():
        if rows > before.get(table, 0):
            telemetry.SINK_ROWS.labels(table).inc(rows - before.get(table, 0))
    batch_link = [Link(span.get_span_context())]
    for topic, headers in traced:
        telemetry.record_span(
            "sink",
            headers,
            start_time_ns=started_ns,
            end_time_ns=ended_ns,
            links=batch_link,
            attributes={"qmsflow.stage": "sink", "messaging.source": topic},
        )
    return committed


def _report_lag(consumer: Consumer, group: str) -> None:
    """Set `qmsflow_consumer_lag` per assigned partition from the cached high watermarks."""
    try:
        positions = consumer.position(consumer.assignment())
    except KafkaException:  # assignment changing under us; the next sample is correct again
        return
    for tp in positions:
        low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high < 0:
            continue  # nothing fetched from this partition yet
        position = tp.offset if tp.offset >= 0 else low
        telemetry.record_lag(group, tp.topic, tp.partition, high - position)


def _commit(consumer: Consumer, offsets: Mapping[tuple[str, int], int]) -> None:
    if offsets:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True
        )


def _is_error(message: Message) -> bool:
    error = message.error()
    if error is None:
        return False
    if error.code() == KafkaError._PARTITION_EOF:
        return True
    log.error("consume error: %s", error)
    return True


def _stop_on_signals(stop: Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (tests run the sink in a thread)
            return
