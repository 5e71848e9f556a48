"""The PNG: median rate per measurement (bars) with every run (dots), log scale; CPU per event."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a build machine
import matplotlib.pyplot as plt

from bench.results_model import (
    E2E_FLOOR_PER_SECOND,
    E2E_TARGET_PER_SECOND,
    MEASUREMENTS,
    WORKER_CPU_TARGET_US,
    Measurement,
    Run,
    cpu_medians,
    medians,
    runs_from_document,
)

_SHORT = {
    "e2e": "qmsflow\nend-to-end",
    "e2e_batch": "qmsflow e2e\nbatch runtime",
    "naive_faust": "(b) naive\nFaust",
    "quix_peer": "Quix Streams\npeer",
    "passthrough": "(a) Kafka\npassthrough",
    "sink_alone": "qmsflow\nsink alone",
    "copy": "(c) raw\nCOPY",
    "sink_incident": "sink\nincident",
    "copy_incident": "(c) COPY\nincident",
    "sink_golden_record": "sink golden\nrecord",
    "copy_golden_record": "(c) COPY\ngolden",
}
_BASELINES = frozenset(
    {"naive_faust", "quix_peer", "passthrough", "copy", "copy_incident", "copy_golden_record"}
)
_GROUPS = (
    ("events/s through Kafka", ("e2e", "e2e_batch", "naive_faust", "quix_peer", "passthrough")),
    (
        "rows/s into Postgres",
        (
            "sink_alone",
            "copy",
            "sink_incident",
            "copy_incident",
            "sink_golden_record",
            "copy_golden_record",
        ),
    ),
)


#: the processes whose CPU per event is drawn, in order: (measurement, process, label)
_CPU_BARS: tuple[tuple[Measurement, str, str], ...] = (
    ("e2e", "worker", "worker\n(e2e)"),
    ("e2e_batch", "worker", "worker\n(batch)"),
    ("naive_faust", "naive_faust", "(b) naive\nFaust"),
    ("quix_peer", "quix_peer", "Quix\npeer"),
    ("e2e", "sink", "sink\n(e2e)"),
    ("e2e_batch", "sink", "sink\n(batch)"),
)


def plot(document: Mapping[str, Any], path: Path) -> bool:
    """Kafka-side and Postgres-side rates (median bars, run dots), and CPU per event, to `path`.

    The CPU panel is drawn when the runs carry CPU readings (result schema 2). Nothing is drawn
    for a bench without throughput runs (`BENCH_REPEATS=0`, the other steps only): a log scale
    has no axis without values. Returns whether the file was written.
    """
    runs = runs_from_document(document)
    if not runs:
        return False
    rates = medians(runs)
    m = document["machine"]
    with_cpu = any(run.cpu for run in runs)
    widths = [2, 3, 2] if with_cpu else [2, 3]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(6 * len(widths), 4.5), gridspec_kw={"width_ratios": widths}
    )
    if with_cpu:
        _plot_cpu(axes[2], runs)
    for ax, (title, names) in zip(axes[:2], _GROUPS, strict=True):
        shown = [n for n in names if n in rates and n in MEASUREMENTS]
        xs = range(len(shown))
        bars = ax.bar(
            xs,
            [rates[n] for n in shown],
            color=["#aaaaaa" if n in _BASELINES else "#1f77b4" for n in shown],
        )
        for x, name in zip(xs, shown, strict=True):
            ys = [r.per_second for r in runs if r.measurement == name]
            ax.scatter([x] * len(ys), ys, color="black", s=12, zorder=3)
        ax.bar_label(bars, labels=[f"{rates[n]:,.0f}" for n in shown], padding=2, fontsize=8)
        ax.set_xticks(list(xs), [_SHORT[n] for n in shown], fontsize=8)
        if shown:  # a log scale has no axis without values
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    axes[0].axhline(
        E2E_TARGET_PER_SECOND,
        color="red",
        linestyle="--",
        linewidth=1,
        label=f"target {E2E_TARGET_PER_SECOND:,.0f}/s (issue 8)",
    )
    axes[0].axhline(
        E2E_FLOOR_PER_SECOND,
        color="darkorange",
        linestyle="--",
        linewidth=1,
        label=f"target {E2E_FLOOR_PER_SECOND:,.0f}/s (issue 16)",
    )
    axes[0].legend(fontsize=8, loc="upper left")
    events = document["parameters"]["events"]
    fig.suptitle(
        f"qmsflow bench {document['started_at']}: {events:,} events, median of "
        f"{document['parameters']['repeats']} (dots: runs); {m['nproc']} CPUs {m['cpu_model']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_cpu(ax: Any, runs: list[Run]) -> None:
    """µs of CPU per unique event: after the first output (solid) and from start (light)."""
    cpu = cpu_medians(runs)
    shown = [(m, p, label) for m, p, label in _CPU_BARS if p in cpu.get(m, {})]
    xs = range(len(shown))
    steady = [cpu[m][p].steady_us_per_event or 0.0 for m, p, _ in shown]
    total = [cpu[m][p].total_us_per_event or 0.0 for m, p, _ in shown]
    colors = ["#aaaaaa" if m in _BASELINES else "#1f77b4" for m, _, _ in shown]
    bars = ax.bar([x - 0.2 for x in xs], steady, 0.4, color=colors, label="after the first output")
    ax.bar([x + 0.2 for x in xs], total, 0.4, color=colors, alpha=0.4, label="from process start")
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in steady], padding=2, fontsize=8)
    for x, (measurement, process, _) in zip(xs, shown, strict=True):
        ys = [
            u.steady_us_per_event
            for r in runs
            if r.measurement == measurement
            for u in r.cpu
            if u.process == process and u.steady_us_per_event is not None
        ]
        ax.scatter([x - 0.2] * len(ys), ys, color="black", s=12, zorder=3)
    ax.axhline(
        WORKER_CPU_TARGET_US,
        color="darkorange",
        linestyle="--",
        linewidth=1,
        label=f"worker target {WORKER_CPU_TARGET_US:,.0f} µs (issue 16)",
    )
    ax.set_xticks(list(xs), [label for _, _, label in shown], fontsize=8)
    ax.set_ylabel("µs of CPU per unique event", fontsize=8)
    ax.set_title("CPU per event (median; dots: runs)", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")


def plot_more(document: Mapping[str, Any], path: Path) -> None:
    """Latency percentiles per offered rate, throughput per configuration, state bytes per key."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    latency = document.get("latency")
    if latency:
        _plot_latency(axes[0], latency)
    scale = [r for r in document.get("scale") or [] if "per_second" in r]
    if scale:
        ax = axes[1]
        runtimes = list(dict.fromkeys(r.get("runtime", "faust") for r in scale))
        labels = [
            f"{r['workers']}w {r['partitions']}p"
            + (f"\n{r.get('runtime', 'faust')}" if len(runtimes) > 1 else "")
            for r in scale
        ]
        colors = [_RUNTIME_COLORS.get(r.get("runtime", "faust"), "#1f77b4") for r in scale]
        bars = ax.bar(range(len(scale)), [r["per_second"] for r in scale], color=colors)
        ax.bar_label(bars, labels=[f"{r['per_second']:,.0f}" for r in scale], fontsize=7)
        ax.set_xticks(range(len(scale)), labels, fontsize=7)
        ax.set_title("end-to-end events/s by workers (w) and partitions (p)", fontsize=10)
    state = [r for r in document.get("state") or [] if "error" not in r]
    if state:
        ax = axes[2]
        slots = range(len(state))
        ax.bar(
            [x - 0.2 for x in slots], [r["disk_bytes_per_key"] for r in state], 0.4, label="disk"
        )
        ax.bar(
            [x + 0.2 for x in slots],
            [r["baseline_payload_bytes_per_key"] for r in state],
            0.4,
            color="#aaaaaa",
            label="payload (baseline)",
        )
        ax.axhline(200, color="red", linestyle="--", linewidth=1, label="target 200 B")
        ax.set_xticks(list(slots), [f"{r['keys']:,} keys" for r in state], fontsize=8)
        ax.set_ylabel("bytes per key", fontsize=8)
        ax.set_title("dedup state on disk per key", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"qmsflow bench {document['started_at']}: latency, scale, state", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: one colour per worker runtime in the latency and scale panels
_RUNTIME_COLORS = {"faust": "#1f77b4", "batch": "#2ca02c"}


def _plot_latency(ax: Any, latency: Mapping[str, Any]) -> None:
    """p50 (solid) and p99 (light) producer → row per runtime and rate; the baseline in grey."""
    results = latency.get("runtimes", {"faust": latency})  # older files: the faust run only
    series = [
        (f"{runtime} → Postgres row", result["rates"], "producer_to_row", color)
        for runtime, result in results.items()
        if "rates" in result
        for color in (_RUNTIME_COLORS.get(runtime, "#ff7f0e"),)
    ]
    if not series:
        return
    first = series[0][1]
    series.append(
        ("baseline: → plain consumer", first, "baseline_producer_to_plain_consumer", "#aaaaaa")
    )
    rates = [e["offered_per_second"] for e in first]
    width = 0.8 / len(series)
    for n, (label, entries, key, color) in enumerate(series):
        by_rate = {e["offered_per_second"]: e for e in entries}
        p50 = [((by_rate.get(r) or {}).get(key) or {}).get("p50_ms", 0) for r in rates]
        p99 = [((by_rate.get(r) or {}).get(key) or {}).get("p99_ms", 0) for r in rates]
        xs = [x + (n - (len(series) - 1) / 2) * width for x in range(len(rates))]
        ax.bar(xs, p99, width, color=color, alpha=0.45)
        ax.bar(xs, p50, width, color=color, label=f"{label} (p50 solid, p99 light)")
    target = latency["target"]
    ax.axhline(
        target["p99_ms"],
        color="red",
        linestyle="--",
        linewidth=1,
        label=f"target p99 ≤ {target['p99_ms']:,.0f} ms at {target['rate']:,}/s",
    )
    for n, (runtime, result) in enumerate(results.items()):
        entry = next(
            (e for e in result.get("rates", ()) if e["offered_per_second"] == target["rate"]),
            None,
        )
        if entry is None or entry.get("producer_to_row") is None or target["rate"] not in rates:
            continue
        lag = (entry.get("worker_lag") or {}).get("bounded")
        met = entry["producer_to_row"]["p99_ms"] <= target["p99_ms"] and lag is not False
        ax.annotate(
            f"{runtime}: {'met' if met else 'missed'}",
            xy=(rates.index(target["rate"]), target["p99_ms"]),
            xytext=(0, 4 + 10 * n),
            textcoords="offset points",
            ha="center",
            fontsize=7,
            color="green" if met else "red",
        )
    ax.set_xticks(range(len(rates)), [f"{r:,}/s" for r in rates], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms from the producer's timestamp", fontsize=8)
    ax.set_title("latency at fixed offered rates, per worker runtime", fontsize=10)
    ax.legend(fontsize=6)


def plot_soak(document: Mapping[str, Any], path: Path) -> None:
    """Worker and sink RSS over the soak, each with its ±10% band around the baseline median."""
    samples = document["samples"]
    params = document["parameters"]
    m = document["machine"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    minutes = [s["seconds"] / 60 for s in samples]
    mib = 1024**2
    for role, color in (("worker", "#1f77b4"), ("sink", "#ff7f0e")):
        verdict = document[role]
        ys = [s[f"{role}_rss_bytes"] / mib for s in samples]
        state = "flat" if verdict["flat"] else "NOT flat"
        ax.plot(minutes, ys, marker=".", color=color, label=f"{role} RSS ({state})")
        ax.axhspan(verdict["low_bytes"] / mib, verdict["high_bytes"] / mib, color=color, alpha=0.12)
        ax.axhline(verdict["baseline_bytes"] / mib, color=color, linestyle=":", linewidth=1)
    warmup, baseline = params["warmup_seconds"] / 60, params["baseline_seconds"] / 60
    ax.axvspan(0, warmup, color="#dddddd", alpha=0.6, label="warm-up (not judged)")
    ax.axvline(
        warmup + baseline, color="grey", linestyle="--", linewidth=1, label="end of baseline window"
    )
    ax.set_xlabel("minutes")
    ax.set_ylabel("VmRSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"qmsflow soak {document['started_at']}: {params['rate_per_second']:,.0f} records/s for "
        f"{params['seconds'] / 60:.0f} min, band ±{params['tolerance']:.0%} around the baseline "
        f"median; {m['nproc']} CPUs {m['cpu_model']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
