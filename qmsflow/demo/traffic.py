"""Deterministic demo traffic: realistic ingest records from a two-site plant, no Kafka involved.

A seeded `random.Random` drives everything, so one seed and one start time always give the same
stream. Records are Avro datums for the ingest subjects (field names and logical types as in
`docs/contracts-spec.md`): timestamps are aware UTC datetimes, dates `datetime.date`, decimals
`Decimal` with at most six places, uuids `str`.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "PLANT",
    "TOPIC_EVENT_TYPES",
    "TOPIC_SOURCE_SYSTEMS",
    "DemoRecord",
    "DemoTraffic",
    "Plant",
    "ProductLine",
    "corrupt_payloads",
    "with_duplicates",
]

#: logical ingest topic -> the event_type the spec fixes for it
TOPIC_EVENT_TYPES: dict[str, str] = {
    "qms.nonconformance.v1": "nonconformance",
    "qms.capa.v1": "capa",
    "qms.deviation.v1": "deviation",
    "qms.audit-finding.v1": "audit_finding",
    "supplier.corrective-action.v1": "supplier_corrective_action",
    "mes.inspection-result.v1": "inspection_result",
    "lims.lab-result.v1": "lab_result",
    "ems.environmental-reading.v1": "environmental_reading",
    "cmms.calibration-event.v1": "calibration_event",
    "qms.recall.v1": "recall",
}

#: logical ingest topic -> the system that produces it
TOPIC_SOURCE_SYSTEMS: dict[str, str] = {
    "qms.nonconformance.v1": "QMS",
    "qms.capa.v1": "QMS",
    "qms.deviation.v1": "QMS",
    "qms.audit-finding.v1": "QMS",
    "supplier.corrective-action.v1": "SUPPLIER_PORTAL",
    "mes.inspection-result.v1": "MES",
    "lims.lab-result.v1": "LIMS",
    "ems.environmental-reading.v1": "EMS",
    "cmms.calibration-event.v1": "CMMS",
    "qms.recall.v1": "QMS",
}

# Records per 1,000, dealt as a shuffled deck so that every block of 1,000 records holds every
# topic (a 2,000-record demo always shows a recall) while the mix stays as in a real plant:
# environmental points sample far more often than anything else, then MES and LIMS results,
# and quality records are tens a day against thousands of readings (DOMAIN.md, "Volumes").
_DECK_SIZE = 1000
_VOLUME_PER_DECK: dict[str, int] = {
    "ems.environmental-reading.v1": 445,
    "mes.inspection-result.v1": 220,
    "lims.lab-result.v1": 200,
    "cmms.calibration-event.v1": 40,
    "qms.nonconformance.v1": 35,
    "qms.deviation.v1": 20,
    "qms.capa.v1": 16,
    "qms.audit-finding.v1": 12,
    "supplier.corrective-action.v1": 10,
    "qms.recall.v1": 2,
}

# Mean simulated seconds between two records: ~43,000 records a simulated day, the scale of a
# sterile site's environmental monitoring at a few points, without making demos long.
_MEAN_GAP_SECONDS = 2.0

# How long each source takes to record what happened (seconds, uniform): sensors are near
# real time, people typing into a QMS or a supplier portal are minutes to hours behind.
_RECORDING_LAG_SECONDS: dict[str, tuple[float, float]] = {
    "EMS": (0.05, 3.0),
    "MES": (1.0, 90.0),
    "LIMS": (30.0, 1200.0),
    "CMMS": (60.0, 3600.0),
    "QMS": (5.0, 900.0),
    "SUPPLIER_PORTAL": (60.0, 7200.0),
}

# A QMS record already open is updated rather than a new one raised this often: about three
# updates per new record, so most lifecycles (draft to closed, with audit trails and
# signatures) complete within a short demo.
_UPDATE_PROBABILITY = 0.75
# Share of updates that cancel the record instead (raised in error, merged into another).
_CANCEL_PROBABILITY = 0.04
# Open records kept per type; older ones are considered abandoned (no closure event).
_MAX_OPEN = 40
# Originals remembered for re-emission: retries and replays duplicate recent records.
_DUPLICATE_WINDOW = 2000
# Decimal places of the spec's decimal(18, 6).
_MAX_SCALE = 6


# --------------------------------------------------------------------------- plant model


@dataclass(frozen=True)
class Part:
    """A part number with its revision, the line that uses it and its supplier."""

    number: str
    description: str
    product_line: str
    supplier_id: str

    @property
    def revision(self) -> str:
        """The revision letter, the part number's last segment."""
        return self.number.rsplit("-", 1)[1]


@dataclass(frozen=True)
class Supplier:
    """An approved supplier."""

    supplier_id: str
    name: str


@dataclass(frozen=True)
class Employee:
    """A person who signs and changes records (21 CFR 11.50: id plus printed name)."""

    employee_id: str
    printed_name: str
    site: str


@dataclass(frozen=True)
class Equipment:
    """A calibrated piece of equipment or lab instrument."""

    equipment_id: str
    site: str
    product_line: str
    interval_days: int


@dataclass(frozen=True)
class MonitoringPoint:
    """An environmental monitoring point in a classified room."""

    location_id: str
    site: str
    product_line: str
    cleanroom_grade: str | None
    parameters: tuple[str, ...]


#: how a background line is regulated, which picks its FDA recall number's letter
RegulatedAs = Literal["device", "drug", "biologic"]


@dataclass(frozen=True)
class ProductLine:
    """A background product line: plain traffic and master data, nothing scripted.

    `family` picks its MES inspection plan and LIMS tests (lines of one kind are inspected and
    tested alike). Its parts name suppliers from the plant's and the background's lists.
    """

    name: str
    family: str
    regulated_as: RegulatedAs
    sites: tuple[str, ...]
    parts: tuple[Part, ...]
    equipment: tuple[Equipment, ...]
    points: tuple[MonitoringPoint, ...]


@dataclass(frozen=True)
class Plant:
    """The sites, lines, parts, suppliers, people, equipment and monitoring points of the demo.

    `sites` to `points` are the scripted lines: the scenarios draw on them and the demo source
    database mirrors them (connectors/debezium/erp_seed.sql), so their entities stay as they
    are. `background_lines` and `background_suppliers` are the rest of a real plant's lines,
    there for volume and spread (traffic keyed by dozens of lines, docs/scaling.md): their
    events and demo master data flow like the scripted lines', but no scenario and no CDC
    source names them. The `every_*` views span both.
    """

    sites: dict[str, tuple[str, ...]]
    parts: tuple[Part, ...]
    suppliers: tuple[Supplier, ...]
    employees: tuple[Employee, ...]
    equipment: tuple[Equipment, ...]
    points: tuple[MonitoringPoint, ...]
    background_lines: tuple[ProductLine, ...] = ()
    background_suppliers: tuple[Supplier, ...] = ()

    @property
    def product_lines(self) -> tuple[str, ...]:
        """Every product line, scripted and background, each made at one or more sites."""
        scripted = {line for lines in self.sites.values() for line in lines}
        return tuple(sorted(scripted | {line.name for line in self.background_lines}))

    @property
    def every_part(self) -> tuple[Part, ...]:
        """The scripted lines' parts, then the background lines'."""
        return (*self.parts, *(p for line in self.background_lines for p in line.parts))

    @property
    def every_supplier(self) -> tuple[Supplier, ...]:
        """The scripted lines' suppliers, then those only background lines buy from."""
        return (*self.suppliers, *self.background_suppliers)

    @property
    def every_equipment(self) -> tuple[Equipment, ...]:
        """The scripted lines' equipment, then the background lines'."""
        return (*self.equipment, *(e for line in self.background_lines for e in line.equipment))

    @property
    def every_point(self) -> tuple[MonitoringPoint, ...]:
        """The scripted lines' monitoring points, then the background lines'."""
        return (*self.points, *(p for line in self.background_lines for p in line.points))

    def background_line(self, name: str) -> ProductLine | None:
        """The background line of that name; None for a scripted line."""
        return next((line for line in self.background_lines if line.name == name), None)

    def sites_of(self, product_line: str) -> tuple[str, ...]:
        """Return the sites that make a product line."""
        background = self.background_line(product_line)
        if background is not None:
            return background.sites
        return tuple(site for site, lines in self.sites.items() if product_line in lines)


# What a monitoring point samples, by the room's class (EU GMP Annex 1): grade A air for
# particles and viable counts only; classified rooms add the pressure cascade and climate;
# controlled, unclassified rooms only climate.
_GRADE_A = ("particles_0_5um", "viable_count")
_CLASSIFIED = ("particles_0_5um", "differential_pressure", "temperature", "relative_humidity")
_CONTROLLED = ("temperature", "relative_humidity")

# Suppliers only the background lines buy from; the rest of their parts come from the scripted
# lines' suppliers, as a plant's moulders, glassworks and packaging houses serve many lines.
_BACKGROUND_SUPPLIERS = (
    Supplier("SUP-0233", "Ardmore Titanium Alloys"),
    Supplier("SUP-0247", "Vistula Medical Textiles"),
    Supplier("SUP-0259", "Rheinau Pharma Ingredients"),
    Supplier("SUP-0266", "Saltire Hydrogels"),
    Supplier("SUP-0272", "Tamarack Membranes"),
)

