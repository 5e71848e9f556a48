"""Scaling the co-partitioned topics 4 → 8 while traffic flows, with the real processes."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import tomllib
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from connectors.postgres_sink.migrations import migrate
from qmsflow.demo.master_data import demo_master_data
from qmsflow.demo.produce import DemoPublisher
from qmsflow.demo.traffic import DemoRecord, DemoTraffic, backdated_start, with_duplicates
from qmsflow.kafka.admin import create_topics, end_offsets
from qmsflow.partitioner import partition_for
from qmsflow.scaling import (
    ScaleRefusedError,
    copartitioned_group,
    rewrite_catalog,
    scale,
)
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog, parse_catalog
from tests.integration.pipeline import PipelineProcesses, count_rows, environment, wait_for

pytestmark = pytest.mark.integration

PACKAGED = Path(__file__).parents[2] / "qmsflow" / "config" / "topics.toml"

#: the worker, with the catalog read from QMSFLOW_TEST_TOPICS (a test-local topics.toml), so it
#: runs with this test's partition counts; everything else is the real `qmsflow worker`
_WORKER = """
import os, sys, tomllib
import qmsflow.topics as topics
catalog = topics.parse_catalog(tomllib.loads(open(os.environ["QMSFLOW_TEST_TOPICS"]).read()))
topics.load_catalog = lambda: catalog
from qmsflow.cli import entry
sys.argv = ["qmsflow", "worker", "--loglevel", "warn"]
entry()
"""


class ScaledPipeline(PipelineProcesses):
    """The pipeline whose worker reads a test-local topics.toml."""

    def start_worker(self) -> None:
        """Start the worker with the test's catalog."""
        with (self.logs / "worker.log").open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-c", _WORKER],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_worker(self) -> None:
        """SIGTERM the worker only; the sink keeps loading."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)

    def restart_sink(self) -> None:
        """SIGTERM the sink (it flushes) and start it again, so it subscribes to the new count."""
        if self.sink is not None and self.sink.poll() is None:
            self.sink.terminate()
            self.sink.wait(30)
        self.start_sink()

    def assert_alive(self) -> None:
        """Also fail on a crashed Faust app: its process lingers without processing anything."""
        super().assert_alive()
        log = self.logs / "worker.log"
        if log.exists() and "Crashed reason=" in log.read_text(errors="replace"):
            raise AssertionError(f"the worker crashed\n{self.log_tail()}")


class Traffic(threading.Thread):
    """Demo records (10% resends) at a steady pace until stopped, from two producers in turn.

    One producer lives for the whole test, so after the scale it still partitions by the old
    count (librdkafka refreshes topic metadata every 5 minutes); a fresh one per round uses the
    new count. Both kinds of record must arrive exactly once.
    """

    def __init__(self, settings: Settings, seed: int, start: datetime) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stale = DemoPublisher(settings)
        self.stale.master(demo_master_data(seed, start, 20_000))
        traffic = DemoTraffic(seed, start)
        self._records = with_duplicates(iter(traffic.next_record, None), 0.1, random.Random(seed))
        self.sent: list[tuple[float, DemoRecord]] = []
        self.from_stale: set[str] = set()  # event ids the long-lived producer sent
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        """Produce a round of 10 every quarter second, alternating the producers."""
        rounds = 0
        try:
            while not self._halt.is_set():
                batch = [next(self._records) for _ in range(10)]
                publisher = self.stale if rounds % 2 else DemoPublisher(self.settings)
                publisher.events(batch)
                if publisher is self.stale:
                    self.from_stale.update(str(r.record["event_id"]) for r in batch)
                now = time.monotonic()
                self.sent.extend((now, record) for record in batch)
                rounds += 1
                self._halt.wait(0.25)
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error

    def finish(self) -> set[str]:
        """Stop producing; the unique event ids sent."""
        self._halt.set()
        self.join(60)
        assert self.error is None, f"traffic producer failed: {self.error!r}"
        return {str(record.record["event_id"]) for _, record in self.sent}

    def sent_between(self, since: float, until: float) -> int:
        """Records acknowledged in a window of time.monotonic()."""
        return sum(1 for at, _ in self.sent if since <= at <= until)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    text = PACKAGED.read_text("utf-8")
    group = copartitioned_group(parse_catalog(tomllib.loads(text)))
    path = tmp_path / "topics.toml"
    path.write_text(rewrite_catalog(text, group, 4), "utf-8")
    return path


@pytest.fixture
def pipeline(
    kafka_bootstrap: str,
    postgres_dsn: str,
    topic_prefix: str,
    tmp_path: Path,
    catalog_file: Path,
) -> Iterator[ScaledPipeline]:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=postgres_dsn,
        topic_prefix=topic_prefix,
        sink_batch_size=250,
    )
    catalog = parse_catalog(tomllib.loads(catalog_file.read_text("utf-8")))
    create_topics(settings, catalog, echo=lambda _line: None)
    migrate(postgres_dsn, echo=lambda _line: None)
    env = {**environment(settings, kafka_bootstrap, postgres_dsn)}
    env["QMSFLOW_TEST_TOPICS"] = str(catalog_file)
    processes = ScaledPipeline(settings, env, tmp_path)
    yield processes
    processes.stop()


def scaled_from(path: Path) -> TopicCatalog:
    """The catalog the test's worker runs with now."""
    return parse_catalog(tomllib.loads(path.read_text("utf-8")))


