"""The pure part of the benchmark: run records, medians, ratios, targets and the result JSON.

No Kafka, no Postgres: everything here is unit-tested (tests/unit/bench).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: bump when the JSON's shape changes, so older files can still be told apart
SCHEMA_VERSION = 2
#: the versions `runs_from_document` reads: 2 added CPU per event (version 1 files have none)
READABLE_VERSIONS = (1, 2)

Measurement = Literal[
    "e2e",
    "e2e_batch",
    "passthrough",
    "naive_faust",
    "quix_peer",
    "copy",
    "sink_alone",
    "sink_incident",
    "copy_incident",
    "sink_golden_record",
    "copy_golden_record",
]
MEASUREMENTS: tuple[Measurement, ...] = (
    "e2e",
    "e2e_batch",
    "passthrough",
    "naive_faust",
    "quix_peer",
    "copy",
    "sink_alone",
    "sink_incident",
    "copy_incident",
    "sink_golden_record",
    "copy_golden_record",
)
#: each sink measurement and the COPY of the same rows that bounds it (c)
SINK_BOUNDS: dict[Measurement, Measurement] = {
    "sink_alone": "copy",
    "sink_incident": "copy_incident",
    "sink_golden_record": "copy_golden_record",
}

LABELS: dict[Measurement, str] = {
    "e2e": "qmsflow end-to-end (worker + sink → Postgres)",
    "e2e_batch": "qmsflow end-to-end, batch worker runtime (QMSFLOW_WORKER_RUNTIME=batch)",
    "passthrough": "(a) confluent-kafka consume → produce passthrough",
    "naive_faust": "(b) naive Faust agent, decode + awaited send",
    "quix_peer": "Quix Streams peer, decode + dedup in RocksDB state → topic",
    "copy": "(c) COPY of the canonical rows into Postgres",
    "sink_alone": "qmsflow sink alone (canonical topic → qms.quality_event)",
    "sink_incident": "qmsflow sink alone, upsert (incidents → qms.incident + members)",
    "copy_incident": "(c) COPY of the same qms.incident + member rows",
    "sink_golden_record": "qmsflow sink alone, upsert (md.* → qms.golden_record)",
    "copy_golden_record": "(c) COPY of the same qms.golden_record rows",
}

#: the table named in the target line of each sink measurement
_SINK_TABLES: dict[Measurement, str] = {
    "sink_alone": "qms.quality_event",
    "sink_incident": "qms.incident",
    "sink_golden_record": "qms.golden_record",
}

#: the issue's targets (issue 8): events/s end-to-end, × naive Faust, share of raw COPY
E2E_TARGET_PER_SECOND = 20_000.0
NAIVE_FAUST_TARGET_RATIO = 3.0
SINK_COPY_TARGET_RATIO = 0.5
#: issue 16's targets, judged for each worker runtime: events/s end-to-end, × naive Faust, and
#: the worker's CPU per event after the first row (start-up is a fixed cost, not a per-event one)
E2E_FLOOR_PER_SECOND = 5_000.0
NAIVE_FAUST_FLOOR_RATIO = 2.0
WORKER_CPU_TARGET_US = 150.0
#: issue 16 point 7: qmsflow end-to-end (to Postgres) at least half the Quix Streams peer's rate
#: (to a topic): the peer does less (no sink), so parity is not asked, only the same league
QUIX_PEER_FLOOR_RATIO = 0.5
#: the end-to-end measurements and the worker runtime (QMSFLOW_WORKER_RUNTIME) each one runs
RUNTIMES: dict[Measurement, str] = {"e2e": "faust", "e2e_batch": "batch"}


@dataclass(frozen=True)
class CpuUse:
    """CPU one process of a run had used (utime + stime, in seconds) since it started.

    `at_end_seconds` is read when the run's last output was seen (or at its timeout), before
    the process is stopped; `at_first_seconds` when its first output was seen (None when none
    was). `steady_events` are the unique events done between the two readings, `events` those
    of the whole run. `threads_at_end_seconds` sums the live threads' own counters at the end:
    short of `at_end_seconds` by what exited threads had used. `threads` splits the end reading
    by thread name ("main" is the thread whose id is the process's).
    """

    process: str
    events: int
    at_end_seconds: float
    threads_at_end_seconds: float
    at_first_seconds: float | None = None
    steady_events: int | None = None
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def total_us_per_event(self) -> float | None:
        """µs of CPU per unique event from the process's start, start-up included."""
        return self.at_end_seconds * 1e6 / self.events if self.events > 0 else None

    @property
    def steady_us_per_event(self) -> float | None:
        """µs of CPU per unique event between the first output and the last (None: unseen)."""
        if self.at_first_seconds is None or not self.steady_events:
            return None
        return (self.at_end_seconds - self.at_first_seconds) * 1e6 / self.steady_events


def stat_cpu(stat: str) -> tuple[str, int]:
    """The command name and utime + stime (clock ticks) from the text of /proc/<id>/stat.

    The name is in parentheses and may itself hold spaces and parentheses, so the fields are
    counted from the last ")".
    """
    opened, closed = stat.find("("), stat.rfind(")")
    if opened < 0 or closed < opened:
        raise ValueError(f"/proc stat: expected 'pid (comm) state …', got {stat[:60]!r}")
    fields = stat[closed + 2 :].split()
    if len(fields) < 13:
        raise ValueError(f"/proc stat: expected at least 15 fields, got {len(fields) + 2}")
    # fields[0] is field 3 (state) of proc(5); utime and stime are fields 14 and 15
    return stat[opened + 1 : closed], int(fields[11]) + int(fields[12])


def thread_kind(name: str) -> str:
    """A thread's name less its instance number ("rdk:broker-1", "rdk:broker3": "rdk:broker")."""
    return re.sub(r"(?<=[A-Za-z_:])-?\d+$", "", name)


def events_between(unique: int, want: int, reached_first: int, reached_end: int) -> int:
    """Unique events done between two readings of a progress count that ends at `want`.

    Progress may count records (duplicates included) rather than unique events; the share of
    `want` done between the readings is scaled to `unique`.
    """
    if want <= 0:
        return 0
    return round(unique * max(reached_end - reached_first, 0) / want)


@dataclass(frozen=True)
class Run:
    """One timed measurement: `items` unique events (or rows) done in `seconds`.

    `seconds` runs from the start of the thing measured (process spawn, first call) to the last
    item; `first_item_seconds` is when the first item came out (None when not observed), so the
    start-up share can be told apart from the steady rate.
    """

    measurement: Measurement
    repetition: int
    items: int
    seconds: float
    first_item_seconds: float | None = None
    completed: bool = True
    cpu: tuple[CpuUse, ...] = ()

    @property
    def per_second(self) -> float:
        """Items per second over the whole run, start-up included."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_per_second(self) -> float | None:
        """Items per second from the first item to the last (None when not observed)."""
        if self.first_item_seconds is None:
            return None
        span = self.seconds - self.first_item_seconds
        return self.items / span if span > 0 else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile: expected at least one value, got none")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: expected q in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The 50th percentile."""
    return percentile(values, 50)


def ratio(numerator: float, denominator: float) -> float | None:
    """The quotient numerator / denominator, or None when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else None


def medians(runs: Iterable[Run]) -> dict[Measurement, float]:
    """Median items/s per measurement, over its repetitions."""
    rates: dict[Measurement, list[float]] = {}
    for run in runs:
        rates.setdefault(run.measurement, []).append(run.per_second)
    return {m: median(v) for m, v in rates.items()}


def steady_medians(runs: Iterable[Run]) -> dict[Measurement, float]:
    """Median items/s after the first item per measurement, over the runs that observed it."""
    rates: dict[Measurement, list[float]] = {}
    for run in runs:
        if run.steady_per_second is not None:
            rates.setdefault(run.measurement, []).append(run.steady_per_second)
    return {m: median(v) for m, v in rates.items()}


@dataclass(frozen=True)
class CpuMedian:
    """Median µs of CPU per unique event of one process over a measurement's repetitions."""

    steady_us_per_event: float | None
    total_us_per_event: float | None


def cpu_medians(runs: Iterable[Run]) -> dict[Measurement, dict[str, CpuMedian]]:
    """Per measurement and process, the median µs/event after the first output and in all."""
    steady: dict[tuple[Measurement, str], list[float]] = {}
    total: dict[tuple[Measurement, str], list[float]] = {}
    for run in runs:
        for use in run.cpu:
            key = (run.measurement, use.process)
            steady.setdefault(key, [])
            total.setdefault(key, [])
            if use.steady_us_per_event is not None:
                steady[key].append(use.steady_us_per_event)
            if use.total_us_per_event is not None:
                total[key].append(use.total_us_per_event)
    found: dict[Measurement, dict[str, CpuMedian]] = {}
    for (measurement, process), values in steady.items():
        totals = total[(measurement, process)]
        found.setdefault(measurement, {})[process] = CpuMedian(
            median(values) if values else None, median(totals) if totals else None
        )
    return found


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets against the measured medians.

    A target is a floor (measured ≥ wanted) unless `at_most`, then a ceiling (CPU per event).
    """

    target: str
    wanted: float
    measured: float | None
    met: bool
    at_most: bool = False

    def sentence(self) -> str:
        """A plain statement: met, or missed and by how much."""
        if self.measured is None:
            return f"{self.target}: not measured"
        if self.at_most:
            if self.met:
                return f"{self.target}: met ({self.measured:,.2f} ≤ {self.wanted:,.2f})"
            return (
                f"{self.target}: MISSED: {self.measured:,.2f} vs ≤ {self.wanted:,.2f} wanted "
                f"({self.measured / self.wanted:.1f}× over)"
            )
        if self.met:
            return f"{self.target}: met ({self.measured:,.2f} ≥ {self.wanted:,.2f})"
        return (
            f"{self.target}: MISSED: {self.measured:,.2f} vs {self.wanted:,.2f} wanted "
            f"({self.measured / self.wanted:.1%} of the target, {self.wanted / self.measured:.1f}× "
            "short)"
            if self.measured > 0
            else f"{self.target}: MISSED: nothing measured"
        )


def judge(target: str, wanted: float, measured: float | None, at_most: bool = False) -> TargetCheck:
    """A target met or missed: measured ≥ wanted, or ≤ wanted for a ceiling (`at_most`)."""
    met = measured is not None and (measured <= wanted if at_most else measured >= wanted)
    return TargetCheck(target, wanted, measured, met, at_most)


def check_targets(
    rates: Mapping[Measurement, float],
    cpu: Mapping[Measurement, Mapping[str, CpuMedian]] | None = None,
    steady: Mapping[Measurement, float] | None = None,
) -> list[TargetCheck]:
    """The issues' targets, met or missed, from median rates (and CPU per event, if given).

    Issue 8's throughput targets, then issue 16's for each worker runtime measured ("e2e"
    always; "e2e_batch" when it ran), the Quix peer's ratio "not measured" when it did not
    run; the CPU ceilings only when `cpu` is given (result files of schema version 1 have none).
    With `steady` (rates after the first output) the Quix ratio is judged a second time on them:
    the peer's start-up (a RocksDB store per source partition) can dwarf a short run.
    """
    checks = _issue_8_checks(rates)
    for measurement, runtime in RUNTIMES.items():
        if measurement != "e2e" and measurement not in rates:
            continue
        e2e = rates.get(measurement)
        vs_naive = ratio(e2e, rates["naive_faust"]) if e2e and "naive_faust" in rates else None
        suffix = f", {runtime} runtime (issue 16)"
        checks.append(judge(f"end-to-end events/s{suffix}", E2E_FLOOR_PER_SECOND, e2e))
        checks.append(judge(f"end-to-end ÷ naive Faust{suffix}", NAIVE_FAUST_FLOOR_RATIO, vs_naive))
        vs_quix = ratio(e2e, rates["quix_peer"]) if e2e and "quix_peer" in rates else None
        checks.append(
            judge(f"end-to-end ÷ Quix Streams peer{suffix}", QUIX_PEER_FLOOR_RATIO, vs_quix)
        )
        if steady is not None:
            e2e_steady = steady.get(measurement)
            quix_steady = steady.get("quix_peer")
            vs = ratio(e2e_steady, quix_steady) if e2e_steady and quix_steady else None
            name = f"end-to-end ÷ Quix Streams peer after the first output{suffix}"
            checks.append(judge(name, QUIX_PEER_FLOOR_RATIO, vs))
        if cpu is not None:
            worker = cpu.get(measurement, {}).get("worker")
            used = None if worker is None else worker.steady_us_per_event
            name = f"worker CPU µs/event after the first row{suffix}"
            checks.append(judge(name, WORKER_CPU_TARGET_US, used, at_most=True))
    return checks


def _issue_8_checks(rates: Mapping[Measurement, float]) -> list[TargetCheck]:
    e2e = rates.get("e2e")
    vs_naive = ratio(e2e, rates["naive_faust"]) if e2e and "naive_faust" in rates else None
    checks = [
        judge("end-to-end events/s", E2E_TARGET_PER_SECOND, e2e),
        judge("end-to-end ÷ naive Faust", NAIVE_FAUST_TARGET_RATIO, vs_naive),
    ]
    for sink, copy in SINK_BOUNDS.items():
        if sink != "sink_alone" and sink not in rates:
            continue  # the upserted tables are absent from results written before them
        measured = rates.get(sink)
        vs_copy = ratio(measured, rates[copy]) if measured is not None and copy in rates else None
        name = "sink ÷ raw COPY" + ("" if sink == "sink_alone" else f" ({_SINK_TABLES[sink]})")
        checks.append(judge(name, SINK_COPY_TARGET_RATIO, vs_copy))
    return checks


TableRow = tuple[str, float, float | None, float | None]


def table(rates: Mapping[Measurement, float]) -> list[TableRow]:
    """Rows (label, median/s, ratio to naive Faust, ratio to the passthrough / COPY bound).

    Kafka-side rows are compared with (a) and (b); the sink with (c).
    """
    rows = []
    for m in MEASUREMENTS:
        if m not in rates:
            continue
        postgres = m in SINK_BOUNDS or m in SINK_BOUNDS.values()
        bound = rates.get(SINK_BOUNDS.get(m, m)) if postgres else rates.get("passthrough")
        naive = None if postgres else rates.get("naive_faust")
        rows.append(
            (
                LABELS[m],
                rates[m],
                ratio(rates[m], naive) if naive else None,
                ratio(rates[m], bound) if bound else None,
            )
        )
    return rows


def format_table(rates: Mapping[Measurement, float]) -> str:
    """The table as Markdown, as printed and as pasted into the README."""

    def show(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}×"

    lines = [
        "| measurement | median /s | ÷ (b) naive Faust | ÷ bound ((a) or (c)) |",
        "|---|---:|---:|---:|",
    ]
    for label, rate, naive, bound in table(rates):
        lines.append(f"| {label} | {rate:,.0f} | {show(naive)} | {show(bound)} |")
    return "\n".join(lines)


def format_cpu_table(cpu: Mapping[Measurement, Mapping[str, CpuMedian]]) -> str:
    """CPU per unique event of each measured process, as Markdown."""

    def show(x: float | None) -> str:
        return "–" if x is None else f"{x:,.0f}"

    lines = [
        "| measurement | process | µs/event after the first output | µs/event from its start |",
        "|---|---|---:|---:|",
    ]
    for m in MEASUREMENTS:
        for process, use in cpu.get(m, {}).items():
            lines.append(
                f"| {LABELS[m]} | {process} | {show(use.steady_us_per_event)}"
                f" | {show(use.total_us_per_event)} |"
            )
    return "\n".join(lines)


def cpu_note(cpu: Sequence[CpuUse]) -> str:
    """The CPU per event of a run's processes, as printed after its rate ("" when none)."""
    parts = []
    for use in cpu:
        steady, total = use.steady_us_per_event, use.total_us_per_event
        shown = "–" if steady is None else f"{steady:,.0f}"
        whole = "" if total is None else f" ({total:,.0f} from its start)"
        parts.append(f"{use.process} {shown} µs/event{whole}")
    return ("  CPU: " + ", ".join(parts)) if parts else ""


def result_document(
    *,
    started_at: str,
    machine: Mapping[str, Any],
    versions: Mapping[str, str],
    parameters: Mapping[str, Any],
    runs: Sequence[Run],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON written to bench/results/<started_at>.json: every run, medians and targets."""
    rates = medians(runs)
    cpu = cpu_medians(runs)
    steady = steady_medians(runs)
    return {
        "schema_version": SCHEMA_VERSION,
        "started_at": started_at,
        "machine": dict(machine),
        "versions": dict(versions),
        "parameters": dict(parameters),
        "runs": [
            {
                **asdict(run),
                "per_second": run.per_second,
                "steady_per_second": run.steady_per_second,
                "cpu": [
                    {
                        **asdict(use),
                        "steady_us_per_event": use.steady_us_per_event,
                        "total_us_per_event": use.total_us_per_event,
                    }
                    for use in run.cpu
                ],
            }
            for run in runs
        ],
        "medians_per_second": {m: rates[m] for m in MEASUREMENTS if m in rates},
        "medians_cpu_us_per_event": {
            m: {process: asdict(use) for process, use in cpu[m].items()}
            for m in MEASUREMENTS
            if m in cpu
        },
        "targets": [asdict(check) for check in check_targets(rates, cpu, steady)],
        "notes": list(notes),
    }


def runs_from_document(document: Mapping[str, Any]) -> list[Run]:
    """The runs of a result JSON, back as `Run`s (for the plot and for comparisons)."""
    version = document.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"schema_version: expected one of {READABLE_VERSIONS}, got {version!r}")
    fields = ("measurement", "repetition", "items", "seconds", "first_item_seconds", "completed")
    uses = (
        "process",
        "events",
        "at_end_seconds",
        "threads_at_end_seconds",
        "at_first_seconds",
        "steady_events",
        "threads",
    )
    return [
        Run(
            **{f: entry[f] for f in fields},
            cpu=tuple(CpuUse(**{u: c[u] for u in uses}) for c in entry.get("cpu", ())),
        )
        for entry in document["runs"]
    ]
