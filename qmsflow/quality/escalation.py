"""Escalation: past-due CAPAs, audit-finding responses and SCARs, level by level, in event time.

Two steps per record, both pure:

1. `track(state, event)` keeps the record's due date and whether it is still open;
2. `escalate(state, watermark, rules)` emits every level whose threshold the watermark has
   reached and that was not emitted before.

The watermark is event time (`watermark_after`: the newest `recorded_at` seen on the partition,
which the agent caps at the wall clock plus the allowed skew, qmsflow/quality/event_time.py),
never the wall clock itself, and escalation ids derive from (record, level): a replay of the same
partition emits exactly the same escalations, and no level is ever emitted twice for a record,
whatever its due date does later. Any due date Avro accepts is handled (`level_reached_at`).
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from qmsflow.errors import ConfigurationError
from qmsflow.quality.event import QualityEvent

__all__ = [
    "DUE_DATE_FIELD",
    "ESCALATION_NAMESPACE",
    "NEVER",
    "Escalation",
    "EscalationLevel",
    "EscalationRules",
    "TrackedRecord",
    "escalate",
    "escalation_id",
    "level_reached_at",
    "load_escalation_rules",
    "parse_escalation_rules",
    "track",
    "tracked_key",
    "watermark_after",
]

#: namespace of escalation ids (uuid5); fixed forever so ids stay stable across versions
ESCALATION_NAMESPACE = uuid.UUID("9d4e7a21-6b3f-4f8c-a0d5-2c7e1b8f6a31")

#: the payload field holding each tracked type's due date (a schema fact, not a policy)
DUE_DATE_FIELD: Mapping[str, str] = {
    "capa": "due_date",
    "audit_finding": "response_due_date",
    "supplier_corrective_action": "response_due_date",
}

_CLOSED = frozenset({"closed", "cancelled"})
_RULES_FILE = "config/escalation_rules.toml"


#: stands for "never": a level whose day lies past the last representable date (a due date of
#: 9999-12-31 is valid Avro); no watermark reaches it, as watermarks never run far past now
NEVER = datetime.max.replace(tzinfo=UTC)


def level_reached_at(due_date: date, after_days: int) -> datetime:
    """The start (UTC) of the day `after_days` after `due_date`; `NEVER` past year 9999.

    Any date Avro accepts is valid input: date arithmetic past `date.max` would raise
    OverflowError on one CAPA and, before records were dead-lettered, stop its partition.
    """
    if after_days > (date.max - due_date).days:
        return NEVER
    return datetime.combine(due_date + timedelta(days=after_days), time.min, UTC)


# --------------------------------------------------------------------------- rules


class EscalationLevel(BaseModel):
    """One rung: reached `after_days` after the start of the due date, notifying a role."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: PositiveInt
    after_days: NonNegativeInt
    recipient_role: str
    recipient_roles_by_type: dict[str, str] = {}

    def recipient_for(self, event_type: str) -> str:
        """The role to notify for a record of this type."""
        return self.recipient_roles_by_type.get(event_type, self.recipient_role)

    def reached_at(self, due_date: date) -> datetime:
        """The event time from which this level applies to a record due on `due_date` (UTC)."""
        return level_reached_at(due_date, self.after_days)


class EscalationRules(BaseModel):
    """The validated contents of `config/escalation_rules.toml`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    levels: tuple[EscalationLevel, ...]

    @field_validator("levels")
    @classmethod
    def _a_ladder(cls, levels: tuple[EscalationLevel, ...]) -> tuple[EscalationLevel, ...]:
        numbers = [rung.level for rung in levels]
        if numbers != list(range(1, len(levels) + 1)):
            raise ValueError(f"levels must be numbered 1..n in order, got {numbers}")
        days = [rung.after_days for rung in levels]
        if days != sorted(days):
            raise ValueError(f"after_days must not decrease from level to level, got {days}")
        return levels


def parse_escalation_rules(document: Mapping[str, Any]) -> EscalationRules:
    """Validate a parsed rules document; an invalid one is a ConfigurationError saying why."""
    try:
        return EscalationRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_escalation_rules() -> EscalationRules:
    """The escalation rules shipped with the package."""
    text = resources.files("qmsflow").joinpath(_RULES_FILE).read_text("utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is not valid TOML: {exc}") from exc
    return parse_escalation_rules(document)


# --------------------------------------------------------------------------- state


def tracked_key(event: QualityEvent) -> str:
    """The key of a tracked record: source system and record number, e.g. `QMS:CAPA-77`."""
    return f"{event['source_system']}:{event['source_record_id']}"


def watermark_after(watermark: datetime | None, event: QualityEvent) -> datetime:
    """The partition's event-time watermark after an event: the newest recorded_at seen."""
    recorded_at = event["recorded_at"]
    return recorded_at if watermark is None or recorded_at > watermark else watermark


