"""The quality agent: canonical events → integrity → quarantine, escalation, correlation hand-off.

All of these stages are keyed by product line (a lot, a CAPA and its parked events live in one
product line), so they run fused in one agent over `quality.events.v1`; only correlation, keyed
by root cause, needs a new topic hop (`quality.correlation.v1`). The agent also consumes
`quality.ticks.v1`: time-driven work (releasing parked events whose master data arrived, expiring
them, escalating overdue records) runs when a partition's tick is processed. Escalation runs in
event time, the partition's watermark, which never runs further ahead of the wall clock than
`max_clock_skew` (qmsflow/quality/event_time.py): one record from year 3000 must not escalate
every open CAPA of its partition.

Per batch of records (streams/processing.py), the order is always: compute every record's
outputs in order (later records read the staged writes of earlier ones), deliver them all and
wait for the acknowledgements, then write the tables, then ack the records. Outputs carry
deterministic ids, so a crash between delivery and table write only republishes records that
consumers already absorb.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from faust.streams import current_event

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import SYNTHETIC_HEADER, header_pairs
from qmsflow.quality.correlation import load_rules as load_correlation_rules
from qmsflow.quality.dead_letter import dead_letter
from qmsflow.quality.escalation import (
    DUE_DATE_FIELD,
    TrackedRecord,
    escalate,
    load_escalation_rules,
    track,
    tracked_key,
)
from qmsflow.quality.event import Coordinates, QualityEvent, event_from_avro
from qmsflow.quality.event_time import advance, ceiling, clamp
from qmsflow.quality.ingest import CANONICAL_SUBJECT, DEAD_LETTER_SUBJECT
from qmsflow.quality.integrity import (
    PARKED_SUBJECT,
    ParkedRecord,
    ParkingLot,
    load_integrity_rules,
    missing_references,
)
from qmsflow.quality.quarantine import (
    LotHoldState,
    decide,
    load_quarantine_rules,
    lots_touched,
)
from qmsflow.quality.signature import (
    check_signature,
    load_signature_rules,
    signature_check_record,
)
from qmsflow.quality.sla import SlaVerdict, load_sla_rules
from qmsflow.quality.sla import check as check_sla
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog
from streams.master_data import MasterDataFeed
from streams.outbox import Outbox
from streams.processing import BatchOutbox, DeadLetters, consume_batches, handling

log = logging.getLogger(__name__)

COMMAND_SUBJECT = "inventory.quarantine-commands.v1-value"
ESCALATION_SUBJECT = "capa.escalations.v1-value"
TICK_SUBJECT = "quality.ticks.v1-value"
SIGNATURE_SUBJECT = "quality.signature-checks.v1-value"
SLA_BREACH_SUBJECT = "ops.sla-breaches.v1-value"

#: the partition watermark is persisted only when it moved this far: one changelog write per
#: event would double the agent's writes, and a slightly old watermark after a restart only
#: delays an escalation until the next event arrives
_WATERMARK_PERSIST_STEP = timedelta(minutes=1)

#: metrics to record once a batch's outputs are acknowledged, in input order
AfterDelivery = list[Callable[[], None]]


class StagedWrites:
    """Table writes of a batch of inputs, held back until their outputs are acknowledged.

    Reads go through it, so a later event of the batch (or the second of two events released by
    one tick) sees the earlier one's effect. Each write remembers the input it was staged for:
    Faust writes a key to the changelog partition of the current input.
    """

    def __init__(self) -> None:
        self._writes: dict[tuple[int, str], tuple[Any, str, Any, Any]] = {}

    def get(self, table: Any, key: str) -> Any:
        """The value as it will be once applied: staged if staged, else the table's."""
        staged = self._writes.get((id(table), key))
        return table.get(key) if staged is None else staged[2]

    def put(self, table: Any, key: str, value: Any) -> None:
        """Stage a write for the current input; None deletes the key."""
        self._writes[(id(table), key)] = (table, key, value, current_event())

    def apply(self) -> None:
        """Write everything staged to the tables (after delivery)."""
        for table, key, value, event in self._writes.values():
            if event is not None:
                handling(event)
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        self._writes.clear()


@dataclass
class PartitionMemory:
    """In-memory indexes over one partition's table rows, rebuilt after every (re)assignment."""

    parking: ParkingLot = field(default_factory=ParkingLot)
    parked_offsets: dict[str, int] = field(default_factory=dict)
    tracked_keys: set[str] = field(default_factory=set)
    watermark: datetime | None = None
    persisted_watermark: datetime | None = None


