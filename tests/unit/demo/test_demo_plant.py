"""The demo plant: four scripted lines as the source database has them, twenty more for volume."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime

import pytest

from qmsflow.contracts import AvroCodec
from qmsflow.contracts.registry import FileSchemaRegistry
from qmsflow.demo.traffic import PLANT, DemoRecord, DemoTraffic
from qmsflow.partition_spread import planned_spread
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.ingest import IngestStage, RawMessage
from qmsflow.settings import PROJECT_ROOT
from qmsflow.topics import load_catalog

START = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
SCRIPTED = {"infusion-pumps", "catheters", "sterile-injectables", "diagnostic-kits"}
ERP_SEED = PROJECT_ROOT / "connectors" / "debezium" / "erp_seed.sql"


@pytest.fixture(scope="module")
def sample() -> list[DemoRecord]:
    """Twenty thousand records of the default plant, shared by the read-only tests."""
    return list(DemoTraffic(seed=7, start=START).records(20_000))


class TestScriptedLines:
    def test_the_four_scripted_lines_are_unchanged(self) -> None:
        """The scenarios' and the tests' four lines are still the plant's scripted ones."""
        assert {line for lines in PLANT.sites.values() for line in lines} == SCRIPTED
        assert {p.product_line for p in PLANT.parts} == SCRIPTED

    def test_the_demo_source_database_holds_exactly_the_scripted_entities(self) -> None:
        """erp_seed.sql mirrors the scripted parts, suppliers and equipment, nothing more.

        CDC golden records, source edits (new batches reference erp.material) and the CDC tests
        rely on it; background entities must stay out of these tuples.
        """
        seed = ERP_SEED.read_text(encoding="utf-8")
        assert set(re.findall(r"'(PN-\d{5}-[A-Z])'", seed)) == {p.number for p in PLANT.parts}
        assert set(re.findall(r"'(SUP-\d{4})'", seed)) == {s.supplier_id for s in PLANT.suppliers}
        assert set(re.findall(r"'(EQ-[A-Z0-9-]+)'", seed)) == {
            e.equipment_id for e in PLANT.equipment
        }


class TestBackgroundLines:
    def test_the_plant_has_twenty_four_lines(self) -> None:
        """Twenty background lines join the four scripted ones, each name once."""
        names = [line.name for line in PLANT.background_lines]
        assert len(names) == len(set(names)) == 20
        assert set(PLANT.product_lines) == SCRIPTED | set(names)

    def test_ids_are_unique_across_all_lines(self) -> None:
        """No part, supplier, equipment or monitoring point id is given twice."""
        for ids in (
            [p.number for p in PLANT.every_part],
            [s.supplier_id for s in PLANT.every_supplier],
            [e.equipment_id for e in PLANT.every_equipment],
            [p.location_id for p in PLANT.every_point],
        ):
            assert [i for i, n in Counter(ids).items() if n > 1] == []

    def test_each_line_is_complete_and_its_entities_are_its_own(self) -> None:
        """A background line has sites, three parts, equipment and a point, all on its sites."""
        suppliers = {s.supplier_id for s in PLANT.every_supplier}
        for line in PLANT.background_lines:
            assert line.sites and set(line.sites) <= set(PLANT.sites), line.name
            assert len(line.parts) == 3 and line.equipment and line.points, line.name
            for entity in (*line.parts, *line.equipment, *line.points):
                assert entity.product_line == line.name, entity
            assert {e.site for e in (*line.equipment, *line.points)} <= set(line.sites)
            assert {p.supplier_id for p in line.parts} <= suppliers, line.name
            assert PLANT.sites_of(line.name) == line.sites


class TestTrafficOverAllLines:
    def test_every_line_carries_traffic(self, sample: list[DemoRecord]) -> None:
        """20,000 records name all 24 lines, none under 2 % of them."""
        counts = Counter(record.key for record in sample)
        assert set(counts) == set(PLANT.product_lines)
        assert min(counts.values()) > 0.02 * len(sample)

    def test_the_scripted_lines_no_longer_dominate(self, sample: list[DemoRecord]) -> None:
        """The four scripted lines carry about a fifth of the records, as one line in six."""
        scripted = sum(1 for record in sample if record.key in SCRIPTED)
        assert 0.15 < scripted / len(sample) < 0.30

    def test_the_lines_keep_every_declared_partition_busy(self, sample: list[DemoRecord]) -> None:
        """At the declared count no partition of quality.events.v1 idles."""
        partitions = load_catalog()["quality.events.v1"].partitions
        spread = planned_spread(Counter(record.key for record in sample), partitions)
        assert spread.busy == partitions

    def test_background_records_pass_the_ingest_stage(self, sample: list[DemoRecord]) -> None:
        """Every background line's record decodes and normalises: no unit or word is unknown."""
        codec = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
        stage = IngestStage(codec, load_catalog(), load_dictionary())
        background = {line.name for line in PLANT.background_lines}
        seen: set[str] = set()
        for offset, record in enumerate(sample[:6000]):
            if record.key not in background:
                continue
            value = codec.encode(f"{record.topic}-value", record.record)
            message = RawMessage(record.topic, 0, offset, record.key.encode(), value, [], None)
            assert isinstance(stage.decode(message), dict), record
            seen.add(record.key)
        assert seen == background
