"""Quarantine: which quality events put a lot on hold, and which dispositions lift the hold.

A lot's state is the set of open hold reasons, one per trigger record (a nonconformance, a failed
result, a recall). Commands are edges of that set, never echoes of events:

1. the first reason on a lot that is not held → one HOLD command (the hold ordinal goes up);
2. further reasons on a held lot → nothing, only the reason is remembered;
3. a reason released while others remain → nothing;
4. the last reason released → one RELEASE command for the same ordinal.

Command ids derive from (lot, ordinal, action) and `issued_at` is the trigger's `recorded_at`, so
redelivery and replay reproduce the same commands. Everything here is pure: the agent keeps
`LotHoldState.to_dict()` in a table keyed by lot and routes each event to `lots_touched(...)`.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, Literal, NamedTuple, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from qmsflow.errors import ConfigurationError
from qmsflow.quality.data_dictionary import CanonicalStatus, term_key
from qmsflow.quality.event import QualityEvent

__all__ = [
    "QUARANTINE_NAMESPACE",
    "HoldAction",
    "HoldReason",
    "LotCatalog",
    "LotHoldState",
    "LotStatus",
    "QuarantineCommand",
    "QuarantineRules",
    "command_id",
    "decide",
    "load_quarantine_rules",
    "lots_touched",
    "parse_quarantine_rules",
    "record_key",
]

HoldAction = Literal["HOLD", "RELEASE"]
LotStatus = Literal["RELEASED", "ON_HOLD"]

#: namespace of quarantine command ids (uuid5); fixed forever so ids stay stable across versions
QUARANTINE_NAMESPACE = uuid.UUID("0b6f2d8e-41a7-4c3e-9d52-7a1e3c9b5f10")

_RULES_FILE = "config/quarantine_rules.toml"


# --------------------------------------------------------------------------- rules


def _lookup_forms(words: Iterable[str]) -> frozenset[str]:
    return frozenset(term_key(word) for word in words)


#: source words, stored in lookup form so "Reject", "REJECT" and "reject" are one rule
SourceWords = Annotated[frozenset[str], AfterValidator(_lookup_forms)]


class _Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Postings(_Rules):
    """What the ERP posts for a command: SAP movement type and target stock type."""

    hold_movement_type: str
    release_movement_type: str
    hold_stock_type: str
    release_stock_type: str


class NonconformanceRules(_Rules):
    """When a nonconformance holds its lots and which dispositions release them."""

    hold_statuses: frozenset[CanonicalStatus]
    release_statuses: frozenset[CanonicalStatus]
    releasing_dispositions: dict[str, frozenset[CanonicalStatus]]
    #: result-based hold reasons (inspection, lab, environmental) a releasing disposition also
    #: clears when they were recorded before it: the MRB decided with those results in hand
    disposition_covers: frozenset[str] = frozenset()

    @field_validator("releasing_dispositions", mode="before")
    @classmethod
    def _disposition_keys(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {term_key(str(k)): v for k, v in value.items()}
        return value


class InspectionRules(_Rules):
    """MES result codes that mean reject (lookup form)."""

    reject_results: SourceWords


class LabRules(_Rules):
    """LIMS result_status codes that hold the lot (lookup form)."""

    hold_result_statuses: SourceWords


class EnvironmentalRules(_Rules):
    """Parameters whose action limit is a lower bound (lookup form)."""

    below_limit_parameters: SourceWords


class RecallRules(_Rules):
    """Recall statuses that lift the recall's holds."""

    release_statuses: frozenset[CanonicalStatus]


class QuarantineRules(_Rules):
    """The validated contents of `config/quarantine_rules.toml`."""

    version: int
    postings: Postings
    nonconformance: NonconformanceRules
    inspection_result: InspectionRules
    lab_result: LabRules
    environmental_reading: EnvironmentalRules
    recall: RecallRules


