"""Confluent wire framing."""

from __future__ import annotations

import pytest

from qmsflow.contracts import frame, unframe
from qmsflow.errors import FramingError


class TestFrame:
    def test_round_trip(self) -> None:
        """A framed body unframes to the same schema id and body."""
        schema_id, body = unframe(frame(13, b"\x02abc"))
        assert schema_id == 13
        assert bytes(body) == b"\x02abc"

    def test_header_layout(self) -> None:
        """The frame is magic byte 0, then the id as 4 big-endian bytes."""
        assert frame(0x01020304, b"") == b"\x00\x01\x02\x03\x04"

    def test_empty_body(self) -> None:
        """A header alone is a valid frame with an empty body."""
        assert unframe(b"\x00\x00\x00\x00\x07") == (7, memoryview(b""))

    def test_rejects_id_out_of_range(self) -> None:
        """An id that does not fit 4 unsigned bytes is refused."""
        with pytest.raises(FramingError, match="schema id"):
            frame(2**32, b"")


class TestUnframeRejections:
    def test_empty_bytes(self) -> None:
        """Empty bytes are rejected, saying nothing arrived."""
        with pytest.raises(FramingError, match="got 0 bytes, first byte none"):
            unframe(b"")

    def test_too_short(self) -> None:
        """Fewer than five bytes are rejected with their length and first byte."""
        with pytest.raises(FramingError, match="got 3 bytes, first byte 0x00"):
            unframe(b"\x00\x00\x01")

    def test_wrong_magic_byte(self) -> None:
        """A first byte other than 0 is rejected, naming the byte that arrived."""
        with pytest.raises(FramingError, match="got 0x7b in 12 bytes"):
            unframe(b'{"json": 1}\n')
