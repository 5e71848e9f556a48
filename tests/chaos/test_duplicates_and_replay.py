"""Scenarios 7 and 6: a duplicate storm from three producers, then a full replay from offset 0."""

from __future__ import annotations

import os
import random
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from qmsflow.kafka.admin import end_offsets
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.chaos.chaos_pipeline import (
    ChaosPipeline,
    DemoSource,
    reset_sink_offsets,
    reset_worker_group,
    scenario_settings,
    settle,
    table_digest,
)
from tests.integration.pipeline import wait_for

pytestmark = pytest.mark.integration

STORM_EVENTS = int(os.environ.get("CHAOS_STORM_EVENTS", "10000"))
#: how often each of the three producers sends every event: five sends of each in all
SENDS_PER_PRODUCER = (2, 2, 1)
REPLAY_EVENTS = int(os.environ.get("CHAOS_REPLAY_EVENTS", "5000"))


class TestDuplicateStorm:
    def test_five_sends_by_three_producers_give_one_row_each(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """Each event sent five times by three concurrent producers is one record and one row."""
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        seed = zlib.crc32(topic_prefix.encode())
        source = DemoSource(settings, seed, STORM_EVENTS)
        pipeline = ChaosPipeline(settings, tmp_path)
        errors: list[BaseException] = []

        def producer(n: int, sends: int) -> None:
            try:
                for round_ in range(sends):
                    order = list(source.records)
                    random.Random(seed + 10 * n + round_).shuffle(order)
                    source.send(order)
            except BaseException as error:  # surfaced by the assertion below
                errors.append(error)

        try:
            pipeline.start_worker()
            pipeline.start_sink()
            threads = [
                threading.Thread(target=producer, args=(n, sends))
                for n, sends in enumerate(SENDS_PER_PRODUCER)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors, errors
            account = settle(
                pipeline,
                scenario="7 duplicate storm",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=120 + STORM_EVENTS * 5 / 200,
            )
        finally:
            pipeline.stop()
        assert source.sent == STORM_EVENTS * sum(SENDS_PER_PRODUCER)
        account.figures["resends dropped"] = source.sent - account.rows
        account.figures["producers"] = len(SENDS_PER_PRODUCER)
        record_ledger(account, seconds=time.monotonic() - started)


class TestFullReplay:
    def test_replay_from_offset_zero_changes_no_row(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """Both groups reset to 0 and everything reprocessed: every row, byte for byte, the same."""
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), REPLAY_EVENTS)
        pipeline = ChaosPipeline(settings, tmp_path)
        events = settings.topic("quality.events.v1")
        try:
            pipeline.start_worker()
            pipeline.start_sink()
            source.send(source.records)
            source.send(source.records[: REPLAY_EVENTS // 10])  # 10% resends
            first = settle(
                pipeline,
                scenario="6 full replay",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=120 + REPLAY_EVENTS / 100,
            )
            assert not first.differences, first.render()
            before = table_digest(settings)
            pipeline.stop()
            moved = reset_worker_group(settings), reset_sink_offsets(settings)
            replay_started = time.monotonic()
            pipeline.start_worker()
            pipeline.start_sink()
            ingest_total = sum(end_offsets(settings, _ingest_topics(settings)).values())

            def replayed() -> bool:
                # the worker's group is back at the end of every ingest topic, the sink's at
                # the end of the canonical topic
                return (
                    _worker_position(settings) >= ingest_total
                    and _sink_position(settings) >= end_offsets(settings, [events])[events]
                )

            wait_for(
                replayed, timeout=600, what="the replay to finish", alive=pipeline.assert_alive
            )
            replay_seconds = time.monotonic() - replay_started
            account = settle(
                pipeline,
                scenario="6 full replay",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=120,
            )
            after = table_digest(settings)
        finally:
            pipeline.stop()
        account.figures["worker partitions reset to 0"] = moved[0]
        account.figures["sink partitions reset to 0"] = moved[1]
        account.figures["records replayed"] = ingest_total
        account.figures["replay seconds"] = replay_seconds
        account.notes["digest before = after"] = str(before == after)
        record_ledger(account, seconds=time.monotonic() - started)
        assert moved[0] > 0 and moved[1] > 0
        assert before == after, (before, after)


def _ingest_topics(settings: Settings) -> list[str]:
    return [settings.topic(t.name) for t in load_catalog().by_role("ingest")]


def _worker_position(settings: Settings) -> int:
    """Sum of the worker group's committed offsets on the ingest topics."""
    group = settings.ingest_group
    ingest = set(_ingest_topics(settings))
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    return sum(
        max(tp.offset, 0) for tp in listed[group].result().topic_partitions if tp.topic in ingest
    )


def _sink_position(settings: Settings) -> int:
    """Sum of the sink's stored next offsets on the canonical topic."""
    with psycopg.connect(settings.dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM qms.sink_offsets"
            " WHERE consumer_group = %s AND topic = %s",
            (settings.topic(f"{settings.app_id}-sink"), settings.topic("quality.events.v1")),
        ).fetchone()
    return int(row[0]) if row else 0
