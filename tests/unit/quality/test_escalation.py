"""Escalation of past-due CAPAs, audit findings and SCARs, in event time."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import given
from hypothesis import strategies as st

from qmsflow.errors import ConfigurationError
from qmsflow.quality.escalation import (
    ESCALATION_NAMESPACE,
    NEVER,
    Escalation,
    EscalationRules,
    TrackedRecord,
    escalate,
    level_reached_at,
    load_escalation_rules,
    parse_escalation_rules,
    track,
    watermark_after,
)
from qmsflow.quality.event import QualityEvent
from qmsflow.settings import PROJECT_ROOT

SCHEMA_PATH = PROJECT_ROOT / "schemas" / "avro" / "capa.escalations.v1-value" / "v1.avsc"
DUE = date(2026, 3, 10)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
RULES = load_escalation_rules()


def _event(
    event_type: str, record: str, status: str, body: dict[str, Any], recorded_at: datetime
) -> QualityEvent:
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{record}/{recorded_at.isoformat()}")),
        "event_type": event_type,
        "source_system": "QMS",
        "source_record_id": record,
        "occurred_at": recorded_at,
        "recorded_at": recorded_at,
        "product_line": "infusion-pumps",
        "site": "BOS1",
        "lot_id": None,
        "part_number": None,
        "supplier_id": None,
        "equipment_id": None,
        "severity": "major",
        "source_severity": "major",
        "status": status,
        "source_status": status,
        "signature": None,
        "audit": None,
        "correlation_id": None,
        "synthetic": False,
        "lineage": {
            "topic": "quality.events.v1",
            "partition": 0,
            "offset": 0,
            "schema_id": 11,
            "subject": "quality.events.v1-value",
            "schema_version": 1,
            "ingested_at": recorded_at,
        },
        "trace_id": None,
        "payload": (f"io.qmsflow.quality.{event_type}", body),
    }


def capa(
    record: str = "CAPA-77", status: str = "open", due: date = DUE, at: datetime = START
) -> QualityEvent:
    body = {
        "title": "Tighten torque spec on housing screws",
        "capa_type": "corrective",
        "root_cause": None,
        "owner_id": "E1001",
        "due_date": due,
        "linked_records": ["NCR-1042"],
        "effectiveness": None,
    }
    return _event("capa", record, status, body, at)


def finding(record: str = "AF-12", due: date = DUE) -> QualityEvent:
    body = {
        "audit_id": "AUD-2026-03",
        "classification": "major",
        "requirement_ref": "21 CFR 820.100",
        "description": "CAPA effectiveness not verified",
        "response_due_date": due,
        "capa_required": True,
    }
    return _event("audit_finding", record, "open", body, START)


def scar(record: str = "SCAR-5", due: date = DUE) -> QualityEvent:
    body = {
        "scar_number": "SCAR-5",
        "issue_description": "Resin lot out of spec",
        "related_ncr": "NCR-1042",
        "response_due_date": due,
    }
    return _event("supplier_corrective_action", record, "issued", body, START)


def day(n: int, hour: int = 12) -> datetime:
    """Event time n days after the due date, at the given UTC hour."""
    return datetime.combine(DUE + timedelta(days=n), datetime.min.time(), UTC).replace(hour=hour)


def sweep(
    state: TrackedRecord | None, watermarks: Iterable[datetime], rules: EscalationRules = RULES
) -> tuple[TrackedRecord | None, list[Escalation]]:
    """Escalate at each watermark in turn, collecting everything emitted."""
    emitted: list[Escalation] = []
    for watermark in watermarks:
        state, new = escalate(state, watermark, rules)
        emitted += new
    return state, emitted


class TestLevels:
    def test_not_escalated_before_the_due_date(self) -> None:
        """A CAPA not yet due emits nothing."""
        assert sweep(track(None, capa()), [day(-1, 23)])[1] == []

    def test_overdue_capa_emits_level_one_once(self) -> None:
        """At its due date a CAPA reaches level 1, once, however often the watermark moves."""
        _, emitted = sweep(track(None, capa()), [day(0, 0), day(0, 6), day(3), day(6, 23)])
        assert [e.level for e in emitted] == [1]
        first = emitted[0]
        assert first.recipient_role == "record_owner"
        assert first.escalated_at == day(0, 0)
        assert (first.due_date, first.overdue_days) == (DUE, 0)

    def test_level_two_after_seven_more_days(self) -> None:
        """Seven days of event time after level 1, level 2 follows, and neither repeats."""
        _, emitted = sweep(track(None, capa()), [day(0), day(7, 0), day(8), day(29)])
        assert [(e.level, e.escalated_at) for e in emitted] == [(1, day(0)), (2, day(7, 0))]
        assert emitted[1].recipient_role == "qa_manager"
        assert emitted[1].overdue_days == 7

    def test_a_jump_emits_every_level_passed(self) -> None:
        """A record first seen long overdue reaches each passed level at once, in order."""
        _, emitted = sweep(track(None, capa()), [day(45)])
        assert [e.level for e in emitted] == [1, 2, 3]
        assert {e.overdue_days for e in emitted} == {45}

    def test_escalation_id_is_uuid5_of_record_and_level(self) -> None:
        """The id is uuid5 of the record key and level."""
        _, emitted = sweep(track(None, capa()), [day(0)])
        assert emitted[0].escalation_id == str(uuid.uuid5(ESCALATION_NAMESPACE, "QMS:CAPA-77#L1"))

    def test_findings_and_scars_use_their_response_due_date(self) -> None:
        """Audit findings and SCARs escalate on response_due_date; SCARs go to supplier quality."""
        _, from_finding = sweep(track(None, finding()), [day(0)])
        _, from_scar = sweep(track(None, scar()), [day(0)])
        assert from_finding[0].title == "major audit finding in AUD-2026-03: 21 CFR 820.100"
        assert from_scar[0].recipient_role == "supplier_quality_engineer"

    def test_untracked_types_are_ignored(self) -> None:
        """A deviation or nonconformance is not tracked here."""
        event = _event("deviation", "DEV-1", "open", {"due_date": DUE}, START)
        assert track(None, event) is None

    def test_naive_watermark_is_refused(self) -> None:
        """A watermark without a time zone is a caller error, not a silent local time."""
        with pytest.raises(ValueError, match="tz-aware"):
            escalate(track(None, capa()), datetime(2026, 3, 20), RULES)


class TestLifecycle:
    def test_closing_stops_escalation(self) -> None:
        """A CAPA closed after level 1 never reaches level 2."""
        state, first = sweep(track(None, capa()), [day(0)])
        state = track(state, capa(status="closed", at=day(1)))
        _, later = sweep(state, [day(8), day(40)])
        assert [e.level for e in first] == [1] and later == []

    def test_cancelled_record_never_escalates(self) -> None:
        """A cancelled CAPA emits nothing, however late."""
        assert sweep(track(None, capa(status="cancelled")), [day(40)])[1] == []

    def test_due_date_change_rebases_future_levels(self) -> None:
        """An extended due date moves level 2, and level 1 is never emitted again."""
        state, first = sweep(track(None, capa()), [day(0)])
        new_due = DUE + timedelta(days=30)
        state = track(state, capa(due=new_due, at=day(1)))
        _, later = sweep(state, [day(8), day(30), day(36, 23), day(37, 0)])
        assert [e.level for e in first] == [1]
        assert [(e.level, e.due_date, e.escalated_at) for e in later] == [(2, new_due, day(37, 0))]

    def test_stale_event_is_ignored(self) -> None:
        """An older event of the record does not undo a newer close."""
        state = track(None, capa(status="closed", at=day(2)))
        state = track(state, capa(status="open", at=day(1)))
        assert state is not None and not state.open

    def test_state_survives_a_json_round_trip(self) -> None:
        """State written with to_dict, through JSON, reads back equal with from_dict."""
        state, _ = sweep(track(None, capa()), [day(8)])
        assert state is not None
        assert TrackedRecord.from_dict(json.loads(json.dumps(state.to_dict()))) == state


class TestReplay:
    @staticmethod
    def _partition() -> list[QualityEvent]:
        return [
            capa("CAPA-77", at=START),
            finding("AF-12"),
            capa("CAPA-78", due=DUE + timedelta(days=3), at=START + timedelta(hours=1)),
            capa("CAPA-77", at=day(4)),
            capa("CAPA-78", status="closed", at=day(5)),
            capa("CAPA-79", at=day(6)),
            capa("CAPA-79", due=DUE + timedelta(days=20), at=day(9)),
            capa("CAPA-80", at=day(40)),
        ]

    def _run(self) -> tuple[dict[str, TrackedRecord | None], list[Escalation]]:
        """Drive a partition as the agent would: track, advance the watermark, escalate all."""
        table: dict[str, TrackedRecord | None] = {}
        emitted: list[Escalation] = []
        watermark: datetime | None = None
        for event in self._partition():
            key = f"{event['source_system']}:{event['source_record_id']}"
            table[key] = track(table.get(key), event)
            watermark = watermark_after(watermark, event)
            for record_key in sorted(table):
                table[record_key], new = escalate(table[record_key], watermark, RULES)
                emitted += new
        return table, emitted

    def test_replay_emits_the_same_escalations(self) -> None:
        """Processing the same partition twice gives equal escalations and equal end states."""
        first_table, first = self._run()
        second_table, second = self._run()
        assert first == second and first_table == second_table
        assert len({e.escalation_id for e in first}) == len(first)
        assert ("CAPA-78", 1) in {(e.source_record_id, e.level) for e in first}
        assert ("CAPA-78", 2) not in {(e.source_record_id, e.level) for e in first}


class TestContract:
    def test_escalations_validate_against_the_schema(self) -> None:
        """Every escalation's to_avro() validates strictly against its Avro schema."""
        schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
        _, emitted = sweep(track(None, capa()), [day(45)])
        for escalation in emitted:
            assert validate(escalation.to_avro(), schema, strict=True)


