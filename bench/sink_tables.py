"""The sink alone on the upserted current-state tables, each against a COPY of the same rows.

Per table group, in a repetition of bench.run after its end-to-end step (so the records are the
real worker's and loader's output, encoded as in production):
  1. a scratch topic prefix is created and a sink started on it, alone, with a group of its own;
     once the group is stable (start-up and join are not counted),
  2. the group's records of the repetition's topics (quality.incidents.v1 for qms.incident and
     its members; md.<entity>.v1 for qms.golden_record) are copied, bytes, keys, headers and
     partitions unchanged, to the scratch topics, and the clock runs until the sink's offsets,
     committed with its rows, cover them;
  3. (c) the same records decoded and mapped by the sink's own bindings, narrowed to one row
     per key as the sink's upserts keep (untimed), and one COPY of those rows into scratch
     tables LIKE the real ones (primary keys and indexes included), timed alone.
Rates are rows per second, the rows being those a clean table holds afterwards (one per key);
the records/row ratio (several views of one incident, a republished golden record) is in the
JSON, with the rows actually stored under the scratch prefix: both tables are keyed by
environment (migrations 0011 and 0014), so the copied records never meet the rows other
environments sharing the database hold for the same incident or entity. The scratch topics are
deleted afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from bench.results_model import Measurement, Run
from connectors.postgres_sink.rows import BINDINGS, Row, TableWrite
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.kafka.admin import create_topics
from qmsflow.quality.event import Coordinates
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment

_APP_ID = "bench-sink-tables"
_POLL = 0.005  # seconds between completion checks (one indexed query each)


@dataclass(frozen=True)
class TableGroup:
    """Topics whose records the sink upserts into `tables` (the first is the one rated)."""

    name: str
    sink: Measurement
    copy: Measurement
    topics: tuple[str, ...]

    def writes(self) -> list[TableWrite]:
        """The table writes of the group's topics, in binding order, one per table."""
        found: dict[str, TableWrite] = {}
        for binding in BINDINGS:
            if binding.topic in self.topics:
                for write in binding.writes:
                    found.setdefault(write.table, write)
        return list(found.values())


GROUPS: tuple[TableGroup, ...] = (
    TableGroup("qms.incident", "sink_incident", "copy_incident", ("quality.incidents.v1",)),
    TableGroup(
        "qms.golden_record",
        "sink_golden_record",
        "copy_golden_record",
        tuple(
            b.topic
            for b in BINDINGS
            if b.topic.startswith("md.")
            and b.topic != "md.history.v1"
            and b.topic != "md.conflicts.v1"
        ),
    ),
)


@dataclass(frozen=True)
class RawRecord:
    """A Kafka record as bytes, to be copied unchanged."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: Any  # as confluent-kafka gives them, given back to it unchanged
    timestamp: int | None = None  # ms since the epoch, as the broker stored it (None: none)


def read_topic(settings: Settings, topic: str) -> list[RawRecord]:
    """Every record on a physical topic, from the beginning to its end now."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-raw"})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        records: list[RawRecord] = []
        want = sum(ends.values())  # an upper bound: a compacted topic may hold fewer
        deadline = time.monotonic() + 60
        done: set[int] = set()
        while len(done) < len(ends) and len(records) < want and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    continue
                p, offset = m.partition() or 0, m.offset() or 0
                kind, stamp = m.timestamp()
                at = None if kind == TIMESTAMP_NOT_AVAILABLE else stamp
                records.append(RawRecord(p, m.key(), m.value(), m.headers(), at))
                if offset + 1 >= ends[p]:
                    done.add(p)
        return records
    finally:
        consumer.close()


def _group_stable(admin: AdminClient, group: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            described = admin.describe_consumer_groups([group])[group].result(10)
            if str(described.state).endswith("STABLE") and any(
                m.assignment.topic_partitions for m in described.members
            ):
                return
        except Exception:  # not known to the broker yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{group}: the sink did not join within {timeout:.0f} s")


def _committed(conn: psycopg.Connection[Any], group: str, topics: Sequence[str]) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(next_offset), 0) FROM qms.sink_offsets"
        " WHERE consumer_group = %s AND topic = ANY(%s)",
        (group, list(topics)),
    ).fetchone()
    return int(row[0]) if row else 0


