"""The tables' changelog topics, created before the worker's consumer first reads metadata.

Why: Faust declares a changelog topic only when its table starts, after the consumer has
subscribed and taken its metadata snapshot. On a fresh cluster the snapshot then counts 0
partitions for every new changelog, and the first write to a table fails Faust's
co-partitioning check (`PartitionsMismatch: … changelog has 0 partitions`), crashing the
worker; the crashed process does not exit, so the pipeline just stops. Creating the changelogs
first, with the configuration Faust would give them, makes the first snapshot complete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust

from qmsflow.settings import Settings

__all__ = ["ChangelogSpec", "changelog_specs", "create_changelog_topics", "declare_changelogs"]

_TIMEOUT = 30.0  # seconds; as qmsflow.kafka.admin


@dataclass(frozen=True)
class ChangelogSpec:
    """One table's changelog topic as Faust would create it."""

    name: str
    partitions: int
    replication: int
    config: Mapping[str, str]


def changelog_specs(app: faust.App) -> list[ChangelogSpec]:
    """The changelog topic of every table registered on `app` (Faust's cleanup rules)."""
    specs = []
    for table in app.tables.values():
        topic: Any = table.changelog_topic
        config: dict[str, str] = {}
        policies = [
            p for p, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on
        ]
        if policies:
            config["cleanup.policy"] = ",".join(sorted(policies))
        if topic.retention:
            config["retention.ms"] = str(int(topic.retention * 1000))
        config.update({k: str(v) for k, v in (topic.config or {}).items()})
        specs.append(
            ChangelogSpec(
                name=topic.get_topic_name(),
                partitions=topic.partitions or app.conf.topic_partitions,
                replication=topic.replicas or app.conf.topic_replication_factor or 1,
                config=config,
            )
        )
    return specs


def declare_changelogs(
    app: faust.App, settings: Settings, echo: Callable[[str], None] = lambda _line: None
) -> list[str]:
    """Create the missing changelog topics of `app`'s tables; return the names created."""
    return create_changelog_topics(settings, changelog_specs(app), echo)


def create_changelog_topics(
    settings: Settings,
    specs: list[ChangelogSpec],
    echo: Callable[[str], None] = lambda _line: None,
) -> list[str]:
    """Create the changelog topics of `specs` that do not exist yet; return the names created."""
    from confluent_kafka import KafkaException
    from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but untyped there

    from qmsflow.kafka.admin import _await_leaders, admin_client

    admin = admin_client(settings)
    existing = admin.list_topics(timeout=_TIMEOUT).topics
    wanted = [
        NewTopic(s.name, s.partitions, s.replication, config=dict(s.config))
        for s in specs
        if s.name not in existing
    ]
    created = []
    for name, future in (
        admin.create_topics(wanted, operation_timeout=_TIMEOUT).items() if wanted else []
    ):
        try:
            future.result()
        except KafkaException as exc:  # another worker created it first
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        created.append(name)
        echo(f"created changelog {name}")
    if created:
        _await_leaders(admin, created)
    return created
