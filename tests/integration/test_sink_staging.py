"""Staged writes: the batch narrowed in Python as the INSERT's DISTINCT ON would narrow it.

Staging tables are made once per session, and made again when the transaction that made them
rolled back.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.postgres_sink.rows import BINDINGS, Upsert
from connectors.postgres_sink.sink import PostgresSink
from tests.integration.test_sink_poison import (
    BY_TOPIC,
    CODEC,
    EVENT_SUBJECT,
    EVENTS,
    count_in,
    protocol_trace,
)
from tests.unit.analytics.events import canonical_event
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)

#: per upserted table: the columns its rule reads, SQL types and a generator of random values
RULE_COLUMNS: dict[str, tuple[tuple[str, str, Callable[[random.Random], Any]], ...]] = {
    "qms.incident": (
        ("revision", "integer", lambda rng: rng.randint(1, 3)),
        ("status", "text", lambda rng: rng.choice(["open", "closed"])),
    ),
    "qms.golden_record": (),
    "qms.golden_record_history": (("valid_to", "timestamptz", lambda rng: rng.choice([None, T0])),),
}


def upserts() -> dict[str, Upsert]:
    return {w.table: w.upsert for b in BINDINGS for w in b.writes if w.upsert is not None}


@pytest.fixture
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    from connectors.postgres_sink.migrations import migrate

    migrate(postgres_dsn, echo=lambda _line: None)
    with psycopg.connect(postgres_dsn) as connection:
        yield connection


class TestPythonNarrowingAgreesWithDistinctOn:
    def test_every_upsert_rule_is_covered_here(self) -> None:
        """A new upserted table must say here how to draw rows for its rule."""
        assert set(upserts()) == set(RULE_COLUMNS)

    @pytest.mark.parametrize("table", sorted(RULE_COLUMNS))
    def test_rank_keeps_the_row_the_order_by_keeps(
        self, conn: psycopg.Connection[Any], table: str
    ) -> None:
        """Random views of a few keys: Postgres's DISTINCT ON and `Upsert.rank` keep the same."""
        upsert = upserts()[table]
        columns = RULE_COLUMNS[table]
        rng = random.Random(table)
        offsets = itertools.count()
        rows = []
        for n in range(400):
            values = {name: draw(rng) for name, _type, draw in columns}
            # distinct offsets: every rule ends with kafka_offset, so no two rows tie
            rows.append({"k": n % 23, "n": n, **values, "kafka_offset": next(offsets) * 7 % 401})
        names = ["k", "n", *(name for name, _t, _d in columns), "kafka_offset"]
        types = ["integer", "integer", *(t for _n, t, _d in columns), "bigint"]
        placeholders = ", ".join("(" + ", ".join(f"%s::{t}" for t in types) + ")" for _ in rows)
        order = ", ".join(upsert.newest_first).replace(f"{table}.", "")
        kept_by_sql = dict(
            conn.execute(
                f"SELECT DISTINCT ON (k) k, n FROM (VALUES {placeholders}) AS v({', '.join(names)})"
                f" ORDER BY k, {order}",
                [row[name] for row in rows for name in names],
            ).fetchall()
        )
        kept_by_rank: dict[int, tuple[Any, int]] = {}
        for row in rows:
            held = kept_by_rank.get(row["k"])
            if held is None or upsert.rank(row) < held[0]:
                kept_by_rank[row["k"]] = (upsert.rank(row), row["n"])
        assert {k: n for k, (_rank, n) in kept_by_rank.items()} == kept_by_sql


def incident_value(key: str, revision: int, status: str, members: int) -> bytes:
    record = records.incident(key, members=records.event_ids(members, key), status=status)
    record["revision"] = revision
    subject = BY_TOPIC["quality.incidents.v1"].subject
    return CODEC.encode(subject, record)


