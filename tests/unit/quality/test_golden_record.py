"""Golden records from several sources' CDC changes: survivorship, idempotency, conflicts, SCD-2."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from qmsflow.errors import ConfigurationError, ContractError
from qmsflow.quality.cdc import UNAVAILABLE_VALUE, ChangeEvent, Tombstone, parse_change
from qmsflow.quality.golden_record import (
    EmployeeGolden,
    GoldenOutcome,
    GoldenState,
    SurvivorshipRules,
    apply_change,
    employee_from_state,
    entity_of,
    golden_to_customer_spec,
    golden_to_employee,
    golden_to_equipment,
    golden_to_lot,
    golden_to_part,
    golden_to_supplier,
    load_survivorship_rules,
    parse_survivorship_rules,
)
from qmsflow.settings import PROJECT_ROOT

RULES = load_survivorship_rules()
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z in ms
_ID_COLUMNS = {
    "supplier": "supplier_id",
    "supplier_approval": "supplier_id",
    "supplier_scorecard": "supplier_id",
    "asset": "equipment_id",
    "equipment_status": "equipment_id",
    "employee": "employee_id",
    "user_account": "employee_id",
    "training_transcript": "employee_id",
    "batch": "lot_id",
    "lot": "lot_id",
    "part": "part_number",
    "customer_spec": "spec_id",
}


def _schema(subject: str) -> Any:
    path = PROJECT_ROOT / "schemas" / "avro" / subject / "v1.avsc"
    return fastavro.parse_schema(json.loads(path.read_text("utf-8")))


def _change(
    system: str,
    table: str,
    op: str,
    row: dict[str, Any],
    *,
    lsn: int | None,
    offset: int,
    ts: int = 0,
    snapshot: str = "false",
) -> ChangeEvent:
    """A parsed Debezium change of `row` from table `<system>.<table>` of the plant database.

    The `before` of a delete holds only the key.
    """
    id_column = _ID_COLUMNS[table]
    key = {id_column: row[id_column]}
    value = {
        "before": key if op == "d" else None,
        "after": None if op == "d" else row,
        "op": op,
        "source": {
            "name": "cdc.erp",
            "db": "erp",
            "schema": system.lower(),
            "table": table,
            "ts_ms": T0 + ts * 1000,
            "lsn": lsn,
            "snapshot": snapshot,
        },
        "ts_ms": T0 + ts * 1000 + 5,
    }
    topic = f"cdc.erp.{system.lower()}.{table}"
    change = parse_change(topic, 0, offset, json.dumps(key), json.dumps(value))
    assert isinstance(change, ChangeEvent)
    return change


def _fold(changes: list[ChangeEvent], rules: SurvivorshipRules = RULES) -> list[GoldenOutcome]:
    """Apply changes to the states they route to; returns every outcome in order."""
    states: dict[tuple[str, str], GoldenState] = {}
    outcomes = []
    for change in changes:
        routed = entity_of(change, rules)
        assert routed is not None
        state = states.get(routed) or GoldenState(*routed)
        outcome = apply_change(state, change, rules)
        # the state must survive a Faust table round trip unchanged
        states[routed] = GoldenState.from_dict(json.loads(json.dumps(outcome.state.to_dict())))
        outcomes.append(outcome)
    return outcomes


def _erp_supplier(status: str = "APPROVED", name: str = "Acme GmbH") -> dict[str, Any]:
    return {"supplier_id": "S-1", "name": name, "country_code": "DE", "asl_status": status}


def _qms_approval(status: str) -> dict[str, Any]:
    return {"supplier_id": "S-1", "approval_status": status, "last_audit_id": "AUD-7"}


def _asset(status: str = "CALIBRATED") -> dict[str, Any]:
    return {
        "equipment_id": "EQ-9",
        "description": "Balance XP205",
        "site": "BER",
        "calibration_status": status,
        "calibration_due": 20_635,
    }


class TestRules:
    def test_shipped_rules_load(self) -> None:
        """The shipped survivorship rules validate."""
        assert RULES.kind_rules("supplier").trust["approval_status"] == ("QMS", "ERP")

    def test_unknown_source_in_trust_list_is_refused(self) -> None:
        """A trust list naming a source the kind has no table for is a ConfigurationError."""
        document = {
            "version": 1,
            "sources": [
                {
                    "system": "ERP",
                    "table": "t",
                    "kind": "supplier",
                    "id_column": "id",
                    "columns": {"name": "name"},
                },
            ],
            "kinds": {"supplier": {"trust": {"name": ["CRM"]}}},
        }
        with pytest.raises(ConfigurationError, match="CRM"):
            parse_survivorship_rules(document)

    def test_unmapped_conflict_field_is_refused(self) -> None:
        """A conflict-checked field no source maps is a ConfigurationError."""
        document = {
            "version": 1,
            "sources": [
                {
                    "system": "ERP",
                    "table": "t",
                    "kind": "supplier",
                    "id_column": "id",
                    "columns": {"name": "name"},
                },
            ],
            "kinds": {"supplier": {"conflict_checked": ["colour"]}},
        }
        with pytest.raises(ConfigurationError, match="colour"):
            parse_survivorship_rules(document)


class TestIdempotency:
    def test_same_change_twice_changes_nothing(self) -> None:
        """A redelivered change is ignored: no change, no second history row."""
        change = _change("ERP", "supplier", "c", _erp_supplier(), lsn=100, offset=1)
        first, second = _fold([change, change])
        assert first.changed and first.action == "upsert" and len(first.history) == 1
        assert not second.applied and not second.changed and second.history == ()
        assert second.state == first.state

    def test_older_lsn_is_ignored(self) -> None:
        """A change with an older LSN, redelivered at a higher offset, is ignored."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier(name="Old"), lsn=100, offset=1),
                _change("ERP", "supplier", "u", _erp_supplier(name="New"), lsn=200, offset=2),
                _change("ERP", "supplier", "c", _erp_supplier(name="Old"), lsn=100, offset=3),
            ]
        )
        assert not outcomes[-1].applied
        assert outcomes[-1].state.golden is not None
        assert outcomes[-1].state.golden["name"] == "New"

    def test_deleted_source_is_not_resurrected_by_a_late_duplicate(self) -> None:
        """After a delete, a redelivered older create stays ignored."""
        create = _change("ERP", "supplier", "c", _erp_supplier(), lsn=100, offset=1)
        delete = _change("ERP", "supplier", "d", _erp_supplier(), lsn=150, offset=2)
        outcomes = _fold([create, delete, create])
        assert outcomes[1].action == "tombstone" and outcomes[1].record is None
        assert not outcomes[2].applied and outcomes[2].state.golden is None


