"""Root-cause correlation: quality events that share a cause within a window form one incident.

The rules live in `config/correlation_rules.toml`. The stage keeps one `IncidentState` per
root-cause key (a Faust table); its agent must route events by `root_cause_key` so that a key's
state lives on exactly one partition, and must store the state `correlate` returns before it
commits the event's offset.

Order independence: for events within one window, the incident id, members, times, severity,
product line and site come out the same for any arrival order and any duplicates, and each
incident raises exactly one alert. Only the alert's content depends on arrival: it describes the
event that opened the incident, because that is what a person was told first.

All time is event time (`occurred_at`), so a replay reproduces every output.
"""

from __future__ import annotations

import bisect
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from qmsflow.errors import ConfigurationError
from qmsflow.quality.data_dictionary import CanonicalSeverity
from qmsflow.quality.event import PAYLOAD_RECORD, QualityEvent

__all__ = [
    "ALERT_NAMESPACE",
    "INCIDENT_NAMESPACE",
    "Alert",
    "Correlation",
    "CorrelationRules",
    "IncidentRecord",
    "IncidentState",
    "IncidentStatus",
    "Outcome",
    "close_quiet",
    "correlate",
    "incident_id",
    "load_rules",
    "parse_rules",
]

IncidentStatus = Literal["open", "closed"]
#: what one event did: opened an incident (possibly closing the previous one), joined the open
#: one, was already a member, predates the incident by more than the window, or matches no rule
Outcome = Literal["opened", "joined", "duplicate", "late", "uncorrelated"]

#: namespaces of incident and alert ids (uuid5); fixed forever so ids stay stable across versions
INCIDENT_NAMESPACE = uuid.UUID("9a4e2f61-3b7c-4d85-8e0a-6c1f5b2d7e01")
ALERT_NAMESPACE = uuid.UUID("9a4e2f61-3b7c-4d85-8e0a-6c1f5b2d7e02")

_RANK: dict[CanonicalSeverity, int] = {"minor": 0, "major": 1, "critical": 2}
_CANONICAL: dict[str, CanonicalSeverity] = {severity: severity for severity in _RANK}
_KEY_FIELDS = ("lot_id", "part_number", "supplier_id", "equipment_id")
_FIELD = re.compile(rf"^(?:{'|'.join(_KEY_FIELDS)}|payload\.[a-z][a-z0-9_]*)$")


class RootCause(BaseModel):
    """Where the identifying value of one kind of root cause sits on a canonical event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(pattern=_FIELD.pattern)

    def value(self, event: QualityEvent) -> str | None:
        """The cause's identifier on the event; absent or empty is None."""
        if self.field.startswith("payload."):
            found = event["payload"][1].get(self.field.removeprefix("payload."))
        else:
            found = event.get(self.field)
        return str(found) if found not in (None, "") else None


Signal = Literal["always", "severity", "defect"]


class EventTypeRule(BaseModel):
    """The root causes of one event type, in priority order, and when an event is a signal.

    Only problems correlate: a passing lab result or a reading within limits shares a lot or a
    room with the failures, but is no evidence of their cause. `signals` says what makes an event
    of this type a problem: any event (`always`), one with a canonical severity (`severity`:
    excursions, failed calibrations) or one with a defect category (`defect`: rejects, OOS).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    root_causes: tuple[str, ...] = Field(min_length=1)
    signals: tuple[Signal, ...] = ("always",)

    def is_signal(self, event: QualityEvent) -> bool:
        """Whether this event is evidence of a problem under the rule."""
        return any(
            signal == "always"
            or (signal == "severity" and event["severity"] is not None)
            or (signal == "defect" and event.get("defect_category") is not None)
            for signal in self.signals
        )


class SeverityThresholds(BaseModel):
    """The member counts at which an incident is at least major, and at least critical."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    major_at: int = Field(ge=1)
    critical_at: int = Field(ge=1)

    @model_validator(mode="after")
    def _critical_after_major(self) -> SeverityThresholds:
        if self.critical_at <= self.major_at:
            raise ValueError(
                f"critical_at ({self.critical_at}) must be greater than major_at ({self.major_at})"
            )
        return self

    def level(self, member_count: int) -> CanonicalSeverity:
        """The severity a member count alone reaches."""
        if member_count >= self.critical_at:
            return "critical"
        return "major" if member_count >= self.major_at else "minor"