@dataclass(frozen=True)
class TrackedRecord:
    """What escalation remembers of one record: due date, open or not, levels already emitted."""

    record_key: str
    event_type: str
    source_record_id: str
    due_date: date
    open: bool
    product_line: str
    site: str
    title: str
    last_recorded_at: datetime
    emitted_levels: frozenset[int] = field(default_factory=frozenset)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for a Faust table (dates and times as ISO 8601)."""
        return {
            "record_key": self.record_key,
            "event_type": self.event_type,
            "source_record_id": self.source_record_id,
            "due_date": self.due_date.isoformat(),
            "open": self.open,
            "product_line": self.product_line,
            "site": self.site,
            "title": self.title,
            "last_recorded_at": self.last_recorded_at.isoformat(),
            "emitted_levels": sorted(self.emitted_levels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackedRecord:
        """The state `to_dict` wrote."""
        return cls(
            record_key=data["record_key"],
            event_type=data["event_type"],
            source_record_id=data["source_record_id"],
            due_date=date.fromisoformat(data["due_date"]),
            open=bool(data["open"]),
            product_line=data["product_line"],
            site=data["site"],
            title=data["title"],
            last_recorded_at=datetime.fromisoformat(data["last_recorded_at"]),
            emitted_levels=frozenset(int(level) for level in data["emitted_levels"]),
        )


@dataclass(frozen=True)
class Escalation:
    """One level reached by one record, as published on `capa.escalations.v1`."""

    escalation_id: str
    record_key: str
    event_type: str
    source_record_id: str
    level: int
    due_date: date
    overdue_days: int
    escalated_at: datetime
    recipient_role: str
    product_line: str
    site: str
    title: str

    def to_avro(self) -> dict[str, Any]:
        """The record for subject `capa.escalations.v1-value`."""
        return {
            "escalation_id": self.escalation_id,
            "record_key": self.record_key,
            "event_type": self.event_type,
            "source_record_id": self.source_record_id,
            "level": self.level,
            "due_date": self.due_date,
            "overdue_days": self.overdue_days,
            "escalated_at": self.escalated_at,
            "recipient_role": self.recipient_role,
            "product_line": self.product_line,
            "site": self.site,
            "title": self.title,
        }


def escalation_id(record_key: str, level: int) -> str:
    """Deterministic id of one record's escalation to one level."""
    return str(uuid.uuid5(ESCALATION_NAMESPACE, f"{record_key}#L{level}"))


# --------------------------------------------------------------------------- deciding


def track(state: TrackedRecord | None, event: QualityEvent) -> TrackedRecord | None:
    """Fold one event into its record's state; events of untracked types leave it unchanged.

    A closed or cancelled status stops escalation (a reopened record resumes it); a new due date
    re-bases the levels not yet emitted. An event older than one already applied is ignored.
    """
    due_field = DUE_DATE_FIELD.get(event["event_type"])
    if due_field is None:
        return state
    if state is not None and event["recorded_at"] < state.last_recorded_at:
        return state
    body = event["payload"][1]
    due = body[due_field]
    return TrackedRecord(
        record_key=tracked_key(event),
        event_type=event["event_type"],
        source_record_id=event["source_record_id"],
        due_date=due.date() if isinstance(due, datetime) else due,
        open=event["status"] not in _CLOSED,
        product_line=event["product_line"],
        site=event["site"],
        title=_title(event["event_type"], event["source_record_id"], body),
        last_recorded_at=event["recorded_at"],
        emitted_levels=state.emitted_levels if state is not None else frozenset(),
    )


def escalate(
    state: TrackedRecord | None, watermark: datetime, rules: EscalationRules
) -> tuple[TrackedRecord | None, list[Escalation]]:
    """Every level the record reaches by event time `watermark` and has not yet emitted.

    `watermark` must be tz-aware; it becomes `escalated_at`. Levels are emitted in order, several
    at once when the watermark jumps past more than one threshold.
    """
    if watermark.tzinfo is None:
        raise ValueError(f"watermark: expected a tz-aware UTC datetime, got {watermark!r}")
    if state is None or not state.open:
        return state, []
    reached = [
        rung
        for rung in rules.levels
        if rung.level not in state.emitted_levels and watermark >= rung.reached_at(state.due_date)
    ]
    if not reached:
        return state, []
    overdue_days = (watermark.astimezone(UTC).date() - state.due_date).days
    escalations = [
        Escalation(
            escalation_id=escalation_id(state.record_key, rung.level),
            record_key=state.record_key,
            event_type=state.event_type,
            source_record_id=state.source_record_id,
            level=rung.level,
            due_date=state.due_date,
            overdue_days=overdue_days,
            escalated_at=watermark,
            recipient_role=rung.recipient_for(state.event_type),
            product_line=state.product_line,
            site=state.site,
            title=state.title,
        )
        for rung in reached
    ]
    emitted = state.emitted_levels | {rung.level for rung in reached}
    return replace(state, emitted_levels=emitted), escalations


def _title(event_type: str, record: str, body: Mapping[str, Any]) -> str:
    """A one-line description for the notification; audit findings and SCARs have no title."""
    if event_type == "capa":
        return str(body.get("title") or record)
    if event_type == "audit_finding":
        return (
            f"{body.get('classification')} audit finding in {body.get('audit_id')}: "
            f"{body.get('requirement_ref')}"
        )
    return f"{body.get('scar_number') or record}: {body.get('issue_description')}"
