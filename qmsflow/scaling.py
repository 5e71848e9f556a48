"""Partition scaling of the co-partitioned topics: the plan, its refusals, the state migration.

Why a procedure (docs/scaling.md): a record's partition is murmur2(product line) mod N, so a new
N sends a product line to another partition; its order and its table state (the dedup marks sit
on the changelog partition of their product line) would silently split. `qmsflow topics scale`
therefore runs these steps, printing each, and refuses every shortcut:
  1. plan: the whole co-partitioned group (ingest, canonical and internal topics, and the Faust
     changelogs of the tables over them) grows together, never one topic alone, never down;
  2. check the worker group is stopped (no live members) and drained (lag 0 on every group topic
     but the ticks; unless `while_producing`); producers are paused by the operator first;
  3. read every dedup mark from its changelog, and the product line of each marked event_id from
     the canonical topic;
  4. add partitions to every topic of the group and to the changelogs;
  5. move each dedup mark to the changelog partition its product line has under the new count
     (a tombstone on the old one); a mark whose event is no longer on the canonical topic is
     copied to every partition its product line could now map to, so dedup holds either way;
  6. write the new count into topics.toml; the operator restarts the workers, which recover the
     moved marks, and the sink, then any paused producers.
With `while_producing` the producers keep running: unread records are accepted, and the ingest
agent forwards a record found on its key's old partition to the new one (`home_partition`).
Tables keyed by partition number stay; other tables' state is not migrated and is refused
unless the operator accepts keeping it where it is (`keep_unmigrated`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qmsflow.errors import ConfigurationError
from qmsflow.kafka.security import librdkafka_security
from qmsflow.partitioner import partition_for
from qmsflow.topics import TopicCatalog, parse_catalog

__all__ = [
    "COPARTITIONED_ROLES",
    "DRAIN_EXEMPT",
    "TABLE_MIGRATIONS",
    "ChangelogRecord",
    "ScalePlan",
    "ScaleRefusedError",
    "check_drained",
    "group_lag",
    "home_partition",
    "plan_scale",
    "relocate_dedup_marks",
    "rewrite_catalog",
    "scale",
]

#: roles whose topics feed Faust tables and so must share one partition count
COPARTITIONED_ROLES = ("ingest", "canonical", "internal")

#: group topics whose unread records do not block a scale, and why
DRAIN_EXEMPT: Mapping[str, str] = {
    "quality.ticks.v1": "a tick carries time for its own partition number, which survives the "
    "scale; one left unread is read after the restart",
}

TableMigration = Literal["by-product-line", "stays", "not-migrated", "not-copartitioned"]

#: how each Faust table's changelog is carried across a scale (every table in streams/*.py)
TABLE_MIGRATIONS: Mapping[str, TableMigration] = {
    "dedup-seen": "by-product-line",  # event_id → mark; moved to its product line's partition
    "quality-watermarks": "stays",  # keyed by partition number, which survives
    "correlation-watermarks": "stays",
    "parked": "not-migrated",
    "lot-holds": "not-migrated",
    "tracked-records": "not-migrated",
    "incidents": "not-migrated",
    "golden-records": "not-copartitioned",  # one partition, over the CDC topics
}

DEDUP_TABLE = "dedup-seen"
CANONICAL = "quality.events.v1"
_TIMEOUT = 30.0  # seconds; as qmsflow.kafka.admin


class ScaleRefusedError(ConfigurationError):
    """A scale that would break ordering or state: the message says which rule and why."""


@dataclass(frozen=True)
class ScalePlan:
    """What one scale changes: the group's topics, their counts and the changelogs."""

    topics: tuple[str, ...]  # logical names
    current: int
    target: int
    tables: tuple[str, ...]  # Faust tables whose changelogs grow with the group

    def changelog(self, app_id: str, table: str) -> str:
        """Faust's changelog topic of a table: `<app id>-<table>-changelog`."""
        return f"{app_id}-{table}-changelog"


def copartitioned_group(catalog: TopicCatalog) -> tuple[str, ...]:
    """The topics that must share one partition count, in declaration order."""
    return tuple(s.name for s in catalog.topics if s.role in COPARTITIONED_ROLES)


