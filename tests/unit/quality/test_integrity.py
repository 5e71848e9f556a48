"""The integrity stage and master-data index: park, release, expire, and their contracts."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro.validation import validate

from qmsflow.contracts import AvroCodec
from qmsflow.contracts.registry import (
    FileSchemaRegistry,
    RegisteredSchema,
    read_lock,
    read_schema_files,
)
from qmsflow.demo.traffic import DemoTraffic
from qmsflow.errors import ConfigurationError, ContractError, NormalisationError
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.ingest import IngestStage, RawMessage
from qmsflow.quality.integrity import (
    PARKED_SUBJECT,
    IntegrityRules,
    ParkedRecord,
    ParkingLot,
    Reference,
    UnresolvedReferences,
    event_from_json,
    event_to_json,
    load_integrity_rules,
    missing_references,
    parse_integrity_rules,
)
from qmsflow.quality.master_data import (
    MASTER_TOPICS,
    EquipmentRecord,
    LotRecord,
    MasterDataIndex,
    PartRecord,
    SupplierRecord,
    master_record,
)
from qmsflow.settings import PROJECT_ROOT
from qmsflow.topics import load_catalog

SCHEMAS_DIR = PROJECT_ROOT / "schemas" / "avro"
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def locked_registry(schemas_dir: Path = SCHEMAS_DIR) -> FileSchemaRegistry:
    """The committed schemas that have pinned ids (new, not yet locked subjects left out)."""
    ids = {(e.subject, e.version): e.schema_id for e in read_lock(schemas_dir)}
    return FileSchemaRegistry(
        RegisteredSchema(f.subject, f.version, ids[f.key], f.schema.parsed, f.schema.canonical)
        for f in read_schema_files(schemas_dir)
        if f.key in ids
    )


def schema(subject: str) -> Any:
    """Parse one of the new v1 schema files directly, as fastavro would."""
    return parse_schema(json.loads((SCHEMAS_DIR / subject / "v1.avsc").read_text("utf-8")))


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(locked_registry())


@pytest.fixture(scope="module")
def demo_events(codec: AvroCodec) -> list[QualityEvent]:
    """Canonical events of every type, decoded from 3,000 demo records."""
    stage = IngestStage(codec, load_catalog(), load_dictionary(), topic_prefix="")
    events = []
    for offset, demo in enumerate(DemoTraffic(5, T0).records(3000)):
        message = RawMessage(
            topic=demo.topic,
            partition=0,
            offset=offset,
            key=demo.key.encode(),
            value=codec.encode(f"{demo.topic}-value", demo.record),
            headers=[],
            timestamp_ms=None,
        )
        event = stage.decode(message)
        assert isinstance(event, dict), event
        events.append(event)
    return events


@pytest.fixture(scope="module")
def rules() -> IntegrityRules:
    return load_integrity_rules()


def event(
    event_id: str = "6f1c0b9e-0000-4000-8000-000000000001",
    event_type: str = "nonconformance",
    **references: str | None,
) -> QualityEvent:
    """A canonical nonconformance naming a lot and a part unless told otherwise."""
    fields: dict[str, Any] = {
        "lot_id": "L2611-0042",
        "part_number": "PN-30105-A",
        "supplier_id": None,
        "equipment_id": None,
        **references,
    }
    return {
        "event_id": event_id,
        "event_type": event_type,
        "source_system": "QMS",
        "source_record_id": "NCR-1041",
        "occurred_at": T0,
        "recorded_at": T0 + timedelta(seconds=1, microseconds=7),
        "product_line": "sterile-injectables",
        "site": "BOS1",
        "lot_id": fields["lot_id"],
        "part_number": fields["part_number"],
        "supplier_id": fields["supplier_id"],
        "equipment_id": fields["equipment_id"],
        "severity": "major",
        "source_severity": "Major",
        "status": "open",
        "source_status": "Draft",
        "signature": None,
        "audit": None,
        "correlation_id": None,
        "synthetic": False,
        "lineage": {
            "topic": "qms.nonconformance.v1",
            "partition": 1,
            "offset": 7,
            "schema_id": 8,
            "subject": "qms.nonconformance.v1-value",
            "schema_version": 2,
            "ingested_at": T0,
        },
        "trace_id": None,
        "payload": (
            "io.qmsflow.quality.Nonconformance",
            {"quantity": Decimal("12.000"), "due": date(2026, 12, 1), "lots": ["L2611-0042"]},
        ),
    }


def lot(lot_id: str, *parents: str, part: str = "PN-30105-A", deleted: bool = False) -> LotRecord:
    return LotRecord(
        lot_id, part, "sterile-injectables", "BOS1", None, parents, "RELEASED", T0, T0, "ERP",
        deleted,
    )  # fmt: skip


def part(number: str = "PN-30105-A") -> PartRecord:
    return PartRecord(number, "A", "vial", "sterile-injectables", "RELEASED", T0, "PLM")


def supplier(supplier_id: str = "SUP-0042") -> SupplierRecord:
    return SupplierRecord(supplier_id, "Northfield Glassworks", "US", "APPROVED", T0, "ERP")


def equipment(equipment_id: str = "EQ-HPLC-04") -> EquipmentRecord:
    return EquipmentRecord(
        equipment_id, "HPLC system", "BOS1", "CALIBRATED", date(2027, 1, 5), T0, "CMMS"
    )


class TestMissingReferences:
    def test_unknown_lot_is_missing(self, rules: IntegrityRules) -> None:
        """An event naming a lot master data does not know reports it as lot:<id>."""
        index = MasterDataIndex()
        index.apply("part", "PN-30105-A", part())
        missing = missing_references(event(), index, rules)
        assert [str(r) for r in missing] == ["lot:L2611-0042"]

    def test_supplier_is_checked_only_when_present(self, rules: IntegrityRules) -> None:
        """A nonconformance without a supplier passes; with an unknown one it does not."""
        index = MasterDataIndex()
        index.apply("lot", "L2611-0042", lot("L2611-0042"))
        index.apply("part", "PN-30105-A", part())
        assert missing_references(event(), index, rules) == []
        assert missing_references(event(supplier_id="SUP-9999"), index, rules) == [
            Reference("supplier", "SUP-9999")
        ]

    def test_required_reference_that_is_null_is_a_contract_error(
        self, rules: IntegrityRules
    ) -> None:
        """A calibration event without equipment cannot be fixed by waiting: it is rejected."""
        with pytest.raises(NormalisationError, match="equipment_id"):
            missing_references(event(event_type="calibration_event"), MasterDataIndex(), rules)

    def test_environmental_readings_name_no_master_data(self, rules: IntegrityRules) -> None:
        """Environmental readings pass even when the lot they name is unknown."""
        reading = event(event_type="environmental_reading")
        assert missing_references(reading, MasterDataIndex(), rules) == []

    def test_reference_reads_back_from_its_text(self) -> None:
        """kind:id parses back, with colons allowed in the id."""
        assert Reference.parse("lot:L2611-0042") == Reference("lot", "L2611-0042")
        assert Reference.parse("equipment:EQ:1") == Reference("equipment", "EQ:1")
        with pytest.raises(ValueError, match="kind:id"):
            Reference.parse("L2611-0042")


class TestParking:
    def test_unknown_lot_parks_the_event(self, rules: IntegrityRules) -> None:
        """An event whose lot is unknown is held, waiting on that lot."""
        index = MasterDataIndex()
        index.apply("part", "PN-30105-A", part())
        parking = ParkingLot()
        nc = event()
        record = parking.park(nc, missing_references(nc, index, rules), T0)
        assert record.status == "PARKED"
        assert nc["event_id"] in parking
        assert parking.waiting_on(Reference("lot", "L2611-0042")) == [nc["event_id"]]

    def test_arrival_of_the_lot_releases_the_event_once(self) -> None:
        """The lot's master record releases the event; a second arrival releases nothing."""
        index, parking, nc = MasterDataIndex(), ParkingLot(), event()
        parking.park(nc, [Reference("lot", "L2611-0042")], T0)
        assert index.apply("lot", "L2611-0042", lot("L2611-0042"))
        released = parking.release(Reference("lot", "L2611-0042"), index)
        assert [(r.event, r.status) for r in released] == [(nc, "RELEASED")]
        assert parking.release(Reference("lot", "L2611-0042"), index) == []
        assert len(parking) == 0

    def test_event_missing_two_references_needs_both(self) -> None:
        """An event waiting on a lot and a supplier stays parked until the second arrives."""
        index, parking = MasterDataIndex(), ParkingLot()
        nc = event(supplier_id="SUP-0042")
        parking.park(nc, [Reference("lot", "L2611-0042"), Reference("supplier", "SUP-0042")], T0)
        index.apply("lot", "L2611-0042", lot("L2611-0042"))
        assert parking.release(Reference("lot", "L2611-0042"), index) == []
        still = parking.get(nc["event_id"])
        assert still is not None and still.missing == (Reference("supplier", "SUP-0042"),)
        index.apply("supplier", "SUP-0042", supplier())
        released = parking.release(Reference("supplier", "SUP-0042"), index)
        assert [r.event_id for r in released] == [nc["event_id"]]

    def test_release_before_the_index_knows_releases_nothing(self) -> None:
        """Release trusts the index, not the caller: an unapplied reference frees nothing."""
        parking = ParkingLot()
        parking.park(event(), [Reference("lot", "L2611-0042")], T0)
        assert parking.release(Reference("lot", "L2611-0042"), MasterDataIndex()) == []
        assert len(parking) == 1

    def test_parking_the_same_event_twice_keeps_one(self) -> None:
        """A redelivered event keeps its first parked record, so its deadline does not move."""
        parking, nc = ParkingLot(), event()
        first = parking.park(nc, [Reference("lot", "L2611-0042")], T0)
        again = parking.park(copy.deepcopy(nc), [Reference("lot", "L2611-0042")], T0 + DAY / 2)
        assert again == first and len(parking) == 1
        assert parking.waiting_on(Reference("lot", "L2611-0042")) == [nc["event_id"]]

    def test_parking_with_nothing_missing_is_refused(self) -> None:
        """Only events that miss something can be parked."""
        with pytest.raises(ValueError, match="missing references"):
            ParkingLot().park(event(), [], T0)

    def test_release_known_frees_everything_the_index_has(self) -> None:
        """After a restart's replay, every event whose references now exist is released."""
        index, parking = MasterDataIndex(), ParkingLot()
        parking.park(event("e-1"), [Reference("lot", "L1")], T0)
        parking.park(event("e-2"), [Reference("lot", "L2")], T0)
        index.apply("lot", "L1", lot("L1"))
        assert [r.event_id for r in parking.release_known(index)] == ["e-1"]
        assert [r.event_id for r in parking] == ["e-2"]


