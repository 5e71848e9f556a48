"""The topic declarations in `config/topics.toml`, validated at start-up, and their creation."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qmsflow.errors import ConfigurationError

TopicRole = Literal["ingest", "canonical", "dead-letter", "output", "internal", "master-data"]
CleanupPolicy = Literal["delete", "compact", "compact,delete"]

_MS_PER_DAY = 86_400_000


class TopicSpec(BaseModel):
    """One declared topic: its logical name and how it is laid out on the broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z]+\.[a-z0-9-]+\.v[0-9]+$")
    role: TopicRole
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    retention_days: float = Field(gt=0)
    cleanup_policy: CleanupPolicy
    event_type: str | None = None
    producers: tuple[str, ...] = ()
    value_subject: str | None = None  # for a topic carrying another topic's records

    @property
    def subject(self) -> str:
        """The value schema's subject (Confluent TopicNameStrategy unless overridden)."""
        return self.value_subject or f"{self.name}-value"

    @property
    def config(self) -> dict[str, str]:
        """Broker-side topic configuration."""
        return {
            "retention.ms": str(int(self.retention_days * _MS_PER_DAY)),
            "cleanup.policy": self.cleanup_policy,
        }

    @model_validator(mode="after")
    def _ingest_has_event_type(self) -> TopicSpec:
        if self.role == "ingest" and not self.event_type:
            raise ValueError(f"ingest topic {self.name} declares no event_type")
        return self


class TopicCatalog(BaseModel):
    """All declared topics, looked up by logical name."""

    model_config = ConfigDict(frozen=True)

    topics: tuple[TopicSpec, ...]

    def __getitem__(self, name: str) -> TopicSpec:
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(f"topic {name!r} is not declared in config/topics.toml")

    def by_role(self, role: TopicRole) -> tuple[TopicSpec, ...]:
        """The topics of one role, in declaration order."""
        return tuple(spec for spec in self.topics if spec.role == role)

    @model_validator(mode="after")
    def _ingest_copartitioned(self) -> TopicCatalog:
        counts = {
            spec.partitions
            for spec in self.topics
            if spec.role in ("ingest", "canonical", "internal")
        }
        if len(counts) > 1:
            raise ValueError(
                "ingest, canonical and internal topics must share one partition count (the "
                f"agents' tables are co-partitioned with them); found {sorted(counts)}"
            )
        return self


def parse_catalog(document: dict[str, Any]) -> TopicCatalog:
    """Build the catalog from a parsed TOML document, defaults applied."""
    defaults = document.get("defaults", {})
    try:
        return TopicCatalog(
            topics=tuple(TopicSpec(**{**defaults, **entry}) for entry in document.get("topic", []))
        )
    except ValidationError as exc:
        raise ConfigurationError(f"config/topics.toml is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_catalog() -> TopicCatalog:
    """The catalog shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/topics.toml").read_text("utf-8")
    return parse_catalog(tomllib.loads(text))
