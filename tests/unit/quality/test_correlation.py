"""Root-cause correlation: incidents, alerts, severity, closing, order independence, contracts."""

from __future__ import annotations

import copy
import json
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from qmsflow.errors import ConfigurationError
from qmsflow.quality.correlation import (
    ALERT_NAMESPACE,
    Alert,
    CorrelationRules,
    IncidentRecord,
    IncidentState,
    close_quiet,
    correlate,
    incident_id,
    load_rules,
    parse_rules,
)
from qmsflow.quality.event import PAYLOAD_RECORD, QualityEvent
from qmsflow.settings import PROJECT_ROOT

_BASE = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
_EVENT_IDS = uuid.UUID("0b7e3f0c-2a51-4c1e-9d6b-5f0a3c9e7d10")
_LOT, _SUPPLIER = "L2611-0042", "SUP-0042"
_SOURCE = {
    "nonconformance": "QMS",
    "capa": "QMS",
    "deviation": "QMS",
    "audit_finding": "QMS",
    "recall": "QMS",
    "supplier_corrective_action": "SUPPLIER_PORTAL",
    "inspection_result": "MES",
    "lab_result": "LIMS",
    "environmental_reading": "EMS",
    "calibration_event": "CMMS",
}


def _event(
    event_type: str = "nonconformance",
    *,
    n: int = 0,
    at: datetime = _BASE,
    lot_id: str | None = _LOT,
    supplier_id: str | None = _SUPPLIER,
    equipment_id: str | None = None,
    severity: str | None = None,
    product_line: str = "INFUSION",
    site: str = "BOS1",
    payload: dict[str, Any] | None = None,
    defect_category: str | None = "nonconforming_product",
) -> QualityEvent:
    """A canonical event (a failing one: it has a defect category); its id derives from `n`."""
    return QualityEvent(
        event_id=str(uuid.uuid5(_EVENT_IDS, str(n))),
        event_type=event_type,
        source_system=_SOURCE[event_type],
        source_record_id=f"{event_type[:3].upper()}-{n}",
        occurred_at=at,
        recorded_at=at + timedelta(seconds=5),
        product_line=product_line,
        site=site,
        lot_id=lot_id,
        part_number="P-100",
        supplier_id=supplier_id,
        equipment_id=equipment_id,
        severity=severity,
        source_severity=severity,
        status="open",
        source_status="Open",
        signature=None,
        audit=None,
        correlation_id=None,
        synthetic=False,
        lineage={
            "topic": "quality.events.v1",
            "partition": 0,
            "offset": n,
            "schema_id": 1,
            "subject": "quality.events.v1-value",
            "schema_version": 1,
            "ingested_at": at + timedelta(seconds=10),
        },
        trace_id=None,
        defect_category=defect_category,
        payload=(
            PAYLOAD_RECORD[event_type],
            {"title": f"defect {n}"} if payload is None else payload,
        ),
    )


@dataclass
class _Run:
    """The correlation table and every record published, as the agent would keep them."""

    rules: CorrelationRules
    table: dict[str, IncidentState] = field(default_factory=dict)
    incidents: list[IncidentRecord] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    def feed(self, *events: QualityEvent) -> _Run:
        for event in events:
            key = self.rules.root_cause_key(event)
            result = correlate(self.table.get(key) if key else None, event, self.rules)
            if key is not None and result.state is not None:
                self.table[key] = result.state
            self.incidents.extend(result.incidents)
            self.alerts.extend([result.alert] if result.alert else [])
            self.outcomes.append(result.outcome)
        return self


@pytest.fixture(scope="module")
def rules() -> CorrelationRules:
    return load_rules()


def _shipped_document() -> dict[str, Any]:
    text = resources.files("qmsflow").joinpath("config/correlation_rules.toml").read_text("utf-8")
    return tomllib.loads(text)