class TestStagingTables:
    def test_views_of_one_incident_in_one_batch_store_the_newest(
        self, conn: psycopg.Connection[Any], topic_prefix: str
    ) -> None:
        """Out of order in one batch: the highest revision, the closing view at its revision."""
        topic = f"{topic_prefix}quality.incidents.v1"
        key = f"lot:{topic_prefix}"
        sink = PostgresSink(
            conn, CODEC, consumer_group=f"{topic_prefix}sink", topic_prefix=topic_prefix
        )
        views = [(2, "open", 3), (3, "closed", 5), (1, "open", 2), (3, "open", 5), (2, "open", 4)]
        for offset, (revision, status, members) in enumerate(views):
            sink.add(topic, 0, offset, key.encode(), incident_value(key, revision, status, members))
        sink.flush()
        stored = conn.execute(
            "SELECT revision, status, kafka_offset FROM qms.incident WHERE kafka_topic = %s",
            (topic,),
        ).fetchall()
        members = conn.execute(
            "SELECT count(*), min(kafka_offset) FROM qms.incident_member WHERE kafka_topic = %s",
            (topic,),
        ).fetchone()
        conn.commit()
        assert stored == [(3, "closed", 1)]
        # members are insert-only: each under the first view that listed it
        assert members == (5, 0)

    def test_staging_tables_are_made_once_per_session(
        self, conn: psycopg.Connection[Any], topic_prefix: str, tmp_path: Path
    ) -> None:
        """`prepare` makes them; a batch then sends no CREATE, only COPY and INSERT."""
        topic = f"{topic_prefix}quality.incidents.v1"
        sink = PostgresSink(
            conn, CODEC, consumer_group=f"{topic_prefix}sink", topic_prefix=topic_prefix
        )
        sink.prepare()
        for offset in range(2):
            key = f"lot:{topic_prefix}{offset}"
            sink.add(topic, 0, offset, key.encode(), incident_value(key, 1, "open", 2))
            statements = protocol_trace(conn, tmp_path / f"{offset}.trace", sink.flush)
            assert count_in(statements, "CREATE TEMP TABLE") == 0
            assert count_in(statements, "COPY sink_staging_qms_incident (") == 1
            assert count_in(statements, "INSERT INTO qms.incident (") == 1
        assert sink.stats.by_table["qms.incident"] == 2

    def test_a_rolled_back_create_is_made_again(
        self, conn: psycopg.Connection[Any], topic_prefix: str, tmp_path: Path
    ) -> None:
        """The straight attempt makes the incident's staging table, then meets a stored event.

        Its rollback takes the CREATE with it: the staged rewrite must make the table again
        (else 42P01, a fatal error), and the batch after it must not.
        """
        events = f"{topic_prefix}{EVENTS}"
        incidents = f"{topic_prefix}quality.incidents.v1"
        group = f"{topic_prefix}sink"
        (event_id,) = records.event_ids(1, f"{topic_prefix}{uuid.uuid4()}")
        value = CODEC.encode(EVENT_SUBJECT, canonical_event(event_id))
        first = PostgresSink(conn, CODEC, consumer_group=group, topic_prefix=topic_prefix)
        first.add(events, 0, 0, b"k", value)
        first.flush()

        sink = PostgresSink(conn, CODEC, consumer_group=group, topic_prefix=topic_prefix)
        key = f"lot:{topic_prefix}"
        sink.add(incidents, 0, 0, key.encode(), incident_value(key, 1, "open", 2))
        sink.add(events, 1, 0, b"k", value)  # a redelivery: the straight COPY fails
        statements = protocol_trace(conn, tmp_path / "replay.trace", sink.flush)
        assert count_in(statements, ' "ROLLBACK"') == 1
        assert (
            count_in(statements, "CREATE TEMP TABLE IF NOT EXISTS sink_staging_qms_incident ") == 2
        )
        assert sink.stats.by_table["qms.incident"] == 1

        key = f"lot:{topic_prefix}next"
        sink.add(incidents, 0, 1, key.encode(), incident_value(key, 1, "open", 2))
        statements = protocol_trace(conn, tmp_path / "next.trace", sink.flush)
        assert (
            count_in(statements, "CREATE TEMP TABLE IF NOT EXISTS sink_staging_qms_incident ") == 0
        )
        assert sink.stats.by_table["qms.incident"] == 2
