"""Every Kafka channel qmsflow declares, described from the code's own sources (CONVENTIONS §12).

Nothing here is a second list of topics. A `Channel` joins:
  - the topic declaration (`config/topics.toml`): name, role, partitions, replication,
    retention, cleanup policy, producers;
  - the message key (`interface_docs/channels.toml`, the one fact topics.toml does not hold;
    every declared topic must have exactly one entry);
  - the schema versions pinned in `schemas/avro/registry.lock.json`, with their `.avsc` text;
  - the record headers, named by the constants the code writes them with;
  - the consumers: the qmsflow services' Read ACLs (`qmsflow.acl.plan_acls`, itself derived
    from the stream code, the sink bindings and the ERP adapter) and the systems' `reads`.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from qmsflow.errors import ConfigurationError
from qmsflow.interface_docs.systems import SystemSpec
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog, TopicSpec

__all__ = [
    "Channel",
    "Header",
    "SchemaVersion",
    "describe_channels",
    "load_channel_keys",
    "partitioning_rule",
]

#: what the qmsflow services are called in the documents (qmsflow.acl.Service → a reader's name)
SERVICE_NAMES = {
    "worker": "qmsflow worker",
    "sink": "qmsflow Postgres sink",
    "erp-adapter": "qmsflow erp-adapter",
}


class ChannelKey(BaseModel):
    """A topic's message key and why it is the key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    why: str


class _KeysFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    key: dict[str, ChannelKey]


@dataclass(frozen=True)
class SchemaVersion:
    """One pinned version of a subject: its registry id and its Avro schema."""

    subject: str
    version: int
    schema_id: int
    schema: dict[str, Any]

    @property
    def record_name(self) -> str:
        """The record's full name, e.g. `io.qmsflow.quality.QualityEvent`."""
        namespace = self.schema.get("namespace")
        name = str(self.schema.get("name", ""))
        return f"{namespace}.{name}" if namespace else name


@dataclass(frozen=True)
class Header:
    """A record header: its name (as the code writes it), its value and who sets it."""

    name: str
    value: str
    set_by: str


@dataclass(frozen=True)
class Channel:
    """One topic as an interface: layout, key, schemas, headers, producers and consumers."""

    spec: TopicSpec
    key: ChannelKey
    schemas: tuple[SchemaVersion, ...]
    headers: tuple[Header, ...]
    consumers: tuple[str, ...]

    @property
    def name(self) -> str:
        """The logical topic name (deployments may prefix it: QMSFLOW_TOPIC_PREFIX)."""
        return self.spec.name

    @property
    def partitioning(self) -> str:
        """How a record's partition is chosen."""
        return partitioning_rule(self.spec, self.key)


def partitioning_rule(spec: TopicSpec, key: ChannelKey) -> str:
    """The partitioning rule in words: Java's murmur2 of the key (qmsflow/partitioner.py)."""
    if key.key.startswith("none"):
        return f"explicit partition (0–{spec.partitions - 1}), chosen by the producer"
    return (
        f"toPositive(murmur2(key bytes)) mod {spec.partitions} (Kafka's default partitioner; "
        "librdkafka producers set partitioner=murmur2_random)"
    )


def load_channel_keys(catalog: TopicCatalog) -> dict[str, ChannelKey]:
    """The keys file, checked against the catalog: one entry per declared topic, no other."""
    text = resources.files("qmsflow").joinpath("interface_docs/channels.toml").read_text("utf-8")
    try:
        keys = _KeysFile.model_validate(tomllib.loads(text)).key
    except ValidationError as exc:
        raise ConfigurationError(f"interface_docs/channels.toml is invalid: {exc}") from exc
    declared = {spec.name for spec in catalog.topics}
    missing, unknown = declared - keys.keys(), keys.keys() - declared
    if missing or unknown:
        raise ConfigurationError(
            "interface_docs/channels.toml: expected one key per topic of config/topics.toml; "
            f"missing {sorted(missing)}, not declared {sorted(unknown)}"
        )
    return keys


