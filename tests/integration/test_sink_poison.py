"""Issue 15, point 3: Postgres rejects a record, not its batch.

A record Avro accepts but Postgres refuses (a NUL in text, a lot_id too long for its btree index)
becomes one `sink-rejected` dead letter; the rest of its batch commits with the offsets, and the
sink keeps consuming. A clean batch still costs one COPY per table (and one INSERT per staged
table), no savepoint; a batch that meets a stored key is written again, staged.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import string
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer
from psycopg import errors

from connectors.postgres_sink.migrations import migrate
from connectors.postgres_sink.rows import BINDINGS, Row, TableBinding
from connectors.postgres_sink.sink import PostgresSink
from qmsflow.audit import link_hash
from qmsflow.contracts import AvroCodec, FileSchemaRegistry
from qmsflow.quality.dead_letter import dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import PROJECT_ROOT, Settings
from tests.integration.test_sink_stages import SinkThread, produce
from tests.integration.test_sink_stages import settings as settings
from tests.integration.test_sink_stages import sink as sink
from tests.unit.analytics.events import canonical_event
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

CODEC = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
EVENTS = "quality.events.v1"
EVENT_SUBJECT = "quality.events.v1-value"
BY_TOPIC = {b.topic: b for b in BINDINGS}


def long_lot_id(seed: str) -> str:
    """6,000 random letters: incompressible enough to break the btree's 2,704-byte row limit."""
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=6000))


def nul_event(event_id: str) -> dict[str, Any]:
    """Valid Avro, but Postgres text cannot hold its NUL (psycopg refuses to send it)."""
    return canonical_event(event_id, source_record_id="NCR-\x00-1041")


def long_lot_event(event_id: str) -> dict[str, Any]:
    """Valid Avro, but its lot_id breaks the quality_event_lot index (SQLSTATE 54000)."""
    return canonical_event(event_id, lot_id=long_lot_id(event_id))


def stored_event_ids(dsn: str, topic: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            str(event_id)
            for (event_id,) in conn.execute(
                "SELECT event_id FROM qms.quality_event WHERE kafka_topic = %s", (topic,)
            )
        ]