# The plant's other twenty lines: Boston assembles electromechanical devices and diagnostics and
# fills syringes and vaccines; Cork makes disposables, implants and ophthalmics.
_BACKGROUND_LINES = (
    ProductLine(
        "syringe-pumps",
        "electromechanical",
        "device",
        ("BOS1",),
        (
            Part("PN-50112-B", "syringe pump chassis", "syringe-pumps", "SUP-0017"),
            Part("PN-50127-A", "lead screw drive assembly", "syringe-pumps", "SUP-0063"),
            Part("PN-50140-C", "plunger force sensor", "syringe-pumps", "SUP-0063"),
        ),
        (
            Equipment("EQ-HIPOT-03", "BOS1", "syringe-pumps", 365),
            Equipment("EQ-FLOWTEST-05", "BOS1", "syringe-pumps", 180),
        ),
        (MonitoringPoint("BOS1-ASSY-RM3-P01", "BOS1", "syringe-pumps", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "patient-monitors",
        "electromechanical",
        "device",
        ("BOS1",),
        (
            Part("PN-51204-A", "monitor front bezel", "patient-monitors", "SUP-0017"),
            Part("PN-51219-D", "SpO2 sensor board", "patient-monitors", "SUP-0063"),
            Part("PN-51233-B", "lithium-ion battery pack", "patient-monitors", "SUP-0063"),
        ),
        (
            Equipment("EQ-HIPOT-04", "BOS1", "patient-monitors", 365),
            Equipment("EQ-BATTCYCLER-01", "BOS1", "patient-monitors", 180),
        ),
        (MonitoringPoint("BOS1-ASSY-RM4-P01", "BOS1", "patient-monitors", None, _CONTROLLED),),
    ),
    ProductLine(
        "dialysis-filters",
        "single-use",
        "device",
        ("BOS1",),
        (
            Part("PN-52108-A", "polysulfone hollow fibre bundle", "dialysis-filters", "SUP-0272"),
            Part("PN-52115-B", "dialyser housing", "dialysis-filters", "SUP-0017"),
            Part("PN-52131-A", "polyurethane potting compound", "dialysis-filters", "SUP-0128"),
        ),
        (
            Equipment("EQ-LEAKTEST-04", "BOS1", "dialysis-filters", 90),
            Equipment("EQ-PULLTEST-02", "BOS1", "dialysis-filters", 180),
        ),
        (MonitoringPoint("BOS1-DIAL-RM6-P01", "BOS1", "dialysis-filters", "C", _CLASSIFIED),),
    ),
    ProductLine(
        "surgical-staplers",
        "single-use",
        "device",
        ("BOS1",),
        (
            Part("PN-53206-C", "stapler handle moulding", "surgical-staplers", "SUP-0017"),
            Part("PN-53214-A", "titanium staple cartridge", "surgical-staplers", "SUP-0233"),
            Part("PN-53229-B", "firing spring", "surgical-staplers", "SUP-0091"),
        ),
        (
            Equipment("EQ-PULLTEST-03", "BOS1", "surgical-staplers", 180),
            Equipment("EQ-VISION-02", "BOS1", "surgical-staplers", 365),
        ),
        (MonitoringPoint("BOS1-ASSY-RM5-P01", "BOS1", "surgical-staplers", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "blood-glucose-strips",
        "ivd",
        "device",
        ("BOS1", "CORK2"),
        (
            Part("PN-54103-A", "electrode test strip", "blood-glucose-strips", "SUP-0104"),
            Part("PN-54117-B", "glucose oxidase reagent", "blood-glucose-strips", "SUP-0104"),
            Part("PN-54126-A", "strip vial with desiccant", "blood-glucose-strips", "SUP-0210"),
        ),
        (
            Equipment("EQ-DISPENSER-02", "BOS1", "blood-glucose-strips", 90),
            Equipment("EQ-DISPENSER-05", "CORK2", "blood-glucose-strips", 90),
        ),
        (MonitoringPoint("BOS1-STRIP-RM2-P01", "BOS1", "blood-glucose-strips", None, _CONTROLLED),),
    ),
    ProductLine(
        "pcr-reagent-kits",
        "ivd",
        "device",
        ("BOS1",),
        (
            Part("PN-55210-A", "PCR master mix 1 mL", "pcr-reagent-kits", "SUP-0104"),
            Part("PN-55222-C", "primer and probe set", "pcr-reagent-kits", "SUP-0104"),
            Part("PN-55238-B", "reagent kit carton", "pcr-reagent-kits", "SUP-0210"),
        ),
        (
            Equipment("EQ-DISPENSER-03", "BOS1", "pcr-reagent-kits", 90),
            Equipment("EQ-BALANCE-14", "BOS1", "pcr-reagent-kits", 90),
        ),
        (MonitoringPoint("BOS1-PCR-RM7-P01", "BOS1", "pcr-reagent-kits", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "pregnancy-tests",
        "ivd",
        "device",
        ("CORK2",),
        (
            Part("PN-56105-B", "midstream test housing", "pregnancy-tests", "SUP-0017"),
            Part("PN-56113-A", "hCG lateral flow strip", "pregnancy-tests", "SUP-0104"),
            Part("PN-56128-A", "foil pouch", "pregnancy-tests", "SUP-0210"),
        ),
        (
            Equipment("EQ-SEALER-02", "CORK2", "pregnancy-tests", 180),
            Equipment("EQ-READER-09", "CORK2", "pregnancy-tests", 180),
        ),
        (MonitoringPoint("CORK2-KIT-RM2-P01", "CORK2", "pregnancy-tests", None, _CONTROLLED),),
    ),
    ProductLine(
        "insulin-pens",
        "sterile-fill",
        "drug",
        ("BOS1",),
        (
            Part("PN-57104-A", "3 mL glass cartridge", "insulin-pens", "SUP-0042"),
            Part("PN-57118-B", "cartridge plunger", "insulin-pens", "SUP-0055"),
            Part("PN-57125-C", "pen injector body", "insulin-pens", "SUP-0017"),
        ),
        (
            Equipment("EQ-FILLER-03", "BOS1", "insulin-pens", 180),
            Equipment("EQ-CCIT-01", "BOS1", "insulin-pens", 180),
        ),
        (
            MonitoringPoint("BOS1-PEN-RM8-P01", "BOS1", "insulin-pens", "A", _GRADE_A),
            MonitoringPoint("BOS1-PEN-RM8-P02", "BOS1", "insulin-pens", "B", _CLASSIFIED),
        ),
    ),
    ProductLine(
        "prefilled-syringes",
        "sterile-fill",
        "drug",
        ("BOS1", "CORK2"),
        (
            Part("PN-58106-A", "1 mL long glass syringe barrel", "prefilled-syringes", "SUP-0042"),
            Part("PN-58119-B", "syringe plunger stopper", "prefilled-syringes", "SUP-0055"),
            Part("PN-58127-A", "enoxaparin drug substance", "prefilled-syringes", "SUP-0259"),
        ),
        (
            Equipment("EQ-FILLER-04", "BOS1", "prefilled-syringes", 180),
            Equipment("EQ-FILLER-06", "CORK2", "prefilled-syringes", 180),
        ),
        (
            MonitoringPoint("BOS1-SYR-RM9-P01", "BOS1", "prefilled-syringes", "A", _GRADE_A),
            MonitoringPoint("CORK2-SYR-RM5-P01", "CORK2", "prefilled-syringes", "B", _CLASSIFIED),
        ),
    ),
    ProductLine(
        "lyophilised-vaccines",
        "sterile-fill",
        "biologic",
        ("BOS1",),
        (
            Part("PN-59102-A", "vial 3 mL type I glass", "lyophilised-vaccines", "SUP-0042"),
            Part("PN-59114-B", "lyophilisation stopper 13 mm", "lyophilised-vaccines", "SUP-0055"),
            Part("PN-59121-A", "antigen bulk", "lyophilised-vaccines", "SUP-0104"),
        ),
        (
            Equipment("EQ-LYO-05", "BOS1", "lyophilised-vaccines", 365),
            Equipment("EQ-FILLER-07", "BOS1", "lyophilised-vaccines", 180),
        ),
        (
            MonitoringPoint("BOS1-VAC-RM3-P01", "BOS1", "lyophilised-vaccines", "A", _GRADE_A),
            MonitoringPoint("BOS1-VAC-RM3-P02", "BOS1", "lyophilised-vaccines", "B", _CLASSIFIED),
        ),
    ),
    ProductLine(
        "ophthalmic-solutions",
        "sterile-fill",
        "drug",
        ("CORK2",),
        (
            Part("PN-60107-A", "LDPE dropper bottle 5 mL", "ophthalmic-solutions", "SUP-0017"),
            Part("PN-60115-B", "dropper tip and cap", "ophthalmic-solutions", "SUP-0017"),
            Part("PN-60124-A", "timolol maleate", "ophthalmic-solutions", "SUP-0259"),
        ),
        (
            Equipment("EQ-FILLER-08", "CORK2", "ophthalmic-solutions", 180),
            Equipment("EQ-AUTOCLAVE-05", "CORK2", "ophthalmic-solutions", 365),
        ),
        (
            MonitoringPoint("CORK2-OPH-RM2-P01", "CORK2", "ophthalmic-solutions", "A", _GRADE_A),
            MonitoringPoint("CORK2-OPH-RM2-P02", "CORK2", "ophthalmic-solutions", "B", _CLASSIFIED),
        ),
    ),
    ProductLine(
        "iv-administration-sets",
        "single-use",
        "device",
        ("CORK2",),
        (
            Part("PN-61103-A", "PVC tubing 3 mm", "iv-administration-sets", "SUP-0128"),
            Part("PN-61116-C", "drip chamber", "iv-administration-sets", "SUP-0017"),
            Part("PN-61129-B", "roller clamp", "iv-administration-sets", "SUP-0017"),
        ),
        (
            Equipment("EQ-LEAKTEST-05", "CORK2", "iv-administration-sets", 90),
            Equipment("EQ-ETO-01", "CORK2", "iv-administration-sets", 365),
        ),
        (
            MonitoringPoint(
                "CORK2-SETS-RM4-P01", "CORK2", "iv-administration-sets", "C", _CLASSIFIED
            ),
        ),
    ),
    ProductLine(
        "enteral-feeding-sets",
        "single-use",
        "device",
        ("CORK2",),
        (
            Part("PN-62108-B", "ENFit connector", "enteral-feeding-sets", "SUP-0017"),
            Part("PN-62112-A", "silicone feeding tube", "enteral-feeding-sets", "SUP-0128"),
            Part("PN-62130-A", "feed bag 1 L", "enteral-feeding-sets", "SUP-0210"),
        ),
        (
            Equipment("EQ-LEAKTEST-06", "CORK2", "enteral-feeding-sets", 90),
            Equipment("EQ-PULLTEST-04", "CORK2", "enteral-feeding-sets", 180),
        ),
        (MonitoringPoint("CORK2-SETS-RM4-P02", "CORK2", "enteral-feeding-sets", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "wound-dressings",
        "single-use",
        "device",
        ("CORK2",),
        (
            Part("PN-63105-A", "polyurethane foam pad", "wound-dressings", "SUP-0247"),
            Part("PN-63117-B", "silicone adhesive border", "wound-dressings", "SUP-0247"),
            Part("PN-63122-A", "peel pouch", "wound-dressings", "SUP-0210"),
        ),
        (
            Equipment("EQ-SEALER-03", "CORK2", "wound-dressings", 180),
            Equipment("EQ-PULLTEST-05", "CORK2", "wound-dressings", 180),
        ),
        (MonitoringPoint("CORK2-WND-RM6-P01", "CORK2", "wound-dressings", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "introducer-sheaths",
        "single-use",
        "device",
        ("CORK2",),
        (
            Part("PN-64109-C", "sheath tubing 6Fr", "introducer-sheaths", "SUP-0128"),
            Part("PN-64113-A", "haemostatic valve", "introducer-sheaths", "SUP-0055"),
            Part("PN-64126-B", "dilator", "introducer-sheaths", "SUP-0128"),
        ),
        (
            Equipment("EQ-LASERMIC-06", "CORK2", "introducer-sheaths", 180),
            Equipment("EQ-TENSILE-05", "CORK2", "introducer-sheaths", 180),
        ),
        (MonitoringPoint("CORK2-CATH-RM3-P05", "CORK2", "introducer-sheaths", "C", _CLASSIFIED),),
    ),
    ProductLine(
        "blood-bags",
        "single-use",
        "device",
        ("CORK2",),
        (
            Part("PN-65104-A", "PVC sheet for bag film", "blood-bags", "SUP-0128"),
            Part("PN-65118-B", "CPDA-1 anticoagulant", "blood-bags", "SUP-0259"),
            Part("PN-65123-A", "donor needle assembly", "blood-bags", "SUP-0091"),
        ),
        (
            Equipment("EQ-RFWELDER-02", "CORK2", "blood-bags", 180),
            Equipment("EQ-LEAKTEST-07", "CORK2", "blood-bags", 90),
        ),
        (MonitoringPoint("CORK2-BAG-RM7-P01", "CORK2", "blood-bags", "C", _CLASSIFIED),),
    ),
    ProductLine(
        "coronary-stents",
        "implant",
        "device",
        ("CORK2",),
        (
            Part("PN-66102-A", "cobalt-chromium stent tube", "coronary-stents", "SUP-0233"),
            Part("PN-66119-B", "everolimus coating solution", "coronary-stents", "SUP-0259"),
            Part("PN-66124-A", "delivery balloon catheter", "coronary-stents", "SUP-0128"),
        ),
        (
            Equipment("EQ-CRIMPER-01", "CORK2", "coronary-stents", 180),
            Equipment("EQ-LASERMIC-07", "CORK2", "coronary-stents", 180),
        ),
        (MonitoringPoint("CORK2-STENT-RM8-P01", "CORK2", "coronary-stents", "C", _CLASSIFIED),),
    ),
    ProductLine(
        "orthopaedic-screws",
        "implant",
        "device",
        ("CORK2",),
        (
            Part("PN-67106-A", "Ti-6Al-4V bar stock", "orthopaedic-screws", "SUP-0233"),
            Part("PN-67111-C", "cortical screw 4.5 mm", "orthopaedic-screws", "SUP-0233"),
            Part("PN-67128-B", "screw tray", "orthopaedic-screws", "SUP-0017"),
        ),
        (
            Equipment("EQ-LATHE-03", "CORK2", "orthopaedic-screws", 365),
            Equipment("EQ-CMM-01", "CORK2", "orthopaedic-screws", 365),
        ),
        (MonitoringPoint("CORK2-ORTHO-RM9-P01", "CORK2", "orthopaedic-screws", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "hip-implants",
        "implant",
        "device",
        ("CORK2",),
        (
            Part("PN-68103-B", "femoral stem forging", "hip-implants", "SUP-0233"),
            Part("PN-68115-A", "UHMWPE acetabular liner", "hip-implants", "SUP-0128"),
            Part("PN-68127-A", "ceramic femoral head", "hip-implants", "SUP-0233"),
        ),
        (
            Equipment("EQ-CMM-02", "CORK2", "hip-implants", 365),
            Equipment("EQ-PROFILOMETER-01", "CORK2", "hip-implants", 365),
        ),
        (MonitoringPoint("CORK2-ORTHO-RM9-P02", "CORK2", "hip-implants", "D", _CLASSIFIED),),
    ),
    ProductLine(
        "contact-lenses",
        "single-use",
        "device",
        ("CORK2",),
        (
            Part("PN-69108-A", "silicone hydrogel monomer mix", "contact-lenses", "SUP-0266"),
            Part("PN-69114-B", "lens mould pair", "contact-lenses", "SUP-0017"),
            Part("PN-69129-A", "blister foil lid", "contact-lenses", "SUP-0210"),
        ),
        (
            Equipment("EQ-LENSGAUGE-01", "CORK2", "contact-lenses", 90),
            Equipment("EQ-AUTOCLAVE-06", "CORK2", "contact-lenses", 365),
        ),
        (MonitoringPoint("CORK2-LENS-RM5-P01", "CORK2", "contact-lenses", "C", _CLASSIFIED),),
    ),
)


PLANT = Plant(
    sites={
        "BOS1": ("infusion-pumps", "sterile-injectables", "diagnostic-kits"),
        "CORK2": ("catheters", "sterile-injectables", "diagnostic-kits"),
    },
    parts=(
        Part("PN-10472-B", "pump housing, upper", "infusion-pumps", "SUP-0017"),
        Part("PN-10488-A", "occlusion pressure sensor", "infusion-pumps", "SUP-0063"),
        Part("PN-10515-C", "peristaltic drive assembly", "infusion-pumps", "SUP-0063"),
        Part("PN-10530-A", "keypad membrane", "infusion-pumps", "SUP-0017"),
        Part("PN-20311-D", "catheter shaft 5Fr", "catheters", "SUP-0128"),
        Part("PN-20318-A", "balloon 3.0 x 20 mm", "catheters", "SUP-0128"),
        Part("PN-20342-B", "luer hub", "catheters", "SUP-0017"),
        Part("PN-20355-A", "guidewire 0.035 in", "catheters", "SUP-0091"),
        Part("PN-30105-A", "vial 10 mL type I glass", "sterile-injectables", "SUP-0042"),
        Part("PN-30112-C", "bromobutyl stopper 20 mm", "sterile-injectables", "SUP-0055"),
        Part("PN-30120-B", "aluminium flip-off seal", "sterile-injectables", "SUP-0055"),
        Part("PN-30144-A", "filled vial 50 mg/mL", "sterile-injectables", "SUP-0042"),
        Part("PN-40207-A", "test cassette", "diagnostic-kits", "SUP-0017"),
        Part("PN-40219-B", "buffer diluent 5 mL", "diagnostic-kits", "SUP-0104"),
        Part("PN-40226-A", "lateral flow strip", "diagnostic-kits", "SUP-0104"),
        Part("PN-40233-C", "kit carton", "diagnostic-kits", "SUP-0210"),
    ),
    suppliers=(
        Supplier("SUP-0017", "Corrib Precision Moulding"),
        Supplier("SUP-0042", "Northfield Glassworks"),
        Supplier("SUP-0055", "Meridian Elastomers"),
        Supplier("SUP-0063", "Halden Electronics"),
        Supplier("SUP-0091", "Keel Wire Products"),
        Supplier("SUP-0104", "Brightwater Biologics"),
        Supplier("SUP-0128", "Lakeshore Polymer Extrusion"),
        Supplier("SUP-0210", "Harbour Print & Pack"),
    ),
    employees=(
        Employee("E1001", "Maria Okafor", "BOS1"),
        Employee("E1002", "Daniel Whitcombe", "BOS1"),
        Employee("E1003", "Priya Raman", "BOS1"),
        Employee("E1004", "James Castellano", "BOS1"),
        Employee("E1005", "Hannah Kowalski", "BOS1"),
        Employee("E2001", "Siobhan Byrne", "CORK2"),
        Employee("E2002", "Ciaran Walsh", "CORK2"),
        Employee("E2003", "Aoife Nolan", "CORK2"),
        Employee("E2004", "Tomasz Zielinski", "CORK2"),
        Employee("E2005", "Grace Murphy", "CORK2"),
    ),
    equipment=(
        Equipment("EQ-AUTOCLAVE-03", "BOS1", "sterile-injectables", 365),
        Equipment("EQ-FILLER-01", "BOS1", "sterile-injectables", 180),
        Equipment("EQ-HPLC-04", "BOS1", "sterile-injectables", 180),
        Equipment("EQ-FLOWTEST-02", "BOS1", "infusion-pumps", 180),
        Equipment("EQ-TORQUE-07", "BOS1", "infusion-pumps", 90),
        Equipment("EQ-BALANCE-11", "BOS1", "diagnostic-kits", 90),
        Equipment("EQ-AUTOCLAVE-01", "CORK2", "sterile-injectables", 365),
        Equipment("EQ-LYO-02", "CORK2", "sterile-injectables", 365),
        Equipment("EQ-PH-METER-07", "CORK2", "sterile-injectables", 90),
        Equipment("EQ-EXTRUDER-05", "CORK2", "catheters", 180),
        Equipment("EQ-TENSILE-02", "CORK2", "catheters", 180),
        Equipment("EQ-LASERMIC-03", "CORK2", "catheters", 180),
        Equipment("EQ-READER-06", "CORK2", "diagnostic-kits", 180),
    ),
    points=(
        MonitoringPoint(
            "BOS1-FILL-RM2-P01",
            "BOS1",
            "sterile-injectables",
            "A",
            ("particles_0_5um", "viable_count"),
        ),
        MonitoringPoint(
            "BOS1-FILL-RM2-P02",
            "BOS1",
            "sterile-injectables",
            "A",
            ("particles_0_5um", "viable_count"),
        ),
        MonitoringPoint(
            "BOS1-FILL-RM2-P03",
            "BOS1",
            "sterile-injectables",
            "B",
            ("particles_0_5um", "differential_pressure", "temperature", "relative_humidity"),
        ),
        MonitoringPoint(
            "BOS1-ASSY-RM1-P01",
            "BOS1",
            "infusion-pumps",
            "D",
            ("temperature", "relative_humidity", "particles_0_5um"),
        ),
        MonitoringPoint(
            "BOS1-KIT-RM4-P02",
            "BOS1",
            "diagnostic-kits",
            None,
            ("temperature", "relative_humidity"),
        ),
        MonitoringPoint(
            "CORK2-FILL-RM1-P01",
            "CORK2",
            "sterile-injectables",
            "A",
            ("particles_0_5um", "viable_count"),
        ),
        MonitoringPoint(
            "CORK2-FILL-RM1-P04",
            "CORK2",
            "sterile-injectables",
            "B",
            ("particles_0_5um", "differential_pressure", "temperature"),
        ),
        MonitoringPoint(
            "CORK2-CATH-RM3-P02",
            "CORK2",
            "catheters",
            "C",
            ("particles_0_5um", "differential_pressure", "temperature", "relative_humidity"),
        ),
        MonitoringPoint(
            "CORK2-KIT-RM1-P01",
            "CORK2",
            "diagnostic-kits",
            "D",
            ("temperature", "relative_humidity"),
        ),
    ),
    background_lines=_BACKGROUND_LINES,
    background_suppliers=_BACKGROUND_SUPPLIERS,
)


# --------------------------------------------------------------------------- vocabularies


@dataclass(frozen=True)
class _Limits:
    """Nominal value, spread and limits of a measured quantity."""

    unit: str
    nominal: float
    spread: float
    places: int
    low: float | None
    high: float | None


# EU GMP Annex 1 in-operation limits: particles >=0.5 um per m3 and viable cfu/m3 by grade;
# alert limits are set at 70-80 % of action as sites commonly do.
_PARTICLE_ACTION = {"A": 3520.0, "B": 352000.0, "C": 3520000.0, "D": None}
_VIABLE_ACTION = {"A": 1.0, "B": 10.0, "C": 100.0, "D": 200.0}

_ENV_UNITS = {
    "temperature": "degC",
    "relative_humidity": "%RH",
    "differential_pressure": "Pa",
    "particles_0_5um": "particles/m3",
    "viable_count": "cfu/m3",
}

# (characteristic, limits, attribute?) per product line, as MES inspection plans carry them.
_INSPECTION_PLANS: dict[str, tuple[tuple[str, _Limits], ...]] = {
    "infusion-pumps": (
        ("housing wall thickness", _Limits("mm", 2.50, 0.03, 3, 2.40, 2.60)),
        ("flow rate accuracy", _Limits("%", 0.0, 1.6, 2, -5.0, 5.0)),
        ("occlusion alarm pressure", _Limits("kPa", 75.0, 4.0, 1, 60.0, 90.0)),
        ("cosmetic inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "catheters": (
        ("outer diameter", _Limits("mm", 1.675, 0.008, 3, 1.650, 1.700)),
        ("tip tensile strength", _Limits("N", 22.0, 2.5, 2, 15.0, None)),
        ("balloon burst pressure", _Limits("atm", 24.0, 1.5, 1, 18.0, None)),
        ("visual inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "sterile-injectables": (
        ("fill volume", _Limits("mL", 10.15, 0.05, 3, 10.00, 10.30)),
        ("stopper height", _Limits("mm", 20.0, 0.08, 2, 19.75, 20.25)),
        ("visual inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "diagnostic-kits": (
        ("strip width", _Limits("mm", 4.00, 0.015, 3, 3.95, 4.05)),
        ("pouch seal strength", _Limits("N/15mm", 9.0, 0.9, 2, 6.0, None)),
        ("label verification", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
}

# (test_code, analyte, limits, method, text result or None) per product line, from LIMS specs.
_LAB_TESTS: dict[str, tuple[tuple[str, str, _Limits, str], ...]] = {
    "infusion-pumps": (
        (
            "ELEC-LEAK",
            "patient leakage current",
            _Limits("uA", 38.0, 9.0, 1, None, 100.0),
            "IEC 60601-1 8.7",
        ),
        ("BIOB-01", "bioburden", _Limits("cfu/device", 12.0, 6.0, 0, None, 100.0), "ISO 11737-1"),
    ),
    "catheters": (
        ("BIOB-01", "bioburden", _Limits("cfu/device", 18.0, 8.0, 0, None, 100.0), "ISO 11737-1"),
        (
            "EO-RES",
            "ethylene oxide residual",
            _Limits("mg/device", 0.9, 0.35, 2, None, 4.0),
            "ISO 10993-7",
        ),
        ("APPEAR", "appearance", _Limits("", 0.0, 0.0, 0, None, None), "SOP-QC-0112"),
    ),
    "sterile-injectables": (
        ("ASSAY-HPLC", "assay", _Limits("%LC", 100.2, 1.1, 1, 95.0, 105.0), "USP <621>"),
        (
            "ENDO-LAL",
            "bacterial endotoxins",
            _Limits("EU/mL", 0.12, 0.08, 3, None, 0.5),
            "USP <85>",
        ),
        ("PH", "pH", _Limits("pH", 6.8, 0.12, 2, 6.5, 7.2), "USP <791>"),
        ("STER", "sterility", _Limits("", 0.0, 0.0, 0, None, None), "USP <71>"),
    ),
    "diagnostic-kits": (
        ("SENS-PANEL", "clinical sensitivity", _Limits("%", 97.8, 0.9, 1, 95.0, None), "TM-DX-031"),
        ("MOIST", "moisture content", _Limits("%", 2.1, 0.5, 2, None, 4.0), "USP <921>"),
        ("PH", "pH", _Limits("pH", 7.4, 0.08, 2, 7.2, 7.6), "USP <791>"),
    ),
}

_INSTRUMENTS = {
    "ASSAY-HPLC": "EQ-HPLC-04",
    "PH": "EQ-PH-METER-07",
    "MOIST": "EQ-BALANCE-11",
    "SENS-PANEL": "EQ-READER-06",
}

# The background lines' MES inspection plans and LIMS tests, by family: lines of one kind are
# inspected and tested alike (units from the data dictionary's list, so none is a dead letter).
_FAMILY_INSPECTIONS: dict[str, tuple[tuple[str, _Limits], ...]] = {
    "electromechanical": (
        ("enclosure wall thickness", _Limits("mm", 2.20, 0.03, 3, 2.10, 2.30)),
        ("battery run time", _Limits("h", 9.2, 0.4, 1, 8.0, None)),
        ("alarm function test", _Limits("", 0.0, 0.0, 0, None, None)),
        ("cosmetic inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "single-use": (
        ("outer diameter", _Limits("mm", 4.100, 0.010, 3, 4.070, 4.130)),
        ("bond strength", _Limits("N", 32.0, 2.8, 1, 22.0, None)),
        ("leak test", _Limits("", 0.0, 0.0, 0, None, None)),
        ("visual inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "implant": (
        ("thread major diameter", _Limits("mm", 4.500, 0.008, 3, 4.475, 4.525)),
        ("surface roughness", _Limits("um", 0.40, 0.05, 2, None, 0.60)),
        ("visual inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "ivd": (
        ("strip width", _Limits("mm", 5.00, 0.015, 3, 4.95, 5.05)),
        ("pouch seal strength", _Limits("N/15mm", 8.5, 0.9, 2, 6.0, None)),
        ("label verification", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
    "sterile-fill": (
        ("fill volume", _Limits("mL", 1.06, 0.01, 2, 1.02, 1.10)),
        ("plunger break-loose force", _Limits("N", 5.5, 0.6, 1, None, 10.0)),
        ("container closure integrity", _Limits("", 0.0, 0.0, 0, None, None)),
        ("visual inspection", _Limits("", 0.0, 0.0, 0, None, None)),
    ),
}

_FAMILY_LAB_TESTS: dict[str, tuple[tuple[str, str, _Limits, str], ...]] = {
    "electromechanical": (
        (
            "ELEC-LEAK",
            "patient leakage current",
            _Limits("uA", 35.0, 8.0, 1, None, 100.0),
            "IEC 60601-1 8.7",
        ),
        ("BATT-CAP", "battery capacity", _Limits("%", 99.0, 1.2, 1, 90.0, None), "IEC 62133-2"),
    ),
    "single-use": (
        ("BIOB-01", "bioburden", _Limits("cfu/device", 15.0, 7.0, 0, None, 100.0), "ISO 11737-1"),
        (
            "EO-RES",
            "ethylene oxide residual",
            _Limits("mg/device", 0.8, 0.3, 2, None, 4.0),
            "ISO 10993-7",
        ),
        ("APPEAR", "appearance", _Limits("", 0.0, 0.0, 0, None, None), "SOP-QC-0112"),
    ),
    "implant": (
        ("BIOB-01", "bioburden", _Limits("cfu/device", 8.0, 4.0, 0, None, 100.0), "ISO 11737-1"),
        # device rinse extract: 20 EU/device in 40 mL is USP <161>'s limit
        (
            "ENDO-LAL",
            "bacterial endotoxins",
            _Limits("EU/mL", 0.06, 0.04, 3, None, 0.5),
            "USP <85>",
        ),
        ("STER", "sterility", _Limits("", 0.0, 0.0, 0, None, None), "ISO 11737-2"),
    ),
    "ivd": (
        ("SENS-PANEL", "clinical sensitivity", _Limits("%", 98.1, 0.8, 1, 95.0, None), "TM-DX-031"),
        ("MOIST", "moisture content", _Limits("%", 1.8, 0.4, 2, None, 4.0), "USP <921>"),
    ),
    "sterile-fill": (
        ("ASSAY-HPLC", "assay", _Limits("%LC", 100.1, 1.0, 1, 95.0, 105.0), "USP <621>"),
        (
            "ENDO-LAL",
            "bacterial endotoxins",
            _Limits("EU/mL", 0.10, 0.07, 3, None, 0.5),
            "USP <85>",
        ),
        ("PH", "pH", _Limits("pH", 6.9, 0.12, 2, 6.5, 7.4), "USP <791>"),
        ("STER", "sterility", _Limits("", 0.0, 0.0, 0, None, None), "USP <71>"),
    ),
}

# FDA numbers recalls Z-nnnn-yyyy for devices, D- for drugs and B- for biologics.
_RECALL_LETTERS: dict[RegulatedAs, str] = {"device": "Z", "drug": "D", "biologic": "B"}

# The QMS raises NCs from several feeds and keeps each feed's word for the defect.
_NC_DEFECTS: dict[str, tuple[tuple[str, str], ...]] = {
    "internal": (
        ("defect", "Cosmetic defect found at final inspection"),
        ("yield loss", "Yield below 92 % target on line"),
        ("crack", "Hairline crack observed on component"),
        ("dimensional", "Dimension outside drawing tolerance"),
        ("OOS", "Out-of-specification laboratory result"),
        ("labeling error", "Label text does not match approved artwork"),
    ),
    "supplier": (
        ("defect", "Incoming material defect found at receiving inspection"),
        ("crack", "Cracked components in incoming shipment"),
        ("contamination", "Particulate contamination in incoming material"),
        ("documentation", "Certificate of analysis missing or incomplete"),
    ),
    "customer": (
        ("defect", "Customer reported product defect"),
        ("leak", "Customer reported leak during use"),
        ("labeling error", "Customer reported illegible lot number"),
    ),
    "audit": (
        ("procedure not followed", "Work instruction step skipped during batch record review"),
        ("documentation", "Batch record entry not contemporaneous"),
    ),
}

_DISPOSITIONS = (
    "use_as_is",
    "rework",
    "repair",
    "scrap",
    "return_to_vendor",
    "concession",
)

_ROOT_CAUSES = (
    "Operator training gap on revised work instruction",
    "Worn tooling insert on moulding press",
    "Supplier process change not notified",
    "Ambiguous acceptance criteria in inspection plan",
    "HVAC damper actuator failure",
    "Incorrect label template released in labelling system",
)

_AUDIT_REQUIREMENTS = (
    "21 CFR 820.100",
    "21 CFR 820.70(a)",
    "21 CFR 820.50",
    "21 CFR 211.192",
    "21 CFR 211.68",
    "21 CFR 11.10(e)",
    "ISO 13485:2016 8.5.2",
    "ISO 13485:2016 7.4.1",
    "EU GMP Annex 1 9.27",
    "EU GMP Annex 11 9",
)

_AUDIT_OBSERVATIONS = (
    "Training records for two operators not updated after SOP revision",
    "Supplier evaluation overdue for approved supplier",
    "Audit trail review not documented for the last quarter",
    "Environmental monitoring excursion not trended",
    "CAPA effectiveness check criteria not defined",
    "Calibration label missing on in-use instrument",
)

_DEVIATION_TITLES = (
    "Autoclave cycle aborted on low steam pressure",
    "Hold time exceeded for bulk solution",
    "Batch record step performed out of sequence",
    "Differential pressure alarm during filling",
    "Incorrect revision of work instruction used",
    "Temperature excursion in raw material store",
)

_RECALL_REASONS = (
    "Particulate matter found in vials",
    "Occlusion alarm may fail to trigger at high back-pressure",
    "Sterile barrier seal may be incomplete",
    "False negative results at low antigen concentration",
    "Catheter tip may separate during use",
)


@dataclass(frozen=True)
class _Lifecycle:
    """The source's own state names in order, its cancelled state, and which are signed."""

    states: tuple[str, ...]
    cancelled: str
    signed: dict[str, str] = field(default_factory=dict)


# The source's own state names (vendors let customers name them, so casing differs by system).
_LIFECYCLES: dict[str, _Lifecycle] = {
    "qms.nonconformance.v1": _Lifecycle(
        ("Draft", "Analysis", "Action Plan", "In Progress", "Closed"),
        "Cancelled",
        {"Action Plan": "review", "Closed": "approval"},
    ),
    "qms.capa.v1": _Lifecycle(
        ("Define Team", "Initiated", "In Implementation", "QA Implementation Approval", "Closed"),
        "Cancelled",
        {"QA Implementation Approval": "approval", "Closed": "approval"},
    ),
    "qms.deviation.v1": _Lifecycle(
        ("Draft", "Investigation", "QA Review", "Closed"),
        "Cancelled",
        {"QA Review": "review", "Closed": "approval"},
    ),
    "qms.audit-finding.v1": _Lifecycle(
        ("Open", "Response Due", "Responded", "Closed"),
        "Withdrawn",
        {"Responded": "review", "Closed": "approval"},
    ),
    "supplier.corrective-action.v1": _Lifecycle(
        ("issued", "acknowledged", "response submitted", "verified", "closed"),
        "cancelled",
        {"verified": "review", "closed": "approval"},
    ),
}

_NUMBER_PREFIXES: dict[str, tuple[str, int]] = {
    # prefix and the first number: the demo joins a plant that has been running for years
    "qms.nonconformance.v1": ("NCR", 1040),
    "qms.capa.v1": ("CAPA", 77),
    "qms.deviation.v1": ("DEV", 512),
    "qms.audit-finding.v1": ("AF", 230),
    "supplier.corrective-action.v1": ("SCAR", 61),
    "qms.recall.v1": ("RCL", 3),
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DemoRecord:
    """One ingest record: its logical topic, its key (the product line) and its Avro datum.

    `record` is a plain dict, so instances compare by value but are not hashable.
    """

    topic: str
    key: str
    record: dict[str, Any]


@dataclass
class _OpenRecord:
    """A QMS record raised earlier and not yet closed, with what its next event repeats."""

    topic: str
    number: str
    state: int
    common: dict[str, Any]
    payload: dict[str, Any]


def _decimal(value: float, places: int) -> Decimal:
    """Convert a float to a Decimal with `places` places (at most the schema's scale, 6)."""
    places = min(places, _MAX_SCALE)
    return Decimal(repr(round(value, places))).quantize(Decimal(1).scaleb(-places))


def backdated_start(
    count: int, now: datetime, mean_gap_seconds: float = _MEAN_GAP_SECONDS
) -> datetime:
    """A start from which `count` records end before `now`, the latest an event may be recorded.

    Records are spaced by exponential gaps: their sum lies within a few standard deviations
    (gap x sqrt(count)) of count x gap; an hour more keeps a short run's times in the past too.
    Without it a long run's simulated time would pass the wall clock, and the worker refuses
    events recorded beyond `QMSFLOW_MAX_CLOCK_SKEW` ahead of it.
    """
    spread = mean_gap_seconds * (count + 8 * count**0.5)
    return now - timedelta(seconds=spread) - timedelta(hours=1)


class DemoTraffic:
    """An endless, deterministic stream of realistic ingest records.

    The same `seed` and `start` give the same records in the same order. Simulated time starts
    at `start` (an aware datetime, converted to UTC) and advances with every record; each
    record's `occurred_at` is at or before its `recorded_at`. Event ids are unique.
    `mean_gap_seconds` is the mean simulated time between records; a live demo sets it to
    1 / its send rate so that `recorded_at` follows the wall clock (and SLAs measure sense).
    """

    def __init__(
        self,
        seed: int,
        start: datetime,
        plant: Plant = PLANT,
        mean_gap_seconds: float = _MEAN_GAP_SECONDS,
    ) -> None:
        if mean_gap_seconds <= 0:
            raise ValueError(f"mean_gap_seconds must be positive, got {mean_gap_seconds}")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"start must be timezone-aware (UTC expected), got naive {start}")
        self._rng = random.Random(seed)
        self._plant = plant
        self._now = start.astimezone(UTC)
        self._mean_gap = mean_gap_seconds
        self._deck: list[str] = []
        self._counters = {topic: first for topic, (_, first) in _NUMBER_PREFIXES.items()}
        self._sequence = 0
        self._open: dict[str, list[_OpenRecord]] = {topic: [] for topic in _LIFECYCLES}
        self._recent_ncrs: deque[tuple[str, str, str]] = deque(maxlen=20)
        self._lots: dict[tuple[str, str], list[str]] = {}
        self._lot_sequence = self._rng.randint(10, 400)

    def records(self, n: int) -> Iterator[DemoRecord]:
        """Yield the next `n` records."""
        for _ in range(n):
            yield self.next_record()

    def next_record(self) -> DemoRecord:
        """Return the next record, advancing simulated time."""
        if not self._deck:
            self._deck = [t for t, count in _VOLUME_PER_DECK.items() for _ in range(count)]
            self._rng.shuffle(self._deck)
        topic = self._deck.pop()
        self._now += timedelta(
            microseconds=int(self._rng.expovariate(1 / self._mean_gap) * 1_000_000)
        )
        self._sequence += 1
        if topic in _LIFECYCLES:
            return self._quality_record(topic)
        builders = {
            "mes.inspection-result.v1": self._inspection_result,
            "lims.lab-result.v1": self._lab_result,
            "ems.environmental-reading.v1": self._environmental_reading,
            "cmms.calibration-event.v1": self._calibration_event,
            "qms.recall.v1": self._recall,
        }
        return builders[topic]()

    # ------------------------------------------------------------------ envelope

    def _times(self, source: str) -> tuple[datetime, datetime]:
        low, high = _RECORDING_LAG_SECONDS[source]
        lag = timedelta(microseconds=int(self._rng.uniform(low, high) * 1_000_000))
        return self._now - lag, self._now

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _envelope(
        self,
        topic: str,
        source_record_id: str,
        common: dict[str, Any],
        status: str,
        payload: dict[str, Any],
        *,
        signature: dict[str, Any] | None = None,
        audit: dict[str, Any] | None = None,
        times: tuple[datetime, datetime] | None = None,
    ) -> DemoRecord:
        occurred_at, recorded_at = times or self._times(TOPIC_SOURCE_SYSTEMS[topic])
        if signature is not None:
            signature = {**signature, "signed_at": occurred_at}
        record: dict[str, Any] = {
            "event_id": self._event_id(),
            "event_type": TOPIC_EVENT_TYPES[topic],
            "source_system": TOPIC_SOURCE_SYSTEMS[topic],
            "source_record_id": source_record_id,
            "occurred_at": occurred_at,
            "recorded_at": recorded_at,
            "product_line": common["product_line"],
            "site": common["site"],
            "lot_id": common.get("lot_id"),
            "part_number": common.get("part_number"),
            "supplier_id": common.get("supplier_id"),
            "equipment_id": common.get("equipment_id"),
            "severity": common.get("severity"),
            "status": status,
            "signature": signature,
            "audit": audit,
            "correlation_id": common.get("correlation_id"),
            "synthetic": False,
            "payload": payload,
        }
        return DemoRecord(topic=topic, key=common["product_line"], record=record)

    # ------------------------------------------------------------------ plant lookups

    def _line_and_site(self) -> tuple[str, str]:
        line = self._rng.choice(self._plant.product_lines)
        return line, self._rng.choice(self._plant.sites_of(line))

    def _part(self, line: str) -> Part:
        return self._rng.choice([p for p in self._plant.every_part if p.product_line == line])

    def _lot(self, line: str, site: str) -> str:
        """Pick a lot of the line at the site: mostly a recent one, sometimes a new one."""
        lots = self._lots.setdefault((line, site), [])
        if not lots or self._rng.random() < 0.05:
            self._lot_sequence += 1
            lots.append(f"L{self._now:%y%m}-{self._lot_sequence:04d}")
            del lots[:-12]
        return self._rng.choice(lots[-6:])

    def _inspection_plan(self, line: str) -> tuple[tuple[str, _Limits], ...]:
        background = self._plant.background_line(line)
        return (
            _INSPECTION_PLANS[line]
            if background is None
            else _FAMILY_INSPECTIONS[background.family]
        )

    def _lab_tests(self, line: str) -> tuple[tuple[str, str, _Limits, str], ...]:
        background = self._plant.background_line(line)
        return _LAB_TESTS[line] if background is None else _FAMILY_LAB_TESTS[background.family]

    def _serialised(self, line: str) -> bool:
        """Whether units carry serial numbers: electromechanical devices do."""
        background = self._plant.background_line(line)
        if background is None:
            return line == "infusion-pumps"
        return background.family == "electromechanical"

    def _recall_letter(self, line: str) -> str:
        background = self._plant.background_line(line)
        if background is None:
            return "D" if line == "sterile-injectables" else "Z"
        return _RECALL_LETTERS[background.regulated_as]

    def _employee(self, site: str) -> Employee:
        return self._rng.choice([e for e in self._plant.employees if e.site == site])

    def _equipment(self, line: str, site: str) -> Equipment:
        equipment = self._plant.every_equipment
        matches = [e for e in equipment if e.site == site and e.product_line == line]
        return self._rng.choice(matches or [e for e in equipment if e.site == site])

    def _number(self, topic: str) -> str:
        prefix, _ = _NUMBER_PREFIXES[topic]
        self._counters[topic] += 1
        return f"{prefix}-{self._counters[topic]}"

    def _signature(self, site: str, meaning: str) -> dict[str, Any]:
        signer = self._employee(site)
        return {
            "signer_id": signer.employee_id,
            "printed_name": signer.printed_name,
            "signed_at": self._now,
            "meaning": meaning,
        }

    def _audit(
        self, site: str, reason: str, changes: list[tuple[str, str | None, str | None]]
    ) -> dict[str, Any]:
        return {
            "changed_by": self._employee(site).employee_id,
            "reason": reason,
            "changes": [
                {"field": name, "old_value": old, "new_value": new} for name, old, new in changes
            ],
        }

    def _due(self, days: int) -> date:
        return (self._now + timedelta(days=days)).date()

    # ------------------------------------------------------------------ QMS lifecycles

    def _quality_record(self, topic: str) -> DemoRecord:
        open_records = self._open[topic]
        if open_records and self._rng.random() < _UPDATE_PROBABILITY:
            return self._advance(topic, self._rng.choice(open_records))
        line, site = self._line_and_site()
        number = self._number(topic)
        builders = {
            "qms.nonconformance.v1": self._new_nonconformance,
            "qms.capa.v1": self._new_capa,
            "qms.deviation.v1": self._new_deviation,
            "qms.audit-finding.v1": self._new_audit_finding,
            "supplier.corrective-action.v1": self._new_scar,
        }
        common, payload = builders[topic](line, site, number)
        opened = _OpenRecord(topic, number, 0, common, payload)
        open_records.append(opened)
        del open_records[:-_MAX_OPEN]
        state = _LIFECYCLES[topic].states[0]
        audit = None
        if self._rng.random() < 0.3:
            audit = self._audit(site, "Record created", [("status", None, state)])
        return self._envelope(topic, number, common, state, copy.deepcopy(payload), audit=audit)

    def _advance(self, topic: str, opened: _OpenRecord) -> DemoRecord:
        lifecycle = _LIFECYCLES[topic]
        old_state = lifecycle.states[opened.state]
        site = opened.common["site"]
        if self._rng.random() < _CANCEL_PROBABILITY:
            new_state = lifecycle.cancelled
            reason = self._rng.choice(("Raised in error", "Duplicate of an existing record"))
            changes: list[tuple[str, str | None, str | None]] = [("status", old_state, new_state)]
            meaning: str | None = "approval"
            finished = True
        else:
            opened.state += 1
            if (
                topic == "qms.deviation.v1"
                and opened.payload["classification"] == "minor"
                and lifecycle.states[opened.state] == "Investigation"
            ):
                opened.state += 1  # minor deviations close on QA approval, no investigation
            new_state = lifecycle.states[opened.state]
            reason = f"Moved to {new_state}"
            changes = [("status", old_state, new_state)]
            changed = self._lifecycle_payload_change(topic, opened, new_state)
            if changed is not None:
                changes.append(changed)
            meaning = lifecycle.signed.get(new_state)
            if meaning is None and self._rng.random() < 0.1:
                meaning = "review"
            finished = opened.state == len(lifecycle.states) - 1
        audit = self._audit(site, reason, changes)
        signature = self._signature(site, meaning) if meaning else None
        if finished:
            self._open[topic].remove(opened)
        return self._envelope(
            topic,
            opened.number,
            opened.common,
            new_state,
            copy.deepcopy(opened.payload),
            signature=signature,
            audit=audit,
        )

    def _lifecycle_payload_change(
        self, topic: str, opened: _OpenRecord, new_state: str
    ) -> tuple[str, str | None, str | None] | None:
        """Fill in what a record learns on its way to closure; the change for its audit trail."""
        payload = opened.payload
        if topic == "qms.nonconformance.v1" and new_state == "Action Plan":
            disposition = self._rng.choice(_DISPOSITIONS)
            payload["disposition"] = disposition
            return ("disposition", None, disposition)
        if topic == "qms.capa.v1" and new_state == "In Implementation":
            root_cause = self._rng.choice(_ROOT_CAUSES)
            payload["root_cause"] = root_cause
            return ("root_cause", None, root_cause)
        if topic == "qms.capa.v1" and new_state == "Closed":
            outcome = self._rng.choices(
                ("effective", "ineffective", "inconclusive"), weights=(8, 1, 1)
            )[0]
            payload["effectiveness"] = outcome
            return ("effectiveness", None, outcome)
        return None

    def _new_nonconformance(
        self, line: str, site: str, number: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        nc_source = self._rng.choices(
            ("internal", "supplier", "customer", "audit"), weights=(60, 25, 10, 5)
        )[0]
        defect_code, title = self._rng.choice(_NC_DEFECTS[nc_source])
        part = self._part(line)
        lot = self._lot(line, site)
        quantity = self._rng.choice((1, 2, 5, 12, 40, 150, 1200))
        serials = (
            [f"SN{self._rng.randint(100000, 999999)}" for _ in range(self._rng.randint(1, 3))]
            if self._serialised(line) and self._rng.random() < 0.5
            else []
        )
        severity = self._rng.choices(("minor", "major", "critical"), weights=(65, 30, 5))[0]
        self._recent_ncrs.append((number, line, site))
        common = {
            "product_line": line,
            "site": site,
            "lot_id": lot,
            "part_number": part.number,
            "supplier_id": part.supplier_id if nc_source == "supplier" else None,
            "severity": severity,
        }
        payload = {
            "title": f"{title}: {part.description}",
            "description": (
                f"{title} on {part.number} rev {part.revision}, lot {lot}, {site}. "
                f"{quantity} units segregated pending MRB."
            ),
            "nc_source": nc_source,
            "defect_code": defect_code,
            "quantity": _decimal(quantity, 0) if not serials else _decimal(len(serials), 0),
            "unit": "EA",
            "part_revision": part.revision,
            "serial_numbers": serials,
            "affected_lots": [lot],
            "disposition": None,
            "risk_priority_number": (
                self._rng.randint(2, 10) * self._rng.randint(1, 10) * self._rng.randint(1, 10)
                if self._rng.random() < 0.6
                else None
            ),
        }
        return common, payload

    def _new_capa(self, line: str, site: str, number: str) -> tuple[dict[str, Any], dict[str, Any]]:
        linked = [n for n, l_, s in self._recent_ncrs if l_ == line and s == site][-2:]
        owner = self._employee(site)
        common = {
            "product_line": line,
            "site": site,
            "severity": self._rng.choices(("minor", "major", "critical"), weights=(50, 40, 10))[0],
            "correlation_id": linked[0] if linked else None,
        }
        payload = {
            "title": (
                f"Corrective action for {', '.join(linked)}"
                if linked
                else f"Preventive action: {self._rng.choice(_ROOT_CAUSES).lower()}"
            ),
            "capa_type": "corrective" if linked else "preventive",
            "root_cause": None,
            "owner_id": owner.employee_id,
            "due_date": self._due(self._rng.choice((60, 90, 120))),
            "linked_records": linked,
            "effectiveness": None,
        }
        return common, payload

    def _new_deviation(
        self, line: str, site: str, number: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        classification = self._rng.choices(("minor", "major", "critical"), weights=(60, 33, 7))[0]
        scope = self._rng.choices(("internal", "external"), weights=(85, 15))[0]
        title = self._rng.choice(_DEVIATION_TITLES)
        equipment = self._equipment(line, site)
        lot = self._lot(line, site)
        common = {
            "product_line": line,
            "site": site,
            "lot_id": lot,
            "equipment_id": equipment.equipment_id,
            "severity": classification,
        }
        payload = {
            "title": title,
            "description": f"{title} ({equipment.equipment_id}, lot {lot}).",
            "classification": classification,
            "deviation_scope": scope,
            "planned": self._rng.random() < 0.1,
            # one vendor's default: internal deviations due in 30 days, external in 45
            "due_date": self._due(30 if scope == "internal" else 45),
        }
        return common, payload

    def _new_audit_finding(
        self, line: str, site: str, number: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        classification = self._rng.choices(
            ("observation", "minor", "major", "critical"), weights=(45, 35, 17, 3)
        )[0]
        kind = self._rng.choice(("IA", "SA", "EA"))  # internal, supplier, external audit
        year = self._now.year
        payload = {
            "audit_id": f"AUD-{kind}-{year}-{self._rng.randint(1, 24):02d}",
            "classification": classification,
            "requirement_ref": self._rng.choice(_AUDIT_REQUIREMENTS),
            "description": self._rng.choice(_AUDIT_OBSERVATIONS),
            "response_due_date": self._due(30 if classification != "critical" else 15),
            "capa_required": classification in ("major", "critical"),
        }
        common = {"product_line": line, "site": site, "severity": classification}
        return common, payload

    def _new_scar(self, line: str, site: str, number: str) -> tuple[dict[str, Any], dict[str, Any]]:
        part = self._part(line)
        related = [n for n, l_, s in self._recent_ncrs if l_ == line and s == site]
        related_ncr = related[-1] if related else None
        supplier = next(s for s in self._plant.every_supplier if s.supplier_id == part.supplier_id)
        common = {
            "product_line": line,
            "site": site,
            "part_number": part.number,
            "supplier_id": supplier.supplier_id,
            "lot_id": self._lot(line, site),
            # the supplier portal rates on its own scale
            "severity": self._rng.choices(("low", "medium", "high"), weights=(40, 45, 15))[0],
            "correlation_id": related_ncr,
        }
        payload = {
            "scar_number": f"{supplier.supplier_id}-{number}",
            "issue_description": (
                f"{self._rng.choice(_NC_DEFECTS['supplier'])[1]}: {part.number} "
                f"({part.description}) from {supplier.name}"
            ),
            "related_ncr": related_ncr,
            "response_due_date": self._due(30),
        }
        return common, payload

    # ------------------------------------------------------------------ plant-floor events

    def _measured(self, limits: _Limits, fail_rate: float) -> float:
        """Draw a value around nominal; with probability `fail_rate` push it past a limit."""
        value = self._rng.gauss(limits.nominal, limits.spread)
        if self._rng.random() < fail_rate:
            if limits.high is not None:
                value = limits.high + abs(self._rng.gauss(0, limits.spread)) + limits.spread / 4
            elif limits.low is not None:
                value = limits.low - abs(self._rng.gauss(0, limits.spread)) - limits.spread / 4
        elif limits.low is not None or limits.high is not None:
            low = limits.low if limits.low is not None else value
            high = limits.high if limits.high is not None else value
            value = min(max(value, low), high)
        return value

    def _inspection_result(self) -> DemoRecord:
        topic = "mes.inspection-result.v1"
        line, site = self._line_and_site()
        part = self._part(line)
        characteristic, limits = self._rng.choice(self._inspection_plan(line))
        sample_size = self._rng.choice((13, 20, 32, 50, 80, 125))  # ANSI Z1.4 sample sizes
        # the two sites run different MES builds: BOS1 writes words, CORK2 single letters
        accept, reject = ("accept", "reject") if site == "BOS1" else ("A", "R")
        attribute = limits.low is None and limits.high is None
        measured: Decimal | None = None
        if attribute:
            defects = self._rng.choices((0, 1, 2, 3), weights=(92, 5, 2, 1))[0]
            passed = defects <= 1
        else:
            value = self._measured(limits, fail_rate=0.03)
            measured = _decimal(value, limits.places)
            passed = (limits.low is None or measured >= _decimal(limits.low, limits.places)) and (
                limits.high is None or measured <= _decimal(limits.high, limits.places)
            )
            defects = 0 if passed else self._rng.randint(1, 3)
        self._counters.setdefault(topic, 0)
        self._counters[topic] += 1
        common = {
            "product_line": line,
            "site": site,
            "lot_id": self._lot(line, site),
            "part_number": part.number,
            "supplier_id": None,
            "equipment_id": self._equipment(line, site).equipment_id if not attribute else None,
            "severity": None if passed else self._rng.choice(("minor", "major")),
        }
        payload = {
            "inspection_lot_id": f"8900{self._rng.randint(10_000_000, 99_999_999)}",
            "characteristic": characteristic,
            "result": accept if passed else reject,
            "measured_value": measured,
            "unit": limits.unit or None,
            "lower_limit": None if limits.low is None else _decimal(limits.low, limits.places),
            "upper_limit": None if limits.high is None else _decimal(limits.high, limits.places),
            "sample_size": sample_size,
            "defects_found": defects,
        }
        number = f"INSP-{self._now.year}-{self._counters[topic]:05d}"
        status = "RREC" if self._rng.random() < 0.8 else "UD"  # SAP-style inspection lot status
        return self._envelope(topic, number, common, status, payload)

    def _lab_result(self) -> DemoRecord:
        topic = "lims.lab-result.v1"
        line, site = self._line_and_site()
        test_code, analyte, limits, method = self._rng.choice(self._lab_tests(line))
        self._counters.setdefault(topic, 0)
        self._counters[topic] += 1
        value: Decimal | None = None
        text: str | None = None
        if limits.low is None and limits.high is None:
            passed = self._rng.random() > 0.01
            text = (
                ("Conforms" if test_code != "STER" else "No growth")
                if passed
                else ("Does not conform" if test_code != "STER" else "Growth observed")
            )
            status = "PASS" if passed else "OOS"
        else:
            raw = self._measured(limits, fail_rate=0.02)
            value = _decimal(raw, limits.places)
            low = None if limits.low is None else _decimal(limits.low, limits.places)
            high = None if limits.high is None else _decimal(limits.high, limits.places)
            if (low is not None and value < low) or (high is not None and value > high):
                status = "OOS"
            elif high is not None and raw > limits.nominal + 2.5 * limits.spread:
                status = "OOT"  # within spec, but off the trend
            else:
                status = "PASS"
        common = {
            "product_line": line,
            "site": site,
            "lot_id": self._lot(line, site),
            "part_number": self._part(line).number,
            "equipment_id": _INSTRUMENTS.get(test_code),
            "severity": None,
        }
        payload = {
            "sample_id": f"S-{self._now:%y}-{self._counters[topic] + 104_200:06d}",
            "test_code": test_code,
            "analyte": analyte,
            "result_value": value,
            "result_text": text,
            "unit": limits.unit or None,
            "spec_low": None if limits.low is None else _decimal(limits.low, limits.places),
            "spec_high": None if limits.high is None else _decimal(limits.high, limits.places),
            "result_status": status,
            "method_ref": method,
            "instrument_id": _INSTRUMENTS.get(test_code),
        }
        record_status = self._rng.choices(("Complete", "Reviewed", "Authorised"), (3, 2, 5))[0]
        signature = (
            self._signature(site, "approval" if record_status == "Authorised" else "review")
            if record_status != "Complete"
            else None
        )
        return self._envelope(
            topic,
            f"RES-{self._counters[topic] + 880_000}",
            common,
            record_status,
            payload,
            signature=signature,
        )

    def _environmental_reading(self) -> DemoRecord:
        topic = "ems.environmental-reading.v1"
        point = self._rng.choice(self._plant.every_point)
        parameter = self._rng.choice(point.parameters)
        grade = point.cleanroom_grade
        alert: float | None
        action: float | None
        excursion = self._rng.random() < 0.02
        if parameter == "temperature":
            value, alert, action, places = self._rng.gauss(20.5, 0.6), 23.0, 25.0, 1
            value = self._rng.uniform(23.1, 26.0) if excursion else value
        elif parameter == "relative_humidity":
            value, alert, action, places = self._rng.gauss(42.0, 3.0), 55.0, 60.0, 1
            value = self._rng.uniform(55.5, 64.0) if excursion else value
        elif parameter == "differential_pressure":
            # lower limits: pressure cascades fail by dropping
            value, alert, action, places = self._rng.gauss(15.0, 1.2), 12.5, 10.0, 1
            value = self._rng.uniform(8.0, 12.4) if excursion else value
        elif parameter == "particles_0_5um":
            action = _PARTICLE_ACTION.get(grade or "D")
            alert = None if action is None else action * 0.8
            base = (action or 3_520_000.0) * 0.15
            value, places = abs(self._rng.gauss(base, base * 0.4)), 0
            value = (
                self._rng.uniform(alert, action * 1.4)
                if excursion and action and alert
                else (value)
            )
        else:
            action = _VIABLE_ACTION.get(grade or "D", 200.0)
            alert = None if grade == "A" else action * 0.7  # grade A: any growth is action
            # grade A expects no growth: one colony in a few hundred samples
            counts, weights = (
                ((0, 1, 2), (995, 4, 1))
                if grade == "A"
                else ((0, 1, 2, 3, 5, 8), (55, 20, 12, 7, 4, 2))
            )
            value, places = float(self._rng.choices(counts, weights)[0]), 0
        dec_value = _decimal(value, places)
        severity = None
        if action is not None and (
            dec_value < Decimal(repr(action))
            if parameter == "differential_pressure"
            else dec_value >= Decimal(repr(action))
        ):
            severity = "action"
        elif alert is not None and (
            dec_value < Decimal(repr(alert))
            if parameter == "differential_pressure"
            else dec_value >= Decimal(repr(alert))
        ):
            severity = "alert"
        self._counters.setdefault(topic, 0)
        self._counters[topic] += 1
        common = {
            "product_line": point.product_line,
            "site": point.site,
            "severity": severity,
            "lot_id": (
                self._lot(point.product_line, point.site)
                if point.cleanroom_grade in ("A", "B")
                else None
            ),
        }
        payload = {
            "location_id": point.location_id,
            "parameter": parameter,
            "value": dec_value,
            "unit": _ENV_UNITS[parameter],
            "alert_limit": None if alert is None else _decimal(alert, places),
            "action_limit": None if action is None else _decimal(action, places),
            "cleanroom_grade": grade,
        }
        status = "valid" if severity is None else "excursion"
        number = f"RDG-{self._counters[topic] + 41_000_000}"
        return self._envelope(
            topic,
            number,
            common,
            status,
            payload,
            times=self._times("EMS"),
        )

    def _calibration_event(self) -> DemoRecord:
        topic = "cmms.calibration-event.v1"
        equipment = self._rng.choice(self._plant.every_equipment)
        result = self._rng.choices(("pass", "adjusted", "fail"), weights=(85, 11, 4))[0]
        self._counters.setdefault(topic, 0)
        self._counters[topic] += 1
        in_tolerance: bool | None = {"pass": True, "adjusted": True, "fail": False}[result]
        if self._rng.random() < 0.1:
            in_tolerance = None  # external lab certificate without as-found data
        common = {
            "product_line": equipment.product_line,
            "site": equipment.site,
            "equipment_id": equipment.equipment_id,
            "severity": None if result != "fail" else "high",
        }
        payload = {
            "calibration_id": f"CAL-{self._now.year}-{self._counters[topic] + 300:05d}",
            "result": result,
            "due_date": self._due(equipment.interval_days if result != "fail" else 0),
            "as_found_in_tolerance": in_tolerance,
            "certificate_ref": (
                f"CERT-{self._rng.randint(100000, 999999)}" if self._rng.random() < 0.7 else None
            ),
        }
        status = "closed" if result != "fail" else "awaiting repair"
        signature = self._signature(equipment.site, "review") if result != "pass" else None
        return self._envelope(
            topic,
            f"WO-{self._counters[topic] + 55_000}",
            common,
            status,
            payload,
            signature=signature,
        )

    def _recall(self) -> DemoRecord:
        topic = "qms.recall.v1"
        line, site = self._line_and_site()
        number = self._number(topic)
        classification = self._rng.choices(("class_i", "class_ii", "class_iii"), (1, 6, 2))[0]
        lots = sorted(set(self._lots.get((line, site), [])) or {self._lot(line, site)})
        chosen = lots[-self._rng.randint(1, min(3, len(lots))) :]
        ranged = len(chosen) > 1 and self._rng.random() < 0.5
        letter = self._recall_letter(line)
        common = {
            "product_line": line,
            "site": site,
            "lot_id": chosen[0],
            "part_number": self._part(line).number,
            "severity": {"class_i": "critical", "class_ii": "major", "class_iii": "minor"}[
                classification
            ],
        }
        payload = {
            "recall_number": f"{letter}-{self._rng.randint(1000, 2999)}-{self._now.year}",
            "classification": classification,
            "reason": self._rng.choice(_RECALL_REASONS),
            "lot_ids": [] if ranged else chosen,
            "lot_range_start": chosen[0] if ranged else None,
            "lot_range_end": chosen[-1] if ranged else None,
        }
        signature = self._signature(site, "approval")
        return self._envelope(topic, number, common, "Initiated", payload, signature=signature)


# --------------------------------------------------------------------------- faults


def with_duplicates(
    records: Iterable[DemoRecord], rate: float, rng: random.Random
) -> Iterator[DemoRecord]:
    """Interleave exact re-emissions of earlier records so duplicates are `rate` of the output.

    A duplicate is an equal copy (same event_id and content, not the same object) of one of
    the last 2,000 originals, as producer retries and replays produce. Stops when `records`
    is exhausted. `rate` must be in [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"duplicate rate must be in [0, 1), got {rate}")
    recent: deque[DemoRecord] = deque(maxlen=_DUPLICATE_WINDOW)
    for original in records:
        while recent and rng.random() < rate:
            yield copy.deepcopy(recent[rng.randrange(len(recent))])
        recent.append(original)
        yield original


# Confluent wire format: magic byte 0, then a 4-byte big-endian schema id, then the Avro body.
_MAGIC = b"\x00"
# Far above any id the registry of a demo stack hands out, so it is unknown everywhere.
_UNKNOWN_SCHEMA_ID = 999_999
_CORRUPT_KINDS = ("random", "empty", "json", "unknown_schema", "truncated", "short_header")


def _frame(schema_id: int) -> bytes:
    return _MAGIC + struct.pack(">I", schema_id)


def corrupt_payloads(n: int, rng: random.Random) -> list[bytes]:
    """`n` malformed message values for dead-letter demos, every kind before any repeats.

    Kinds: random bytes (first byte never the magic byte), empty, JSON text, a valid frame
    header with unknown schema id 999999, a valid header with a plausible schema id and a
    truncated Avro body, and a header cut short (1 to 4 bytes).
    """
    out: list[bytes] = []
    kinds: list[str] = []
    while len(out) < n:
        if not kinds:
            kinds = list(_CORRUPT_KINDS)
            rng.shuffle(kinds)
        kind = kinds.pop()
        if kind == "random":
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(5, 64)))
            out.append(bytes([rng.randint(1, 255)]) + body)
        elif kind == "empty":
            out.append(b"")
        elif kind == "json":
            document = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "event_type": rng.choice(list(TOPIC_EVENT_TYPES.values())),
                "status": "Draft",
            }
            out.append(json.dumps(document).encode())
        elif kind == "unknown_schema":
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(8, 48)))
            out.append(_frame(_UNKNOWN_SCHEMA_ID) + body)
        elif kind == "truncated":
            # a uuid string announces 36 bytes (zigzag varint 72) but the body stops early
            event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
            out.append(_frame(rng.randint(1, 40)) + bytes([72]) + event_id[: rng.randint(0, 20)])
        else:
            out.append(_frame(rng.randint(1, 40))[: rng.randint(1, 4)])
    return out
