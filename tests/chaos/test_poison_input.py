"""Scenario 8: poison among good traffic; each kind its own dead letter, no stalled partition."""

from __future__ import annotations

import json
import os
import random
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
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from qmsflow.contracts import open_registry
from qmsflow.settings import Settings
from tests.chaos.chaos_pipeline import (
    ChaosPipeline,
    DemoSource,
    scenario_settings,
    send_raw,
    settle,
)
from tests.integration.boundary_poison import (
    boundary_poison,
    large_message_producer,
    near_limit_poison,
)
from tests.integration.pipeline import wait_for

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("CHAOS_POISON_EVENTS", "3000"))
#: copies of each poison kind, spread through the good traffic
COPIES = int(os.environ.get("CHAOS_POISON_COPIES", "5"))
#: a timestamp a source system could not mean: 2^62 µs is ~146,000 years after 1970
OUT_OF_RANGE_MICROS = 1 << 62
#: a sentinel instant whose encoding is found and replaced in an encoded body
SENTINEL = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
#: the CDC table whose topic carries the deeply nested change records
CDC_TABLE = "cmms.asset"
#: nesting of the JSON in those change records: far past Python's recursion limit
CDC_NESTING = 10_000

Coordinates = tuple[str, int, int]


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

    def boundary(kind: str) -> Callable[[int], tuple[str, bytes, bytes]]:
        # valid Avro whose values a later stage could not take (issue 15): a fresh id per copy
        def build(n: int) -> tuple[str, bytes, bytes]:
            rng = random.Random(n)
            if kind == "near limit":
                return source.encoded(near_limit_poison(source.records, rng, source.codec).record)
            chosen = next(p for p in boundary_poison(source.records, rng) if p.kind == kind)
            return source.encoded(chosen.record)

        return build

    def cdc_nested(n: int) -> tuple[str, bytes, bytes]:
        key = json.dumps({"equipment_id": f"EQ-NESTED-{n}"}).encode()
        spec = "[" * CDC_NESTING + "]" * CDC_NESTING
        source_block = {"connector": "postgresql", "name": "cdc.erp", "ts_ms": 1, "db": "plant"}
        envelope = json.dumps(
            {
                "before": None,
                "after": {"equipment_id": f"EQ-NESTED-{n}", "spec": "SPEC"},
                "op": "c",
                "source": {**source_block, "schema": "cmms", "table": "asset", "lsn": n},
                "ts_ms": 2,
            }
        ).replace('"SPEC"', spec)  # json.dumps itself cannot nest this deep
        return source.settings.topic(f"cdc.erp.{CDC_TABLE}"), key, envelope.encode()

    boundary_kinds = [p.kind for p in boundary_poison(source.records, random.Random(0))]
    return {
        **{kind: boundary(kind) for kind in boundary_kinds},
        "record at 99% of the maximum message size": boundary("near limit"),
        f"CDC JSON nested {CDC_NESTING:,} levels": cdc_nested,
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
        _create_cdc_topic(settings)
        pipeline = ChaosPipeline(settings, tmp_path)
        # an ordinary producer, allowed up to the broker's limit (librdkafka's default is lower)
        producer = large_message_producer(settings)
        poison_by_kind: dict[str, int] = {}
        sent_at: dict[Coordinates, str] = {}
        refused: list[KafkaError] = []

        def placed(kind: str) -> Callable[[KafkaError | None, Message], None]:
            def note(error: KafkaError | None, message: Message) -> None:
                if error is not None:
                    refused.append(error)
                else:
                    where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
                    sent_at[where] = kind

            return note

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
                    send_raw(producer, topic, key, value, on_delivery=placed(name))
                    poison_by_kind[name] = poison_by_kind.get(name, 0) + 1
            source.send(source.records[(COPIES + 1) * chunk :], producer=producer)
            assert producer.flush(60) == 0
            assert not refused, refused

            def refuse(error: KafkaError | None, _message: Message) -> None:
                if error is not None:
                    refused.append(error)

            topic, key, _ = source.encoded(source.records[0])
            try:  # librdkafka refuses it before sending; the broker would too (1 MiB limit)
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
        by_kind = _reasons_by_kind(settings.dsn, settings.topic("quality.dlq.v1"), sent_at)
        account.notes.update({kind: ", ".join(sorted(codes)) for kind, codes in by_kind.items()})
        record_ledger(account, seconds=time.monotonic() - started)
        assert account.dead_letters == poison == len(kinds) * COPIES
        assert set(by_kind) == set(kinds), by_kind
        assert all(len(codes) == 1 for codes in by_kind.values()), by_kind


def _reasons_by_kind(dsn: str, dlq_topic: str, sent: dict[Coordinates, str]) -> dict[str, set[str]]:
    """The reason codes each poison kind's dead letters carry, matched by their source coordinates.

    (Not by the original bytes: a dead letter of a near-limit record keeps only their start.)
    """
    with psycopg.connect(dsn) as conn:
        letters = conn.execute(
            "SELECT source_topic, source_partition, source_offset, reason_code"
            " FROM qms.dead_letter WHERE kafka_topic = %s",
            (dlq_topic,),
        ).fetchall()
    by_kind: dict[str, set[str]] = {}
    for topic, partition, offset, code in letters:
        kind = sent.get((topic, partition, offset), "not sent as poison")
        by_kind.setdefault(kind, set()).add(code)
    return by_kind


def _create_cdc_topic(settings: Settings) -> None:
    """The CDC topic of the nested change records, as Debezium makes it, before the worker starts.

    The worker subscribes to the CDC topics the broker lists at start-up.
    """
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    topic = settings.topic(f"cdc.erp.{CDC_TABLE}")
    new = NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([new], operation_timeout=30).values():
        future.result()
    wait_for(
        lambda: topic in admin.list_topics(timeout=10).topics,
        timeout=60,
        what=f"the broker to list {topic}",
    )
