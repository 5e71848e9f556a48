"""Tests for the deterministic demo traffic generator."""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.validation import validate

from qmsflow.demo import (
    TOPIC_EVENT_TYPES,
    TOPIC_SOURCE_SYSTEMS,
    DemoRecord,
    DemoTraffic,
    corrupt_payloads,
    with_duplicates,
)
from qmsflow.topics import load_catalog

START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
SCHEMA_ROOT = Path(__file__).resolve().parents[3] / "schemas" / "avro"
ENVELOPE_FIELDS = (
    "event_id",
    "event_type",
    "source_system",
    "source_record_id",
    "occurred_at",
    "recorded_at",
    "product_line",
    "site",
    "lot_id",
    "part_number",
    "supplier_id",
    "equipment_id",
    "severity",
    "status",
    "signature",
    "audit",
    "correlation_id",
    "synthetic",
    "payload",
)


@pytest.fixture(scope="module")
def sample() -> list[DemoRecord]:
    """Two thousand records from one seed, shared by the read-only tests."""
    return list(DemoTraffic(seed=42, start=START).records(2000))


class TestDeterminism:
    def test_same_seed_same_records(self) -> None:
        """One seed and start time always give the same records in the same order."""
        first = list(DemoTraffic(seed=7, start=START).records(500))
        second = list(DemoTraffic(seed=7, start=START).records(500))
        assert first == second

    def test_different_seeds_differ(self) -> None:
        """Different seeds give different streams."""
        first = list(DemoTraffic(seed=1, start=START).records(50))
        second = list(DemoTraffic(seed=2, start=START).records(50))
        assert first != second

    def test_naive_start_is_rejected(self) -> None:
        """A naive start time is refused rather than guessed to be UTC."""
        with pytest.raises(ValueError, match="timezone-aware"):
            DemoTraffic(seed=1, start=datetime(2026, 11, 2, 6, 0))


class TestSimulatedClock:
    def test_mean_gap_sets_the_pace_of_recorded_at(self) -> None:
        """A live demo at 100 records/s spans about 50 s of `recorded_at` over 5,000 records."""
        records = list(DemoTraffic(seed=3, start=START, mean_gap_seconds=0.01).records(5000))
        span = (records[-1].record["recorded_at"] - START).total_seconds()
        assert 40 < span < 60

    def test_default_gap_is_two_seconds(self) -> None:
        """Without a gap, simulated time runs about two seconds per record (a plant's day)."""
        records = list(DemoTraffic(seed=3, start=START).records(5000))
        span = (records[-1].record["recorded_at"] - START).total_seconds()
        assert 8_000 < span < 12_000

    @pytest.mark.parametrize("gap", [0.0, -1.0])
    def test_non_positive_gap_is_rejected(self, gap: float) -> None:
        """A gap of zero or less would stop or reverse simulated time."""
        with pytest.raises(ValueError, match="mean_gap_seconds"):
            DemoTraffic(seed=1, start=START, mean_gap_seconds=gap)


class TestMix:
    def test_every_ingest_topic_appears(self, sample: list[DemoRecord]) -> None:
        """Every ingest topic of the catalog appears in 2,000 records."""
        declared = {spec.name for spec in load_catalog().by_role("ingest")}
        assert declared == set(TOPIC_EVENT_TYPES)
        assert {record.topic for record in sample} == declared

    @pytest.mark.parametrize("seed", range(5))
    def test_every_topic_appears_for_any_seed(self, seed: int) -> None:
        """Every topic, the recall included, appears in 2,000 records whatever the seed."""
        topics = {r.topic for r in DemoTraffic(seed=seed, start=START).records(2000)}
        assert topics == set(TOPIC_EVENT_TYPES)

    def test_readings_and_results_dominate(self, sample: list[DemoRecord]) -> None:
        """Environmental readings are the most frequent and recalls the rarest."""
        counts = Counter(record.topic for record in sample)
        ranked = [topic for topic, _ in counts.most_common()]
        assert ranked[0] == "ems.environmental-reading.v1"
        assert set(ranked[1:3]) == {"mes.inspection-result.v1", "lims.lab-result.v1"}
        assert ranked[-1] == "qms.recall.v1"

    def test_source_vocabularies(self, sample: list[DemoRecord]) -> None:
        """Each source system keeps its own words for severity, status and results."""
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for record in sample:
            by_topic.setdefault(record.topic, []).append(record.record)
        scar = {r["severity"] for r in by_topic["supplier.corrective-action.v1"]}
        assert scar <= {"low", "medium", "high"}
        nc = {r["severity"] for r in by_topic["qms.nonconformance.v1"]}
        assert nc <= {"minor", "major", "critical"}
        lab = {r["payload"]["result_status"] for r in by_topic["lims.lab-result.v1"]}
        assert "PASS" in lab and lab <= {"PASS", "OOS", "OOT"}
        units = {r["payload"]["unit"] for r in by_topic["ems.environmental-reading.v1"]}
        assert {"degC", "%RH", "Pa", "cfu/m3"} <= units

    def test_signatures_and_audit_trails_occur(self, sample: list[DemoRecord]) -> None:
        """Some events carry a signature with a meaning and some an audit context."""
        signed = [r.record["signature"] for r in sample if r.record["signature"] is not None]
        audited = [r.record["audit"] for r in sample if r.record["audit"] is not None]
        assert {s["meaning"] for s in signed} == {"approval", "review"}
        assert all(s["printed_name"] and re.fullmatch(r"E\d{4}", s["signer_id"]) for s in signed)
        assert audited and all(a["changes"] for a in audited)


