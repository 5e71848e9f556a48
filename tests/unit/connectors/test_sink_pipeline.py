"""The sink's write pipeline: a batch written by a thread while the next one fills (no servers).

What must hold whatever the threads do: Kafka offsets are committed only after the write that
stored them with the rows has returned, never for a write that raised, whose batch goes back in
front of what was consumed since.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest

from connectors.postgres_sink.sink import Batch, PostgresSink, WritePipeline
from qmsflow.contracts import AvroCodec, FileSchemaRegistry
from qmsflow.settings import PROJECT_ROOT
from tests.unit.connectors import stage_records as records

CODEC = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
TOPIC = "t.quality.incidents.v1"
Offsets = Mapping[tuple[str, int], int]


def sink() -> PostgresSink:
    no_connection: Any = None  # add(), detach() and restore() never touch it
    return PostgresSink(no_connection, CODEC, consumer_group="g", topic_prefix="t.")


def add(target: PostgresSink, partition: int, offset: int) -> None:
    value = CODEC.encode(
        "quality.incidents.v1-value", records.incident(members=records.event_ids(1))
    )
    target.add(TOPIC, partition, offset, b"k", value)


class GatedWrite:
    """A write that blocks until released, then returns its batch's offsets (or raises)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.finished: list[Batch] = []
        self.error = error

    def __call__(self, batch: Batch) -> Offsets:
        """Wait for the test's release; the batch's offsets, as a committed write returns."""
        self.started.set()
        assert self.release.wait(10), "the test never released the write"
        if self.error is not None:
            raise self.error
        self.finished.append(batch)  # the transaction has committed: rows and offsets stored
        return dict(batch.next_offsets)


class Commits:
    """Kafka commits, each checked against the writes finished when it was made."""

    def __init__(self, write: GatedWrite) -> None:
        self.write = write
        self.made: list[dict[tuple[str, int], int]] = []

    def __call__(self, offsets: Offsets) -> None:
        """Record a commit; fail if Postgres does not hold these offsets yet."""
        stored: dict[tuple[str, int], int] = {}
        for batch in self.write.finished:
            stored.update(batch.next_offsets)
        for at, offset in offsets.items():
            assert stored.get(at, -1) >= offset, f"{at} committed to Kafka before Postgres"
        self.made.append(dict(offsets))


class TestWritePipeline:
    def test_offsets_reach_kafka_only_after_the_write_returned(self) -> None:
        """While the write is in flight the next batch fills and nothing is committed."""
        target = sink()
        write = GatedWrite()
        commits = Commits(write)
        pipeline = WritePipeline(target, write, commits)
        add(target, 0, 7)
        pipeline.submit()
        assert write.started.wait(10)
        add(target, 0, 8)  # the next batch fills meanwhile
        assert pipeline.busy
        assert commits.made == []
        assert target.buffered == 1

        write.release.set()
        assert pipeline.settle() is True
        assert commits.made == [{(TOPIC, 0): 8}]
        assert target.buffered == 1  # the next batch is still buffered, not written
        assert pipeline.settle() is False  # nothing in flight any more
        pipeline.close()

    def test_a_failed_write_commits_nothing_and_its_batch_goes_back_in_front(self) -> None:
        """The failed batch is merged before what was consumed since, offsets included."""
        target = sink()
        write = GatedWrite(psycopg.errors.SerializationFailure("could not serialize"))
        commits = Commits(write)
        pipeline = WritePipeline(target, write, commits)
        add(target, 0, 7)
        add(target, 1, 3)
        pipeline.submit()
        add(target, 0, 8)
        write.release.set()
        with pytest.raises(psycopg.errors.SerializationFailure):
            pipeline.settle()
        assert commits.made == []
        assert target.buffered == 3
        batch = target.detach()
        assert [r.at.offset for r in batch.records] == [7, 3, 8]
        assert batch.next_offsets == {(TOPIC, 0): 9, (TOPIC, 1): 4}
        assert [row[-1] for row in batch.rows["qms.incident"]] == [7, 3, 8]  # kafka_offset
        pipeline.close()

    def test_drain_settles_the_write_in_flight_then_writes_the_rest(self) -> None:
        """Revocation and stop: both batches written, committed in their order."""
        target = sink()
        write = GatedWrite()
        commits = Commits(write)
        pipeline = WritePipeline(target, write, commits)
        add(target, 0, 7)
        pipeline.submit()
        add(target, 0, 8)
        write.release.set()
        pipeline.drain()
        assert commits.made == [{(TOPIC, 0): 8}, {(TOPIC, 0): 9}]
        assert target.buffered == 0
        pipeline.close()

    def test_a_failed_last_write_keeps_its_batch(self) -> None:
        """Revocation or stop whose own write fails: nothing committed, the buffer kept."""
        target = sink()
        write = GatedWrite(psycopg.errors.DeadlockDetected("deadlock detected"))
        commits = Commits(write)
        pipeline = WritePipeline(target, write, commits)
        add(target, 0, 7)
        write.release.set()
        with pytest.raises(psycopg.errors.DeadlockDetected):
            pipeline.drain()
        assert commits.made == []
        assert target.buffered == 1
        assert target.detach().next_offsets == {(TOPIC, 0): 8}
        pipeline.close()

    def test_one_batch_in_flight_at_most(self) -> None:
        """A second submit before the first is settled is a code error, not a second writer."""
        target = sink()
        write = GatedWrite()
        pipeline = WritePipeline(target, write, Commits(write))
        add(target, 0, 7)
        pipeline.submit()
        add(target, 0, 8)
        with pytest.raises(RuntimeError, match="in flight"):
            pipeline.submit()
        write.release.set()
        pipeline.close()
