"""Scenario 8: poison among good traffic; each kind its own dead letter, no stalled partition."""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from qmsflow.contracts import open_registry
from qmsflow.kafka.producer import create_producer
from tests.chaos.chaos_pipeline import (
    ChaosPipeline,
    DemoSource,
    scenario_settings,
    send_raw,
    settle,
)

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("CHAOS_POISON_EVENTS", "3000"))
#: copies of each poison kind, spread through the good traffic
COPIES = int(os.environ.get("CHAOS_POISON_COPIES", "5"))
#: a timestamp a source system could not mean: 2^62 µs is ~146,000 years after 1970
OUT_OF_RANGE_MICROS = 1 << 62
#: a sentinel instant whose encoding is found and replaced in an encoded body
SENTINEL = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def _zigzag(n: int) -> bytes:
    """Avro's variable-length zig-zag encoding of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def poison_kinds(source: DemoSource) -> dict[str, Callable[[int], tuple[str, bytes, bytes]]]:
    """Builders of each poison kind: n → (topic, key, value) for the n-th copy."""
    nc = next(r for r in source.records if r.topic == "qms.nonconformance.v1")
    lab = next(r for r in source.records if r.topic == "lims.lab-result.v1")
    lot_id = open_registry(source.settings).latest("md.lot.v1-value").schema_id

    def variant(n: int, **changes: Any) -> tuple[str, bytes, bytes]:
        record = {**nc.record, "event_id": f"00000000-0000-4000-8000-{n:012d}", **changes}
        topic, key, value = source.encoded(nc.__class__(nc.topic, nc.key, record))
        return topic, key, value

    def bad_magic(n: int) -> tuple[str, bytes, bytes]:
        topic, key, value = variant(n)
        return topic, key, b"\x01" + value[1:]

    def unknown_schema(n: int) -> tuple[str, bytes, bytes]:
        topic, key, value = variant(n)
        return topic, key, b"\x00" + struct.pack(">I", 999_999) + value[5:]

    def truncated(n: int) -> tuple[str, bytes, bytes]:
        topic, key, value = variant(n)
        return topic, key, value[: len(value) // 2]

    def wrong_types(n: int) -> tuple[str, bytes, bytes]:
        # a lab result's body under the nonconformance schema id: every field read as another type
        topic, key, value = variant(n)
        _, _, lab_value = source.encoded(lab)
        return topic, key, value[:5] + lab_value[5:]

    def invalid_utf8(n: int) -> tuple[str, bytes, bytes]:
        topic, key, value = variant(n, source_record_id="NCR-POISON")
        return topic, key, value.replace(b"POISON", b"\xffOISON", 1)

    def timestamp_out_of_range(n: int) -> tuple[str, bytes, bytes]:
        topic, key, value = variant(n, occurred_at=SENTINEL)
        micros = int(SENTINEL.timestamp()) * 1_000_000 + SENTINEL.microsecond
        assert _zigzag(micros) in value
        return topic, key, value.replace(_zigzag(micros), _zigzag(OUT_OF_RANGE_MICROS), 1)

    def rogue_schema(n: int) -> tuple[str, bytes, bytes]:
        # a registered schema of another subject: a producer using the wrong contract
        topic, key, value = variant(n)
        return topic, key, b"\x00" + struct.pack(">I", lot_id) + value[5:]

    def key_not_product_line(n: int) -> tuple[str, bytes, bytes]:
        topic, _, value = variant(n)
        return topic, b"no-such-line", value

    return {
        "bad magic byte": bad_magic,
        "unknown schema id": unknown_schema,
        "truncated Avro": truncated,
        "wrong field types": wrong_types,
        "invalid UTF-8 in a string": invalid_utf8,
        "timestamp out of range": timestamp_out_of_range,
        "incompatible schema (rogue producer)": rogue_schema,
        "key is not the product line": key_not_product_line,
    }


class TestPoisonInput:
    def test_each_poison_kind_is_dead_lettered_once_and_good_traffic_flows(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """Every poison record becomes one dead letter; every good event one row; 2 MB refused."""
        started = time.monotonic()
        settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
        source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), EVENTS)
        kinds = poison_kinds(source)
        pipeline = ChaosPipeline(settings, tmp_path)
        producer = create_producer(settings)
        poison_by_kind: dict[str, int] = {}
        sent_values: dict[bytes, str] = {}
        refused: list[KafkaError] = []
        try:
            pipeline.start_worker()
            pipeline.start_sink()
            chunk = max(1, EVENTS // (COPIES + 1))
            n = 0
            for copy in range(COPIES + 1):
                source.send(source.records[copy * chunk : (copy + 1) * chunk], producer=producer)
                if copy == COPIES:
                    break
                for name, build in kinds.items():
                    n += 1
                    topic, key, value = build(n)
                    send_raw(producer, topic, key, value)
                    sent_values[value] = name
                    poison_by_kind[name] = poison_by_kind.get(name, 0) + 1
            source.send(source.records[(COPIES + 1) * chunk :], producer=producer)
            assert producer.flush(60) == 0

            def refuse(error: KafkaError | None, _message: Message) -> None:
                if error is not None:
                    refused.append(error)

            topic, key, _ = source.encoded(source.records[0])
            try:  # librdkafka refuses it before sending; the broker would too (1 MB limit)
                producer.produce(
                    topic, key=key, value=b"\x00" * (2 * 1024 * 1024), on_delivery=refuse
                )
                producer.flush(30)
            except KafkaException as refusal:
                refused.append(refusal.args[0])
        finally:
            try:
                poison = sum(poison_by_kind.values())
                account = settle(
                    pipeline,
                    scenario="8 poison input",
                    produced=source.sent + poison,
                    unique_ids=source.unique_ids,
                    poison=poison,
                    timeout=120 + EVENTS / 100,
                )
            finally:
                pipeline.stop()
        assert refused and refused[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, refused
        account.figures["poison kinds"] = len(kinds)
        account.figures["2 MB records refused by the producer"] = len(refused)
        by_kind = _reasons_by_kind(settings.dsn, settings.topic("quality.dlq.v1"), sent_values)
        account.notes.update({kind: ", ".join(sorted(codes)) for kind, codes in by_kind.items()})
        record_ledger(account, seconds=time.monotonic() - started)
        assert account.dead_letters == poison == len(kinds) * COPIES
        assert set(by_kind) == set(kinds), by_kind
        assert all(len(codes) == 1 for codes in by_kind.values()), by_kind


def _reasons_by_kind(dsn: str, dlq_topic: str, sent: dict[bytes, str]) -> dict[str, set[str]]:
    """The reason codes each poison kind's dead letters carry, matched by their original bytes."""
    with psycopg.connect(dsn) as conn:
        letters = conn.execute(
            "SELECT original_value, reason_code FROM qms.dead_letter WHERE kafka_topic = %s",
            (dlq_topic,),
        ).fetchall()
    by_kind: dict[str, set[str]] = {}
    for value, code in letters:
        by_kind.setdefault(sent.get(bytes(value), "not sent as poison"), set()).add(code)
    return by_kind