def parse_quarantine_rules(document: Mapping[str, Any]) -> QuarantineRules:
    """Validate a parsed rules document; an invalid one is a ConfigurationError saying why."""
    try:
        return QuarantineRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_quarantine_rules() -> QuarantineRules:
    """The quarantine rules shipped with the package."""
    text = resources.files("qmsflow").joinpath(_RULES_FILE).read_text("utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is not valid TOML: {exc}") from exc
    return parse_quarantine_rules(document)


# --------------------------------------------------------------------------- lots


class LotCatalog(Protocol):
    """Master data that knows a part's lots; genealogy and ERP lookups plug in here."""

    def lots_of_part(self, part_number: str) -> Sequence[str]:
        """Every known lot of the part, in any order."""
        ...


def lots_touched(event: QualityEvent, rules: QuarantineRules, catalog: LotCatalog) -> list[str]:
    """The lots an event concerns, in a stable order without repeats, for routing per lot.

    Routed events may hold, release or leave a lot alone; `decide` tells which. A recall range is
    lexicographic and inclusive; a range with one bound missing is open on that side, since
    holding too much is the safe error for a recall. `rules` is accepted so routing and deciding
    read the same rules version.
    """
    del rules  # every type the rules cover names its lots the same way today
    event_type = event["event_type"]
    body = event["payload"][1]
    lots: list[str] = []
    if event_type == "nonconformance":
        lots = _present(event["lot_id"], *body.get("affected_lots", ()))
    elif event_type in ("inspection_result", "lab_result", "environmental_reading"):
        lots = _present(event["lot_id"])
    elif event_type == "recall":
        lots = _present(*body.get("lot_ids", ()), event["lot_id"])
        start, end = body.get("lot_range_start"), body.get("lot_range_end")
        part = event["part_number"]
        if part is not None and (start is not None or end is not None):
            lots += sorted(
                lot
                for lot in catalog.lots_of_part(part)
                if (start is None or start <= lot) and (end is None or lot <= end)
            )
    return list(dict.fromkeys(lots))


def _present(*lots: str | None) -> list[str]:
    return [lot for lot in lots if lot]


# --------------------------------------------------------------------------- state


def record_key(event: QualityEvent) -> str:
    """The key of the record behind an event: every event of one record shares one hold reason."""
    return f"{event['source_system']}:{event['event_type']}:{event['source_record_id']}"


@dataclass(frozen=True)
class HoldReason:
    """Why a lot is held: the trigger event that opened the reason, and a sentence for people."""

    trigger_event_id: str
    trigger_event_type: str
    trigger_source_record_id: str
    text: str


@dataclass(frozen=True)
class LotHoldState:
    """One lot's hold: status, open reasons by record key, and how many holds it has had.

    `last_seen` keeps the newest `recorded_at` applied per record, so a stale older event of a
    record can never re-open a reason a newer event closed; `last_event` keeps that event's id,
    so a redelivery of the very event last applied is recognised even at an equal timestamp
    (sources stamp whole seconds; two real updates may share one).
    """

    lot_id: str
    status: LotStatus = "RELEASED"
    hold_ordinal: int = 0
    reasons: Mapping[str, HoldReason] = field(default_factory=dict)
    last_seen: Mapping[str, datetime] = field(default_factory=dict)
    last_event: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for a Faust table (times as ISO 8601 with offset)."""
        return {
            "lot_id": self.lot_id,
            "status": self.status,
            "hold_ordinal": self.hold_ordinal,
            "reasons": {
                key: {
                    "trigger_event_id": r.trigger_event_id,
                    "trigger_event_type": r.trigger_event_type,
                    "trigger_source_record_id": r.trigger_source_record_id,
                    "text": r.text,
                }
                for key, r in sorted(self.reasons.items())
            },
            "last_seen": {key: at.isoformat() for key, at in sorted(self.last_seen.items())},
            "last_event": dict(sorted(self.last_event.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LotHoldState:
        """The state `to_dict` wrote."""
        status = data["status"]
        if status not in ("RELEASED", "ON_HOLD"):
            raise ValueError(f"lot hold status: expected RELEASED or ON_HOLD, got {status!r}")
        return cls(
            lot_id=data["lot_id"],
            status=status,
            hold_ordinal=int(data["hold_ordinal"]),
            reasons={key: HoldReason(**value) for key, value in data["reasons"].items()},
            last_seen={key: datetime.fromisoformat(at) for key, at in data["last_seen"].items()},
            last_event=dict(data.get("last_event", {})),
        )


@dataclass(frozen=True)
class QuarantineCommand:
    """A HOLD or RELEASE of one lot, as published on `inventory.quarantine-commands.v1`."""

    command_id: str
    action: HoldAction
    lot_id: str
    part_number: str | None
    product_line: str
    site: str
    reason: str
    trigger_event_id: str
    trigger_event_type: str
    trigger_source_record_id: str
    issued_at: datetime
    target_stock_type: str
    sap_movement_type: str

    def to_avro(self) -> dict[str, Any]:
        """The record for subject `inventory.quarantine-commands.v1-value`."""
        return {
            "command_id": self.command_id,
            "action": self.action,
            "lot_id": self.lot_id,
            "part_number": self.part_number,
            "product_line": self.product_line,
            "site": self.site,
            "reason": self.reason,
            "trigger_event_id": self.trigger_event_id,
            "trigger_event_type": self.trigger_event_type,
            "trigger_source_record_id": self.trigger_source_record_id,
            "issued_at": self.issued_at,
            "target_stock_type": self.target_stock_type,
            "sap_movement_type": self.sap_movement_type,
        }


def command_id(lot_id: str, hold_ordinal: int, action: HoldAction) -> str:
    """Deterministic id of the command for one edge of one lot's hold."""
    return str(uuid.uuid5(QUARANTINE_NAMESPACE, f"{lot_id}#{hold_ordinal}#{action}"))


