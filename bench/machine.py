"""What the numbers were measured on: CPU, memory and the versions of everything in the path."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from qmsflow.settings import Settings

_PACKAGES = ("faust-streaming", "aiokafka", "confluent-kafka", "fastavro", "psycopg", "orjson")


def machine() -> dict[str, Any]:
    """The CPUs (nproc: this process may use), the total memory and the CPU model, from /proc."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text(errors="replace")
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(total.group(1)) / 1024**2, 1) if total else None,
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "kernel": platform.release(),
    }


def versions(settings: Settings) -> dict[str, str]:
    """Python, the client libraries, the broker (from `qmsflow stack status`) and Postgres."""
    found = {"python": sys.version.split()[0]}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    status = subprocess.run(
        [sys.executable, "-m", "qmsflow", "stack", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    kafka = re.search(r"^kafka\s.*\bversion=(\S+)", status, re.MULTILINE)
    found["kafka"] = kafka.group(1) if kafka else "unknown"
    with psycopg.connect(settings.dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    found["postgres"] = str(row[0]) if row else "unknown"
    return found
