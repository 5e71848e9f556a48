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


@dataclass
class Ledger:
    """One run's account of every record produced, from Kafka offsets and Postgres rows.

    The balance: `unique + poison = rows + dead_letters`, the rows' ids are exactly the unique
    ids produced, the canonical and dead-letter topics hold exactly the ids of the rows and dead
    letters (no id missing, none extra, none doubled in Postgres), and `reconcile` finds no drift.
    Parked events are rows too (the canonical topic comes before the integrity stage), so
    `parked_open` is reported apart, not added; a scenario that expects none checks it is 0.

    Copies of a record on a topic are counted and shown, not failed: the stages hand records on
    at least once (an agent killed between its broker acknowledgement and its offset commit
    publishes the same record again, same id and content) and exactly-once holds where the
    records come to rest, Postgres, by key and offsets in one transaction (docs/design.md,
    "Exactly once where records rest").
    """

    scenario: str
    produced: int  # records sent to the ingest topics, resends and poison included
    unique: int  # distinct event ids among the well-formed records
    poison: int  # records expected to be dead-lettered (each once)
    rows: int = 0  # qms.quality_event rows of this environment
    missing: int = 0  # unique ids produced but not in the rows
    unexpected: int = 0  # rows whose id was never produced
    dead_letters: int = 0  # qms.dead_letter rows of records that never became a row
    canonical_records: int = 0  # records on quality.events.v1, copies included
    canonical_distinct: int = 0  # distinct event ids on quality.events.v1
    dlq_records: int = 0  # records on quality.dlq.v1, copies included
    dlq_distinct: int = 0  # distinct dead letters on quality.dlq.v1
    parked_open: int = 0  # events parked whose release or expiry is not in qms.parked_event
    drift: int = 0  # partitions `reconcile` reports drifting
    reasons: dict[str, int] = field(default_factory=dict)  # dead letters per reason_code
    figures: dict[str, float] = field(default_factory=dict)  # the scenario's own measurements
    notes: dict[str, str] = field(default_factory=dict)  # the scenario's findings, in words

    @property
    def republished(self) -> int:
        """Copies on the canonical and dead-letter topics beyond one per id (absorbed by key)."""
        return (self.canonical_records - self.canonical_distinct) + (
            self.dlq_records - self.dlq_distinct
        )

    @property
    def differences(self) -> list[str]:
        """Every way the account does not balance; empty when it does."""
        out = []
        if self.unique + self.poison != self.rows + self.dead_letters:
            out.append(
                f"produced {self.unique} unique + {self.poison} poison ≠ {self.rows} rows"
                f" + {self.dead_letters} dead letters"
            )
        if self.missing or self.unexpected:
            out.append(f"{self.missing} ids missing from Postgres, {self.unexpected} unexpected")
        if self.canonical_distinct != self.rows:
            out.append(f"{self.canonical_distinct} canonical event ids for {self.rows} rows")
        if self.dlq_distinct != self.dead_letters:
            out.append(f"{self.dlq_distinct} dead letters on the DLQ for {self.dead_letters} rows")
        if self.parked_open:
            out.append(f"{self.parked_open} events still parked")
        if self.drift:
            out.append(f"{self.drift} partitions drift (qmsflow reconcile)")
        return out

    def render(self) -> str:
        """The ledger as a small table, then OK or the differences."""
        rows = [
            ("produced (sent, resends and poison included)", self.produced),
            ("  unique well-formed events", self.unique),
            ("  poison records", self.poison),
            ("rows in qms.quality_event", self.rows),
            ("dead letters in qms.dead_letter", self.dead_letters),
            ("records on quality.events.v1", self.canonical_records),
            ("  distinct event ids", self.canonical_distinct),
            ("records on quality.dlq.v1", self.dlq_records),
            ("  distinct dead letters", self.dlq_distinct),
            ("copies republished after a crash (absorbed)", self.republished),
            ("parked, not released", self.parked_open),
            ("partitions drifting (reconcile)", self.drift),
        ]
        lines = [f"== ledger: {self.scenario}"]
        lines += [f"  {name:<46} {value:>9,}" for name, value in rows]
        lines += [f"  {name:<46} {value:>9,.1f}" for name, value in self.figures.items()]
        lines += [f"  {name}: {text}" for name, text in self.notes.items()]
        if self.reasons:
            lines.append(
                "  reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
            )
        lines.append(
            "  " + ("OK: balanced" if not self.differences else "; ".join(self.differences))
        )
        return "\n".join(lines)


#: stages whose dead letters stand for records that never became a row: ingest (normalise,
#: dedup, an unexpected failure there), the sink (a canonical event Postgres refused) and master
#: data (a change record is never a quality event)
LEDGER_STAGES = ("normalise", "dedup", "ingest", "sink", "master-data")


def ledger(
    settings: Settings,
    *,
    scenario: str,
    produced: int,
    unique_ids: set[str],
    poison: int,
    timeout: float = 120.0,
) -> Ledger:
    """Count one environment's rows, dead letters, topic records and drift against what was sent.

    Dead letters are those of records that never became a row (`LEDGER_STAGES`): refused at
    ingest, refused by Postgres, or a poison change record of master data. A parked event's
    expiry, or a later stage's failure on an event already stored, is a row and a dead letter at
    once and is not counted here.
    """
    from qmsflow.kafka.admin import end_offsets

    account = Ledger(scenario, produced, len(unique_ids), poison)
    events, dlq = settings.topic("quality.events.v1"), settings.topic("quality.dlq.v1")
    with psycopg.connect(settings.dsn) as conn:
        stored = {
            str(r[0])
            for r in conn.execute(
                "SELECT event_id FROM qms.quality_event WHERE kafka_topic = %s", (events,)
            )
        }
        reasons = conn.execute(
            "SELECT reason_code, count(*) FROM qms.dead_letter"
            " WHERE kafka_topic = %s AND stage = ANY(%s)"
            # the sink's dead letters of other tables' records are not about a missing event row
            " AND (stage <> 'sink' OR source_topic = %s) GROUP BY reason_code",
            (dlq, list(LEDGER_STAGES), events),
        ).fetchall()
        parked = conn.execute(
            "SELECT count(DISTINCT event_id) FILTER (WHERE status = 'PARKED')"
            " - count(DISTINCT event_id) FILTER (WHERE status <> 'PARKED')"
            " FROM qms.parked_event WHERE kafka_topic = %s",
            (settings.topic("quality.parked.v1"),),
        ).fetchone()
    account.rows = len(stored)
    account.missing = len(unique_ids - stored)
    if account.missing:
        account.notes["missing ids (first 5)"] = ", ".join(sorted(unique_ids - stored)[:5])
    account.unexpected = len(stored - unique_ids)
    account.reasons = {str(code): int(n) for code, n in reasons}
    account.dead_letters = sum(account.reasons.values())
    account.parked_open = int(parked[0] or 0) if parked else 0
    counts = end_offsets(settings, [events, dlq])
    account.canonical_records, account.dlq_records = counts.get(events, 0), counts.get(dlq, 0)
    checks = reconcile(settings, topics=["quality.events.v1", "quality.dlq.v1"], timeout=timeout)
    account.drift = sum(1 for c in checks if c.drift)
    # a record's id always hashes to the same partition, so per-partition distinct ids add up
    account.canonical_distinct = sum(c.kafka_count for c in checks if c.topic == events)
    account.dlq_distinct = sum(c.kafka_count for c in checks if c.topic == dlq)
    return account