class TestExpiry:
    def test_event_expires_at_the_deadline_with_a_readable_reason(self) -> None:
        """At the deadline the event leaves the lot; the reason names refs and time waited."""
        parking = ParkingLot()
        parking.park(
            event(supplier_id="SUP-0042"),
            [Reference("lot", "L2611-0042"), Reference("supplier", "SUP-0042")],
            T0,
        )
        assert parking.expire(T0 + DAY - timedelta(seconds=1), DAY) == []
        now = T0 + DAY + timedelta(minutes=5)
        (expired,) = parking.expire(now, DAY)
        assert expired.status == "EXPIRED" and len(parking) == 0
        error = expired.unresolved(now)
        assert isinstance(error, UnresolvedReferences) and isinstance(error, ContractError)
        assert error.reason_code == "unresolved-reference"
        assert "lot:L2611-0042, supplier:SUP-0042" in str(error)
        assert "24h 05m" in str(error) and "NCR-1041" in str(error)

    def test_a_longer_deadline_keeps_events_parked(self) -> None:
        """The deadline is applied when expiring, so raising it in an outage keeps events."""
        parking = ParkingLot()
        parking.park(event(), [Reference("lot", "L2611-0042")], T0)
        assert parking.expire(T0 + DAY, 2 * DAY) == []
        assert len(parking) == 1


