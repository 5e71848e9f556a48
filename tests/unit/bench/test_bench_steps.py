"""The pure part of the latency, scale and state steps: summaries, tables and target checks."""

from __future__ import annotations

from typing import Any

from bench.latency import format_latency, latency_check, summary
from bench.scale import format_scale
from bench.state import format_state, state_check


def _latency(p99_at_2000: float) -> dict[str, Any]:
    row = summary([10.0, 20.0, 30.0, 40.0, p99_at_2000])
    return {
        "prefix": "benchlat.",
        "target": {"rate": 2000, "p99_ms": 250.0},
        "rates": [
            {
                "offered_per_second": 2000,
                "producer_to_row": row,
                "producer_to_ingested": row,
                "ingested_to_row": row,
                "producer_to_quarantine_command": None,
                "baseline_producer_to_plain_consumer": summary([5.0]),
            }
        ],
    }


class TestLatency:
    def test_summary_gives_percentiles_and_max(self) -> None:
        """A summary has the count, p50, p95, p99 and the largest latency."""
        s = summary([float(n) for n in range(1, 101)])
        assert s is not None
        assert s["count"] == 100
        assert s["p50_ms"] == 50.5
        assert s["max_ms"] == 100.0
        assert s["p95_ms"] < s["p99_ms"] < s["max_ms"]

    def test_summary_of_nothing_is_none(self) -> None:
        """No latencies give no summary, not zeros."""
        assert summary([]) is None

    def test_check_says_met_or_by_how_much_missed(self) -> None:
        """The p99 target at 2,000/s is met below 250 ms and missed above, with the factor."""
        assert "met" in latency_check(_latency(100.0))
        missed = latency_check(_latency(1000.0))
        assert "MISSED" in missed and "× over" in missed

    def test_table_shows_a_dash_for_a_path_without_samples(self) -> None:
        """A path with no samples (no quarantine command at that rate) shows dashes."""
        table = format_latency(_latency(100.0))
        assert "| 2,000 | producer → quarantine command | 0 | – |" in table
        assert "| 2,000 | producer → Postgres row | 5 |" in table


class TestScale:
    def test_rates_are_set_against_the_one_worker_baseline(self) -> None:
        """Each configuration's rate is shown as a multiple of 1 worker on the packaged count."""
        results: list[dict[str, Any]] = [
            {
                "workers": 1,
                "partitions": 6,
                "per_second": 100.0,
                "seconds": 10.0,
                "completed": True,
            },
            {"workers": 2, "partitions": 8, "per_second": 150.0, "seconds": 7.0, "completed": True},
            {"workers": 2, "partitions": 16, "error": "sink exited"},
        ]
        table = format_scale(results)
        assert "| 2 | 8 | 150 | 1.50× | 7.0 |" in table
        assert "| 2 | 16 | failed |" in table


class TestState:
    def _result(self, keys: int, disk_per_key: float) -> dict[str, Any]:
        return {
            "keys": keys,
            "disk_bytes_per_key": disk_per_key,
            "baseline_payload_bytes_per_key": 125.0,
            "rss_bytes_per_key": 400.0,
            "rss_after_bytes": 400 * keys,
        }

    def test_check_uses_the_largest_key_count(self) -> None:
        """The target is judged on the largest state measured."""
        results = [self._result(1_000_000, 150.0), self._result(10_000_000, 250.0)]
        assert "MISSED" in state_check(results)
        assert "10,000,000" in state_check(results)

    def test_unmeasured_counts_are_reported_not_hidden(self) -> None:
        """A key count that failed appears as not measured in the table."""
        table = format_state([self._result(1_000_000, 150.0), {"keys": 10, "error": "oom"}])
        assert "| 10 | not measured |" in table
        assert state_check([{"keys": 10, "error": "oom"}]) == "dedup state per key: not measured"
