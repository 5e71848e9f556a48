"""The bad-supplier-lot scenario, through the real contracts and the pure stages (no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from qmsflow.contracts import AvroCodec
from qmsflow.contracts.registry import FileSchemaRegistry
from qmsflow.demo.scenarios import Scenario, bad_supplier_lot
from qmsflow.demo.traffic import DemoRecord
from qmsflow.quality.correlation import IncidentState, correlate, load_rules
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.ingest import IngestStage, RawMessage
from qmsflow.quality.quarantine import LotHoldState, decide, load_quarantine_rules, lots_touched
from qmsflow.settings import PROJECT_ROOT
from qmsflow.topics import load_catalog

START = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


class _NoCatalog:
    def lots_of_part(self, part_number: str) -> list[str]:
        return []


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return bad_supplier_lot(seed=4242, start=START)


def _canonical(codec: AvroCodec, record: DemoRecord, offset: int) -> QualityEvent:
    stage = IngestStage(codec, load_catalog(), load_dictionary())
    message = RawMessage(
        record.topic,
        0,
        offset,
        record.key.encode(),
        codec.encode(f"{record.topic}-value", record.record),
        [],
        None,
    )
    event = stage.decode(message)
    assert isinstance(event, dict), event
    return event


class TestBadSupplierLot:
    def test_forty_events_from_three_systems_in_ten_minutes(self, scenario: Scenario) -> None:
        """The trouble is 40 events from QMS, MES and LIMS, all about the lot, within 10 min."""
        records = [r.record for r in scenario.trouble]
        assert len(records) == 40
        assert {r["source_system"] for r in records} == {"QMS", "MES", "LIMS"}
        assert all(r["lot_id"] == scenario.lot_id for r in records)
        times = [r["occurred_at"] for r in records]
        assert max(times) - min(times) <= timedelta(minutes=10)
        assert len({r["event_id"] for r in records}) == 40

    def test_same_seed_same_scenario(self, scenario: Scenario) -> None:
        """A scenario is reproducible: the same seed gives the same event ids."""
        again = bad_supplier_lot(seed=4242, start=START)
        assert [r.record["event_id"] for r in again.trouble] == [
            r.record["event_id"] for r in scenario.trouble
        ]

    def test_stages_make_one_incident_one_hold_one_release(
        self, scenario: Scenario, codec: AvroCodec
    ) -> None:
        """Normalised and run through correlation and quarantine: 1 incident, 1 hold, 1 release."""
        rules, q_rules = load_rules(), load_quarantine_rules()
        incidents: dict[str, IncidentState] = {}
        alerts = 0
        hold: LotHoldState | None = None
        actions = []
        events = [_canonical(codec, r, i) for i, r in enumerate(scenario.trouble)]
        events.append(_canonical(codec, scenario.disposition, 99))
        for event in events:
            key = rules.root_cause_key(event)
            if key is not None:
                result = correlate(incidents.get(key), event, rules)
                if result.state is not None:
                    incidents[key] = result.state
                alerts += result.alert is not None
            for lot in lots_touched(event, q_rules, _NoCatalog()):
                assert lot == scenario.lot_id
                hold, commands = decide(hold, lot, event, q_rules)
                actions += [c.action for c in commands]
        assert list(incidents) == [f"lot:{scenario.lot_id}"]
        assert incidents[f"lot:{scenario.lot_id}"].member_count == 41  # 40 + the disposition
        assert alerts == 1
        assert actions == ["HOLD", "RELEASE"]
