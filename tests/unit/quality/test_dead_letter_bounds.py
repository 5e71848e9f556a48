"""A dead letter always fits: bounded original, storable text, a v2 record the sink can store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import orjson
import pytest
from fastavro import schemaless_writer

from connectors.postgres_sink.rows import DEAD_LETTER_COLUMNS, dead_letter_row
from qmsflow.contracts import AvroCodec, FileSchemaRegistry
from qmsflow.contracts.framing import frame
from qmsflow.errors import FramingError
from qmsflow.quality.dead_letter import (
    DEFAULT_MAX_BYTES,
    MAX_REASON_CHARS,
    VALUE_PREFIX_BYTES,
    DeadLetter,
    dead_letter,
    embedded_bytes,
)
from qmsflow.quality.event import Coordinates
from qmsflow.settings import PROJECT_ROOT, Settings

SUBJECT = "quality.dlq.v1-value"
REGISTRY = FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro")
CODEC = AvroCodec(REGISTRY)
MIB = 1024 * 1024
AT = Coordinates("qms.nonconformance.v1", 2, 4711)


def letter_for(
    value: bytes | None,
    headers: list[tuple[str, bytes | None]] | None = None,
    *,
    error: Exception | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DeadLetter:
    return dead_letter(
        error or FramingError("expected magic byte 0, got 0x7b"),
        stage="normalise",
        coordinates=AT,
        key=b"NCR-1042",
        value=value,
        headers=headers or [],
        timestamp_ms=1_700_000_000_000,
        failed_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        max_bytes=max_bytes,
    )


class TestDefault:
    def test_default_is_the_settings_default(self) -> None:
        """Callers without settings embed as much as the configured default allows."""
        assert Settings.model_fields["dead_letter_max_bytes"].default == DEFAULT_MAX_BYTES


class TestValueBound:
    def test_near_limit_value_makes_a_small_dead_letter(self) -> None:
        """A value at 99% of 1 MiB becomes a dead letter far below the broker's 1 MiB."""
        value = bytes(range(256)) * (int(0.99 * MIB) // 256)
        letter = letter_for(value)

        encoded = CODEC.encode(SUBJECT, dict(letter))

        assert len(encoded) < DEFAULT_MAX_BYTES // 8
        assert letter["value"] == value[:VALUE_PREFIX_BYTES]
        assert letter["value_truncated"] is True
        assert letter["value_length"] == len(value)
        assert letter["value_sha256"] == hashlib.sha256(value).hexdigest()

    def test_small_value_is_kept_whole(self) -> None:
        """An original within the limit is kept byte for byte, and described all the same."""
        value = b"\x07not confluent framing \xff\x00"
        headers = [("source-system", b"QMS"), ("empty", None)]
        letter = letter_for(value, headers)

        assert letter["value"] == value
        assert [(h["key"], h["value"]) for h in letter["headers"]] == headers
        assert (letter["value_truncated"], letter["headers_dropped"]) == (False, 0)
        assert letter["value_length"] == len(value)
        assert letter["value_sha256"] == hashlib.sha256(value).hexdigest()

    def test_value_of_exactly_the_limit_is_kept_whole(self) -> None:
        """The limit is inclusive: value plus headers equal to max_bytes still fits."""
        value = b"x" * (8192 - len("h") - 3)
        letter = letter_for(value, [("h", b"abc")], max_bytes=8192)
        assert letter["value"] == value and not letter["value_truncated"]

    def test_tombstone_has_no_length_or_digest(self) -> None:
        """A null value stays null; there is nothing to measure."""
        letter = letter_for(None)
        assert (letter["value"], letter["value_length"], letter["value_sha256"]) == (
            None,
            None,
            None,
        )
        assert letter["value_truncated"] is False


class TestHeaderBound:
    def test_headers_kept_in_order_while_they_fit(self) -> None:
        """Past the limit, the first headers that fit are kept; the rest are counted."""
        headers: list[tuple[str, bytes | None]] = [
            ("source-system", b"QMS"),
            ("bulk-1", b"a" * 3000),
            ("bulk-2", b"b" * 3000),
            ("tail", b"small"),
        ]
        letter = letter_for(b"v" * 10_000, headers, max_bytes=5000)

        assert [h["key"] for h in letter["headers"]] == ["source-system", "bulk-1"]
        assert letter["headers_dropped"] == 2
        assert letter["value_truncated"] is True
        assert embedded_bytes(letter) <= 5000

    def test_headers_never_crowd_out_the_value_prefix(self) -> None:
        """A pile of headers leaves room for the value's first bytes."""
        headers: list[tuple[str, bytes | None]] = [(f"h{n}", b"z" * 1000) for n in range(40)]
        letter = letter_for(b"v" * 5000, headers, max_bytes=8192)

        assert letter["value"] == b"v" * VALUE_PREFIX_BYTES
        assert embedded_bytes(letter) <= 8192
        assert letter["headers_dropped"] == 40 - len(letter["headers"]) > 0

    def test_huge_headers_on_a_small_value(self) -> None:
        """Headers alone over the limit are dropped; the small value is kept whole."""
        headers: list[tuple[str, bytes | None]] = [("ok", b"1"), ("huge", b"h" * MIB)]
        letter = letter_for(b"tiny", headers)

        assert letter["value"] == b"tiny" and letter["value_truncated"] is False
        assert [h["key"] for h in letter["headers"]] == ["ok"]
        assert letter["headers_dropped"] == 1
        assert len(CODEC.encode(SUBJECT, dict(letter))) < 4096

    @pytest.mark.parametrize("max_bytes", [4096, 65_536, DEFAULT_MAX_BYTES, MIB])
    def test_embedded_bytes_never_exceed_the_limit(self, max_bytes: int) -> None:
        """Whatever the mix, the embedded original stays within max_bytes."""
        headers: list[tuple[str, bytes | None]] = [(f"k{n}", b"q" * 700) for n in range(2000)]
        letter = letter_for(b"p" * (2 * MIB), headers, max_bytes=max_bytes)
        assert embedded_bytes(letter) <= max_bytes


class TestStorableText:
    def test_nul_in_the_reason_becomes_replacement_character(self) -> None:
        """Postgres text refuses NUL; the reason keeps its place as U+FFFD."""
        letter = letter_for(b"x", error=FramingError("bad\x00byte"))
        assert "\x00" not in letter["reason"]
        assert letter["reason"].startswith("bad\ufffdbyte")

    def test_over_long_reason_is_cut_and_keeps_where(self) -> None:
        """A 500,000-character quoted value cannot inflate the dead letter; where stays."""
        letter = letter_for(b"x", error=FramingError("unknown code " + "A" * 500_000))

        assert len(letter["reason"]) <= MAX_REASON_CHARS
        assert "characters, cut]" in letter["reason"]
        assert letter["reason"].endswith(f"(at {AT.topic}[{AT.partition}]@{AT.offset})")

    def test_lone_surrogate_does_not_break_encoding(self) -> None:
        """A message holding a lone surrogate still encodes as UTF-8."""
        letter = letter_for(b"x", error=FramingError("half \udcff pair"))
        CODEC.encode(SUBJECT, dict(letter))
        assert "\udcff" not in letter["reason"]

    def test_nul_in_a_header_name_is_replaced(self) -> None:
        """Header names are stored as jsonb, which refuses NUL."""
        letter = letter_for(b"x", [("bad\x00name", b"v")])
        assert letter["headers"][0]["key"] == "bad\ufffdname"


class TestRow:
    def test_v2_fields_reach_the_row(self) -> None:
        """The sink stores length, digest, truncation and dropped headers."""
        value = b"w" * 300_000
        letter = letter_for(value, [("h", b"x" * 10)])
        decoded = CODEC.decode(CODEC.encode(SUBJECT, dict(letter)), SUBJECT).record

        row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(decoded, AT), strict=True))

        assert row["original_value"] == value[:VALUE_PREFIX_BYTES]
        assert row["value_length"] == len(value)
        assert row["value_digest"] == hashlib.sha256(value).hexdigest()
        assert (row["value_truncated"], row["headers_dropped"]) == (True, 0)

    def test_v1_record_reads_as_whole(self) -> None:
        """A dead letter written with v1 maps to a whole original: nothing cut or dropped."""
        v1 = REGISTRY.get(SUBJECT, 1)
        letter: dict[str, Any] = dict(letter_for(b"old"))
        for name in ("value_length", "value_sha256", "value_truncated", "headers_dropped"):
            del letter[name]
        body = BytesIO()
        schemaless_writer(body, v1.parsed, letter)
        decoded = CODEC.decode(frame(v1.schema_id, body.getvalue()), SUBJECT).record

        row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(decoded, AT), strict=True))

        assert (row["value_truncated"], row["headers_dropped"]) == (False, 0)
        assert (row["value_length"], row["value_digest"]) == (None, None)

    def test_row_text_is_storable_whoever_wrote_the_record(self) -> None:
        """A record from another writer with NUL and a huge reason still makes a storable row."""
        decoded: dict[str, Any] = {
            **letter_for(b"x"),
            "reason": "r\x00" * 400_000,
            "reason_code": "c\x00",
            "headers": [{"key": "k\x00", "value": b"\x00"}],
            "value_sha256": "not a digest",
            "headers_dropped": -3,
        }

        row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(decoded, AT), strict=True))

        assert "\x00" not in row["reason"] and len(row["reason"]) <= MAX_REASON_CHARS
        assert "\x00" not in row["reason_code"]
        assert "\\u0000" not in row["headers"]
        assert orjson.loads(row["headers"]) == [{"key": "k\ufffd", "value": "00"}]
        assert (row["value_digest"], row["headers_dropped"]) == (None, 0)
