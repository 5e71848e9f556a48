"""The soak verdict: is a process's resident memory flat (±10%) over a long run? Pure logic.

The band is centred on the median RSS of a baseline window (the first two minutes after a
warm-up that lets caches, the consumer's buffers and the dedup table settle); the run is flat
when every later sample stays inside it. No Kafka, no /proc: unit-tested in tests/unit/bench.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.results_model import median

#: the issue's target (issue 8): worker RSS flat within ±10% over a 10-minute run
TOLERANCE = 0.10
#: seconds after start before the baseline window opens: start-up, group join, first batches
WARMUP_SECONDS = 60.0
#: length of the baseline window whose median centres the band
BASELINE_SECONDS = 120.0


@dataclass(frozen=True)
class RssSample:
    """One reading of a process's VmRSS, `seconds` after the soak started."""

    seconds: float
    rss_bytes: int


@dataclass(frozen=True)
class Flatness:
    """The band and how far the samples after the warm-up strayed from its centre."""

    baseline_bytes: float
    low_bytes: float
    high_bytes: float
    min_bytes: int
    max_bytes: int
    worst_deviation: float  # signed share of the baseline of the sample furthest from it
    samples_judged: int
    flat: bool

    def sentence(self, what: str) -> str:
        """A plain statement of the verdict with its numbers, in MiB."""
        mib = 1024**2
        verdict = "flat" if self.flat else "NOT flat"
        return (
            f"{what} RSS {verdict} (±{TOLERANCE:.0%}): baseline {self.baseline_bytes / mib:.1f} MiB"
            f", range {self.min_bytes / mib:.1f}–{self.max_bytes / mib:.1f} MiB over "
            f"{self.samples_judged} samples, worst {self.worst_deviation:+.1%}"
        )


def windows(seconds: float) -> tuple[float, float]:
    """(warm-up, baseline) for a run of `seconds`: the defaults, scaled down for a short run.

    A run shorter than warm-up + baseline + as long again (6 minutes) keeps their 1:2 ratio
    over half its length, so a short smoke run still has samples after the baseline to judge.
    """
    full = WARMUP_SECONDS + BASELINE_SECONDS
    if seconds >= 2 * full:
        return WARMUP_SECONDS, BASELINE_SECONDS
    share = seconds / 2 / full
    return WARMUP_SECONDS * share, BASELINE_SECONDS * share


def rss_from_status(status: str) -> int:
    """VmRSS in bytes from the text of /proc/<pid>/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmRSS: expected kB, got {unit!r}")
            return int(value) * 1024
    raise ValueError("VmRSS: expected a VmRSS line in /proc/<pid>/status, found none")


def flatness(
    samples: Sequence[RssSample],
    *,
    warmup: float = WARMUP_SECONDS,
    baseline: float = BASELINE_SECONDS,
    tolerance: float = TOLERANCE,
) -> Flatness:
    """Judge the samples from `warmup` on against ±`tolerance` around the baseline's median."""
    judged = [s for s in samples if s.seconds >= warmup]
    window = [s.rss_bytes for s in judged if s.seconds < warmup + baseline]
    if not window:
        raise ValueError(
            f"flatness: expected samples between {warmup:.0f} s and {warmup + baseline:.0f} s, "
            "got none (run longer than the warm-up and the baseline window)"
        )
    centre = median([float(v) for v in window])
    values = [s.rss_bytes for s in judged]
    worst = max(values, key=lambda v: abs(v - centre))
    low, high = centre * (1 - tolerance), centre * (1 + tolerance)
    return Flatness(
        baseline_bytes=centre,
        low_bytes=low,
        high_bytes=high,
        min_bytes=min(values),
        max_bytes=max(values),
        worst_deviation=(worst - centre) / centre,
        samples_judged=len(values),
        flat=all(low <= v <= high for v in values),
    )
