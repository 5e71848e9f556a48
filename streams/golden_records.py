"""The master-data agent: Debezium CDC changes → golden records, conflicts and SCD-2 history.

Per record of a `<prefix>cdc.erp.<schema>.<table>` topic (the rules live in
qmsflow/quality/golden_record.py; this module only moves records):
  1. parse the envelope (`parse_change`); a Debezium tombstone carries no change and is skipped,
     a malformed envelope becomes a dead letter (stage "master-data") on `quality.dlq.v1`;
  2. route it (`entity_of`) to its golden record; a table no survivorship rule uses is ignored;
  3. fold it into the record's state from the golden table (`apply_change`): a change at or below
     its source's watermark (a redelivery) changes nothing and publishes nothing;
  4. publish the golden record on `md.<entity>.v1` keyed by entity id (a deleted record as a
     Kafka tombstone, so compaction and every MasterDataFeed forget it), each new conflict on
     `md.conflicts.v1` and each SCD-2 row on `md.history.v1`, and wait for every acknowledgement
     (streams/outbox.py);
  5. only then write the new state to the table; the whole handler runs under `consume()`, which
     dead-letters (stage "master-data", reason `unexpected`) a record that fails unforeseen.
JSON nested deeper than `qmsflow.quality.cdc.MAX_NESTING` is refused by `parse_change` (a
LimitError, reason `limits`) before anything recursive reads it, and dead-lettered in step 1.
A golden record still lacking a required field is withheld from its md topic (logged and
counted) while its state, history and conflicts go on: it is published once a source fills it.

Topics and partitions. Faust's aiokafka driver does not support pattern subscriptions, so the
CDC topics are the ones the broker lists at start-up (`cdc_topics`): a CDC table added later is
picked up by the next worker restart. Every CDC topic has ONE partition (a table's changes stay
in LSN order), and Faust requires a table's changelog to have as many partitions as its source
topics, so the golden table has one partition and one worker owns all master data. That is the
right size: master data changes at thousands of rows a day, orders of magnitude below what one
agent with concurrency 1 keeps up with; and with one owner a golden record's sources (e.g. CMMS
and QMS for one equipment, on different topics) always meet in one state, with no re-keying hop.

Source systems. The rules name systems (ERP, PLM, MES, CMMS, QMS, HR, LMS, PORTAL); the CDC source
writes each system's tables into a schema of that name under one connector (`cdc.erp.cmms.asset`),
so a schema naming a declared system is the change's system (`rules_source`); any other schema
(e.g. `public`) leaves the system `parse_change` read from the topic prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import faust

from qmsflow.contracts import AvroCodec
from qmsflow.errors import ConfigurationError, ContractError
from qmsflow.kafka.admin import admin_client
from qmsflow.quality.cdc import ChangeEvent, Tombstone, parse_change
from qmsflow.quality.dead_letter import dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.golden_record import (
    Conflict,
    EntityKind,
    GoldenAction,
    GoldenOutcome,
    GoldenState,
    HistoryRow,
    SurvivorshipRules,
    apply_change,
    entity_of,
    golden_to_customer_spec,
    golden_to_employee,
    golden_to_equipment,
    golden_to_lot,
    golden_to_part,
    golden_to_supplier,
    load_survivorship_rules,
)
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import Settings
from streams.offset_guard import offset_guard
from streams.outbox import Outbox
from streams.processing import DeadLetters, consume

__all__ = [
    "CDC_TOPICS",
    "GOLDEN_VERSION_HEADER",
    "GoldenPublication",
    "MasterDataStats",
    "cdc_topics",
    "discover_cdc_topics",
    "golden_topic",
    "history_to_avro",
    "plan_publication",
    "register_golden_record_agent",
    "rules_source",
    "state_key",
]

log = logging.getLogger(__name__)

#: logical prefix of the Debezium source's topics: `cdc.erp.<schema>.<table>`
CDC_TOPICS = "cdc.erp."
STAGE = "master-data"
CONFLICT_SUBJECT = "md.conflicts.v1-value"
HISTORY_SUBJECT = "md.history.v1-value"
#: header with the golden version on md.<entity>.v1 records (their Avro schemas have no version);
#: the sink keeps the highest version per record (connectors/postgres_sink/rows.py)
GOLDEN_VERSION_HEADER = "golden-version"

_ADAPTERS: dict[EntityKind, Callable[[GoldenState], dict[str, Any]]] = {
    "lot": golden_to_lot,
    "part": golden_to_part,
    "supplier": golden_to_supplier,
    "equipment": golden_to_equipment,
    "employee": golden_to_employee,
    "customer_spec": golden_to_customer_spec,
}
_LIST_TIMEOUT = 30.0  # seconds; a cold single-node broker answers well within this


def golden_topic(kind: EntityKind) -> str:
    """The logical md topic of a kind: `customer_spec` → `md.customer-spec.v1`."""
    return f"md.{kind.replace('_', '-')}.v1"


def state_key(kind: EntityKind, entity_id: str) -> str:
    """The golden table's key of one record."""
    return f"{kind}:{entity_id}"


