"""CPU per event: /proc stat parsing, the µs/event arithmetic, its medians, targets and plot."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench.plot import plot
from bench.process_cpu import CpuWatch, read_cpu
from bench.results_model import (
    CpuUse,
    Run,
    check_targets,
    cpu_medians,
    cpu_note,
    events_between,
    format_cpu_table,
    medians,
    result_document,
    runs_from_document,
    stat_cpu,
    thread_kind,
)
from bench.run import runtime_refused

#: a /proc/<pid>/stat line whose name holds a space and parentheses; utime 1234, stime 567
_STAT = (
    "4242 (rdk:broker (1)) S 1 4242 18933 0 -1 4194304 99 0 0 0 1234 567 3 4 20 0 9 0 975009"
    " 3133440 392 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
)


def _use(process: str, first: float | None, end: float, events: int = 1000) -> CpuUse:
    return CpuUse(
        process=process,
        events=events,
        at_end_seconds=end,
        threads_at_end_seconds=end,
        at_first_seconds=first,
        steady_events=None if first is None else events // 2,
    )


class TestProcStat:
    def test_utime_and_stime_are_read_after_the_last_parenthesis(self) -> None:
        """A thread name with spaces and parentheses does not shift the counted fields."""
        assert stat_cpu(_STAT) == ("rdk:broker (1)", 1234 + 567)

    def test_a_line_that_is_not_a_stat_line_is_refused(self) -> None:
        """Text without the name in parentheses or with too few fields is an error."""
        with pytest.raises(ValueError, match="expected 'pid \\(comm\\) state"):
            stat_cpu("no name here")
        with pytest.raises(ValueError, match="at least 15 fields"):
            stat_cpu("1 (x) S 1 2 3")

    def test_thread_kind_drops_the_instance_number_only(self) -> None:
        """The broker threads of librdkafka fold into one kind; a versioned name stays whole."""
        assert thread_kind("rdk:broker3") == "rdk:broker"
        assert thread_kind("rdk:broker-1") == "rdk:broker"
        assert thread_kind("rdk:main") == "rdk:main"
        assert thread_kind("python3.11") == "python3.11"

    def test_this_process_is_read_and_its_main_thread_named(self) -> None:
        """The test process's own CPU is positive and its main thread is called "main"."""
        reading = read_cpu(os.getpid())
        assert reading is not None
        assert reading.seconds > 0
        assert "main" in reading.threads
        assert reading.threads_seconds <= reading.seconds + 0.05

    def test_a_process_that_is_gone_reads_as_none(self) -> None:
        """No /proc entry (the process exited and was reaped) gives None, not an error."""
        assert read_cpu(2**22 + 1) is None  # above the kernel's largest pid


class TestCpuPerEvent:
    def test_steady_and_total_microseconds_per_event(self) -> None:
        """2 s at the first row, 3 s at the end, 500 events between, 1,000 in all."""
        use = _use("worker", 2.0, 3.0)
        assert use.steady_us_per_event == pytest.approx(2_000.0)
        assert use.total_us_per_event == pytest.approx(3_000.0)

    def test_no_first_reading_or_no_events_gives_none(self) -> None:
        """A run whose first output was not seen has no steady figure; no events, no figure."""
        assert _use("worker", None, 3.0).steady_us_per_event is None
        assert _use("worker", 1.0, 3.0, events=0).total_us_per_event is None

    def test_events_between_scales_records_to_unique_events(self) -> None:
        """1,000 records carrying 950 unique events: 600 records after the first are 570."""
        assert events_between(950, 1000, 400, 1000) == 570
        assert events_between(950, 950, 50, 950) == 900
        assert events_between(950, 0, 0, 0) == 0

    def test_watch_reads_the_cpu_spent_between_first_and_end(self) -> None:
        """Busy work between the two readings shows as steady CPU per event."""
        own = iter([600, 1000])  # a process ahead of the step's count has its own
        watch = CpuWatch({"bench": os.getpid(), "ahead": os.getpid()}, {"ahead": lambda: next(own)})
        watch.first(reached=100)
        deadline = time.process_time() + 0.1
        while time.process_time() < deadline:
            pass
        watch.end(reached=1000)
        bench, ahead = watch.uses(unique=1000, items=1000, want=1000)
        assert bench.process == "bench"
        assert bench.steady_events == 900
        assert ahead.steady_events == 400
        assert bench.at_first_seconds is not None
        assert bench.at_end_seconds >= bench.at_first_seconds + 0.05

    def test_note_shows_each_process(self) -> None:
        """The step's printed line names each process's µs/event, steady then from start."""
        note = cpu_note((_use("worker", 2.0, 3.0), _use("sink", None, 0.5)))
        assert note == (
            "  CPU: worker 2,000 µs/event (3,000 from its start),"
            " sink – µs/event (500 from its start)"
        )
        assert cpu_note(()) == ""


