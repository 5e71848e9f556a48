"""The pure part of the benchmark: run records, medians, ratios, targets and the result JSON.

No Kafka, no Postgres: everything here is unit-tested (tests/unit/bench).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: bump when the JSON's shape changes, so older files can still be told apart
SCHEMA_VERSION = 1

Measurement = Literal[
    "e2e",
    "passthrough",
    "naive_faust",
    "copy",
    "sink_alone",
    "sink_incident",
    "copy_incident",
    "sink_golden_record",
    "copy_golden_record",
]
MEASUREMENTS: tuple[Measurement, ...] = (
    "e2e",
    "passthrough",
    "naive_faust",
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
    "passthrough": "(a) confluent-kafka consume → produce passthrough",
    "naive_faust": "(b) naive Faust agent, decode + awaited send",
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


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets against the measured medians."""

    target: str
    wanted: float
    measured: float | None
    met: bool

    def sentence(self) -> str:
        """A plain statement: met, or missed and by how much."""
        if self.measured is None:
            return f"{self.target}: not measured"
        if self.met:
            return f"{self.target}: met ({self.measured:,.2f} ≥ {self.wanted:,.2f})"
        return (
            f"{self.target}: MISSED: {self.measured:,.2f} vs {self.wanted:,.2f} wanted "
            f"({self.measured / self.wanted:.1%} of the target, {self.wanted / self.measured:.1f}× "
            "short)"
            if self.measured > 0
            else f"{self.target}: MISSED: nothing measured"
        )


def check_targets(rates: Mapping[Measurement, float]) -> list[TargetCheck]:
    """The issue's three throughput targets, met or missed, from median rates."""
    e2e = rates.get("e2e")
    vs_naive = ratio(e2e, rates["naive_faust"]) if e2e and "naive_faust" in rates else None
    checks = [
        ("end-to-end events/s", E2E_TARGET_PER_SECOND, e2e),
        ("end-to-end ÷ naive Faust", NAIVE_FAUST_TARGET_RATIO, vs_naive),
    ]
    for sink, copy in SINK_BOUNDS.items():
        if sink != "sink_alone" and sink not in rates:
            continue  # the upserted tables are absent from results written before them
        measured = rates.get(sink)
        vs_copy = ratio(measured, rates[copy]) if measured is not None and copy in rates else None
        name = "sink ÷ raw COPY" + ("" if sink == "sink_alone" else f" ({_SINK_TABLES[sink]})")
        checks.append((name, SINK_COPY_TARGET_RATIO, vs_copy))
    return [
        TargetCheck(name, wanted, got, got is not None and got >= wanted)
        for name, wanted, got in checks
    ]


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
            }
            for run in runs
        ],
        "medians_per_second": {m: rates[m] for m in MEASUREMENTS if m in rates},
        "targets": [asdict(check) for check in check_targets(rates)],
        "notes": list(notes),
    }


def runs_from_document(document: Mapping[str, Any]) -> list[Run]:
    """The runs of a result JSON, back as `Run`s (for the plot and for comparisons)."""
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"schema_version: expected {SCHEMA_VERSION}, got {document.get('schema_version')!r}"
        )
    fields = ("measurement", "repetition", "items", "seconds", "first_item_seconds", "completed")
    return [Run(**{f: entry[f] for f in fields}) for entry in document["runs"]]
