"""The demo's source-database edits: realistic, seeded, deterministic, always a change."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from qmsflow.demo.source_edits import (
    APPROVAL_STATUSES,
    CALIBRATION_STATUSES,
    PLANTED_CONFLICTS,
    SourceEdit,
    SourceEditPlanner,
    SourceState,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
STATE = SourceState(
    approvals={"SUP-0017": "APPROVED", "SUP-0042": "APPROVED", "SUP-0128": "CONDITIONAL"},
    calibrations={
        "EQ-HPLC-04": ("CALIBRATED", "CALIBRATED"),
        "EQ-LYO-02": ("CALIBRATED", "CALIBRATED"),
        "EQ-PH-METER-07": ("CALIBRATED", "OUT_OF_TOLERANCE"),
    },
    trainings={"E1001": ["SOP-QA-011", "SOP-QA-015"], "E2003": ["SOP-LAB-004"]},
    parts={"PN-20311-D": ("catheters", "SUP-0128"), "PN-30144-A": ("sterile-injectables", None)},
    sites={"catheters": ["CORK2"], "sterile-injectables": ["BOS1", "CORK2"]},
)


def _plan(seed: int = 7, count: int = 40) -> list[SourceEdit]:
    planner = SourceEditPlanner(seed, STATE, lot_prefix="LD0007")
    return planner.plan(count, NOW, timedelta(seconds=3))


class TestPlanner:
    def test_same_seed_same_edits(self) -> None:
        """Two planners with the same seed, state and times plan the same edits."""
        assert _plan(seed=7) == _plan(seed=7)

    def test_other_seed_other_edits(self) -> None:
        """Another seed plans another sequence."""
        assert _plan(seed=7) != _plan(seed=8)

    def test_every_kind_within_the_first_round(self) -> None:
        """A short demo sees an approval, a batch, a calibration and a training renewal."""
        kinds = {edit.kind for edit in _plan(count=5)}
        assert kinds == {"supplier-approval", "new-batch", "calibration", "training-renewal"}

    def test_planted_conflicts_are_never_edited(self) -> None:
        """SUP-0128 and EQ-PH-METER-07 keep the disagreements the seed plants."""
        touched = {e.entity_id for e in _plan(count=200) if e.kind != "new-batch"}
        assert not touched & PLANTED_CONFLICTS

    def test_naive_time_is_refused(self) -> None:
        """Edit times are aware datetimes."""
        planner = SourceEditPlanner(1, STATE, lot_prefix="LD0001")
        with pytest.raises(ValueError, match="timezone-aware"):
            planner.next_edit(datetime(2026, 3, 2, 9, 0))

    def test_empty_state_is_an_error(self) -> None:
        """A source database with nothing to edit is said so, not looped on."""
        empty = SourceState({}, {}, {}, {}, {})
        with pytest.raises(ValueError, match="nothing to edit"):
            SourceEditPlanner(1, empty, lot_prefix="LD0001").next_edit(NOW)


class TestApprovals:
    def test_each_approval_edit_changes_the_status(self) -> None:
        """An approval edit always sets a status the supplier does not have."""
        current = dict(STATE.approvals)
        for edit in _plan(count=200):
            if edit.kind != "supplier-approval":
                continue
            status = edit.statements[0].params[0]
            assert status in APPROVAL_STATUSES and status != current[edit.entity_id]
            current[edit.entity_id] = status
            assert (edit.system, edit.entity) == ("QMS", "supplier")
            assert edit.rows[0].table == "qms.supplier_approval"


class TestBatches:
    def test_batches_are_new_unique_lots_of_known_parts(self) -> None:
        """A new batch has its own lot id with the run's prefix, a known part and its site."""
        batches = [e for e in _plan(count=60) if e.kind == "new-batch"]
        lots = [e.entity_id for e in batches]
        assert len(set(lots)) == len(lots) and all(lot.startswith("LD0007-") for lot in lots)
        for edit in batches:
            _lot, part, line, plant, supplier, made = edit.statements[0].params
            assert STATE.parts[part] == (line, supplier)
            assert plant in STATE.sites[line]
            assert made < NOW + timedelta(minutes=5)
            assert edit.rows == ()
            assert "ON CONFLICT (lot_id) DO NOTHING" in edit.statements[0].sql


class TestCalibrations:
    def test_cmms_changes_and_qms_disagreements_both_occur(self) -> None:
        """Calibration edits change the CMMS status, and some make the QMS disagree."""
        edits = [e for e in _plan(count=60) if e.kind == "calibration"]
        systems = Counter(e.system for e in edits)
        assert systems["CMMS"] > 0 and systems["QMS"] > 0
        assert any(e.disagrees for e in edits)
        for edit in edits:
            status = edit.statements[0].params[0]
            if edit.system == "CMMS":
                assert status in CALIBRATION_STATUSES
                assert edit.rows[0].table == "cmms.asset"
            else:
                assert status == "OUT_OF_TOLERANCE" and edit.disagrees
                assert edit.rows[0].table == "qms.equipment_status"

    def test_each_cmms_edit_changes_the_status(self) -> None:
        """A CMMS edit never sets the status the asset already has."""
        current = {k: v[0] for k, v in STATE.calibrations.items()}
        for edit in _plan(count=200):
            if edit.kind == "calibration" and edit.system == "CMMS":
                status = edit.statements[0].params[0]
                assert status != current[edit.entity_id]
                current[edit.entity_id] = status


class TestTrainings:
    def test_renewal_rewrites_one_course_of_the_transcript(self) -> None:
        """A renewal names a course on the employee's transcript, completed now, two years on."""
        renewals = [e for e in _plan(count=40) if e.kind == "training-renewal"]
        assert renewals
        for edit in renewals:
            course, completed, expires, employee = edit.statements[0].params
            assert course in STATE.trainings[employee]
            assert completed.endswith("Z") and expires > completed
            assert (edit.system, edit.entity, edit.entity_id) == ("LMS", "employee", employee)