class TestRootCause:
    def test_first_key_by_priority_is_the_root_cause(self, rules: CorrelationRules) -> None:
        """A nonconformance on a supplier lot correlates on the lot, not the supplier."""
        event = _event()
        assert rules.root_cause_keys(event) == (f"lot:{_LOT}", f"supplier:{_SUPPLIER}")
        assert rules.root_cause_key(event) == f"lot:{_LOT}"

    def test_missing_first_key_falls_back_to_the_next(self, rules: CorrelationRules) -> None:
        """A nonconformance without a lot correlates on its supplier."""
        assert rules.root_cause_key(_event(lot_id=None)) == f"supplier:{_SUPPLIER}"

    def test_payload_fields_can_be_root_causes(self, rules: CorrelationRules) -> None:
        """An environmental reading correlates on its payload location, then its equipment."""
        reading = _event(
            "environmental_reading",
            equipment_id="EQ-7",
            severity="major",
            payload={"location_id": "CR-2"},
        )
        assert rules.root_cause_keys(reading) == ("location:CR-2", "equipment:EQ-7")

    def test_conforming_results_and_normal_readings_do_not_correlate(
        self, rules: CorrelationRules
    ) -> None:
        """A passing lab result or a reading within limits is no evidence: no root cause."""
        passing = _event("lab_result", defect_category=None)
        normal = _event("environmental_reading", severity=None, payload={"location_id": "CR-2"})
        assert rules.root_cause_keys(passing) == ()
        assert rules.root_cause_keys(normal) == ()
        assert correlate(None, passing, rules).outcome == "uncorrelated"

    @pytest.mark.parametrize("event_type", ["capa", "deviation", "audit_finding", "recall"])
    def test_event_types_without_a_rule_yield_nothing(
        self, rules: CorrelationRules, event_type: str
    ) -> None:
        """An event type the rules do not list opens no incident and emits nothing."""
        result = correlate(None, _event(event_type), rules)
        assert result.outcome == "uncorrelated"
        assert (result.state, result.incidents, result.alert) == (None, (), None)

    def test_event_without_any_key_field_yields_nothing(self, rules: CorrelationRules) -> None:
        """A nonconformance with neither lot nor supplier is not correlated."""
        result = correlate(None, _event(lot_id=None, supplier_id=None), rules)
        assert (result.outcome, result.state, result.incidents) == ("uncorrelated", None, ())


