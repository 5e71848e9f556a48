"""The integrity stage: an event flows on once the lots, parts, suppliers and equipment exist.

DESIGN §3 stage 3. Master data and quality events arrive on different topics with no ordering
between them, so an event naming a lot the ERP has not published yet is parked, not rejected:

1. `missing_references` checks the event against the rules in `config/integrity_rules.toml`.
2. None missing: the event flows on. Some missing: `ParkingLot.park` holds it and the agent
   publishes the PARKED record on `quality.parked.v1`.
3. When a master record makes an entity known, `ParkingLot.release` hands back every event whose
   last missing reference that was (RELEASED): the agent publishes them onward, then the record.
4. `ParkingLot.expire` hands back events still waiting at the deadline (EXPIRED): the agent
   dead-letters each with `ParkedRecord.unresolved(now)` as the error. Never dropped silently.

Pure and engine-free: the parking lot serialises to JSON-able dicts for a Faust table.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qmsflow.errors import ConfigurationError, ContractError, NormalisationError
from qmsflow.quality.event import PAYLOAD_RECORD, QualityEvent
from qmsflow.quality.master_data import MasterKind, ReferenceIndex

__all__ = [
    "PARKED_SUBJECT",
    "REFERENCE_KINDS",
    "IntegrityRules",
    "ParkedRecord",
    "ParkingLot",
    "ParkingStatus",
    "Presence",
    "Reference",
    "ReferenceField",
    "UnresolvedReferences",
    "event_from_json",
    "event_to_json",
    "load_integrity_rules",
    "missing_references",
    "parse_integrity_rules",
]

PARKED_SUBJECT = "quality.parked.v1-value"

ReferenceField = Literal["lot_id", "part_number", "supplier_id", "equipment_id"]
Presence = Literal["required", "when_present"]
ParkingStatus = Literal["PARKED", "RELEASED", "EXPIRED"]

#: envelope field -> the master-data kind it names
REFERENCE_KINDS: dict[ReferenceField, MasterKind] = {
    "lot_id": "lot",
    "part_number": "part",
    "supplier_id": "supplier",
    "equipment_id": "equipment",
}


class Reference(NamedTuple):
    """One master-data entity an event names, shown as `kind:id` (e.g. `lot:L2611-0042`)."""

    kind: str
    entity_id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.entity_id}"

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Read the `kind:id` form back; ids may contain colons, kinds may not."""
        kind, separator, entity_id = text.partition(":")
        if not separator or not kind or not entity_id:
            raise ValueError(f"expected a reference as kind:id, e.g. lot:L2611-0042, got {text!r}")
        return cls(kind, entity_id)


class UnresolvedReferences(ContractError):
    """A parked event's references were still missing at the parking deadline."""

    reason_code = "unresolved-reference"

    def __init__(self, message: str, references: Sequence[Reference]) -> None:
        super().__init__(message)
        self.references = tuple(references)


# --------------------------------------------------------------------------- rules


class IntegrityRules(BaseModel):
    """Which references each event type must name, and how long a parked event may wait."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    parking_deadline_hours: float = Field(gt=0)
    #: event type -> envelope field -> presence, in the file's order
    references: dict[str, dict[ReferenceField, Presence]]

    @field_validator("references")
    @classmethod
    def _every_event_type(
        cls, value: dict[str, dict[ReferenceField, Presence]]
    ) -> dict[str, dict[ReferenceField, Presence]]:
        missing = sorted(set(PAYLOAD_RECORD) - set(value))
        unknown = sorted(set(value) - set(PAYLOAD_RECORD))
        if missing or unknown:
            raise ValueError(
                f"expected one [references.<event_type>] table per event type "
                f"{sorted(PAYLOAD_RECORD)}; missing {missing}, unknown {unknown}"
            )
        return value

    @property
    def parking_deadline(self) -> timedelta:
        """How long an event may stay parked (wall clock) before it is dead-lettered."""
        return timedelta(hours=self.parking_deadline_hours)


def parse_integrity_rules(document: Mapping[str, Any]) -> IntegrityRules:
    """Validate a parsed rules document; raise ConfigurationError saying what is wrong."""
    try:
        return IntegrityRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"config/integrity_rules.toml is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_integrity_rules() -> IntegrityRules:
    """The rules shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/integrity_rules.toml").read_text("utf-8")
    return parse_integrity_rules(tomllib.loads(text))


