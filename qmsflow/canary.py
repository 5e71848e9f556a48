"""Synthetic transactions: a canary sends flagged events through every path and times them.

Why: metrics show what the pipeline did, not whether a new event would get through now. Each
canary run publishes a synthetic (`synthetic = true`) MES inspection reject about a fresh lot
(its master record first), then the material review board's use-as-is disposition, and watches
the far end of every path:
  - `ingest-postgres`: the reject's row in `qms.quality_event` (ingest agent → sink);
  - `quarantine-hold`: a HOLD for the lot on `inventory.quarantine-commands.v1`, triggered by
    the reject (quality agent);
  - `quarantine-release`: the RELEASE the disposition gives (so no canary lot stays blocked).
A path is healthy when its output arrives within the timeout; its latency is from the send to
the moment the canary saw the output. Results go to Prometheus (`qmsflow_canary_healthy`,
`qmsflow_canary_latency_seconds`, per path) and to `qms.canary_check` (migration 0012).
Synthetic records are left out of every analyst view (`analytics.*` filter on `synthetic`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from threading import Event
from typing import Any

from prometheus_client import Gauge

from qmsflow.demo.scenarios import bad_supplier_lot
from qmsflow.demo.traffic import DemoRecord
from qmsflow.settings import Settings

__all__ = [
    "PATHS",
    "CanaryRun",
    "PathResult",
    "build_run",
    "describe",
    "run_canary",
    "run_once",
]

#: every path a canary run checks, in the order their outputs are expected
PATHS = ("ingest-postgres", "quarantine-hold", "quarantine-release")
COMMANDS = "inventory.quarantine-commands.v1"

CANARY_HEALTHY = Gauge(
    "qmsflow_canary_healthy",
    "1 when the last canary run's output on this path arrived within the timeout, else 0.",
    ["path"],
)
CANARY_LATENCY = Gauge(
    "qmsflow_canary_latency_seconds",
    "Seconds from sending the last canary event to seeing its output on this path.",
    ["path"],
)


@dataclass(frozen=True)
class CanaryRun:
    """What one run sends: the lot's master record, the probe event and its disposition."""

    run_id: str
    lot_id: str
    lot_master: tuple[str, str, dict[str, Any]]
    probe: DemoRecord
    release: DemoRecord

    @property
    def probe_event_id(self) -> str:
        """The probe's event id: the key of its Postgres row and its HOLD's trigger."""
        return str(self.probe.record["event_id"])


@dataclass(frozen=True)
class PathResult:
    """One path's outcome in one run."""

    path: str
    healthy: bool
    latency_seconds: float | None
    detail: str


def build_run(run_id: uuid.UUID, now: datetime) -> CanaryRun:
    """The records of one run (pure): a fresh lot, so every run gets its own HOLD and RELEASE."""
    scenario = bad_supplier_lot(run_id.int % 2**31, now)
    probe = next(r for r in scenario.trouble if r.topic == "mes.inspection-result.v1")
    probe = _synthetic(probe, run_id, "probe", now)
    # recorded after the probe: a disposition releases the result-based holds recorded before it
    release = _synthetic(scenario.disposition, run_id, "release", now + timedelta(seconds=1))
    return CanaryRun(str(run_id), scenario.lot_id, scenario.lot_master, probe, release)


def _synthetic(record: DemoRecord, run_id: uuid.UUID, role: str, now: datetime) -> DemoRecord:
    """The record flagged synthetic, with its own event id and the run's time."""
    datum = dict(record.record)
    datum.update(
        synthetic=True,
        event_id=str(uuid.uuid5(run_id, role)),
        recorded_at=now,
        occurred_at=now,
    )
    return replace(record, record=datum)


