"""One event's trace, followed from its producer through every stage to its Postgres row."""

from __future__ import annotations

import socket
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.master_data import plant_master_records
from qmsflow.demo.scenarios import Scenario, bad_supplier_lot
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings
from tests.integration.pipeline import PipelineProcesses, environment, prepared_settings, wait_for

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"


def free_port() -> int:
    """A TCP port nobody listens on right now (for a child's /metrics endpoint)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TracedPlant:
    """A pipeline whose master data (plant and one lot) is on the topics before it starts.

    The lot is known before the first event, so events flow straight through instead of
    parking (a parked event is released by a tick, outside its trace).
    """

    def __init__(self, settings: Settings, processes: PipelineProcesses, scenario: Scenario):
        self.settings = settings
        self.processes = processes
        self.scenario = scenario
        self.codec = AvroCodec(open_registry(settings))
        self.producer = create_producer(settings)
        self.trace_file = processes.logs / "spans.jsonl"
        self.metrics_port = int(processes.env["QMSFLOW_METRICS_PORT"])

    def publish(self, record: dict[str, Any], topic: str, headers: list[tuple[str, bytes]]) -> None:
        """Produce one ingest record, keyed by its product line, with `headers`."""
        self.producer.produce(
            self.settings.topic(topic),
            key=record["product_line"].encode(),
            value=self.codec.encode(f"{topic}-value", record),
            headers=headers,
        )
        assert self.producer.flush(30) == 0

    def nonconformance(self, recorded_at: datetime) -> dict[str, Any]:
        """A new event of the scenario's open NC on the lot, recorded at `recorded_at`."""
        record = self._copy("qms.nonconformance.v1", recorded_at)
        record["source_record_id"] = f"NCR-T{uuid.uuid4().hex[:6]}"
        return record

    def lab_oos(self, recorded_at: datetime) -> dict[str, Any]:
        """A new OOS lab result on the lot, recorded at `recorded_at`."""
        return self._copy("lims.lab-result.v1", recorded_at)

    def _copy(self, topic: str, recorded_at: datetime) -> dict[str, Any]:
        template = next(r for r in self.scenario.trouble if r.topic == topic)
        record = {**template.record}
        record["payload"] = dict(template.record["payload"])
        record.update(
            event_id=str(uuid.uuid4()),
            occurred_at=recorded_at - timedelta(seconds=5),
            recorded_at=recorded_at,
        )
        return record

    def spans(self) -> list[dict[str, Any]]:
        """Every span both processes have written so far."""
        if not self.trace_file.exists():
            return []
        return [orjson.loads(line) for line in self.trace_file.read_bytes().splitlines() if line]


@pytest.fixture
def plant(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[TracedPlant]:
    settings = prepared_settings(
        kafka_bootstrap,
        postgres_dsn,
        topic_prefix,
        sink_batch_size=200,
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    scenario = bad_supplier_lot(zlib.crc32(topic_prefix.encode()), start)
    codec = AvroCodec(open_registry(settings))
    producer = create_producer(settings)
    for topic, key, record in [
        *plant_master_records(start - timedelta(days=30)),
        scenario.lot_master,
    ]:
        producer.produce(
            settings.topic(topic), key=key.encode(), value=codec.encode(f"{topic}-value", record)
        )
    assert producer.flush(30) == 0
    env = {
        **environment(settings, kafka_bootstrap, postgres_dsn),
        "QMSFLOW_TICK_INTERVAL": "1",
        "QMSFLOW_TRACE_FILE": str(tmp_path / "spans.jsonl"),
        "QMSFLOW_METRICS_PORT": str(free_port()),
    }
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    processes.start_sink()
    yield TracedPlant(settings, processes, scenario)
    processes.stop()


def scalar(dsn: str, sql: str, *args: Any) -> Any:
    """The first column of the first row, or None."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


class TestTracing:
    def test_trace_id_follows_one_event_from_producer_to_postgres(
        self, plant: TracedPlant, postgres_dsn: str
    ) -> None:
        """The producer's trace id is on the quality_event row and on a span of every stage.

        Each stage's span is the child of the span that produced its input: ingest of the
        producer's, quality of ingest's, correlate of quality's; the sink's spans (one per
        sinked record of the event: canonical event, quarantine command, incident) are children
        of the stages that produced those records. Every span names the correlation id.
        """
        prefix = plant.settings.topic_prefix
        record = plant.nonconformance(datetime.now(UTC))
        correlation = f"corr-{uuid.uuid4().hex[:8]}"
        plant.publish(
            record,
            "qms.nonconformance.v1",
            [("traceparent", TRACEPARENT.encode()), ("correlation_id", correlation.encode())],
        )

        wait_for(
            lambda: (
                scalar(
                    postgres_dsn,
                    "SELECT trace_id FROM qms.quality_event"
                    " WHERE event_id = %s AND kafka_topic LIKE %s",
                    record["event_id"],
                    prefix + "%",
                )
                is not None
            ),
            timeout=120,
            what="the event's qms.quality_event row",
            alive=plant.processes.assert_alive,
        )
        trace_id = scalar(
            postgres_dsn,
            "SELECT trace_id FROM qms.quality_event WHERE event_id = %s",
            record["event_id"],
        )
        assert trace_id == TRACE_ID

        def traced() -> dict[str, list[dict[str, Any]]]:
            by_name: dict[str, list[dict[str, Any]]] = {}
            for span in plant.spans():
                if span["trace_id"] == TRACE_ID:
                    by_name.setdefault(span["name"], []).append(span)
            return by_name

        def complete() -> bool:
            spans = traced()
            return {"ingest", "quality", "correlate"} <= set(spans) and len(spans["sink"]) >= 3

        wait_for(
            complete,
            timeout=120,
            what=f"spans of every stage in trace {TRACE_ID}",
            alive=plant.processes.assert_alive,
        )
        spans = traced()
        [ingest], [quality], [correlate] = spans["ingest"], spans["quality"], spans["correlate"]
        assert ingest["parent_span_id"] == PRODUCER_SPAN
        assert quality["parent_span_id"] == ingest["span_id"]
        assert correlate["parent_span_id"] == quality["span_id"]
        stage_spans = {ingest["span_id"], quality["span_id"], correlate["span_id"]}
        sinked = {s["attributes"]["messaging.source"]: s for s in spans["sink"]}
        assert {
            "quality.events.v1",
            "inventory.quarantine-commands.v1",
            "quality.incidents.v1",
        } <= set(sinked)
        assert sinked["quality.events.v1"]["parent_span_id"] == ingest["span_id"]
        assert sinked["inventory.quarantine-commands.v1"]["parent_span_id"] == quality["span_id"]
        assert sinked["quality.incidents.v1"]["parent_span_id"] == correlate["span_id"]
        assert all(s["parent_span_id"] in stage_spans for s in spans["sink"])
        for span in (ingest, quality, correlate, *spans["sink"]):
            assert span["attributes"]["qmsflow.correlation_id"] == correlation, span["name"]
        assert ingest["attributes"]["qmsflow.event_id"] == record["event_id"]
        batch_ids = {link["span_id"] for s in spans["sink"] for link in s["links"]}
        batches = [s for s in plant.spans() if s["name"] == "sink.batch"]
        assert batch_ids <= {b["span_id"] for b in batches}