def stored_offsets(dsn: str, group: str) -> dict[tuple[str, int], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT topic, partition, next_offset FROM qms.sink_offsets WHERE consumer_group = %s",
            (group,),
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


def audit_rows(dsn: str, topic: str) -> list[dict[str, Any]]:
    """The audit rows of one topic, each with the row_hash of the chain row before it."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT a.*, b.row_hash AS before_hash FROM audit.record_change a"
            " LEFT JOIN audit.record_change b ON b.seq = a.seq - 1"
            " WHERE a.kafka_topic = %s ORDER BY a.seq",
            (topic,),
        ).fetchall()


def assert_chained(rows: list[dict[str, Any]]) -> None:
    """Every row links to the row before it and its content yields its hash (no gap, no edit)."""
    for row in rows:
        assert row["prev_hash"] == row["before_hash"], f"seq {row['seq']}: link broken"
        hashed = {k: v for k, v in row.items() if k not in ("prev_hash", "row_hash", "before_hash")}
        assert link_hash(row["prev_hash"], hashed) == row["row_hash"], f"seq {row['seq']}"


@pytest.fixture
def migrated_dsn(postgres_dsn: str) -> str:
    migrate(postgres_dsn, echo=lambda _line: None)
    return postgres_dsn


@pytest.fixture
def conn(migrated_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_dsn) as connection:
        yield connection


class LetterBox:
    """A dead-letter publisher that keeps what it is given (the broker's part is tested below)."""

    def __init__(self) -> None:
        self.letters: list[dict[str, Any]] = []

    def __call__(self, letters: list[dict[str, Any]]) -> None:
        """Keep the letters, as an acknowledging broker would."""
        self.letters.extend(letters)


class TestRejectedRecordsInOneBatch:
    def test_bad_records_become_dead_letters_and_the_rest_commits(
        self, conn: psycopg.Connection[Any], migrated_dsn: str, topic_prefix: str
    ) -> None:
        """Valid records around a NUL and a 6,000-character lot_id: one batch, one transaction."""
        topic = f"{topic_prefix}{EVENTS}"
        group = f"{topic_prefix}sink"
        box = LetterBox()
        postgres_sink = PostgresSink(
            conn, CODEC, consumer_group=group, topic_prefix=topic_prefix, dead_letters=box
        )
        ids = records.event_ids(9, topic_prefix)
        bad = {2: nul_event(ids[2]), 6: long_lot_event(ids[6])}
        for offset, event_id in enumerate(ids):
            record = bad.get(offset) or canonical_event(event_id)
            postgres_sink.add(topic, 0, offset, b"line", CODEC.encode(EVENT_SUBJECT, record))
        postgres_sink.add(
            topic, 1, 40, b"other", CODEC.encode(EVENT_SUBJECT, canonical_event(ids[0]))
        )

        committed = postgres_sink.flush()

        good = [i for n, i in enumerate(ids) if n not in bad]
        assert sorted(stored_event_ids(migrated_dsn, topic)) == sorted(good)
        assert committed == {(topic, 0): 9, (topic, 1): 41}
        assert stored_offsets(migrated_dsn, group) == committed
        by_offset = {letter["offset"]: letter for letter in box.letters}
        assert sorted(by_offset) == [2, 6]
        for offset, letter in by_offset.items():
            assert letter["reason_code"] == "sink-rejected"
            assert letter["stage"] == "sink"
            assert (letter["topic"], letter["partition"]) == (topic, 0)
            assert f"(at {topic}[0]@{offset})" in letter["reason"]
        assert "cannot contain NUL" in by_offset[2]["reason"]
        assert "SQLSTATE 54000" in by_offset[6]["reason"]
        assert "index row size" in by_offset[6]["reason"]
        assert postgres_sink.stats.records_rejected == 2
        assert postgres_sink.stats.dead_letters == 2
        # the audit trail chains the kept records only, once each (the redelivery at offset 40
        # of ids[0] is audited under its first delivery), with no gap where a savepoint was
        # rolled back
        audited = audit_rows(migrated_dsn, topic)
        assert sorted(r["record_id"] for r in audited) == sorted(good)
        assert_chained(audited)

    def test_a_rejected_record_loses_the_rows_of_all_its_tables(
        self, conn: psycopg.Connection[Any], topic_prefix: str
    ) -> None:
        """An incident whose own row is refused leaves no member rows behind: all or none."""
        topic = f"{topic_prefix}quality.incidents.v1"
        box = LetterBox()
        postgres_sink = PostgresSink(
            conn,
            CODEC,
            consumer_group=f"{topic_prefix}sink",
            topic_prefix=topic_prefix,
            dead_letters=box,
        )
        subject = BY_TOPIC["quality.incidents.v1"].subject
        keys = [f"lot:{topic_prefix}{n}" for n in range(3)]
        for offset, key in enumerate(keys):
            incident = records.incident(key, members=records.event_ids(3, key))
            if offset == 1:
                incident["product_line"] = "sterile\x00injectables"
            postgres_sink.add(topic, 0, offset, key.encode(), CODEC.encode(subject, incident))

        postgres_sink.flush()

        assert [letter["offset"] for letter in box.letters] == [1]
        incidents = conn.execute(
            "SELECT root_cause_key, member_count FROM qms.incident WHERE environment = %s",
            (topic_prefix,),
        ).fetchall()
        assert sorted(incidents) == [(keys[0], 3), (keys[2], 3)]
        members = conn.execute(
            "SELECT kafka_offset, count(*) FROM qms.incident_member WHERE environment = %s"
            " GROUP BY kafka_offset",
            (topic_prefix,),
        ).fetchall()
        assert sorted(members) == [(0, 3), (2, 3)]

    def test_a_rejected_dead_letter_is_logged_not_relettered(
        self, conn: psycopg.Connection[Any], topic_prefix: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A dead letter Postgres refuses would be refused again as a dead letter: log, move on."""
        dlq = BY_TOPIC["quality.dlq.v1"]
        (write,) = dlq.writes
        reason = write.columns.index("reason")

        def poisoned(letter: Any, at: Coordinates) -> list[Row]:
            # the real mapping sanitises text; this one lets a NUL through, as a bug would
            rows = write.to_rows(letter, at)
            return [(*row[:reason], "refused\x00", *row[reason + 1 :]) for row in rows]

        binding = TableBinding(
            dlq.topic, dlq.subject, (dataclasses.replace(write, to_rows=poisoned),)
        )
        box = LetterBox()
        postgres_sink = PostgresSink(
            conn,
            CODEC,
            consumer_group=f"{topic_prefix}sink",
            topic_prefix=topic_prefix,
            bindings=[binding],
            dead_letters=box,
        )
        source = Coordinates(f"{topic_prefix}{EVENTS}", 0, 5)
        letter = dead_letter(
            ValueError("bad"),
            stage="sink",
            coordinates=source,
            key=None,
            value=b"x",
            headers=[],
            timestamp_ms=None,
            failed_at=records.T0,
        )
        topic = f"{topic_prefix}quality.dlq.v1"
        postgres_sink.add(topic, 0, 3, None, CODEC.encode(DEAD_LETTER_SUBJECT, dict(letter)))

        with caplog.at_level(logging.ERROR, logger="connectors.postgres_sink.sink"):
            committed = postgres_sink.flush()

        assert box.letters == []
        assert committed == {(topic, 0): 4}
        assert postgres_sink.stats.records_rejected == 1
        assert postgres_sink.stats.dead_letters == 0
        (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert f"{topic}[0]@3" in logged.getMessage()
        assert "cannot contain NUL" in logged.getMessage()


def protocol_trace(conn: psycopg.Connection[Any], path: Path, flush: Any) -> list[str]:
    """The statements `flush()` sent, from libpq's own protocol trace."""
    with path.open("w") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            flush()
        finally:
            conn.pgconn.untrace()
    sent = [
        line for line in path.read_text(errors="replace").splitlines() if line.startswith("F\t")
    ]
    return [line for line in sent if "\tQuery\t" in line or "\tParse\t" in line]


def count_in(statements: list[str], fragment: str) -> int:
    """How many of the statements hold `fragment`."""
    return sum(fragment in line for line in statements)


class TestCleanBatchCost:
    def test_clean_batch_is_one_copy_per_table_and_no_savepoint(
        self, conn: psycopg.Connection[Any], topic_prefix: str, tmp_path: Path
    ) -> None:
        """The happy path pays nothing for rejection: counted in libpq's own protocol trace.

        New event ids are copied straight into qms.quality_event and their audit rows appended
        without a look-up; the upserted incident and its recurring members go through staging.
        """
        incidents = f"{topic_prefix}quality.incidents.v1"
        events = f"{topic_prefix}{EVENTS}"
        postgres_sink = PostgresSink(
            conn,
            CODEC,
            consumer_group=f"{topic_prefix}sink",
            topic_prefix=topic_prefix,
            dead_letters=LetterBox(),
        )
        for offset, event_id in enumerate(records.event_ids(50, topic_prefix)):
            postgres_sink.add(
                events, 0, offset, b"k", CODEC.encode(EVENT_SUBJECT, canonical_event(event_id))
            )
        key = f"lot:{topic_prefix}"
        incident = records.incident(key, members=records.event_ids(3, key))
        subject = BY_TOPIC["quality.incidents.v1"].subject
        postgres_sink.add(incidents, 0, 0, key.encode(), CODEC.encode(subject, incident))

        statements = protocol_trace(conn, tmp_path / "libpq.trace", postgres_sink.flush)

        def count(fragment: str) -> int:
            return count_in(statements, fragment)

        assert count("COPY qms.quality_event (") == 1
        assert count("INSERT INTO qms.quality_event (") == 0
        assert count("sink_staging_qms_quality_event") == 0
        for table in ("qms.incident", "qms.incident_member"):
            staging = "sink_staging_" + table.replace(".", "_")
            assert count(f"COPY {staging} (") == 1, table
            assert count(f"INSERT INTO {table} (") == 1, table
        assert count("COPY audit.record_change") == 1
        assert count("SELECT record_id FROM audit.record_change") == 0
        assert count("SAVEPOINT") == 0
        assert count("DELETE FROM") == 0
        assert count(' "BEGIN"') == 1 and count(' "COMMIT"') == 1
        assert postgres_sink.stats.records_rejected == 0
        assert postgres_sink.stats.by_table["qms.quality_event"] == 50


class TestRedeliveredKeys:
    def test_batch_meeting_a_stored_key_is_written_again_staged(
        self, conn: psycopg.Connection[Any], migrated_dsn: str, topic_prefix: str, tmp_path: Path
    ) -> None:
        """A redelivered event fails the straight COPY; the batch is rewritten staged, once each.

        The stored row and its audit row keep the first delivery; the new events of the same
        batch are stored and audited; once a staged batch meets no stored key, the next one is
        copied straight again.
        """
        topic = f"{topic_prefix}{EVENTS}"
        group = f"{topic_prefix}sink"
        ids = records.event_ids(6, topic_prefix)

        def encoded(event_id: str) -> bytes:
            return CODEC.encode(EVENT_SUBJECT, canonical_event(event_id))

        first = PostgresSink(conn, CODEC, consumer_group=group, topic_prefix=topic_prefix)
        first.add(topic, 0, 0, b"k", encoded(ids[0]))
        first.flush()
        # a new sink (a replay after a crash, or a republished event on another partition)
        postgres_sink = PostgresSink(conn, CODEC, consumer_group=group, topic_prefix=topic_prefix)
        postgres_sink.add(topic, 1, 7, b"k", encoded(ids[0]))
        postgres_sink.add(topic, 1, 8, b"k", encoded(ids[1]))
        postgres_sink.add(topic, 1, 9, b"k", encoded(ids[2]))

        statements = protocol_trace(conn, tmp_path / "replay.trace", postgres_sink.flush)

        assert count_in(statements, "COPY qms.quality_event (") == 1
        assert count_in(statements, "INSERT INTO qms.quality_event (") == 1
        assert count_in(statements, ' "ROLLBACK"') == 1
        assert count_in(statements, ' "COMMIT"') == 1
        stored = conn.execute(
            "SELECT event_id::text, kafka_partition, kafka_offset FROM qms.quality_event"
            " WHERE kafka_topic = %s ORDER BY kafka_offset",
            (topic,),
        ).fetchall()
        conn.commit()
        assert sorted(stored) == sorted([(ids[0], 0, 0), (ids[1], 1, 8), (ids[2], 1, 9)])
        assert postgres_sink.stats.by_table["qms.quality_event"] == 2
        assert stored_offsets(migrated_dsn, group) == {(topic, 0): 1, (topic, 1): 10}
        audited = audit_rows(migrated_dsn, topic)
        assert sorted((r["record_id"], r["kafka_offset"]) for r in audited) == sorted(
            [(ids[0], 0), (ids[1], 8), (ids[2], 9)]
        )
        assert_chained(audited)

        # a replay comes in runs: the next batch is staged; one that meets no stored key ends it
        postgres_sink.add(topic, 1, 10, b"k", encoded(ids[3]))
        statements = protocol_trace(conn, tmp_path / "next.trace", postgres_sink.flush)
        assert count_in(statements, "INSERT INTO qms.quality_event (") == 1
        assert count_in(statements, ' "ROLLBACK"') == 0

        postgres_sink.add(topic, 1, 11, b"k", encoded(ids[4]))
        statements = protocol_trace(conn, tmp_path / "after.trace", postgres_sink.flush)
        assert count_in(statements, "COPY qms.quality_event (") == 1
        assert count_in(statements, "INSERT INTO qms.quality_event (") == 0
        assert count_in(statements, ' "ROLLBACK"') == 0

    def test_a_key_twice_in_one_batch_is_stored_once_under_its_first_delivery(
        self, conn: psycopg.Connection[Any], topic_prefix: str
    ) -> None:
        """A republished event in the same batch: the straight COPY keeps the lowest offset."""
        topic = f"{topic_prefix}{EVENTS}"
        (event_id,) = records.event_ids(1, topic_prefix)
        value = CODEC.encode(EVENT_SUBJECT, canonical_event(event_id))
        postgres_sink = PostgresSink(
            conn, CODEC, consumer_group=f"{topic_prefix}sink", topic_prefix=topic_prefix
        )
        postgres_sink.add(topic, 0, 5, b"k", value)
        postgres_sink.add(topic, 1, 2, b"k", value)

        postgres_sink.flush()

        stored = conn.execute(
            "SELECT kafka_partition, kafka_offset FROM qms.quality_event WHERE kafka_topic = %s",
            (topic,),
        ).fetchall()
        conn.commit()
        assert stored == [(1, 2)]
        assert postgres_sink.stats.by_table["qms.quality_event"] == 1


class TestRunningSink:
    def test_poison_records_are_dead_lettered_and_the_sink_keeps_consuming(
        self, settings: Settings, sink: SinkThread
    ) -> None:
        """Through Kafka: valid records around two poison ones, then more after them."""
        topic = settings.topic(EVENTS)
        ids = records.event_ids(12, settings.topic_prefix)
        bad = {3: nul_event(ids[3]), 5: long_lot_event(ids[5])}
        first = [(EVENTS, b"line", bad.get(n) or canonical_event(i)) for n, i in enumerate(ids[:8])]
        produce(settings, first)  # one key: one partition, offsets 0..7 in this order
        sink.wait("the first records and their dead letters in Postgres")
        sink.assert_alive()
        good = [i for n, i in enumerate(ids[:8]) if n not in bad]
        assert sorted(stored_event_ids(settings.dsn, topic)) == sorted(good)

        produce(settings, [(EVENTS, b"line", canonical_event(i)) for i in ids[8:]])
        sink.wait("the records sent after the poison ones")
        sink.assert_alive()
        good += ids[8:]
        stored = stored_event_ids(settings.dsn, topic)
        assert sorted(stored) == sorted(good), "every valid record exactly once"

        letters = dead_letters_on_topic(settings)
        assert sorted(letter["offset"] for letter in letters) == [3, 5]
        (partition,) = {letter["partition"] for letter in letters}
        for letter in letters:
            assert letter["reason_code"] == "sink-rejected"
            assert letter["stage"] == "sink"
            assert letter["topic"] == topic
            assert f"(at {topic}[{partition}]@{letter['offset']})" in letter["reason"]
        group = settings.topic(f"{settings.app_id}-sink")
        assert stored_offsets(settings.dsn, group)[(topic, partition)] == len(ids)
        with psycopg.connect(settings.dsn) as conn:
            stored_letters = conn.execute(
                "SELECT source_offset, reason_code FROM qms.dead_letter WHERE source_topic = %s",
                (topic,),
            ).fetchall()
        assert sorted(stored_letters) == [(3, "sink-rejected"), (5, "sink-rejected")]


def dead_letters_on_topic(settings: Settings) -> list[dict[str, Any]]:
    """Every record on this environment's dead-letter topic, decoded."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.topic_prefix}dlq-reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    letters: list[dict[str, Any]] = []
    try:
        consumer.subscribe([settings.topic("quality.dlq.v1")])
        idle = 0
        while idle < 3:
            messages = consumer.consume(100, 2.0)
            idle = 0 if messages else idle + 1
            for message in messages:
                if message.error() is None and message.value() is not None:
                    value = message.value()
                    assert value is not None
                    letters.append(CODEC.decode(value, DEAD_LETTER_SUBJECT).record)
    finally:
        consumer.close()
    return letters


class TestBatchLevelErrors:
    @pytest.mark.parametrize("error", [errors.DeadlockDetected, errors.DiskFull])
    def test_transient_refusal_retries_the_batch(
        self,
        settings: Settings,
        sink: SinkThread,
        monkeypatch: pytest.MonkeyPatch,
        error: type[psycopg.Error],
    ) -> None:
        """A deadlock (40P01) or a full disk (53100) is no record's fault: the batch is retried."""
        write_tables = PostgresSink._write_tables
        refused: list[int] = []

        def refuse_once(self: PostgresSink, *args: Any, **kwargs: Any) -> dict[str, int]:
            if not refused:
                refused.append(1)
                raise error(f"injected {error.__name__}")
            return write_tables(self, *args, **kwargs)

        monkeypatch.setattr(PostgresSink, "_write_tables", refuse_once)
        ids = records.event_ids(20, settings.topic_prefix)
        produce(settings, [(EVENTS, b"line", canonical_event(i)) for i in ids])
        sink.wait("every record after the refused batch")
        sink.assert_alive()
        assert refused == [1]
        assert sorted(stored_event_ids(settings.dsn, settings.topic(EVENTS))) == sorted(ids)
        assert dead_letters_on_topic(settings) == []

    def test_permission_error_stops_the_sink_with_its_message(
        self, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """42501 is a configuration error: the sink exits naming it and commits nothing."""

        def refuse(self: PostgresSink, *args: Any, **kwargs: Any) -> dict[str, int]:
            raise errors.InsufficientPrivilege("permission denied for table quality_event")

        monkeypatch.setattr(PostgresSink, "_write_tables", refuse)
        running = SinkThread(settings)
        running.thread.start()
        try:
            produce(
                settings,
                [
                    (
                        EVENTS,
                        b"line",
                        canonical_event(records.event_ids(1, settings.topic_prefix)[0]),
                    )
                ],
            )
            running.thread.join(60)
            assert not running.thread.is_alive(), "the sink kept running"
        finally:
            running.stop.set()
            running.thread.join(60)
        assert isinstance(running.error, errors.InsufficientPrivilege)
        group = settings.topic(f"{settings.app_id}-sink")
        stored = stored_offsets(settings.dsn, group)
        assert not [t for t, _ in stored if t == settings.topic(EVENTS)], stored
