"""`qmsflow dlq replay` of dead letters that hold only part of a large original.

The whole original is re-read from its source coordinates and replayed when its sha256 matches;
when the source no longer holds it, the dead letter is named and nothing cut is produced.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, TopicPartition

from connectors.postgres_sink.sink import PostgresSink
from qmsflow.cli import main
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.dead_letters import REPLAY_HEADER, OriginalsUnavailable
from qmsflow.errors import FramingError
from qmsflow.kafka.admin import admin_client
from qmsflow.kafka.headers import header_pairs
from qmsflow.quality.dead_letter import VALUE_PREFIX_BYTES, DeadLetter, dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import Settings, load_settings
from tests.integration.pipeline import prepared_settings
from tests.integration.test_dlq_replay import cli, read_all, replay_rows
from tests.integration.test_dlq_replay import produce_original as produce_source_record

pytestmark = pytest.mark.integration

SOURCE = "qms.nonconformance.v1"
KEY = b"NCR-2048"
#: close to the broker's 1 MiB limit: a dead letter embedding it whole could not be published
LARGE = 990_000
HEADERS = [("source-system", b"QMS"), ("empty", None)]


@pytest.fixture
def settings(kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str) -> Settings:
    return prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix)


def produce_original(settings: Settings, value: bytes) -> Coordinates:
    """A large record, as a source system sent it; its coordinates."""
    return produce_source_record(settings, value, key=KEY, headers=HEADERS)


def letter_of(at: Coordinates, value: bytes, key: bytes = KEY) -> DeadLetter:
    """The dead letter the ingest stage makes of the record, with the default size bound."""
    return dead_letter(
        FramingError("expected magic byte 0, got 0x07"), stage="normalise", coordinates=at,
        key=key, value=value, headers=HEADERS, timestamp_ms=None, failed_at=datetime.now(UTC),
    )  # fmt: skip


def load(settings: Settings, *letters: DeadLetter) -> None:
    """Publish-encode the dead letters and load them through the sink's own path."""
    codec = AvroCodec(open_registry(settings))
    with psycopg.connect(settings.dsn) as conn:
        sink = PostgresSink(
            conn, codec, consumer_group=settings.topic("dlq-test"),
            topic_prefix=settings.topic_prefix,
        )  # fmt: skip
        for offset, letter in enumerate(letters):
            encoded = codec.encode(DEAD_LETTER_SUBJECT, dict(letter))
            assert len(encoded) < 64 * 1024, "a dead letter must stay far below 1 MiB"
            sink.add(settings.topic("quality.dlq.v1"), 0, offset, letter["key"], encoded)
        assert sink.flush()


def delete_source_records(settings: Settings, at: Coordinates) -> None:
    """Delete the partition's records up to and including `at`, as retention would."""
    admin = admin_client(settings)  # held: a collected client never resolves its futures
    futures = admin.delete_records([TopicPartition(at.topic, at.partition, at.offset + 1)])
    for future in futures.values():
        future.result(30)


def high_watermark(settings: Settings, at: Coordinates) -> int:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "wm"})
    try:
        return int(
            consumer.get_watermark_offsets(TopicPartition(at.topic, at.partition), timeout=10)[1]
        )
    finally:
        consumer.close()


def failing_cli(settings: Settings, *args: str) -> tuple[str, BaseException | None]:
    """Run `qmsflow` expecting it to fail; its output and exception."""
    load_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            main,
            list(args),
            env={
                "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                "DATABASE_URL": settings.dsn,
                "QMSFLOW_TOPIC_PREFIX": settings.topic_prefix,
            },
        )
    finally:
        load_settings.cache_clear()
    assert result.exit_code != 0, result.output
    return result.output, result.exception


class TestTruncatedReplay:
    def test_whole_original_is_reread_and_replayed(self, settings: Settings) -> None:
        """A cut dead letter replays the whole original, re-read from its source and verified."""
        value = os.urandom(LARGE)
        at = produce_original(settings, value)
        letter = letter_of(at, value)
        assert letter["value_truncated"] and letter["value"] == value[:VALUE_PREFIX_BYTES]
        load(settings, letter)
        with psycopg.connect(settings.dsn) as conn:
            stored = conn.execute(
                "SELECT octet_length(original_value), value_length, value_digest, value_truncated"
                " FROM qms.dead_letter WHERE dead_letter_id = %s",
                (letter["dead_letter_id"],),
            ).fetchone()
        assert stored == (VALUE_PREFIX_BYTES, LARGE, hashlib.sha256(value).hexdigest(), True)
        assert f"original cut ({LARGE} bytes" in cli(settings, "dlq", "list")

        cli(settings, "dlq", "replay", "--id", letter["dead_letter_id"])

        original, replayed = sorted(
            read_all(settings, settings.topic(SOURCE), 2), key=lambda m: m.offset() or 0
        )
        assert replayed.value() == original.value() == value
        assert replayed.key() == KEY
        assert header_pairs(replayed.headers()) == [
            *HEADERS,
            (REPLAY_HEADER, letter["dead_letter_id"].encode()),
        ]
        assert len(replay_rows(settings.dsn, letter["dead_letter_id"])) == 1

    def test_gone_original_is_reported_and_not_replayed(self, settings: Settings) -> None:
        """Source records deleted: the cut one is named and not replayed; a whole one still is."""
        large = os.urandom(LARGE)
        cut = letter_of(produce_original(settings, large), large)
        small = b"\x07small and whole"
        whole_at = produce_original(settings, small)
        whole = letter_of(whole_at, small)
        assert cut["value_truncated"] and not whole["value_truncated"]
        load(settings, cut, whole)
        delete_source_records(settings, whole_at)
        end_before = high_watermark(settings, whole_at)

        output, error = failing_cli(settings, "dlq", "replay", "--reason", "framing")

        assert isinstance(error, OriginalsUnavailable)
        assert f"cannot replay {cut['dead_letter_id']}" in output
        assert "is gone" in output
        assert f"replayed {whole['dead_letter_id']}" in output
        assert replay_rows(settings.dsn, cut["dead_letter_id"]) == []
        assert len(replay_rows(settings.dsn, whole["dead_letter_id"])) == 1
        assert high_watermark(settings, whole_at) == end_before + 1  # only the whole one

    def test_different_record_at_the_coordinates_is_not_replayed(self, settings: Settings) -> None:
        """A record at the coordinates whose sha256 differs is not taken for the original."""
        other = os.urandom(LARGE)
        at = produce_original(settings, other)
        claimed = os.urandom(LARGE)
        letter = letter_of(at, claimed)
        load(settings, letter)

        output, error = failing_cli(settings, "dlq", "replay", "--id", letter["dead_letter_id"])

        assert isinstance(error, OriginalsUnavailable)
        assert "differs from the one dead-lettered" in output
        assert replay_rows(settings.dsn, letter["dead_letter_id"]) == []
        assert high_watermark(settings, at) == at.offset + 1

    def test_dry_run_names_what_cannot_be_replayed(self, settings: Settings) -> None:
        """A dry run re-reads too, so it tells which replays would fail, producing nothing."""
        large = os.urandom(LARGE)
        at = produce_original(settings, large)
        letter = letter_of(at, large)
        load(settings, letter)
        delete_source_records(settings, at)

        output, _error = failing_cli(
            settings, "dlq", "replay", "--id", letter["dead_letter_id"], "--dry-run"
        )

        assert f"cannot replay {letter['dead_letter_id']}" in output
        assert high_watermark(settings, at) == at.offset + 1
