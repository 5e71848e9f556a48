"""Running the real worker and sink as processes, for integration and reliability tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from connectors.postgres_sink.migrations import migrate
from qmsflow.kafka.admin import consumed_offsets, create_topics, end_offsets
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog


class PipelineProcesses:
    """The stream worker and the sink of one isolated environment (topic prefix)."""

    def __init__(self, settings: Settings, env: dict[str, str], logs: Path) -> None:
        self.settings = settings
        self.env = env
        self.logs = logs
        self.worker: subprocess.Popen[bytes] | None = None
        self.sink: subprocess.Popen[bytes] | None = None

    def _start(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{role}.log").open("ab") as log:  # the child keeps its own fd
            return subprocess.Popen(
                [sys.executable, "-m", "qmsflow", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self) -> None:
        """Start the Faust worker process."""
        self.worker = self._start("worker", "worker", "--loglevel", "warn")

    def start_sink(self) -> None:
        """Start the sink process."""
        self.sink = self._start("sink", "sink")

    def kill_sink(self) -> None:
        """SIGKILL: no flush, no goodbye, as a crashed pod or an OOM kill."""
        assert self.sink is not None
        self.sink.send_signal(signal.SIGKILL)
        self.sink.wait(10)

    def stop(self) -> None:
        """SIGTERM both processes; SIGKILL what has not stopped after 30 s."""
        for process in (self.sink, self.worker):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)  # reap it: an unreaped child is a ResourceWarning

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of both processes' logs, for failure messages."""
        parts = []
        for role in ("worker", "sink"):
            path = self.logs / f"{role}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {role}.log\n" + "\n".join(tail))
        return "\n".join(parts)

    def assert_alive(self) -> None:
        """Fail, with the logs, if either process has died."""
        for role, process in (("worker", self.worker), ("sink", self.sink)):
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{role} exited with {process.returncode}\n{self.log_tail()}")


def prepared_settings(bootstrap: str, dsn: str, prefix: str, **overrides: Any) -> Settings:
    """One test environment's settings (its topic prefix), with its topics and tables made."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, database_url=dsn, topic_prefix=prefix, **overrides
    )
    create_topics(settings, load_catalog(), echo=lambda _line: None)
    migrate(dsn, echo=lambda _line: None)
    return settings


def environment(settings: Settings, bootstrap: str, dsn: str) -> dict[str, str]:
    """The child processes' environment: the same cluster, database and prefix as the test."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": dsn,
        "QMSFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QMSFLOW_WEB_PORT": "0",
        "QMSFLOW_SINK_BATCH_SIZE": str(settings.sink_batch_size),
    }


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], None] | None = None,
    interval: float = 0.5,
) -> None:
    """Poll until `condition` holds; fail naming `what` after `timeout` seconds.

    When `alive` is a PipelineProcesses' check, the failure carries the tail of their logs.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        if condition():
            return
        time.sleep(interval)
    message = f"timed out after {timeout:.0f} s waiting for {what}"
    processes = getattr(alive, "__self__", None)
    if isinstance(processes, PipelineProcesses):  # the processes' own words say why
        message += "\n" + processes.log_tail()
    raise AssertionError(message)


def count_rows(dsn: str, table: str, kafka_topic: str) -> int:
    """Rows of one environment in a sink table, told apart by the sinked topic's name."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE kafka_topic = %s", (kafka_topic,)
        ).fetchone()
    return int(row[0]) if row else 0


def worker_read_everything(settings: Settings) -> bool:
    """Whether the worker's groups have committed past every record of the stateful topics.

    Under the `batch` runtime the ingest topics are read by `settings.ingest_group` and nobody in
    the worker reads `quality.events.v1`; the Faust group reads the internal topics (ticks
    excepted: a tick belongs to its partition, not to a position).
    """
    catalog = load_catalog()
    by_group: dict[str, list[str]] = {
        settings.ingest_group: [settings.topic(t.name) for t in catalog.by_role("ingest")]
    }
    stateful = [t for t in catalog.topics if t.role in ("canonical", "internal")]
    faust_topics = [
        settings.topic(t.name)
        for t in stateful
        if t.name != "quality.ticks.v1"
        and not (settings.worker_runtime == "batch" and t.role == "canonical")
    ]
    by_group.setdefault(settings.worker_group, []).extend(faust_topics)
    for group, topics in by_group.items():
        ends = end_offsets(settings, topics)
        done = consumed_offsets(settings, group, topics)
        if not all(done.get(topic, 0) >= n for topic, n in ends.items()):
            return False
    return True