def plan_scale(
    catalog: TopicCatalog, requested: Sequence[str], partitions: int, *, with_group: bool
) -> ScalePlan:
    """Validate a scale request; raises ScaleRefusedError naming the broken rule."""
    group = copartitioned_group(catalog)
    for name in requested:
        catalog[name]  # KeyError names an undeclared topic
        if name not in group:
            raise ScaleRefusedError(
                f"{name} is not co-partitioned with a table; this command scales the stateful "
                f"group {list(group)} only"
            )
    missing = [t for t in group if t not in requested]
    if missing and not with_group:
        raise ScaleRefusedError(
            f"{', '.join(requested)} is co-partitioned with {missing}: scaling it alone breaks "
            "the agents' tables (Faust refuses a changelog whose count differs from its "
            "sources); pass --with-copartitioned to scale the whole group"
        )
    current = catalog[group[0]].partitions
    if partitions < current:
        raise ScaleRefusedError(
            f"cannot go from {current} to {partitions} partitions: Kafka never removes "
            "partitions, and the records on them would be stranded"
        )
    if partitions == current:
        raise ScaleRefusedError(f"the group already has {current} partitions")
    tables = tuple(t for t, how in TABLE_MIGRATIONS.items() if how != "not-copartitioned")
    return ScalePlan(group, current, partitions, tables)


def check_drained(
    lag: Mapping[tuple[str, int], int],
    members: Sequence[str],
    *,
    prefix: str = "",
    while_producing: bool = False,
) -> dict[tuple[str, int], int]:
    """Refuse while the worker group has live members or unread records on a group topic.

    `while_producing` accepts unread records (the producers were not paused): the ingest agent
    forwards each record left on its key's old partition to the new one (`home_partition`), so
    nothing is lost or doubled; the cost is order across the change (see docs/scaling.md).
    Returns the unread records per partition.
    """
    if members:
        raise ScaleRefusedError(
            f"the worker group has {len(members)} live members ({', '.join(members)}); stop "
            "every worker first"
        )
    behind = {
        tp: n for tp, n in lag.items() if n > 0 and tp[0].removeprefix(prefix) not in DRAIN_EXEMPT
    }
    if behind and not while_producing:
        listed = ", ".join(f"{t}[{p}]={n}" for (t, p), n in sorted(behind.items()))
        raise ScaleRefusedError(
            "the worker group has not drained its input (records left on the old partitions "
            f"would be ordered after newer ones on the new partitions): lag {listed}; pause the "
            "producers, run the workers until lag is 0, stop them and retry (or accept the "
            "reordering with --while-producing)"
        )
    return behind


@dataclass(frozen=True)
class ChangelogRecord:
    """One changelog record to write: key and value bytes (None: tombstone) at a partition."""

    partition: int
    key: bytes
    value: bytes | None


@dataclass
class Relocation:
    """The dedup marks' moves, counted for the operator."""

    records: list[ChangelogRecord] = field(default_factory=list)
    moved: int = 0
    stayed: int = 0
    copied_everywhere: int = 0


def event_id_of_key(key: bytes) -> str:
    """A changelog key as the event_id it names (Faust writes str keys raw or as JSON)."""
    text = key.decode("utf-8")
    return str(json.loads(text)) if text.startswith('"') else text


def candidate_partitions(old_partition: int, old: int, new: int) -> list[int]:
    """Every partition under `new` that a key on `old_partition` under `old` can map to.

    h mod old = p and h mod new = q have a solution exactly when q ≡ p (mod gcd(old, new)).
    """
    step = math.gcd(old, new)
    return [q for q in range(new) if q % step == old_partition % step]


def relocate_dedup_marks(
    marks: Mapping[bytes, tuple[int, bytes]],
    product_lines: Mapping[str, str],
    old: int,
    new: int,
) -> Relocation:
    """The changelog writes that put each live mark on its product line's new partition.

    `marks` is the compacted changelog: key → (partition, value). A mark whose product line is
    unknown is written to every candidate partition: an extra mark costs memory, a missing one
    lets a resend through.
    """
    result = Relocation()
    for key, (partition, value) in marks.items():
        line = product_lines.get(event_id_of_key(key))
        targets = (
            [partition_for(line, new)]
            if line is not None
            else candidate_partitions(partition, old, new)
        )
        if line is None:
            result.copied_everywhere += 1
        for target in targets:
            if target != partition:
                result.records.append(ChangelogRecord(target, key, _with_partition(value, target)))
        if partition not in targets:
            result.records.append(ChangelogRecord(partition, key, None))
            result.moved += 1
        elif line is not None:
            result.stayed += 1
    return result


def home_partition(key: bytes | None, partition: int, partitions: int) -> int | None:
    """The partition a keyed record belongs on, when it was written to another one; else None.

    A producer keeps the old partition count until its next metadata refresh (librdkafka and
    Java: up to 5 min), so during and after a scale records can arrive on the partition their
    key had before. The ingest agent forwards such a record to its home partition instead of
    judging it where the key's dedup marks no longer live.
    """
    if key is None:
        return None
    home = partition_for(key, partitions)
    return None if home == partition else home