class TestDeletes:
    def test_primary_key_update_moves_the_record(self) -> None:
        """Delete + tombstone + create leaves one record under the new key, the old one deleted."""
        old = _change("ERP", "supplier", "c", _erp_supplier(), lsn=100, offset=1)
        new_row = {**_erp_supplier(), "supplier_id": "S-2"}
        delete = _change("ERP", "supplier", "d", _erp_supplier(), lsn=200, offset=2)
        tombstone = parse_change(
            "cdc.erp.erp.supplier", 0, 3, json.dumps({"supplier_id": "S-1"}), None
        )
        create = _change("ERP", "supplier", "c", new_row, lsn=201, offset=4)
        assert isinstance(tombstone, Tombstone)  # compaction only: the agent skips it
        outcomes = _fold([old, delete, create])
        assert outcomes[1].state.entity_id == "S-1" and outcomes[1].action == "tombstone"
        assert outcomes[1].history[-1].valid_to is not None
        assert outcomes[2].state.entity_id == "S-2" and outcomes[2].action == "upsert"
        assert outcomes[2].record is not None and outcomes[2].record["name"] == "Acme GmbH"

    def test_one_source_deleting_keeps_the_others(self) -> None:
        """A source's delete withdraws only its contribution."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier("APPROVED"), lsn=1, offset=1),
                _change(
                    "QMS",
                    "supplier_approval",
                    "c",
                    _qms_approval("DISQUALIFIED"),
                    lsn=5,
                    offset=1,
                    ts=10,
                ),
                _change(
                    "QMS",
                    "supplier_approval",
                    "d",
                    _qms_approval("DISQUALIFIED"),
                    lsn=6,
                    offset=2,
                    ts=20,
                ),
            ]
        )
        assert outcomes[-1].action == "upsert"
        assert outcomes[-1].record is not None
        assert outcomes[-1].record["approval_status"] == "APPROVED"

    def test_truncate_is_refused(self) -> None:
        """A truncate names no rows and is a ContractError, never a mass delete."""
        change = _change("ERP", "supplier", "c", _erp_supplier(), lsn=1, offset=1)
        truncate = ChangeEvent(
            **{**{f: getattr(change, f) for f in change.__slots__}, "op": "t", "after": None}
        )
        with pytest.raises(ContractError, match="truncate"):
            apply_change(GoldenState("supplier", "S-1"), truncate, RULES)

    def test_change_for_another_entity_is_refused(self) -> None:
        """Applying a change to the wrong entity's state is a ContractError."""
        change = _change("ERP", "supplier", "c", _erp_supplier(), lsn=1, offset=1)
        with pytest.raises(ContractError, match="S-1"):
            apply_change(GoldenState("supplier", "S-9"), change, RULES)


