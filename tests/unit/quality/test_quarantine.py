"""Quarantine decisions: holds and releases per lot, as pure functions over canonical events."""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate

from qmsflow.errors import ConfigurationError
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.quarantine import (
    QUARANTINE_NAMESPACE,
    LotHoldState,
    QuarantineCommand,
    QuarantineRules,
    decide,
    load_quarantine_rules,
    lots_touched,
    parse_quarantine_rules,
)
from qmsflow.settings import PROJECT_ROOT

SCHEMA_PATH = (
    PROJECT_ROOT / "schemas" / "avro" / "inventory.quarantine-commands.v1-value" / "v1.avsc"
)
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LOT = "L2603-0001"


class FakeLotCatalog:
    """Master data for tests: a fixed list of lots per part."""

    def __init__(self, lots: dict[str, Sequence[str]]) -> None:
        self._lots = lots

    def lots_of_part(self, part_number: str) -> Sequence[str]:
        """The part's lots, or none for an unknown part."""
        return self._lots.get(part_number, ())


def _event(
    event_type: str,
    record: str,
    status: str,
    body: dict[str, Any],
    *,
    minutes: int = 0,
    lot_id: str | None = LOT,
    severity: str | None = "major",
    part_number: str | None = "PN-100",
    source_system: str = "QMS",
) -> QualityEvent:
    """A canonical event with a distinct event_id per record, status and time."""
    recorded_at = T0 + timedelta(minutes=minutes)
    return {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{record}/{status}/{minutes}")),
        "event_type": event_type,
        "source_system": source_system,
        "source_record_id": record,
        "occurred_at": recorded_at,
        "recorded_at": recorded_at,
        "product_line": "infusion-pumps",
        "site": "BOS1",
        "lot_id": lot_id,
        "part_number": part_number,
        "supplier_id": None,
        "equipment_id": None,
        "severity": severity,
        "source_severity": severity,
        "status": status,
        "source_status": status,
        "signature": None,
        "audit": None,
        "correlation_id": None,
        "synthetic": False,
        "lineage": {
            "topic": "quality.events.v1",
            "partition": 0,
            "offset": minutes,
            "schema_id": 11,
            "subject": "quality.events.v1-value",
            "schema_version": 1,
            "ingested_at": recorded_at,
        },
        "trace_id": None,
        "payload": (f"io.qmsflow.quality.{event_type}", body),
    }


def nc(
    record: str,
    status: str = "open",
    disposition: str | None = None,
    *,
    minutes: int = 0,
    lots: Sequence[str] = (LOT,),
) -> QualityEvent:
    body = {
        "title": "Crack in housing",
        "description": "",
        "nc_source": "internal",
        "defect_code": "crack",
        "serial_numbers": [],
        "affected_lots": list(lots),
        "disposition": disposition,
    }
    return _event("nonconformance", record, status, body, minutes=minutes)


def inspection(record: str, result: str, *, minutes: int = 0) -> QualityEvent:
    body = {
        "inspection_lot_id": "890012345678",
        "characteristic": "outer diameter",
        "result": result,
        "sample_size": 5,
        "defects_found": 1,
    }
    return _event(
        "inspection_result", record, "in_review", body, minutes=minutes, source_system="MES"
    )


def lab(record: str, result_status: str, *, minutes: int = 0) -> QualityEvent:
    body = {
        "sample_id": "S-1",
        "test_code": "HPLC-01",
        "analyte": "assay",
        "result_status": result_status,
        "method_ref": "USP <621>",
    }
    return _event("lab_result", record, "closed", body, minutes=minutes, source_system="LIMS")


def reading(
    record: str, parameter: str, value: str, action_limit: str, *, lot_id: str | None = LOT
) -> QualityEvent:
    body = {
        "location_id": "BOS1-CR2-07",
        "parameter": parameter,
        "value": Decimal(value),
        "unit": "Pa",
        "alert_limit": None,
        "action_limit": Decimal(action_limit),
        "cleanroom_grade": "B",
    }
    return _event("environmental_reading", record, "open", body, lot_id=lot_id, source_system="EMS")


def recall(
    record: str,
    lot_ids: Sequence[str] = (),
    start: str | None = None,
    end: str | None = None,
    status: str = "open",
) -> QualityEvent:
    body = {
        "recall_number": "Z-1234-2026",
        "classification": "class_ii",
        "reason": "Occlusion alarm may fail",
        "lot_ids": list(lot_ids),
        "lot_range_start": start,
        "lot_range_end": end,
    }
    return _event("recall", record, status, body, lot_id=None, severity="major")