def cdc_topics(names: Iterable[str], topic_prefix: str) -> list[str]:
    """The CDC change topics among a broker's topic names, sorted.

    A change topic is `<topic_prefix>cdc.erp.<schema>.<table>`; other topics of the connector
    (e.g. transaction metadata, `cdc.erp.transaction`) and other environments' topics are left out.
    """
    prefix = f"{topic_prefix}{CDC_TOPICS}"
    found = []
    for name in names:
        if not name.startswith(prefix):
            continue
        schema, _, table = name.removeprefix(prefix).partition(".")
        if schema and table and "." not in table:
            found.append(name)
    return sorted(found)


def rules_source(change: ChangeEvent, rules: SurvivorshipRules) -> ChangeEvent:
    """The change with its system as the survivorship rules name it (see the module docstring)."""
    schema_system = change.schema.upper()
    if schema_system == change.source_system:
        return change
    if any(table.system == schema_system for table in rules.sources):
        return replace(change, source_system=schema_system)
    return change


def history_to_avro(row: HistoryRow, change: ChangeEvent) -> dict[str, Any]:
    """The `md.history.v1-value` datum of an SCD-2 row written by `change`."""
    return {
        "kind": row.kind,
        "entity_id": row.entity_id,
        "version": row.version,
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
        "source": row.source,
        "lsn": row.lsn,
        "fields_json": json.dumps(dict(row.fields), sort_keys=True, default=str),
        "cdc_topic": change.topic,
        "cdc_partition": change.partition,
        "cdc_offset": change.offset,
    }


@dataclass(frozen=True)
class GoldenPublication:
    """What one applied change publishes.

    `record` is the md datum when `publish` is "upsert", None for "tombstone"; `publish` is
    "none" when the golden values did not change or the record is withheld (`withheld` names
    the required fields it lacks).
    """

    kind: EntityKind
    entity_id: str
    version: int
    publish: GoldenAction
    record: Mapping[str, Any] | None
    conflicts: tuple[Conflict, ...]
    history: tuple[dict[str, Any], ...]
    withheld: tuple[str, ...] = ()


def plan_publication(outcome: GoldenOutcome, change: ChangeEvent) -> GoldenPublication:
    """The records to publish for an outcome (raises ContractError for an unencodable value)."""
    state = outcome.state
    publish: GoldenAction = outcome.action
    withheld: tuple[str, ...] = ()
    record = None
    if publish == "upsert":
        if outcome.missing:
            publish, withheld = "none", outcome.missing
        else:
            record = _ADAPTERS[state.kind](state)
    return GoldenPublication(
        kind=state.kind,
        entity_id=state.entity_id,
        version=state.version,
        publish=publish,
        record=record,
        conflicts=outcome.conflicts,
        history=tuple(history_to_avro(row, change) for row in outcome.history),
        withheld=withheld,
    )


@dataclass
class MasterDataStats:
    """Counts of what the agent has done since the worker started (for a metrics endpoint)."""

    applied: int = 0
    redelivered: int = 0  # at or below the source's watermark: nothing changed
    ignored: int = 0  # a table no survivorship rule uses
    cdc_tombstones: int = 0
    withheld: int = 0  # golden records lacking a required field, not published
    dead_letters: int = 0


def discover_cdc_topics(settings: Settings) -> list[str]:
    """The CDC topics on the broker now; a topic with more than one partition is refused."""
    metadata = admin_client(settings).list_topics(timeout=_LIST_TIMEOUT).topics
    found = cdc_topics(metadata, settings.topic_prefix)
    wider = [name for name in found if len(metadata[name].partitions) != 1]
    if wider:
        raise ConfigurationError(
            f"CDC topics {wider}: expected 1 partition each (the golden table is co-partitioned "
            "with them and a table's changes must stay in LSN order)"
        )
    return found


