"""Records Avro accepts that must not stop the platform: the boundary poison classes of issue 15.

Each is a well-formed record of its topic's contract, sent as an ordinary producer would, whose
value would stop a stage further on without the limits: a NUL Postgres refuses, an id too long for
a B-tree index, a time that moves every event-time clock, a due date arithmetic overflows on, a
record so large that its dead letter would not fit the topic. Each must end as exactly one dead
letter with the reason code given here. Shared by the integration test (a handful, in `make
test`) and the chaos poison scenario (every class, several copies).
"""

from __future__ import annotations

import copy
import random
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from confluent_kafka import Producer

from qmsflow.contracts import AvroCodec
from qmsflow.demo.traffic import DemoRecord
from qmsflow.settings import Settings

#: Kafka's default `message.max.bytes` (broker) and so each topic's `max.message.bytes`
BROKER_MAX_MESSAGE_BYTES = 1_048_588


@dataclass(frozen=True)
class Poison:
    """One poison record: what it is, where it goes, and the dead letter it must become."""

    kind: str
    record: DemoRecord
    reason_code: str


def boundary_poison(records: list[DemoRecord], rng: random.Random) -> list[Poison]:
    """One poison record of each class, built from valid demo records (fresh event ids)."""
    nc = next(r for r in records if r.topic == "qms.nonconformance.v1")
    capa = next(r for r in records if r.topic == "qms.capa.v1")

    def variant(base: DemoRecord, **changes: Any) -> DemoRecord:
        record = copy.deepcopy(base.record)
        record["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        payload = changes.pop("payload", {})
        record.update(changes)
        record["payload"] = {**record["payload"], **payload}
        key = changes.get("product_line", base.key)
        return DemoRecord(base.topic, key, record)

    def random_text(n: int) -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=n))

    poison = [
        Poison("NUL in a column field", variant(nc, source_record_id="NCR-\x00-1"), "limits"),
        Poison(
            "NUL inside the payload",
            variant(nc, payload={"description": "seal \x00 cracked"}),
            "limits",
        ),
        Poison(
            "far-future recorded_at (year 3000)",
            variant(capa, recorded_at=datetime(3000, 1, 1, tzinfo=UTC)),
            "limits",
        ),
        Poison(
            "far-past occurred_at (1970)",
            variant(capa, occurred_at=datetime(1970, 1, 1, tzinfo=UTC)),
            "limits",
        ),
        Poison(
            "due date 9999-12-31", variant(capa, payload={"due_date": date(9999, 12, 31)}), "limits"
        ),
        Poison("bidirectional override in lot_id", variant(nc, lot_id="LOT-\u202e1000"), "limits"),
        Poison("zero-width space in supplier_id", variant(nc, supplier_id="SUP\u200b-1"), "limits"),
    ]
    for column in ("lot_id", "source_record_id", "product_line", "part_number", "supplier_id"):
        long_value = random_text(6000)
        poison.append(
            Poison(
                f"6,000-character random {column}", variant(nc, **{column: long_value}), "limits"
            )
        )
    return poison


def near_limit_poison(records: list[DemoRecord], rng: random.Random, codec: AvroCodec) -> Poison:
    """A nonconformance at 99% of the broker's maximum message size (its description is huge).

    Its dead letter, were it to embed the whole original, would exceed the limit.
    """
    nc = next(r for r in records if r.topic == "qms.nonconformance.v1")
    record = copy.deepcopy(nc.record)
    record["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    record["payload"] = {**record["payload"], "description": ""}
    empty = len(codec.encode(f"{nc.topic}-value", record))
    target = int(BROKER_MAX_MESSAGE_BYTES * 0.99)
    # the string's length prefix grows by ~3 bytes at this size
    record["payload"]["description"] = "x" * (target - empty - 3)
    return Poison(
        "record at 99% of the maximum message size", DemoRecord(nc.topic, nc.key, record), "limits"
    )


def large_message_producer(settings: Settings) -> Producer:
    """An ordinary confluent-kafka producer that may send up to the broker's limit.

    librdkafka's own default `message.max.bytes` (1,000,000) is below the broker's.
    """
    return Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "message.max.bytes": BROKER_MAX_MESSAGE_BYTES,
        }
    )
