"""Boundary limits: what every decoded ingest record must honour before it is normalised.

Avro accepts values that stop a platform further on: a NUL character (Postgres refuses it), a
6,000-character lot id (too long for a B-tree index), a timestamp in the year 3000 (it moves
every event-time clock of its partition), a due date of 9999-12-31 (date arithmetic overflows).
These rules, kept as data in the data dictionary (`[limits]`), refuse such a record at the door
with a `LimitError` naming the field path and the limit, so it becomes one dead letter instead.

The walk is generic over the decoded record (dicts, lists, strings, dates and times), so a new
field of a new schema version is covered without a change here; named fields only get tighter
rules. It visits each value once and builds a field's path only to look its rule up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qmsflow.errors import LimitError

#: C0 controls except tab, newline and carriage return; DEL; C1 controls
_CONTROLS_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: every C0 and C1 control, DEL included: single-line values
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TextRule(BaseModel):
    """How long a string may be, and whether it may break lines (tab, newline, CR)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_length: int = Field(gt=0)
    line_breaks: bool = False


class IdentifierRule(BaseModel):
    """Identifiers are joined, indexed and shown to reviewers: short, and one character class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_length: int = Field(gt=0, le=512)
    characters: str  # one regular-expression character class, e.g. "[A-Za-z0-9._-]"
    describe: str  # the character class in words, for the producer reading the dead letter

    @field_validator("characters")
    @classmethod
    def _one_class(cls, characters: str) -> str:
        compiled = re.compile(characters)
        if compiled.fullmatch("ab") is not None or not characters.startswith("["):
            raise ValueError(f"characters must be one character class, got {characters!r}")
        return characters


class BoundaryLimits(BaseModel):
    """The `[limits]` table of the data dictionary, validated at start-up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: TextRule  # any string not named below
    free_text: TextRule  # the fields in `free_text_fields`
    identifier: IdentifierRule  # the fields in `identifier_fields`
    free_text_fields: frozenset[str]
    identifier_fields: frozenset[str]
    earliest_date: date  # dates used for arithmetic (due dates)
    latest_date: date
    max_list_items: int = Field(gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> BoundaryLimits:
        both = self.free_text_fields & self.identifier_fields
        if both:
            raise ValueError(f"fields both free text and identifier: {sorted(both)}")
        if self.earliest_date >= self.latest_date:
            raise ValueError("earliest_date must be before latest_date")
        # the arithmetic the stages do on a date (escalation adds days to a due date) must
        # stay within Python's dates, which end at 9999-12-31
        if self.latest_date > date.max - timedelta(days=3660):
            raise ValueError(
                f"latest_date must leave room for date arithmetic, got {self.latest_date}"
            )
        return self


class RecordLimits:
    """The limits of one worker: the dictionary's rules plus its event-time window."""

    def __init__(
        self, limits: BoundaryLimits, *, earliest_event_time: datetime, max_clock_skew: timedelta
    ) -> None:
        self._limits = limits
        self._earliest = earliest_event_time
        self._skew = max_clock_skew
        self._identifier_character = re.compile(limits.identifier.characters)
        self._identifier = re.compile(f"{limits.identifier.characters}+")
        #: field path → (max length, control characters refused, identifier pattern or None)
        self._by_path: dict[str, tuple[int, re.Pattern[str], re.Pattern[str] | None]] = {}
        for path in limits.free_text_fields:
            rule = limits.free_text
            self._by_path[path] = (rule.max_length, _controls(rule), None)
        for path in limits.identifier_fields:
            self._by_path[path] = (limits.identifier.max_length, _CONTROLS, self._identifier)
        self._default = (limits.text.max_length, _controls(limits.text), None)

    def check(self, record: Mapping[str, Any], now: datetime) -> None:
        """Raise LimitError for the first value of `record` that breaks a limit."""
        latest = now + self._skew
        self._check_record(record, "", latest)

    def _check_record(self, record: Mapping[str, Any], prefix: str, latest: datetime) -> None:
        by_path, default = self._by_path, self._default
        for name, value in record.items():
            kind = value.__class__
            if kind is str:  # most values: checked inline, the full check only on a doubt
                max_length, _, pattern = by_path.get(prefix + name, default)
                if (
                    len(value) <= max_length
                    and value.isprintable()
                    and (pattern is None or pattern.fullmatch(value) is not None)
                ):
                    continue
            elif value is None or kind in _SCALARS:
                continue
            self._check_value(value, prefix + name, latest)

    def _check_value(self, value: Any, path: str, latest: datetime) -> None:
        if value is None or value.__class__ in _SCALARS:
            return
        if isinstance(value, str):
            self._check_text(value, path)
        elif isinstance(value, datetime):  # before date: a datetime is a date
            if value.tzinfo is not None and not self._earliest <= value <= latest:
                bound = "earliest" if value < self._earliest else "latest (now + clock skew)"
                limit = self._earliest if value < self._earliest else latest
                raise LimitError(
                    f"limits: {path} is {value.isoformat()}; the {bound} accepted is "
                    f"{limit.isoformat(timespec='seconds')}"
                )
        elif isinstance(value, date):
            limits = self._limits
            if not limits.earliest_date <= value <= limits.latest_date:
                raise LimitError(
                    f"limits: {path} is {value.isoformat()}; dates must lie between "
                    f"{limits.earliest_date.isoformat()} and {limits.latest_date.isoformat()}"
                )
        elif isinstance(value, Mapping):
            self._check_record(value, f"{path}.", latest)
        elif isinstance(value, list | tuple):
            if len(value) > self._limits.max_list_items:
                raise LimitError(
                    f"limits: {path} has {len(value):,} items; at most "
                    f"{self._limits.max_list_items:,}"
                )
            item_path = f"{path}[]"
            for item in value:
                self._check_value(item, item_path, latest)

    def _check_text(self, text: str, path: str) -> None:
        max_length, controls, pattern = self._by_path.get(path, self._default)
        if len(text) > max_length:
            raise LimitError(f"limits: {path} is {len(text):,} characters; at most {max_length:,}")
        # isprintable() is a C loop that is true for nearly every value and false for every
        # control character; the regular expression runs only to name the refused one
        control = None if text.isprintable() else controls.search(text)
        if control is not None:
            raise LimitError(
                f"limits: {path} contains the control character "
                f"U+{ord(control.group()):04X} at position {control.start()}; "
                + (
                    "tab, newline and carriage return are the only ones allowed"
                    if controls is _CONTROLS_IN_TEXT
                    else "none is allowed in this field"
                )
            )
        if pattern is not None and pattern.fullmatch(text) is None:
            character = self._identifier_character
            odd = next((c for c in text if character.fullmatch(c) is None), "")
            raise LimitError(
                f"limits: {path} {text[:80]!r} is not an identifier: "
                f"{self._limits.identifier.describe}"
                + (f" (first refused character U+{ord(odd):04X})" if odd else " (empty)")
            )


#: value types with nothing to check: numbers, flags, decimals, uuids, bytes
_SCALARS = frozenset({int, float, bool, bytes})


def _controls(rule: TextRule) -> re.Pattern[str]:
    return _CONTROLS_IN_TEXT if rule.line_breaks else _CONTROLS
