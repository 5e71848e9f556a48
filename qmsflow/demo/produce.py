"""Publish demo traffic to the ingest topics, as the plant's source systems would."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from confluent_kafka import Producer

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.traffic import DemoRecord, DemoTraffic, corrupt_payloads, with_duplicates
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog


@dataclass
class ProduceReport:
    """What was sent, so a test or the live summary can check what must arrive."""

    sent: int = 0
    unique_event_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    corrupt: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)


def produce_demo(
    settings: Settings,
    *,
    count: int,
    duplicate_rate: float = 0.1,
    corrupt: int = 0,
    seed: int = 7,
    rate: float | None = None,
    start: datetime | None = None,
    echo: Callable[[str], None] = print,
) -> ProduceReport:
    """Send `count` records (duplicates included) plus `corrupt` malformed ones; wait for acks.

    `rate` caps records per second (None: as fast as the broker takes them).
    """
    rng = random.Random(seed)
    codec = AvroCodec(open_registry(settings))
    producer = create_producer(settings)
    traffic = DemoTraffic(seed, start or datetime.now(UTC) - timedelta(hours=1))
    report = ProduceReport()
    ingest_topics = [t.name for t in load_catalog().by_role("ingest")]
    records = with_duplicates(_unbounded(traffic), duplicate_rate, rng)
    bad = corrupt_payloads(corrupt, rng)
    # spread the corrupt records through the stream rather than bunching them at the end
    bad_at = set(rng.sample(range(count), min(corrupt, count))) if count else set()
    started = time.monotonic()
    for index in range(count):
        record = next(records)
        _send(producer, settings, codec, record, report)
        if index in bad_at and bad:
            topic = rng.choice(ingest_topics)
            producer.produce(settings.topic(topic), key=record.key.encode(), value=bad.pop())
            report.corrupt += 1
            report.by_topic[topic] += 1
        producer.poll(0)
        if rate:
            ahead = (index + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if (index + 1) % 1000 == 0:
            echo(f"  produced {index + 1}/{count} records")
    for payload in bad:  # corrupt records beyond `count` positions (count < corrupt)
        producer.produce(settings.topic(ingest_topics[0]), key=b"demo", value=payload)
        report.corrupt += 1
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} demo records not acknowledged by the broker in 60 s")
    return report


def _unbounded(traffic: DemoTraffic) -> Iterator[DemoRecord]:
    while True:
        yield traffic.next_record()


def _send(
    producer: Producer,
    settings: Settings,
    codec: AvroCodec,
    record: DemoRecord,
    report: ProduceReport,
) -> None:
    event_id = record.record["event_id"]
    if event_id in report.unique_event_ids:
        report.duplicates += 1
    report.unique_event_ids.add(event_id)
    producer.produce(
        settings.topic(record.topic),
        key=record.key.encode("utf-8"),
        value=codec.encode(f"{record.topic}-value", record.record),
        headers=[
            ("source_system", record.record["source_system"].encode()),
            ("content-type", b"application/vnd.confluent.avro"),
        ],
    )
    report.sent += 1
    report.by_topic[record.topic] += 1