class TestIncident:
    def test_forty_events_from_three_systems_form_one_incident(
        self, rules: CorrelationRules
    ) -> None:
        """QMS, MES and LIMS events on one lot in ten minutes are one incident with one alert."""
        kinds = ["nonconformance", "inspection_result", "lab_result"]
        events = [
            _event(kinds[n % 3], n=n, at=_BASE + timedelta(seconds=15 * n)) for n in range(40)
        ]
        run = _Run(rules).feed(*events)
        assert list(run.table) == [f"lot:{_LOT}"]
        state = run.table[f"lot:{_LOT}"]
        assert state.member_count == 40
        assert state.source_systems == ("LIMS", "MES", "QMS")
        assert state.event_types == ("inspection_result", "lab_result", "nonconformance")
        assert len(run.alerts) == 1
        assert run.alerts[0].incident_id == state.incident_id
        assert [r.revision for r in run.incidents] == list(range(1, 41))
        final = run.incidents[-1]
        assert (final.member_count, final.suppressed_alerts, final.status) == (40, 39, "open")

    def test_incident_id_depends_only_on_key_and_ordinal(self, rules: CorrelationRules) -> None:
        """The first incident on a key has ordinal 1 and the uuid5 of `key#1`."""
        state = correlate(None, _event(), rules).state
        assert state is not None
        assert state.ordinal == 1
        assert state.incident_id == incident_id(f"lot:{_LOT}", 1)
        assert uuid.UUID(state.incident_id).version == 5

    def test_alert_carries_the_raising_event(self, rules: CorrelationRules) -> None:
        """The alert names the first member, its time and its headline."""
        event = _event(n=7, payload={"title": "Burr on luer thread"})
        alert = correlate(None, event, rules).alert
        assert alert is not None
        assert alert.raised_at == event["occurred_at"]
        assert alert.first_event_id == event["event_id"]
        assert alert.alert_id == str(uuid.uuid5(ALERT_NAMESPACE, alert.incident_id))
        assert alert.summary == f"QMS nonconformance NON-7 on lot:{_LOT}: Burr on luer thread"

    def test_duplicate_changes_nothing(self, rules: CorrelationRules) -> None:
        """An event that is already a member emits nothing and leaves the state as it was."""
        first = correlate(None, _event(), rules)
        again = correlate(first.state, _event(), rules)
        assert again.outcome == "duplicate"
        assert (again.state, again.incidents, again.alert) == (first.state, (), None)

    def test_member_joins_with_suppressed_alerts(self, rules: CorrelationRules) -> None:
        """A second member updates the incident, raises no alert and counts one suppressed."""
        run = _Run(rules).feed(_event(n=1), _event("lab_result", n=2))
        assert run.outcomes == ["opened", "joined"]
        assert len(run.alerts) == 1
        assert run.incidents[-1].suppressed_alerts == 1

    def test_earliest_member_names_product_line_and_site(self, rules: CorrelationRules) -> None:
        """A later-arriving but earlier-occurring member moves opened_at and the reported site."""
        run = _Run(rules).feed(
            _event(n=1, at=_BASE, site="BOS1"),
            _event(n=2, at=_BASE - timedelta(minutes=30), site="GAL2"),
        )
        state = run.table[f"lot:{_LOT}"]
        assert (state.opened_at, state.last_at) == (_BASE - timedelta(minutes=30), _BASE)
        assert state.site == "GAL2"

    def test_state_for_another_key_is_refused(self, rules: CorrelationRules) -> None:
        """Passing the state of one root cause with an event of another is a routing bug."""
        state = correlate(None, _event(), rules).state
        with pytest.raises(ValueError, match="route events by root_cause_key"):
            correlate(state, _event(n=2, lot_id="L-OTHER"), rules)

    def test_non_canonical_severity_is_refused(self, rules: CorrelationRules) -> None:
        """A severity normalise should have mapped is an error naming the value."""
        with pytest.raises(ValueError, match="'High' is not canonical"):
            correlate(None, _event(severity="High"), rules)


class TestSeverity:
    def test_severity_rises_with_member_count(self, rules: CorrelationRules) -> None:
        """Minor below major_at members, major from major_at, critical from critical_at."""
        run = _Run(rules).feed(*(_event(n=n, at=_BASE + timedelta(minutes=n)) for n in range(25)))
        levels = [r.severity for r in run.incidents]
        major, critical = rules.severity.major_at, rules.severity.critical_at
        assert set(levels[: major - 1]) == {"minor"}
        assert set(levels[major - 1 : critical - 1]) == {"major"}
        assert set(levels[critical - 1 :]) == {"critical"}

    def test_worst_member_severity_counts(self, rules: CorrelationRules) -> None:
        """One critical member makes the incident critical at once."""
        run = _Run(rules).feed(_event(n=1, severity="minor"), _event(n=2, severity="critical"))
        state = run.table[f"lot:{_LOT}"]
        assert (state.worst_member_severity, state.severity) == ("critical", "critical")

    def test_alert_severity_is_the_opening_member_severity(self, rules: CorrelationRules) -> None:
        """An incident opened by a major nonconformance raises a major alert."""
        alert = correlate(None, _event(severity="major"), rules).alert
        assert alert is not None and alert.severity == "major"


