"""Confluent wire framing: magic byte 0, a 4-byte big-endian schema id, then the Avro body."""

from __future__ import annotations

import struct

from qmsflow.errors import FramingError

#: Confluent's wire-format version; every other first byte means the bytes are not ours to read
MAGIC_BYTE = 0

_HEADER = struct.Struct(">BI")
#: magic byte plus schema id; a record with an empty body is still at least this long
HEADER_SIZE = _HEADER.size

#: the largest id a 4-byte unsigned field holds
_MAX_SCHEMA_ID = 0xFFFFFFFF


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the magic byte and its writer schema id."""
    if not 0 <= schema_id <= _MAX_SCHEMA_ID:
        raise FramingError(f"expected a schema id between 0 and {_MAX_SCHEMA_ID}, got {schema_id}")
    return _HEADER.pack(MAGIC_BYTE, schema_id) + body


def unframe(data: bytes) -> tuple[int, memoryview]:
    """Split framed bytes into the writer schema id and a zero-copy view of the Avro body.

    Raises FramingError when the bytes are shorter than the header or do not start with the
    magic byte.
    """
    if len(data) < HEADER_SIZE:
        first = f"0x{data[0]:02x}" if data else "none"
        raise FramingError(
            f"expected at least {HEADER_SIZE} bytes (magic byte 0 and a 4-byte schema id), "
            f"got {len(data)} bytes, first byte {first}"
        )
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise FramingError(
            f"expected magic byte 0x00, got 0x{data[0]:02x} in {len(data)} bytes; "
            "the producer did not use the Confluent Avro serializer"
        )
    return schema_id, memoryview(data)[HEADER_SIZE:]
