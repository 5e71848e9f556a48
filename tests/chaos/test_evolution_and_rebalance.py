"""Scenarios 9 and 5: producers switch to schema v2 mid-stream; workers join and leave."""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import psycopg
import pytest
from fastavro import schemaless_writer

from qmsflow.contracts import frame
from qmsflow.contracts.registry import FileSchemaRegistry
from qmsflow.kafka.producer import create_producer
from tests.chaos.chaos_pipeline import (
    ChaosPipeline,
    DemoSource,
    scenario_settings,
    send_raw,
    settle,
    stored_ids,
)

pytestmark = pytest.mark.integration

EVOLUTION_EVENTS = int(os.environ.get("CHAOS_EVOLUTION_EVENTS", "6000"))
REBALANCE_EVENTS = int(os.environ.get("CHAOS_REBALANCE_EVENTS", "8000"))
#: join/leave steps of the storm, and the seconds between them
REBALANCE_STEPS = int(os.environ.get("CHAOS_REBALANCE_STEPS", "6"))
REBALANCE_EVERY = float(os.environ.get("CHAOS_REBALANCE_EVERY", "10"))
RATE = float(os.environ.get("CHAOS_REBALANCE_RATE", "150"))
SUBJECT = "qms.nonconformance.v1-value"


class TestSchemaEvolutionUnderTraffic:
    def test_producers_switching_to_v2_mid_stream_lose_nothing(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """Nonconformances are written with v1, then v2 (risk priority number), with no pause."""
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), EVOLUTION_EVENTS)
        registry = FileSchemaRegistry.load(settings.schemas_dir)
        v1, v2 = registry.get(SUBJECT, 1), registry.latest(SUBJECT)
        assert v2.version == 2
        producer = create_producer(settings)
        pipeline = ChaosPipeline(settings, tmp_path)
        written = {1: 0, 2: 0}
        try:
            pipeline.start_worker()
            pipeline.start_sink()
            switch = len(source.records) // 2
            for n, record in enumerate(source.records):
                if record.topic != "qms.nonconformance.v1":
                    send_raw(producer, *source.encoded(record))
                    continue
                schema = v1 if n < switch else v2
                datum = dict(record.record)
                if schema is v2:
                    datum["payload"] = {**datum["payload"], "risk_priority_number": 120 + n % 500}
                body = BytesIO()
                schemaless_writer(body, schema.parsed, datum)
                topic = settings.topic(record.topic)
                send_raw(
                    producer, topic, record.key.encode(), frame(schema.schema_id, body.getvalue())
                )
                written[schema.version] += 1
                producer.poll(0)
            assert producer.flush(120) == 0
            source.sent += len(source.records)
            account = settle(
                pipeline,
                scenario="9 schema evolution v1 to v2 under traffic",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=120 + EVOLUTION_EVENTS / 100,
            )
        finally:
            pipeline.stop()
        with psycopg.connect(postgres_dsn) as conn:
            versions: dict[int, int] = dict(
                conn.execute(
                    "SELECT source_schema_version, count(*) FROM qms.quality_event"
                    " WHERE kafka_topic = %s AND event_type = 'nonconformance' GROUP BY 1",
                    (settings.topic("quality.events.v1"),),
                ).fetchall()
            )
            with_rpn = conn.execute(
                "SELECT count(*) FROM qms.quality_event WHERE kafka_topic = %s"
                " AND payload ? 'risk_priority_number'"
                " AND payload->>'risk_priority_number' IS NOT NULL",
                (settings.topic("quality.events.v1"),),
            ).fetchone()
        account.figures["nonconformances written with v1"] = written[1]
        account.figures["nonconformances written with v2"] = written[2]
        account.notes["rows by source schema version"] = str(versions)
        account.figures["rows carrying risk_priority_number"] = with_rpn[0] if with_rpn else 0
        record_ledger(account, seconds=time.monotonic() - started)
        assert written[1] > 0 and written[2] > 0
        assert versions == {1: written[1], 2: written[2]}, versions


class TestRebalanceStorm:
    def test_workers_joining_and_leaving_under_traffic_lose_and_double_nothing(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """A second and third worker join and leave (SIGTERM, one SIGKILL) while traffic flows."""
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), REBALANCE_EVENTS)
        pipeline = ChaosPipeline(settings, tmp_path)
        sender = threading.Thread(target=source.send, args=(source.records,), kwargs={"rate": RATE})
        steps: list[str] = []
        try:
            pipeline.start_worker()
            pipeline.start_sink()
            sender.start()
            for step in range(REBALANCE_STEPS):
                time.sleep(REBALANCE_EVERY)
                pipeline.assert_alive()
                if step % 3 == 2 and pipeline.extra_workers:
                    pipeline.stop_extra_worker(kill=step == 2)
                    steps.append("kill" if step == 2 else "leave")
                else:
                    pipeline.start_extra_worker(step)
                    steps.append("join")
            while pipeline.extra_workers:
                pipeline.stop_extra_worker()
                steps.append("leave")
            sender.join()
            account = settle(
                pipeline,
                scenario="5 rebalance storm",
                produced=source.sent,
                unique_ids=source.unique_ids,
                poison=0,
                timeout=180 + REBALANCE_EVENTS / 100,
            )
        finally:
            sender.join()
            pipeline.stop()
        account.notes["membership changes"] = ", ".join(steps)
        if account.missing:
            stored = stored_ids(settings)
            lost = sorted(
                f"{r.topic} key {r.key}"
                for r in source.records
                if r.record["event_id"] not in stored
            )
            account.notes["lost events by source topic and key"] = "; ".join(lost)
            account.notes["lost events were written at"] = source.locate(source.unique_ids - stored)
        account.figures["membership changes"] = len(steps)
        record_ledger(account, seconds=time.monotonic() - started)