class TestParkingState:
    def test_parking_lot_survives_a_json_round_trip(self) -> None:
        """to_dict is JSON-able and from_dict restores records and their waiting index."""
        parking = ParkingLot()
        parking.park(event("e-1"), [Reference("lot", "L1"), Reference("part", "P1")], T0)
        parking.park(event("e-2", lot_id="L2"), [Reference("lot", "L2")], T0 + DAY / 4)
        text = json.dumps(parking.to_dict())
        restored = ParkingLot.from_dict(json.loads(text))
        assert list(restored) == list(parking)
        assert restored.waiting_on(Reference("part", "P1")) == ["e-1"]

    def test_every_demo_event_type_round_trips_through_json(
        self, demo_events: list[QualityEvent]
    ) -> None:
        """Datetimes, dates, Decimals and the payload tuple read back equal, for all types."""
        types = set()
        for original in demo_events:
            document = json.loads(json.dumps(event_to_json(original)))
            assert event_from_json(document) == original
            types.add(original["event_type"])
        assert len(types) == 10

    def test_decimal_scale_and_microseconds_are_kept(self) -> None:
        """12.000 stays 12.000 and a timestamp keeps its microseconds."""
        back = event_from_json(json.loads(json.dumps(event_to_json(event()))))
        assert str(back["payload"][1]["quantity"]) == "12.000"
        assert back["recorded_at"].microsecond == 7 and back["recorded_at"].tzinfo is not None