class AlertRule(BaseModel):
    """How an alert's one-line summary is written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary_fields: tuple[str, ...] = ()


class CorrelationRules(BaseModel):
    """The correlation rules: root causes per event type, window, quiet period, escalation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=1)
    window: timedelta = Field(gt=timedelta(0))
    quiet_period: timedelta
    severity: SeverityThresholds
    alert: AlertRule = AlertRule()
    root_cause: dict[str, RootCause]
    event_type: dict[str, EventTypeRule]

    @model_validator(mode="after")
    def _consistent(self) -> CorrelationRules:
        # A shorter quiet period would close an incident before late members of its own window
        # arrive, and the outcome would depend on arrival order.
        if self.quiet_period < self.window:
            raise ValueError(
                f"quiet_period ({self.quiet_period}) must be at least the window ({self.window})"
            )
        for kind in self.root_cause:
            if not re.fullmatch(r"[a-z][a-z_]*", kind):
                raise ValueError(f"root_cause.{kind}: a kind is lower-case letters and _")
        for event_type, rule in self.event_type.items():
            if event_type not in PAYLOAD_RECORD:
                raise ValueError(
                    f"event_type.{event_type} is not an event type; expected one of "
                    f"{sorted(PAYLOAD_RECORD)}"
                )
            for kind in rule.root_causes:
                if kind not in self.root_cause:
                    raise ValueError(
                        f"event_type.{event_type} names root cause {kind!r}, which is not "
                        f"declared; declared: {sorted(self.root_cause)}"
                    )
        return self

    def root_cause_keys(self, event: QualityEvent) -> tuple[str, ...]:
        """Every root-cause key the event carries, in rule priority; empty when no rule matches."""
        rule = self.event_type.get(event["event_type"])
        if rule is None or not rule.is_signal(event):
            return ()
        keys = []
        for kind in rule.root_causes:
            value = self.root_cause[kind].value(event)
            if value is not None:
                keys.append(f"{kind}:{value}")
        return tuple(keys)

    def root_cause_key(self, event: QualityEvent) -> str | None:
        """The event's root cause: its first key by priority, so it joins exactly one incident."""
        keys = self.root_cause_keys(event)
        return keys[0] if keys else None


