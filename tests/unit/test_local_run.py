"""The live summary of `qmsflow run`: its lines, its narrative and its finish condition."""

from __future__ import annotations

from datetime import UTC, datetime

from qmsflow.demo.produce import ProduceReport
from qmsflow.demo.source_edits import SourceEdit, Statement
from qmsflow.local_run import (
    AppliedEdit,
    GoldenView,
    IncidentView,
    LotCommand,
    PipelineCounts,
    ScenarioNarrator,
    ScenarioSnapshot,
    StageCounts,
    disposition_of,
    render_md_line,
    unfinished,
)

LOT = "LS12345-678"
INCIDENT = IncidentView(
    incident_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    member_count=40,
    suppressed=39,
    source_systems=("QMS", "MES", "LIMS"),
    alerts=1,
)
HOLD = LotCommand("HOLD", "NCR-91234", "NCR-91234 major nonconformance: crack")
RELEASE = LotCommand("RELEASE", "NCR-91234", "NCR-91234 disposition use_as_is releases the lot")


def _report(unique: int, corrupt: int) -> ProduceReport:
    return ProduceReport(
        sent=unique, unique_event_ids={str(i) for i in range(unique)}, corrupt=corrupt
    )


def _counts(rows: int, dead_letter_rows: int) -> PipelineCounts:
    return PipelineCounts(0, 0, 0, 0, rows, dead_letter_rows)


class TestStageCounts:
    def test_render_names_every_count(self) -> None:
        """The line shows parked, released, incidents, alerts, holds, releases, escalations."""
        line = StageCounts(3, 120, 7, 2, 9, 39, 4, 1, 5).render()
        assert "parked now    3" in line
        assert "released   120" in line
        assert "incidents open    7 closed    2" in line
        assert "alerts    9 (39 suppressed)" in line
        assert "lots on hold    4" in line
        assert "releases   1" in line
        assert "escalations   5" in line

    def test_render_is_one_line(self) -> None:
        """The stage summary is a single line, indented under the pipeline line."""
        line = StageCounts(0, 0, 0, 0, 0, 0, 0, 0, 0).render()
        assert "\n" not in line
        assert line.startswith("  ")


class TestScenarioNarrator:
    def test_incident_line_once_the_incident_is_whole_and_the_lot_held(self) -> None:
        """The incident line names the incident, its systems, alerts and suppressions, once."""
        narrator = ScenarioNarrator(LOT, members=40)
        lines = narrator.tell(ScenarioSnapshot(INCIDENT, (HOLD,)))
        assert lines == [
            f"incident 0f1e2d3c lot:{LOT}: 40 events from QMS, MES, LIMS → 1 alert,"
            f" 39 suppressed; lot {LOT} on hold"
        ]
        assert narrator.tell(ScenarioSnapshot(INCIDENT, (HOLD,))) == []

    def test_no_incident_line_while_members_are_missing(self) -> None:
        """An incident view with fewer members than the scenario sent is not told yet."""
        partial = IncidentView(INCIDENT.incident_id, 12, 11, ("QMS",), 1)
        assert ScenarioNarrator(LOT, members=40).tell(ScenarioSnapshot(partial, (HOLD,))) == []

    def test_no_incident_line_before_the_hold(self) -> None:
        """The incident line waits for the lot's hold command."""
        assert ScenarioNarrator(LOT, members=40).tell(ScenarioSnapshot(INCIDENT, ())) == []

    def test_release_line_once_after_the_incident_line(self) -> None:
        """The release names the lot, the nonconformance and the disposition, once."""
        narrator = ScenarioNarrator(LOT, members=40)
        narrator.tell(ScenarioSnapshot(INCIDENT, (HOLD,)))
        released = ScenarioSnapshot(INCIDENT, (HOLD, RELEASE))
        assert narrator.tell(released) == [f"lot {LOT} released by NCR-91234 use-as-is"]
        assert narrator.tell(released) == []

    def test_hold_and_release_in_one_snapshot_tell_both_in_order(self) -> None:
        """A lot held and released between two samples still gets both lines, incident first."""
        lines = ScenarioNarrator(LOT, members=40).tell(ScenarioSnapshot(INCIDENT, (HOLD, RELEASE)))
        assert [line.split()[0] for line in lines] == ["incident", "lot"]


class TestDispositionOf:
    def test_disposition_from_the_release_reason(self) -> None:
        """The disposition word of a release reason reads with dashes."""
        assert disposition_of(RELEASE.reason) == "use-as-is"

    def test_other_reasons_are_kept(self) -> None:
        """A release without a disposition keeps its reason."""
        assert disposition_of("NCR-1 nonconformance cancelled") == "NCR-1 nonconformance cancelled"


class TestUnfinished:
    def test_done_when_events_dead_letters_and_release_are_in(self) -> None:
        """Nothing is missing once every event, dead letter and the release are in Postgres."""
        assert unfinished(_counts(141, 20), _report(100, 20), 41, released=True) == []

    def test_scenario_events_count_towards_the_expected_rows(self) -> None:
        """The demo's unique events alone do not finish the run: the scenario's are expected."""
        missing = unfinished(_counts(100, 20), _report(100, 20), 41, released=True)
        assert missing == ["events 100/141"]

    def test_missing_release_and_dead_letters_are_named(self) -> None:
        """The timeout message can say which dead letters and which release are missing."""
        missing = unfinished(_counts(141, 19), _report(100, 20), 41, released=False)
        assert missing == ["dead letters 19/20", "the scenario's release"]


def _applied(change: str, *, disagrees: bool = False) -> AppliedEdit:
    edit = SourceEdit(
        kind="supplier-approval",
        system="QMS",
        entity="supplier",
        entity_id="SUP-0128",
        change=change,
        statements=(Statement("UPDATE qms.supplier_approval SET approval_status = %s"),),
        disagrees=disagrees,
    )
    return AppliedEdit(edit, datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


class TestMasterDataLine:
    def test_new_golden_version_names_version_source_and_counts(self) -> None:
        """An edit that made a new golden version says which, from which source, and the totals."""
        line = render_md_line(_applied("approval CONDITIONAL"), GoldenView(3, "QMS"), 2, 5)
        assert line == (
            "md: supplier SUP-0128 approval CONDITIONAL → golden v3 (QMS) | conflicts 2 |"
            " history rows +5"
        )

    def test_a_losing_disagreement_is_told_as_a_conflict(self) -> None:
        """A disagreeing edit that a more trusted source outranks is a conflict, not a version."""
        line = render_md_line(_applied("calibration OUT_OF_TOLERANCE", disagrees=True), None, 4, 9)
        assert "→ conflict, golden unchanged" in line
        assert line.endswith("| conflicts 4 | history rows +9")

    def test_no_version_is_said_plainly(self) -> None:
        """An edit with no new version in time says so, on one line."""
        line = render_md_line(_applied("approval APPROVED"), None, 0, 0)
        assert "→ no new golden version |" in line
        assert "\n" not in line
