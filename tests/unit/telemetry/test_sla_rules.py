"""SLA rules as data and their evaluation: pure functions over canonical events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from connectors.postgres_sink.rows import BINDINGS, SLA_BREACH_COLUMNS
from qmsflow.errors import ConfigurationError
from qmsflow.quality.event import Coordinates, QualityEvent
from qmsflow.quality.sla import SlaRules, breach_id, check, load_sla_rules, parse_sla_rules
from qmsflow.settings import PROJECT_ROOT

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _event(event_type: str = "nonconformance", **overrides: Any) -> QualityEvent:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event_type}/{overrides}")),
        "event_type": event_type,
        "source_system": "QMS",
        "source_record_id": "NCR-1042",
        "occurred_at": T0,
        "recorded_at": T0,
        "product_line": "infusion-pumps",
        "site": "BOS1",
        "lot_id": "L2611-0042",
        "correlation_id": "corr-1",
        "synthetic": False,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "defect_category": "nonconforming_product",
        **overrides,
    }
    return event  # type: ignore[return-value]  # the fields SLA checks read


@pytest.fixture(scope="module")
def rules() -> SlaRules:
    return load_sla_rules()


class TestRules:
    def test_shipped_rules_load(self, rules: SlaRules) -> None:
        """The shipped sla.toml validates and names both interfaces of the issue."""
        by_name = {rule.name: rule for rule in rules.sla}
        assert by_name["nonconformance-quarantine"].limit == timedelta(minutes=5)
        assert by_name["lab-oos-incident"].limit == timedelta(minutes=1)

    def test_invalid_rules_name_the_problem(self) -> None:
        """A rule with a non-positive limit is refused with the file named."""
        document = {
            "version": 1,
            "sla": [
                {
                    "name": "x",
                    "interface": "x",
                    "event_type": "nonconformance",
                    "output": "incident",
                    "within_seconds": 0,
                }
            ],
        }
        with pytest.raises(ConfigurationError, match=r"(?s)sla\.toml.*within_seconds"):
            parse_sla_rules(document)

    def test_duplicate_names_are_refused(self) -> None:
        """Two rules may not share a name (the breach id and metric label derive from it)."""
        rule = {
            "name": "x",
            "interface": "x",
            "event_type": "nonconformance",
            "output": "incident",
            "within_seconds": 1,
        }
        with pytest.raises(ConfigurationError, match="unique"):
            parse_sla_rules({"version": 1, "sla": [rule, rule]})


class TestCheck:
    def test_output_within_the_limit_is_met(self, rules: SlaRules) -> None:
        """A quarantine command 4 minutes after recorded_at meets the 5-minute SLA."""
        [verdict] = check(
            rules, _event(), "quarantine_command", "c1", T0 + timedelta(minutes=4), action="HOLD"
        )
        assert verdict.met and verdict.elapsed == timedelta(minutes=4)

    def test_exactly_the_limit_is_met(self, rules: SlaRules) -> None:
        """The limit itself is inside the SLA."""
        [verdict] = check(
            rules, _event(), "quarantine_command", "c1", T0 + timedelta(minutes=5), action="HOLD"
        )
        assert verdict.met

    def test_late_output_is_a_breach(self, rules: SlaRules) -> None:
        """A command 10 minutes late is a breach carrying the event, the times and the limit."""
        event = _event()
        produced = T0 + timedelta(minutes=10)
        [verdict] = check(rules, event, "quarantine_command", "c1", produced, action="HOLD")
        breach = verdict.breach
        assert breach is not None
        assert (breach.elapsed_ms, breach.limit_ms) == (600_000, 300_000)
        assert breach.event_id == event["event_id"] and breach.output_id == "c1"
        assert breach.trace_id == event["trace_id"] and breach.correlation_id == "corr-1"
        assert breach.breach_id == breach_id("nonconformance-quarantine", event["event_id"], "c1")

    def test_breach_id_is_deterministic(self, rules: SlaRules) -> None:
        """A replay measured at another time produces the same breach id."""
        event = _event()
        first, second = (
            check(
                rules, event, "quarantine_command", "c1", T0 + timedelta(minutes=m), action="HOLD"
            )
            for m in (10, 99)
        )
        assert first[0].breach and second[0].breach
        assert first[0].breach.breach_id == second[0].breach.breach_id

    def test_release_is_not_measured(self, rules: SlaRules) -> None:
        """Only HOLD commands are measured: a release follows the MRB, not the pipeline."""
        late = T0 + timedelta(hours=1)
        assert check(rules, _event(), "quarantine_command", "c1", late, action="RELEASE") == []

    def test_lab_oos_incident_has_a_one_minute_limit(self, rules: SlaRules) -> None:
        """An OOS lab result's incident 61 s after recorded_at breaches."""
        event = _event("lab_result", source_system="LIMS")
        [verdict] = check(rules, event, "incident", "i1", T0 + timedelta(seconds=61))
        assert not verdict.met

    def test_conforming_lab_result_is_not_measured(self, rules: SlaRules) -> None:
        """A conforming lab result is outside the OOS rule's defect categories."""
        event = _event("lab_result", defect_category="conforming")
        assert check(rules, event, "incident", "i1", T0 + timedelta(hours=1)) == []

    def test_source_clock_ahead_counts_as_zero(self, rules: SlaRules) -> None:
        """recorded_at in our future is met with zero elapsed, never a negative time."""
        [verdict] = check(
            rules, _event(), "quarantine_command", "c1", T0 - timedelta(minutes=1), action="HOLD"
        )
        assert verdict.met and verdict.elapsed == timedelta(0)


class TestBreachRecord:
    def test_breach_matches_its_avro_contract(self, rules: SlaRules) -> None:
        """The record validates against ops.sla-breaches.v1-value v1."""
        path = PROJECT_ROOT / "schemas" / "avro" / "ops.sla-breaches.v1-value" / "v1.avsc"
        schema = fastavro.parse_schema(json.loads(path.read_text("utf-8")))
        [verdict] = check(
            rules, _event(), "quarantine_command", "c1", T0 + timedelta(hours=1), action="HOLD"
        )
        assert verdict.breach is not None
        assert validate(verdict.breach.to_avro(), schema, raise_errors=True)

    def test_breach_maps_to_one_sla_breach_row(self, rules: SlaRules) -> None:
        """The sink binding turns a breach into one qms.sla_breach row, lineage last."""
        [binding] = [b for b in BINDINGS if b.topic == "ops.sla-breaches.v1"]
        [verdict] = check(
            rules, _event(), "quarantine_command", "c1", T0 + timedelta(hours=1), action="HOLD"
        )
        assert verdict.breach is not None
        [row] = binding.writes[0].to_rows(verdict.breach.to_avro(), Coordinates("t", 1, 7))
        assert len(row) == len(SLA_BREACH_COLUMNS) and row[-3:] == ("t", 1, 7)