def parse_rules(document: Mapping[str, Any]) -> CorrelationRules:
    """Validate a parsed rules document."""
    try:
        return CorrelationRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"config/correlation_rules.toml is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_rules() -> CorrelationRules:
    """The rules shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/correlation_rules.toml").read_text("utf-8")
    return parse_rules(tomllib.loads(text))


def incident_id(root_cause_key: str, ordinal: int) -> str:
    """Deterministic id of the ordinal-th incident on a root cause, whatever the arrival order."""
    return str(uuid.uuid5(INCIDENT_NAMESPACE, f"{root_cause_key}#{ordinal}"))


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """The full current view of an incident, as `quality.incidents.v1` carries it."""

    incident_id: str
    root_cause_key: str
    ordinal: int
    status: IncidentStatus
    severity: CanonicalSeverity
    opened_at: datetime
    last_at: datetime
    member_count: int
    member_event_ids: tuple[str, ...]
    suppressed_alerts: int
    event_types: tuple[str, ...]
    source_systems: tuple[str, ...]
    product_line: str
    site: str
    revision: int

    def to_avro(self) -> dict[str, Any]:
        """The record for the `quality.incidents.v1-value` contract."""
        return {
            "incident_id": self.incident_id,
            "root_cause_key": self.root_cause_key,
            "ordinal": self.ordinal,
            "status": self.status,
            "severity": self.severity,
            "opened_at": self.opened_at,
            "last_at": self.last_at,
            "member_count": self.member_count,
            "member_event_ids": list(self.member_event_ids),
            "suppressed_alerts": self.suppressed_alerts,
            "event_types": list(self.event_types),
            "source_systems": list(self.source_systems),
            "product_line": self.product_line,
            "site": self.site,
            "revision": self.revision,
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """The one alert an incident raises when it opens, as `quality.alerts.v1` carries it."""

    alert_id: str
    incident_id: str
    root_cause_key: str
    severity: CanonicalSeverity
    raised_at: datetime
    product_line: str
    site: str
    summary: str
    first_event_id: str
    first_event_type: str
    source_system: str

    def to_avro(self) -> dict[str, Any]:
        """The record for the `quality.alerts.v1-value` contract."""
        return {
            "alert_id": self.alert_id,
            "incident_id": self.incident_id,
            "root_cause_key": self.root_cause_key,
            "severity": self.severity,
            "raised_at": self.raised_at,
            "product_line": self.product_line,
            "site": self.site,
            "summary": self.summary,
            "first_event_id": self.first_event_id,
            "first_event_type": self.first_event_type,
            "source_system": self.source_system,
        }


@dataclass(frozen=True, slots=True)
class IncidentState:
    """The latest incident on one root-cause key: the value of the correlation table.

    Every field is a function of the member set (and the ordinal), never of arrival order:
    `anchor_event_id` is the earliest member by (occurred_at, event_id), whose product line and
    site the incident reports.
    """

    root_cause_key: str
    ordinal: int
    status: IncidentStatus
    opened_at: datetime
    last_at: datetime
    member_event_ids: tuple[str, ...]
    worst_member_severity: CanonicalSeverity | None
    severity: CanonicalSeverity
    product_line: str
    site: str
    anchor_event_id: str
    event_types: tuple[str, ...]
    source_systems: tuple[str, ...]

    @property
    def incident_id(self) -> str:
        """The incident's deterministic id."""
        return incident_id(self.root_cause_key, self.ordinal)

    @property
    def member_count(self) -> int:
        """How many distinct events belong to the incident."""
        return len(self.member_event_ids)

    def has_member(self, event_id: str) -> bool:
        """Whether the event already belongs to the incident."""
        at = bisect.bisect_left(self.member_event_ids, event_id)
        return at < len(self.member_event_ids) and self.member_event_ids[at] == event_id

    def closed(self) -> IncidentState:
        """The same incident, closed."""
        return replace(self, status="closed")

    def record(self) -> IncidentRecord:
        """The incident's full current view; its revision is the member count."""
        return IncidentRecord(
            incident_id=self.incident_id,
            root_cause_key=self.root_cause_key,
            ordinal=self.ordinal,
            status=self.status,
            severity=self.severity,
            opened_at=self.opened_at,
            last_at=self.last_at,
            member_count=self.member_count,
            member_event_ids=self.member_event_ids,
            suppressed_alerts=self.member_count - 1,
            event_types=self.event_types,
            source_systems=self.source_systems,
            product_line=self.product_line,
            site=self.site,
            revision=self.member_count,
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict for the table (times as ISO 8601 strings)."""
        dumped: dict[str, Any] = _STATE_ADAPTER.dump_python(self, mode="json")
        return dumped

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IncidentState:
        """Rebuild a state from `to_dict` output; a malformed dict raises pydantic's error."""
        return _STATE_ADAPTER.validate_python(dict(data))


_STATE_ADAPTER = TypeAdapter(IncidentState)


class Correlation(NamedTuple):
    """What one event did: the state to store, and the records to publish in this order."""

    outcome: Outcome
    state: IncidentState | None
    incidents: tuple[IncidentRecord, ...]
    alert: Alert | None


def correlate(
    state: IncidentState | None, event: QualityEvent, rules: CorrelationRules
) -> Correlation:
    """Attach an event to the incident on its root cause, opening one when none is open.

    `state` is the stored state for the event's `rules.root_cause_key` (None when there is none);
    a state for another key is a ValueError. An event after the quiet period closes the old
    incident (published closed) and opens the next ordinal. A member of a closed incident that
    arrives late but within its quiet period still joins it; one earlier than `rules.window`
    before the incident opened is `late` and changes nothing.
    """
    occurred_at = event["occurred_at"]
    if occurred_at.tzinfo is None:
        raise ValueError(f"event {event['event_id']}: occurred_at {occurred_at} has no time zone")
    key = rules.root_cause_key(event)
    if key is None:
        return Correlation("uncorrelated", state, (), None)
    if state is None:
        return _open(key, 1, event, rules, ())
    if state.root_cause_key != key:
        raise ValueError(
            f"event {event['event_id']} has root cause {key!r} but the state given is for "
            f"{state.root_cause_key!r}; route events by root_cause_key"
        )
    if state.has_member(event["event_id"]):
        return Correlation("duplicate", state, (), None)
    if occurred_at > state.last_at + rules.quiet_period:
        closing = () if state.status == "closed" else (state.closed().record(),)
        return _open(key, state.ordinal + 1, event, rules, closing)
    if occurred_at < state.opened_at - rules.window:
        return Correlation("late", state, (), None)
    joined = _admit(state, event, rules)
    return Correlation("joined", joined, (joined.record(),), None)


def close_quiet(
    state: IncidentState, watermark: datetime, rules: CorrelationRules
) -> IncidentRecord | None:
    """The closed view of an open incident once the event-time watermark passes its quiet period.

    None when the incident is already closed or not yet quiet. When a record is returned, the
    caller publishes it and stores `state.closed()`.
    """
    if state.status == "open" and watermark > state.last_at + rules.quiet_period:
        return state.closed().record()
    return None


def _open(
    key: str,
    ordinal: int,
    event: QualityEvent,
    rules: CorrelationRules,
    closing: tuple[IncidentRecord, ...],
) -> Correlation:
    worst = _severity(event)
    state = IncidentState(
        root_cause_key=key,
        ordinal=ordinal,
        status="open",
        opened_at=event["occurred_at"],
        last_at=event["occurred_at"],
        member_event_ids=(event["event_id"],),
        worst_member_severity=worst,
        severity=_worst(worst, rules.severity.level(1)),
        product_line=event["product_line"],
        site=event["site"],
        anchor_event_id=event["event_id"],
        event_types=(event["event_type"],),
        source_systems=(event["source_system"],),
    )
    alert = Alert(
        alert_id=str(uuid.uuid5(ALERT_NAMESPACE, state.incident_id)),
        incident_id=state.incident_id,
        root_cause_key=key,
        severity=state.severity,
        raised_at=event["occurred_at"],
        product_line=event["product_line"],
        site=event["site"],
        summary=_summary(event, key, rules),
        first_event_id=event["event_id"],
        first_event_type=event["event_type"],
        source_system=event["source_system"],
    )
    return Correlation("opened", state, (*closing, state.record()), alert)


def _admit(state: IncidentState, event: QualityEvent, rules: CorrelationRules) -> IncidentState:
    occurred_at, event_id = event["occurred_at"], event["event_id"]
    members = state.member_event_ids
    at = bisect.bisect_left(members, event_id)
    members = (*members[:at], event_id, *members[at:])
    severity = _severity(event)
    worst = state.worst_member_severity
    if severity is not None:
        worst = _worst(worst, severity)
    earliest = (occurred_at, event_id) < (state.opened_at, state.anchor_event_id)
    return replace(
        state,
        opened_at=min(state.opened_at, occurred_at),
        last_at=max(state.last_at, occurred_at),
        member_event_ids=members,
        worst_member_severity=worst,
        # Never de-escalate, even if the thresholds were raised since the incident opened.
        severity=_worst(_worst(worst, rules.severity.level(len(members))), state.severity),
        product_line=event["product_line"] if earliest else state.product_line,
        site=event["site"] if earliest else state.site,
        anchor_event_id=event_id if earliest else state.anchor_event_id,
        event_types=_with(state.event_types, event["event_type"]),
        source_systems=_with(state.source_systems, event["source_system"]),
    )


def _severity(event: QualityEvent) -> CanonicalSeverity | None:
    severity = event["severity"]
    if severity is None:
        return None
    try:
        return _CANONICAL[severity]
    except KeyError:
        raise ValueError(
            f"event {event['event_id']}: severity {severity!r} is not canonical; expected one "
            f"of {sorted(_RANK)} or None"
        ) from None


def _worst(a: CanonicalSeverity | None, b: CanonicalSeverity) -> CanonicalSeverity:
    return b if a is None or _RANK[b] > _RANK[a] else a


def _with(values: tuple[str, ...], value: str) -> tuple[str, ...]:
    return values if value in values else tuple(sorted((*values, value)))


def _summary(event: QualityEvent, key: str, rules: CorrelationRules) -> str:
    record = event["payload"][1]
    headline = next(
        (
            str(record[name]).strip()
            for name in rules.alert.summary_fields
            if record.get(name) not in (None, "")
        ),
        None,
    )
    line = f"{event['source_system']} {event['event_type']} {event['source_record_id']} on {key}"
    return f"{line}: {headline}" if headline else line
