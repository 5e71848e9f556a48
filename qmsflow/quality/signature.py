"""Electronic-signature checks: whether the signer was allowed, and trained, to sign a record.

21 CFR 11.10(g) asks for authority checks and 11.50 for a manifestation with the signer's printed
name, time and meaning. `check_signature` compares an event's `signature` with the signer's
employee golden record (`md.employee.v1`) and the rules in `config/signature_rules.toml`:

1. the signer is known and active;
2. the printed name on the signature is the employee's printed name;
3. one of the employee's roles may sign this event type with this meaning;
4. every training the rule requires was current at `signed_at`
   (completed_at <= signed_at < expires_at, or no expiry).

It is pure and only judges: the agent flags an invalid signature on the event, never drops it.
Being active is judged on the employee record as known now (the golden record's SCD-2 history
holds earlier states); training is judged at signing time from the dated transcript.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator

from qmsflow.errors import ConfigurationError
from qmsflow.quality.data_dictionary import term_key
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.golden_record import EmployeeGolden, Training

__all__ = [
    "SignatureRules",
    "SignatureStatus",
    "SignatureVerdict",
    "SigningRule",
    "check_signature",
    "load_signature_rules",
    "parse_signature_rules",
]

SignatureStatus = Literal["valid", "invalid", "not_applicable"]

_RULES_FILE = "config/signature_rules.toml"


def _lookup_forms(words: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(term_key(word) for word in words)


#: words matched in lookup form ("QA Approver" = qa_approver)
Words = Annotated[tuple[str, ...], AfterValidator(_lookup_forms)]


class _Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SigningRule(_Rules):
    """Who may sign one event type with some meanings, and what training they need."""

    event_type: str
    meanings: Words
    roles: Words
    trainings: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> SigningRule:
        if not self.meanings or not self.roles:
            raise ValueError(f"signing rule for {self.event_type}: meanings and roles are needed")
        return self


class SignatureRules(_Rules):
    """The validated contents of `config/signature_rules.toml`."""

    version: int
    signing: tuple[SigningRule, ...]

    @model_validator(mode="after")
    def _one_rule_per_pair(self) -> SignatureRules:
        seen: set[tuple[str, str]] = set()
        for rule in self.signing:
            for meaning in rule.meanings:
                if (rule.event_type, meaning) in seen:
                    raise ValueError(
                        f"{rule.event_type} signed with meaning {meaning!r} has two rules"
                    )
                seen.add((rule.event_type, meaning))
        return self

    def rule_for(self, event_type: str, meaning: str) -> SigningRule | None:
        """The rule for signing `event_type` with `meaning`, or None when nothing allows it."""
        wanted = term_key(meaning)
        for rule in self.signing:
            if rule.event_type == event_type and wanted in rule.meanings:
                return rule
        return None


def parse_signature_rules(document: Mapping[str, Any]) -> SignatureRules:
    """Validate a parsed rules document; an invalid one is a ConfigurationError saying why."""
    try:
        return SignatureRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_signature_rules() -> SignatureRules:
    """The signature rules shipped with the package."""
    text = resources.files("qmsflow").joinpath(_RULES_FILE).read_text("utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is not valid TOML: {exc}") from exc
    return parse_signature_rules(document)


@dataclass(frozen=True, slots=True)
class SignatureVerdict:
    """The judgement on one event's signature; `problems` say what is wrong, in words."""

    status: SignatureStatus
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        """Whether the event carries a signature that passed every check."""
        return self.status == "valid"

    @property
    def applicable(self) -> bool:
        """Whether the event carries a signature at all."""
        return self.status != "not_applicable"


