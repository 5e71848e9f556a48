"""The benchmark's pure part: percentiles, ratios, target checks and the result JSON's shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.plot import plot
from bench.results_model import (
    LABELS,
    SCHEMA_VERSION,
    Run,
    check_targets,
    format_table,
    median,
    medians,
    percentile,
    ratio,
    result_document,
    runs_from_document,
    table,
)


def _runs() -> list[Run]:
    return [
        Run("e2e", 0, 1000, 2.0, 0.5),
        Run("e2e", 1, 1000, 1.0, 0.5),
        Run("e2e", 2, 1000, 4.0, None),
        Run("naive_faust", 0, 1000, 1.0),
        Run("passthrough", 0, 1000, 0.1),
        Run("copy", 0, 1000, 0.01),
        Run("sink_alone", 0, 1000, 0.5),
    ]


class TestPercentiles:
    def test_percentile_interpolates_between_ranks(self) -> None:
        """The 50th percentile of an even count is the mean of the middle two."""
        assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5

    def test_percentile_ends_are_min_and_max(self) -> None:
        """The 0th and 100th percentiles are the smallest and largest values."""
        assert percentile([3.0, 1.0, 2.0], 0) == 1.0
        assert percentile([3.0, 1.0, 2.0], 100) == 3.0

    def test_median_of_odd_count_is_the_middle_value(self) -> None:
        """The median of three runs is the middle one, whatever the order."""
        assert median([500.0, 250.0, 1000.0]) == 500.0

    def test_percentile_refuses_nothing_and_out_of_range(self) -> None:
        """An empty list or a q outside 0–100 is an error, not a number."""
        with pytest.raises(ValueError, match="at least one value"):
            percentile([], 50)
        with pytest.raises(ValueError, match=r"q in \[0, 100\]"):
            percentile([1.0], 101)


class TestRatesAndRatios:
    def test_run_rate_counts_start_up_and_steady_rate_does_not(self) -> None:
        """per_second divides by the whole run; steady_per_second from the first item on."""
        run = Run("e2e", 0, 1000, 2.0, 0.5)
        assert run.per_second == 500.0
        assert run.steady_per_second == pytest.approx(1000 / 1.5)
        assert Run("copy", 0, 10, 1.0).steady_per_second is None

    def test_ratio_with_no_denominator_is_none(self) -> None:
        """A ratio to a baseline that measured nothing is undefined, not infinite."""
        assert ratio(3.0, 1.5) == 2.0
        assert ratio(3.0, 0.0) is None

    def test_medians_are_per_measurement(self) -> None:
        """Each measurement's median is taken over its own repetitions only."""
        rates = medians(_runs())
        assert rates["e2e"] == 500.0
        assert rates["copy"] == 100_000.0

    def test_targets_say_by_how_much_they_are_missed(self) -> None:
        """500 events/s misses 20,000/s by 40×; 0.5× naive misses 3×; 1% of COPY misses 50%."""
        checks = {c.target: c for c in check_targets(medians(_runs()))}
        e2e = checks["end-to-end events/s"]
        assert not e2e.met and e2e.measured == 500.0
        assert "40.0× short" in e2e.sentence()
        assert checks["end-to-end ÷ naive Faust"].measured == 0.5
        assert checks["sink ÷ raw COPY"].measured == pytest.approx(0.02)

    def test_a_met_target_says_met(self) -> None:
        """A measured value at or above the target is reported as met."""
        fast = [Run("e2e", 0, 30_000, 1.0), Run("naive_faust", 0, 1000, 1.0)]
        checks = {c.target: c for c in check_targets(medians(fast))}
        assert checks["end-to-end events/s"].met
        assert checks["end-to-end ÷ naive Faust"].sentence().endswith("met (30.00 ≥ 3.00)")
        assert checks["sink ÷ raw COPY"].sentence() == "sink ÷ raw COPY: not measured"

    def test_table_compares_kafka_rows_with_a_and_b_and_the_sink_with_c(self) -> None:
        """The Markdown table shows the end-to-end ratio to naive Faust and the sink's to COPY."""
        text = format_table(medians(_runs()))
        e2e_line = next(line for line in text.splitlines() if "end-to-end" in line)
        assert "| 500 | 0.50× | 0.05× |" in e2e_line
        sink_line = next(line for line in text.splitlines() if "sink alone" in line)
        assert sink_line.endswith("| 2,000 | – | 0.02× |")


