"""Scenario 12: fuzzing the decoders; every input ends as one canonical record or one dead letter.

In-process (no broker): the bytes go through the ingest stage exactly as the worker calls it,
then through the encoder of whichever output it chose, then, for a canonical record, through
the sink's row mapping. `CHAOS_FUZZ_EXAMPLES` bounds the run (default 20,000 inputs).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.postgres_sink.rows import BINDINGS
from qmsflow.contracts import AvroCodec
from qmsflow.contracts.registry import FileSchemaRegistry
from qmsflow.demo.traffic import DemoTraffic
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import (
    CANONICAL_SUBJECT,
    DEAD_LETTER_SUBJECT,
    DeadLettered,
    IngestStage,
    RawMessage,
)
from qmsflow.reconcile import Ledger
from qmsflow.settings import PROJECT_ROOT
from qmsflow.topics import load_catalog

EXAMPLES = int(os.environ.get("CHAOS_FUZZ_EXAMPLES", "20000"))

CODEC = AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))
STAGE = IngestStage(CODEC, load_catalog(), load_dictionary(), topic_prefix="fuzz.")
SEEDS = [
    (r.topic, r.key.encode(), CODEC.encode(f"{r.topic}-value", r.record))
    for r in DemoTraffic(5, datetime(2026, 3, 1, tzinfo=UTC)).records(200)
]
CANONICAL_ROWS = next(b for b in BINDINGS if b.topic == "quality.events.v1").writes[0]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None]:
    """A real record's bytes with flips, cuts, insertions or splices; or raw noise."""
    topic, seed_key, value = draw(st.sampled_from(SEEDS))
    key: bytes | None = seed_key
    kind = draw(st.sampled_from(["flip", "cut", "insert", "splice", "noise", "key"]))
    data = bytearray(value)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "splice":
        _, _, other = draw(st.sampled_from(SEEDS))
        i = draw(st.integers(5, len(data)))
        data = data[:i] + other[draw(st.integers(5, len(other))) :]
    elif kind == "noise":
        data = bytearray(draw(st.binary(max_size=300)))
    else:
        key = draw(st.one_of(st.none(), st.binary(max_size=20)))
    return topic, key, bytes(data)


class TestFuzzDecoders:
    def test_every_fuzzed_input_ends_as_a_record_or_a_dead_letter(
        self, record_ledger: Callable[..., None]
    ) -> None:
        """No input raises; each is exactly one encodable canonical record or dead letter."""
        started = time.monotonic()
        outcomes: Counter[str] = Counter()
        reasons: Counter[str] = Counter()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(mutated())
        def one(case: tuple[str, bytes | None, bytes | None]) -> None:
            topic, key, value = case
            n = sum(outcomes.values())
            message = RawMessage(f"fuzz.{topic}", 0, n, key, value, [], 1_700_000_000_000)
            result = STAGE.decode(message)
            if isinstance(result, DeadLettered):
                CODEC.encode(DEAD_LETTER_SUBJECT, dict(result.letter))
                outcomes["dead letter"] += 1
                reasons[result.letter["reason_code"]] += 1
                return
            encoded = CODEC.encode(CANONICAL_SUBJECT, dict(result))
            record = CODEC.decode(encoded, CANONICAL_SUBJECT).record
            CANONICAL_ROWS.to_rows(record, Coordinates("fuzz.quality.events.v1", 0, n))
            outcomes["record"] += 1

        one()
        total = sum(outcomes.values())
        account = Ledger(
            "12 fuzzed decoders (in-process)",
            produced=total,
            unique=outcomes["record"],
            poison=outcomes["dead letter"],
            rows=outcomes["record"],
            dead_letters=outcomes["dead letter"],
            canonical_records=outcomes["record"],
            canonical_distinct=outcomes["record"],
            dlq_records=outcomes["dead letter"],
            dlq_distinct=outcomes["dead letter"],
            reasons=dict(reasons),
        )
        account.figures["fuzzed inputs"] = total
        record_ledger(account, seconds=time.monotonic() - started)
        assert total >= EXAMPLES * 0.9 and outcomes["dead letter"] > 0