class TestClosing:
    def test_event_after_quiet_period_opens_the_next_incident(
        self, rules: CorrelationRules
    ) -> None:
        """Past the quiet period the old incident is published closed and ordinal 2 opens."""
        later = _BASE + rules.quiet_period + timedelta(seconds=1)
        run = _Run(rules).feed(_event(n=1), _event(n=2, at=later))
        assert run.outcomes == ["opened", "opened"]
        closed, opened = run.incidents[-2:]
        assert (closed.status, closed.ordinal, closed.member_count) == ("closed", 1, 1)
        assert (opened.status, opened.ordinal) == ("open", 2)
        assert opened.incident_id == incident_id(f"lot:{_LOT}", 2)
        assert [a.incident_id for a in run.alerts] == [closed.incident_id, opened.incident_id]

    def test_event_at_the_quiet_boundary_still_joins(self, rules: CorrelationRules) -> None:
        """An event exactly one quiet period after the last member joins the open incident."""
        run = _Run(rules).feed(_event(n=1), _event(n=2, at=_BASE + rules.quiet_period))
        assert run.outcomes == ["opened", "joined"]

    def test_watermark_past_quiet_period_closes(self, rules: CorrelationRules) -> None:
        """close_quiet closes only once the watermark is past last_at plus the quiet period."""
        state = correlate(None, _event(), rules).state
        assert state is not None
        assert close_quiet(state, _BASE + rules.quiet_period, rules) is None
        record = close_quiet(state, _BASE + rules.quiet_period + timedelta(microseconds=1), rules)
        assert record is not None
        assert (record.status, record.incident_id) == ("closed", state.incident_id)
        assert close_quiet(state.closed(), _BASE + timedelta(days=9), rules) is None

    def test_closed_incident_is_not_closed_twice(self, rules: CorrelationRules) -> None:
        """After close_quiet, the next event opens ordinal 2 without another closed record."""
        state = correlate(None, _event(), rules).state
        assert state is not None
        later = _BASE + rules.quiet_period + timedelta(hours=1)
        result = correlate(state.closed(), _event(n=2, at=later), rules)
        assert result.outcome == "opened"
        assert [r.status for r in result.incidents] == ["open"]

    def test_late_member_of_closed_incident_still_joins(self, rules: CorrelationRules) -> None:
        """A member within the quiet period that arrives after closing joins, staying closed."""
        state = correlate(None, _event(), rules).state
        assert state is not None
        result = correlate(state.closed(), _event(n=2, at=_BASE + timedelta(hours=1)), rules)
        assert result.outcome == "joined"
        assert [(r.status, r.member_count) for r in result.incidents] == [("closed", 2)]

    def test_event_before_the_window_is_late(self, rules: CorrelationRules) -> None:
        """An event earlier than one window before the incident opened changes nothing."""
        state = correlate(None, _event(), rules).state
        early = _BASE - rules.window - timedelta(seconds=1)
        result = correlate(state, _event(n=2, at=early), rules)
        assert (result.outcome, result.state, result.incidents) == ("late", state, ())


#: one event template per root cause; the property test spreads its events over them
_KEYS: list[dict[str, Any]] = [
    {"event_type": "nonconformance", "lot_id": "L1"},
    {"event_type": "lab_result", "lot_id": "L1"},
    {"event_type": "inspection_result", "lot_id": "L2"},
    {"event_type": "nonconformance", "lot_id": None, "supplier_id": "S9"},
    {"event_type": "supplier_corrective_action", "lot_id": None, "supplier_id": "S9"},
    {"event_type": "calibration_event", "lot_id": None, "equipment_id": "EQ-3"},
    {"event_type": "environmental_reading", "payload": {"location_id": "CR-2"}},
    {"event_type": "capa"},
]


@st.composite
def _shuffled_runs(draw: st.DrawFn) -> tuple[list[QualityEvent], list[QualityEvent]]:
    """Events within one window, and the same events shuffled with some duplicated."""
    window = int(load_rules().window.total_seconds())
    count = draw(st.integers(min_value=1, max_value=60))
    events = [
        _event(
            n=n,
            at=_BASE + timedelta(seconds=draw(st.integers(0, window))),
            severity=draw(st.sampled_from([None, "minor", "major", "critical"])),
            site=draw(st.sampled_from(["BOS1", "GAL2"])),
            **draw(st.sampled_from(_KEYS)),
        )
        for n in range(count)
    ]
    duplicates = draw(st.lists(st.sampled_from(events), max_size=20))
    return events, draw(st.permutations(events + duplicates))


