"""Reconciliation: Kafka's records against the sink's rows, per topic and partition.

For each sinked topic whose binding is one insert-only table, and each partition, the range
compared is [Kafka's low watermark, the sink's stored `next_offset`): exactly what the sink says
it has committed. On each side the records' ids (the table's primary key, as text) give a
count and an order-independent checksum (sum of the first 8 bytes of sha256(id), mod 2^64).
Kafka's side decodes each record with the sink's own row mapping, so an id met twice (a
republished record) counts once, as the table stores it once; a record the sink could not map
(dead-lettered, stage `sink`) is counted apart as `unmapped`, not as drift. Upserted tables are
left out: their rows move to the newest view's offset by design.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connectors.postgres_sink.rows import BINDINGS, TableBinding, TableWrite
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.errors import ContractError
from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.event import Coordinates
from qmsflow.settings import Settings

#: checksums are sums modulo 2^64, so they fit a bigint and do not depend on order
_MODULUS = 1 << 64
#: ids listed per side in a drift report (the counts say how many there are in all)
_SAMPLE = 10


def id_checksum(ids: Iterable[str]) -> int:
    """Sum of the first 8 bytes (big-endian) of each id's sha256, modulo 2^64."""
    total = 0
    for record_id in ids:
        total += int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big")
    return total % _MODULUS


def row_id(write: TableWrite, row: Sequence[Any]) -> str:
    """A row's primary key as text, key columns joined by `|` (as `_sink_ids` selects it)."""
    return "|".join(str(row[write.columns.index(k)]) for k in write.key)


@dataclass
class PartitionCheck:
    """One topic partition's comparison."""

    topic: str
    partition: int
    table: str
    start: int  # first offset compared (Kafka's low watermark)
    end: int  # the sink's next_offset: first offset not compared
    kafka_count: int = 0
    sink_count: int = 0
    kafka_checksum: int = 0
    sink_checksum: int = 0
    unmapped: int = 0
    missing_in_sink: list[str] = field(default_factory=list)
    extra_in_sink: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        """Whether the two sides differ."""
        return (self.kafka_count, self.kafka_checksum) != (self.sink_count, self.sink_checksum)

    def render(self) -> str:
        """One line, plus samples of the differing ids when there is drift."""
        state = "DRIFT" if self.drift else "ok"
        line = (
            f"{state:5} {self.topic}[{self.partition}] offsets {self.start}..{self.end}"
            f" → {self.table}: kafka {self.kafka_count} ids {self.kafka_checksum:016x},"
            f" sink {self.sink_count} rows {self.sink_checksum:016x}"
            + (f", {self.unmapped} unmapped (dead-lettered)" if self.unmapped else "")
        )
        if self.missing_in_sink:
            line += "\n      missing in sink: " + ", ".join(self.missing_in_sink)
        if self.extra_in_sink:
            line += "\n      not in Kafka: " + ", ".join(self.extra_in_sink)
        return line


def reconcilable(bindings: Sequence[TableBinding] = BINDINGS) -> list[TableBinding]:
    """The bindings compared: one insert-only table each."""
    return [b for b in bindings if len(b.writes) == 1 and b.writes[0].upsert is None]


def reconcile(
    settings: Settings,
    *,
    topics: Sequence[str] = (),
    timeout: float = 120.0,
    echo: Callable[[str], None] = lambda _line: None,
) -> list[PartitionCheck]:
    """Compare every partition of the reconcilable topics (or only `topics`, logical names)."""
    bindings = [b for b in reconcilable() if not topics or b.topic in topics]
    codec = AvroCodec(open_registry(settings))
    group = settings.topic(f"{settings.app_id}-sink")
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            # a throw-away group that never commits: reconciling moves nobody's offsets
            "group.id": settings.topic(f"qmsflow-reconcile-{uuid.uuid4().hex[:8]}"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            **librdkafka_security(settings),
        }
    )
    checks: list[PartitionCheck] = []
    try:
        with psycopg.connect(settings.dsn) as conn:
            stored = {
                (t, p): o
                for t, p, o in conn.execute(
                    "SELECT topic, partition, next_offset FROM qms.sink_offsets"
                    " WHERE consumer_group = %s",
                    (group,),
                )
            }
            conn.commit()
            for binding in bindings:
                topic = settings.topic(binding.topic)
                write = binding.writes[0]
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if metadata is None or metadata.error is not None:
                    echo(f"skip  {topic}: not on the broker")
                    continue
                for partition in sorted(metadata.partitions):
                    low, _high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=10
                    )
                    check = PartitionCheck(
                        topic, partition, write.table, low, stored.get((topic, partition), low)
                    )
                    kafka_ids = _kafka_ids(consumer, codec, binding, check, timeout)
                    sink_ids = _sink_ids(conn, write, check)
                    check.kafka_count, check.sink_count = len(kafka_ids), len(sink_ids)
                    check.kafka_checksum = id_checksum(kafka_ids)
                    check.sink_checksum = id_checksum(sink_ids)
                    check.missing_in_sink = sorted(kafka_ids - sink_ids)[:_SAMPLE]
                    check.extra_in_sink = sorted(sink_ids - kafka_ids)[:_SAMPLE]
                    checks.append(check)
                    echo(check.render())
    finally:
        consumer.close()
    return checks


def _kafka_ids(
    consumer: Consumer,
    codec: AvroCodec,
    binding: TableBinding,
    check: PartitionCheck,
    timeout: float,
) -> set[str]:
    """Ids of the records in [start, end) of one partition, mapped as the sink maps them."""
    ids: set[str] = set()
    if check.end <= check.start:
        return ids
    write = binding.writes[0]
    consumer.assign([TopicPartition(check.topic, check.partition, check.start)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{check.topic}[{check.partition}]: offsets up to {check.end} not read"
                    f" within {timeout:.0f} s"
                )
            for message in consumer.consume(1000, 1.0):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return ids
                    raise KafkaException(error)
                offset = message.offset() or 0
                if offset >= check.end:
                    return ids
                at = Coordinates(check.topic, check.partition, offset)
                try:
                    value = message.value()
                    if value is None:
                        raise ContractError("tombstone")
                    record = codec.decode(value, binding.subject).record
                    ids.update(row_id(write, row) for row in write.to_rows(record, at))
                except (ContractError, KeyError, TypeError, ValueError):
                    check.unmapped += 1
                if offset >= check.end - 1:
                    return ids
    finally:
        consumer.unassign()


def _sink_ids(conn: psycopg.Connection[Any], write: TableWrite, check: PartitionCheck) -> set[str]:
    key = ", ".join(f"{k}::text" for k in write.key)
    rows = conn.execute(
        f"SELECT concat_ws('|', {key}) FROM {write.table}"
        " WHERE kafka_topic = %s AND kafka_partition = %s"
        " AND kafka_offset >= %s AND kafka_offset < %s",
        (check.topic, check.partition, check.start, check.end),
    ).fetchall()
    conn.commit()
    return {r[0] for r in rows}