class TestRules:
    def test_shipped_rules_are_a_ladder(self) -> None:
        """The packaged file gives levels 1, 2, 3 at 0, 7 and 30 days."""
        assert [(r.level, r.after_days) for r in RULES.levels] == [(1, 0), (2, 7), (3, 30)]

    def test_gaps_in_levels_are_refused(self) -> None:
        """Levels numbered with a gap are a configuration error."""
        document = _rules_document()
        document["levels"][1]["level"] = 5
        with pytest.raises(ConfigurationError, match=r"numbered 1\.\.n"):
            parse_escalation_rules(document)

    def test_decreasing_days_are_refused(self) -> None:
        """A higher level reached sooner than a lower one is a configuration error."""
        document = _rules_document()
        document["levels"][2]["after_days"] = 3
        with pytest.raises(ConfigurationError, match="must not decrease"):
            parse_escalation_rules(document)


#: event times from just before the due date to well past level 3
_WATERMARKS = st.lists(
    st.integers(min_value=-3 * 24, max_value=45 * 24).map(lambda h: day(0, 0) + timedelta(hours=h)),
    min_size=1,
    max_size=30,
)


class TestProperties:
    @given(watermarks=_WATERMARKS)
    def test_any_interleaving_emits_each_level_at_most_once(
        self, watermarks: list[datetime]
    ) -> None:
        """Any order of watermark moves emits each level at most once, and the same final set."""
        start = track(None, capa())
        _, emitted = sweep(start, watermarks)
        levels = [e.level for e in emitted]
        assert len(levels) == len(set(levels))
        # the final set depends only on the furthest event time reached, never on the path
        _, at_once = sweep(start, [max(watermarks)])
        assert {e.escalation_id for e in emitted} == {e.escalation_id for e in at_once}
        _, in_order = sweep(start, sorted(watermarks))
        assert [e.level for e in in_order] == sorted(e.level for e in in_order)


