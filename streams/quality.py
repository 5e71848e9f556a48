"""The quality agent: the Faust runtime of the quality stages over `quality.events.v1` and ticks.

The stages themselves are `QualityProcessor` (streams/quality_processor.py): integrity,
signature, quarantine, escalation, SLA and the correlation hand-off, all keyed by product line;
only correlation, keyed by root cause, needs a new topic hop (`quality.correlation.v1`). The
agent also consumes `quality.ticks.v1`: time-driven work runs when a partition's tick is
processed.

Per batch of records (streams/processing.py), the order is always: compute every record's
outputs in order (later records read the staged writes of earlier ones), deliver them all and
wait for the acknowledgements, then write the tables, then ack the records. Outputs carry
deterministic ids, so a crash between delivery and table write only republishes records that
consumers already absorb.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError
from qmsflow.kafka.headers import header_pairs
from qmsflow.quality.event import event_from_avro
from qmsflow.quality.ingest import CANONICAL_SUBJECT
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog
from streams.master_data import MasterDataFeed
from streams.processing import (
    BatchOutbox,
    DeadLetters,
    StagedWrites,
    consume_batches,
    handling,
)
from streams.quality_processor import (
    QUALITY_TABLES,
    AfterDelivery,
    CanonicalInput,
    QualityProcessor,
)

log = logging.getLogger(__name__)

TICK_SUBJECT = "quality.ticks.v1-value"
#: every topic the quality stages publish to, by logical name
QUALITY_OUTPUTS = (
    "quality.parked.v1",
    "quality.correlation.v1",
    "inventory.quarantine-commands.v1",
    "capa.escalations.v1",
    "quality.signature-checks.v1",
    "quality.dlq.v1",
    "ops.sla-breaches.v1",
)


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
    source = app.topic(
        canonical_topic, ticks_topic, key_serializer="raw", value_serializer="raw", acks=True
    )
    topics = {
        name: app.topic(settings.topic(name), key_serializer="raw", value_serializer="raw")
        for name in QUALITY_OUTPUTS
    }
    tables = {
        name: app.Table(name, default=None, key_type=str, partitions=partitions)
        for name in QUALITY_TABLES
    }
    processor = QualityProcessor(
        codec,
        feed.index,
        feed.employees,
        max_clock_skew=settings.max_clock_skew,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
    )

    @app.on_partitions_revoked.connect
    def forget_partitions(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        processor.forget()  # rebuilt from the (recovered) tables on the next record per partition

    def on_event(
        message: Any,
        outbox: BatchOutbox,
        writes: StagedWrites,
        after: AfterDelivery,
        limit: datetime,
    ) -> None:
        incoming = header_pairs(message.headers)
        canonical_at = (message.topic, message.partition, message.offset, message.key)
        with telemetry.stage_span("quality", incoming) as span:
            outbox.event_type = None
            try:
                event = event_from_avro(codec.decode(message.value, CANONICAL_SUBJECT).record)
            except ContractError as error:
                undecoded = CanonicalInput({}, message.value, *canonical_at)  # type: ignore[typeddict-item]
                processor.dead_letter(error, "quality", undecoded, outbox, after)
                return
            telemetry.annotate(span, event)
            telemetry.record_event("in", "quality", "quality.events.v1", event["event_type"])
            outbox.event_type = event["event_type"]
            headers = telemetry.output_headers(
                span, incoming, correlation_id=event["correlation_id"]
            )
            canonical = CanonicalInput(event, message.value, *canonical_at)
            processor.on_canonical(canonical, headers, outbox, writes, after, limit)

    async def handle_batch(events: Sequence[Any]) -> None:
        outbox = BatchOutbox(
            codec, stage="quality", topic_prefix=settings.topic_prefix, topics=topics
        )
        writes = StagedWrites(tables)
        after: AfterDelivery = []
        limit = processor.limit(datetime.now(UTC))
        for event in events:
            handling(event)
            message = event.message
            if message.topic == ticks_topic:
                now = codec.decode(message.value, TICK_SUBJECT).record["emitted_at"]
                processor.on_tick(message.partition, now, canonical_topic, outbox, writes, after)
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
                topics["quality.dlq.v1"],
                codec,
                "quality",
                settings.topic_prefix,
                settings.dead_letter_max_bytes,
            ),
            on_failure=processor.forget,
            max_records=settings.stream_batch_max,
        )