@pytest.fixture(scope="module")
def rules() -> QuarantineRules:
    return load_quarantine_rules()


def run(
    events: Iterable[QualityEvent], rules: QuarantineRules, catalog: FakeLotCatalog | None = None
) -> tuple[dict[str, LotHoldState | None], list[QuarantineCommand]]:
    """Drive events through routing and decisions as the agent would, with a dict for a table."""
    catalog = catalog or FakeLotCatalog({})
    table: dict[str, LotHoldState | None] = {}
    commands: list[QuarantineCommand] = []
    for event in events:
        for lot in lots_touched(event, rules, catalog):
            table[lot], emitted = decide(table.get(lot), lot, event, rules)
            commands += emitted
    return table, commands


class TestNonconformanceHolds:
    def test_nonconformance_on_a_lot_holds_it_once(self, rules: QuarantineRules) -> None:
        """An open NC naming a lot produces exactly one HOLD to blocked stock by movement 350."""
        table, commands = run([nc("NCR-1042")], rules)
        assert [c.action for c in commands] == ["HOLD"]
        hold = commands[0]
        assert hold.lot_id == LOT
        assert hold.reason == "NCR-1042 major nonconformance: crack"
        assert (hold.target_stock_type, hold.sap_movement_type) == ("BLOCKED", "350")
        assert hold.issued_at == T0
        state = table[LOT]
        assert state is not None and state.status == "ON_HOLD" and state.hold_ordinal == 1

    def test_second_nonconformance_on_a_held_lot_emits_nothing(
        self, rules: QuarantineRules
    ) -> None:
        """A second trigger on a held lot adds a reason and no second hold."""
        table, commands = run([nc("NCR-1042"), nc("NCR-1043", minutes=5)], rules)
        assert len(commands) == 1
        state = table[LOT]
        assert state is not None and len(state.reasons) == 2

    def test_updates_of_the_same_nonconformance_emit_nothing(self, rules: QuarantineRules) -> None:
        """Later status changes of the triggering NC neither hold again nor release."""
        events = [nc("NCR-1042"), nc("NCR-1042", "in_progress", minutes=1)]
        assert len(run(events, rules)[1]) == 1

    def test_releasing_one_of_two_reasons_emits_nothing(self, rules: QuarantineRules) -> None:
        """A use-as-is disposition on one NC leaves the lot held by the other."""
        events = [
            nc("NCR-1042"),
            nc("NCR-1043", minutes=1),
            nc("NCR-1042", "in_progress", "use_as_is", minutes=2),
        ]
        table, commands = run(events, rules)
        assert [c.action for c in commands] == ["HOLD"]
        state = table[LOT]
        assert state is not None and state.status == "ON_HOLD"
        assert list(state.reasons) == ["QMS:nonconformance:NCR-1043"]

    def test_releasing_the_last_reason_emits_one_release(self, rules: QuarantineRules) -> None:
        """When the last open reason goes, one RELEASE to unrestricted stock by movement 343."""
        events = [
            nc("NCR-1042"),
            nc("NCR-1043", minutes=1),
            nc("NCR-1042", "in_progress", "Use As Is", minutes=2),
            nc("NCR-1043", "in_progress", "rework", minutes=3),
            nc("NCR-1043", "closed", "rework", minutes=4),
        ]
        table, commands = run(events, rules)
        assert [c.action for c in commands] == ["HOLD", "RELEASE"]
        release = commands[1]
        assert (release.target_stock_type, release.sap_movement_type) == ("UNRESTRICTED", "343")
        assert release.trigger_source_record_id == "NCR-1043"
        assert release.issued_at == T0 + timedelta(minutes=4)
        state = table[LOT]
        assert state is not None and state.status == "RELEASED" and not state.reasons

    def test_disposition_covers_earlier_result_findings(self, rules: QuarantineRules) -> None:
        """The MRB's use-as-is also clears inspection and lab holds recorded before it."""
        events = [
            nc("NCR-7"),
            inspection("INSP-1", "reject", minutes=1),
            lab("LAB-1", "OOS", minutes=2),
            nc("NCR-7", "in_review", "use_as_is", minutes=3),
        ]
        table, commands = run(events, rules)
        assert [c.action for c in commands] == ["HOLD", "RELEASE"]
        state = table[LOT]
        assert state is not None and state.status == "RELEASED" and not state.reasons

    def test_redelivered_finding_after_release_does_not_hold_again(
        self, rules: QuarantineRules
    ) -> None:
        """A replayed copy of a finding the disposition already covered changes nothing."""
        finding = lab("LAB-1", "OOS", minutes=1)
        events = [nc("NCR-7"), finding, nc("NCR-7", "in_review", "use_as_is", minutes=3), finding]
        assert [c.action for c in run(events, rules)[1]] == ["HOLD", "RELEASE"]

    def test_disposition_does_not_cover_later_findings(self, rules: QuarantineRules) -> None:
        """A lab OOS recorded after the disposition keeps the lot held."""
        events = [
            nc("NCR-7"),
            nc("NCR-7", "in_review", "use_as_is", minutes=3),
            lab("LAB-1", "OOS", minutes=5),
        ]
        commands = run(events, rules)[1]
        assert [c.action for c in commands] == ["HOLD", "RELEASE", "HOLD"]

    def test_rework_releases_only_when_closed(self, rules: QuarantineRules) -> None:
        """A rework disposition keeps the hold until the NC closes."""
        events = [nc("NCR-1"), nc("NCR-1", "in_progress", "rework", minutes=1)]
        assert [c.action for c in run(events, rules)[1]] == ["HOLD"]

    def test_return_to_vendor_releases_when_closed(self, rules: QuarantineRules) -> None:
        """A closed return-to-vendor NC releases its lot."""
        events = [nc("NCR-1"), nc("NCR-1", "closed", "return_to_vendor", minutes=1)]
        assert [c.action for c in run(events, rules)[1]] == ["HOLD", "RELEASE"]

    def test_scrapped_lot_stays_blocked(self, rules: QuarantineRules) -> None:
        """A closed NC with a scrap disposition releases nothing."""
        events = [nc("NCR-1"), nc("NCR-1", "closed", "scrap", minutes=1)]
        table, commands = run(events, rules)
        assert [c.action for c in commands] == ["HOLD"]
        state = table[LOT]
        assert state is not None and state.status == "ON_HOLD"

    def test_cancelled_nonconformance_releases(self, rules: QuarantineRules) -> None:
        """An NC cancelled as raised in error lifts its hold."""
        events = [nc("NCR-1"), nc("NCR-1", "cancelled", minutes=1)]
        assert [c.action for c in run(events, rules)[1]] == ["HOLD", "RELEASE"]

    def test_closed_nonconformance_does_not_hold(self, rules: QuarantineRules) -> None:
        """An NC first seen closed puts nothing on hold."""
        table, commands = run([nc("NCR-1", "closed", "scrap")], rules)
        assert commands == [] and table[LOT] is None

    def test_affected_lots_are_each_held(self, rules: QuarantineRules) -> None:
        """An NC holds its envelope lot and every affected lot, once each."""
        _, commands = run([nc("NCR-1", lots=(LOT, "L2603-0002"))], rules)
        assert sorted(c.lot_id for c in commands) == [LOT, "L2603-0002"]

    def test_hold_after_release_is_a_new_ordinal(self, rules: QuarantineRules) -> None:
        """A lot held again after a release gets a new hold with a new command id."""
        events = [nc("NCR-1"), nc("NCR-1", "cancelled", minutes=1), nc("NCR-2", minutes=2)]
        table, commands = run(events, rules)
        assert [c.action for c in commands] == ["HOLD", "RELEASE", "HOLD"]
        assert len({c.command_id for c in commands}) == 3
        state = table[LOT]
        assert state is not None and state.hold_ordinal == 2

    def test_stale_event_does_not_reopen_a_released_reason(self, rules: QuarantineRules) -> None:
        """An older event of a record, redelivered after a newer one, changes nothing."""
        opened = nc("NCR-1")
        events = [opened, nc("NCR-1", "in_progress", "use_as_is", minutes=1), opened]
        assert [c.action for c in run(events, rules)[1]] == ["HOLD", "RELEASE"]


