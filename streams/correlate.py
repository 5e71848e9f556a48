"""The correlate agent: events re-keyed by root cause → incidents and (once per incident) alerts.

Consumes `quality.correlation.v1` (key = root-cause key such as `lot:L2611-0042`) and the ticks.
On a tick it closes the partition's incidents that have been quiet for the rules' quiet period,
measured in event time (the newest `occurred_at` seen on the partition, never further ahead of
the wall clock than `max_clock_skew`: qmsflow/quality/event_time.py), so replays agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import faust

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import header_pairs
from qmsflow.quality.correlation import IncidentState, close_quiet, correlate, load_rules
from qmsflow.quality.event import QualityEvent, event_from_avro
from qmsflow.quality.event_time import advance, ceiling, clamp
from qmsflow.quality.ingest import CANONICAL_SUBJECT
from qmsflow.quality.sla import SlaVerdict, load_sla_rules
from qmsflow.quality.sla import check as check_sla
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog
from streams.processing import BatchOutbox, DeadLetters, StagedWrites, consume_batches, handling

log = logging.getLogger(__name__)

INCIDENT_SUBJECT = "quality.incidents.v1-value"
ALERTS_TOGGLE = "correlation-alerts"  # qmsflow/toggles.py TOGGLEABLE
ALERT_SUBJECT = "quality.alerts.v1-value"
SLA_BREACH_SUBJECT = "ops.sla-breaches.v1-value"

#: metrics to record once a batch's outputs are acknowledged
After = list[Callable[[], None]]


def register_correlate_agent(
    app: faust.App,
    settings: Settings,
    codec: AvroCodec,
    catalog: TopicCatalog,
    alerts_enabled: Callable[[str], bool] = lambda _feature: True,
) -> None:
    """Declare the correlate agent, its incident table and output topics on the app.

    `alerts_enabled(feature)` answers whether the correlation-alerts integration is switched on.
    """
    partitions = catalog["quality.correlation.v1"].partitions
    ticks_topic = settings.topic("quality.ticks.v1")
    source = app.topic(
        settings.topic("quality.correlation.v1"),
        ticks_topic,
        key_serializer="raw",
        value_serializer="raw",
        acks=True,
    )
    incidents_out = app.topic(
        settings.topic("quality.incidents.v1"), key_serializer="raw", value_serializer="raw"
    )
    alerts_out = app.topic(
        settings.topic("quality.alerts.v1"), key_serializer="raw", value_serializer="raw"
    )
    sla_out = app.topic(
        settings.topic("ops.sla-breaches.v1"), key_serializer="raw", value_serializer="raw"
    )
    dlq = app.topic(settings.topic("quality.dlq.v1"), key_serializer="raw", value_serializer="raw")
    sla_rules = load_sla_rules()
    incidents = app.Table("incidents", default=None, key_type=str, partitions=partitions)
    watermarks = app.Table(
        "correlation-watermarks", default=None, key_type=str, partitions=partitions
    )
    rules = load_rules()
    open_keys: dict[int, set[str]] = {}  # partition → root-cause keys with an open incident

    @app.on_partitions_revoked.connect
    def forget_partitions(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        open_keys.clear()

    def keys_of(partition: int) -> set[str]:
        if partition not in open_keys:
            open_keys[partition] = {
                key
                for key, stored in incidents.items()
                if stored["partition"] == partition and stored["state"]["status"] == "open"
            }
        return open_keys[partition]

    def store(writes: StagedWrites, partition: int, state: IncidentState) -> None:
        value = {"partition": partition, "state": state.to_dict()}
        writes.put(incidents, state.root_cause_key, value)
        if state.status == "open":  # the index runs ahead of the table; on_failure rebuilds it
            keys_of(partition).add(state.root_cause_key)
        else:
            keys_of(partition).discard(state.root_cause_key)

    def on_event(
        message: Any, outbox: BatchOutbox, writes: StagedWrites, after: After, limit: datetime
    ) -> None:
        incoming = header_pairs(message.headers)
        with telemetry.stage_span("correlate", incoming) as span:
            on_traced_event(message, span, incoming, outbox, writes, after, limit)

    def on_traced_event(
        message: Any,
        span: Any,
        incoming: list[tuple[str, bytes | None]],
        outbox: BatchOutbox,
        writes: StagedWrites,
        after: After,
        limit: datetime,
    ) -> None:
        """`limit`: the latest event time the partition's watermark may reach now."""
        try:
            event = event_from_avro(codec.decode(message.value, CANONICAL_SUBJECT).record)
        except ContractError:
            # Written by the quality agent from an already decoded event: a bug, not input;
            # streams.processing dead-letters it (stage "correlate") and the partition goes on.
            log.exception("undecodable record on %s", message.topic)
            raise
        telemetry.annotate(span, event)
        telemetry.record_event("in", "correlate", "quality.correlation.v1", event["event_type"])
        headers = telemetry.output_headers(span, incoming, correlation_id=event["correlation_id"])
        key = message.key.decode("utf-8")
        stored = writes.get(incidents, key)
        state = None if stored is None else IncidentState.from_dict(stored["state"])
        result = correlate(state, event, rules)
        outbox.event_type = event["event_type"]
        verdicts = []
        for record in result.incidents:
            incident = record.to_avro()
            outbox.add(incidents_out, INCIDENT_SUBJECT, record.incident_id, incident, headers)
            if event["event_id"] not in record.member_event_ids:
                continue  # the closing view of an earlier incident, not this event's output
            measured = check_sla(
                sla_rules, event, "incident", record.incident_id, datetime.now(UTC)
            )
            for sla in measured:
                if sla.breach is not None:
                    breach, line = sla.breach.to_avro(), event["product_line"]
                    outbox.add(sla_out, SLA_BREACH_SUBJECT, line, breach, headers)
            verdicts.extend(measured)
        # The incident is recorded either way; only the alert is an integration that an
        # operator may switch off (ops.toggles.v1, feature correlation-alerts).
        if result.alert is not None and alerts_enabled(ALERTS_TOGGLE):
            alert = result.alert.to_avro()
            outbox.add(alerts_out, ALERT_SUBJECT, result.alert.incident_id, alert, headers)
        after.append(_delivery_recorder(event, verdicts, bool(result.incidents)))
        if result.state is not None and result.state != state:
            store(writes, message.partition, result.state)
        mark = str(message.partition)
        previous = writes.get(watermarks, mark)
        stored = None if previous is None else datetime.fromisoformat(previous)
        watermark = advance(stored, event["occurred_at"], limit)  # a poisoned one comes down
        if watermark != stored:
            writes.put(watermarks, mark, watermark.isoformat())

    def on_tick(message: Any, outbox: BatchOutbox, writes: StagedWrites, limit: datetime) -> None:
        stored_watermark = writes.get(watermarks, str(message.partition))
        if stored_watermark is None:
            return
        watermark = clamp(datetime.fromisoformat(stored_watermark), limit)
        outbox.event_type = None
        for key in sorted(keys_of(message.partition)):
            stored = writes.get(incidents, key)
            if stored is None:
                continue
            state = IncidentState.from_dict(stored["state"])
            record = close_quiet(state, watermark, rules)
            if record is not None:
                outbox.add(incidents_out, INCIDENT_SUBJECT, record.incident_id, record.to_avro())
                store(writes, message.partition, state.closed())

    async def handle_batch(events: Sequence[Any]) -> None:
        # One delivery per batch instead of one produce round trip per event; the tables are
        # written only after the broker has acknowledged the batch's outputs.
        outbox = BatchOutbox(codec, stage="correlate", topic_prefix=settings.topic_prefix)
        writes = StagedWrites()
        after: After = []
        limit = ceiling(datetime.now(UTC), settings.max_clock_skew)
        for event in events:
            handling(event)
            if event.message.topic == ticks_topic:
                on_tick(event.message, outbox, writes, limit)
            else:
                on_event(event.message, outbox, writes, after, limit)
        await outbox.deliver()
        writes.apply()
        for record_metrics in after:
            record_metrics()

    @app.agent(source, name="correlate", concurrency=1)
    async def correlate_agent(stream: faust.StreamT[Any]) -> None:
        await consume_batches(
            app,
            stream,
            handle_batch,
            dead_letters=DeadLetters(
                dlq, codec, "correlate", settings.topic_prefix, settings.dead_letter_max_bytes
            ),
            on_failure=open_keys.clear,
            max_records=settings.stream_batch_max,
        )


def _delivery_recorder(
    event: QualityEvent, verdicts: list[SlaVerdict], incident: bool
) -> Callable[[], None]:
    def record() -> None:
        for verdict in verdicts:
            telemetry.record_sla(verdict)
        if incident:
            telemetry.record_end_to_end("quality.incidents.v1", event["recorded_at"])

    return record