def _with_partition(value: bytes, partition: int) -> bytes:
    """The mark's value with its partition field (the retention queue's partition) updated."""
    try:
        stored = json.loads(value)
    except ValueError:
        return value
    if isinstance(stored, list) and len(stored) == 3:
        stored[2] = partition
        return json.dumps(stored, separators=(",", ":")).encode("utf-8")
    return value


def rewrite_catalog(text: str, topics: Iterable[str], partitions: int) -> str:
    """topics.toml with `partitions = N` set on each named topic; the file stays commented."""
    wanted = set(topics)
    blocks = re.split(r"(?m)^(?=\[\[topic\]\])", text)
    out = []
    for block in blocks:
        name = re.search(r'(?m)^name\s*=\s*"([^"]+)"', block)
        if block.startswith("[[topic]]") and name and name.group(1) in wanted:
            if re.search(r"(?m)^partitions\s*=", block):
                block = re.sub(r"(?m)^partitions\s*=\s*\d+", f"partitions = {partitions}", block)
            else:
                block = re.sub(
                    r'(?m)^(name\s*=\s*"[^"]+"\n)', rf"\1partitions = {partitions}\n", block
                )
            wanted.discard(name.group(1))
        out.append(block)
    if wanted:
        raise ConfigurationError(f"topics.toml declares no {sorted(wanted)}")
    return "".join(out)


