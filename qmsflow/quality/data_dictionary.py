"""The shared data dictionary: source vocabulary → canonical terms, loaded from a versioned file."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qmsflow.errors import ConfigurationError, NormalisationError
from qmsflow.quality.limits import BoundaryLimits

CanonicalStatus = Literal["open", "in_progress", "in_review", "closed", "cancelled"]
CanonicalSeverity = Literal["minor", "major", "critical"]

_SEPARATORS = re.compile(r"[\s\-]+")
_Term = TypeVar("_Term", bound=str)


@lru_cache(maxsize=4096)  # source vocabularies are small; normalise looks words up per event
def term_key(word: str) -> str:
    """The lookup form of a source word: casefolded, spaces and hyphens as underscores."""
    return _SEPARATORS.sub("_", word.strip().casefold())


class Characteristic(BaseModel):
    """A measured characteristic's canonical unit and declared precision."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str
    decimals: int = Field(ge=0, le=6)  # the Avro decimals carry scale 6

    def quantise(self, value: Decimal) -> Decimal:
        """Round half-even to the declared decimals (the instrument's resolution)."""
        return value.quantize(Decimal(1).scaleb(-self.decimals), rounding=ROUND_HALF_EVEN)


class DataDictionary(BaseModel):
    """Canonical statuses, severities, units and defect terms, keyed by lookup form; limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    status: dict[str, CanonicalStatus]
    severity: dict[str, CanonicalSeverity]
    units: dict[str, str]
    defect_category: dict[str, str] = {}
    result: dict[str, str] = {}
    characteristic: dict[str, Characteristic] = {}
    limits: BoundaryLimits

    def canonical_status(self, word: str, *, field: str = "status") -> CanonicalStatus:
        """Map a source status; an unknown one is a NormalisationError naming the word."""
        return _lookup(self.status, word, field)

    def canonical_severity(self, word: str, *, field: str = "severity") -> CanonicalSeverity:
        """Map a source severity; an unknown one is a NormalisationError naming the word."""
        return _lookup(self.severity, word, field)

    def canonical_unit(self, text: str, *, field: str = "unit") -> str:
        """Map a source unit text to its UCUM code; unknown units are rejected."""
        return _lookup(self.units, text, field)

    def defect_category_of(self, word: str, *, field: str = "defect_code") -> str:
        """The canonical defect category of a nonconformance's defect word."""
        return _lookup(self.defect_category, word, field)

    def result_category(self, code: str, *, field: str = "result") -> str | None:
        """None for a conforming result, else the defect category of the failing one."""
        category = _lookup(self.result, code, field)
        return None if category == "conforming" else category

    def characteristic_of(self, name: str) -> Characteristic | None:
        """The declared unit and precision of a characteristic, if the dictionary has one."""
        return self.characteristic.get(term_key(name))


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
            defect_category={
                term_key(k): v for k, v in document.get("defect_category", {}).items()
            },
            result={term_key(k): v for k, v in document.get("result", {}).items()},
            characteristic={term_key(k): v for k, v in document.get("characteristic", {}).items()},
            limits=document["limits"],
        )
    except (KeyError, ValidationError) as exc:
        raise ConfigurationError(f"config/data_dictionary.toml is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_dictionary() -> DataDictionary:
    """The dictionary shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/data_dictionary.toml").read_text("utf-8")
    return parse_dictionary(tomllib.loads(text))