# --------------------------------------------------------------------------- deciding


class _Effect(NamedTuple):
    """What one event means for its record's hold reason on a lot."""

    action: HoldAction
    text: str
    disposition: bool = False  # a releasing MRB disposition (may cover prior result findings)


def decide(
    state: LotHoldState | None, lot_id: str, event: QualityEvent, rules: QuarantineRules
) -> tuple[LotHoldState | None, list[QuarantineCommand]]:
    """Apply one event to one lot's hold; the new state and at most one command.

    The caller routes the event to `lot_id` (see `lots_touched`); `None` is a lot never held.
    An event older than one already applied to this lot for the same record, or a redelivery
    of the very event last applied, changes nothing.
    """
    effect = _assess(event, rules)
    if effect is None:
        return state, []
    current = state if state is not None else LotHoldState(lot_id)
    key = record_key(event)
    seen = current.last_seen.get(key)
    if seen is not None and (
        event["recorded_at"] < seen or current.last_event.get(key) == event["event_id"]
    ):
        return state, []
    if state is None and effect.action == "RELEASE":
        return None, []

    reasons = dict(current.reasons)
    if effect.action == "HOLD":
        reasons.setdefault(
            key,
            HoldReason(
                trigger_event_id=event["event_id"],
                trigger_event_type=event["event_type"],
                trigger_source_record_id=event["source_record_id"],
                text=effect.text,
            ),
        )
    else:
        reasons.pop(key, None)
        if effect.disposition:
            covered = rules.nonconformance.disposition_covers
            for other, reason in list(reasons.items()):
                seen_at = current.last_seen.get(other)
                if (
                    reason.trigger_event_type in covered
                    and seen_at is not None
                    and seen_at <= event["recorded_at"]
                ):
                    del reasons[other]
    last_seen = {**current.last_seen, key: event["recorded_at"]}
    last_event = {**current.last_event, key: event["event_id"]}

    ordinal, status = current.hold_ordinal, current.status
    commands: list[QuarantineCommand] = []
    if status == "RELEASED" and reasons:
        ordinal, status = ordinal + 1, "ON_HOLD"
        commands.append(_command(lot_id, ordinal, "HOLD", event, effect.text, rules))
    elif status == "ON_HOLD" and not reasons:
        status = "RELEASED"
        commands.append(_command(lot_id, ordinal, "RELEASE", event, effect.text, rules))
    return (
        LotHoldState(lot_id, status, ordinal, reasons, last_seen, last_event),
        commands,
    )


