"""The quality stages of a product line as one processor, free of any stream engine.

Integrity (parking events whose master data is missing), signature checks, quarantine,
escalation, SLA measurement and the correlation hand-off all key by product line, so one
processor runs them over a canonical event. Two runtimes call it: the Faust quality agent
(streams/quality.py) for a canonical event it has read, and the fused product-line processor
(streams/product_lines.py) for an event the ingest half has just normalised, without encoding and
decoding it in between.

The processor reads and stages table writes through `Tables` and queues outputs through
`Outputs`; it never sends, writes or acks. Its caller delivers the outputs, then applies the
staged writes, then commits: the commit protocol is the runtime's (streams/processing.py for
Faust, streams/batch_runtime.py for the batch runtime).

Escalation runs in event time, the partition's watermark, which never runs further ahead of the
wall clock than `max_clock_skew` (qmsflow/quality/event_time.py): one record from year 3000 must
not escalate every open CAPA of its partition.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import SYNTHETIC_HEADER
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
from qmsflow.quality.event import Coordinates, QualityEvent
from qmsflow.quality.event_time import advance, ceiling, clamp
from qmsflow.quality.ingest import CANONICAL_SUBJECT, DEAD_LETTER_SUBJECT
from qmsflow.quality.integrity import (
    PARKED_SUBJECT,
    ParkedRecord,
    ParkingLot,
    load_integrity_rules,
    missing_references,
)
from qmsflow.quality.master_data import MasterDataIndex
from qmsflow.quality.quarantine import LotHoldState, decide, load_quarantine_rules, lots_touched
from qmsflow.quality.signature import (
    check_signature,
    load_signature_rules,
    signature_check_record,
)
from qmsflow.quality.sla import SlaVerdict, load_sla_rules
from qmsflow.quality.sla import check as check_sla

COMMAND_SUBJECT = "inventory.quarantine-commands.v1-value"
ESCALATION_SUBJECT = "capa.escalations.v1-value"
SIGNATURE_SUBJECT = "quality.signature-checks.v1-value"
SLA_BREACH_SUBJECT = "ops.sla-breaches.v1-value"

#: the tables of the quality stages: name → what a row holds
QUALITY_TABLES = {
    "parked": "event_id → {partition, offset, topic, record}",
    "lot-holds": "lot_id → LotHoldState",
    "tracked-records": "record key → {partition, state}",
    "quality-watermarks": "str(partition) → ISO event time",
}

#: the partition watermark is persisted only when it moved this far: one changelog write per
#: event would double the stage's writes, and a slightly old watermark after a restart only
#: delays an escalation until the next event arrives
_WATERMARK_PERSIST_STEP = timedelta(minutes=1)

#: metrics to record once a batch's outputs are acknowledged, in input order
AfterDelivery = list[Callable[[], None]]
Headers = list[tuple[str, bytes]]


class Tables(Protocol):
    """Table reads and staged writes of one batch (read-your-writes), by table name."""

    def get(self, table: str, key: str) -> Any:
        """The value as it will be once the batch's writes are applied."""

    def put(self, table: str, key: str, value: Any) -> None:
        """Stage a write to the current input's partition; None deletes the key.

        A value is JSON-able, or an object with `to_dict()` (a lot's hold): kept as the object
        between batches, its dict written to the changelog (streams/changelog_state.py
        `stored_form`), so a busy lot's state is not rebuilt from JSON for every event.
        """

    def rows(self, table: str) -> Iterable[tuple[str, Any]]:
        """Every stored row of the table in the partitions this worker holds."""


