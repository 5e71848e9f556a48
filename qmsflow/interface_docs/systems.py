"""The integrated systems' interface data (`config/systems/*.toml`), validated at load.

A system file says only what no other source says: who owns the interface, how it connects,
which qmsflow outputs it reads, which dead-letter reasons concern it, its SLA rules and its
escalation path. The topics it writes come from `config/topics.toml` (`producers`), schemas from
the lock file, SLA limits from `config/sla.toml`; `qmsflow.interface_docs.icd` joins them.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qmsflow.errors import ConfigurationError

__all__ = ["Escalation", "SystemRead", "SystemSpec", "load_systems", "parse_system"]

_SYSTEMS_DIR = "config/systems"


class SystemRead(BaseModel):
    """A qmsflow topic the system consumes, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    purpose: str
    via: str | None = None  # a qmsflow adapter in between (the ERP reads over HTTP)


class Escalation(BaseModel):
    """One step of the escalation path: the condition, where it shows, who is told."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    when: str
    signal: str
    notify: str


class SystemSpec(BaseModel):
    """One integrated system's interface data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slug: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # the file name: docs/icd/<slug>.md
    code: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")  # as in topics.toml `producers`
    name: str
    owner: str
    connection: str
    description: str
    dead_letter_reasons: tuple[str, ...] = ()
    sla: tuple[str, ...] = ()
    reads: tuple[SystemRead, ...] = ()
    escalation: tuple[Escalation, ...] = Field(min_length=1)


def parse_system(document: dict[str, Any], slug: str) -> SystemSpec:
    """Validate one parsed system file."""
    try:
        return SystemSpec.model_validate({**document, "slug": slug})
    except ValidationError as exc:
        raise ConfigurationError(f"config/systems/{slug}.toml is invalid: {exc}") from exc


def load_systems(directory: Traversable | None = None) -> tuple[SystemSpec, ...]:
    """Every system file shipped with the package, ordered by file name; codes are unique."""
    folder = directory or resources.files("qmsflow").joinpath(_SYSTEMS_DIR)
    systems = tuple(
        parse_system(tomllib.loads(entry.read_text("utf-8")), entry.name.removesuffix(".toml"))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml")
    )
    codes = [s.code for s in systems]
    if len(codes) != len(set(codes)):
        raise ConfigurationError(f"config/systems: system codes must be unique, got {codes}")
    return systems