class TestResultDocument:
    def test_document_keeps_every_run_and_round_trips_through_json(self) -> None:
        """The JSON holds machine, versions, every run, medians and targets, and reads back."""
        runs = _runs()
        document = result_document(
            started_at="2026-01-01T00-00-00Z",
            machine={"nproc": 2, "memory_gib": 8.0, "cpu_model": "test"},
            versions={"python": "3.11"},
            parameters={"events": 1000},
            runs=runs,
        )
        loaded = json.loads(json.dumps(document))
        assert set(loaded) == {
            "schema_version",
            "started_at",
            "machine",
            "versions",
            "parameters",
            "runs",
            "medians_per_second",
            "medians_cpu_us_per_event",
            "targets",
            "notes",
        }
        assert loaded["schema_version"] == SCHEMA_VERSION
        assert len(loaded["runs"]) == len(runs)
        assert loaded["runs"][0]["per_second"] == 500.0
        assert [t["target"] for t in loaded["targets"]] == [
            "end-to-end events/s",
            "end-to-end ÷ naive Faust",
            "sink ÷ raw COPY",
            "end-to-end events/s, faust runtime (issue 16)",
            "end-to-end ÷ naive Faust, faust runtime (issue 16)",
            "end-to-end ÷ Quix Streams peer, faust runtime (issue 16)",
            "end-to-end ÷ Quix Streams peer after the first output, faust runtime (issue 16)",
            "worker CPU µs/event after the first row, faust runtime (issue 16)",
        ]
        assert runs_from_document(loaded) == runs

    def test_unknown_schema_version_is_refused(self) -> None:
        """A result file of another shape is named, not misread."""
        with pytest.raises(ValueError, match=r"schema_version: expected one of \(1, 2\), got 99"):
            runs_from_document({"schema_version": 99, "runs": []})


class TestUpsertedTables:
    def _runs(self) -> list[Run]:
        return [
            Run("sink_alone", 0, 1000, 0.5),
            Run("copy", 0, 1000, 0.1),
            Run("sink_incident", 0, 300, 0.5),
            Run("copy_incident", 0, 300, 0.05),
            Run("sink_golden_record", 0, 700, 0.2),
            Run("copy_golden_record", 0, 700, 0.35),
        ]

    def test_each_upserted_table_is_held_against_the_copy_of_its_own_rows(self) -> None:
        """Sink ÷ COPY per table: 600/6,000 = 0.1 missed; 3,500/2,000 = 1.75 met."""
        checks = {c.target: c for c in check_targets(medians(self._runs()))}
        incident = checks["sink ÷ raw COPY (qms.incident)"]
        golden = checks["sink ÷ raw COPY (qms.golden_record)"]
        assert incident.measured == pytest.approx(0.1)
        assert not incident.met
        assert golden.measured == pytest.approx(1.75)
        assert golden.met
        assert checks["sink ÷ raw COPY"].measured == pytest.approx(0.2)

    def test_table_rows_of_upserted_tables_have_no_kafka_ratios(self) -> None:
        """A Postgres row is compared with its own COPY only, not with (a) or (b)."""
        rates = {**medians(self._runs()), "naive_faust": 100.0, "passthrough": 1000.0}
        rows = {label: (naive, bound) for label, _, naive, bound in table(rates)}
        assert rows[LABELS["sink_incident"]][0] is None
        assert rows[LABELS["sink_incident"]][1] == pytest.approx(0.1)
        assert rows[LABELS["copy_golden_record"]][0] is None
        assert rows[LABELS["copy_golden_record"]][1] == pytest.approx(1.0)

    def test_results_without_upserted_tables_check_only_the_event_table(self) -> None:
        """Older result files (no upserted tables) keep issue 8's three target lines."""
        older = [r for r in self._runs() if r.measurement in ("sink_alone", "copy")]
        names = [c.target for c in check_targets(medians(older))]
        assert names[:3] == ["end-to-end events/s", "end-to-end ÷ naive Faust", "sink ÷ raw COPY"]
        assert not any("qms." in n for n in names)


class TestPlot:
    def _document(self, runs: list[Any]) -> dict[str, Any]:
        return result_document(
            started_at="2026-01-01T00-00-00Z",
            machine={"nproc": 2, "memory_gib": 8.0, "cpu_model": "test"},
            versions={"python": "3.11"},
            parameters={"events": 1000, "repeats": 1},
            runs=runs,
        )

    def test_throughput_runs_are_drawn(self, tmp_path: Path) -> None:
        """A bench with throughput runs writes its PNG."""
        path = tmp_path / "bench.png"
        assert plot(self._document(_runs()), path) is True
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_a_bench_of_the_other_steps_only_draws_no_throughput_plot(self, tmp_path: Path) -> None:
        """BENCH_REPEATS=0 with the scale step alone crashed on an empty log-scale axis."""
        path = tmp_path / "bench.png"
        assert plot(self._document([]), path) is False
        assert not path.exists()
