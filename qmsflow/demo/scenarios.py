"""Scripted scenarios: the situations a plant buys qmsflow for, as reproducible ingest records.

`bad_supplier_lot` is the one the README and the integration tests tell: a supplier lot goes bad;
within ten minutes QMS raises a nonconformance and keeps working it, MES rejects it at incoming
inspection and LIMS finds it out of specification, 40 events from three systems. qmsflow must
make one incident of them (one alert, 39 suppressed), put the lot on hold once, and release it
once when the material review board dispositions the nonconformance use-as-is.
"""

from __future__ import annotations

import copy
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qmsflow.demo.traffic import PLANT, DemoRecord, DemoTraffic, Part, Plant
from qmsflow.quality.master_data import LotRecord

_NC_LIFECYCLE = (
    "Draft",
    "Analysis",
    "Analysis",
    "Action Plan",
    "Action Plan",
    "In Progress",
    "In Progress",
    "In Progress",
    "In Progress",
    "In Progress",
)


@dataclass(frozen=True)
class Scenario:
    """The records of a scenario, in the order a plant's systems would send them."""

    lot_id: str
    supplier_id: str
    part_number: str
    product_line: str
    nonconformance_id: str
    lot_master: tuple[str, str, dict[str, Any]]  # (topic, key, md.lot.v1 record)
    trouble: tuple[DemoRecord, ...]  # the 40 events about the bad lot
    disposition: DemoRecord  # the MRB's use-as-is decision on the nonconformance


def bad_supplier_lot(seed: int, start: datetime, plant: Plant = PLANT) -> Scenario:
    """Build the bad-supplier-lot scenario: 10 QMS, 15 MES and 15 LIMS events in ten minutes."""
    rng = random.Random(seed)
    part = rng.choice([p for p in plant.parts if p.supplier_id])
    site = plant.sites_of(part.product_line)[0]
    lot_id = f"LS{seed % 100000:05d}-{rng.randrange(1000):03d}"
    ncr = f"NCR-9{seed % 10000:04d}"
    templates = _templates(seed, start)
    clock = iter(sorted(start + timedelta(seconds=rng.uniform(0, 590)) for _ in range(40)))
    trouble: list[DemoRecord] = []
    for status in _NC_LIFECYCLE:
        record = _about(templates["qms.nonconformance.v1"], part, site, lot_id, next(clock), rng)
        record.record.update(source_record_id=ncr, status=status, severity="major")
        record.record["payload"].update(
            affected_lots=[lot_id], disposition=None, nc_source="supplier", defect_code="crack"
        )
        trouble.append(record)
    for index in range(15):
        record = _about(templates["mes.inspection-result.v1"], part, site, lot_id, next(clock), rng)
        record.record.update(source_record_id=f"INSP-S{seed % 10000:04d}-{index:02d}")
        record.record["payload"].update(result="reject", defects_found=rng.randint(1, 4))
        trouble.append(record)
    for index in range(15):
        record = _about(templates["lims.lab-result.v1"], part, site, lot_id, next(clock), rng)
        record.record.update(source_record_id=f"RES-S{seed % 10000:04d}-{index:02d}")
        record.record["payload"].update(result_status="OOS")
        trouble.append(record)
    trouble.sort(key=lambda r: r.record["recorded_at"])
    disposition = _about(
        templates["qms.nonconformance.v1"], part, site, lot_id, start + timedelta(hours=2), rng
    )
    disposition.record.update(source_record_id=ncr, status="Closed", severity="major")
    disposition.record["payload"].update(
        affected_lots=[lot_id], disposition="use_as_is", nc_source="supplier", defect_code="crack"
    )
    lot = LotRecord(
        lot_id=lot_id,
        part_number=part.number,
        product_line=part.product_line,
        site=site,
        supplier_id=part.supplier_id,
        parent_lot_ids=(),
        status="QUARANTINE",
        manufactured_at=start - timedelta(days=3),
        updated_at=start - timedelta(days=1),
        source_system="ERP",
    )
    return Scenario(
        lot_id=lot_id,
        supplier_id=part.supplier_id,
        part_number=part.number,
        product_line=part.product_line,
        nonconformance_id=ncr,
        lot_master=("md.lot.v1", lot_id, lot.to_avro()),
        trouble=tuple(trouble),
        disposition=disposition,
    )


def _templates(seed: int, start: datetime) -> dict[str, DemoRecord]:
    """One realistic record of each type the scenario needs, from the demo generator."""
    wanted = {"qms.nonconformance.v1", "mes.inspection-result.v1", "lims.lab-result.v1"}
    found: dict[str, DemoRecord] = {}
    traffic = DemoTraffic(seed, start)
    while len(found) < len(wanted):
        record = traffic.next_record()
        if record.topic in wanted and record.topic not in found and not record.record["audit"]:
            found[record.topic] = record
    return found


def _about(
    template: DemoRecord, part: Part, site: str, lot_id: str, at: datetime, rng: random.Random
) -> DemoRecord:
    """A copy of a template record, re-aimed at the bad lot and given its own event id."""
    record = copy.deepcopy(template.record)
    record.update(
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        occurred_at=at,
        recorded_at=at + timedelta(seconds=rng.uniform(1, 20)),
        product_line=part.product_line,
        site=site,
        lot_id=lot_id,
        part_number=part.number,
        supplier_id=part.supplier_id,
        signature=None,
        audit=None,
    )
    return DemoRecord(template.topic, part.product_line, record)
