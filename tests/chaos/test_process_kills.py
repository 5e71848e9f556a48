"""Scenarios 4 and 1: SIGKILL the sink between its COPY and its COMMIT; kill the worker often."""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.chaos.chaos_pipeline import (
    ChaosPipeline,
    DemoSource,
    scenario_settings,
    settle,
    stored_ids,
)
from tests.integration.pipeline import count_rows, wait_for

pytestmark = pytest.mark.integration

SINK_EVENTS = int(os.environ.get("CHAOS_SINK_KILL_EVENTS", "10000"))
SINK_KILLS = int(os.environ.get("CHAOS_SINK_KILLS", "3"))
#: the issue's size: 100,000 events, the worker SIGKILLed every few seconds while they flow
WORKER_EVENTS = int(os.environ.get("CHAOS_WORKER_KILL_EVENTS", "100000"))
WORKER_KILLS = int(os.environ.get("CHAOS_WORKER_KILLS", "10"))
#: seconds a restarted worker runs (after it has published again) before the next SIGKILL
WORKER_KILL_EVERY = float(os.environ.get("CHAOS_WORKER_KILL_EVERY", "5"))


class TestSinkKilledBetweenCopyAndCommit:
    def test_a_sink_killed_inside_its_transaction_commits_nothing_and_loses_nothing(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """The sink is held at its offsets UPSERT (after COPY and INSERT) by a row lock, killed.

        The lock is taken on this environment's `qms.sink_offsets` rows; the sink's transaction
        blocks on it with its rows already written (it holds a transaction id), and is killed
        there: none of those rows may become visible, and the restarted sink loads them.
        """
        started = time.monotonic()
        settings = scenario_settings(
            kafka_bootstrap, postgres_dsn, topic_prefix, sink_batch_size=500
        )
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), SINK_EVENTS)
        pipeline = ChaosPipeline(settings, tmp_path)
        events = settings.topic("quality.events.v1")
        group = settings.topic(f"{settings.app_id}-sink")
        held_rows: list[int] = []
        try:
            pipeline.start_worker()
            pipeline.start_sink()
            source.send(source.records)
            for kill in range(SINK_KILLS):
                target = (kill + 1) * SINK_EVENTS // (SINK_KILLS + 2)

                def loaded(target: int = target) -> bool:
                    return count_rows(postgres_dsn, "qms.quality_event", events) >= target

                wait_for(
                    loaded, timeout=300, what="rows before a kill", alive=pipeline.assert_alive
                )
                with psycopg.connect(postgres_dsn) as lock:
                    lock.execute(
                        "SELECT 1 FROM qms.sink_offsets WHERE consumer_group = %s FOR UPDATE",
                        (group,),
                    )
                    visible = count_rows(postgres_dsn, "qms.quality_event", events)
                    blocked = _wait_for_blocked_sink(postgres_dsn, lock)
                    assert blocked is not None, "the sink never blocked on its offsets"
                    pipeline.kill_sink()
                    lock.rollback()
                _wait_gone(postgres_dsn, blocked)
                after = count_rows(postgres_dsn, "qms.quality_event", events)
                assert after == visible, f"the killed transaction committed {after - visible}"
                held_rows.append(visible)
                pipeline.start_sink()
            account = settle(
                pipeline,
                scenario="4 sink SIGKILL between COPY and commit",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=120 + SINK_EVENTS / 100,
            )
        finally:
            pipeline.stop()
        account.figures["kills inside the transaction"] = len(held_rows)
        account.notes["rows visible at each kill"] = ", ".join(f"{n:,}" for n in held_rows)
        record_ledger(account, seconds=time.monotonic() - started)
        assert len(held_rows) == SINK_KILLS


def _wait_for_blocked_sink(dsn: str, lock: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """The pid of the sink backend waiting on our lock with a write transaction open, if any."""
    deadline = time.monotonic() + 60
    lock_pid = lock.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as probe:
        while time.monotonic() < deadline:
            row = probe.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND backend_xid IS NOT NULL AND query ILIKE '%%sink_offsets%%'"
                " AND %s = ANY(pg_blocking_pids(pid))",
                (lock_pid,),
            ).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.1)
    return None


def _wait_gone(dsn: str, pid: int) -> None:
    """Wait until the killed client's backend has ended (its transaction rolled back)."""
    with psycopg.connect(dsn, autocommit=True) as probe:
        for _ in range(300):
            if not probe.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone():
                return
            time.sleep(0.1)
    raise AssertionError(f"backend {pid} still there 30 s after its client was killed")


class TestWorkerKilledRepeatedly:
    def test_a_worker_killed_every_few_seconds_loses_and_doubles_nothing(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """SIGKILL the worker whenever it has run a few seconds; it restores its tables each time.

        The worker uses the memory store, so every restart rebuilds the dedup and quality
        tables from their changelogs, not from local RocksDB files.
        """
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), WORKER_EVENTS)
        pipeline = ChaosPipeline(settings, tmp_path, QMSFLOW_STORE="memory")
        events = settings.topic("quality.events.v1")
        kills: list[tuple[float, int]] = []
        try:
            pipeline.start_worker()
            pipeline.start_sink()
            slices = [source.records[n :: WORKER_KILLS + 2] for n in range(WORKER_KILLS + 2)]
            source.send(slices[0] + slices[0][:100])  # and 100 resends
            for kill in range(WORKER_KILLS):
                seen = count_rows(postgres_dsn, "qms.quality_event", events)

                def published(seen: int = seen) -> bool:
                    return count_rows(postgres_dsn, "qms.quality_event", events) > seen

                # the restarted worker has rejoined and published when new rows arrive
                wait_for(published, timeout=300, what="rows", alive=pipeline.assert_alive)
                time.sleep(WORKER_KILL_EVERY)
                pipeline.kill_worker()
                rows = count_rows(postgres_dsn, "qms.quality_event", events)
                kills.append((time.monotonic() - started, rows))
                source.send(slices[kill + 1])  # traffic keeps coming while the worker is down
                pipeline.start_worker()
            source.send(slices[-1])
            account = settle(
                pipeline,
                scenario="1 worker SIGKILLed repeatedly",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=180 + WORKER_EVENTS / 100,
            )
        finally:
            pipeline.stop()
        account.figures["worker SIGKILLs"] = len(kills)
        account.notes["kills at (s, rows)"] = ", ".join(f"{t:.0f} s/{n:,}" for t, n in kills)
        if account.missing:
            account.notes["missing events were written at"] = source.locate(
                source.unique_ids - stored_ids(settings)
            )
        record_ledger(account, seconds=time.monotonic() - started)
        assert len(kills) == WORKER_KILLS
