"""The compiled Avro writer and reader against fastavro, the authority, on every committed schema.

A compiled writer must write fastavro's bytes or refuse; a compiled reader must return
fastavro's values or refuse, also on truncated and corrupted bodies (producers send anything).
"""

from __future__ import annotations

import string
from datetime import UTC, date, datetime
from io import BytesIO
from typing import Any
from uuid import UUID

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmsflow.contracts import AvroCodec, FileSchemaRegistry, frame
from qmsflow.contracts.compiled_reader import compile_reader
from qmsflow.contracts.compiled_writer import NotCompiled, compile_writer, named_types
from qmsflow.contracts.registry import RegisteredSchema
from qmsflow.errors import DecodeError, EncodeError
from qmsflow.settings import PROJECT_ROOT
from tests.unit.contracts.test_contract_codec import record_for

REGISTRY = FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro")
SCHEMAS: list[RegisteredSchema] = [
    REGISTRY.get(subject, version)
    for subject in REGISTRY.subjects()
    for version in REGISTRY.versions(subject)
]
#: the schemas the writer leaves to fastavro: a union of a decimal and a string, whose branch
#: fastavro picks by validating the value against each (the compiled writer does not guess)
NOT_COMPILED_WRITERS = {("md.customer-spec.v1-value", 1)}


_TEXT = st.text(alphabet=string.printable + "äöü€漢字\u00a0", max_size=80)
_AWARE = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def datum(schema: Any, named: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Valid values of a parsed schema, as the platform's code builds them."""
    if isinstance(schema, list):
        records = {
            i: b if isinstance(b, str) else b["name"]
            for i, b in enumerate(schema)
            if (isinstance(b, str) and b in named) or (isinstance(b, dict) and "name" in b)
        }
        if len(records) > 1:  # the platform names the branch: fastavro's tuple notation
            return st.one_of(
                *(
                    datum(b, named, depth).map(lambda v, n=records[i]: (n, v))
                    if i in records
                    else datum(b, named, depth)
                    for i, b in enumerate(schema)
                )
            )
        return st.one_of(*(datum(branch, named, depth) for branch in schema))
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    kind = schema if isinstance(schema, str) else schema["type"]
    logical = None if isinstance(schema, str) else schema.get("logicalType")
    if logical == "decimal":
        scale = schema.get("scale", 0)
        whole = 10 ** (schema["precision"] - scale) - 1
        return st.decimals(
            min_value=-whole, max_value=whole, places=scale, allow_nan=False, allow_infinity=False
        )
    if logical == "timestamp-micros":
        return _AWARE
    if logical == "timestamp-millis":
        return _AWARE.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    if logical == "date":
        return st.dates(min_value=date(1900, 1, 1), max_value=date(2500, 1, 1))
    if logical == "uuid":
        return st.uuids().map(str)
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": _TEXT,
        "bytes": st.binary(max_size=80),
    }
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(datum(schema["items"], named, depth + 1), max_size=3 if depth else 70)
    if kind == "map":
        return st.dictionaries(_TEXT, datum(schema["values"], named, depth + 1), max_size=3)
    assert kind == "record", schema
    return st.fixed_dictionaries(
        {f["name"]: datum(f["type"], named, depth + 1) for f in schema["fields"]}
    )


def _fastavro_bytes(schema: RegisteredSchema, record: dict[str, Any]) -> bytes:
    out = BytesIO()
    schemaless_writer(out, schema.parsed, record, strict_allow_default=True)
    return out.getvalue()


def _fastavro_value(schema: RegisteredSchema, body: bytes) -> Any:
    return schemaless_reader(BytesIO(body), schema.parsed, None)


def _ids(schema: RegisteredSchema) -> str:
    return f"{schema.subject}-v{schema.version}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=_ids)
def test_every_schema_compiles(schema: RegisteredSchema) -> None:
    """Every committed schema has a compiled reader, and a writer unless named above."""
    assert compile_reader(schema.parsed) is not None
    compiled = compile_writer(schema.parsed) is not None
    assert compiled is ((schema.subject, schema.version) not in NOT_COMPILED_WRITERS)