def _rules_document() -> dict[str, Any]:
    path = PROJECT_ROOT / "qmsflow" / "config" / "escalation_rules.toml"
    document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return document


class TestAnyDueDateAvroAccepts:
    """Date arithmetic must not overflow: one CAPA due 9999-12-31 once stopped its partition."""

    def test_level_days_past_year_9999_are_never_reached(self) -> None:
        """A level whose day lies past date.max is `NEVER`, not an OverflowError."""
        assert level_reached_at(date(9999, 12, 31), 0) == datetime(9999, 12, 31, tzinfo=UTC)
        assert level_reached_at(date(9999, 12, 31), 1) == NEVER
        assert level_reached_at(date(9999, 12, 20), 30) == NEVER

    def test_a_capa_due_9999_12_31_tracks_and_never_escalates(self) -> None:
        """Tracked like any other; no watermark a worker can hold reaches its levels."""
        state = track(None, capa(due=date(9999, 12, 31), at=START))
        assert state is not None and state.due_date == date(9999, 12, 31)
        state, emitted = escalate(state, datetime(9999, 12, 30, tzinfo=UTC), RULES)
        assert emitted == []
        assert state is not None
        assert TrackedRecord.from_dict(json.loads(json.dumps(state.to_dict()))) == state

    def test_a_capa_due_0001_01_01_escalates_every_level_once(self) -> None:
        """Long overdue: every level at once, with an overdue count Avro's int holds."""
        state = track(None, capa(due=date(1, 1, 1), at=START))
        state, emitted = escalate(state, START, RULES)
        assert [e.level for e in emitted] == [rung.level for rung in RULES.levels]
        assert all(e.overdue_days == (START.date() - date(1, 1, 1)).days for e in emitted)
        assert all(e.overdue_days < 2**31 for e in emitted)
        assert escalate(state, START + timedelta(days=1), RULES)[1] == []