class TestToast:
    def test_unavailable_value_keeps_stored_value(self) -> None:
        """An unchanged TOASTed column keeps the stored golden value."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier(name="Acme GmbH"), lsn=1, offset=1),
                _change(
                    "ERP",
                    "supplier",
                    "u",
                    _erp_supplier("CONDITIONAL", UNAVAILABLE_VALUE),
                    lsn=2,
                    offset=2,
                    ts=5,
                ),
            ]
        )
        record = outcomes[-1].record
        assert record is not None
        assert record["name"] == "Acme GmbH" and record["approval_status"] == "CONDITIONAL"


class TestSurvivorship:
    def test_qms_approval_beats_erp(self) -> None:
        """QMS's approval status wins over ERP's, even when ERP changed later."""
        outcomes = _fold(
            [
                _change(
                    "QMS", "supplier_approval", "c", _qms_approval("DISQUALIFIED"), lsn=5, offset=1
                ),
                _change("ERP", "supplier", "u", _erp_supplier("APPROVED"), lsn=9, offset=1, ts=60),
            ]
        )
        record = outcomes[-1].record
        assert record is not None and record["approval_status"] == "DISQUALIFIED"
        assert record["name"] == "Acme GmbH"

    def test_approval_disagreement_is_a_conflict(self) -> None:
        """ERP's ASL copy disagreeing with the QMS audit status is reported; QMS still wins."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "r", _erp_supplier("APPROVED"), lsn=5, offset=1),
                _change(
                    "QMS", "supplier_approval", "r", _qms_approval("CONDITIONAL"), lsn=6, offset=1
                ),
            ]
        )
        (conflict,) = outcomes[-1].conflicts
        assert (conflict.field, conflict.winning_source, conflict.winning_value) == (
            "approval_status",
            "QMS",
            "CONDITIONAL",
        )
        assert (conflict.losing_source, conflict.losing_value) == ("ERP", "APPROVED")

    def test_unlisted_field_takes_most_recent(self) -> None:
        """A field without a trust list takes the most recent source's value."""
        first = {
            "lot_id": "L-1",
            "part_number": "PN-1",
            "product_line": "PL",
            "plant": "BER",
            "supplier_id": None,
            "stock_status": "QUARANTINE",
            "manufactured_at": None,
            "parent_lot_ids": [],
        }
        mes = {
            "lot_id": "L-1",
            "part_number": "PN-1",
            "site": "BER-2",
            "manufactured_at": None,
            "parent_lot_ids": ["L-0"],
        }
        outcomes = _fold(
            [
                _change("ERP", "batch", "c", first, lsn=1, offset=1, ts=0),
                _change("MES", "lot", "c", mes, lsn=7, offset=1, ts=30),
            ]
        )
        record = outcomes[-1].record
        assert record is not None and record["site"] == "BER-2"
        assert record["parent_lot_ids"] == ["L-0"] and record["status"] == "QUARANTINE"
        datum = golden_to_lot(outcomes[-1].state)
        assert validate(datum, _schema("md.lot.v1-value"), strict=True)
        assert datum["source_system"] == "MES"