def _end_offsets(settings: Settings, topics: Sequence[str]) -> int:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-raw"})
    try:
        total = 0
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            for p in meta.partitions:
                total += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return total
    finally:
        consumer.close()


def mapped_rows(
    settings: Settings, group: TableGroup, records: dict[str, list[RawRecord]]
) -> dict[str, list[Row]]:
    """Each table's rows from the records, decoded and mapped by the sink's own bindings.

    Coordinates are those the records get on the scratch topics (fresh, so offsets count from
    0 per partition). A tombstone maps through the binding's tombstone rows, as in the sink.
    """
    codec = AvroCodec(open_registry(settings))
    bindings = {b.topic: b for b in BINDINGS if b.topic in group.topics}
    rows: dict[str, list[Row]] = {w.table: [] for w in group.writes()}
    for logical, raws in records.items():
        binding = bindings[logical]
        offsets: dict[int, int] = {}
        for r in raws:
            offset = offsets.get(r.partition, 0)
            offsets[r.partition] = offset + 1
            at = Coordinates(settings.topic(logical), r.partition, offset)
            lifted = binding.fields_from_headers(r.headers or [])
            for write in binding.writes:
                if r.value is None:
                    if write.on_tombstone is not None:
                        key = (r.key or b"").decode("utf-8")
                        rows[write.table] += write.on_tombstone(key, lifted, at)
                    continue
                record = codec.decode(r.value, binding.subject).record
                rows[write.table] += write.to_rows({**record, **lifted}, at)
    return rows


def _final(cur: psycopg.Cursor[Any], write: TableWrite, rows: list[Row], staging: str) -> bytes:
    """The rows a clean table holds after the sink's upserts: one per key, as the sink keeps."""
    columns = ", ".join(write.columns)
    key = ", ".join(write.key)
    keep_first = ", ".join(write.upsert.newest_first) if write.upsert else "kafka_offset"
    cur.execute(f"CREATE TEMP TABLE {staging} (LIKE {write.table} INCLUDING DEFAULTS)")
    with cur.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    query = (
        f"COPY (SELECT DISTINCT ON ({key}) {columns} FROM {staging}"
        f" ORDER BY {key}, {keep_first}) TO STDOUT"
    )
    with cur.copy(query) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def copy_rows(
    dsn: str, writes: Sequence[TableWrite], rows: dict[str, list[Row]]
) -> tuple[int, float]:
    """(c) one COPY per table of the final rows into scratch tables LIKE the real ones; timed.

    The reduction to one row per key (what the sink's upserts leave) is done first, untimed.
    Returns the rated (first) table's row count and the COPY's seconds.
    """
    suffix = uuid.uuid4().hex[:8]
    scratch = {w.table: f"public.bench_{w.table.split('.')[-1]}_{suffix}" for w in writes}
    data: dict[str, bytes] = {}
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            for w in writes:
                staging = f"bench_staging_{w.table.split('.')[-1]}_{suffix}"
                data[w.table] = _final(cur, w, rows[w.table], staging)
                cur.execute(f"CREATE TABLE {scratch[w.table]} (LIKE {w.table} INCLUDING ALL)")
        conn.commit()
        try:
            started = time.monotonic()
            with conn.transaction(), conn.cursor() as cur:
                for w in writes:
                    columns = ", ".join(w.columns)
                    with cur.copy(f"COPY {scratch[w.table]} ({columns}) FROM STDIN") as copy:
                        copy.write(data[w.table])
            seconds = time.monotonic() - started
        finally:
            for name in scratch.values():
                conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.commit()
    return data[writes[0].table].count(b"\n"), seconds


def _rows(dsn: str, table: str, topics: Sequence[str]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE kafka_topic = ANY(%s)", (list(topics),)
        ).fetchone()
    return int(row[0]) if row else 0