class Outputs(Protocol):
    """Records to publish for a batch, by logical topic name (the runtime adds the prefix)."""

    event_type: str | None

    def add(
        self,
        topic: str,
        subject: str,
        key: str | bytes | None,
        record: dict[str, Any],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Encode `record` under `subject` and queue it."""

    def add_encoded(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue an already encoded value."""


@dataclass
class PartitionMemory:
    """In-memory indexes over one partition's table rows, rebuilt after every (re)assignment."""

    parking: ParkingLot = field(default_factory=ParkingLot)
    #: event_id → (topic, offset) of the record that parked it, for its dead letter on expiry
    parked_at: dict[str, tuple[str, int]] = field(default_factory=dict)
    tracked_keys: set[str] = field(default_factory=set)
    watermark: datetime | None = None
    persisted_watermark: datetime | None = None


@dataclass(frozen=True)
class CanonicalInput:
    """A canonical event and where it came from, as the quality stages need it."""

    event: QualityEvent
    value: bytes  # its Avro encoding, passed on to correlation unchanged
    topic: str  # physical topic of the record that carried it (dead letters name it)
    partition: int
    offset: int
    key: bytes | None


class QualityProcessor:
    """Integrity → signature → quarantine → escalation → SLA → correlation hand-off, and ticks."""

    def __init__(
        self,
        codec: AvroCodec,
        index: MasterDataIndex,
        employees: dict[str, Any],
        *,
        max_clock_skew: timedelta,
        dead_letter_max_bytes: int,
    ) -> None:
        self._codec = codec
        self._index = index
        self._employees = employees
        self._max_clock_skew = max_clock_skew
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self.integrity_rules = load_integrity_rules()
        self._quarantine_rules = load_quarantine_rules()
        self._escalation_rules = load_escalation_rules()
        self._correlation_rules = load_correlation_rules()
        self._signature_rules = load_signature_rules()
        self._sla_rules = load_sla_rules()
        self._memory: dict[int, PartitionMemory] = {}

    def forget(self) -> None:
        """Drop the in-memory indexes: partitions moved, or a failure left them ahead of tables."""
        self._memory.clear()

    def limit(self, now: datetime) -> datetime:
        """The latest event time a partition's watermark may reach at wall-clock `now`."""
        return ceiling(now, self._max_clock_skew)

    def memory(self, partition: int, tables: Tables) -> PartitionMemory:
        """The partition's indexes, rebuilt from its table rows on first use."""
        if partition in self._memory:
            return self._memory[partition]
        mem = PartitionMemory()
        for event_id, stored in tables.rows("parked"):
            if stored["partition"] == partition:
                mem.parking.park(*_parked_args(ParkedRecord.from_dict(stored["record"])))
                mem.parked_at[event_id] = (stored.get("topic", ""), stored["offset"])
        tracked = tables.rows("tracked-records")
        mem.tracked_keys = {key for key, stored in tracked if stored["partition"] == partition}
        persisted = tables.get("quality-watermarks", str(partition))
        if persisted is not None:
            # an older version persisted future event times as they came: cap it, and let the
            # next event overwrite it (a poisoned watermark escalates every CAPA at once)
            stored_time = datetime.fromisoformat(persisted)
            mem.watermark = clamp(stored_time, self.limit(datetime.now(UTC)))
            mem.persisted_watermark = stored_time if mem.watermark == stored_time else None
        self._memory[partition] = mem
        return mem

    def on_canonical(
        self,
        canonical: CanonicalInput,
        headers: Headers,
        out: Outputs,
        tables: Tables,
        after: AfterDelivery,
        limit: datetime,
    ) -> None:
        """One canonical event; its outputs carry `headers` (the quality span's trace context).

        `limit`: the latest event time the partition's watermark may reach now.
        """
        event, partition = canonical.event, canonical.partition
        mem = self.memory(partition, tables)
        mem.watermark = advance(mem.watermark, event["recorded_at"], limit)
        try:
            missing = missing_references(event, self._index, self.integrity_rules)
        except ContractError as error:
            self.dead_letter(error, "integrity", canonical, out, after)
            return
        verdicts: list[SlaVerdict] = []
        if missing:
            if event["event_id"] in mem.parking:
                return  # a redelivered record already parked: nothing new to say
            record = mem.parking.park(event, missing, datetime.now(UTC))
            mem.parked_at[event["event_id"]] = (canonical.topic, canonical.offset)
            deadline = self.integrity_rules.parking_deadline
            out.add(
                "quality.parked.v1", PARKED_SUBJECT, record.key, record.to_avro(deadline), headers
            )
            for kind in sorted({reference.kind for reference in missing}):
                telemetry.PARKED.labels(f"missing_{kind}").inc()
            tables.put(
                "parked",
                record.event_id,
                {
                    "partition": partition,
                    "offset": canonical.offset,
                    "topic": canonical.topic,
                    "record": record.to_dict(),
                },
            )
        else:
            verdicts = self.evaluate(event, canonical.value, partition, out, tables, headers)
        self._persist_watermark(partition, mem, tables)
        after.append(_delivery_recorder(event, verdicts))

    def dead_letter(
        self,
        error: Exception,
        stage: str,
        canonical: CanonicalInput,
        out: Outputs,
        after: AfterDelivery,
    ) -> None:
        """Queue the dead letter of a canonical record that `stage` refused."""
        letter = dict(
            dead_letter(
                error,
                stage=stage,
                coordinates=Coordinates(canonical.topic, canonical.partition, canonical.offset),
                key=canonical.key,
                value=canonical.value,
                headers=[],
                timestamp_ms=None,
                failed_at=datetime.now(UTC),
                max_bytes=self._dead_letter_max_bytes,
            )
        )
        out.add("quality.dlq.v1", DEAD_LETTER_SUBJECT, canonical.key, letter)
        after.append(_dead_letter_counter(stage, str(letter["reason_code"])))

    def evaluate(
        self,
        event: QualityEvent,
        value: bytes,
        partition: int,
        out: Outputs,
        tables: Tables,
        headers: Headers,
    ) -> list[SlaVerdict]:
        """Signature check, quarantine, escalation and the correlation hand-off of an event.

        Returns the SLA measurements of the quarantine commands, to be counted once delivered.
        """
        verdicts: list[SlaVerdict] = []
        line = event["product_line"]
        signature = event["signature"]
        if signature is not None:
            employee = self._employees.get(str(signature.get("signer_id")))
            verdict = check_signature(event, employee, self._signature_rules)
            record = signature_check_record(event, verdict)
            out.add("quality.signature-checks.v1", SIGNATURE_SUBJECT, line, record, headers)
        # a canary's commands are marked, so the ERP adapter never applies them
        command_headers = [*headers, (SYNTHETIC_HEADER, b"true")] if event["synthetic"] else headers
        for lot in lots_touched(event, self._quarantine_rules, self._index):
            stored = tables.get("lot-holds", lot)
            hold = (
                stored
                if stored is None or isinstance(stored, LotHoldState)
                else LotHoldState.from_dict(stored)  # as restored from the changelog
            )
            new_hold, commands = decide(hold, lot, event, self._quarantine_rules)
            for command in commands:
                out.add(
                    "inventory.quarantine-commands.v1",
                    COMMAND_SUBJECT,
                    lot,
                    command.to_avro(),
                    command_headers,
                )
                measured = check_sla(
                    self._sla_rules,
                    event,
                    "quarantine_command",
                    command.command_id,
                    datetime.now(UTC),
                    action=command.action,
                )
                for sla in measured:
                    if sla.breach is not None:
                        breach = sla.breach.to_avro()
                        out.add("ops.sla-breaches.v1", SLA_BREACH_SUBJECT, line, breach, headers)
                verdicts.extend(measured)
            if new_hold is not None and new_hold != hold:
                tables.put("lot-holds", lot, new_hold)
        if event["event_type"] in DUE_DATE_FIELD:
            self._track(event, partition, out, tables, headers)
        root_cause = self._correlation_rules.root_cause_key(event)
        if root_cause is not None:
            out.add_encoded("quality.correlation.v1", root_cause, value, headers)
        return verdicts

    def _track(
        self, event: QualityEvent, partition: int, out: Outputs, tables: Tables, headers: Headers
    ) -> None:
        key = tracked_key(event)
        stored = tables.get("tracked-records", key)
        state = None if stored is None else TrackedRecord.from_dict(stored["state"])
        tracked = track(state, event)
        mem = self.memory(partition, tables)
        if tracked is not None and mem.watermark is not None:
            tracked, escalations = escalate(tracked, mem.watermark, self._escalation_rules)
            for escalation in escalations:
                out.add(
                    "capa.escalations.v1", ESCALATION_SUBJECT, key, escalation.to_avro(), headers
                )
        if tracked != state:
            tables.put(
                "tracked-records",
                key,
                None if tracked is None else {"partition": partition, "state": tracked.to_dict()},
            )
            if tracked is None:
                mem.tracked_keys.discard(key)
            else:
                mem.tracked_keys.add(key)

    def _persist_watermark(self, partition: int, mem: PartitionMemory, tables: Tables) -> None:
        if mem.watermark is None or (
            mem.persisted_watermark is not None
            and mem.watermark - mem.persisted_watermark < _WATERMARK_PERSIST_STEP
        ):
            return
        mem.persisted_watermark = mem.watermark
        tables.put("quality-watermarks", str(partition), mem.watermark.isoformat())

    def on_tick(
        self,
        partition: int,
        now: datetime,
        canonical_topic: str,
        out: Outputs,
        tables: Tables,
        after: AfterDelivery,
    ) -> None:
        """Time-driven work of a partition: release or expire parked events, escalate overdue.

        `canonical_topic` names an expired event's dead letter when its record's topic is not
        stored (rows written by an older version).
        """
        mem = self.memory(partition, tables)
        out.event_type = None
        deadline = self.integrity_rules.parking_deadline
        # what a tick produces carries a traceparent: a released event's own trace, else the tick's
        with telemetry.stage_span("quality.tick") as tick_span:
            tick_headers = telemetry.output_headers(tick_span)
        released: list[tuple[QualityEvent, list[SlaVerdict]]] = []
        for record in mem.parking.release_known(self._index):
            with telemetry.stage_span("quality", resumed_trace(record.event)) as span:
                telemetry.annotate(span, record.event)
                headers = telemetry.output_headers(
                    span, correlation_id=record.event["correlation_id"]
                )
            out.add(
                "quality.parked.v1", PARKED_SUBJECT, record.key, record.to_avro(deadline), headers
            )
            tables.put("parked", record.event_id, None)
            mem.parked_at.pop(record.event_id, None)
            value = self._codec.encode(CANONICAL_SUBJECT, dict(record.event))
            verdicts = self.evaluate(record.event, value, partition, out, tables, headers)
            released.append((record.event, verdicts))
        for record in mem.parking.expire(now, deadline):
            out.add(
                "quality.parked.v1",
                PARKED_SUBJECT,
                record.key,
                record.to_avro(deadline),
                tick_headers,
            )
            topic, offset = mem.parked_at.pop(record.event_id, ("", -1))
            value = self._codec.encode(CANONICAL_SUBJECT, dict(record.event))
            letter = dead_letter(
                record.unresolved(now),
                stage="integrity",
                coordinates=Coordinates(topic or canonical_topic, partition, offset),
                key=record.key.encode("utf-8"),
                value=value,
                headers=[],
                timestamp_ms=None,
                failed_at=now,
                max_bytes=self._dead_letter_max_bytes,
            )
            out.add("quality.dlq.v1", DEAD_LETTER_SUBJECT, record.key, dict(letter), tick_headers)
            tables.put("parked", record.event_id, None)
        if mem.watermark is not None:
            for key in sorted(mem.tracked_keys):
                stored = tables.get("tracked-records", key)
                if stored is None:
                    continue
                state = TrackedRecord.from_dict(stored["state"])
                escalated, escalations = escalate(state, mem.watermark, self._escalation_rules)
                for escalation in escalations:
                    out.add(
                        "capa.escalations.v1",
                        ESCALATION_SUBJECT,
                        key,
                        escalation.to_avro(),
                        tick_headers,
                    )
                if escalated != state:
                    tables.put(
                        "tracked-records",
                        key,
                        None
                        if escalated is None
                        else {"partition": partition, "state": escalated.to_dict()},
                    )
        for event, verdicts in released:
            after.append(_delivery_recorder(event, verdicts))


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