class TestOrderIndependence:
    @settings(max_examples=200, deadline=None)
    @given(_shuffled_runs())
    def test_any_order_gives_the_same_incidents(
        self, runs: tuple[list[QualityEvent], list[QualityEvent]]
    ) -> None:
        """Shuffled and duplicated events within a window end in identical incident states."""
        rules = load_rules()
        in_order, shuffled = (_Run(rules).feed(*events) for events in runs)
        assert shuffled.table == in_order.table
        assert [s.to_dict() for s in shuffled.table.values()] == [
            in_order.table[k].to_dict() for k in shuffled.table
        ]
        for run in (in_order, shuffled):
            alerted = sorted(a.incident_id for a in run.alerts)
            assert alerted == sorted(s.incident_id for s in run.table.values())
        assert {a.alert_id for a in shuffled.alerts} == {a.alert_id for a in in_order.alerts}
        assert sum(s.member_count for s in shuffled.table.values()) == len(
            [e for e in runs[0] if rules.root_cause_key(e)]
        )

    @settings(max_examples=50, deadline=None)
    @given(_shuffled_runs())
    def test_state_survives_a_json_round_trip(
        self, runs: tuple[list[QualityEvent], list[QualityEvent]]
    ) -> None:
        """to_dict is plain JSON, and from_dict rebuilds an equal state."""
        for state in _Run(load_rules()).feed(*runs[1]).table.values():
            assert IncidentState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


class TestRules:
    def test_shipped_rules_load(self) -> None:
        """The packaged rules file is valid and cached."""
        assert load_rules() is load_rules()
        assert load_rules().quiet_period >= load_rules().window

    @pytest.mark.parametrize(
        ("change", "problem"),
        [
            (lambda d: d["event_type"].update(capa={"root_causes": ["batch"]}), "'batch'"),
            (
                lambda d: d["event_type"].update(nonconformace={"root_causes": ["lot"]}),
                "nonconformace",
            ),
            (lambda d: d.update(quiet_period="PT1H"), "quiet_period"),
            (lambda d: d["severity"].update(critical_at=3), "critical_at"),
            (lambda d: d["root_cause"]["lot"].update(field="lot"), "root_cause.lot.field"),
            (lambda d: d.pop("window"), "window"),
            (lambda d: d.update(windw="PT2H"), "windw"),
        ],
    )
    def test_invalid_rules_name_the_problem(self, change: Any, problem: str) -> None:
        """An invalid rules document is a ConfigurationError that names what is wrong."""
        document = copy.deepcopy(_shipped_document())
        change(document)
        with pytest.raises(ConfigurationError, match=r"correlation_rules\.toml is invalid") as err:
            parse_rules(document)
        assert problem in str(err.value)


def _schema(subject: str) -> dict[str, Any]:
    text = (PROJECT_ROOT / "schemas" / "avro" / subject / "v1.avsc").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class TestContracts:
    @pytest.mark.parametrize("subject", ["quality.incidents.v1-value", "quality.alerts.v1-value"])
    def test_every_field_is_documented(self, subject: str) -> None:
        """Each output schema field carries a doc string."""
        schema = _schema(subject)
        assert schema["namespace"] == "io.qmsflow.quality"
        assert all(f.get("doc") for f in schema["fields"])

    def test_incident_and_alert_records_validate(self, rules: CorrelationRules) -> None:
        """Open and closed incident views and the alert match their Avro contracts."""
        incidents = fastavro.parse_schema(_schema("quality.incidents.v1-value"))
        alerts = fastavro.parse_schema(_schema("quality.alerts.v1-value"))
        later = _BASE + rules.quiet_period + timedelta(hours=1)
        run = _Run(rules).feed(_event(n=1), _event("lab_result", n=2), _event(n=3, at=later))
        assert {r.status for r in run.incidents} == {"open", "closed"}
        for record in run.incidents:
            assert validate(record.to_avro(), incidents, strict=True)
        for alert in run.alerts:
            assert validate(alert.to_avro(), alerts, strict=True)

    def test_records_carry_exactly_the_contract_fields(self, rules: CorrelationRules) -> None:
        """to_avro produces the contract's fields in its order, no more."""
        result = correlate(None, _event(), rules)
        assert result.alert is not None
        for subject, record in [
            ("quality.incidents.v1-value", result.incidents[0].to_avro()),
            ("quality.alerts.v1-value", result.alert.to_avro()),
        ]:
            assert list(record) == [f["name"] for f in _schema(subject)["fields"]]