class TestConflicts:
    def _calibration(self) -> list[GoldenOutcome]:
        return _fold(
            [
                _change("CMMS", "asset", "c", _asset("CALIBRATED"), lsn=10, offset=1),
                _change(
                    "QMS",
                    "equipment_status",
                    "c",
                    {"equipment_id": "EQ-9", "calibration_status": "OUT_OF_TOLERANCE"},
                    lsn=3,
                    offset=1,
                    ts=60,
                ),
                _change(
                    "CMMS",
                    "asset",
                    "u",
                    {**_asset("CALIBRATED"), "site": "BER-1"},
                    lsn=11,
                    offset=2,
                    ts=90,
                ),
            ]
        )

    def test_cmms_and_qms_disagreement_is_reported_once(self) -> None:
        """A calibration status disagreement is emitted once, with the trusted value winning."""
        outcomes = self._calibration()
        assert outcomes[0].conflicts == ()
        (conflict,) = outcomes[1].conflicts
        assert outcomes[2].conflicts == ()
        assert outcomes[1].record is not None
        assert outcomes[1].record["calibration_status"] == "CALIBRATED"
        assert (conflict.winning_source, conflict.winning_value) == ("CMMS", "CALIBRATED")
        assert (conflict.losing_source, conflict.losing_value) == ("QMS", "OUT_OF_TOLERANCE")
        assert conflict.rule == "trusted source CMMS (order CMMS > QMS)"
        assert conflict.detected_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
        assert validate(conflict.to_avro(), _schema("md.conflicts.v1-value"), strict=True)

    def test_conflict_id_is_stable_across_replays(self) -> None:
        """A replay reproduces the same conflict id."""
        assert self._calibration()[1].conflicts[0].conflict_id == (
            self._calibration()[1].conflicts[0].conflict_id
        )

    def test_resolved_then_recurring_conflict_is_reported_again(self) -> None:
        """Once the sources agree the conflict closes; a new disagreement is reported."""
        outcomes = self._calibration()
        state = outcomes[-1].state
        agree = _change(
            "QMS",
            "equipment_status",
            "u",
            {"equipment_id": "EQ-9", "calibration_status": "CALIBRATED"},
            lsn=4,
            offset=2,
            ts=100,
        )
        after = apply_change(state, agree, RULES)
        assert after.conflicts == () and after.state.open_conflicts == frozenset()
        assert validate(
            golden_to_equipment(after.state), _schema("md.equipment.v1-value"), strict=True
        )
        assert golden_to_equipment(after.state)["calibration_due"] == date(2026, 7, 1)