def _runs() -> list[Run]:
    return [
        Run("e2e", 0, 1000, 2.0, 0.5, True, (_use("worker", 0.5, 0.6), _use("sink", 0.1, 0.15))),
        Run("e2e", 1, 1000, 2.0, 0.5, True, (_use("worker", 0.5, 0.7), _use("sink", 0.1, 0.2))),
        Run("e2e", 2, 1000, 2.0, 0.5, True, (_use("worker", 0.5, 0.9), _use("sink", 0.1, 0.3))),
        Run("e2e_batch", 0, 1000, 0.2, 0.1, True, (_use("worker", 0.5, 0.55),)),
        Run("naive_faust", 0, 1000, 1.0, 0.2, True, (_use("naive_faust", 0.3, 0.4),)),
    ]


class TestCpuMediansAndTargets:
    def test_medians_are_per_measurement_and_process(self) -> None:
        """Worker steady CPU over three runs: 200, 400 and 800 µs; the median is 400."""
        cpu = cpu_medians(_runs())
        assert cpu["e2e"]["worker"].steady_us_per_event == pytest.approx(400.0)
        assert cpu["e2e"]["sink"].steady_us_per_event == pytest.approx(200.0)
        assert cpu["e2e_batch"]["worker"].steady_us_per_event == pytest.approx(100.0)
        assert cpu["naive_faust"]["naive_faust"].total_us_per_event == pytest.approx(400.0)

    def test_worker_cpu_is_a_ceiling_per_runtime(self) -> None:
        """400 µs misses 150 µs by 2.7×; the batch runtime's 100 µs meets it."""
        runs = _runs()
        checks = {c.target: c for c in check_targets(medians(runs), cpu_medians(runs))}
        faust = checks["worker CPU µs/event after the first row, faust runtime (issue 16)"]
        batch = checks["worker CPU µs/event after the first row, batch runtime (issue 16)"]
        assert not faust.met and faust.at_most
        assert faust.sentence().endswith("MISSED: 400.00 vs ≤ 150.00 wanted (2.7× over)")
        assert batch.met
        assert batch.sentence().endswith("met (100.00 ≤ 150.00)")

    def test_issue_16_rate_targets_per_runtime(self) -> None:
        """500/s misses 5,000/s; the batch runtime's 5,000/s meets it and is 5× naive Faust."""
        checks = {c.target: c for c in check_targets(medians(_runs()))}
        assert not checks["end-to-end events/s, faust runtime (issue 16)"].met
        assert checks["end-to-end events/s, batch runtime (issue 16)"].met
        assert checks["end-to-end ÷ naive Faust, batch runtime (issue 16)"].measured == 5.0
        assert not any("CPU" in name for name in checks)  # no CPU given: no CPU line

    def test_batch_targets_are_left_out_when_batch_did_not_run(self) -> None:
        """A bench that skipped e2e_batch judges the faust runtime only."""
        runs = [r for r in _runs() if r.measurement != "e2e_batch"]
        names = [c.target for c in check_targets(medians(runs), cpu_medians(runs))]
        assert not any("batch runtime" in n for n in names)
        assert "worker CPU µs/event after the first row, faust runtime (issue 16)" in names

    def test_a_worker_without_readings_is_not_measured(self) -> None:
        """CPU asked for but no worker reading: the ceiling says not measured."""
        runs = [r for r in _runs() if r.measurement == "naive_faust"]
        checks = {c.target: c for c in check_targets(medians(runs), cpu_medians(runs))}
        line = checks["worker CPU µs/event after the first row, faust runtime (issue 16)"]
        assert line.sentence().endswith(": not measured")

    def test_cpu_table_has_a_row_per_process(self) -> None:
        """The CPU table shows each measured process with both figures."""
        text = format_cpu_table(cpu_medians(_runs()))
        assert "| worker | 400 | 700 |" in text
        assert "batch worker runtime" in text