def _stored(dsn: str, topic: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_id FROM qms.quality_event WHERE kafka_topic = %s", (topic,)
        ).fetchall()
    return {str(row[0]) for row in rows}


class TestScaleFourToEight:
    def test_no_event_lost_or_doubled_and_dedup_holds_while_producing(
        self, pipeline: ScaledPipeline, postgres_dsn: str, catalog_file: Path
    ) -> None:
        """4 → 8 with producers running: each event once in Kafka and Postgres, resends dropped."""
        settings = pipeline.settings
        events = settings.topic("quality.events.v1")
        seed = zlib.crc32(settings.topic_prefix.encode())
        # the master data covers 20,000 records: their simulated times all lie in the past
        start = backdated_start(20_000, datetime.now(UTC))
        pipeline.start_worker()
        pipeline.start_sink()
        traffic = Traffic(settings, seed, start)
        traffic.start()
        wait_for(
            lambda: end_offsets(settings, [events]).get(events, 0) >= 300,
            timeout=120,
            what="300 pre-scale events on the canonical topic",
            alive=pipeline.assert_alive,
        )
        stopped = time.monotonic()
        pipeline.stop_worker()  # the producers and the sink keep running
        before = {str(r.record["event_id"]) for at, r in traffic.sent if at <= stopped}

        lines: list[str] = []
        deadline = time.monotonic() + 60
        while True:
            try:
                scale(
                    settings,
                    catalog_file,
                    ["qms.nonconformance.v1"],
                    8,
                    with_group=True,
                    keep_unmigrated=True,
                    while_producing=True,
                    echo=lines.append,
                )
                break
            except ScaleRefusedError as refusal:  # a stopped worker's membership lingers briefly
                if "live members" not in str(refusal) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        scaled_at = time.monotonic()
        moves = next(line for line in lines if line.strip().endswith("candidate partition"))
        assert int(moves.split()[0]) > 0, (
            f"no mark changed partition, the test proves nothing: {lines}"
        )
        assert scaled_from(catalog_file)["quality.events.v1"].partitions == 8

        pipeline.start_worker()
        # librdkafka consumers see added partitions at their next metadata refresh (5 min by
        # default); the procedure restarts the sink, as the workers, to read them now
        pipeline.restart_sink()
        time.sleep(10)  # traffic keeps flowing into the restarted worker
        unique = traffic.finish()
        assert traffic.sent_between(stopped, scaled_at) > 0, "no record was sent during the scale"
        stale = _stale_writes(settings, traffic, scaled_at)
        assert stale > 0, "no record arrived on its old partition: forwarding was not exercised"

        resend = [record for at, record in traffic.sent if at <= stopped][:150]
        DemoPublisher(settings).events(resend)  # every one a pre-scale event: all must be dropped
        assert {str(r.record["event_id"]) for r in resend} <= before

        wait_for(  # generous: the 2 shared cores also run the broker, Postgres and the producer
            lambda: count_rows(postgres_dsn, "qms.quality_event", events) >= len(unique),
            timeout=300,
            what=f"{len(unique)} events in Postgres",
            alive=pipeline.assert_alive,
        )
        time.sleep(5)  # let a wrongly admitted resend arrive, if dedup failed
        assert _stored(postgres_dsn, events) == unique
        assert end_offsets(settings, [events])[events] == len(unique), (
            "an event was published twice: dedup did not hold across the scale"
        )


def _stale_writes(settings: Settings, traffic: Traffic, since: float) -> int:
    """Ingest records the long-lived producer sent after the scale to their key's old partition."""
    from qmsflow.contracts import AvroCodec, open_registry
    from qmsflow.scaling import _read_all

    codec = AvroCodec(open_registry(settings))
    late = {str(r.record["event_id"]) for at, r in traffic.sent if at > since} & traffic.from_stale
    stale = 0
    for spec in scaled_from_packaged().by_role("ingest"):
        for message in _read_all(settings, settings.topic(spec.name)):
            record = codec.decode(message.value(), f"{spec.name}-value").record
            key = message.key()
            if str(record["event_id"]) in late and key is not None:
                stale += partition_for(key, 8) != message.partition()
    return stale


def scaled_from_packaged() -> TopicCatalog:
    """The packaged catalog (names and roles; counts are the test's own)."""
    return parse_catalog(tomllib.loads(PACKAGED.read_text("utf-8")))
