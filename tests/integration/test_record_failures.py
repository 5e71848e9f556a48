"""One bad record stops nothing: the real worker against the real broker, records after it flow.

A CAPA due 9999-12-31 once raised OverflowError in escalation and crashed the worker on every
restart, stopping its partition for good; a `recorded_at` in year 3000 escalated every open CAPA
of its partition at once. Both are sent mid-stream: through an ingest topic (where the ingest
limits dead-letter them), and straight onto `quality.events.v1`, past those limits, so the
quality agent itself meets them (as records written by an older version would).
"""

from __future__ import annotations

import copy
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.master_data import plant_master_records
from qmsflow.demo.produce import produce_demo
from qmsflow.demo.traffic import DemoRecord, DemoTraffic
from qmsflow.kafka.producer import create_producer
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.event import QualityEvent
from qmsflow.quality.ingest import CANONICAL_SUBJECT, IngestStage, RawMessage
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment, prepared_settings, wait_for

pytestmark = pytest.mark.integration

CAPA_TOPIC = "qms.capa.v1"


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    yield from _pipeline(kafka_bootstrap, postgres_dsn, topic_prefix, tmp_path)


@pytest.fixture
def faust_pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    """The Faust runtime, whatever the environment says.

    Its quality agent reads the canonical topic, where records written by other producers never
    passed the ingest limits; the batch runtime never reads it, so it cannot meet them.
    """
    yield from _pipeline(kafka_bootstrap, postgres_dsn, topic_prefix, tmp_path, runtime="faust")


def _pipeline(
    kafka_bootstrap: str,
    postgres_dsn: str,
    topic_prefix: str,
    tmp_path: Path,
    runtime: str | None = None,
) -> Iterator[PipelineProcesses]:
    settings = prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix, sink_batch_size=200)
    env = {**environment(settings, kafka_bootstrap, postgres_dsn), "QMSFLOW_TICK_INTERVAL": "1"}
    if runtime is not None:
        env["QMSFLOW_WORKER_RUNTIME"] = runtime
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    processes.start_sink()
    yield processes
    processes.stop()


def _capa_template(seed: int, start: datetime) -> DemoRecord:
    """A realistic CAPA of the demo plant (its product line and site have master data)."""
    traffic = DemoTraffic(seed, start)
    while True:
        record = traffic.next_record()
        if record.topic == CAPA_TOPIC and not record.record["audit"]:
            return record


def _capa(template: DemoRecord, number: str, *, due: date, recorded_at: datetime) -> dict[str, Any]:
    record = copy.deepcopy(template.record)
    record.update(
        event_id=str(uuid.uuid4()),
        source_record_id=number,
        occurred_at=recorded_at,
        recorded_at=recorded_at,
    )
    record["payload"]["due_date"] = due
    return record


