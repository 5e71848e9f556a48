"""CPU time of the processes a bench step runs, read from /proc at its first and last output.

A step's processes (worker, sink, a baseline app) are read twice: when the step's first output
is seen (first stored row, first forwarded record) and when its last is, before they are
stopped, so shutdown is not counted. The arithmetic (µs per event) is in bench.results_model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.results_model import CpuUse, events_between, stat_cpu, thread_kind

#: clock ticks per second of utime and stime (USER_HZ, 100 on Linux)
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuReading:
    """One reading of a process: its own counter, and its live threads' summed and by kind."""

    seconds: float
    threads_seconds: float
    threads: dict[str, float]


def read_cpu(pid: int) -> CpuReading | None:
    """CPU (utime + stime) of a process, all its threads and exited ones too; None if gone.

    /proc/<pid>/stat counts every thread the process has had; the per-thread files in
    /proc/<pid>/task only those alive now, which is why both are kept.
    """
    try:
        _name, ticks = stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None
    threads: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name, thread_ticks = stat_cpu((task / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between the listing and the read
        kind = "main" if task.name == str(pid) else thread_kind(name)
        threads[kind] = threads.get(kind, 0.0) + thread_ticks / TICKS
    return CpuReading(ticks / TICKS, sum(threads.values()), threads)


class CpuWatch:
    """The CPU of a step's processes at its first output and at its end (`CpuUse` each).

    Progress is the step's count (rows stored, records forwarded), unless `own` gives a
    process a count of its own: the worker runs ahead of the sink, so the events it did between
    the readings are counted on its output topic, not by the rows stored.
    """

    def __init__(
        self, pids: Mapping[str, int], own: Mapping[str, Callable[[], int]] | None = None
    ) -> None:
        self._pids = dict(pids)
        self._own = dict(own or {})
        self._first: dict[str, tuple[CpuReading | None, int]] = {}
        self._end: dict[str, tuple[CpuReading | None, int]] = {}

    def _read(self, reached: int) -> dict[str, tuple[CpuReading | None, int]]:
        return {
            role: (read_cpu(pid), self._own[role]() if role in self._own else reached)
            for role, pid in self._pids.items()
        }

    def first(self, reached: int) -> None:
        """Read every process now: the first output was seen, the step's count at `reached`."""
        self._first = self._read(reached)

    def end(self, reached: int) -> None:
        """Read every process now: the last output was seen (or the step timed out)."""
        self._end = self._read(reached)

    def uses(self, unique: int, items: int, want: int) -> tuple[CpuUse, ...]:
        """Each process's CPU over the step; a process not readable at the end is left out.

        `unique` events make `want` progress in all; `items` is the step's count of unique
        events done (fewer than `unique` when it timed out).
        """
        uses = []
        for role, (end, reached_end) in self._end.items():
            if end is None:
                continue
            first, reached_first = self._first.get(role, (None, 0))
            uses.append(
                CpuUse(
                    process=role,
                    events=items,
                    at_end_seconds=end.seconds,
                    threads_at_end_seconds=end.threads_seconds,
                    at_first_seconds=None if first is None else first.seconds,
                    steady_events=None
                    if first is None
                    else events_between(unique, want, reached_first, reached_end),
                    threads=end.threads,
                )
            )
        return tuple(uses)