def register_quality_agent(
    app: faust.App,
    settings: Settings,
    codec: AvroCodec,
    feed: MasterDataFeed,
    catalog: TopicCatalog,
) -> None:
    """Declare the quality agent, its tables and output topics on the app."""
    partitions = catalog["quality.events.v1"].partitions
    canonical_topic = settings.topic("quality.events.v1")
    ticks_topic = settings.topic("quality.ticks.v1")

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(settings.topic(name), key_serializer="raw", value_serializer="raw")

    source = app.topic(
        canonical_topic, ticks_topic, key_serializer="raw", value_serializer="raw", acks=True
    )
    parked_out = raw_topic("quality.parked.v1")
    correlation_out = raw_topic("quality.correlation.v1")
    commands_out = raw_topic("inventory.quarantine-commands.v1")
    escalations_out = raw_topic("capa.escalations.v1")
    signatures_out = raw_topic("quality.signature-checks.v1")
    dlq = raw_topic("quality.dlq.v1")
    sla_out = raw_topic("ops.sla-breaches.v1")

    def table(name: str) -> Any:
        return app.Table(name, default=None, key_type=str, partitions=partitions)

    parked_table = table("parked")  # event_id → {partition, offset, record}
    holds_table = table("lot-holds")  # lot_id → LotHoldState
    tracked_table = table("tracked-records")  # record key → {partition, state}
    watermark_table = table("quality-watermarks")  # str(partition) → ISO event time

    integrity_rules = load_integrity_rules()
    quarantine_rules = load_quarantine_rules()
    escalation_rules = load_escalation_rules()
    correlation_rules = load_correlation_rules()
    signature_rules = load_signature_rules()
    sla_rules = load_sla_rules()
    deadline = integrity_rules.parking_deadline
    memory: dict[int, PartitionMemory] = {}

    @app.on_partitions_revoked.connect
    def forget_partitions(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        memory.clear()  # rebuilt from the (recovered) tables on the next record per partition

    def partition_memory(partition: int) -> PartitionMemory:
        if partition in memory:
            return memory[partition]
        mem = PartitionMemory()
        for event_id, stored in parked_table.items():
            if stored["partition"] == partition:
                mem.parking.park(*_parked_args(ParkedRecord.from_dict(stored["record"])))
                mem.parked_offsets[event_id] = stored["offset"]
        mem.tracked_keys = {
            key for key, stored in tracked_table.items() if stored["partition"] == partition
        }
        persisted = watermark_table.get(str(partition))
        if persisted is not None:
            # an older version persisted future event times as they came: cap it, and let the
            # next event overwrite it (a poisoned watermark escalates every CAPA at once)
            stored = datetime.fromisoformat(persisted)
            mem.watermark = clamp(stored, ceiling(datetime.now(UTC), settings.max_clock_skew))
            mem.persisted_watermark = stored if mem.watermark == stored else None
        memory[partition] = mem
        return mem

    def evaluate(
        event: QualityEvent,
        value: bytes,
        partition: int,
        outbox: Outbox,
        writes: StagedWrites,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> list[SlaVerdict]:
        """Signature check, quarantine, escalation and the correlation hand-off of an event.

        Outputs carry `headers` (the trace context); returns the SLA measurements of the
        quarantine commands, to be counted once they are delivered.
        """
        headers = headers or []
        verdicts: list[SlaVerdict] = []
        signature = event["signature"]
        if signature is not None:
            employee = feed.employees.get(str(signature.get("signer_id")))
            verdict = check_signature(event, employee, signature_rules)
            outbox.add(
                signatures_out,
                SIGNATURE_SUBJECT,
                event["product_line"],
                signature_check_record(event, verdict),
                headers,
            )
        # a canary's commands are marked, so the ERP adapter never applies them
        command_headers = [*headers, (SYNTHETIC_HEADER, b"true")] if event["synthetic"] else headers
        for lot in lots_touched(event, quarantine_rules, feed.index):
            stored = writes.get(holds_table, lot)
            hold = None if stored is None else LotHoldState.from_dict(stored)
            new_hold, commands = decide(hold, lot, event, quarantine_rules)
            for command in commands:
                outbox.add(commands_out, COMMAND_SUBJECT, lot, command.to_avro(), command_headers)
                measured = check_sla(
                    sla_rules,
                    event,
                    "quarantine_command",
                    command.command_id,
                    datetime.now(UTC),
                    action=command.action,
                )
                for sla in measured:
                    if sla.breach is not None:
                        breach, line = sla.breach.to_avro(), event["product_line"]
                        outbox.add(sla_out, SLA_BREACH_SUBJECT, line, breach, headers)
                verdicts.extend(measured)
            if new_hold is not None and new_hold != hold:
                writes.put(holds_table, lot, new_hold.to_dict())
        if event["event_type"] in DUE_DATE_FIELD:
            key = tracked_key(event)
            stored = writes.get(tracked_table, key)
            state = None if stored is None else TrackedRecord.from_dict(stored["state"])
            tracked = track(state, event)
            mem = partition_memory(partition)
            if tracked is not None and mem.watermark is not None:
                tracked, escalations = escalate(tracked, mem.watermark, escalation_rules)
                for escalation in escalations:
                    outbox.add(
                        escalations_out, ESCALATION_SUBJECT, key, escalation.to_avro(), headers
                    )
            if tracked != state:
                writes.put(
                    tracked_table,
                    key,
                    None
                    if tracked is None
                    else {"partition": partition, "state": tracked.to_dict()},
                )
                if tracked is None:
                    mem.tracked_keys.discard(key)
                else:
                    mem.tracked_keys.add(key)
        root_cause = correlation_rules.root_cause_key(event)
        if root_cause is not None:
            outbox.add_encoded(correlation_out, root_cause, value, headers)
        return verdicts

    def on_event(
        message: Any, outbox: Outbox, writes: StagedWrites, after: AfterDelivery, limit: datetime
    ) -> None:
        incoming = header_pairs(message.headers)
        with telemetry.stage_span("quality", incoming) as span:
            on_traced_event(message, span, incoming, outbox, writes, after, limit)

    def on_traced_event(
        message: Any,
        span: Any,
        incoming: list[tuple[str, bytes | None]],
        outbox: Outbox,
        writes: StagedWrites,
        after: AfterDelivery,
        limit: datetime,
    ) -> None:
        """`limit`: the latest event time the partition's watermark may reach now."""
        partition = message.partition
        outbox.event_type = None
        try:
            event = event_from_avro(codec.decode(message.value, CANONICAL_SUBJECT).record)
        except ContractError as error:
            letter = _letter(
                error,
                "quality",
                Coordinates(message.topic, partition, message.offset),
                message,
                settings.dead_letter_max_bytes,
            )
            outbox.add(dlq, DEAD_LETTER_SUBJECT, message.key, letter)
            after.append(_dead_letter_counter("quality", letter["reason_code"]))
            return
        telemetry.annotate(span, event)
        telemetry.record_event("in", "quality", "quality.events.v1", event["event_type"])
        outbox.event_type = event["event_type"]
        headers = telemetry.output_headers(span, incoming, correlation_id=event["correlation_id"])
        mem = partition_memory(partition)
        mem.watermark = advance(mem.watermark, event["recorded_at"], limit)
        try:
            missing = missing_references(event, feed.index, integrity_rules)
        except ContractError as error:
            letter = _letter(
                error,
                "integrity",
                Coordinates(message.topic, partition, message.offset),
                message,
                settings.dead_letter_max_bytes,
            )
            outbox.add(dlq, DEAD_LETTER_SUBJECT, message.key, letter)
            after.append(_dead_letter_counter("integrity", letter["reason_code"]))
            return
        verdicts: list[SlaVerdict] = []
        if missing:
            if event["event_id"] in mem.parking:
                return  # a redelivered record already parked: nothing new to say
            record = mem.parking.park(event, missing, datetime.now(UTC))
            mem.parked_offsets[event["event_id"]] = message.offset
            outbox.add(parked_out, PARKED_SUBJECT, record.key, record.to_avro(deadline), headers)
            for kind in sorted({reference.kind for reference in missing}):
                telemetry.PARKED.labels(f"missing_{kind}").inc()
            writes.put(
                parked_table,
                record.event_id,
                {"partition": partition, "offset": message.offset, "record": record.to_dict()},
            )
        else:
            verdicts = evaluate(event, message.value, partition, outbox, writes, headers)
        persist_watermark(partition, mem, writes)
        after.append(_delivery_recorder(event, verdicts))

    def persist_watermark(partition: int, mem: PartitionMemory, writes: StagedWrites) -> None:
        if mem.watermark is None or (
            mem.persisted_watermark is not None
            and mem.watermark - mem.persisted_watermark < _WATERMARK_PERSIST_STEP
        ):
            return
        mem.persisted_watermark = mem.watermark
        writes.put(watermark_table, str(partition), mem.watermark.isoformat())

    def on_tick(message: Any, outbox: Outbox, writes: StagedWrites, after: AfterDelivery) -> None:
        partition = message.partition
        now = codec.decode(message.value, TICK_SUBJECT).record["emitted_at"]
        mem = partition_memory(partition)
        outbox.event_type = None
        # what a tick produces carries a traceparent: a released event's own trace, else the tick's
        with telemetry.stage_span("quality.tick") as tick_span:
            tick_headers = telemetry.output_headers(tick_span)
        released: list[tuple[QualityEvent, list[SlaVerdict]]] = []
        for record in mem.parking.release_known(feed.index):
            with telemetry.stage_span("quality", resumed_trace(record.event)) as span:
                telemetry.annotate(span, record.event)
                headers = telemetry.output_headers(
                    span, correlation_id=record.event["correlation_id"]
                )
            outbox.add(parked_out, PARKED_SUBJECT, record.key, record.to_avro(deadline), headers)
            writes.put(parked_table, record.event_id, None)
            mem.parked_offsets.pop(record.event_id, None)
            value = codec.encode(CANONICAL_SUBJECT, dict(record.event))
            verdicts = evaluate(record.event, value, partition, outbox, writes, headers)
            released.append((record.event, verdicts))
        for record in mem.parking.expire(now, deadline):
            outbox.add(
                parked_out, PARKED_SUBJECT, record.key, record.to_avro(deadline), tick_headers
            )
            offset = mem.parked_offsets.pop(record.event_id, -1)
            value = codec.encode(CANONICAL_SUBJECT, dict(record.event))
            letter = dead_letter(
                record.unresolved(now),
                stage="integrity",
                coordinates=Coordinates(canonical_topic, partition, offset),
                key=record.key.encode("utf-8"),
                value=value,
                headers=[],
                timestamp_ms=None,
                failed_at=now,
                max_bytes=settings.dead_letter_max_bytes,
            )
            outbox.add(dlq, DEAD_LETTER_SUBJECT, record.key, dict(letter), tick_headers)
            writes.put(parked_table, record.event_id, None)
        if mem.watermark is not None:
            for key in sorted(mem.tracked_keys):
                stored = writes.get(tracked_table, key)
                if stored is None:
                    continue
                state = TrackedRecord.from_dict(stored["state"])
                escalated, escalations = escalate(state, mem.watermark, escalation_rules)
                for escalation in escalations:
                    outbox.add(
                        escalations_out, ESCALATION_SUBJECT, key, escalation.to_avro(), tick_headers
                    )
                if escalated != state:
                    writes.put(
                        tracked_table,
                        key,
                        None
                        if escalated is None
                        else {"partition": partition, "state": escalated.to_dict()},
                    )
        for event, verdicts in released:
            after.append(_delivery_recorder(event, verdicts))

    async def handle_batch(events: Sequence[Any]) -> None:
        outbox = BatchOutbox(codec, stage="quality", topic_prefix=settings.topic_prefix)
        writes = StagedWrites()
        after: AfterDelivery = []
        limit = ceiling(datetime.now(UTC), settings.max_clock_skew)
        for event in events:
            handling(event)
            message = event.message
            if message.topic == ticks_topic:
                on_tick(message, outbox, writes, after)
            else:
                on_event(message, outbox, writes, after, limit)
        await outbox.deliver()
        writes.apply()
        for record_metrics in after:
            record_metrics()

    @app.agent(source, name="quality", concurrency=1)
    async def quality(stream: faust.StreamT[Any]) -> None:
        await feed.ready.wait()
        # on failure the in-memory indexes may be ahead of the tables: rebuild them
        await consume_batches(
            app,
            stream,
            handle_batch,
            dead_letters=DeadLetters(
                dlq, codec, "quality", settings.topic_prefix, settings.dead_letter_max_bytes
            ),
            on_failure=memory.clear,
            max_records=settings.stream_batch_max,
        )


def resumed_trace(event: QualityEvent) -> list[tuple[str, bytes | None]]:
    """A released parked event's own trace as incoming headers, so its outputs stay in it.

    The span that parked it is not kept, so the parent span id is a stand-in derived from the
    event id: the trace id is what links the release to the event's earlier stages.
    """
    trace_id = event.get("trace_id")
    if not trace_id:
        return []
    parent = uuid.UUID(str(event["event_id"])).hex[:16]
    return [(telemetry.TRACEPARENT, f"00-{trace_id}-{parent}-01".encode("ascii"))]


def _delivery_recorder(event: QualityEvent, verdicts: list[SlaVerdict]) -> Callable[[], None]:
    return lambda: _record_delivered(event, verdicts, datetime.now(UTC))


def _dead_letter_counter(stage: str, reason: str) -> Callable[[], None]:
    return lambda: telemetry.record_dead_letter(stage, reason)


def _record_delivered(event: QualityEvent, verdicts: list[SlaVerdict], now: datetime) -> None:
    """Metrics of outputs the broker has acknowledged: SLA outcomes, end-to-end latency."""
    for verdict in verdicts:
        telemetry.record_sla(verdict)
    if verdicts:
        telemetry.record_end_to_end("inventory.quarantine-commands.v1", event["recorded_at"], now)


def _parked_args(record: ParkedRecord) -> tuple[QualityEvent, Any, datetime]:
    return record.event, record.missing, record.parked_at


def _letter(
    error: Exception, stage: str, at: Coordinates, message: Any, max_bytes: int
) -> dict[str, Any]:
    return dict(
        dead_letter(
            error,
            stage=stage,
            coordinates=at,
            key=message.key,
            value=message.value,
            headers=[],
            timestamp_ms=None,
            failed_at=datetime.now(UTC),
            max_bytes=max_bytes,
        )
    )