@pytest.mark.parametrize("schema", SCHEMAS, ids=_ids)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_same_bytes_and_values_as_fastavro(schema: RegisteredSchema, data: st.DataObject) -> None:
    """The compiled writer writes fastavro's bytes; the reader returns fastavro's values."""
    record = data.draw(datum(schema.parsed, named_types(schema.parsed)))
    expected = _fastavro_bytes(schema, record)
    writer = compile_writer(schema.parsed)
    if writer is not None:
        assert writer(record) == expected
    reader = compile_reader(schema.parsed)
    assert reader is not None
    framed = b"\x00\x00\x00\x00\x07" + expected
    value, end = reader(framed, 5)
    assert end == len(framed)
    assert value == _fastavro_value(schema, expected)
    assert repr(value) == repr(_fastavro_value(schema, expected))  # types too (Decimal, UUID)


@pytest.mark.parametrize("schema", SCHEMAS, ids=_ids)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_bodies_read_as_fastavro_reads_them_or_are_refused(
    schema: RegisteredSchema, data: st.DataObject
) -> None:
    """A truncated or altered body: the compiled reader raises or agrees with fastavro."""
    record = data.draw(datum(schema.parsed, named_types(schema.parsed)))
    body = bytearray(_fastavro_bytes(schema, record))
    if body:
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    body = body[: data.draw(st.integers(0, len(body)))]
    reader = compile_reader(schema.parsed)
    assert reader is not None
    try:
        value, end = reader(bytes(body), 0)
    except Exception:
        return
    if end != len(body):
        return  # the codec sees the trailing bytes and asks fastavro
    assert repr(value) == repr(_fastavro_value(schema, bytes(body)))


def test_a_lying_block_count_is_refused_not_looped() -> None:
    """An array claiming 2**40 items in a 3-byte body is refused at once."""
    schema = {
        "type": "record",
        "name": "t.A",
        "fields": [{"name": "a", "type": {"type": "array", "items": "long"}}],
    }
    from fastavro import parse_schema

    reader = compile_reader(parse_schema(schema))
    assert reader is not None
    count = (2**40) << 1
    varint = bytearray()
    while count >= 0x80:
        varint.append((count & 0x7F) | 0x80)
        count >>= 7
    varint.append(count)
    with pytest.raises(Exception, match="block count"):
        reader(bytes(varint) + b"\x02", 0)


# ---- through the codec: the compiled paths are invisible to its callers --------------------

CAPA = "qms.capa.v1-value"


def _capa_record(**changes: Any) -> dict[str, Any]:
    record = record_for(CAPA)
    record.update(changes)
    return record


def test_codec_round_trip_uses_compiled_paths_and_matches_fastavro() -> None:
    """The codec's bytes are fastavro's, and reading them back gives fastavro's values."""
    codec = AvroCodec(REGISTRY)
    schema = REGISTRY.latest(CAPA)
    record = _capa_record()
    encoded = codec.encode(CAPA, record)
    assert encoded == frame(schema.schema_id, _fastavro_bytes(schema, record))
    decoded = codec.decode(encoded, CAPA).record
    assert repr(decoded) == repr(_fastavro_value(schema, encoded[5:]))
    assert decoded["event_id"] == record["event_id"]


def test_values_the_compiled_writer_does_not_take_still_go_through_fastavro() -> None:
    """A naive timestamp (fastavro reads it as local time) encodes as fastavro would."""
    codec = AvroCodec(REGISTRY)
    schema = REGISTRY.latest(CAPA)
    record = _capa_record(event_id=str(UUID(int=7)), occurred_at=datetime(2026, 3, 2, 9, 30))
    writer = compile_writer(schema.parsed)
    assert writer is not None
    with pytest.raises(NotCompiled, match="timestamp"):  # its offset is unknown: not guessed
        writer(record)
    assert codec.encode(CAPA, record) == frame(schema.schema_id, _fastavro_bytes(schema, record))


def test_a_misfit_record_still_gets_fastavros_explanation() -> None:
    """A wrong type is refused with the field named, as before the compiled writer."""
    codec = AvroCodec(REGISTRY)
    with pytest.raises(EncodeError, match="site"):
        codec.encode(CAPA, _capa_record(site=17))


def test_trailing_bytes_are_still_a_decode_error() -> None:
    """A body longer than its record is refused, compiled reader or not."""
    codec = AvroCodec(REGISTRY)
    encoded = codec.encode(CAPA, _capa_record())
    with pytest.raises(DecodeError, match="to end after"):
        codec.decode(encoded + b"\x00", CAPA)
