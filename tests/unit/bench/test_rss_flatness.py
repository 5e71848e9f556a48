"""The soak's pure part: VmRSS parsing, the warm-up/baseline windows and the ±10% verdict."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bench.rss_flatness import (
    BASELINE_SECONDS,
    WARMUP_SECONDS,
    RssSample,
    flatness,
    rss_from_status,
    windows,
)

MIB = 1024**2


def _samples(values_mib: Sequence[float], every: float = 10.0) -> list[RssSample]:
    return [RssSample(n * every, int(v * MIB)) for n, v in enumerate(values_mib)]


class TestRssFromStatus:
    def test_reads_vmrss_in_bytes(self) -> None:
        """VmRSS is given in kB; the sample is in bytes."""
        status = "Name:\tpython\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n"
        assert rss_from_status(status) == 123456 * 1024

    def test_refuses_a_status_without_vmrss(self) -> None:
        """A kernel thread (or a zombie) has no VmRSS line: an error, not a zero."""
        with pytest.raises(ValueError, match="VmRSS"):
            rss_from_status("Name:\tkworker\nState:\tI (idle)\n")


class TestWindows:
    def test_a_ten_minute_run_uses_the_defaults(self) -> None:
        """600 s: one minute of warm-up, then the two-minute baseline."""
        assert windows(600) == (WARMUP_SECONDS, BASELINE_SECONDS)

    def test_a_short_run_scales_both_to_half_its_length(self) -> None:
        """A 60 s smoke run: 10 s warm-up + 20 s baseline leaves 30 s judged after it."""
        assert windows(60) == pytest.approx((10.0, 20.0))


class TestFlatness:
    def test_samples_within_ten_percent_of_the_baseline_median_are_flat(self) -> None:
        """Warm-up growth is ignored; later samples within ±10% of the baseline pass."""
        # 0–50 s warm-up (climbing), 60–170 s baseline median 100, then up to +9%
        values = [5, 40, 70, 90, 95, 98] + [100] * 12 + [104, 107, 109, 101]
        verdict = flatness(_samples(values))
        assert verdict.flat
        assert verdict.baseline_bytes == 100 * MIB
        assert verdict.worst_deviation == pytest.approx(0.09)
        assert verdict.samples_judged == len(values) - 6

    def test_growth_beyond_ten_percent_is_not_flat(self) -> None:
        """A steady climb (a leak, or state held in memory) fails once it passes +10%."""
        values = [50] * 6 + [100 + n for n in range(40)]  # 100 → 139 MiB
        verdict = flatness(_samples(values))
        assert not verdict.flat
        assert verdict.max_bytes == 139 * MIB
        assert verdict.worst_deviation > 0.10
        assert "NOT flat" in verdict.sentence("worker")

    def test_a_drop_below_the_band_is_not_flat_either(self) -> None:
        """The band is two-sided: a process that shrank by 20% did not stay flat."""
        values = [100] * 20 + [80]
        verdict = flatness(_samples(values))
        assert not verdict.flat
        assert verdict.worst_deviation == pytest.approx(-0.20)

    def test_the_band_is_ten_percent_either_side_of_the_median(self) -> None:
        """Exactly ±10% is inside the band."""
        verdict = flatness(_samples([100] * 18 + [110, 90]))
        assert verdict.low_bytes == pytest.approx(90 * MIB)
        assert verdict.high_bytes == pytest.approx(110 * MIB)
        assert verdict.flat

    def test_a_run_too_short_for_its_baseline_is_refused(self) -> None:
        """No sample in the baseline window: no verdict rather than a vacuous pass."""
        with pytest.raises(ValueError, match="baseline"):
            flatness(_samples([100] * 5))