class TestParkedContract:
    def test_parked_record_validates_against_its_schema(self) -> None:
        """Every status of a parked record is a valid quality.parked.v1 datum."""
        parsed = schema(PARKED_SUBJECT)
        record = ParkedRecord(event(), (Reference("lot", "L2611-0042"),), T0)
        for status in ("PARKED", "RELEASED", "EXPIRED"):
            datum = ParkedRecord(record.event, record.missing, T0, status).to_avro(DAY)
            assert validate(datum, parsed, strict=True)
        datum = record.to_avro(DAY)
        assert set(datum) == {f["name"] for f in parsed["fields"]}
        assert datum["deadline_at"] == T0 + DAY
        assert datum["missing_references"] == ["lot:L2611-0042"]
        assert event_from_json(json.loads(datum["event_json"])) == record.event

    def test_demo_events_validate_as_parked_records(self, demo_events: list[QualityEvent]) -> None:
        """Parked records of real canonical events validate, event_json included."""
        parsed = schema(PARKED_SUBJECT)
        for nc in demo_events[:300]:
            datum = ParkedRecord(nc, (Reference("lot", "X"),), T0).to_avro(DAY)
            assert validate(datum, parsed, strict=True)

    @pytest.mark.parametrize(
        ("kind", "record"),
        [
            ("lot", lot("L2611-0042", "RM2611-BOS1-30105-A")),
            ("part", part()),
            ("supplier", supplier()),
            ("equipment", equipment()),
        ],
    )
    def test_master_records_validate_and_read_back(self, kind: str, record: Any) -> None:
        """Each master record is a valid md.<kind>.v1 datum and reads back equal."""
        parsed = schema(f"{MASTER_TOPICS[record.kind]}-value")
        datum = record.to_avro()
        assert validate(datum, parsed, strict=True)
        assert set(datum) == {f["name"] for f in parsed["fields"]}
        assert master_record(kind, datum) == record

    def test_master_record_of_the_wrong_shape_is_a_contract_error(self) -> None:
        """A datum that is not a record of the kind is rejected naming the topic."""
        with pytest.raises(ContractError, match=r"md\.part\.v1"):
            master_record("part", supplier().to_avro())
        with pytest.raises(ContractError, match="kind"):
            master_record("batch", {})
        assert master_record("lot", None) is None


