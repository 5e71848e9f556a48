"""Scenario 10: a backlog produced while nothing consumes drains with flat memory (RSS sampled)."""

from __future__ import annotations

import os
import statistics
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos.chaos_pipeline import ChaosPipeline, DemoSource, scenario_settings, settle

pytestmark = pytest.mark.integration

#: the issue's size: a 1,000,000-event backlog (about 20 min to drain on 2 cores)
EVENTS = int(os.environ.get("CHAOS_BACKLOG_EVENTS", "1000000"))
#: the last quarter's median RSS may exceed the second quarter's by this factor at most
GROWTH_LIMIT = float(os.environ.get("CHAOS_BACKLOG_RSS_GROWTH", "1.25"))


def rss_mib(pid: int) -> float | None:
    """Resident set size of a process in MiB, None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TestBacklogDrain:
    def test_a_backlog_drains_exactly_with_flat_memory(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """The whole backlog is sent first; worker and sink RSS stay flat while they drain it."""
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), EVENTS)
        source.send(source.records)
        produced_in = time.monotonic() - started
        pipeline = ChaosPipeline(settings, tmp_path)
        samples: dict[str, list[float]] = {"worker": [], "sink": []}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(2.0):
                for role, process in (("worker", pipeline.worker), ("sink", pipeline.sink)):
                    value = rss_mib(process.pid) if process is not None else None
                    if value is not None:
                        samples[role].append(value)

        sampler = threading.Thread(target=sample)
        try:
            drain_started = time.monotonic()
            pipeline.start_worker()
            pipeline.start_sink()
            sampler.start()
            account = settle(
                pipeline,
                scenario="10 backlog drain",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=120 + EVENTS / 50,
            )
            drain_seconds = time.monotonic() - drain_started
        finally:
            done.set()
            if sampler.is_alive():
                sampler.join()
            pipeline.stop()
        account.figures["backlog events"] = EVENTS
        account.figures["produced in, seconds"] = produced_in
        account.figures["drained in, seconds"] = drain_seconds
        account.figures["drain rate, events/s"] = EVENTS / drain_seconds
        growth = {}
        for role, values in samples.items():
            quarter = max(1, len(values) // 4)
            second, last = values[quarter : 2 * quarter] or values, values[-quarter:]
            growth[role] = statistics.median(last) / statistics.median(second)
            account.figures[f"{role} RSS MiB, max"] = max(values)
            account.figures[f"{role} RSS growth, last/second quarter"] = growth[role]
        record_ledger(account, seconds=time.monotonic() - started)
        assert all(g <= GROWTH_LIMIT for g in growth.values()), growth