def register_golden_record_agent(app: faust.App, settings: Settings, codec: AvroCodec) -> None:
    """Declare the master-data agent on the CDC topics found now; none found → not declared."""
    found = discover_cdc_topics(settings)
    if not found:
        log.warning(
            "no %s* topics on the broker: the master-data agent is not started",
            settings.topic(CDC_TOPICS),
        )
        return
    log.info("master-data agent reads %d CDC topics", len(found))
    rules = load_survivorship_rules()
    stats = MasterDataStats()

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(settings.topic(name), key_serializer="raw", value_serializer="raw")

    source = app.topic(*found, key_serializer="raw", value_serializer="raw", acks=True)
    offset_guard(app).allow_holes(found)  # compacted: offsets may be missing
    golden_out = {kind: raw_topic(golden_topic(kind)) for kind in _ADAPTERS}
    conflicts_out = raw_topic("md.conflicts.v1")
    history_out = raw_topic("md.history.v1")
    dlq = raw_topic("quality.dlq.v1")
    # partitions=1: co-partitioned with the one-partition CDC topics (see the module docstring)
    golden_table = app.Table("golden-records", default=None, key_type=str, partitions=1)

    async def reject(message: Any, error: ContractError) -> None:
        at = Coordinates(message.topic, message.partition, message.offset)
        letter = dead_letter(
            error,
            stage=STAGE,
            coordinates=at,
            key=message.key,
            value=message.value,
            headers=[],
            timestamp_ms=None,
            failed_at=datetime.now(UTC),
            max_bytes=settings.dead_letter_max_bytes,
        )
        outbox = Outbox(codec)
        outbox.add(dlq, DEAD_LETTER_SUBJECT, message.key, dict(letter))
        await outbox.deliver()
        stats.dead_letters += 1
        log.warning("CDC record dead-lettered: %s", error)

    async def handle(message: Any) -> None:
        try:
            parsed = parse_change(
                message.topic, message.partition, message.offset, message.key, message.value
            )
            if isinstance(parsed, Tombstone):
                stats.cdc_tombstones += 1  # the delete before it carried the change
                return
            change = rules_source(parsed, rules)
            routed = entity_of(change, rules)
            if routed is None:
                stats.ignored += 1
                log.debug("no golden record uses %s.%s", change.source_system, change.table)
                return
            key = state_key(*routed)
            stored = golden_table.get(key)
            state = (
                GoldenState(kind=routed[0], entity_id=routed[1])
                if stored is None
                else GoldenState.from_dict(stored)
            )
            outcome = apply_change(state, change, rules)
            publication = plan_publication(outcome, change)
        except ContractError as error:
            await reject(message, error)
            return
        if not outcome.applied:
            stats.redelivered += 1
            return
        await deliver(publication)
        if outcome.state != state:
            golden_table[key] = outcome.state.to_dict()
        stats.applied += 1

    async def deliver(publication: GoldenPublication) -> None:
        outbox = Outbox(codec)
        version = [(GOLDEN_VERSION_HEADER, str(publication.version).encode("ascii"))]
        topic = golden_out[publication.kind]
        tombstones = []
        if publication.publish == "upsert" and publication.record is not None:
            subject = f"{golden_topic(publication.kind)}-value"
            outbox.add(topic, subject, publication.entity_id, dict(publication.record), version)
        elif publication.publish == "tombstone":
            # a null value: compaction deletes the key and MasterDataFeed forgets the entity
            tombstones.append(
                await topic.send(
                    key=publication.entity_id.encode("utf-8"), value=None, headers=version
                )
            )
        if publication.withheld:
            stats.withheld += 1
            log.info(
                "%s %r withheld from %s: lacks %s",
                publication.kind,
                publication.entity_id,
                golden_topic(publication.kind),
                list(publication.withheld),
            )
        for conflict in publication.conflicts:
            outbox.add(conflicts_out, CONFLICT_SUBJECT, conflict.conflict_id, conflict.to_avro())
        history_key = state_key(publication.kind, publication.entity_id)
        for row in publication.history:
            outbox.add(history_out, HISTORY_SUBJECT, history_key, row)
        await outbox.deliver()
        await asyncio.gather(*tombstones)

    @app.agent(source, name="master-data", concurrency=1)
    async def master_data(stream: faust.StreamT[Any]) -> None:
        await consume(
            app,
            stream,
            handle,
            dead_letters=DeadLetters(
                dlq, codec, STAGE, settings.topic_prefix, settings.dead_letter_max_bytes
            ),
        )