class TestHistory:
    def test_rows_close_and_open(self) -> None:
        """Each golden change closes the current row and opens the next; a delete only closes."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier(name="A"), lsn=1, offset=1, ts=0),
                _change("ERP", "supplier", "u", _erp_supplier(name="B"), lsn=2, offset=2, ts=60),
                _change("ERP", "supplier", "d", _erp_supplier(), lsn=3, offset=3, ts=120),
            ]
        )
        (opened,) = outcomes[0].history
        assert (opened.version, opened.valid_to, opened.fields["name"]) == (1, None, "A")
        closed, current = outcomes[1].history
        assert (closed.version, closed.valid_from) == (1, opened.valid_from)
        assert closed.valid_to == current.valid_from == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
        assert (current.version, current.valid_to, current.fields["name"]) == (2, None, "B")
        assert current.source == "ERP" and current.lsn == 2
        (last,) = outcomes[2].history
        assert (last.version, last.valid_to) == (2, datetime(2026, 1, 1, 0, 2, tzinfo=UTC))
        assert outcomes[2].state.version == 3

    def test_unchanged_golden_values_write_no_row(self) -> None:
        """A newer change that leaves the golden values alone advances only the watermark."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier(), lsn=1, offset=1),
                _change("ERP", "supplier", "u", {**_erp_supplier(), "ignored": 1}, lsn=2, offset=2),
            ]
        )
        assert outcomes[1].applied and not outcomes[1].changed and outcomes[1].history == ()
        assert outcomes[1].state.contributions["ERP"].lsn == 2


class TestIncrementalSnapshot:
    def test_snapshot_row_applies_in_offset_order_and_keeps_watermark(self) -> None:
        """A snapshot row without LSN applies after older offsets; the LSN watermark stays."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier(name="A"), lsn=100, offset=1),
                _change(
                    "ERP",
                    "supplier",
                    "r",
                    _erp_supplier(name="B"),
                    lsn=None,
                    offset=2,
                    ts=10,
                    snapshot="incremental",
                ),
                _change("ERP", "supplier", "u", _erp_supplier(name="A"), lsn=100, offset=3),
                _change("ERP", "supplier", "u", _erp_supplier(name="C"), lsn=120, offset=4, ts=20),
            ]
        )
        assert outcomes[1].applied and outcomes[1].record is not None
        assert outcomes[1].state.contributions["ERP"].lsn == 100
        assert not outcomes[2].applied
        assert outcomes[3].record is not None and outcomes[3].record["name"] == "C"

    def test_duplicate_snapshot_row_is_ignored(self) -> None:
        """The same snapshot row read twice (same offset) changes nothing."""
        row = _change(
            "ERP", "supplier", "r", _erp_supplier(), lsn=None, offset=5, snapshot="incremental"
        )
        assert not _fold([row, row])[1].applied


class TestAdapters:
    def test_supplier_part_customer_spec_and_employee_datums_validate(self) -> None:
        """Every adapter's datum validates strictly against its md.* schema."""
        outcomes = _fold(
            [
                _change("ERP", "supplier", "c", _erp_supplier(), lsn=1, offset=1),
                _change(
                    "PLM",
                    "part",
                    "c",
                    {
                        "part_number": "PN-1",
                        "revision": "B",
                        "description": "Housing",
                        "product_line": "PL",
                        "lifecycle_status": "RELEASED",
                    },
                    lsn=1,
                    offset=1,
                ),
                _change(
                    "PLM",
                    "customer_spec",
                    "c",
                    {
                        "spec_id": "CS-1",
                        "customer": "Contoso",
                        "part_number": "PN-1",
                        "characteristic": "bore",
                        "lower_limit": "9.95",
                        "upper_limit": "<10.05",
                        "unit": "mm",
                        "revision": "3",
                    },
                    lsn=1,
                    offset=1,
                ),
                _change(
                    "HR",
                    "employee",
                    "c",
                    {
                        "employee_id": "E2004",
                        "display_name": "Jane Roe",
                        "site": "BER",
                        "active": True,
                    },
                    lsn=1,
                    offset=1,
                ),
                _change(
                    "LMS",
                    "training_transcript",
                    "c",
                    {
                        "employee_id": "E2004",
                        "trainings": json.dumps(
                            [
                                {
                                    "course": "SOP-QA-011",
                                    "completed_at": "2026-01-05T09:00:00Z",
                                    "expires_at": None,
                                }
                            ]
                        ),
                    },
                    lsn=1,
                    offset=1,
                    ts=5,
                ),
                _change(
                    "QMS",
                    "user_account",
                    "c",
                    {"employee_id": "E2004", "roles": ["qa_approver"], "enabled": True},
                    lsn=1,
                    offset=1,
                    ts=6,
                ),
            ]
        )
        supplier, part, spec, _, _, employee = (o.state for o in outcomes)
        cases = [
            (golden_to_supplier(supplier), "md.supplier.v1-value"),
            (golden_to_part(part), "md.part.v1-value"),
            (golden_to_customer_spec(spec), "md.customer-spec.v1-value"),
            (golden_to_employee(employee), "md.employee.v1-value"),
        ]
        for datum, subject in cases:
            assert validate(datum, _schema(subject), strict=True), subject
        assert cases[2][0]["lower_limit"] == Decimal("9.950000")
        assert cases[2][0]["upper_limit"] == "<10.05"
        person = employee_from_state(employee)
        assert isinstance(person, EmployeeGolden)
        assert person.roles == ("qa_approver",) and person.trainings[0].expires_at is None

    def test_incomplete_record_is_refused(self) -> None:
        """A golden record lacking a required field is not turned into a datum."""
        (outcome,) = _fold(
            [_change("QMS", "supplier_approval", "c", _qms_approval("APPROVED"), lsn=1, offset=1)]
        )
        assert outcome.missing == ("name", "country")
        with pytest.raises(ContractError, match="lacks"):
            golden_to_supplier(outcome.state)