class TestMasterDataIndex:
    def test_tombstone_makes_the_entity_unknown_again(self) -> None:
        """A null value for a key forgets the entity, and so does a deleted flag."""
        index = MasterDataIndex()
        assert index.apply("lot", "L1", lot("L1"))
        assert not index.apply("lot", "L1", None)
        assert not index.knows("lot", "L1")
        index.apply("supplier", "SUP-0042", supplier())
        assert not index.apply("supplier", "SUP-0042", replace_deleted(supplier()))
        assert not index.knows("supplier", "SUP-0042") and len(index) == 0

    def test_event_after_a_tombstone_is_parked_again(self, rules: IntegrityRules) -> None:
        """A lot deleted at the source makes new events naming it miss it."""
        index = MasterDataIndex()
        index.apply("part", "PN-30105-A", part())
        index.apply("lot", "L2611-0042", lot("L2611-0042"))
        assert missing_references(event(), index, rules) == []
        index.apply("lot", "L2611-0042", None)
        assert missing_references(event(), index, rules) == [Reference("lot", "L2611-0042")]

    def test_key_must_match_the_record(self) -> None:
        """A record filed under another key or kind is a contract error, not silently indexed."""
        with pytest.raises(ContractError, match="L2"):
            MasterDataIndex().apply("lot", "L1", lot("L2"))
        with pytest.raises(ContractError, match="kind"):
            MasterDataIndex().apply("batch", "L1", None)

    def test_lots_of_part_and_genealogy(self) -> None:
        """Lots are found by part, and descendants follow parent links through generations."""
        index = MasterDataIndex()
        index.apply("lot", "RM1", lot("RM1", part="PN-30105-A"))
        index.apply("lot", "L1", lot("L1", "RM1", part="PN-30144-A"))
        index.apply("lot", "L2", lot("L2", "RM1", part="PN-30144-A"))
        index.apply("lot", "K1", lot("K1", "L1", part="PN-30144-A"))
        assert index.lots_of_part("PN-30144-A") == ["K1", "L1", "L2"]
        assert index.descendants("RM1") == ["K1", "L1", "L2"]
        assert index.children("RM1") == ["L1", "L2"]
        index.apply("lot", "L1", lot("L1", part="PN-30144-A"))  # relinked without a parent
        assert index.descendants("RM1") == ["L2"]
        index.apply("lot", "L2", None)
        assert index.lots_of_part("PN-30144-A") == ["K1", "L1"]
        assert index.descendants("RM1") == []

    def test_genealogy_cycles_do_not_loop(self) -> None:
        """Bad data with a parent cycle terminates and leaves the lot out of its own list."""
        index = MasterDataIndex()
        index.apply("lot", "A", lot("A", "B"))
        index.apply("lot", "B", lot("B", "A"))
        assert index.descendants("A") == ["B"]


class TestRules:
    def test_shipped_rules_cover_every_event_type(self, rules: IntegrityRules) -> None:
        """The packaged file loads, with a 24 h deadline and all ten event types."""
        assert rules.parking_deadline == DAY
        assert len(rules.references) == 10
        assert rules.references["calibration_event"] == {"equipment_id": "required"}

    def test_missing_event_type_is_a_configuration_error(self) -> None:
        """A rules file that forgets an event type is refused at start-up, naming it."""
        document = {"version": 1, "parking_deadline_hours": 24, "references": {"capa": {}}}
        with pytest.raises(ConfigurationError, match="nonconformance"):
            parse_integrity_rules(document)

    def test_unknown_field_or_presence_is_a_configuration_error(
        self, rules: IntegrityRules
    ) -> None:
        """Only the four reference fields and the two presence words are accepted."""
        references: dict[str, dict[str, str]] = {t: {} for t in rules.references}
        references["capa"] = {"owner_id": "required"}
        with pytest.raises(ConfigurationError, match="owner_id"):
            parse_integrity_rules(
                {"version": 1, "parking_deadline_hours": 24, "references": references}
            )
        references["capa"] = {"lot_id": "sometimes"}
        with pytest.raises(ConfigurationError, match="sometimes"):
            parse_integrity_rules(
                {"version": 1, "parking_deadline_hours": 24, "references": references}
            )


def replace_deleted(record: SupplierRecord) -> SupplierRecord:
    """The same supplier, flagged deleted at the source."""
    return SupplierRecord(
        record.supplier_id, record.name, record.country, record.approval_status,
        record.updated_at, record.source_system, deleted=True,
    )  # fmt: skip
