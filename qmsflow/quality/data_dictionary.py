"""The shared data dictionary: source vocabulary → canonical terms, loaded from a versioned file."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from qmsflow.errors import ConfigurationError, NormalisationError

CanonicalStatus = Literal["open", "in_progress", "in_review", "closed", "cancelled"]
CanonicalSeverity = Literal["minor", "major", "critical"]

_SEPARATORS = re.compile(r"[\s\-]+")
_Term = TypeVar("_Term", bound=str)


def term_key(word: str) -> str:
    """The lookup form of a source word: casefolded, spaces and hyphens as underscores."""
    return _SEPARATORS.sub("_", word.strip().casefold())


class DataDictionary(BaseModel):
    """Canonical statuses, severities and units, keyed by the lookup form of source words."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    status: dict[str, CanonicalStatus]
    severity: dict[str, CanonicalSeverity]
    units: dict[str, str]

    def canonical_status(self, word: str, *, field: str = "status") -> CanonicalStatus:
        """Map a source status; an unknown one is a NormalisationError naming the word."""
        return _lookup(self.status, word, field)

    def canonical_severity(self, word: str, *, field: str = "severity") -> CanonicalSeverity:
        """Map a source severity; an unknown one is a NormalisationError naming the word."""
        return _lookup(self.severity, word, field)

    def canonical_unit(self, text: str, *, field: str = "unit") -> str:
        """Map a source unit text to its UCUM code; unknown units are rejected."""
        return _lookup(self.units, text, field)


def _lookup(table: Mapping[str, _Term], word: str, field: str) -> _Term:
    try:
        return table[term_key(word)]
    except KeyError:
        raise NormalisationError(
            f"{field}: {word!r} is not in the data dictionary; expected one of "
            f"{sorted(set(table))[:12]}{'…' if len(table) > 12 else ''}"
        ) from None


def parse_dictionary(document: Mapping[str, Any]) -> DataDictionary:
    """Validate a parsed dictionary document; keys are normalised to their lookup form."""
    try:
        return DataDictionary(
            version=document["version"],
            status={term_key(k): v for k, v in document.get("status", {}).items()},
            severity={term_key(k): v for k, v in document.get("severity", {}).items()},
            units={term_key(k): v for k, v in document.get("units", {}).items()},
        )
    except (KeyError, ValidationError) as exc:
        raise ConfigurationError(f"config/data_dictionary.toml is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_dictionary() -> DataDictionary:
    """The dictionary shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/data_dictionary.toml").read_text("utf-8")
    return parse_dictionary(tomllib.loads(text))