def missing_references(
    event: QualityEvent, index: ReferenceIndex, rules: IntegrityRules
) -> list[Reference]:
    """The references the event names that master data does not know, in the rules' order.

    Raises NormalisationError when the event type has no rule or a required field is null:
    no master record arriving later could fix either, so parking would only delay the DLQ.
    """
    event_type = event["event_type"]
    checks = rules.references.get(event_type)
    if checks is None:
        raise NormalisationError(
            f"event {event['event_id']}: expected an event type in integrity_rules.toml "
            f"{sorted(rules.references)}, got {event_type!r}"
        )
    missing: list[Reference] = []
    for field, presence in checks.items():
        entity_id = event[field]
        if entity_id is None:
            if presence == "required":
                raise NormalisationError(
                    f"{event_type} {event['event_id']} ({event['source_record_id']}): expected "
                    f"{field} (required by integrity_rules.toml), got null"
                )
            continue
        reference = Reference(REFERENCE_KINDS[field], entity_id)
        if not index.knows(reference.kind, reference.entity_id):
            missing.append(reference)
    return missing


# --------------------------------------------------------------------------- event as JSON

# JSON has no timestamp, date or decimal: such values become one-key objects with these tags,
# so a parked event reads back exactly (Decimal scale and microseconds included).
_TIMESTAMP, _DATE, _DECIMAL = "$timestamp", "$date", "$decimal"


def event_to_json(event: QualityEvent) -> dict[str, Any]:
    """The canonical event as a JSON-able dict; `event_from_json` reads it back unchanged.

    The payload tuple becomes {"record": <record name>, "fields": {...}}.
    """
    document = {key: _to_json(value, key) for key, value in event.items() if key != "payload"}
    record_name, fields = event["payload"]
    document["payload"] = {"record": record_name, "fields": _to_json(fields, "payload")}
    return document


def event_from_json(document: Mapping[str, Any]) -> QualityEvent:
    """Read back what `event_to_json` wrote."""
    event = {key: _from_json(value) for key, value in document.items() if key != "payload"}
    payload = document["payload"]
    event["payload"] = (payload["record"], _from_json(payload["fields"]))
    return cast(QualityEvent, event)