class TestResultHolds:
    @pytest.mark.parametrize("code", ["reject", "R", "Rejected", "FAIL"])
    def test_inspection_reject_holds_in_every_vocabulary(
        self, rules: QuarantineRules, code: str
    ) -> None:
        """A reject result holds the lot, whichever MES vocabulary says it."""
        _, commands = run([inspection("INSP-2026-0012", code)], rules)
        assert [c.action for c in commands] == ["HOLD"]
        assert commands[0].reason.startswith("INSP-2026-0012 inspection reject")

    @pytest.mark.parametrize("code", ["accept", "A"])
    def test_inspection_accept_holds_nothing(self, rules: QuarantineRules, code: str) -> None:
        """An accepted characteristic creates no state and no command."""
        table, commands = run([inspection("INSP-2026-0013", code)], rules)
        assert commands == [] and table[LOT] is None

    def test_corrected_inspection_result_releases(self, rules: QuarantineRules) -> None:
        """A later version of the same result that accepts lifts the hold it opened."""
        events = [inspection("INSP-1", "R"), inspection("INSP-1", "A", minutes=1)]
        assert [c.action for c in run(events, rules)[1]] == ["HOLD", "RELEASE"]

    def test_out_of_specification_holds(self, rules: QuarantineRules) -> None:
        """An OOS lab result holds the lot."""
        _, commands = run([lab("LR-1", "OOS")], rules)
        assert [c.action for c in commands] == ["HOLD"]
        assert commands[0].reason == "LR-1 lab result OOS: assay (HPLC-01)"

    @pytest.mark.parametrize("status", ["OOT", "PASS"])
    def test_out_of_trend_and_pass_hold_nothing(self, rules: QuarantineRules, status: str) -> None:
        """OOT is investigated, not held, by default; PASS is nothing."""
        assert run([lab("LR-2", status)], rules)[1] == []

    def test_out_of_trend_holds_when_configured(self) -> None:
        """A plant that lists oot among the hold statuses holds on OOT."""
        document = _rules_document()
        document["lab_result"]["hold_result_statuses"] = ["OOS", "OOT"]
        custom = parse_quarantine_rules(document)
        assert [c.action for c in run([lab("LR-2", "OOT")], custom)[1]] == ["HOLD"]

    def test_reading_beyond_action_limit_holds_its_lot(self, rules: QuarantineRules) -> None:
        """A count at or above its action limit holds the lot it names."""
        event = reading("RDG-1", "viable_count", "12", "10")
        assert [c.action for c in run([event], rules)[1]] == ["HOLD"]

    def test_pressure_below_action_limit_holds(self, rules: QuarantineRules) -> None:
        """Differential pressure is beyond its limit when it falls below it."""
        low = reading("RDG-2", "differential_pressure", "8.0", "10.0")
        high = reading("RDG-3", "differential_pressure", "15.0", "10.0")
        assert [c.action for c in run([low], rules)[1]] == ["HOLD"]
        assert run([high], rules)[1] == []

    def test_reading_without_a_lot_touches_nothing(self, rules: QuarantineRules) -> None:
        """An excursion in a room without a named lot is not routed to any lot."""
        event = reading("RDG-4", "viable_count", "12", "10", lot_id=None)
        assert lots_touched(event, rules, FakeLotCatalog({})) == []


