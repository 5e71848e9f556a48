"""Dedup state at scale: bytes per key on disk and resident memory, at 1M (and 10M) distinct keys.

Run as its own process per key count (`python -m bench.state N`, which prints one JSON object),
so its resident set size is the state's and nothing else's. It fills what a worker holds for N
remembered event ids: the `dedup-seen` table's RocksDB store, opened with the options the worker
gives every table (`streams.app.rocksdb_options`: bounded memtables and block cache), written with
the table's JSON key and value ([fingerprint, recorded_at_us, partition]), flushed and compacted.
Nothing else is kept per id: expiry reads the marks from the store (streams.ingest), so resident
memory should not grow with the key count.
The baseline is the payload itself: the JSON key and value bytes, what an ideal store would keep.
The changelog topic holds one compacted record per key: payload plus Kafka's per-record overhead.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

#: key counts measured by default: the issue's 1M and 10M
KEY_COUNTS = (1_000_000, 10_000_000)
_WRITE_BATCH = 10_000  # keys per RocksDB write batch: amortises the Python → RocksDB calls


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fill(keys: int) -> dict[str, Any]:
    """Write `keys` dedup marks to a fresh store and queue; measure disk, memory and time."""
    from faust.stores.rocksdb import RocksDBOptions
    from rocksdict import WriteBatch

    from qmsflow.quality.dedup import SeenEvent
    from qmsflow.settings import Settings
    from streams.app import rocksdb_options

    directory = Path(tempfile.mkdtemp(prefix="bench-state-"))
    try:
        options: dict[str, Any] = dict(rocksdb_options(Settings()))
        rss_before = _rss_bytes()
        db = RocksDBOptions(**options).open(directory / "dedup-seen-0.db")
        payload = 0
        started = time.monotonic()
        base_us = int(time.time() * 1_000_000)
        batch = WriteBatch(raw_mode=True)
        for n in range(keys):
            event_id = str(uuid.uuid4())
            seen = SeenEvent(uuid.uuid4().hex + uuid.uuid4().hex, base_us + n, n % 6)
            key, value = orjson.dumps(event_id), orjson.dumps(list(seen))
            payload += len(key) + len(value)
            batch.put(key, value)
            if (n + 1) % _WRITE_BATCH == 0:
                db.write(batch)
                batch = WriteBatch(raw_mode=True)
        db.write(batch)
        filled = time.monotonic() - started
        rss_after = _rss_bytes()
        db.flush()
        db.compact_range(None, None)
        db.close()
        disk = _disk_bytes(directory)
        return {
            "keys": keys,
            "fill_seconds": filled,
            "disk_bytes": disk,
            "disk_bytes_per_key": disk / keys,
            "baseline_payload_bytes_per_key": payload / keys,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_bytes_per_key": (rss_after - rss_before) / keys,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rocksdb_options": options,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure_state(counts: tuple[int, ...] = KEY_COUNTS, timeout: float = 600) -> list[Any]:
    """One child process per key count; its JSON result, or why there is none."""
    results: list[Any] = []
    for keys in counts:
        print(f"  state: {keys:,} distinct dedup keys …", flush=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.state", str(keys)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"    {result['disk_bytes_per_key']:.0f} B/key on disk "
                f"(payload {result['baseline_payload_bytes_per_key']:.0f}), "
                f"{result['rss_bytes_per_key']:.0f} B/key RSS, filled in "
                f"{result['fill_seconds']:.0f} s",
                flush=True,
            )
            results.append(result)
        except (subprocess.SubprocessError, ValueError, IndexError) as error:
            print(f"    not measured: {error}", flush=True)
            results.append({"keys": keys, "error": str(error)})
    return results


if __name__ == "__main__":
    print(json.dumps(fill(int(sys.argv[1]))))


#: the issue's target: dedup state on disk per key
BYTES_PER_KEY_TARGET = 200.0


def format_state(results: list[Any]) -> str:
    """The state table as Markdown: disk and memory per key against the payload."""
    lines = [
        "| distinct keys | disk B/key | payload B/key (baseline) | RSS B/key | RSS total MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['keys']:,} | not measured | – | – | – |")
            continue
        lines.append(
            f"| {r['keys']:,} | {r['disk_bytes_per_key']:.0f} | "
            f"{r['baseline_payload_bytes_per_key']:.0f} | {r['rss_bytes_per_key']:.0f} | "
            f"{r['rss_after_bytes'] / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def state_check(results: list[Any]) -> str:
    """The issue's state target on the largest key count measured."""
    measured = [r for r in results if "error" not in r]
    if not measured:
        return "dedup state per key: not measured"
    largest = max(measured, key=lambda r: r["keys"])
    per_key = largest["disk_bytes_per_key"]
    at = f"at {largest['keys']:,} keys"
    if per_key <= BYTES_PER_KEY_TARGET:
        return f"dedup state per key {at}: met ({per_key:.0f} B ≤ {BYTES_PER_KEY_TARGET:.0f})"
    return (
        f"dedup state per key {at}: MISSED: {per_key:.0f} B vs ≤ {BYTES_PER_KEY_TARGET:.0f} B "
        f"({per_key / BYTES_PER_KEY_TARGET:.1f}× over)"
    )