def _scalar(dsn: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _stored(dsn: str, settings: Settings, event_ids: set[str]) -> int:
    return int(
        _scalar(
            dsn,
            "SELECT count(*) FROM qms.quality_event WHERE kafka_topic = %s"
            " AND event_id = ANY(%s::uuid[])",
            settings.topic("quality.events.v1"),
            sorted(event_ids),
        )
    )


class TestOneBadRecordStopsNothing:
    def test_far_dates_mid_stream_and_the_events_after_them_arrive(
        self, pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """Far dates mid-stream: every event after them reaches Postgres; the worker lives.

        A CAPA due 9999-12-31 becomes one row (or one dead letter); a year-3000 event escalates
        nothing.
        """
        settings = pipeline.settings
        seed = zlib.crc32(settings.topic_prefix.encode())
        start = datetime.now(UTC) - timedelta(hours=3)
        quiet = lambda _line: None  # noqa: E731
        before = produce_demo(
            settings, count=200, duplicate_rate=0.0, seed=seed, start=start, echo=quiet
        )

        template = _capa_template(seed, start)
        now = datetime.now(UTC)
        far = _capa(template, "CAPA-FAR-DUE", due=date(9999, 12, 31), recorded_at=now)
        next_week = _capa(
            template, "CAPA-NEXT-WEEK", due=(now + timedelta(days=7)).date(), recorded_at=now
        )
        future = _capa(
            template,
            "CAPA-YEAR-3000",
            due=(now + timedelta(days=7)).date(),
            recorded_at=datetime(3000, 1, 1, tzinfo=UTC),
        )
        codec = AvroCodec(open_registry(settings))
        producer = create_producer(settings)
        far_value = codec.encode(f"{CAPA_TOPIC}-value", far)
        for value in (
            far_value,
            codec.encode(f"{CAPA_TOPIC}-value", next_week),
            codec.encode(f"{CAPA_TOPIC}-value", future),
        ):  # keyed by product line: one partition, in this order
            producer.produce(settings.topic(CAPA_TOPIC), key=template.key.encode(), value=value)
        assert producer.flush(30) == 0

        after = produce_demo(
            settings,
            count=200,
            duplicate_rate=0.0,
            seed=seed + 1,
            start=start + timedelta(minutes=90),
            master_data=False,
            echo=quiet,
        )
        expected = before.unique_event_ids | after.unique_event_ids | {next_week["event_id"]}
        wait_for(
            lambda: _stored(postgres_dsn, settings, expected) == len(expected),
            timeout=180,
            what=f"the {len(expected)} valid events, those after the bad ones included",
            alive=pipeline.assert_alive,
        )

        def far_outcome() -> tuple[int, int]:
            rows = _stored(postgres_dsn, settings, {far["event_id"]})
            letters = int(
                _scalar(
                    postgres_dsn,
                    "SELECT count(*) FROM qms.dead_letter WHERE kafka_topic = %s"
                    " AND original_value = %s",
                    settings.topic("quality.dlq.v1"),
                    far_value,
                )
            )
            return rows, letters

        wait_for(
            lambda: sum(far_outcome()) >= 1,
            timeout=60,
            what="the CAPA due 9999-12-31 as a row or a dead letter",
            alive=pipeline.assert_alive,
        )
        assert sum(far_outcome()) == 1, far_outcome()

        # ticks run every second: give escalation a few of them to act on the watermark
        for _ in range(10):
            time.sleep(0.5)
            pipeline.assert_alive()
        escalations = _scalar(
            postgres_dsn,
            "SELECT count(*) FROM qms.escalation WHERE kafka_topic = %s AND source_record_id"
            " IN ('CAPA-NEXT-WEEK', 'CAPA-FAR-DUE')",
            settings.topic("capa.escalations.v1"),
        )
        assert escalations == 0, "a year-3000 recorded_at moved the escalation watermark"
        pipeline.assert_alive()


def _canonical(
    settings: Settings, codec: AvroCodec, record: dict[str, Any], **changes: Any
) -> QualityEvent:
    """The canonical event the ingest stage makes of `record`, then changed as given.

    `due_date` goes into the payload; changed after normalising, so the ingest limits never
    see the changes.
    """
    stage = IngestStage(
        codec, load_catalog(), load_dictionary(), topic_prefix=settings.topic_prefix
    )
    raw = RawMessage(
        topic=settings.topic(CAPA_TOPIC),
        partition=0,
        offset=0,
        key=str(record["product_line"]).encode(),
        value=codec.encode(f"{CAPA_TOPIC}-value", record),
        headers=[],
        timestamp_ms=None,
    )
    event = stage.decode(raw)
    assert isinstance(event, dict), event
    due = changes.pop("due_date", None)
    event.update(changes)  # type: ignore[typeddict-item]
    if due is not None:
        event["payload"][1]["due_date"] = due
    return event


def _escalated(dsn: str, settings: Settings, number: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [
            int(row[0])
            for row in conn.execute(
                "SELECT level FROM qms.escalation WHERE kafka_topic = %s"
                " AND source_record_id = %s ORDER BY level",
                (settings.topic("capa.escalations.v1"), number),
            )
        ]


class TestTheQualityAgentMeetsFarDates:
    def test_it_escalates_nothing_early_and_goes_on(
        self, faust_pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """Canonical events past the ingest limits: the quality agent stays up and in order.

        On one partition, in order: a CAPA due 9999-12-31, a CAPA due next week, an event
        recorded in year 3000, then a CAPA 40 days overdue. The overdue one escalates to every
        level (the agent went on past the others); the one due next week escalates to none (the
        watermark stayed near the wall clock); the worker never crashed.
        """
        pipeline = faust_pipeline
        settings = pipeline.settings
        seed = zlib.crc32(settings.topic_prefix.encode())
        now = datetime.now(UTC)
        codec = AvroCodec(open_registry(settings))
        producer = create_producer(settings)
        for topic, key, master in plant_master_records(now - timedelta(days=30)):
            producer.produce(
                settings.topic(topic),
                key=key.encode(),
                value=codec.encode(f"{topic}-value", master),
            )
        template = _capa_template(seed, now - timedelta(hours=1))
        recorded = now - timedelta(minutes=5)

        def capa(number: str, due: date, at: datetime) -> QualityEvent:
            next_week = (now + timedelta(days=7)).date()
            record = _capa(template, number, due=next_week, recorded_at=recorded)
            return _canonical(
                settings, codec, record, due_date=due, recorded_at=at, occurred_at=recorded
            )

        events = [
            capa("CAPA-FAR-DUE", date(9999, 12, 31), recorded),
            capa("CAPA-NEXT-WEEK", (now + timedelta(days=7)).date(), recorded),
            capa(
                "CAPA-YEAR-3000", (now + timedelta(days=7)).date(), datetime(3000, 1, 1, tzinfo=UTC)
            ),
            capa("CAPA-OVERDUE", (now - timedelta(days=40)).date(), recorded),
        ]
        for event in events:  # keyed by product line: one partition, in this order
            producer.produce(
                settings.topic("quality.events.v1"),
                key=event["product_line"].encode(),
                value=codec.encode(CANONICAL_SUBJECT, dict(event)),
            )
        assert producer.flush(30) == 0

        wait_for(
            lambda: _escalated(postgres_dsn, settings, "CAPA-OVERDUE") == [1, 2, 3],
            timeout=120,
            what="the overdue CAPA after the far dates to escalate to every level",
            alive=pipeline.assert_alive,
        )
        for _ in range(6):  # ticks every second: a few of them to act on the watermark
            time.sleep(0.5)
            pipeline.assert_alive()
        assert _escalated(postgres_dsn, settings, "CAPA-NEXT-WEEK") == []
        assert _escalated(postgres_dsn, settings, "CAPA-YEAR-3000") == []
        assert _escalated(postgres_dsn, settings, "CAPA-FAR-DUE") == []
        quality_letters = _scalar(
            postgres_dsn,
            "SELECT count(*) FROM qms.dead_letter WHERE kafka_topic = %s AND stage = 'quality'",
            settings.topic("quality.dlq.v1"),
        )
        assert quality_letters == 0, "escalation handles every due date Avro accepts"
