"""A scenario's environment: its topics, the real worker(s) and sink, demo traffic, the ledger."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from connectors.postgres_sink.migrations import migrate
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.master_data import demo_master_data
from qmsflow.demo.produce import DemoPublisher
from qmsflow.demo.traffic import DemoRecord, DemoTraffic, backdated_start
from qmsflow.kafka.admin import create_topics
from qmsflow.kafka.producer import create_producer
from qmsflow.reconcile import Ledger, ledger
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.chaos.conftest import CHAOS_STACK_DIR
from tests.integration.pipeline import PipelineProcesses, count_rows, environment


def scenario_settings(bootstrap: str, dsn: str, prefix: str, **overrides: object) -> Settings:
    """One scenario's settings on the chaos stack, its topics created and the database migrated."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        database_url=dsn,
        topic_prefix=prefix,
        stack_dir=CHAOS_STACK_DIR,
        **overrides,  # type: ignore[arg-type]
    )
    create_topics(settings, load_catalog(), echo=lambda _line: None)
    migrate(dsn, echo=lambda _line: None)
    return settings


class ChaosPipeline(PipelineProcesses):
    """The worker(s) and sink of one scenario, with the faults the scenarios inject."""

    def __init__(self, settings: Settings, logs: Path, **env: str) -> None:
        base = environment(settings, settings.bootstrap_servers, settings.dsn)
        # the Faust stores of the chaos stack's workers live beside its data, not in .stack
        base.update({"QMSFLOW_STACK_DIR": str(CHAOS_STACK_DIR), **env})
        super().__init__(settings, base, logs)
        self.extra_workers: list[subprocess.Popen[bytes]] = []

    def kill_worker(self) -> None:
        """SIGKILL the worker: no commit, no changelog flush, no leave-group."""
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(10)

    def start_extra_worker(self, n: int) -> None:
        """Start another worker in the same group, with its own store folder and log."""
        env = {**self.env, "QMSFLOW_STACK_DIR": str(CHAOS_STACK_DIR / f"worker-{n}")}
        with (self.logs / f"worker-{n}.log").open("ab") as log:
            self.extra_workers.append(
                subprocess.Popen(
                    [*self._command(), "worker", "--loglevel", "warn"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def stop_extra_worker(self, *, kill: bool = False) -> None:
        """Stop the oldest extra worker: SIGTERM (it leaves the group) or SIGKILL."""
        process = self.extra_workers.pop(0)
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart_exited(self) -> list[str]:
        """Start again the worker or sink that exited, as a supervisor would; name them."""
        exited = []
        if self.worker is not None and self.worker.poll() is not None:
            exited.append(f"worker (exit {self.worker.returncode})")
            self.start_worker()
        if self.sink is not None and self.sink.poll() is not None:
            exited.append(f"sink (exit {self.sink.returncode})")
            self.start_sink()
        return exited

    def stop(self) -> None:
        """Stop the extra workers, then the worker and the sink."""
        while self.extra_workers:
            self.stop_extra_worker()
        super().stop()

    @staticmethod
    def _command() -> list[str]:
        import sys

        return [sys.executable, "-m", "qmsflow"]


class DemoSource:
    """Demo traffic for one scenario: master data first, then records; every id remembered."""

    def __init__(self, settings: Settings, seed: int, count: int) -> None:
        self.settings = settings
        start = backdated_start(count, datetime.now(UTC))
        self.records: list[DemoRecord] = list(DemoTraffic(seed, start).records(count))
        self.unique_ids = {r.record["event_id"] for r in self.records}
        self.sent = 0
        self.poison = 0
        #: where the broker put each event (topic, partition, offset), from delivery reports
        self.positions: dict[str, tuple[str, int, int]] = {}
        self.failed_deliveries = 0
        DemoPublisher(settings).master(demo_master_data(seed, start, count))
        self.codec = AvroCodec(open_registry(settings))

    def encoded(self, record: DemoRecord) -> tuple[str, bytes, bytes]:
        """Topic, key and value of a record, as a source system sends it."""
        return (
            self.settings.topic(record.topic),
            record.key.encode(),
            self.codec.encode(f"{record.topic}-value", record.record),
        )

    def send(
        self,
        records: Iterable[DemoRecord],
        *,
        producer: Producer | None = None,
        rate: float | None = None,
    ) -> int:
        """Send records (at most `rate` a second), wait for every acknowledgement; count them."""
        producer = producer or create_producer(self.settings)
        started, n = time.monotonic(), 0
        for record in records:
            topic, key, value = self.encoded(record)
            send_raw(producer, topic, key, value, on_delivery=self._delivered(record))
            n += 1
            if rate:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        remaining = producer.flush(120)
        assert remaining == 0, f"{remaining} records not acknowledged in 120 s"
        assert not self.failed_deliveries, f"{self.failed_deliveries} records refused by the broker"
        self.sent += n
        return n

    def _delivered(self, record: DemoRecord) -> Callable[[Any, Any], None]:
        event_id = str(record.record["event_id"])

        def note(error: Any, message: Any) -> None:
            if error is not None:
                self.failed_deliveries += 1
            else:
                self.positions[event_id] = (message.topic(), message.partition(), message.offset())

        return note

    def locate(self, event_ids: Iterable[str]) -> str:
        """Where events were written, as `topic[partition]@offset` (for a ledger's notes)."""
        found = sorted(self.positions[i] for i in event_ids if i in self.positions)
        prefix = self.settings.topic_prefix
        return ", ".join(f"{t.removeprefix(prefix)}[{p}]@{o}" for t, p, o in found)


def stored_ids(settings: Settings) -> set[str]:
    """The event ids of this environment's rows in `qms.quality_event`."""
    with psycopg.connect(settings.dsn) as conn:
        rows = conn.execute(
            "SELECT event_id FROM qms.quality_event WHERE kafka_topic = %s",
            (settings.topic("quality.events.v1"),),
        ).fetchall()
    return {str(row[0]) for row in rows}


def send_raw(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """Produce one record, waiting while the local queue is full."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, key=key, value=value)
            else:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.2)
        producer.poll(0)


def settle(
    pipeline: PipelineProcesses,
    *,
    scenario: str,
    produced: int,
    unique_ids: set[str],
    poison: int,
    timeout: float,
) -> Ledger:
    """Wait until Postgres holds every row and dead letter expected, then take the ledger.

    A ledger that does not balance yet is taken again (the sink's last batch, a worker's last
    republish) until `timeout`; the last one is returned either way, for the report.
    """
    settings = pipeline.settings
    events, dlq = settings.topic("quality.events.v1"), settings.topic("quality.dlq.v1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline.assert_alive()
        if (
            count_rows(settings.dsn, "qms.quality_event", events) >= len(unique_ids)
            and _dead_letters(settings.dsn, dlq) >= poison
        ):
            break
        time.sleep(2)
    while True:
        account = ledger(
            settings, scenario=scenario, produced=produced, unique_ids=unique_ids, poison=poison
        )
        if not account.differences or time.monotonic() > deadline:
            return account
        time.sleep(3)


def _dead_letters(dsn: str, dlq_topic: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM qms.dead_letter WHERE kafka_topic = %s", (dlq_topic,)
        ).fetchone()
    return int(row[0]) if row else 0


def reset_worker_group(settings: Settings) -> int:
    """Move the (stopped) worker groups' committed offsets back to 0; returns partitions moved."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    moved = 0
    for group in sorted({settings.worker_group, settings.ingest_group}):
        listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        committed = listed[group].result().topic_partitions
        prefix = settings.topic_prefix
        ours = [tp for tp in committed if tp.offset > 0 and tp.topic.startswith(prefix)]
        if not ours:
            continue
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(tp.topic, tp.partition, 0) for tp in ours]
        )
        admin.alter_consumer_group_offsets([request])[group].result()
        moved += len(ours)
    return moved


def reset_sink_offsets(settings: Settings) -> int:
    """Set every stored sink position of this environment back to 0 (its source of truth)."""
    with psycopg.connect(settings.dsn) as conn:
        moved = conn.execute(
            "UPDATE qms.sink_offsets SET next_offset = 0 WHERE consumer_group = %s",
            (settings.topic(f"{settings.app_id}-sink"),),
        ).rowcount
    return moved


def table_digest(settings: Settings) -> dict[str, str]:
    """md5 of every column of every row of this environment, per table, in id order."""
    tables = {
        "qms.quality_event": ("event_id", settings.topic("quality.events.v1")),
        "qms.dead_letter": ("dead_letter_id", settings.topic("quality.dlq.v1")),
        "audit.record_change": ("record_id", settings.topic("quality.events.v1")),
    }
    out = {}
    with psycopg.connect(settings.dsn) as conn:
        for table, (key, topic) in tables.items():
            row = conn.execute(
                "SELECT count(*), md5(coalesce("
                f"string_agg(t::text, '|' ORDER BY t.{key}::text), ''))"
                f" FROM {table} t WHERE kafka_topic = %s",
                (topic,),
            ).fetchone()
            out[table] = f"{row[0]} rows, md5 {row[1]}" if row else "none"
    return out
