"""Latency at fixed offered rates: producer timestamp → stored Postgres row, → quarantine command.

Per worker runtime (QMSFLOW_WORKER_RUNTIME: faust, batch), one fresh topic prefix (so groups,
changelogs and rows never mix), one worker and one sink for every rate, so the rates differ only
in load:
  1. a warm-up at 100 events/s until its rows are stored (process start-up is not latency);
  2. per rate, demo-mix events are produced at that rate (5% duplicates) for a fixed time, then
     the run waits until the sink has committed every canonical record;
  3. afterwards every ingest record's Kafka timestamp (set by the producer) is read back and
     matched to the row's lineage (source topic, partition, offset), so each stored event has:
     producer → ingested (`ingested_at`, the ingest agent's normalisation), ingested → stored
     (`loaded_at`, the sink transaction's start: the commit follows within milliseconds), and
     for each quarantine command its Kafka timestamp, matched by `trigger_event_id`;
  4. the baseline from the same run: a plain confluent-kafka consumer subscribed to the ingest
     topics for the whole run, recording when each record arrives (what Kafka alone adds here);
  5. the worker's lag: its ingest group's committed offsets against the ingest topics' ends,
     sampled through the run (the group is the runtime's: faust commits in `<prefix><app_id>`,
     batch in `<prefix><app_id>-product-lines`); per rate the largest lag while offering and
     how long after the producer's last record the lag was back to 0. The target (p99 ≤ 250 ms
     at 2,000 events/s) counts as met only if that lag was bounded: drained within
     LAG_DRAIN_SECONDS.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.results_model import RUNTIMES, percentile
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.produce import produce_demo
from qmsflow.kafka.admin import create_topics
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment

#: (events/s, seconds): the issue's three rates; durations capped so the step takes ~3 minutes
RATES: tuple[tuple[int, float], ...] = ((500, 20.0), (2000, 10.0), (10_000, 3.0))
DUPLICATES = 0.05
#: the issue's latency target: p99 producer → Postgres row at 2,000 events/s
P99_TARGET_MS = 250.0
P99_TARGET_RATE = 2000
#: worker lag counts as bounded when it is back to 0 this long after the producer stops: a
#: worker keeping up trails by one commit interval (faust's default 2.8 s; batch commits each
#: batch) plus a batch; one that falls behind at 2,000/s for 10 s has seconds of backlog left
LAG_DRAIN_SECONDS = 5.0
#: seconds between lag samples: finer than a commit interval, coarse enough to cost little
_LAG_SAMPLE_SECONDS = 0.25

Coordinates = tuple[str, int, int]


def _quiet(_line: str) -> None:
    pass


def summary(values_ms: list[float]) -> dict[str, float | int] | None:
    """Count, p50, p95, p99 and max of latencies in milliseconds (None when there are none)."""
    if not values_ms:
        return None
    return {
        "count": len(values_ms),
        "p50_ms": percentile(values_ms, 50),
        "p95_ms": percentile(values_ms, 95),
        "p99_ms": percentile(values_ms, 99),
        "max_ms": max(values_ms),
    }


class ArrivalClock(threading.Thread):
    """Baseline: a plain consumer on the ingest topics noting when each record arrives."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        super().__init__(daemon=True)
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": settings.topic("bench-latency-baseline"),
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5,  # the broker answers as soon as a record is there
            }
        )
        self._consumer.subscribe(topics)
        self.arrived: dict[Coordinates, float] = {}  # → wall-clock ms
        self._stopping = threading.Event()

    def run(self) -> None:
        """Poll until stopped, stamping each record with the wall clock on arrival."""
        while not self._stopping.is_set():
            for m in self._consumer.consume(1000, 0.1):
                if m.error() is None:
                    now = time.time() * 1000
                    self.arrived[(m.topic() or "", m.partition() or 0, m.offset() or 0)] = now
        self._consumer.close()

    def stop(self) -> None:
        """Stop polling and close the consumer."""
        self._stopping.set()
        self.join(30)


