"""The PNG: median rate per measurement (bars) with every run (dots), log scale."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a build machine
import matplotlib.pyplot as plt

from bench.results_model import MEASUREMENTS, medians, runs_from_document

_SHORT = {
    "e2e": "qmsflow\nend-to-end",
    "naive_faust": "(b) naive\nFaust",
    "passthrough": "(a) Kafka\npassthrough",
    "sink_alone": "qmsflow\nsink alone",
    "copy": "(c) raw\nCOPY",
}
_GROUPS = (
    ("events/s through Kafka", ("e2e", "naive_faust", "passthrough")),
    ("rows/s into Postgres", ("sink_alone", "copy")),
)


def plot(document: Mapping[str, Any], path: Path) -> None:
    """Two panels (Kafka side, Postgres side), median bars and run dots, written to `path`."""
    runs = runs_from_document(document)
    rates = medians(runs)
    m = document["machine"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for ax, (title, names) in zip(axes, _GROUPS, strict=True):
        shown = [n for n in names if n in rates and n in MEASUREMENTS]
        xs = range(len(shown))
        bars = ax.bar(
            xs,
            [rates[n] for n in shown],
            color=["#1f77b4" if n in ("e2e", "sink_alone") else "#aaaaaa" for n in shown],
        )
        for x, name in zip(xs, shown, strict=True):
            ys = [r.per_second for r in runs if r.measurement == name]
            ax.scatter([x] * len(ys), ys, color="black", s=12, zorder=3)
        ax.bar_label(bars, labels=[f"{rates[n]:,.0f}" for n in shown], padding=2, fontsize=8)
        ax.set_xticks(list(xs), [_SHORT[n] for n in shown], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
    axes[0].axhline(20_000, color="red", linestyle="--", linewidth=1, label="target 20,000/s")
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
