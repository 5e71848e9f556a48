"""`make soak`: worker and sink RSS under steady demo traffic for 10 minutes, flat or not.

The real `qmsflow worker` and `qmsflow sink` processes on the shared stack, on a fresh topic
prefix (topics deleted afterwards), while demo-mix traffic (5% duplicates) is offered at a fixed
rate from a thread of this process. Every 10 s the VmRSS of both processes is read from
/proc/<pid>/status and the rows the sink has committed are counted, so a pipeline that falls
behind (and would hold a growing backlog) shows. Writes bench/results/soak-<UTC time>.json and
.png (RSS over time with the ±10% band) and states pass or fail for each process; the issue's
target is the worker's. Not part of `make bench`: it takes the full duration.
Environment: QMSFLOW_SOAK_SECONDS (600), QMSFLOW_SOAK_RATE (records/s, 300),
QMSFLOW_SOAK_INTERVAL (s between samples, 10).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import machine, versions
from bench.plot import plot_soak
from bench.rss_flatness import TOLERANCE, Flatness, RssSample, flatness, rss_from_status, windows
from bench.run import DUPLICATES, RESULTS, ROOT, _delete_topics, _quiet, _sink_progress
from connectors.postgres_sink.migrations import migrate
from qmsflow.demo.produce import ProduceReport, produce_demo
from qmsflow.kafka.admin import create_topics
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment


def _rss(pid: int) -> int:
    return rss_from_status(Path(f"/proc/{pid}/status").read_text())


class DemoTrafficThread(threading.Thread):
    """produce_demo at a fixed rate in the background; its report or its error kept."""

    def __init__(self, settings: Settings, count: int, rate: float, seed: int) -> None:
        super().__init__(name="soak-demo-traffic", daemon=True)
        self._settings, self._count, self._rate, self._seed = settings, count, rate, seed
        self.report: ProduceReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Offer the traffic; keep the report, or the error for the main thread to raise."""
        try:
            self.report = produce_demo(
                self._settings,
                count=self._count,
                duplicate_rate=DUPLICATES,
                seed=self._seed,
                rate=self._rate,
                echo=_quiet,
            )
        except BaseException as error:  # reported by the main thread, with the samples kept
            self.error = error


def soak(base: Settings, seconds: float, rate: float, interval: float) -> dict[str, Any]:
    """Run the soak; the result document (samples, verdicts, parameters)."""
    prefix = f"soak{uuid.uuid4().hex[:8]}."
    settings = base.model_copy(update={"topic_prefix": prefix})
    logs = Path(tempfile.mkdtemp(prefix=f"soak-{prefix}"))
    env = environment(settings, settings.bootstrap_servers, settings.dsn)
    events = settings.topic("quality.events.v1")
    worker_samples: list[RssSample] = []
    sink_samples: list[RssSample] = []
    rows: list[tuple[float, int]] = []
    processes = PipelineProcesses(settings, env, logs)
    try:
        create_topics(settings, load_catalog(), echo=_quiet)
        progress = _sink_progress(settings.dsn, settings.topic(f"{settings.app_id}-sink"), events)
        traffic = DemoTrafficThread(
            settings, int(rate * seconds), rate, zlib.crc32(prefix.encode())
        )
        started = time.monotonic()
        processes.start_worker()
        processes.start_sink()
        traffic.start()
        print(f"soak {prefix}: {seconds:.0f} s at {rate:,.0f} records/s; logs {logs}", flush=True)
        print("     t   worker MiB   sink MiB   rows committed", flush=True)
        next_at = started
        while (now := time.monotonic()) - started <= seconds:
            processes.assert_alive()
            if traffic.error is not None:
                raise RuntimeError(f"demo traffic failed: {traffic.error}") from traffic.error
            at = now - started
            assert processes.worker is not None and processes.sink is not None
            worker_samples.append(RssSample(at, _rss(processes.worker.pid)))
            sink_samples.append(RssSample(at, _rss(processes.sink.pid)))
            rows.append((at, progress()))
            print(
                f"  {at:4.0f} s {worker_samples[-1].rss_bytes / 1024**2:10.1f} "
                f"{sink_samples[-1].rss_bytes / 1024**2:10.1f} {rows[-1][1]:16,}",
                flush=True,
            )
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        traffic.join(120)
    finally:
        processes.stop()
        _delete_topics(settings)
        for path in (settings.stack_dir / "faust").glob(f"{prefix}*"):
            shutil.rmtree(path, ignore_errors=True)
    report = traffic.report
    warmup, baseline = windows(seconds)
    worker = flatness(worker_samples, warmup=warmup, baseline=baseline)
    sink = flatness(sink_samples, warmup=warmup, baseline=baseline)
    return {
        "prefix": prefix,
        "parameters": {
            "seconds": seconds,
            "rate_per_second": rate,
            # the worker inherits this process's environment (QMSFLOW_WORKER_RUNTIME)
            "worker_runtime": settings.worker_runtime,
            "interval_seconds": interval,
            "duplicate_rate": DUPLICATES,
            "warmup_seconds": warmup,
            "baseline_seconds": baseline,
            "tolerance": TOLERANCE,
        },
        "sent": None if report is None else report.sent,
        "unique": None if report is None else len(report.unique_event_ids),
        "rows_committed": rows[-1][1] if rows else 0,
        "samples": [
            {
                "seconds": w.seconds,
                "worker_rss_bytes": w.rss_bytes,
                "sink_rss_bytes": s.rss_bytes,
                "rows_committed": r,
            }
            for w, s, (_, r) in zip(worker_samples, sink_samples, rows, strict=True)
        ],
        "worker": asdict(worker),
        "sink": asdict(sink),
        "logs": str(logs),
    }


def main() -> None:
    """Run the soak from the environment's parameters, write the JSON and PNG, print the verdict."""
    seconds = float(os.environ.get("QMSFLOW_SOAK_SECONDS", "600"))
    rate = float(os.environ.get("QMSFLOW_SOAK_RATE", "300"))
    interval = float(os.environ.get("QMSFLOW_SOAK_INTERVAL", "10"))
    base = Settings()
    migrate(base.dsn, echo=_quiet)
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    load_before = os.getloadavg()
    document: dict[str, Any] = {
        "started_at": started_at,
        "machine": machine(),
        "versions": versions(base),
        **soak(base, seconds, rate, interval),
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"soak-{started_at}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    png_path = RESULTS / f"soak-{started_at}.png"
    plot_soak(document, png_path)
    print(
        f"\nsent {document['sent']} records ({document['unique']} unique); "
        f"{document['rows_committed']:,} rows committed by the sink"
    )
    for role in ("worker", "sink"):
        verdict = Flatness(**document[role])
        print(("PASS  " if verdict.flat else "FAIL  ") + verdict.sentence(role))
    if seconds < 600:
        outcome = f"not measured (a {seconds:.0f} s run, shorter than 10 minutes)"
    else:
        outcome = "met" if document["worker"]["flat"] else "MISSED"
    print(f"target (issue 8): worker RSS flat ±10% over a 10-minute run: {outcome}")
    written = [json_path, png_path]
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))


if __name__ == "__main__":
    main()
