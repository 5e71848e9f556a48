"""Topic administration: create the declared topics, describe them, read offsets and keys."""

from __future__ import annotations

import time
from collections import Counter
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


@dataclass(frozen=True)
class PartitionKeys:
    """The keys of the records read from the tail of one partition, beside its watermarks."""

    partition: int
    low: int
    high: int
    keys: Counter[str | None]  # key (None: a record without one) → records read with it

    @property
    def records(self) -> int:
        """Records on the partition: offsets between the watermarks (markers count too)."""
        return self.high - self.low


# How many records one consume() call returns at most, and how often a long read reports.
_BATCH = 500
_PROGRESS_EVERY = 50_000


def partition_counts(
    settings: Settings, topics: Iterable[str], timeout: float = _TIMEOUT
) -> dict[str, int]:
    """Partitions per topic on the broker; a topic that does not exist is left out."""
    existing = admin_client(settings).list_topics(timeout=timeout).topics
    return {name: len(existing[name].partitions) for name in topics if name in existing}


def read_partition_keys(
    settings: Settings,
    topic: str,
    last: int | None,
    progress: Callable[[str], None] = print,
    timeout: float = _TIMEOUT,
) -> list[PartitionKeys]:
    """Count the keys of the last `last` records of every partition (None: every record).

    One consumer is assigned every partition (no group membership, nothing committed) and
    reads each from `high - last` to the end it had when the read began. A partition can end
    before that offset: transaction markers and compacted-away records take offsets but are
    never delivered, so its end-of-partition event ends it too. Raises ConfigurationError when
    the topic does not exist, KafkaException when the broker is silent for `timeout` seconds.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.topic_prefix}qmsflow-spread",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # the tail start was deleted by retention meanwhile
            "log_level": 2,  # not each failed connection: the error raised sums them up
            **librdkafka_security(settings),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise ConfigurationError(
                f"topic {topic} does not exist on {settings.bootstrap_servers} (create the "
                "declared topics with `qmsflow topics create`; is QMSFLOW_TOPIC_PREFIX right?)"
            )
        read: dict[int, PartitionKeys] = {}
        starts: list[TopicPartition] = []
        for partition in sorted(metadata.partitions):
            low, high = _watermarks(consumer, TopicPartition(topic, partition))
            read[partition] = PartitionKeys(partition, low, high, Counter())
            start = low if last is None else max(low, high - last)
            if start < high:
                starts.append(TopicPartition(topic, partition, start))
        _read_keys(consumer, starts, read, progress, timeout)
        return [read[p] for p in sorted(read)]
    finally:
        consumer.close()


def _read_keys(
    consumer: Consumer,
    starts: list[TopicPartition],
    read: dict[int, PartitionKeys],
    progress: Callable[[str], None],
    timeout: float,
) -> None:
    """Count keys into `read` from each start up to its partition's high watermark."""
    pending = {tp.partition: read[tp.partition].high - tp.offset for tp in starts}
    if not pending:
        return
    wanted = sum(pending.values())
    consumer.assign(starts)
    done = 0
    idle_since = time.monotonic()
    while pending:
        messages = consumer.consume(_BATCH, timeout=0.2)
        if messages:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > timeout:
            raise KafkaException(
                KafkaError(
                    KafkaError._TIMED_OUT,
                    f"no records for {timeout:g} s from partitions {sorted(pending)} of "
                    f"{starts[0].topic}, {done:,} of {wanted:,} read",
                )
            )
        for message in messages:
            partition = message.partition()
            if partition is None or partition not in pending:
                continue
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
            if error is None:
                key = message.key()
                read[partition].keys[None if key is None else key.decode("utf-8", "replace")] += 1
                done += 1
                if done % _PROGRESS_EVERY == 0:
                    progress(f"  {done:,} of {wanted:,} records read")
            if error is not None or (message.offset() or 0) >= read[partition].high - 1:
                del pending[partition]
                keys = read[partition].keys
                progress(
                    f"  partition {partition}: {sum(keys.values()):,} of "
                    f"{read[partition].records:,} records read"
                )
    consumer.unassign()
