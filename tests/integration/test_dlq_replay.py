"""`qmsflow dlq replay` puts a dead letter's original record back on its source topic, audited."""

from __future__ import annotations

import getpass
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from connectors.postgres_sink.sink import PostgresSink
from qmsflow.cli import main
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.dead_letters import REPLAY_HEADER
from qmsflow.errors import FramingError
from qmsflow.kafka.admin import end_offsets
from qmsflow.kafka.headers import header_pairs
from qmsflow.kafka.producer import create_producer
from qmsflow.quality.dead_letter import dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import Settings, load_settings
from tests.integration.pipeline import prepared_settings

pytestmark = pytest.mark.integration

SOURCE = "qms.nonconformance.v1"
KEY = b"NCR-1042"
VALUE = b"\x07not confluent framing \xff\x00"
HEADERS = [("source-system", b"QMS"), ("empty", None), ("source-system", b"twice")]


@pytest.fixture
def settings(kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str) -> Settings:
    settings = prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
    return settings


def produce_original(
    settings: Settings,
    value: bytes = VALUE,
    *,
    key: bytes = KEY,
    headers: list[tuple[str, bytes | None]] = HEADERS,
) -> Coordinates:
    """A record (the corrupt one by default), as a source system sent it; its coordinates."""
    delivered: list[Message] = []
    producer = create_producer(settings)
    producer.produce(
        settings.topic(SOURCE), key=key, value=value, headers=list(headers),
        on_delivery=lambda _error, message: delivered.append(message),
    )  # fmt: skip
    assert producer.flush(30) == 0
    (message,) = delivered
    assert message.error() is None, message.error()
    return Coordinates(message.topic() or "", message.partition() or 0, message.offset() or 0)


def load_dead_letter(settings: Settings, at: Coordinates) -> str:
    """Dead-letter the record as the ingest stage does, and load it through the sink's own path."""
    codec = AvroCodec(open_registry(settings))
    letter = dead_letter(
        FramingError("expected magic byte 0, got 0x07"), stage="normalise", coordinates=at,
        key=KEY, value=VALUE, headers=HEADERS, timestamp_ms=None, failed_at=datetime.now(UTC),
    )  # fmt: skip
    with psycopg.connect(settings.dsn) as conn:
        sink = PostgresSink(
            conn,
            codec,
            consumer_group=settings.topic("dlq-test"),
            topic_prefix=settings.topic_prefix,
        )
        sink.add(
            settings.topic("quality.dlq.v1"),
            0,
            0,
            KEY,
            codec.encode(DEAD_LETTER_SUBJECT, dict(letter)),
        )
        assert sink.flush()
    return letter["dead_letter_id"]


def read_all(settings: Settings, topic: str, expected: int) -> list[Message]:
    """Every record on a topic, from the beginning, once `expected` have arrived."""
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.topic("verify"),
         "enable.auto.commit": False}
    )  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: list[Message] = []
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            got += [m for m in consumer.consume(10, 0.5) if m.error() is None]
        assert len(got) == expected, f"expected {expected} records on {topic}, got {len(got)}"
        return got
    finally:
        consumer.close()


def cli(settings: Settings, *args: str) -> str:
    """Run the `qmsflow` command in this process, with this test's environment."""
    load_settings.cache_clear()  # the CLI reads its settings once per process; here, per call
    try:
        result = CliRunner().invoke(
            main,
            list(args),
            env={
                "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                "DATABASE_URL": settings.dsn,
                "QMSFLOW_TOPIC_PREFIX": settings.topic_prefix,
            },
            catch_exceptions=False,
        )
    finally:
        load_settings.cache_clear()  # leave no test's environment behind for later tests
    assert result.exit_code == 0, result.output
    return result.output


def replay_rows(dsn: str, dead_letter_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT replayed_by, target_topic, target_partition, target_offset"
            " FROM qms.dead_letter_replay WHERE dead_letter_id = %s",
            (dead_letter_id,),
        ).fetchall()


class TestReplay:
    def test_dry_run_lists_and_produces_nothing(self, settings: Settings) -> None:
        """A dry run names the dead letter, produces no record and records no replay."""
        letter_id = load_dead_letter(settings, produce_original(settings))
        listed = cli(settings, "dlq", "list", "--reason", "framing", "--stage", "normalise")
        assert letter_id in listed and settings.topic(SOURCE) in listed

        output = cli(settings, "dlq", "replay", "--id", letter_id, "--dry-run")

        assert f"would replay {letter_id}" in output
        assert end_offsets(settings, [settings.topic(SOURCE)]) == {settings.topic(SOURCE): 1}
        assert replay_rows(settings.dsn, letter_id) == []

    def test_replay_puts_the_original_bytes_back_with_the_header(self, settings: Settings) -> None:
        """The source topic gets the exact key, value and headers again, plus replay-of; audited."""
        letter_id = load_dead_letter(settings, produce_original(settings))

        cli(settings, "dlq", "replay", "--reason", "framing")

        original, replayed = sorted(
            read_all(settings, settings.topic(SOURCE), 2), key=lambda m: m.offset() or 0
        )
        assert replayed.key() == original.key() == KEY
        assert replayed.value() == original.value() == VALUE
        assert header_pairs(original.headers()) == HEADERS
        assert header_pairs(replayed.headers()) == [*HEADERS, (REPLAY_HEADER, letter_id.encode())]
        assert replay_rows(settings.dsn, letter_id) == [
            (getpass.getuser(), replayed.topic(), replayed.partition(), replayed.offset())
        ]

    def test_replay_by_reason_skips_what_was_replayed(self, settings: Settings) -> None:
        """A second replay by reason finds nothing left; by id it replays again, audited twice."""
        letter_id = load_dead_letter(settings, produce_original(settings))
        cli(settings, "dlq", "replay", "--reason", "framing")

        assert "0 dead letters replayed" in cli(settings, "dlq", "replay", "--reason", "framing")
        cli(settings, "dlq", "replay", "--id", letter_id)

        assert end_offsets(settings, [settings.topic(SOURCE)]) == {settings.topic(SOURCE): 3}
        assert len(replay_rows(settings.dsn, letter_id)) == 2
