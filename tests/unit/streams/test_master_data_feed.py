"""The master-data feed waits for an unreachable broker at start-up instead of crashing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import streams.master_data as master_data
from qmsflow.settings import Settings
from streams.master_data import MasterDataFeed


class FakeConsumer:
    """A consumer whose broker answers only after `outages` failed metadata requests."""

    def __init__(self, outages: int, topics: list[str]) -> None:
        self.outages = outages
        self.topics = topics
        self.calls = 0
        self.assigned: list[Any] = []

    def list_topics(self, timeout: float) -> Any:
        """Fail while the outage lasts, then list `topics` with two partitions each."""
        self.calls += 1
        if self.calls <= self.outages:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker transport failure"))
        return SimpleNamespace(
            topics={t: SimpleNamespace(partitions={0: None, 1: None}) for t in self.topics}
        )

    def assign(self, partitions: list[Any]) -> None:
        """Remember the assignment."""
        self.assigned = partitions

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        """Every partition holds offsets 0..6."""
        return 0, 7


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(master_data, "_RETRY_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(master_data, "_RETRY_MAX_SECONDS", 0.02)


def _assign(feed: MasterDataFeed, consumer: FakeConsumer, stopping: bool = False) -> Any:
    async def run() -> Any:
        with ThreadPoolExecutor(max_workers=1) as thread:
            return await feed._assign_when_reachable(
                asyncio.get_running_loop(),
                thread,
                consumer,  # type: ignore[arg-type]
                lambda: stopping,
            )

    return asyncio.run(run())


def test_assignment_retries_through_a_broker_outage() -> None:
    """Three failed metadata requests, then every md.* partition is assigned with its target."""
    settings = Settings(topic_prefix="x.")
    feed = MasterDataFeed(settings, codec=None)  # type: ignore[arg-type]
    topic = settings.topic("md.lot.v1")
    consumer = FakeConsumer(outages=3, topics=[topic, "unrelated"])
    targets = _assign(feed, consumer)
    assert consumer.calls == 4
    assert targets == {(topic, 0): 7, (topic, 1): 7}
    assert {(tp.topic, tp.partition) for tp in consumer.assigned} == {(topic, 0), (topic, 1)}


def test_a_stopping_worker_gives_up() -> None:
    """When the worker is stopping, the outage error is raised rather than retried forever."""
    feed = MasterDataFeed(Settings(), codec=None)  # type: ignore[arg-type]
    with pytest.raises(KafkaException):
        _assign(feed, FakeConsumer(outages=1, topics=[]), stopping=True)
