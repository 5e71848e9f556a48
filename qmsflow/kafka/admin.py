"""Topic administration: create the declared topics, describe them, read their offsets."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # re-exported by .admin, but untyped there

from qmsflow.errors import ConfigurationError
from qmsflow.kafka.security import librdkafka_security
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog, TopicSpec

_TIMEOUT = 30.0  # seconds; a cold single-node KRaft broker answers well within this


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker has it, beside its declaration."""

    name: str
    declared_partitions: int
    actual_partitions: int | None  # None: not created yet
    messages: int | None


def admin_client(settings: Settings) -> AdminClient:
    """An admin client for the configured cluster."""
    return AdminClient(
        {"bootstrap.servers": settings.bootstrap_servers, **librdkafka_security(settings)}
    )


def create_topics(
    settings: Settings, catalog: TopicCatalog, echo: Callable[[str], None] = print
) -> list[str]:
    """Create every declared topic that does not exist; verify the ones that do."""
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=_TIMEOUT).topics
    created = []
    wanted = []
    for spec in catalog.topics:
        name = settings.topic(spec.name)
        if name in existing:
            _verify(name, spec, len(existing[name].partitions))
            continue
        wanted.append(NewTopic(name, spec.partitions, spec.replication_factor, config=spec.config))
    for name, future in (
        admin.create_topics(wanted, operation_timeout=_TIMEOUT).items() if wanted else []
    ):
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        created.append(name)
        echo(f"created topic {name}")
    if created:
        _await_leaders(admin, created)
    return created


def _await_leaders(admin: AdminClient, topics: list[str]) -> None:
    """A new topic's partitions have no leader for a moment; reading offsets then fails."""
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=_TIMEOUT).topics
        if all(
            name in metadata
            and metadata[name].partitions
            and all(p.leader >= 0 for p in metadata[name].partitions.values())
            for name in topics
        ):
            return
        time.sleep(0.2)
    raise ConfigurationError(f"topics {topics} still have no partition leaders after {_TIMEOUT} s")


def _verify(name: str, spec: TopicSpec, actual: int) -> None:
    if actual != spec.partitions:
        raise ConfigurationError(
            f"topic {name} has {actual} partitions but config/topics.toml declares "
            f"{spec.partitions}; change partition counts only with `qmsflow topics scale`"
        )


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """Messages ever written per topic (sum of high watermarks minus low watermarks)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "qmsflow-admin",
            **librdkafka_security(settings),
        }
    )
    try:
        metadata = consumer.list_topics(timeout=_TIMEOUT).topics
        counts = {}
        for topic in topics:
            if topic not in metadata:
                continue
            total = 0
            for partition in metadata[topic].partitions:
                low, high = _watermarks(consumer, TopicPartition(topic, partition))
                total += high - low
            counts[topic] = total
        return counts
    finally:
        consumer.close()


def _watermarks(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
    """Low and high watermark, retried while the broker answers with a retriable error.

    A topic created a moment ago may have no leader yet (NOT_LEADER_FOR_PARTITION), and a
    leader election moves it; both pass within seconds, which is what `_TIMEOUT` allows.
    """
    deadline = time.monotonic() + _TIMEOUT
    delay = 0.1
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=_TIMEOUT)
            return int(low), int(high)
        except KafkaException as error:
            if not _transient(error) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


#: leadership not settled yet (a new topic, an election): answers change within seconds
_LEADERSHIP_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def _transient(error: KafkaException) -> bool:
    reason = error.args[0] if error.args else None
    if not isinstance(reason, KafkaError):
        return False
    return bool(reason.retriable()) or reason.code() in _LEADERSHIP_CODES


def consumed_offsets(settings: Settings, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Records a consumer group has committed past, per topic (lag = end offsets − these)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": group,
            **librdkafka_security(settings),
        }
    )
    try:
        metadata = consumer.list_topics(timeout=_TIMEOUT).topics
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            if topic in metadata
            for partition in metadata[topic].partitions
        ]
        done: dict[str, int] = {}
        for tp in consumer.committed(partitions, timeout=_TIMEOUT) if partitions else []:
            if tp.offset >= 0:
                low, _ = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=_TIMEOUT
                )
                done[tp.topic] = done.get(tp.topic, 0) + tp.offset - low
        return done
    finally:
        consumer.close()


def describe_topics(settings: Settings, catalog: TopicCatalog) -> list[TopicState]:
    """Declared topics with their partitions and message counts on the broker."""
    names = [settings.topic(spec.name) for spec in catalog.topics]
    existing = admin_client(settings).list_topics(timeout=_TIMEOUT).topics
    counts = end_offsets(settings, names)
    return [
        TopicState(
            name,
            spec.partitions,
            len(existing[name].partitions) if name in existing else None,
            counts.get(name),
        )
        for spec, name in zip(catalog.topics, names, strict=True)
    ]