def _command(
    lot_id: str,
    ordinal: int,
    action: HoldAction,
    event: QualityEvent,
    reason: str,
    rules: QuarantineRules,
) -> QuarantineCommand:
    postings = rules.postings
    hold = action == "HOLD"
    return QuarantineCommand(
        command_id=command_id(lot_id, ordinal, action),
        action=action,
        lot_id=lot_id,
        part_number=event["part_number"],
        product_line=event["product_line"],
        site=event["site"],
        reason=reason,
        trigger_event_id=event["event_id"],
        trigger_event_type=event["event_type"],
        trigger_source_record_id=event["source_record_id"],
        issued_at=event["recorded_at"],
        target_stock_type=postings.hold_stock_type if hold else postings.release_stock_type,
        sap_movement_type=(postings.hold_movement_type if hold else postings.release_movement_type),
    )


def _assess(event: QualityEvent, rules: QuarantineRules) -> _Effect | None:
    """HOLD or RELEASE of the event's record reason, or None for events quarantine ignores.

    Result records (inspection, lab, environmental) release when a later version of the same
    record no longer fails: a correction, or a cancelled result.
    """
    event_type = event["event_type"]
    body = event["payload"][1]
    record = event["source_record_id"]
    status = event["status"]
    if event_type == "nonconformance":
        nc = rules.nonconformance
        disposition = term_key(body.get("disposition") or "")
        if status in nc.releasing_dispositions.get(disposition, frozenset()):
            return _Effect(
                "RELEASE", f"{record} disposition {disposition} releases the lot", disposition=True
            )
        if status in nc.release_statuses:
            return _Effect("RELEASE", f"{record} nonconformance {status}")
        if status in nc.hold_statuses:
            severity = event["severity"] or "unclassified"
            return _Effect(
                "HOLD", f"{record} {severity} nonconformance: {body.get('defect_code', '')}"
            )
        return None
    if event_type == "inspection_result":
        result = str(body.get("result", ""))
        if status != "cancelled" and term_key(result) in rules.inspection_result.reject_results:
            return _Effect(
                "HOLD", f"{record} inspection reject ({result}): {body.get('characteristic')}"
            )
        return _Effect("RELEASE", f"{record} inspection result now {result} ({status})")
    if event_type == "lab_result":
        result = str(body.get("result_status", ""))
        if status != "cancelled" and term_key(result) in rules.lab_result.hold_result_statuses:
            return _Effect(
                "HOLD",
                f"{record} lab result {result}: {body.get('analyte')} ({body.get('test_code')})",
            )
        return _Effect("RELEASE", f"{record} lab result now {result} ({status})")
    if event_type == "environmental_reading":
        if status != "cancelled" and _beyond_action_limit(body, rules.environmental_reading):
            return _Effect(
                "HOLD",
                f"{record} {body.get('parameter')} {body.get('value')} {body.get('unit')} "
                f"beyond action limit {body.get('action_limit')} at {body.get('location_id')}",
            )
        return _Effect("RELEASE", f"{record} reading now within its action limit ({status})")
    if event_type == "recall":
        if status in rules.recall.release_statuses:
            return _Effect("RELEASE", f"{record} recall {body.get('recall_number')} {status}")
        return _Effect(
            "HOLD",
            f"{record} {body.get('classification')} recall {body.get('recall_number')}: "
            f"{body.get('reason')}",
        )
    return None


def _beyond_action_limit(body: Mapping[str, Any], rules: EnvironmentalRules) -> bool:
    value, limit = _decimal(body.get("value")), _decimal(body.get("action_limit"))
    if value is None or limit is None:
        return False
    if term_key(str(body.get("parameter", ""))) in rules.below_limit_parameters:
        return value < limit
    return value >= limit


def _decimal(number: object) -> Decimal | None:
    """Payload decimals arrive as Decimal from fastavro; plain numbers from tests and fixtures."""
    if number is None:
        return None
    if isinstance(number, Decimal):
        return number
    try:
        return Decimal(str(number))
    except InvalidOperation:
        return None