def run_once(
    settings: Settings, *, timeout: float, run_id: uuid.UUID | None = None
) -> list[PathResult]:
    """Send one canary run, wait for every path's output (up to `timeout` s), record results."""
    import psycopg

    from qmsflow.demo.produce import DemoPublisher

    run = build_run(run_id or uuid.uuid4(), datetime.now(UTC))
    watcher = _CommandWatcher(settings)
    try:
        publisher = DemoPublisher(settings)
        publisher.master([run.lot_master])
        sent = time.monotonic()
        sent_at = datetime.now(UTC)
        publisher.events([run.probe])
        seen: dict[str, float] = {}
        release_sent: float | None = None
        deadline = sent + timeout
        with psycopg.connect(settings.dsn) as conn:
            while time.monotonic() < deadline and len(seen) < len(PATHS):
                if "ingest-postgres" not in seen and _row_loaded(
                    conn, settings, run.probe_event_id
                ):
                    seen["ingest-postgres"] = time.monotonic() - sent
                for command in watcher.poll(0.2):
                    if command["lot_id"] != run.lot_id:
                        continue
                    if command["action"] == "HOLD" and "quarantine-hold" not in seen:
                        seen["quarantine-hold"] = time.monotonic() - sent
                    elif command["action"] == "RELEASE" and release_sent is not None:
                        seen["quarantine-release"] = time.monotonic() - release_sent
                if "quarantine-hold" in seen and release_sent is None:
                    publisher.events([run.release])
                    release_sent = time.monotonic()
            results = [_result(path, seen.get(path), timeout) for path in PATHS]
            _store(conn, run, sent_at, results)
    finally:
        watcher.close()
    for result in results:
        CANARY_HEALTHY.labels(result.path).set(1 if result.healthy else 0)
        if result.latency_seconds is not None:
            CANARY_LATENCY.labels(result.path).set(result.latency_seconds)
    return results


def run_canary(
    settings: Settings,
    *,
    interval: float,
    timeout: float,
    stop: Event | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the canary every `interval` seconds until `stop` is set."""
    stop = stop or Event()
    while not stop.is_set():
        started = time.monotonic()
        for result in run_once(settings, timeout=timeout):
            echo(describe(result))
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def describe(result: PathResult) -> str:
    """One line per path for the operator: path, ok/FAILED, latency, detail."""
    latency = "-" if result.latency_seconds is None else f"{result.latency_seconds:.2f} s"
    state = "ok" if result.healthy else "FAILED"
    return f"canary {result.path:<20} {state:<6} {latency:>9}  {result.detail}"


def _result(path: str, latency: float | None, timeout: float) -> PathResult:
    if latency is None:
        return PathResult(path, False, None, f"no output within {timeout:.0f} s")
    return PathResult(path, True, latency, "arrived")


def _row_loaded(conn: Any, settings: Settings, event_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM qms.quality_event WHERE event_id = %s AND kafka_topic = %s",
        (event_id, settings.topic("quality.events.v1")),
    ).fetchone()
    conn.commit()
    return row is not None


def _store(conn: Any, run: CanaryRun, sent_at: datetime, results: Iterable[PathResult]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO qms.canary_check (run_id, path, event_id, lot_id, sent_at, healthy,"
            " latency_ms, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    run.run_id,
                    r.path,
                    run.probe_event_id,
                    run.lot_id,
                    sent_at,
                    r.healthy,
                    None if r.latency_seconds is None else round(r.latency_seconds * 1000),
                    r.detail,
                )
                for r in results
            ],
        )
    conn.commit()


class _CommandWatcher:
    """Reads quarantine commands written after it was created (each partition from its end)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from qmsflow.contracts import AvroCodec, open_registry
        from qmsflow.kafka.security import librdkafka_security

        self._codec = AvroCodec(open_registry(settings))
        topic = settings.topic(COMMANDS)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                **librdkafka_security(settings),
                "group.id": f"{settings.topic_prefix}qmsflow-canary",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, self._end(topic, p)) for p in partitions])

    def _end(self, topic: str, partition: int) -> int:
        """The partition's end offset; a leader moving (e.g. a new topic) is waited out."""
        from confluent_kafka import KafkaException, TopicPartition

        deadline = time.monotonic() + 30
        while True:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                return int(high)
            except KafkaException as error:
                if not error.args[0].retriable() or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def poll(self, seconds: float) -> list[dict[str, Any]]:
        """Commands that arrived within `seconds`, decoded."""
        commands = []
        for message in self._consumer.consume(100, seconds):
            value = message.value()
            if message.error() is None and value is not None:
                commands.append(self._codec.decode(value, f"{COMMANDS}-value").record)
        return commands

    def close(self) -> None:
        """Leave no consumer behind."""
        self._consumer.close()
