"""Debezium change envelopes (JsonConverter, schemas.enable=false) parsed into ChangeEvents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qmsflow.errors import ContractError, LimitError
from qmsflow.quality.cdc import (
    MAX_NESTING,
    UNAVAILABLE_VALUE,
    ChangeEvent,
    Position,
    Tombstone,
    merge_after,
    nesting,
    parse_change,
    position,
)

TOPIC = "cdc.erp.erp.supplier"
KEY = json.dumps({"supplier_id": "S-1"})
ROW = {"supplier_id": "S-1", "name": "Acme GmbH", "country_code": "DE", "notes": "long text"}


def _value(op: str, **overrides: Any) -> str:
    envelope: dict[str, Any] = {
        "before": None,
        "after": ROW,
        "op": op,
        "source": {
            "version": "2.7.0.Final",
            "connector": "postgresql",
            "name": "cdc.erp",
            "ts_ms": 1_767_225_600_000,
            "snapshot": "false",
            "db": "erp",
            "schema": "erp",
            "table": "supplier",
            "txId": 771,
            "lsn": 24_023_128,
        },
        "ts_ms": 1_767_225_600_250,
    }
    source = overrides.pop("source", {})
    envelope["source"].update(source)
    envelope.update(overrides)
    return json.dumps(envelope)


def _parse(value: str | None, key: str | None = KEY, offset: int = 7) -> ChangeEvent:
    change = parse_change(TOPIC, 2, offset, key, value)
    assert isinstance(change, ChangeEvent)
    return change


class TestEnvelopes:
    def test_create(self) -> None:
        """A create carries the row, its key, LSN, source time and Kafka coordinates."""
        change = _parse(_value("c"))
        assert change.op == "c"
        assert change.source_system == "ERP"
        assert (change.db, change.schema, change.table) == ("erp", "erp", "supplier")
        assert change.key == {"supplier_id": "S-1"}
        assert change.after == ROW and change.before is None
        assert (change.lsn, change.tx_id, change.ts_ms) == (24_023_128, 771, 1_767_225_600_000)
        assert change.processed_ts_ms == 1_767_225_600_250
        assert change.snapshot == "false"
        assert tuple(change.coordinates) == (TOPIC, 2, 7)

    def test_update(self) -> None:
        """An update with only key columns in `before` (no REPLICA IDENTITY FULL) is accepted."""
        change = _parse(_value("u", before={"supplier_id": "S-1"}))
        assert change.op == "u" and change.before == {"supplier_id": "S-1"}

    def test_delete(self) -> None:
        """A delete carries the key columns in `before` and no `after`."""
        change = _parse(_value("d", before={"supplier_id": "S-1"}, after=None))
        assert change.is_delete and change.after is None

    def test_snapshot_read(self) -> None:
        """A snapshot read is op r with its snapshot flag."""
        change = _parse(_value("r", source={"snapshot": "last"}))
        assert change.op == "r" and change.snapshot == "last"

    def test_incremental_snapshot_has_no_lsn(self) -> None:
        """An incremental-snapshot row has no LSN and orders by its offset."""
        change = _parse(_value("r", source={"snapshot": "incremental", "lsn": None}), offset=40)
        assert change.is_incremental_snapshot
        assert position(change) == Position(None, 40)

    def test_tombstone(self) -> None:
        """A null value after a delete is a Tombstone with the key, not a change."""
        tombstone = parse_change(TOPIC, 2, 9, KEY, None)
        assert tombstone == Tombstone("ERP", "supplier", {"supplier_id": "S-1"}, TOPIC, 2, 9)

    def test_position_is_lsn_then_offset(self) -> None:
        """A streamed change orders by LSN first, then offset."""
        assert position(_parse(_value("c"))) == Position(24_023_128, 7)

    def test_schema_wrapped_value_is_unwrapped(self) -> None:
        """A value written with schemas.enable=true is unwrapped from its payload."""
        wrapped = json.dumps({"schema": {}, "payload": json.loads(_value("c"))})
        assert _parse(wrapped).after == ROW


class TestSourceSystem:
    def test_schema_names_the_system(self) -> None:
        """The source system is source.schema upper-cased, whatever the topic prefix says."""
        value = _value("c", source={"schema": "qms", "table": "supplier_approval"})
        change = parse_change("cdc.erp.qms.supplier_approval", 0, 1, KEY, value)
        assert isinstance(change, ChangeEvent)
        assert (change.source_system, change.schema) == ("QMS", "qms")

    def test_schema_wins_over_a_prefixed_topic(self) -> None:
        """A qmsflow topic prefix in front of the Debezium prefix does not change the system."""
        value = _value("c", source={"schema": "hr", "table": "employee"})
        change = parse_change("t1a2b3c4d.cdc.erp.hr.employee", 0, 1, KEY, value)
        assert isinstance(change, ChangeEvent) and change.source_system == "HR"

    def test_public_schema_falls_back_to_the_topic_prefix(self) -> None:
        """A table in `public` takes its system from the last segment of the topic prefix."""
        value = _value("c", source={"schema": "public"})
        change = parse_change("dev-cdc.cmms.public.supplier", 0, 1, KEY, value)
        assert isinstance(change, ChangeEvent) and change.source_system == "CMMS"

    def test_public_schema_without_matching_topic_uses_connector_name(self) -> None:
        """A `public` table on a renamed topic falls back to source.name's last segment."""
        value = _value("c", source={"schema": "public", "name": "cdc.mes"})
        change = parse_change("renamed-topic", 0, 1, KEY, value)
        assert isinstance(change, ChangeEvent) and change.source_system == "MES"

    def test_tombstone_system_from_the_schema_segment(self) -> None:
        """A tombstone has no source block: its topic's schema segment names the system."""
        tombstone = parse_change("cdc.erp.lms.training_transcript", 0, 4, KEY, None)
        assert isinstance(tombstone, Tombstone)
        assert (tombstone.source_system, tombstone.table) == ("LMS", "training_transcript")

    def test_tombstone_in_public_uses_the_prefix(self) -> None:
        """A tombstone of a `public` table takes the prefix's last segment, as changes do."""
        tombstone = parse_change("cdc.mes.public.lot", 0, 4, KEY, None)
        assert isinstance(tombstone, Tombstone) and tombstone.source_system == "MES"