def _timestamps(settings: Settings, topics: list[str]) -> dict[Coordinates, float]:
    """Every record's Kafka timestamp (ms) on `topics`, read from the beginning."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-ts"})
    assigned, ends = [], 0
    for topic in topics:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        for p in meta.partitions:
            tp = TopicPartition(topic, p, OFFSET_BEGINNING)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            ends += high - low
            assigned.append(tp)
    consumer.assign(assigned)
    stamps: dict[Coordinates, float] = {}
    deadline = time.monotonic() + 120
    while len(stamps) < ends and time.monotonic() < deadline:
        for m in consumer.consume(5000, 1.0):
            if m.error() is None:
                stamps[(m.topic() or "", m.partition() or 0, m.offset() or 0)] = m.timestamp()[1]
    consumer.close()
    return stamps


def _commands(settings: Settings) -> list[tuple[str, float]]:
    """(trigger_event_id, Kafka timestamp ms) of every quarantine command of the prefix."""
    topic = settings.topic("inventory.quarantine-commands.v1")
    codec = AvroCodec(open_registry(settings))
    found: list[tuple[str, float]] = []
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-cmd"})
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
    total = sum(
        high - low for low, high in (consumer.get_watermark_offsets(tp, timeout=10) for tp in tps)
    )
    consumer.assign(tps)
    deadline = time.monotonic() + 60
    while len(found) < total and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error() is None and m.value():
                record = codec.decode(
                    m.value() or b"", f"{topic.removeprefix(settings.topic_prefix)}-value"
                ).record
                found.append((str(record["trigger_event_id"]), m.timestamp()[1]))
    consumer.close()
    return found


def ingest_group(settings: Settings, runtime: str) -> str:
    """The consumer group whose commits on the ingest topics are the worker's progress."""
    if runtime == "batch":
        return settings.topic(f"{settings.app_id}-product-lines")
    return settings.topic(settings.app_id)


class WorkerLag(threading.Thread):
    """Samples the worker's lag on the ingest topics: (monotonic s, records not yet committed)."""

    def __init__(self, settings: Settings, group: str, topics: list[str]) -> None:
        super().__init__(daemon=True)
        # group.id names the group whose commits are read; this consumer never joins it
        self._consumer = Consumer(
            {"bootstrap.servers": settings.bootstrap_servers, "group.id": group}
        )
        self._partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ]
        self.samples: list[tuple[float, int]] = []
        self._stopping = threading.Event()

    def lag(self) -> int:
        """Records on the ingest topics past the group's committed offsets, now."""
        total = 0
        committed = self._consumer.committed(self._partitions, timeout=10)
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            total += high - (tp.offset if tp.offset >= 0 else low)  # < 0: nothing committed yet
        return total

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stopping.wait(_LAG_SAMPLE_SECONDS):
            try:
                self.samples.append((time.monotonic(), self.lag()))
            except Exception:  # a timed-out request: the next sample is as good
                continue
        self._consumer.close()

    def stop(self) -> None:
        """Stop sampling and close the consumer."""
        self._stopping.set()
        self.join(30)


def phase_lag(
    samples: list[tuple[float, int]], started: float, produced: float, rate: float
) -> dict[str, Any]:
    """The worker's lag over one offered rate, from (time, lag) samples.

    `started` and `produced` bound the offering (monotonic seconds). `bounded` holds when a
    sample at or after `produced` shows the lag back to 0 within LAG_DRAIN_SECONDS.
    """
    during = [lag for at, lag in samples if started <= at <= produced]
    drained = next((at - produced for at, lag in samples if at >= produced and lag <= 0), None)
    peak = max(during, default=None)
    return {
        "max_records": peak,
        "max_seconds_of_input": None if peak is None or rate <= 0 else peak / rate,
        "drained_after_seconds": drained,
        "bounded": drained is not None and drained <= LAG_DRAIN_SECONDS,
    }


@dataclass
class Phase:
    """One offered rate: its events and when the producer was done with them."""

    rate: int
    seconds: float
    event_ids: set[str] = field(default_factory=set)
    sent: int = 0
    produce_seconds: float = 0.0
    worker_lag: dict[str, Any] = field(default_factory=dict)


