"""Dedup memory ends `dedup_retention` after an event's time, with nothing kept in memory per id.

The worker runs with a one-hour retention. Events from ten hours ago are remembered until events
of the present move the partition watermarks past them: a resend of the old events is then
published again (forgotten), a resend of the recent ones is still dropped, and the sweep has
deleted the old marks from the table (tombstones on its changelog).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from qmsflow.demo.produce import produce_demo
from qmsflow.kafka.admin import end_offsets
from qmsflow.settings import Settings
from tests.integration.pipeline import PipelineProcesses, environment, prepared_settings, wait_for

pytestmark = pytest.mark.integration

OLD, RECENT = 150, 150


@pytest.fixture(params=["rocksdb", "memory"])
def worker(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    postgres_dsn: str,
    topic_prefix: str,
    tmp_path: Path,
) -> Iterator[PipelineProcesses]:
    """A worker on each table store: their sweeps walk the stored marks differently."""
    settings = prepared_settings(
        kafka_bootstrap, postgres_dsn, topic_prefix, dedup_retention=timedelta(hours=1)
    )
    env = environment(settings, kafka_bootstrap, postgres_dsn)
    env["QMSFLOW_DEDUP_RETENTION"] = "PT1H"
    env["QMSFLOW_STORE"] = request.param
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    yield processes
    processes.stop()


def _tombstones(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "t-dedup"})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        total = sum(h - lo for lo, h in (consumer.get_watermark_offsets(tp, 10) for tp in tps))
        consumer.assign(tps)
        seen, tombstones = 0, 0
        while seen < total:
            batch = consumer.consume(1000, 5.0)
            if not batch:
                break
            for message in batch:
                if message.error() is None:
                    seen += 1
                    tombstones += message.value() is None
        return tombstones
    finally:
        consumer.close()


def test_old_marks_are_forgotten_and_swept_recent_ones_kept(worker: PipelineProcesses) -> None:
    settings = worker.settings
    canonical = settings.topic("quality.events.v1")
    seed = zlib.crc32(settings.topic_prefix.encode())
    now = datetime.now(UTC)
    ten_hours_ago = now - timedelta(hours=10)

    def send(count: int, seed: int, start: datetime) -> set[str]:
        report = produce_demo(
            settings, count=count, duplicate_rate=0, seed=seed, start=start, echo=lambda _: None
        )
        return report.unique_event_ids

    def published(want: int) -> None:
        wait_for(
            lambda: end_offsets(settings, [canonical])[canonical] >= want,
            timeout=180,
            what=f"{want} canonical events",
            alive=worker.assert_alive,
        )

    old = send(OLD, seed, ten_hours_ago)
    published(len(old))
    recent = send(RECENT, seed + 1, now - timedelta(minutes=5))
    published(len(old) + len(recent))
    # the old events again: their marks are past the retention of the moved watermarks
    assert send(OLD, seed, ten_hours_ago) == old
    published(2 * len(old) + len(recent))
    # the recent events again, then a marker batch: the resends must not be published
    send(RECENT, seed + 1, now - timedelta(minutes=5))
    marker = send(20, seed + 2, now)
    published(2 * len(old) + len(recent) + len(marker))
    assert end_offsets(settings, [canonical])[canonical] == 2 * len(old) + len(recent) + len(
        marker
    ), "a recent resend was published again: its mark was forgotten too early"
    changelog = f"{settings.topic_prefix}{settings.app_id}-dedup-seen-changelog"
    assert _tombstones(settings, changelog) >= len(old), "the sweep left expired marks stored"