# ---- the procedure against a live cluster ---------------------------------------------------
def scale(
    settings: Any,
    catalog_path: Path,
    requested: Sequence[str],
    partitions: int,
    *,
    with_group: bool,
    keep_unmigrated: bool = False,
    while_producing: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> ScalePlan:
    """Run the module's procedure; every step is echoed. Raises ScaleRefusedError on a shortcut."""
    import tomllib

    from qmsflow.contracts import AvroCodec, open_registry

    text = catalog_path.read_text("utf-8")
    catalog = parse_catalog(tomllib.loads(text))
    plan = plan_scale(catalog, requested, partitions, with_group=with_group)
    app_id = f"{settings.topic_prefix}{settings.app_id}"
    topics = [settings.topic(t) for t in plan.topics]
    echo(f"1/6 plan: {len(topics)} co-partitioned topics {plan.current} → {plan.target}")
    admin = _admin(settings)
    existing = admin.list_topics(timeout=_TIMEOUT).topics
    changelogs = {
        t: plan.changelog(app_id, t) for t in plan.tables if plan.changelog(app_id, t) in existing
    }
    for name in [*topics, *changelogs.values()]:
        echo(f"    {name}")
        actual = len(existing[name].partitions) if name in existing else None
        if actual not in (plan.current, None):
            raise ScaleRefusedError(
                f"{name} has {actual} partitions on the broker, the catalog says {plan.current}"
            )

    echo(f"2/6 check group {app_id} is stopped and drained")
    lag = group_lag(settings, app_id, topics)
    behind = check_drained(
        lag, _members(admin, app_id), prefix=settings.topic_prefix, while_producing=while_producing
    )
    if behind:
        echo(
            f"    no live members; {sum(behind.values())} unread records on {len(behind)} "
            "partitions (producers running: the workers forward them to their new partitions)"
        )
    else:
        echo(f"    no live members; lag 0 on {len(lag)} partitions")

    echo("3/6 read the dedup marks and the product line of each marked event")
    marks: dict[bytes, tuple[int, bytes]] = {}
    if DEDUP_TABLE in changelogs:
        for message in _read_all(settings, changelogs[DEDUP_TABLE]):
            key, value = message.key(), message.value()
            if key is None:
                continue
            if value is None:
                marks.pop(key, None)
            else:
                marks[key] = (message.partition(), value)
    wanted = {event_id_of_key(k) for k in marks}
    codec = AvroCodec(open_registry(settings))
    lines: dict[str, str] = {}
    for message in _read_all(settings, settings.topic(CANONICAL)):
        value = message.value()
        if value is None:
            continue
        record = codec.decode(value, f"{CANONICAL}-value").record
        event_id = str(record["event_id"])  # a uuid logical type may decode as uuid.UUID
        if event_id in wanted:
            lines[event_id] = str(record["product_line"])
    echo(f"    {len(marks)} marks, {len(lines)} product lines found on {CANONICAL}")
    unmigrated = [
        t
        for t, name in changelogs.items()
        if TABLE_MIGRATIONS[t] == "not-migrated" and _has_records(settings, name)
    ]
    if unmigrated and not keep_unmigrated:
        raise ScaleRefusedError(
            f"tables {unmigrated} hold state this tool does not migrate (their keys would stay "
            "on the old partitions); drain that state first or pass --keep-unmigrated-state"
        )
    relocation = relocate_dedup_marks(marks, lines, plan.current, plan.target)
    if dry_run:
        echo(
            f"dry run: would add partitions, move {relocation.moved} marks and copy "
            f"{relocation.copied_everywhere}; nothing changed"
        )
        return plan

    echo(f"4/6 add partitions: {len(topics) + len(changelogs)} topics → {plan.target}")
    _add_partitions(admin, [*topics, *changelogs.values()], plan.target, echo)

    echo(f"5/6 move dedup marks: {len(relocation.records)} changelog writes")
    if DEDUP_TABLE in changelogs:
        _write(settings, changelogs[DEDUP_TABLE], relocation.records)
    echo(
        f"    {relocation.moved} moved, {relocation.stayed} stayed, "
        f"{relocation.copied_everywhere} copied to every candidate partition"
    )
    if unmigrated:
        echo(f"    kept in place (not migrated): {unmigrated}")

    echo(f"6/6 write partitions = {plan.target} into {catalog_path}")
    updated = rewrite_catalog(text, plan.topics, plan.target)
    parse_catalog(tomllib.loads(updated))  # the group's counts still agree
    catalog_path.write_text(updated, "utf-8")
    echo(
        "done: restart the workers (they recover the moved marks) and the sink (it sees the new "
        "partitions now, not at its next metadata refresh), then any paused producers"
    )
    return plan


def _admin(settings: Any) -> Any:
    from qmsflow.kafka.admin import admin_client

    return admin_client(settings)


def _members(admin: Any, group: str) -> list[str]:
    from confluent_kafka import KafkaException

    try:
        described = admin.describe_consumer_groups([group])[group].result(timeout=_TIMEOUT)
    except KafkaException as exc:
        if "GROUP_ID_NOT_FOUND" in str(exc):
            return []
        raise
    return [m.client_id or m.member_id for m in described.members]


def group_lag(settings: Any, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Unread records per partition of the group (end offset − committed, or − start)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            **librdkafka_security(settings),
            "group.id": group,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=_TIMEOUT).topics
        tps = [
            TopicPartition(t, p) for t in topics if t in metadata for p in metadata[t].partitions
        ]
        lag = {}
        for tp in consumer.committed(tps, timeout=_TIMEOUT) if tps else []:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=_TIMEOUT
            )
            lag[(tp.topic, tp.partition)] = high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def _read_all(settings: Any, topic: str) -> Iterator[Any]:
    """Every record of a topic up to its current end, each partition from its start."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            **librdkafka_security(settings),
            "group.id": f"{settings.topic_prefix}qmsflow-scale",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=_TIMEOUT).topics[topic]
        open_partitions = set()
        assign = []
        for p in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT)
            if high > low:
                open_partitions.add(p)
                assign.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        consumer.assign(assign)
        while open_partitions:
            message = consumer.poll(_TIMEOUT)
            if message is None:
                raise ConfigurationError(f"no record from {topic} in {_TIMEOUT} s")
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                    continue
                raise ConfigurationError(f"reading {topic}: {error}")
            yield message
    finally:
        consumer.close()


def _has_records(settings: Any, topic: str) -> bool:
    from qmsflow.kafka.admin import end_offsets

    return end_offsets(settings, [topic]).get(topic, 0) > 0


def _add_partitions(
    admin: Any, topics: Sequence[str], partitions: int, echo: Callable[[str], None]
) -> None:
    from confluent_kafka.cimpl import NewPartitions  # re-exported by .admin, but untyped there

    futures = admin.create_partitions([NewPartitions(t, partitions) for t in topics])
    for name, future in futures.items():
        future.result(timeout=_TIMEOUT)
        echo(f"    {name} → {partitions}")
    from qmsflow.kafka.admin import _await_leaders

    _await_leaders(admin, list(topics))


def _write(settings: Any, topic: str, records: Sequence[ChangelogRecord]) -> None:
    from qmsflow.kafka.producer import create_producer

    producer = create_producer(settings)
    for record in records:
        producer.produce(topic, key=record.key, value=record.value, partition=record.partition)
        producer.poll(0)
    if producer.flush(_TIMEOUT):
        raise ConfigurationError(f"changelog writes to {topic} not acknowledged in {_TIMEOUT} s")