_SUPPLIER_SOURCES = {
    "ERP": ("supplier", lambda i: _erp_supplier(f"S{i % 3}", f"name-{i}")),
    "QMS": ("supplier_approval", lambda i: _qms_approval(f"Q{i % 4}")),
    "PORTAL": (
        "supplier_scorecard",
        lambda i: {"supplier_id": "S-1", "score": i % 5, "period": "2026Q1"},
    ),
}


@st.composite
def _interleavings(draw: st.DrawFn) -> tuple[list[ChangeEvent], list[ChangeEvent]]:
    """Per-source change histories, and one interleaving of them with duplicates."""
    per_source: dict[str, list[ChangeEvent]] = {}
    for system, (table, row) in _SUPPLIER_SOURCES.items():
        ops = draw(st.lists(st.sampled_from("cud"), min_size=1, max_size=5))
        ts = draw(st.lists(st.integers(0, 50), min_size=len(ops), max_size=len(ops)))
        per_source[system] = [
            _change(system, table, op, row(i), lsn=10 * (i + 1), offset=i, ts=t)
            for i, (op, t) in enumerate(zip(ops, ts, strict=True))
        ]
    cursors = dict.fromkeys(per_source, 0)
    merged: list[ChangeEvent] = []
    while any(cursors[s] < len(changes) for s, changes in per_source.items()):
        system = draw(
            st.sampled_from(sorted(s for s in cursors if cursors[s] < len(per_source[s])))
        )
        change = per_source[system][cursors[system]]
        merged.append(change)
        if draw(st.booleans()):
            # redelivery: this change again, or an older one of the same source
            merged.append(per_source[system][draw(st.integers(0, cursors[system]))])
        cursors[system] += 1
    reference = [c for changes in per_source.values() for c in changes]
    return reference, merged


class TestOrderIndependence:
    @settings(max_examples=60, deadline=None)
    @given(_interleavings())
    def test_any_interleaving_with_duplicates_ends_the_same(
        self, histories: tuple[list[ChangeEvent], list[ChangeEvent]]
    ) -> None:
        """Any interleaving of sources, with redelivered changes, ends in the same golden record."""
        reference, merged = histories
        assert _fold(reference)[-1].state.golden == _fold(merged)[-1].state.golden
