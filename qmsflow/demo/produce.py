"""Publish demo traffic to the ingest topics, as the plant's source systems would."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Producer

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.master_data import MasterMessage, demo_master_data
from qmsflow.demo.traffic import (
    PLANT,
    DemoRecord,
    DemoTraffic,
    backdated_start,
    corrupt_payloads,
    with_duplicates,
)
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
    late_lots: list[str] = field(default_factory=list)


def produce_demo(
    settings: Settings,
    *,
    count: int,
    duplicate_rate: float = 0.1,
    corrupt: int = 0,
    seed: int = 7,
    rate: float | None = None,
    start: datetime | None = None,
    master_data: bool = True,
    late_lots: int = 0,
    echo: Callable[[str], None] = print,
) -> ProduceReport:
    """Send `count` records (duplicates included) plus `corrupt` malformed ones; wait for acks.

    First the master data every record refers to (md.* topics), except `late_lots` lots that
    are published halfway through, so events about them are parked and then released.
    `rate` caps records per second (None: as fast as the broker takes them). With a rate and no
    `start`, simulated time starts now and advances 1/rate per record, so each `recorded_at`
    is close to when the record is sent; without a rate, it ends at least an hour ago.
    """
    rng = random.Random(seed)
    codec = AvroCodec(open_registry(settings))
    producer = create_producer(settings)
    live = rate is not None and start is None
    start = start or (datetime.now(UTC) if live else backdated_start(count, datetime.now(UTC)))
    gap = 1 / rate if live and rate else None
    traffic = DemoTraffic(seed, start) if gap is None else DemoTraffic(seed, start, PLANT, gap)
    report = ProduceReport()
    master = demo_master_data(seed, start, count, PLANT, gap) if master_data else []
    lots = [m for m in master if m[0] == "md.lot.v1"]
    late = rng.sample(lots, min(late_lots, len(lots)))
    late_keys = {m[1] for m in late}
    _publish_master(producer, settings, codec, [m for m in master if m[1] not in late_keys])
    report.late_lots = sorted(late_keys)
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
        if late and index == count // 2:
            _publish_master(producer, settings, codec, late)
        if (index + 1) % 1000 == 0:
            echo(f"  produced {index + 1}/{count} records")
    for payload in bad:  # corrupt records beyond `count` positions (count < corrupt)
        producer.produce(settings.topic(ingest_topics[0]), key=b"demo", value=payload)
        report.corrupt += 1
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} demo records not acknowledged by the broker in 60 s")
    return report


class DemoPublisher:
    """Publish chosen records and master messages (a scripted scenario), waiting for acks."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._codec = AvroCodec(open_registry(settings))
        self._producer = create_producer(settings)
        self.report = ProduceReport()

    def master(self, messages: list[MasterMessage]) -> None:
        """Publish master records, keyed by entity id."""
        _publish_master(self._producer, self._settings, self._codec, messages)

    def events(self, records: Iterable[DemoRecord]) -> None:
        """Publish ingest records, counted in `report`."""
        for record in records:
            _send(self._producer, self._settings, self._codec, record, self.report)
        if self._producer.flush(60):
            raise RuntimeError("scenario records not acknowledged by the broker in 60 s")


def _publish_master(
    producer: Producer, settings: Settings, codec: AvroCodec, messages: list[MasterMessage]
) -> None:
    """Publish master records (keyed by entity id) and wait: events may depend on them."""
    for topic, key, record in messages:
        producer.produce(
            settings.topic(topic),
            key=key.encode("utf-8"),
            value=codec.encode(f"{topic}-value", record),
        )
    if producer.flush(60):
        raise RuntimeError("demo master data not acknowledged by the broker in 60 s")


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
