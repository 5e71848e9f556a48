"""A canary run's records: synthetic, about the run's own fresh lot, the release after the probe."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from qmsflow.canary import PathResult, build_run, describe


class TestBuildRun:
    def test_records_are_synthetic_and_about_the_runs_lot(self) -> None:
        """The probe is an MES reject and the release a use-as-is disposition, both synthetic."""
        run = build_run(uuid.UUID(int=42), datetime(2026, 11, 27, tzinfo=UTC))
        assert run.lot_master[0] == "md.lot.v1" and run.lot_master[1] == run.lot_id
        assert run.probe.topic == "mes.inspection-result.v1"
        assert run.probe.record["payload"]["result"] == "reject"
        assert run.release.record["payload"]["disposition"] == "use_as_is"
        for record in (run.probe, run.release):
            assert record.record["synthetic"] is True
            assert record.record["lot_id"] == run.lot_id
        assert run.release.record["recorded_at"] > run.probe.record["recorded_at"]

    def test_each_run_has_its_own_ids_and_the_same_run_rebuilds_equal(self) -> None:
        """Event ids derive from the run id: unique per run, reproducible for a check."""
        now = datetime(2026, 11, 27, tzinfo=UTC)
        a, b = build_run(uuid.UUID(int=1), now), build_run(uuid.UUID(int=2), now)
        assert a.probe_event_id != b.probe_event_id and a.lot_id != b.lot_id
        assert a.probe_event_id != a.release.record["event_id"]
        assert build_run(uuid.UUID(int=1), now) == a


def test_describe_names_the_path_state_and_latency() -> None:
    """An operator's line: a failed path shows no latency."""
    assert "FAILED" in describe(PathResult("quarantine-hold", False, None, "no output within 5 s"))
    assert "1.25 s" in describe(PathResult("ingest-postgres", True, 1.25, "arrived"))
