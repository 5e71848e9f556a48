"""The status page against the real broker and Postgres, and rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from qmsflow.kafka.admin import consumed_offsets, end_offsets
from qmsflow.settings import Settings
from qmsflow.status_page import make_server
from qmsflow.topics import load_catalog
from tests.integration.pipeline import prepared_settings

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INGEST = ("qms.nonconformance.v1", "lims.lab-result.v1")


@pytest.fixture
def settings(kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str) -> Settings:
    settings = prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
    return settings


@pytest.fixture
def page_url(settings: Settings) -> Iterator[str]:
    server: ThreadingHTTPServer = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def _produce(settings: Settings, topic: str, count: int) -> None:
    """Raw records: the page counts offsets, so their content does not matter."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for n in range(count):
        producer.produce(settings.topic(topic), key=f"k{n}".encode(), value=b"{}")
    assert producer.flush(30) == 0


def _commit_half(settings: Settings, group: str, topic: str) -> None:
    """Commit `group` halfway through every partition of `topic`."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    try:
        name = settings.topic(topic)
        partitions = consumer.list_topics(name, timeout=30).topics[name].partitions
        offsets = []
        for p in partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=30)
            offsets.append(TopicPartition(name, p, high // 2))
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def _seed_rows(settings: Settings) -> str:
    """One SLA breach, one parked event and one open incident in this test's lineage."""
    now = datetime.now(UTC)
    incident = str(uuid.uuid4())
    with psycopg.connect(settings.dsn) as conn:
        conn.execute(
            "INSERT INTO qms.sla_breach (breach_id, sla, interface, event_id, event_type,"
            " source_system, source_record_id, product_line, site, output, output_id,"
            " recorded_at, produced_at, elapsed_ms, limit_ms, synthetic, kafka_topic,"
            " kafka_partition, kafka_offset) VALUES (%s, 'nonconformance-quarantine', 'NC',"
            " %s, 'nonconformance', 'QMS', 'NCR-1', 'pumps', 'DE01', 'quarantine_command',"
            " 'c1', %s, %s, 600000, 300000, false, %s, 0, 0)",
            (
                uuid.uuid4(),
                uuid.uuid4(),
                now - timedelta(minutes=10),
                now,
                settings.topic("ops.sla-breaches.v1"),
            ),
        )
        conn.execute(
            "INSERT INTO qms.parked_event (event_id, status, event_type, product_line,"
            " missing_references, parked_at, deadline_at, event_json, kafka_topic,"
            " kafka_partition, kafka_offset) VALUES (%s, 'PARKED', 'nonconformance', 'pumps',"
            " ARRAY['lot:L1'], %s, %s, '{}', %s, 0, 0)",
            (uuid.uuid4(), now, now + timedelta(hours=1), settings.topic("quality.parked.v1")),
        )
        conn.execute(
            "INSERT INTO qms.incident (environment, incident_id, root_cause_key, ordinal,"
            " status, severity, opened_at, last_at, member_count, suppressed_alerts,"
            " event_types, source_systems, product_line, site, revision, kafka_topic,"
            " kafka_partition, kafka_offset) VALUES (%s, %s, 'lot:L-STATUS', 1, 'open',"
            " 'critical', %s, %s, 7, 6, ARRAY['nonconformance'], ARRAY['QMS'], 'pumps', 'DE01',"
            " 7, %s, 0, 0)",
            (settings.topic_prefix, incident, now, now, settings.topic("quality.incidents.v1")),
        )
    return incident


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/status", timeout=60) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


class TestStatusApi:
    def test_numbers_match_direct_kafka_and_postgres_reads(
        self, settings: Settings, page_url: str
    ) -> None:
        """Totals, lag, SLA, parked and incidents equal what Kafka and Postgres say directly."""
        _produce(settings, INGEST[0], 30)
        _produce(settings, INGEST[1], 20)
        _produce(settings, "quality.events.v1", 12)
        _produce(settings, "quality.dlq.v1", 3)
        worker = settings.topic(settings.app_id)
        _commit_half(settings, worker, INGEST[0])
        incident = _seed_rows(settings)

        first = _status(page_url)

        ingest = [settings.topic(t.name) for t in load_catalog().by_role("ingest")]
        canonical, dlq = settings.topic("quality.events.v1"), settings.topic("quality.dlq.v1")
        ends = end_offsets(settings, [*ingest, canonical, dlq])
        assert first["totals"]["ingested"] == sum(ends[t] for t in ingest) == 50
        assert first["totals"]["canonical"] == ends[canonical] == 12
        assert first["totals"]["dead_letters"] == ends[dlq] == 3
        committed = consumed_offsets(settings, worker, [settings.topic(INGEST[0])])
        (group,) = [g for g in first["lag"]["groups"] if g["group"] == worker]
        assert group["lag"] == ends[settings.topic(INGEST[0])] - sum(committed.values())
        assert {p["topic"] for p in group["partitions"]} == {settings.topic(INGEST[0])}
        assert first["errors"]["parked"] == 1
        sla = {s["sla"]: s for s in first["sla"]}
        assert sla["nonconformance-quarantine"]["breaches"] == 1
        assert sla["nonconformance-quarantine"]["compliance"] == 0.0
        assert sla["lab-oos-incident"]["compliance"] == 1.0
        assert first["incidents"]["open"] == 1
        assert first["incidents"]["top"][0]["incident_id"] == incident
        assert first["incidents"]["top"][0]["member_count"] == 7

        _produce(settings, INGEST[1], 10)
        time.sleep(1.2)  # past the page's shared-sample window
        second = _status(page_url)
        assert second["throughput"]["events_in"] == 10
        assert second["throughput"]["events_out"] == 0
        assert len(second["history"]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
class TestStatusPageInChromium:
    def test_page_renders_live_numbers(
        self, settings: Settings, page_url: str, tmp_path: Path
    ) -> None:
        """Headless Chromium runs the script: the DOM shows the totals; the PNG is not blank."""
        _produce(settings, INGEST[0], 25)
        assert CHROMIUM is not None
        common = [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--virtual-time-budget=6000",
            "--window-size=1280,900",
        ]
        dom = subprocess.run(
            [*common, "--dump-dom", f"{page_url}/"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert "25 ingested" in dom
        assert '<span id="state" class="">updated ' in dom  # the poll succeeded

        png = tmp_path / "status.png"
        subprocess.run(
            [*common, f"--screenshot={png}", f"{page_url}/"],
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(png) as image:
            assert image.size == (1280, 900)
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 50, "the screenshot is blank"
