"""The pure part of the latency, scale and state steps: summaries, tables and target checks."""

from __future__ import annotations

from typing import Any

from bench.latency import (
    LAG_DRAIN_SECONDS,
    by_runtime,
    format_latency,
    ingest_group,
    latency_check,
    latency_checks,
    phase_lag,
    prefixes,
    summary,
)
from bench.scale import format_scale, scale_checks
from bench.state import format_state, state_check
from qmsflow.settings import Settings


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


class TestLatencyPerRuntime:
    def _document(self, faust_p99: float, batch_p99: float, batch_bounded: bool) -> dict[str, Any]:
        faust, batch = _latency(faust_p99), _latency(batch_p99)
        faust["rates"][0]["worker_lag"] = phase_lag([(0.0, 10), (11.0, 0)], 0.0, 10.0, 2000)
        batch["rates"][0]["worker_lag"] = phase_lag(
            [(0.0, 10), (11.0, 5000)] if not batch_bounded else [(0.0, 1), (10.5, 0)],
            0.0,
            10.0,
            2000,
        )
        return {
            "runtimes": {"faust": faust, "batch": batch},
            "target": {"rate": 2000, "p99_ms": 250.0, "lag_drain_seconds": LAG_DRAIN_SECONDS},
        }

    def test_each_runtime_gets_its_own_target_line(self) -> None:
        """The p99 target is judged per runtime, the runtime named in each line."""
        lines = latency_checks(self._document(100.0, 1000.0, True))
        assert len(lines) == 2
        assert "faust runtime: met" in lines[0]
        assert "batch runtime: MISSED" in lines[1] and "× over" in lines[1]

    def test_an_unbounded_lag_misses_the_target_even_under_the_p99(self) -> None:
        """A worker still behind after the producer stopped misses, whatever its p99."""
        lines = latency_checks(self._document(100.0, 100.0, False))
        assert "batch runtime: MISSED" in lines[1]
        assert "lag was not bounded" in lines[1]

    def test_a_file_from_before_runtimes_is_the_faust_runtime(self) -> None:
        """An old latency result (no runtimes) reads as the faust run, judged without lag."""
        old = _latency(100.0)
        assert list(by_runtime(old)) == ["faust"]
        assert prefixes(old) == ["benchlat."]
        assert "faust runtime: met" in latency_check(old)

    def test_the_table_names_the_runtime_of_each_row(self) -> None:
        """Rows carry their runtime, and each rate a line with the worker's lag."""
        table = format_latency(self._document(100.0, 100.0, True))
        assert "| batch | 2,000 | producer → Postgres row | 5 |" in table
        assert "| faust | 2,000 | worker lag: ≤ 10 records, drained 1.0 s" in table

    def test_a_failed_runtime_is_shown_not_dropped(self) -> None:
        """A runtime whose run failed keeps a row with the error and is not measured."""
        document = {
            "runtimes": {"batch": {"prefix": "b.", "error": "worker exited"}},
            "target": {"rate": 2000, "p99_ms": 250.0},
        }
        assert "| batch | – | failed: worker exited" in format_latency(document)
        assert latency_checks(document) == [
            "p99 latency ≤ 250 ms at 2,000/s, lag bounded, batch runtime: not measured"
        ]


class TestWorkerLag:
    def test_lag_is_the_largest_while_offering_and_the_drain_after(self) -> None:
        """Samples before the phase are ignored; drain is counted from the producer's end."""
        samples = [(0.0, 900), (1.0, 50), (5.0, 400), (10.0, 300), (12.0, 0), (13.0, 0)]
        lag = phase_lag(samples, 1.0, 10.0, 2000)
        assert lag["max_records"] == 400
        assert lag["max_seconds_of_input"] == 0.2
        assert lag["drained_after_seconds"] == 2.0
        assert lag["bounded"] is True

    def test_a_lag_that_never_drains_is_not_bounded(self) -> None:
        """No sample back at 0 after the producer stopped: not bounded, drain unknown."""
        lag = phase_lag([(1.0, 10), (11.0, 20), (30.0, 5)], 0.0, 10.0, 2000)
        assert lag["drained_after_seconds"] is None
        assert lag["bounded"] is False

    def test_a_late_drain_is_not_bounded(self) -> None:
        """Back at 0 only after LAG_DRAIN_SECONDS: the worker was behind."""
        late = 10.0 + LAG_DRAIN_SECONDS + 1
        assert phase_lag([(5.0, 10), (late, 0)], 0.0, 10.0, 2000)["bounded"] is False

    def test_each_runtime_commits_in_its_own_group(self) -> None:
        """Faust commits in <prefix><app_id>, batch in <prefix><app_id>-product-lines."""
        settings = Settings(topic_prefix="p.", app_id="qmsflow")
        assert ingest_group(settings, "faust") == "p.qmsflow"
        assert ingest_group(settings, "batch") == "p.qmsflow-product-lines"


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
        assert "| faust | 2 | 8 | 150 | 1.50× | 7.0 |" in table
        assert "| faust | 2 | 16 | failed |" in table

    def _result(self, runtime: str, workers: int, partitions: int, rate: float) -> dict[str, Any]:
        return {
            "runtime": runtime,
            "workers": workers,
            "partitions": partitions,
            "per_second": rate,
            "seconds": 1.0,
            "completed": True,
        }

    def test_each_runtime_is_set_against_its_own_baseline(self) -> None:
        """A batch configuration is divided by the batch 1-worker rate, not the faust one."""
        table = format_scale(
            [
                self._result("faust", 1, 6, 100.0),
                self._result("batch", 1, 6, 400.0),
                self._result("batch", 2, 6, 600.0),
            ]
        )
        assert "| batch | 2 | 6 | 600 | 1.50× | 1.0 |" in table

    def test_two_workers_are_judged_against_one_per_runtime_and_partition_count(self) -> None:
        """2 ÷ 1 worker ≥ 1.0 for each runtime and partition count that has both."""
        checks = scale_checks(
            [
                self._result("faust", 1, 6, 100.0),
                self._result("faust", 2, 6, 120.0),
                self._result("batch", 1, 6, 400.0),
                self._result("batch", 2, 6, 300.0),
                self._result("batch", 1, 8, 400.0),  # no 2-worker run: no check
            ]
        )
        sentences = [c.sentence() for c in checks]
        assert len(sentences) == 2
        assert sentences[0].startswith("2 workers ÷ 1 worker, 6 partitions, faust runtime")
        assert "met" in sentences[0]
        assert "MISSED" in sentences[1] and "batch runtime" in sentences[1]

    def test_an_incomplete_configuration_is_not_measured(self) -> None:
        """A timed-out 2-worker run gives no ratio rather than a flattering or unfair one."""
        slow = {**self._result("faust", 2, 6, 50.0), "completed": False}
        checks = scale_checks([self._result("faust", 1, 6, 100.0), slow])
        assert checks[0].sentence().endswith("not measured")


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