class TestDocumentWithCpu:
    def _document(self) -> dict[str, Any]:
        return result_document(
            started_at="2026-01-01T00-00-00Z",
            machine={"nproc": 2, "memory_gib": 8.0, "cpu_model": "test"},
            versions={"python": "3.11"},
            parameters={"events": 1000, "repeats": 3},
            runs=_runs(),
        )

    def test_cpu_round_trips_through_json(self) -> None:
        """Each run's CPU readings, their µs/event and the medians are in the JSON and read back."""
        loaded = json.loads(json.dumps(self._document()))
        assert loaded["runs"][0]["cpu"][0]["steady_us_per_event"] == pytest.approx(200.0)
        assert loaded["medians_cpu_us_per_event"]["e2e"]["worker"]["steady_us_per_event"] == (
            pytest.approx(400.0)
        )
        assert runs_from_document(loaded) == _runs()

    def test_a_version_1_document_reads_back_without_cpu(self) -> None:
        """Result files written before CPU was measured still load, with no readings."""
        older = {
            "schema_version": 1,
            "runs": [
                {
                    "measurement": "e2e",
                    "repetition": 0,
                    "items": 10,
                    "seconds": 1.0,
                    "first_item_seconds": None,
                    "completed": True,
                }
            ],
        }
        (run,) = runs_from_document(older)
        assert run.cpu == ()

    def test_plot_with_cpu_is_written(self, tmp_path: Path) -> None:
        """A bench with CPU readings draws its PNG, CPU panel included."""
        path = tmp_path / "bench.png"
        assert plot(self._document(), path) is True
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestRuntimeRefusal:
    def test_pydantic_literal_error_on_the_runtime_is_a_refusal(self) -> None:
        """Settings without "batch" among the runtimes fail with the field on the line above."""
        log = (
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings\n"
            "worker_runtime\n"
            "  Input should be 'faust' [type=literal_error, input_value='batch', input_type=str]\n"
        )
        assert runtime_refused(log)

    def test_the_runtimes_own_message_is_a_refusal(self) -> None:
        """A one-line error naming the runtime as unknown counts."""
        assert runtime_refused("RuntimeError: unknown worker runtime 'batch'")

    def test_an_unrelated_crash_is_not_a_refusal(self) -> None:
        """A crash that does not mention the runtime is a real failure, not a skip."""
        log = "Traceback (most recent call last):\nKeyError: 'quality.events.v1'\ninvalid offset\n"
        assert not runtime_refused(log)

    def test_a_crash_inside_a_runtime_module_is_not_a_refusal(self) -> None:
        """A traceback through streams/worker_runtime/… ending in an error is a real failure."""
        log = (
            "Traceback (most recent call last):\n"
            '  File "/work/main/streams/worker_runtime/batch.py", line 80, in run\n'
            "    offsets = commit(batch)\n"
            "ValueError: invalid offset -1 for quality.events.v1 [0]\n"
        )
        assert not runtime_refused(log)