def settle_correlation(
    settings: Settings, env: dict[str, str], logs: Path, timeout: float
) -> float:
    """Run the worker until its group has committed the whole canonical topic; seconds taken.

    The end-to-end step stops the worker once the sink has every canonical row, which can be
    before the correlation agent has read them all: its incidents are what the incident table
    is measured on, so they must all be on their topic first.
    """
    topic = settings.topic("quality.events.v1")
    group = f"{settings.topic_prefix}{settings.app_id}"
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    want = _end_offsets(settings, [topic])
    processes = PipelineProcesses(settings, env, logs)
    started = time.monotonic()
    processes.start_worker()
    try:
        while time.monotonic() - started < timeout:
            processes.assert_alive()
            meta = admin.list_topics(topic, timeout=30).topics[topic]
            request = ConsumerGroupTopicPartitions(
                group, [TopicPartition(topic, p) for p in meta.partitions]
            )
            answer = admin.list_consumer_group_offsets([request])[group].result(10)
            done = sum(max(tp.offset, 0) for tp in answer.topic_partitions)
            if done >= want:
                break
            time.sleep(0.5)
    finally:
        processes.stop()
    return time.monotonic() - started


def sink_table(
    source: Settings, group: TableGroup, rep: int, timeout: float, logs: Path
) -> tuple[list[Run], dict[str, Any]]:
    """The sink alone on one table group, then (c) COPY of the rows it stored; two runs."""
    prefix = f"benchtab{uuid.uuid4().hex[:8]}."
    settings = source.model_copy(update={"topic_prefix": prefix})
    topics = [settings.topic(t) for t in group.topics]
    records = {t: read_topic(source, source.topic(t)) for t in group.topics}
    sent = sum(len(r) for r in records.values())
    if not sent:
        print(f"  {group.name}: no records on {', '.join(group.topics)}; not measured")
        return [], {"table": group.name, "records": 0, "rows": 0, "records_per_row": None}
    create_topics(settings, load_catalog(), echo=lambda _line: None)
    env = {
        **environment(settings, settings.bootstrap_servers, settings.dsn),
        "QMSFLOW_APP_ID": _APP_ID,
    }
    consumer_group = settings.topic(f"{_APP_ID}-sink")
    processes = PipelineProcesses(settings, env, logs)
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    processes.start_sink()
    try:
        _group_stable(admin, consumer_group, 60)
        time.sleep(1.0)  # on_assign positions the partitions from qms.sink_offsets
        want = 0
        # each partition's end offset, from the delivery reports: asking the broker for the
        # watermarks would time metadata round trips along with the sink
        ends: dict[tuple[str, int], int] = {}

        def delivered(error: Any, message: Any) -> None:
            if error is None:
                at = (message.topic(), message.partition())
                ends[at] = max(ends.get(at, 0), message.offset() + 1)

        with psycopg.connect(settings.dsn, autocommit=True) as conn:
            before = _committed(conn, consumer_group, topics)
            producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
            started = time.monotonic()
            for logical, raws in records.items():
                for r in raws:
                    while True:
                        try:
                            producer.produce(
                                settings.topic(logical),
                                key=r.key,
                                value=r.value,
                                headers=r.headers,
                                partition=r.partition,
                                on_delivery=delivered,
                            )
                            break
                        except BufferError:
                            producer.poll(0.05)
            if producer.flush(60) > 0:
                raise RuntimeError(f"{group.name}: records not acknowledged within 60 s")
            want = sum(ends.values())
            reached = before
            deadline = started + timeout
            while reached < want and time.monotonic() < deadline:
                processes.assert_alive()
                reached = _committed(conn, consumer_group, topics)
                if reached < want:
                    time.sleep(_POLL)
            ended = time.monotonic()
    finally:
        processes.stop()
        scratch = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
        for future in admin.delete_topics(scratch, operation_timeout=30).values():
            try:
                future.result()
            except Exception as error:  # a leftover topic must not lose the results
                print(f"  could not delete a topic: {error}")
    completed = reached >= want
    stored = _rows(settings.dsn, group.name, topics)
    mapped = mapped_rows(settings, group, records)
    rows, copy_seconds = copy_rows(settings.dsn, group.writes(), mapped)
    runs = [
        Run(group.sink, rep, rows, ended - started, None, completed),
        Run(group.copy, rep, rows, copy_seconds, None, True),
    ]
    info = {
        "table": group.name,
        "prefix": prefix,
        "records": sent,
        "rows": rows,
        "rows_stored_under_prefix": stored,
        "records_per_row": sent / rows if rows else None,
    }
    return runs, info