class TestMalformed:
    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            (KEY, "{not json", "value expected JSON"),
            (KEY, "[1, 2]", "value expected a JSON object"),
            (KEY, _value("x"), "op in"),
            (KEY, json.dumps({"op": "c", "after": ROW}), "source expected a JSON object"),
            (KEY, _value("c", after=None), "expected an 'after' row"),
            (KEY, _value("d", after=None), "expected a 'before' row"),
            (KEY, _value("c", source={"lsn": "24023128"}), "lsn expected an integer"),
            (KEY, _value("c", source={"ts_ms": None}), "ts_ms expected an integer"),
            (KEY, _value("c", source={"table": ""}), "source.table expected text"),
            (KEY, _value("c", source={"snapshot": "maybe"}), "source.snapshot"),
            (None, _value("c"), "expected a key object"),
            (None, None, "expected a key on a tombstone"),
        ],
    )
    def test_malformed_envelope_is_a_contract_error(
        self, key: str | None, value: str | None, expected: str
    ) -> None:
        """A malformed key or envelope raises ContractError naming where and what."""
        with pytest.raises(ContractError, match=expected) as raised:
            parse_change(TOPIC, 2, 7, key, value)
        assert f"{TOPIC}[2]@7" in str(raised.value)


class TestToast:
    def test_placeholder_keeps_stored_value(self) -> None:
        """An unavailable TOASTed column keeps the stored value; other columns change."""
        stored = {"name": "Acme", "notes": "long text"}
        after = {"name": "Acme GmbH", "notes": UNAVAILABLE_VALUE}
        assert merge_after(stored, after) == {"name": "Acme GmbH", "notes": "long text"}

    def test_placeholder_without_stored_value_is_left_out(self) -> None:
        """A placeholder never becomes data, even when nothing is stored."""
        assert merge_after(None, {"name": "Acme", "notes": UNAVAILABLE_VALUE}) == {"name": "Acme"}

    def test_array_and_binary_placeholders(self) -> None:
        """Array columns and base64 bytea columns carry the placeholder too."""
        stored = {"roles": ["qa"], "blob": "AAE="}
        after = {
            "roles": [UNAVAILABLE_VALUE],
            "blob": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
        }
        assert merge_after(stored, after) == stored


class TestNestingLimit:
    """JSON nested 10,000 levels raised RecursionError out of the parser: now a LimitError."""

    def test_a_deep_json_text_column_is_refused_naming_the_column(self) -> None:
        """A jsonb column arrives as JSON text: its nesting is measured before it is parsed."""
        deep = '{"a":' * 10_000 + "1" + "}" * 10_000
        with pytest.raises(LimitError) as raised:
            _parse(_value("c", after={**ROW, "spec_json": deep}))
        assert raised.value.reason_code == "limits"
        assert str(raised.value) == (
            f"{TOPIC}[2]@7: after.spec_json is nested 10,000 levels; at most {MAX_NESTING}"
        )

    def test_a_deep_envelope_is_refused_before_the_parser_recurses(self) -> None:
        """Nesting in the envelope itself is found by an iterative scan, with its path."""
        value = '{"op": "c", "after": {"spec": ' + "[" * 10_000 + "]" * 10_000 + "}}"
        with pytest.raises(LimitError, match=r"value\.after\.spec\[0\] is nested 10,002 levels"):
            _parse(value)

    def test_a_deep_key_is_refused(self) -> None:
        """The key is JSON too."""
        key = '{"supplier_id": ' + "[" * 100 + "]" * 100 + "}"
        with pytest.raises(LimitError, match=r"key\.supplier_id\[0\]\[0\] is nested 101 levels"):
            _parse(_value("c"), key=key)

    def test_nesting_up_to_the_limit_is_accepted(self) -> None:
        """A document exactly at the limit parses; brackets inside strings do not count."""
        at_limit = "[" * MAX_NESTING + "]" * MAX_NESTING
        quoted = json.dumps(["[" * 500])  # a JSON text whose brackets are inside a string
        change = _parse(_value("c", after={**ROW, "spec_json": at_limit, "notes": quoted}))
        assert change.after is not None and change.after["spec_json"] == at_limit

    def test_the_depth_measure(self) -> None:
        """Depth and the first levels of the path to the deepest point."""
        assert nesting('{"payload": {"after": {"x": [1, [2, [3]]]}}}') == (
            6,
            ("payload", "after", "x"),
        )
        assert nesting('["a", {"b": "}", "c": [[1]]}]') == (4, (1, "c", 0))
        assert nesting('"[[[["') == (0, ())