class TestLifecycles:
    def test_updates_chain_status_changes(self) -> None:
        """Each later event of a QMS record audits the move from the status its last event had."""
        last_status: dict[str, str] = {}
        moves = 0
        for record in DemoTraffic(seed=11, start=START).records(5000):
            if record.record["source_system"] not in ("QMS", "SUPPLIER_PORTAL"):
                continue
            number, status = record.record["source_record_id"], record.record["status"]
            if number in last_status:
                change = record.record["audit"]["changes"][0]
                assert change == {
                    "field": "status",
                    "old_value": last_status[number],
                    "new_value": status,
                }
                moves += 1
            last_status[number] = status
        assert moves > 100

    def test_closure_is_signed_for_approval(self, sample: list[DemoRecord]) -> None:
        """A QMS record reaching Closed carries an approval signature."""
        closed = [r for r in sample if r.record["status"] == "Closed"]
        assert closed
        assert all(r.record["signature"]["meaning"] == "approval" for r in closed)


class TestEnvelope:
    def test_every_record_has_the_envelope(self, sample: list[DemoRecord]) -> None:
        """Every record carries exactly the envelope fields, keyed by its product line."""
        for record in sample:
            assert tuple(record.record) == ENVELOPE_FIELDS
            assert record.key == record.record["product_line"]
            assert record.record["event_type"] == TOPIC_EVENT_TYPES[record.topic]
            assert record.record["source_system"] == TOPIC_SOURCE_SYSTEMS[record.topic]

    def test_event_ids_are_unique_uuids(self, sample: list[DemoRecord]) -> None:
        """Event ids are unique uuid strings before any duplication."""
        ids = [record.record["event_id"] for record in sample]
        assert len(set(ids)) == len(ids)
        assert all(
            re.fullmatch(
                r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                r"[0-9a-f]{12}",
                i,
            )
            for i in ids
        )

    def test_occurred_at_not_after_recorded_at(self, sample: list[DemoRecord]) -> None:
        """Each record happened at or before the source recorded it, both in UTC."""
        for record in sample:
            occurred, recorded = record.record["occurred_at"], record.record["recorded_at"]
            assert occurred.utcoffset() == timedelta(0) == recorded.utcoffset()
            assert occurred <= recorded

    def test_simulated_time_advances(self, sample: list[DemoRecord]) -> None:
        """Recorded times never go backwards and start at the given start."""
        recorded = [record.record["recorded_at"] for record in sample]
        assert recorded == sorted(recorded)
        assert recorded[0] >= START

    def test_start_is_converted_to_utc(self) -> None:
        """A start in another time zone is converted to UTC."""
        cork = timezone(timedelta(hours=1))
        record = DemoTraffic(seed=3, start=START.astimezone(cork)).next_record()
        assert record.record["recorded_at"].tzinfo is UTC
        assert record.record["recorded_at"] > START

    def test_logical_types(self, sample: list[DemoRecord]) -> None:
        """Decimals have at most six places and dates are dates, not datetimes."""

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, Decimal):
                assert -value.as_tuple().exponent <= 6  # type: ignore[operator]
            elif isinstance(value, float):
                pytest.fail(f"float {value} where a decimal is expected")

        for record in sample:
            walk(record.record)
        due = [r.record["payload"]["due_date"] for r in sample if r.topic == "qms.capa.v1"]
        assert due and all(type(d) is date for d in due)