def _schema_versions(schemas_dir: Path) -> dict[str, tuple[SchemaVersion, ...]]:
    from qmsflow.contracts.registry import read_lock, read_schema_files

    texts = {f.key: f.text for f in read_schema_files(schemas_dir)}
    versions: dict[str, list[SchemaVersion]] = {}
    for entry in read_lock(schemas_dir):
        text = texts.get((entry.subject, entry.version))
        if text is None:
            raise ConfigurationError(
                f"{schemas_dir}: the lock pins {entry.subject} v{entry.version} "
                f"(id {entry.schema_id}), but its .avsc file is missing"
            )
        versions.setdefault(entry.subject, []).append(
            SchemaVersion(entry.subject, entry.version, entry.schema_id, json.loads(text))
        )
    return {s: tuple(sorted(v, key=lambda sv: sv.version)) for s, v in versions.items()}


def _headers(spec: TopicSpec) -> tuple[Header, ...]:
    """The headers the code writes on this topic's records (constants from the writing code)."""
    from qmsflow.quality.golden_record import EntityKind
    from qmsflow.telemetry import CORRELATION_HEADER, TRACEPARENT, TRACESTATE
    from streams.golden_records import GOLDEN_VERSION_HEADER, golden_topic
    from streams.outbox import CONTENT_TYPE

    by_qmsflow = "qmsflow" in spec.producers
    external = [p for p in spec.producers if p != "qmsflow"]
    setters = " and ".join(
        [
            *(["source producers (optional: joins their trace)"] if external else []),
            *(["qmsflow (continues the incoming trace)"] if by_qmsflow else []),
        ]
    )
    headers = [
        Header(TRACEPARENT, "W3C trace context, version 00", setters),
        Header(TRACESTATE, "W3C trace state, passed through unchanged", setters),
        Header(CORRELATION_HEADER, "business correlation id, passed through", setters),
    ]
    if by_qmsflow:
        headers.append(
            Header("content-type", CONTENT_TYPE.decode("ascii"), "qmsflow worker (outbox)")
        )
    if spec.name in {golden_topic(kind) for kind in get_args(EntityKind)}:
        headers.append(
            Header(
                GOLDEN_VERSION_HEADER,
                "the golden record's version (decimal); the sink keeps the highest",
                "qmsflow golden-records agent",
            )
        )
    return tuple(headers)


def _service_readers(catalog: TopicCatalog) -> dict[str, list[str]]:
    """Topic → the qmsflow services holding a Read ACL on it (unprefixed names)."""
    from qmsflow.acl import plan_acls

    settings = Settings(topic_prefix="")
    readers: dict[str, list[str]] = {}
    for acl in plan_acls(settings, catalog):
        if acl.resource_type == "topic" and acl.pattern == "literal" and "Read" in acl.operations:
            service = SERVICE_NAMES.get(acl.service, f"qmsflow {acl.service}")
            readers.setdefault(acl.name, [])
            if service not in readers[acl.name]:
                readers[acl.name].append(service)
    return readers


def describe_channels(
    catalog: TopicCatalog, systems: Iterable[SystemSpec], schemas_dir: Path
) -> tuple[Channel, ...]:
    """Every declared topic as a channel, in declaration order."""
    systems = tuple(systems)
    keys = load_channel_keys(catalog)
    versions = _schema_versions(schemas_dir)
    readers = _service_readers(catalog)
    channels = []
    for spec in catalog.topics:
        schemas = versions.get(spec.subject)
        if not schemas:
            raise ConfigurationError(
                f"topic {spec.name}: expected schema versions of {spec.subject} in the lock "
                "file, found none"
            )
        consumers = [
            *readers.get(spec.name, []),
            *(s.code for s in systems if any(r.topic == spec.name for r in s.reads)),
        ]
        channels.append(Channel(spec, keys[spec.name], schemas, _headers(spec), tuple(consumers)))
    return tuple(channels)
