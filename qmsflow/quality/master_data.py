"""Master data the integrity stage checks references against: lots, parts, suppliers, equipment.

Each kind arrives on a compacted `md.<kind>.v1` topic keyed by the entity id, so replaying the
topic from the start rebuilds the index. A tombstone (null value) or a record flagged `deleted`
makes the entity unknown again: events naming it afterwards are parked, not passed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, ClassVar, Literal, Protocol, get_args

from qmsflow.errors import ContractError

__all__ = [
    "MASTER_TOPICS",
    "EquipmentRecord",
    "LotRecord",
    "MasterDataIndex",
    "MasterKind",
    "MasterRecord",
    "PartRecord",
    "ReferenceIndex",
    "SupplierRecord",
    "master_record",
]

MasterKind = Literal["lot", "part", "supplier", "equipment"]

#: master-data kind -> the compacted topic that carries it, keyed by the entity id
MASTER_TOPICS: dict[MasterKind, str] = {
    "lot": "md.lot.v1",
    "part": "md.part.v1",
    "supplier": "md.supplier.v1",
    "equipment": "md.equipment.v1",
}


@dataclass(frozen=True, slots=True)
class LotRecord:
    """A manufactured or received lot (`md.lot.v1`); `parent_lot_ids` is its genealogy."""

    lot_id: str
    part_number: str
    product_line: str
    site: str
    supplier_id: str | None
    parent_lot_ids: tuple[str, ...]
    status: str  # the ERP's stock status word, e.g. RELEASED, QUARANTINE, BLOCKED
    manufactured_at: datetime | None
    updated_at: datetime
    source_system: str
    deleted: bool = False

    kind: ClassVar[Literal["lot"]] = "lot"

    @property
    def entity_id(self) -> str:
        """The compaction key."""
        return self.lot_id

    def to_avro(self) -> dict[str, Any]:
        """The `md.lot.v1-value` datum."""
        return {
            "lot_id": self.lot_id,
            "part_number": self.part_number,
            "product_line": self.product_line,
            "site": self.site,
            "supplier_id": self.supplier_id,
            "parent_lot_ids": list(self.parent_lot_ids),
            "status": self.status,
            "manufactured_at": self.manufactured_at,
            "updated_at": self.updated_at,
            "source_system": self.source_system,
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class PartRecord:
    """A part number at one revision (`md.part.v1`)."""

    part_number: str
    revision: str
    description: str
    product_line: str
    lifecycle_status: str  # the PLM's word, e.g. RELEASED, OBSOLETE
    updated_at: datetime
    source_system: str
    deleted: bool = False

    kind: ClassVar[Literal["part"]] = "part"

    @property
    def entity_id(self) -> str:
        """The compaction key."""
        return self.part_number

    def to_avro(self) -> dict[str, Any]:
        """The `md.part.v1-value` datum."""
        return {
            "part_number": self.part_number,
            "revision": self.revision,
            "description": self.description,
            "product_line": self.product_line,
            "lifecycle_status": self.lifecycle_status,
            "updated_at": self.updated_at,
            "source_system": self.source_system,
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class SupplierRecord:
    """A supplier on the approved supplier list (`md.supplier.v1`)."""

    supplier_id: str
    name: str
    country: str  # ISO 3166-1 alpha-2
    approval_status: str  # e.g. APPROVED, CONDITIONAL, DISQUALIFIED
    updated_at: datetime
    source_system: str
    deleted: bool = False

    kind: ClassVar[Literal["supplier"]] = "supplier"

    @property
    def entity_id(self) -> str:
        """The compaction key."""
        return self.supplier_id

    def to_avro(self) -> dict[str, Any]:
        """The `md.supplier.v1-value` datum."""
        return {
            "supplier_id": self.supplier_id,
            "name": self.name,
            "country": self.country,
            "approval_status": self.approval_status,
            "updated_at": self.updated_at,
            "source_system": self.source_system,
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class EquipmentRecord:
    """A piece of calibrated equipment or a lab instrument (`md.equipment.v1`)."""

    equipment_id: str
    description: str
    site: str
    calibration_status: str  # e.g. CALIBRATED, DUE, OUT_OF_TOLERANCE
    calibration_due: date | None
    updated_at: datetime
    source_system: str
    deleted: bool = False

    kind: ClassVar[Literal["equipment"]] = "equipment"

    @property
    def entity_id(self) -> str:
        """The compaction key."""
        return self.equipment_id

    def to_avro(self) -> dict[str, Any]:
        """The `md.equipment.v1-value` datum."""
        return {
            "equipment_id": self.equipment_id,
            "description": self.description,
            "site": self.site,
            "calibration_status": self.calibration_status,
            "calibration_due": self.calibration_due,
            "updated_at": self.updated_at,
            "source_system": self.source_system,
            "deleted": self.deleted,
        }


MasterRecord = LotRecord | PartRecord | SupplierRecord | EquipmentRecord


def master_record(kind: str, datum: Mapping[str, Any] | None) -> MasterRecord | None:
    """Build the record of one kind from a decoded `md.<kind>.v1` datum; a tombstone is None.

    Raises ContractError naming the kind and the problem when the datum does not fit.
    """
    if datum is None:
        return None
    values = dict(datum)
    try:
        if kind == "lot":
            values["parent_lot_ids"] = tuple(values.get("parent_lot_ids", ()))
            return LotRecord(**values)
        if kind == "part":
            return PartRecord(**values)
        if kind == "supplier":
            return SupplierRecord(**values)
        if kind == "equipment":
            return EquipmentRecord(**values)
    except TypeError as exc:
        raise ContractError(f"md.{kind}.v1: expected a {kind} master record, got: {exc}") from exc
    raise ContractError(f"expected a master-data kind in {get_args(MasterKind)}, got {kind!r}")


class ReferenceIndex(Protocol):
    """What the integrity stage asks of master data: whether an entity exists right now."""

    def knows(self, kind: str, entity_id: str) -> bool:
        """Whether an entity of `kind` with this id exists (known and not deleted)."""
        ...


class MasterDataIndex:
    """Live master records by kind and id, with lot genealogy; fed from the compacted topics.

    Applying a record is idempotent and last-write-wins per key, as log compaction keeps it.
    """

    def __init__(self) -> None:
        self._records: dict[str, dict[str, MasterRecord]] = {kind: {} for kind in MASTER_TOPICS}
        self._lots_by_part: dict[str, set[str]] = {}
        self._children: dict[str, set[str]] = {}

    def apply(self, kind: str, entity_id: str, record: MasterRecord | None) -> bool:
        """Apply one compacted-topic message (key `entity_id`); return whether it is known now.

        None (a tombstone) or a record flagged `deleted` forgets the entity. Raises
        ContractError when the kind is unknown or the record's id disagrees with its key.
        """
        records = self._records.get(kind)
        if records is None:
            raise ContractError(
                f"expected a master-data kind in {sorted(self._records)}, got {kind!r}"
            )
        if record is not None and (record.kind != kind or record.entity_id != entity_id):
            raise ContractError(
                f"md.{kind}.v1 key {entity_id!r}: expected a {kind} record with that id, got a "
                f"{record.kind} record for {record.entity_id!r}"
            )
        previous = records.pop(entity_id, None)
        if isinstance(previous, LotRecord):
            self._unlink(previous)
        if record is None or record.deleted:
            return False
        records[entity_id] = record
        if isinstance(record, LotRecord):
            self._link(record)
        return True

    def knows(self, kind: str, entity_id: str) -> bool:
        """Whether an entity of `kind` with this id exists (known and not deleted)."""
        records = self._records.get(kind)
        return records is not None and entity_id in records

    def get(self, kind: str, entity_id: str) -> MasterRecord | None:
        """The live record, or None when the entity is unknown or deleted."""
        return self._records.get(kind, {}).get(entity_id)

    def lots_of_part(self, part_number: str) -> list[str]:
        """Ids of the live lots of a part number, sorted."""
        return sorted(self._lots_by_part.get(part_number, ()))

    def children(self, lot_id: str) -> list[str]:
        """Live lots that name `lot_id` as a parent, sorted."""
        return sorted(self._children.get(lot_id, ()))

    def descendants(self, lot_id: str) -> list[str]:
        """Every live lot made from `lot_id`, directly or through other lots, sorted.

        The lot itself is not included; a cycle in bad genealogy data does not loop.
        """
        seen: set[str] = set()
        stack = [lot_id]
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in seen and child != lot_id:
                    seen.add(child)
                    stack.append(child)
        return sorted(seen)

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    def __iter__(self) -> Iterator[MasterRecord]:
        for records in self._records.values():
            yield from records.values()

    def _link(self, lot: LotRecord) -> None:
        self._lots_by_part.setdefault(lot.part_number, set()).add(lot.lot_id)
        for parent in lot.parent_lot_ids:
            self._children.setdefault(parent, set()).add(lot.lot_id)

    def _unlink(self, lot: LotRecord) -> None:
        _discard(self._lots_by_part, lot.part_number, lot.lot_id)
        for parent in lot.parent_lot_ids:
            _discard(self._children, parent, lot.lot_id)


def _discard(table: dict[str, set[str]], key: str, member: str) -> None:
    members = table.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del table[key]
