"""Demo master data covers everything the demo traffic names, and honours the md.* contracts."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from fastavro import parse_schema
from fastavro.validation import validate

from qmsflow.demo.master_data import MasterMessage, demo_master_data, plant_master_records
from qmsflow.demo.traffic import PLANT, DemoTraffic
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.integrity import load_integrity_rules, missing_references
from qmsflow.quality.master_data import MASTER_TOPICS, MasterDataIndex, master_record
from qmsflow.settings import PROJECT_ROOT

SEED = 19
START = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)  # crosses a month: lot ids change prefix
COUNT = 5000
KINDS = {topic: kind for kind, topic in MASTER_TOPICS.items()}


@pytest.fixture(scope="module")
def messages() -> list[MasterMessage]:
    return demo_master_data(SEED, START, COUNT)


@pytest.fixture(scope="module")
def index(messages: list[MasterMessage]) -> MasterDataIndex:
    built = MasterDataIndex()
    for topic, key, datum in messages:
        kind = KINDS[topic]
        assert built.apply(kind, key, master_record(kind, datum))
    return built


class TestCoverage:
    def test_demo_traffic_has_no_missing_references(self, index: MasterDataIndex) -> None:
        """5,000 demo records, checked under the shipped rules, miss no master data."""
        rules = load_integrity_rules()
        missing = Counter[str]()
        for demo in DemoTraffic(SEED, START).records(COUNT):
            # the envelope fields the rules read are the same in ingest and canonical records
            event = cast(QualityEvent, demo.record)
            missing.update(str(r) for r in missing_references(event, index, rules))
        assert missing == Counter()

    def test_every_envelope_reference_is_known_even_where_rules_do_not_check(
        self, index: MasterDataIndex
    ) -> None:
        """Every lot, part, supplier and equipment id any record names is in master data."""
        unknown = set()
        for demo in DemoTraffic(SEED, START).records(COUNT):
            for field, kind in (
                ("lot_id", "lot"),
                ("part_number", "part"),
                ("supplier_id", "supplier"),
                ("equipment_id", "equipment"),
            ):
                value = demo.record[field]
                if value is not None and not index.knows(kind, value):
                    unknown.add(f"{kind}:{value}")
            for lot_id in demo.record["payload"].get("lot_ids", []):
                if not index.knows("lot", lot_id):
                    unknown.add(f"lot:{lot_id}")
        assert unknown == set()

    def test_plant_entities_are_all_present(self) -> None:
        """Every supplier, part and piece of equipment of every line has one record."""
        counts = Counter(topic for topic, _, _ in plant_master_records(START))
        assert counts == {
            "md.supplier.v1": len(PLANT.every_supplier),
            "md.part.v1": len(PLANT.every_part),
            "md.equipment.v1": len(PLANT.every_equipment),
        }


class TestGenealogy:
    def test_supplier_lots_have_descendants(
        self, messages: list[MasterMessage], index: MasterDataIndex
    ) -> None:
        """Raw-material lots from suppliers are parents of lots made in-house."""
        raw = [key for topic, key, d in messages if topic == "md.lot.v1" and d["supplier_id"]]
        assert raw
        assert all(index.descendants(lot_id) for lot_id in raw)

    def test_parents_come_before_their_children(self, messages: list[MasterMessage]) -> None:
        """A consumer reading in order never meets a child before its parent."""
        seen: set[str] = set()
        for topic, key, datum in messages:
            if topic == "md.lot.v1":
                assert set(datum["parent_lot_ids"]) <= seen
                seen.add(key)

    def test_same_seed_gives_the_same_master_data(self, messages: list[MasterMessage]) -> None:
        """Master data is as deterministic as the traffic it describes."""
        assert demo_master_data(SEED, START, COUNT) == messages


class TestContracts:
    def test_every_message_validates_against_its_schema(
        self, messages: list[MasterMessage]
    ) -> None:
        """Each datum is a strict-valid md.<kind>.v1 record keyed by its entity id."""
        schemas: dict[str, Any] = {}
        for topic in MASTER_TOPICS.values():
            path = PROJECT_ROOT / "schemas" / "avro" / f"{topic}-value" / "v1.avsc"
            schemas[topic] = parse_schema(json.loads(path.read_text("utf-8")))
        for topic, key, datum in messages:
            assert validate(datum, schemas[topic], strict=True)
            assert set(datum) == {f["name"] for f in schemas[topic]["fields"]}
            record = master_record(KINDS[topic], datum)
            assert record is not None and record.entity_id == key