class TestRecall:
    CATALOG = FakeLotCatalog(
        {"PN-100": ["L2602-0007", "L2603-0001", "L2603-0002", "L2603-0003", "L2604-0001"]}
    )

    def test_recall_fans_out_to_every_lot_in_range(self, rules: QuarantineRules) -> None:
        """A ranged recall holds every lot of the part from start to end, inclusive."""
        event = recall("RCL-9", start="L2603-0001", end="L2603-0003")
        assert lots_touched(event, rules, self.CATALOG) == [
            "L2603-0001",
            "L2603-0002",
            "L2603-0003",
        ]
        _, commands = run([event], rules, self.CATALOG)
        assert [c.lot_id for c in commands if c.action == "HOLD"] == [
            "L2603-0001",
            "L2603-0002",
            "L2603-0003",
        ]

    def test_recall_holds_listed_lots_and_range(self, rules: QuarantineRules) -> None:
        """Listed lots come first, then the range, without repeats."""
        event = recall("RCL-9", lot_ids=["L2602-0007", "L2603-0002"], start="L2603-0002")
        assert lots_touched(event, rules, self.CATALOG) == [
            "L2602-0007",
            "L2603-0002",
            "L2603-0003",
            "L2604-0001",
        ]

    def test_cancelled_recall_releases_its_lots(self, rules: QuarantineRules) -> None:
        """Cancelling a recall releases each lot it held."""
        events = [
            recall("RCL-9", lot_ids=["L2603-0001", "L2603-0002"]),
            recall("RCL-9", lot_ids=["L2603-0001", "L2603-0002"], status="cancelled"),
        ]
        _, commands = run(events, rules, self.CATALOG)
        assert [(c.action, c.lot_id) for c in commands] == [
            ("HOLD", "L2603-0001"),
            ("HOLD", "L2603-0002"),
            ("RELEASE", "L2603-0001"),
            ("RELEASE", "L2603-0002"),
        ]


