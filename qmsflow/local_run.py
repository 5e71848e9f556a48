"""`qmsflow run`: the whole platform on this machine, on demo traffic, with a live summary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psycopg

from qmsflow import stack
from qmsflow.demo.produce import ProduceReport, produce_demo
from qmsflow.kafka.admin import consumed_offsets, create_topics, end_offsets
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog

_SUMMARY_EVERY = 2.0  # seconds between live summary lines
_DRAIN_TIMEOUT = 120.0  # seconds to wait for the pipeline to catch up after the demo ends


@dataclass(frozen=True)
class PipelineCounts:
    """Counts read from Kafka and Postgres (never from the workers' own memory)."""

    ingested: int
    processed: int  # ingest records the worker has committed past
    canonical: int
    dead_letters: int
    rows: int
    dead_letter_rows: int

    def minus(self, other: PipelineCounts) -> PipelineCounts:
        """Counts since `other` was read."""
        return PipelineCounts(
            self.ingested - other.ingested,
            self.processed - other.processed,
            self.canonical - other.canonical,
            self.dead_letters - other.dead_letters,
            self.rows - other.rows,
            self.dead_letter_rows - other.dead_letter_rows,
        )

    @property
    def duplicates_dropped(self) -> int:
        """Processed records that neither became an event nor a dead letter."""
        return max(0, self.processed - self.canonical - self.dead_letters)

    def render(self) -> str:
        """One human line."""
        return (
            f"in {self.ingested:>6} | worker lag {self.ingested - self.processed:>5} | events "
            f"{self.canonical:>6} | duplicates dropped {self.duplicates_dropped:>5} | dead "
            f"letters {self.dead_letters:>3} | Postgres rows {self.rows:>6} "
            f"(+{self.dead_letter_rows} dead letters)"
        )


def read_counts(settings: Settings) -> PipelineCounts:
    """Message counts of the ingest, canonical and DLQ topics, and row counts of the sink."""
    catalog = load_catalog()
    ingest = [settings.topic(t.name) for t in catalog.by_role("ingest")]
    canonical = settings.topic("quality.events.v1")
    dlq = settings.topic("quality.dlq.v1")
    offsets = end_offsets(settings, [*ingest, canonical, dlq])
    processed = consumed_offsets(settings, settings.topic(settings.app_id), ingest)
    with psycopg.connect(settings.dsn) as conn:
        rows, dead_rows = conn.execute(
            "SELECT (SELECT count(*) FROM qms.quality_event),"
            " (SELECT count(*) FROM qms.dead_letter)"
        ).fetchone() or (0, 0)
    return PipelineCounts(
        sum(offsets.get(t, 0) for t in ingest),
        sum(processed.values()),
        offsets.get(canonical, 0),
        offsets.get(dlq, 0),
        rows,
        dead_rows,
    )


def start_process(settings: Settings, role: str, args: list[str]) -> subprocess.Popen[bytes]:
    """Start `python -m qmsflow <args>` with its output in .stack/logs/<role>.log."""
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{role}.log").open("ab") as log_file:  # the child keeps its own fd
        return subprocess.Popen(
            [sys.executable, "-m", "qmsflow", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_local(settings: Settings, *, count: int, rate: float, echo: Callable[[str], None]) -> None:
    """Bring everything up, stream demo traffic through it, and narrate what happens."""
    from connectors.postgres_sink.migrations import migrate

    echo("== local stack")
    stack.up(settings, echo)
    echo("== topics and database")
    create_topics(settings, load_catalog(), echo)
    migrate(settings.dsn, echo)
    before = read_counts(settings)
    echo(f"== starting the stream worker and the sink (logs in {settings.stack_dir / 'logs'})")
    with ExitStack() as running:
        worker = start_process(settings, "worker", ["worker", "--loglevel", "warn"])
        running.callback(stop_process, worker)
        sink = start_process(settings, "sink", ["sink"])
        running.callback(stop_process, sink)
        echo(f"== producing {count} demo records at {rate:.0f}/s (10% duplicates, 20 corrupt)")
        report: list[ProduceReport] = []
        producer = threading.Thread(
            target=lambda: report.append(
                produce_demo(
                    settings,
                    count=count,
                    duplicate_rate=0.1,
                    corrupt=20,
                    rate=rate,
                    seed=int(time.time()),
                    echo=lambda _line: None,
                )
            ),
            daemon=True,
        )
        producer.start()
        drained_since: float | None = None
        while True:
            time.sleep(_SUMMARY_EVERY)
            for name, process in (("worker", worker), ("sink", sink)):
                if process.poll() is not None:
                    _tail(settings.stack_dir / "logs" / f"{name}.log", echo)
                    raise SystemExit(f"the {name} stopped unexpectedly (exit {process.returncode})")
            now = read_counts(settings).minus(before)
            echo(now.render())
            if producer.is_alive() or not report:
                continue
            sent = report[0]
            expected = len(sent.unique_event_ids)
            if now.rows >= expected and now.dead_letter_rows >= sent.corrupt:
                echo(
                    f"== done: {sent.sent + sent.corrupt} records in, {expected} unique events in "
                    f"Postgres, {sent.duplicates} duplicates dropped, {sent.corrupt} dead letters"
                )
                break
            drained_since = drained_since or time.monotonic()
            if time.monotonic() - drained_since > _DRAIN_TIMEOUT:
                raise SystemExit(f"the pipeline did not drain within {_DRAIN_TIMEOUT:.0f} s")
    echo("worker and sink stopped; the stack keeps running (`make stack-down` stops it)")
    echo(
        f"query the results: psql '{settings.dsn}' -c 'select event_type, count(*) "
        "from qms.quality_event group by 1'"
    )


def _tail(path: Path, echo: Callable[[str], None], lines: int = 30) -> None:
    if path.exists():
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            echo(f"  | {line}")
