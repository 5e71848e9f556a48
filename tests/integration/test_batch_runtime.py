"""The batch runtime against the real broker and Postgres: same results, state kept across both.

`QMSFLOW_WORKER_RUNTIME=batch` runs the product-line stages in one processor fed by librdkafka
(streams/batch_runtime.py), its tables in memory and restored from the changelogs Faust writes.
What must hold:
  * it publishes exactly the unique events (duplicates dropped, corrupt records dead-lettered),
    and the quality stages run (quarantine commands appear);
  * it restores the dedup marks a Faust worker wrote (a worker switched from `faust` to `batch`
    publishes nothing again when the ingest topics are replayed), and its own after a restart,
    with its local store kept (the changelogs' tail read) and with it lost (read whole).
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from qmsflow.demo.produce import produce_demo
from qmsflow.kafka.admin import consumed_offsets, end_offsets
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from streams.batch_runtime import committed_starts, lagging
from tests.integration.pipeline import (
    PipelineProcesses,
    count_rows,
    environment,
    prepared_settings,
    wait_for,
)

pytestmark = pytest.mark.integration


def _ingest_topics(settings: Settings) -> list[str]:
    return [settings.topic(t.name) for t in load_catalog().by_role("ingest")]


def _replay_ingest(settings: Settings) -> int:
    """Produce every record of the ingest topics again, unchanged: a replay after an outage."""
    topics = _ingest_topics(settings)
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "t-replay"})
    producer = create_producer(settings)
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        for partition in consumer.list_topics(topic, timeout=30).topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > 0:
                ends[(topic, partition)] = high
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
    replayed = 0
    try:
        while ends:
            for message in consumer.consume(1000, 5.0):
                at = (message.topic() or "", message.partition() or 0)
                if message.error() is not None or at not in ends:
                    continue
                if (message.offset() or 0) < ends[at]:
                    producer.produce(
                        at[0], message.value(), message.key(), headers=message.headers()
                    )
                    producer.poll(0)
                    replayed += 1
                if (message.offset() or 0) + 1 >= ends[at]:
                    del ends[at]
        assert producer.flush(30) == 0
    finally:
        consumer.close()
    return replayed


def _caught_up(settings: Settings, group: str) -> bool:
    topics = _ingest_topics(settings)
    ends = end_offsets(settings, topics)
    done = consumed_offsets(settings, group, topics)
    return all(done.get(topic, 0) >= n for topic, n in ends.items())


@pytest.fixture
def batch_settings(kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str) -> Settings:
    return prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix, sink_batch_size=250)


@pytest.fixture
def processes(
    batch_settings: Settings, kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> Iterator[tuple[PipelineProcesses, PipelineProcesses]]:
    """A Faust-runtime and a batch-runtime pipeline over the same topics and app id."""
    env = environment(batch_settings, kafka_bootstrap, postgres_dsn)
    faust = PipelineProcesses(batch_settings, {**env, "QMSFLOW_WORKER_RUNTIME": "faust"}, tmp_path)
    batch = PipelineProcesses(batch_settings, {**env, "QMSFLOW_WORKER_RUNTIME": "batch"}, tmp_path)
    yield faust, batch
    faust.stop()
    batch.stop()


class TestBatchRuntime:
    def test_unique_events_and_state_shared_with_faust_and_restored(
        self,
        processes: tuple[PipelineProcesses, PipelineProcesses],
        postgres_dsn: str,
    ) -> None:
        """Exactly the unique events; replays publish nothing, across runtimes and restarts."""
        faust, batch = processes
        settings = batch.settings
        canonical = settings.topic("quality.events.v1")
        commands = settings.topic("inventory.quarantine-commands.v1")
        batch_group = settings.model_copy(update={"worker_runtime": "batch"}).ingest_group
        seed = zlib.crc32(settings.topic_prefix.encode())

        # 1. the Faust runtime publishes the first lot of events and writes their dedup marks
        faust.start_worker()
        first = produce_demo(settings, count=1500, duplicate_rate=0.1, seed=seed, echo=print)
        first_unique = len(first.unique_event_ids)
        wait_for(
            lambda: end_offsets(settings, [canonical])[canonical] >= first_unique,
            timeout=180,
            what="the Faust worker to publish the first events",
            alive=faust.assert_alive,
        )
        faust.stop()

        # 2. the batch runtime over the same changelogs: it reads every ingest record again
        # (its own consumer group starts at the beginning) and a replay of all of them, and
        # publishes none of them again
        replayed = _replay_ingest(settings)
        assert replayed == first.sent
        batch.start_worker()
        batch.start_sink()
        wait_for(
            lambda: _caught_up(settings, batch_group),
            timeout=180,
            what="the batch runtime to read the ingest topics and the replay",
            alive=batch.assert_alive,
        )
        assert end_offsets(settings, [canonical])[canonical] == first_unique, (
            "the batch runtime republished events whose marks the Faust worker had written"
        )

        # 3. new events through the batch runtime: exactly the unique ones, corrupt ones dead-
        # lettered, and the quality stages ran on them
        second = produce_demo(
            settings, count=3000, duplicate_rate=0.1, corrupt=10, seed=seed + 1, echo=print
        )
        total = first_unique + len(second.unique_event_ids)
        wait_for(
            lambda: count_rows(postgres_dsn, "qms.quality_event", canonical) >= total,
            timeout=240,
            what="the sink to store every unique event of both runtimes",
            alive=batch.assert_alive,
        )
        wait_for(
            lambda: (
                count_rows(postgres_dsn, "qms.dead_letter", settings.topic("quality.dlq.v1")) >= 10
            ),
            timeout=60,
            what="the 10 corrupt records' dead letters",
            alive=batch.assert_alive,
        )
        assert end_offsets(settings, [canonical])[canonical] == total
        assert end_offsets(settings, [commands])[commands] > 0, "no quarantine command at all"

        # 4. a restart loses the memory: the tables come back from the changelogs, so a replay
        # of everything publishes nothing
        batch.stop()
        _replay_ingest(settings)
        batch.start_worker()
        batch.start_sink()
        wait_for(
            lambda: _caught_up(settings, batch_group),
            timeout=240,
            what="the restarted batch runtime to read the replay",
            alive=batch.assert_alive,
        )
        assert end_offsets(settings, [canonical])[canonical] == total

        # 5. the same with the local store lost (a new pod without its volume): the marks come
        # back from the changelogs whole
        batch.stop()
        local = settings.stack_dir / "faust" / f"{settings.topic_prefix}{settings.app_id}"
        shutil.rmtree(local / "batch-runtime")
        _replay_ingest(settings)
        batch.start_worker()
        batch.start_sink()
        wait_for(
            lambda: _caught_up(settings, batch_group),
            timeout=240,
            what="the batch runtime without its local store to read the replay",
            alive=batch.assert_alive,
        )
        assert end_offsets(settings, [canonical])[canonical] == total
        assert count_rows(postgres_dsn, "qms.quality_event", canonical) == total


class TestQuietInputs:
    def test_an_input_read_to_its_committed_end_is_not_behind_until_a_record_arrives(
        self, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """A quiet topic-partition counts from its committed offset, not as behind for good.

        librdkafka knows no position before a record is read, so without the committed start
        every quiet input held its partition's batches for the merge's whole idle limit.
        """
        topic = f"{topic_prefix}quiet"
        settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        producer = create_producer(settings)
        for _ in range(5):
            producer.produce(topic, b"reading", b"line")
        producer.flush(30)
        config = {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{topic_prefix}quiet-group",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        first = Consumer(config)
        first.subscribe([topic])
        read: list[Any] = []
        wait_for(
            lambda: read.extend(first.consume(10, 0.5)) or len(read) >= 5,
            timeout=60,
            what="the 5 records read",
        )
        first.commit(asynchronous=False)
        first.close()

        starts: dict[tuple[str, int], int] = {}
        consumer = Consumer(config)
        consumer.subscribe(
            [topic], on_assign=lambda c, tps: starts.update(committed_starts(c, tps))
        )
        key = (topic, 0)
        try:
            wait_for(
                lambda: (
                    not consumer.consume(10, 0.2)
                    and consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)[1]
                    == 5
                ),
                timeout=60,
                what="assignment and a fetch of the caught-up partition",
            )
            assert starts == {key: 5}
            assert consumer.position([TopicPartition(topic, 0)])[0].offset < 0  # librdkafka
            assert lagging(consumer, key, {}) is True  # what the runtime concluded before
            assert lagging(consumer, key, starts) is False
            producer.produce(topic, b"reading", b"line")
            producer.flush(30)
            # fetched in the background, not yet read: behind
            wait_for(
                lambda: (
                    consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)[1] == 6
                ),
                timeout=60,
                what="the new record fetched",
                interval=0.1,
            )
            assert lagging(consumer, key, starts) is True
        finally:
            consumer.close()
            admin.delete_topics([topic])

    def test_an_empty_input_of_a_new_group_is_not_behind(
        self, kafka_bootstrap: str, topic_prefix: str
    ) -> None:
        """No committed offset and nothing written: the log start is its end, nothing to await."""
        topic = f"{topic_prefix}empty"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"{topic_prefix}empty-group",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        starts: dict[tuple[str, int], int] = {}
        consumer.subscribe(
            [topic], on_assign=lambda c, tps: starts.update(committed_starts(c, tps))
        )
        try:
            wait_for(
                lambda: (
                    not consumer.consume(10, 0.2)
                    and consumer.get_watermark_offsets(TopicPartition(topic, 0), cached=True)[1]
                    == 0
                ),
                timeout=60,
                what="assignment and a fetch of the empty partition",
            )
            assert starts == {}
            assert lagging(consumer, (topic, 0), starts) is False
        finally:
            consumer.close()
            admin.delete_topics([topic])