def check_signature(
    event: QualityEvent, employee: EmployeeGolden | None, rules: SignatureRules
) -> SignatureVerdict:
    """Judge the event's signature against the signer's employee record and the rules.

    `employee` is the golden record of `signature["signer_id"]`, or None when master data does
    not know the signer. An unsigned event is `not_applicable`. Every failed check is named.
    """
    signature = event["signature"]
    if signature is None:
        return SignatureVerdict("not_applicable")
    signer = str(signature.get("signer_id") or "")
    meaning = str(signature.get("meaning") or "")
    signed_at = _utc(signature.get("signed_at"))
    problems: list[str] = []
    if not signer:
        problems.append("signature names no signer")
    if signed_at is None:
        problems.append(f"signature of {signer or 'an unknown signer'} has no signing time")
    if not meaning:
        problems.append(f"signature of {signer or 'an unknown signer'} has no meaning (§11.50)")
    if employee is None:
        problems.append(f"signer {signer} is not a known employee")
        return SignatureVerdict("invalid", tuple(problems))
    if employee.employee_id != signer:
        raise ValueError(
            f"check_signature: employee record {employee.employee_id!r} given for signer {signer!r}"
        )
    if not employee.active:
        problems.append(f"signer {signer} is not an active employee")
    printed = str(signature.get("printed_name") or "")
    if printed.strip().casefold() != employee.printed_name.strip().casefold():
        problems.append(
            f"signature shows printed name {printed!r}, but signer {signer} is "
            f"{employee.printed_name!r} (§11.50)"
        )
    event_type = event["event_type"]
    rule = rules.rule_for(event_type, meaning) if meaning else None
    if meaning and rule is None:
        problems.append(f"no rule allows signing a {event_type} with meaning {meaning!r}")
    if rule is not None:
        held = {term_key(role) for role in employee.roles}
        if not held.intersection(rule.roles):
            problems.append(
                f"signer {signer} holds none of the roles allowed to sign a {event_type} "
                f"for {term_key(meaning)} ({', '.join(rule.roles)}); has "
                f"{', '.join(sorted(held)) or 'no roles'}"
            )
        if signed_at is not None:
            problems.extend(
                problem
                for course in rule.trainings
                if (problem := _training_problem(signer, course, employee.trainings, signed_at))
            )
    return SignatureVerdict("invalid" if problems else "valid", tuple(problems))


def _training_problem(
    signer: str, course: str, trainings: tuple[Training, ...], signed_at: datetime
) -> str | None:
    """Why the course was not current at `signed_at`, or None when one completion covers it."""
    records = [t for t in trainings if t.course == course]
    if not records:
        return f"signer {signer} has no training record for {course}"
    if any(_covers(t, signed_at) for t in records):
        return None
    at = _moment(signed_at)
    before = [t for t in records if _utc_required(t.completed_at) <= signed_at]
    if before:
        latest = max(before, key=lambda t: _utc_required(t.completed_at))
        expired = "" if latest.expires_at is None else _moment(latest.expires_at)
        return f"signer {signer} was not trained on {course} at {at} (expired {expired})"
    first = min(records, key=lambda t: _utc_required(t.completed_at))
    return (
        f"signer {signer} was not trained on {course} at {at} "
        f"(completed later, {_moment(first.completed_at)})"
    )


def _covers(training: Training, signed_at: datetime) -> bool:
    if _utc_required(training.completed_at) > signed_at:
        return False
    return training.expires_at is None or signed_at < _utc_required(training.expires_at)


def _utc(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _utc_required(value)
    return None


def _utc_required(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _moment(value: datetime) -> str:
    """2026-10-01 for a midnight, else 2026-11-02T10:00Z (UTC)."""
    utc = _utc_required(value)
    if utc.time() == time(0, 0):
        return utc.date().isoformat()
    return utc.strftime("%Y-%m-%dT%H:%MZ")


#: namespace of signature-check ids (uuid5 of the event id); fixed forever
SIGNATURE_CHECK_NAMESPACE = uuid.UUID("3f1d7c52-9b0e-4a61-8d2f-5e7a9c1b4d83")


def signature_check_record(event: QualityEvent, verdict: SignatureVerdict) -> dict[str, Any]:
    """The `quality.signature-checks.v1` record of a signed event's verdict.

    Stamped with the event's own recorded_at, so a replay yields the identical record.
    """
    signature = event["signature"] or {}
    return {
        "check_id": str(uuid.uuid5(SIGNATURE_CHECK_NAMESPACE, event["event_id"])),
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "source_system": event["source_system"],
        "source_record_id": event["source_record_id"],
        "product_line": event["product_line"],
        "signer_id": str(signature.get("signer_id", "")),
        "printed_name": str(signature.get("printed_name", "")),
        "meaning": str(signature.get("meaning", "")),
        "signed_at": signature.get("signed_at") or event["recorded_at"],
        "status": "valid" if verdict.valid else "invalid",
        "problems": list(verdict.problems),
        "checked_at": event["recorded_at"],
    }