def _sink_committed(dsn: str, group: str, topic: str) -> Callable[[], int]:
    conn = psycopg.connect(dsn, autocommit=True)

    def committed() -> int:
        row = conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM qms.sink_offsets"
            " WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        ).fetchone()
        return int(row[0]) if row else 0

    return committed


def _wait_stored(
    committed: Callable[[], int], want: int, timeout: float, alive: Callable[[], None]
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive()
        if committed() >= want:
            return True
        time.sleep(0.2)
    return False


def measure_latency(
    base: Settings,
    logs: Path,
    rates: tuple[tuple[int, float], ...] = RATES,
    runtimes: tuple[str, ...] = tuple(RUNTIMES.values()),
) -> dict[str, Any]:
    """Every rate on each worker runtime, one fresh prefix each; summaries per runtime and rate.

    A runtime whose run fails is recorded with its error; the others still run.
    """
    found: dict[str, Any] = {}
    for runtime in runtimes:
        print(f"  latency: worker runtime {runtime}", flush=True)
        runtime_logs = logs / f"latency-{runtime}"
        runtime_logs.mkdir(exist_ok=True)
        settings = base.model_copy(update={"topic_prefix": f"benchlat{uuid.uuid4().hex[:6]}."})
        try:
            found[runtime] = _measure_runtime(settings, runtime_logs, rates, runtime)
        except Exception as error:  # one runtime failing must not lose the other's figures
            print(f"    failed: {error}", flush=True)
            found[runtime] = {"prefix": settings.topic_prefix, "error": str(error)}
    return {
        "runtimes": found,
        "target": {
            "rate": P99_TARGET_RATE,
            "p99_ms": P99_TARGET_MS,
            "lag_drain_seconds": LAG_DRAIN_SECONDS,
        },
    }


def _measure_runtime(
    settings: Settings, logs: Path, rates: tuple[tuple[int, float], ...], runtime: str
) -> dict[str, Any]:
    prefix = settings.topic_prefix
    env = {
        **environment(settings, settings.bootstrap_servers, settings.dsn),
        "QMSFLOW_APP_ID": settings.app_id,
        "QMSFLOW_WORKER_RUNTIME": runtime,  # whatever the caller's shell says
    }
    catalog = load_catalog()
    ingest = [settings.topic(t.name) for t in catalog.by_role("ingest")]
    canonical = settings.topic("quality.events.v1")
    create_topics(settings, catalog, echo=_quiet)
    clock = ArrivalClock(settings, ingest)
    clock.start()
    lag = WorkerLag(settings, ingest_group(settings, runtime), ingest)
    lag.start()
    processes = PipelineProcesses(settings, env, logs)
    processes.start_worker()
    processes.start_sink()
    committed = _sink_committed(settings.dsn, settings.topic(f"{settings.app_id}-sink"), canonical)
    phases: list[Phase] = []
    stored = 0
    try:
        warm = produce_demo(
            settings,
            count=300,
            duplicate_rate=0,
            seed=zlib.crc32(f"{prefix}warm".encode()),  # fresh ids: rows are keyed by event_id
            rate=100,
            echo=_quiet,
        )
        stored += len(warm.unique_event_ids)
        if not _wait_stored(committed, stored, 180, processes.assert_alive):
            raise RuntimeError("latency warm-up: the pipeline stored nothing within 180 s")
        for rate, seconds in rates:
            phase = Phase(rate, seconds)
            count = int(rate * seconds)
            print(f"    offering {rate:,}/s for {seconds:.0f} s ({count:,} events)", flush=True)
            started = time.monotonic()
            report = produce_demo(
                settings,
                count=count,
                duplicate_rate=DUPLICATES,
                seed=zlib.crc32(f"{prefix}{rate}".encode()),
                rate=rate,
                echo=_quiet,
            )
            produced = time.monotonic()
            phase.produce_seconds = produced - started
            phase.sent, phase.event_ids = report.sent, set(report.unique_event_ids)
            stored += len(phase.event_ids)
            drained = _wait_stored(committed, stored, 240, processes.assert_alive)
            waited = time.monotonic() - started
            # the lag's drain is judged on samples after the producer stopped: wait for them
            _wait_drained(lag, produced, processes.assert_alive)
            phase.worker_lag = phase_lag(lag.samples, started, produced, rate)
            print(
                f"    produced in {phase.produce_seconds:.1f} s, stored after {waited:.1f} s,"
                f" worker lag {_lag_text(phase.worker_lag)}",
                flush=True,
            )
            if not drained:
                print("    (not every row stored within 240 s: latencies cover the stored ones)")
            phases.append(phase)
    finally:
        processes.stop()
        clock.stop()
        lag.stop()
    return {
        "prefix": prefix,
        "app_id": settings.app_id,
        "ingest_group": ingest_group(settings, runtime),
        "rates": _latencies(settings, phases, clock.arrived, ingest),
    }


def _wait_drained(lag: WorkerLag, produced: float, alive: Callable[[], None]) -> None:
    """Until a sample after `produced` shows no lag (at most 60 s more), so the drain is known.

    Called once the rows are stored: the worker's commit trails its output by at most a commit
    interval, so a lag still above 0 a minute later is reported as not drained.
    """
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        alive()
        if any(at >= produced and n <= 0 for at, n in lag.samples[-40:]):
            return
        time.sleep(_LAG_SAMPLE_SECONDS)


def _lag_text(lag: dict[str, Any]) -> str:
    peak = "–" if lag["max_records"] is None else f"≤ {lag['max_records']:,} records"
    drained = lag["drained_after_seconds"]
    after = "not drained" if drained is None else f"drained {drained:.1f} s after the producer"
    return f"{peak}, {after}"


def _latencies(
    settings: Settings,
    phases: list[Phase],
    arrived: dict[Coordinates, float],
    ingest: list[str],
) -> list[dict[str, Any]]:
    stamps = _timestamps(settings, ingest)
    with psycopg.connect(settings.dsn) as conn:
        rows = conn.execute(
            "SELECT event_id, source_topic, source_partition, source_offset,"
            " extract(epoch FROM ingested_at) * 1000, extract(epoch FROM loaded_at) * 1000"
            " FROM qms.quality_event WHERE kafka_topic = %s",
            (settings.topic("quality.events.v1"),),
        ).fetchall()
    produced: dict[str, float] = {}  # event_id → producer timestamp (ms)
    by_event: dict[str, tuple[float, float, float, float | None]] = {}
    for uuid_id, topic, partition, offset, ingested, loaded in rows:
        event_id, at = str(uuid_id), (topic, partition, offset)
        if at not in stamps:
            continue
        produced[event_id] = stamps[at]
        by_event[event_id] = (stamps[at], float(ingested), float(loaded), arrived.get(at))
    commands: dict[str, list[float]] = {}
    for trigger, ts in _commands(settings):
        if trigger in produced:
            commands.setdefault(trigger, []).append(ts - produced[trigger])
    results = []
    for phase in phases:
        to_row, to_ingest, ingest_to_row, kafka_only, to_command = [], [], [], [], []
        for event_id in phase.event_ids:
            if event_id not in by_event:
                continue
            sent, ingested, loaded, seen = by_event[event_id]
            to_row.append(loaded - sent)
            to_ingest.append(ingested - sent)
            ingest_to_row.append(loaded - ingested)
            if seen is not None:
                kafka_only.append(seen - sent)
            to_command.extend(commands.get(event_id, []))
        results.append(
            {
                "offered_per_second": phase.rate,
                "seconds": phase.seconds,
                "sent": phase.sent,
                "unique": len(phase.event_ids),
                "achieved_offer_per_second": phase.sent / phase.produce_seconds
                if phase.produce_seconds
                else None,
                "stored": len(to_row),
                "producer_to_row": summary(to_row),
                "producer_to_ingested": summary(to_ingest),
                "ingested_to_row": summary(ingest_to_row),
                "producer_to_quarantine_command": summary(to_command),
                "baseline_producer_to_plain_consumer": summary(kafka_only),
                "worker_lag": phase.worker_lag,
            }
        )
    return results


def by_runtime(latency: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The latency results per worker runtime; a file from before runtimes is the faust one's."""
    if "runtimes" in latency:
        return dict(latency["runtimes"])
    return {"faust": latency}


def prefixes(latency: dict[str, Any]) -> list[str]:
    """The topic prefixes the latency step used (its topics are deleted afterwards)."""
    return [r["prefix"] for r in by_runtime(latency).values() if "prefix" in r]


def format_latency(latency: dict[str, Any]) -> str:
    """The latency table as Markdown: one row per runtime, rate and path; p50/p95/p99/max ms."""
    lines = [
        "| runtime | offered /s | path | n | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    paths = (
        ("producer_to_row", "producer → Postgres row"),
        ("producer_to_ingested", "  of which producer → ingest"),
        ("ingested_to_row", "  of which ingest → row"),
        ("producer_to_quarantine_command", "producer → quarantine command"),
        ("baseline_producer_to_plain_consumer", "baseline: producer → plain consumer"),
    )
    for runtime, result in by_runtime(latency).items():
        if "error" in result:
            lines.append(f"| {runtime} | – | failed: {result['error'][:80]} | – | – | – | – | – |")
            continue
        for entry in result["rates"]:
            rate = f"{entry['offered_per_second']:,}"
            for key, label in paths:
                s = entry[key]
                if s is None:
                    lines.append(f"| {runtime} | {rate} | {label} | 0 | – | – | – | – |")
                    continue
                lines.append(
                    f"| {runtime} | {rate} | {label} | {s['count']:,} | "
                    f"{s['p50_ms']:,.0f} | {s['p95_ms']:,.0f} | {s['p99_ms']:,.0f} | "
                    f"{s['max_ms']:,.0f} |"
                )
            lag = entry.get("worker_lag")
            if lag:
                lines.append(f"| {runtime} | {rate} | worker lag: {_lag_text(lag)} | | | | | |")
    return "\n".join(lines)


def latency_checks(latency: dict[str, Any]) -> list[str]:
    """The issue's latency target per runtime: p99 at 2,000/s with the worker's lag bounded."""
    target = latency["target"]
    name = f"p99 latency ≤ {target['p99_ms']:,.0f} ms at {target['rate']:,}/s, lag bounded"
    lines = []
    for runtime, result in by_runtime(latency).items():
        label = f"{name}, {runtime} runtime"
        entry = next(
            (e for e in result.get("rates", ()) if e["offered_per_second"] == target["rate"]),
            None,
        )
        if entry is None or entry["producer_to_row"] is None:
            lines.append(f"{label}: not measured")
            continue
        p99 = entry["producer_to_row"]["p99_ms"]
        lag = entry.get("worker_lag") or {}
        bounded = lag.get("bounded")  # None: a result file from before lag was sampled
        lag_note = "" if bounded is None else f", worker lag {_lag_text(lag)}"
        if p99 <= target["p99_ms"] and bounded is not False:
            lines.append(f"{label}: met ({p99:,.0f} ms ≤ {target['p99_ms']:,.0f}{lag_note})")
            continue
        over = (
            f"{p99:,.0f} ms vs ≤ {target['p99_ms']:,.0f} ms wanted "
            f"({p99 / target['p99_ms']:.1f}× over)"
            if p99 > target["p99_ms"]
            else f"{p99:,.0f} ms ≤ {target['p99_ms']:,.0f} but the lag was not bounded"
        )
        lines.append(f"{label}: MISSED: {over}{lag_note}")
    return lines


def latency_check(latency: dict[str, Any]) -> str:
    """The latency target lines, one per runtime, as printed after the tables."""
    return "\n".join(latency_checks(latency))


def rates_from_environment() -> tuple[tuple[int, float], ...]:
    """BENCH_LATENCY_RATES as `rate:seconds,…` (e.g. `500:20,2000:10`), else RATES."""
    text = os.environ.get("BENCH_LATENCY_RATES", "")
    if not text:
        return RATES
    pairs = [item.split(":") for item in text.split(",") if item]
    return tuple((int(r), float(s)) for r, s in pairs)
