"""Master data for the demo plant: every lot, part, supplier and equipment the demo traffic names.

Lot ids depend on the traffic's seed and start (`DemoTraffic` numbers lots as it goes), so lots
are read off the records themselves; a replay of the same seed gives the same master data. Each
lot made in-house gets one parent: the supplier's raw-material lot of its part for that month,
so the genealogy answers "which lots did this supplier lot go into".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qmsflow.demo.traffic import PLANT, DemoRecord, DemoTraffic, Part, Plant
from qmsflow.quality.master_data import (
    MASTER_TOPICS,
    EquipmentRecord,
    LotRecord,
    MasterRecord,
    PartRecord,
    SupplierRecord,
)

__all__ = [
    "MasterMessage",
    "demo_master_data",
    "lot_master_records",
    "plant_master_records",
]

#: (topic, key, Avro datum) ready for `md.<kind>.v1-value` encoding
MasterMessage = tuple[str, str, dict[str, Any]]

# Where each demo supplier sits and how it stands on the approved supplier list; one is
# conditional, as a real list always has a supplier working off a finding.
_SUPPLIER_SITES: dict[str, tuple[str, str]] = {
    "SUP-0017": ("IE", "APPROVED"),
    "SUP-0042": ("US", "APPROVED"),
    "SUP-0055": ("DE", "APPROVED"),
    "SUP-0063": ("NO", "APPROVED"),
    "SUP-0091": ("IE", "APPROVED"),
    "SUP-0104": ("US", "APPROVED"),
    "SUP-0128": ("US", "CONDITIONAL"),
    "SUP-0210": ("IE", "APPROVED"),
    "SUP-0233": ("US", "APPROVED"),
    "SUP-0247": ("PL", "APPROVED"),
    "SUP-0259": ("DE", "APPROVED"),
    "SUP-0266": ("GB", "CONDITIONAL"),
    "SUP-0272": ("US", "APPROVED"),
}

# Equipment descriptions by the type segment of the id (EQ-<TYPE>-<NN>).
_EQUIPMENT_TYPES = {
    "AUTOCLAVE": "steam sterilisation autoclave",
    "FILLER": "vial filling and stoppering machine",
    "HPLC": "HPLC system",
    "FLOWTEST": "infusion flow-rate test rig",
    "TORQUE": "torque tester",
    "BALANCE": "analytical balance",
    "LYO": "freeze dryer",
    "PH-METER": "pH meter",
    "EXTRUDER": "catheter shaft extruder",
    "TENSILE": "tensile tester",
    "LASERMIC": "laser micrometer",
    "READER": "lateral flow strip reader",
    "HIPOT": "electrical safety analyser",
    "BATTCYCLER": "battery cycle tester",
    "LEAKTEST": "pressure-decay leak tester",
    "PULLTEST": "bond pull tester",
    "VISION": "automated vision inspection system",
    "DISPENSER": "reagent dispensing system",
    "SEALER": "pouch heat sealer",
    "CCIT": "container closure integrity tester",
    "ETO": "ethylene oxide steriliser",
    "RFWELDER": "RF welder",
    "CRIMPER": "stent crimping system",
    "LATHE": "Swiss-type CNC lathe",
    "CMM": "coordinate measuring machine",
    "PROFILOMETER": "surface profilometer",
    "LENSGAUGE": "lens diameter and power gauge",
}

# A lot exists in the ERP before anything is recorded against it: this long before its first
# event, so its updated_at never post-dates the events that name it.
_LOT_LEAD = timedelta(hours=2)
# Raw-material lots are received this long before the in-house lots made from them.
_RECEIPT_LEAD = timedelta(days=3)
# Fields of a record that name lots: the envelope's lot_id and a recall's or NC's lot lists.
_LOT_FIELDS = ("affected_lots", "lot_ids", "lot_range_start", "lot_range_end")


def _message(record: MasterRecord) -> MasterMessage:
    return MASTER_TOPICS[record.kind], record.entity_id, record.to_avro()


def plant_master_records(updated_at: datetime, plant: Plant = PLANT) -> list[MasterMessage]:
    """Suppliers, parts and equipment of every line, in that order, as of `updated_at`."""
    records: list[MasterRecord] = []
    for supplier in plant.every_supplier:
        country, approval = _SUPPLIER_SITES.get(supplier.supplier_id, ("IE", "APPROVED"))
        records.append(
            SupplierRecord(
                supplier.supplier_id, supplier.name, country, approval, updated_at, "ERP"
            )
        )
    for part in plant.every_part:
        records.append(
            PartRecord(
                part.number,
                part.revision,
                part.description,
                part.product_line,
                "RELEASED",
                updated_at,
                "PLM",
            )
        )
    for equipment in plant.every_equipment:
        kind = equipment.equipment_id.removeprefix("EQ-").rsplit("-", 1)[0]
        records.append(
            EquipmentRecord(
                equipment.equipment_id,
                _EQUIPMENT_TYPES.get(kind, kind.lower()),
                equipment.site,
                "CALIBRATED",
                (updated_at + timedelta(days=equipment.interval_days // 2)).date(),
                updated_at,
                "CMMS",
            )
        )
    return [_message(r) for r in records]


@dataclass
class _SeenLot:
    """What the traffic tells about one lot: its line and site, a part, its first event."""

    product_line: str
    site: str
    part_number: str | None
    first_at: datetime


def _lots_named(record: dict[str, Any]) -> list[str]:
    payload = record["payload"]
    named = [record["lot_id"]]
    for field in _LOT_FIELDS:
        value = payload.get(field)
        named.extend(value if isinstance(value, list) else [value])
    return [lot for lot in dict.fromkeys(named) if lot is not None]


def lot_master_records(records: Iterable[DemoRecord], plant: Plant = PLANT) -> list[MasterMessage]:
    """Lot records for every lot the records name, raw-material parents before their children.

    A lot's part is the first part an event on it names (else its line's first part); its
    parent is the raw-material lot of that part from the part's supplier, per site and month.
    """
    seen: dict[str, _SeenLot] = {}
    for demo in records:
        record = demo.record
        for lot_id in _lots_named(record):
            lot = seen.get(lot_id)
            if lot is None:
                seen[lot_id] = _SeenLot(
                    product_line=record["product_line"],
                    site=record["site"],
                    part_number=record["part_number"],
                    first_at=record["occurred_at"],
                )
                continue
            lot.part_number = lot.part_number or record["part_number"]
            lot.first_at = min(lot.first_at, record["occurred_at"])

    parts = {p.number: p for p in plant.every_part}
    first_part: dict[str, Part] = {}
    for part in plant.every_part:
        first_part.setdefault(part.product_line, part)
    received: dict[str, tuple[Part, str, datetime]] = {}  # raw lot -> part, site, received at
    made: list[LotRecord] = []
    for lot_id, lot in seen.items():
        part = parts.get(lot.part_number or "") or first_part[lot.product_line]
        manufactured_at = lot.first_at - _LOT_LEAD
        raw_id = f"RM{manufactured_at:%y%m}-{lot.site}-{part.number.removeprefix('PN-')}"
        at = manufactured_at - _RECEIPT_LEAD
        if raw_id not in received or at < received[raw_id][2]:
            received[raw_id] = (part, lot.site, at)
        made.append(
            LotRecord(
                lot_id=lot_id,
                part_number=part.number,
                product_line=lot.product_line,
                site=lot.site,
                supplier_id=None,
                parent_lot_ids=(raw_id,),
                status="RELEASED",
                manufactured_at=manufactured_at,
                updated_at=manufactured_at,
                source_system="ERP",
            )
        )
    raw = [
        LotRecord(
            lot_id=raw_id,
            part_number=part.number,
            product_line=part.product_line,
            site=site,
            supplier_id=part.supplier_id,
            parent_lot_ids=(),
            status="RELEASED",
            manufactured_at=at,
            updated_at=at,
            source_system="ERP",
        )
        for raw_id, (part, site, at) in received.items()
    ]
    return [_message(r) for r in [*raw, *made]]


def demo_master_data(
    seed: int,
    start: datetime,
    n: int,
    plant: Plant = PLANT,
    mean_gap_seconds: float | None = None,
) -> list[MasterMessage]:
    """Master data covering the first `n` records of `DemoTraffic(seed, start, plant, gap)`.

    Plant records are dated a day before `start`; produce these before the traffic (or some
    after it, to watch the integrity stage park and release).
    """
    traffic = (
        DemoTraffic(seed, start, plant)
        if mean_gap_seconds is None
        else DemoTraffic(seed, start, plant, mean_gap_seconds)
    )
    return [
        *plant_master_records(start - timedelta(days=1), plant),
        *lot_master_records(traffic.records(n), plant),
    ]