def _to_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):  # before date: a datetime is a date
        return {_TIMESTAMP: value.isoformat()}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if isinstance(value, Decimal):
        return {_DECIMAL: str(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{where}[{n}]") for n, v in enumerate(value)]
    raise TypeError(
        f"{where}: expected a canonical event value (str, number, bool, datetime, date, Decimal, "
        f"list, dict), got {type(value).__name__}"
    )


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, text),) = value.items()
            if tag == _TIMESTAMP:
                return datetime.fromisoformat(text)
            if tag == _DATE:
                return date.fromisoformat(text)
            if tag == _DECIMAL:
                return Decimal(text)
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _event_json_text(event: QualityEvent) -> str:
    return json.dumps(event_to_json(event), sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- parking


def _waited(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"


@dataclass(frozen=True, slots=True)
class ParkedRecord:
    """A parked event, the references it still waits for, and where it stands."""

    event: QualityEvent
    missing: tuple[Reference, ...]
    parked_at: datetime  # wall clock, aware UTC
    status: ParkingStatus = "PARKED"

    @property
    def event_id(self) -> str:
        """The parked event's id: one parked record per event."""
        return self.event["event_id"]

    @property
    def key(self) -> str:
        """The `quality.parked.v1` message key: the event's product line."""
        return self.event["product_line"]

    def deadline_at(self, deadline: timedelta) -> datetime:
        """When the event is dead-lettered if it is still waiting."""
        return self.parked_at + deadline

    def to_avro(self, deadline: timedelta) -> dict[str, Any]:
        """The `quality.parked.v1-value` datum, the deadline taken from the current rules."""
        return {
            "event_id": self.event_id,
            "event_type": self.event["event_type"],
            "product_line": self.event["product_line"],
            "missing_references": [str(r) for r in self.missing],
            "parked_at": self.parked_at,
            "deadline_at": self.deadline_at(deadline),
            "status": self.status,
            "event_json": _event_json_text(self.event),
        }

    def unresolved(self, now: datetime) -> UnresolvedReferences:
        """The error to dead-letter an expired event with: what is missing, how long it waited."""
        event = self.event
        missing = ", ".join(str(r) for r in self.missing)
        return UnresolvedReferences(
            f"{event['event_type']} {event['event_id']} ({event['source_system']} "
            f"{event['source_record_id']}): references {missing} not in master data after "
            f"{_waited(now - self.parked_at)} parked (since {self.parked_at.isoformat()}); "
            f"expected md.<kind>.v1 to publish them",
            self.missing,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form for a state table."""
        return {
            "event": event_to_json(self.event),
            "missing": [str(r) for r in self.missing],
            "parked_at": self.parked_at.isoformat(),
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ParkedRecord:
        """Read back what `to_dict` wrote."""
        return cls(
            event=event_from_json(document["event"]),
            missing=tuple(Reference.parse(r) for r in document["missing"]),
            parked_at=datetime.fromisoformat(document["parked_at"]),
            status=document["status"],
        )


def _order(record: ParkedRecord) -> tuple[datetime, str]:
    return record.parked_at, record.event_id


class ParkingLot:
    """Events waiting for master data, by event id and by the reference each waits for.

    Invariants: one record per event id; every held record is PARKED with at least one missing
    reference. Released and expired records leave the lot and come back in parked order.
    """

    def __init__(self, records: Sequence[ParkedRecord] = ()) -> None:
        self._parked: dict[str, ParkedRecord] = {}
        self._waiting: dict[Reference, set[str]] = {}
        for record in records:
            self._hold(record)

    def park(
        self, event: QualityEvent, missing: Sequence[Reference], parked_at: datetime
    ) -> ParkedRecord:
        """Hold an event until `missing` exist; an event id already parked keeps its record.

        Keeping the first record on a redelivery keeps its parked_at, so at-least-once
        delivery never extends the deadline. Raises ValueError when nothing is missing.
        """
        if not missing:
            raise ValueError(f"event {event['event_id']}: expected missing references, got none")
        existing = self._parked.get(event["event_id"])
        if existing is not None:
            return existing
        record = ParkedRecord(event, tuple(dict.fromkeys(missing)), parked_at)
        self._hold(record)
        return record

    def release(self, reference: Reference, index: ReferenceIndex) -> list[ParkedRecord]:
        """Release the events that waited for `reference` and now miss nothing (RELEASED).

        Apply the master record to `index` first: every reference an event waits for is
        rechecked there, so one waiting on two is released only once both exist.
        """
        released: list[ParkedRecord] = []
        for event_id in sorted(self._waiting.get(reference, ())):
            record = self._parked[event_id]
            still = tuple(r for r in record.missing if not index.knows(r.kind, r.entity_id))
            if still == record.missing:
                continue
            self._drop(record)
            if still:
                self._hold(replace(record, missing=still))
            else:
                released.append(replace(record, status="RELEASED"))
        return sorted(released, key=_order)

    def release_known(self, index: ReferenceIndex) -> list[ParkedRecord]:
        """Release every event whose references all exist now, e.g. after a restart's replay."""
        released: list[ParkedRecord] = []
        for reference in list(self._waiting):
            if index.knows(reference.kind, reference.entity_id):
                released.extend(self.release(reference, index))
        return sorted(released, key=_order)

    def expire(self, now: datetime, deadline: timedelta) -> list[ParkedRecord]:
        """Remove and return the events parked for `deadline` or longer (EXPIRED).

        `deadline` is the current rule, so raising it during an outage keeps events parked.
        """
        expired = [r for r in self._parked.values() if now - r.parked_at >= deadline]
        for record in expired:
            self._drop(record)
        return sorted((replace(r, status="EXPIRED") for r in expired), key=_order)

    def get(self, event_id: str) -> ParkedRecord | None:
        """The parked record of an event, or None when it is not parked."""
        return self._parked.get(event_id)

    def waiting_on(self, reference: Reference) -> list[str]:
        """Ids of the events waiting for a reference, sorted."""
        return sorted(self._waiting.get(reference, ()))

    def __len__(self) -> int:
        return len(self._parked)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._parked

    def __iter__(self) -> Iterator[ParkedRecord]:
        return iter(sorted(self._parked.values(), key=_order))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of the whole lot."""
        return {"parked": [record.to_dict() for record in self]}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> ParkingLot:
        """Rebuild a lot from `to_dict` output."""
        return cls([ParkedRecord.from_dict(d) for d in document["parked"]])

    def _hold(self, record: ParkedRecord) -> None:
        self._parked[record.event_id] = record
        for reference in record.missing:
            self._waiting.setdefault(reference, set()).add(record.event_id)

    def _drop(self, record: ParkedRecord) -> None:
        del self._parked[record.event_id]
        for reference in record.missing:
            waiting = self._waiting.get(reference)
            if waiting is not None:
                waiting.discard(record.event_id)
                if not waiting:
                    del self._waiting[reference]