class TestDuplicates:
    def test_duplicate_rate_within_tolerance(self) -> None:
        """Duplicates make up the requested share of the output, within two points."""
        traffic = DemoTraffic(seed=5, start=START)
        out = list(with_duplicates(traffic.records(5000), 0.2, random.Random(9)))
        ids = [record.record["event_id"] for record in out]
        share = (len(ids) - len(set(ids))) / len(ids)
        assert abs(share - 0.2) < 0.02

    def test_duplicates_are_exact_copies(self) -> None:
        """A re-emitted record equals the earlier one with the same event id."""
        traffic = DemoTraffic(seed=5, start=START)
        first: dict[str, DemoRecord] = {}
        repeats = 0
        for record in with_duplicates(traffic.records(1000), 0.3, random.Random(1)):
            earlier = first.setdefault(record.record["event_id"], record)
            if earlier is not record:
                repeats += 1
                assert record == earlier
                assert record.record is not earlier.record
        assert repeats > 0

    def test_zero_rate_passes_through(self) -> None:
        """A rate of zero emits the originals unchanged."""
        originals = list(DemoTraffic(seed=5, start=START).records(100))
        assert list(with_duplicates(iter(originals), 0.0, random.Random(1))) == originals

    @pytest.mark.parametrize("rate", [-0.1, 1.0])
    def test_rate_out_of_range_is_rejected(self, rate: float) -> None:
        """A rate outside [0, 1) is refused."""
        with pytest.raises(ValueError, match="duplicate rate"):
            list(with_duplicates(iter([]), rate, random.Random(1)))


class TestCorruptPayloads:
    def test_every_kind_appears(self) -> None:
        """Six values cover random bytes, empty, JSON, unknown id, truncated body, short header."""
        values = corrupt_payloads(6, random.Random(3))
        assert b"" in values
        assert any(v[:1] not in (b"", b"\x00", b"{") for v in values)
        assert any(json.loads(v) for v in values if v.startswith(b"{"))
        assert b"\x00\x00\x0f\x42\x3f" in {v[:5] for v in values}  # id 999999
        assert any(
            v[:1] == b"\x00" and len(v) > 5 and v[1:5] != b"\x00\x0f\x42\x3f" for v in values
        )
        assert any(v[:1] == b"\x00" and len(v) < 5 for v in values)

    def test_deterministic_and_sized(self) -> None:
        """The same generator state gives the same n values."""
        assert corrupt_payloads(20, random.Random(4)) == corrupt_payloads(20, random.Random(4))
        assert len(corrupt_payloads(20, random.Random(4))) == 20


def _newest_schema(topic: str) -> dict[str, Any] | None:
    folder = SCHEMA_ROOT / f"{topic}-value"
    versions = sorted(folder.glob("v*.avsc"), key=lambda p: int(p.stem[1:]))
    if not versions:
        return None
    parsed = parse_schema(json.loads(versions[-1].read_text("utf-8")))
    assert isinstance(parsed, dict)
    return parsed


def _assert_same_field_names(datum: Any, schema: Any, where: str) -> None:
    """Fail where a dict has keys the schema lacks or lacks keys it has (fastavro allows both)."""
    if isinstance(schema, list):
        for branch in schema:
            if (
                isinstance(branch, dict)
                and branch.get("type") == "record"
                and isinstance(datum, dict)
            ):
                _assert_same_field_names(datum, branch, where)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "record":
        fields = {f["name"]: f["type"] for f in schema["fields"]}
        assert set(datum) == set(fields), f"{where}: {sorted(set(datum) ^ set(fields))}"
        for name, field_schema in fields.items():
            _assert_same_field_names(datum[name], field_schema, f"{where}.{name}")
    elif schema.get("type") == "array":
        for index, item in enumerate(datum):
            _assert_same_field_names(item, schema["items"], f"{where}[{index}]")


class TestAvroContracts:
    @pytest.mark.parametrize("topic", sorted(TOPIC_EVENT_TYPES))
    def test_records_validate_against_newest_schema(
        self, topic: str, sample: list[DemoRecord]
    ) -> None:
        """Every generated record validates against the newest schema of its subject."""
        schema = _newest_schema(topic)
        if schema is None:
            pytest.skip(f"no schemas in {SCHEMA_ROOT / (topic + '-value')} yet")
        records = [record.record for record in sample if record.topic == topic]
        assert records
        for record in records:
            validate(record, schema, raise_errors=True, strict=True)
            _assert_same_field_names(record, schema, topic)
            schemaless_writer(io.BytesIO(), schema, record)