class TestDeterminism:
    EVENTS = (
        nc("NCR-1042"),
        inspection("INSP-1", "R", minutes=1),
        nc("NCR-1042", "in_progress", "use_as_is", minutes=2),
        inspection("INSP-1", "A", minutes=3),
        lab("LR-7", "OOS", minutes=4),
        nc("NCR-1050", minutes=5, lots=("L2603-0009",)),
        nc("NCR-1050", "cancelled", minutes=6, lots=("L2603-0009",)),
    )

    def test_command_ids_are_deterministic(self, rules: QuarantineRules) -> None:
        """A command id is uuid5 of lot, hold ordinal and action, the same on every run."""
        _, first = run(self.EVENTS, rules)
        _, second = run(self.EVENTS, rules)
        assert [c.command_id for c in first] == [c.command_id for c in second]
        assert first[0].command_id == str(uuid.uuid5(QUARANTINE_NAMESPACE, f"{LOT}#1#HOLD"))

    def test_replay_produces_the_same_commands(self, rules: QuarantineRules) -> None:
        """Running the same event sequence twice gives equal commands and equal end states."""
        first_table, first = run(self.EVENTS, rules)
        second_table, second = run(self.EVENTS, rules)
        assert first == second
        assert first_table == second_table
        assert [c.action for c in first] == ["HOLD", "RELEASE", "HOLD", "HOLD", "RELEASE"]

    def test_redelivered_events_change_nothing(self, rules: QuarantineRules) -> None:
        """Every event delivered twice in a row gives the same commands as once."""
        doubled = [event for event in self.EVENTS for _ in range(2)]
        assert run(doubled, rules)[1] == run(self.EVENTS, rules)[1]

    def test_state_survives_a_json_round_trip(self, rules: QuarantineRules) -> None:
        """State written with to_dict, through JSON, reads back equal with from_dict."""
        table, _ = run(self.EVENTS, rules)
        for state in table.values():
            assert state is not None
            restored = LotHoldState.from_dict(json.loads(json.dumps(state.to_dict())))
            assert restored == state


class TestContract:
    def test_commands_validate_against_the_schema(self, rules: QuarantineRules) -> None:
        """Every command's to_avro() validates strictly against its Avro schema."""
        schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
        _, commands = run(TestDeterminism.EVENTS, rules)
        assert commands
        for command in commands:
            assert validate(command.to_avro(), schema, strict=True)

    def test_no_part_number_is_null(self, rules: QuarantineRules) -> None:
        """A trigger without a part number gives a command with a null part number."""
        schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
        event = _event("lab_result", "LR-9", "closed", {"result_status": "OOS"}, part_number=None)
        _, commands = run([event], rules)
        assert commands[0].part_number is None
        assert validate(commands[0].to_avro(), schema, strict=True)


class TestRules:
    def test_shipped_rules_load(self, rules: QuarantineRules) -> None:
        """The packaged rules file validates, with SAP's 350/343 postings by default."""
        assert rules.postings.hold_movement_type == "350"
        assert rules.postings.release_movement_type == "343"
        assert "r" in rules.inspection_result.reject_results

    def test_movement_types_are_configurable(self) -> None:
        """A plant mapping holds to 349 gets 349 on its hold commands."""
        document = _rules_document()
        document["postings"]["hold_movement_type"] = "349"
        _, commands = run([nc("NCR-1")], parse_quarantine_rules(document))
        assert commands[0].sap_movement_type == "349"

    def test_unknown_status_is_a_configuration_error(self) -> None:
        """A status outside the canonical set is rejected with the file named."""
        document = _rules_document()
        document["nonconformance"]["hold_statuses"] = ["opened"]
        with pytest.raises(ConfigurationError, match=r"quarantine_rules\.toml"):
            parse_quarantine_rules(document)

    def test_unknown_key_is_a_configuration_error(self) -> None:
        """A misspelt key is rejected, not ignored."""
        document = _rules_document()
        document["lab_result"]["hold_statuses"] = ["oos"]
        with pytest.raises(ConfigurationError, match="hold_statuses"):
            parse_quarantine_rules(document)


def _rules_document() -> dict[str, Any]:
    path = PROJECT_ROOT / "qmsflow" / "config" / "quarantine_rules.toml"
    document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    return document
