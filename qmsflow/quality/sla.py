"""Service levels per interface: an event's output must follow its `recorded_at` within a limit.

Rules are data (`config/sla.toml`). The agents call `check()` where an output is produced (the
quality agent for quarantine commands, the correlate agent for incidents) with the moment of
production; a miss yields an `SlaBreach` to publish on `ops.sla-breaches.v1`. Its `breach_id`
derives from (rule, event, output), so a replayed input republishes the same breach and the
sink's primary key keeps one row. Elapsed time is wall-clock at production, so a replay of old
events reports them late again, under the same ids.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qmsflow.errors import ConfigurationError
from qmsflow.quality.event import QualityEvent

SlaOutput = Literal["quarantine_command", "incident"]

#: namespace of breach ids (uuid5): a fixed value, so ids are stable across releases
BREACH_NAMESPACE = uuid.UUID("0b6f3c52-7a1e-5d8e-9a51-51a0c0de0001")


class SlaRule(BaseModel):
    """One interface's service level: events of a type, their output, the limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    interface: str
    event_type: str
    output: SlaOutput
    within_seconds: float = Field(gt=0)
    actions: tuple[str, ...] = ()  # quarantine commands only: the actions measured; () = all
    defect_categories: tuple[str, ...] = ()  # the events' defect categories measured; () = all

    @property
    def limit(self) -> timedelta:
        """The longest allowed time from `recorded_at` to the output."""
        return timedelta(seconds=self.within_seconds)

    def applies_to(self, event: QualityEvent, output: SlaOutput, action: str | None) -> bool:
        """Whether this rule measures `output` produced for `event` (with `action`, if any)."""
        if output != self.output or event["event_type"] != self.event_type:
            return False
        if self.defect_categories and event.get("defect_category") not in self.defect_categories:
            return False
        return not self.actions or action in self.actions


class SlaRules(BaseModel):
    """All service levels; names are unique."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    sla: tuple[SlaRule, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> SlaRules:
        names = [rule.name for rule in self.sla]
        if len(names) != len(set(names)):
            raise ValueError(f"SLA names must be unique, got {names}")
        return self

    def matching(
        self, event: QualityEvent, output: SlaOutput, action: str | None = None
    ) -> tuple[SlaRule, ...]:
        """The rules that measure this output of this event."""
        return tuple(rule for rule in self.sla if rule.applies_to(event, output, action))


@dataclass(frozen=True, slots=True)
class SlaBreach:
    """An output produced later than its interface's limit, as `ops.sla-breaches.v1` carries it."""

    breach_id: str
    sla: str
    interface: str
    event_id: str
    event_type: str
    source_system: str
    source_record_id: str
    product_line: str
    site: str
    output: SlaOutput
    output_id: str
    recorded_at: datetime
    produced_at: datetime
    elapsed_ms: int
    limit_ms: int
    trace_id: str | None
    correlation_id: str | None
    synthetic: bool

    def to_avro(self) -> dict[str, Any]:
        """The record for subject `ops.sla-breaches.v1-value`."""
        return {
            "breach_id": self.breach_id,
            "sla": self.sla,
            "interface": self.interface,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "source_system": self.source_system,
            "source_record_id": self.source_record_id,
            "product_line": self.product_line,
            "site": self.site,
            "output": self.output,
            "output_id": self.output_id,
            "recorded_at": self.recorded_at,
            "produced_at": self.produced_at,
            "elapsed_ms": self.elapsed_ms,
            "limit_ms": self.limit_ms,
            "trace_id": self.trace_id,
            "correlation_id": self.correlation_id,
            "synthetic": self.synthetic,
        }


@dataclass(frozen=True, slots=True)
class SlaVerdict:
    """One measurement: the rule, how long the output took, and the breach when it was late."""

    rule: SlaRule
    elapsed: timedelta
    breach: SlaBreach | None

    @property
    def met(self) -> bool:
        """Whether the output was produced within the limit."""
        return self.breach is None


def breach_id(rule_name: str, event_id: str, output_id: str) -> str:
    """Deterministic id of a breach: one per rule, event and output, however often replayed."""
    return str(uuid.uuid5(BREACH_NAMESPACE, f"{rule_name}/{event_id}/{output_id}"))


def check(
    rules: SlaRules,
    event: QualityEvent,
    output: SlaOutput,
    output_id: str,
    produced_at: datetime,
    *,
    action: str | None = None,
) -> list[SlaVerdict]:
    """Measure `output` (id `output_id`) of `event`, produced at `produced_at`, by every rule.

    Elapsed time is `produced_at - recorded_at`; a negative one (a source clock ahead of ours)
    counts as zero. Exactly the limit is met.
    """
    verdicts = []
    for rule in rules.matching(event, output, action):
        elapsed = max(produced_at - event["recorded_at"], timedelta(0))
        breach = None
        if elapsed > rule.limit:
            breach = SlaBreach(
                breach_id=breach_id(rule.name, event["event_id"], output_id),
                sla=rule.name,
                interface=rule.interface,
                event_id=event["event_id"],
                event_type=event["event_type"],
                source_system=event["source_system"],
                source_record_id=event["source_record_id"],
                product_line=event["product_line"],
                site=event["site"],
                output=output,
                output_id=output_id,
                recorded_at=event["recorded_at"],
                produced_at=produced_at,
                elapsed_ms=_millis(elapsed),
                limit_ms=_millis(rule.limit),
                trace_id=event.get("trace_id"),
                correlation_id=event.get("correlation_id"),
                synthetic=bool(event.get("synthetic", False)),
            )
        verdicts.append(SlaVerdict(rule, elapsed, breach))
    return verdicts


def _millis(span: timedelta) -> int:
    return span // timedelta(milliseconds=1)


def parse_sla_rules(document: Mapping[str, Any], *, source: str = "config/sla.toml") -> SlaRules:
    """Validate a parsed TOML document, or raise ConfigurationError naming what is wrong."""
    try:
        return SlaRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{source} is invalid: {exc}") from exc


def load_sla_rules() -> SlaRules:
    """The service levels shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/sla.toml").read_text("utf-8")
    return parse_sla_rules(tomllib.loads(text))
