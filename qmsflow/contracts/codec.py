"""Avro records to and from Confluent-framed bytes, resolved into the newest reader schema."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.validation import validate

from qmsflow.contracts.compiled_reader import RecordReader, compile_reader
from qmsflow.contracts.compiled_writer import RecordWriter, compile_writer
from qmsflow.contracts.framing import HEADER_SIZE, frame, unframe
from qmsflow.contracts.registry import RegisteredSchema, SchemaRegistry
from qmsflow.errors import DecodeError, EncodeError, WrongSubjectError

# What fastavro raises on bytes that do not match the writer schema: short reads (EOFError,
# struct.error), impossible lengths or union indexes (IndexError, ValueError, MemoryError),
# invalid UTF-8 (UnicodeDecodeError, a ValueError), and readers that cannot resolve the writer.
_BODY_ERRORS = (
    EOFError,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    MemoryError,
    SchemaResolutionError,
)

#: not compiled yet (None means: the schema is not compilable)
_UNCOMPILED: Any = object()

# What fastavro's writer raises on a record that does not fit the schema.
_RECORD_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error)


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """A decoded record, shaped by the reader's newest schema, with its writer's schema."""

    record: dict[str, Any]
    #: the writer schema the frame named: its subject, version and id are the record's lineage
    schema: RegisteredSchema


class AvroCodec:
    """Decode and encode framed Avro records for any subject of one registry.

    Reader schemas are looked up once per subject and kept: a version registered while the
    process runs is used for writing and reading after a restart, never mid-stream.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self._registry = registry
        self._newest: dict[str, RegisteredSchema] = {}
        #: schema id → its compiled writer, None where the schema has a shape it does not cover
        self._compiled: dict[int, RecordWriter | None] = {}
        #: schema id → its compiled reader (used when the record is read as its own schema)
        self._compiled_readers: dict[int, RecordReader | None] = {}

    def decode(self, data: bytes, reader_subject: str) -> DecodedRecord:
        """Read framed bytes with their writer schema, resolved into reader_subject's newest.

        Raises FramingError (not Confluent wire format), UnknownSchemaError (id not registered),
        WrongSubjectError (written for another subject) or DecodeError (body does not decode).
        """
        schema_id, body = unframe(data)
        writer = self._registry.by_id(schema_id)
        if writer.subject != reader_subject:
            raise WrongSubjectError(
                f"expected a record written for {reader_subject}, got schema id {schema_id}, "
                f"which is {writer.subject} v{writer.version}: the record was written for "
                "another subject"
            )
        reader = self._reader(reader_subject)
        if reader.schema_id == writer.schema_id and data.__class__ is bytes:
            compiled = self._compiled_readers.get(schema_id, _UNCOMPILED)
            if compiled is _UNCOMPILED:
                compiled = self._compiled_readers[schema_id] = compile_reader(writer.parsed)
            if compiled is not None:
                try:
                    record, end = compiled(data, HEADER_SIZE)
                except Exception:
                    pass
                else:
                    if end == len(data):
                        return DecodedRecord(record, writer)
        stream = BytesIO(body)
        try:
            # the same id means the same schema: skip resolution entirely
            record = schemaless_reader(
                stream,
                writer.parsed,
                None if reader.schema_id == writer.schema_id else reader.parsed,
            )
        except _BODY_ERRORS as exc:
            raise DecodeError(
                f"expected an Avro body for {writer.subject} v{writer.version} (id {schema_id}) "
                f"read as v{reader.version}, got {len(body)} bytes that fail: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        trailing = len(body) - stream.tell()
        if trailing:
            raise DecodeError(
                f"expected the Avro body for {writer.subject} v{writer.version} "
                f"(id {schema_id}) to end after {stream.tell()} bytes, got {trailing} more"
            )
        if not isinstance(record, dict):
            raise DecodeError(
                f"expected a record from {writer.subject} v{writer.version}, "
                f"got {type(record).__name__}"
            )
        return DecodedRecord(record, writer)

    def encode(self, subject: str, record: dict[str, Any]) -> bytes:
        """Write a record with the subject's newest schema, framed with that version's id.

        Fields with defaults may be left out. Raises ContractError naming the offending
        field(s) when the record does not fit the schema.
        """
        writer = self._reader(subject)
        compiled = self._compiled.get(writer.schema_id, _UNCOMPILED)
        if compiled is _UNCOMPILED:
            compiled = self._compiled[writer.schema_id] = compile_writer(writer.parsed)
        if compiled is not None:
            try:
                return frame(writer.schema_id, compiled(record))
            except Exception:
                pass
        stream = BytesIO()
        try:
            schemaless_writer(stream, writer.parsed, record, strict_allow_default=True)
        except _RECORD_ERRORS as exc:
            raise EncodeError(
                f"expected a record matching {subject} v{writer.version}: "
                f"{_describe_invalid(writer, record, exc)}"
            ) from exc
        return frame(writer.schema_id, stream.getvalue())

    def _reader(self, subject: str) -> RegisteredSchema:
        newest = self._newest.get(subject)
        if newest is None:
            newest = self._newest[subject] = self._registry.latest(subject)
        return newest


def _describe_invalid(schema: RegisteredSchema, record: dict[str, Any], exc: Exception) -> str:
    """Name the fields that do not fit; only runs after a write failed, so speed is no concern."""
    misfits = _misfits(schema.parsed, record, "")
    if misfits:
        return "; ".join(misfits)
    return f"{type(exc).__name__}: {exc}"


def _misfits(schema: Any, datum: Any, path: str) -> list[str]:
    """Describe where a datum leaves its schema: missing, unknown and mistyped fields."""
    where = path or "(record)"
    if isinstance(schema, list):
        records = [b for b in schema if isinstance(b, dict) and b.get("type") == "record"]
        if isinstance(datum, dict) and len(records) == 1:
            return _misfits(records[0], datum, path)
        if any(validate(datum, branch, raise_errors=False) for branch in schema):
            return []
        return [f"field {where} expects {_type_name(schema)}, got {_show(datum)}"]
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if kind == "record":
        if not isinstance(datum, dict):
            return [f"field {where} expects a {schema['name']} record, got {_show(datum)}"]
        prefix = f"{path}." if path else ""
        declared = {field["name"] for field in schema["fields"]}
        found = [f"unknown field {prefix}{name}" for name in sorted(datum.keys() - declared)]
        for field in schema["fields"]:
            if field["name"] in datum:
                found.extend(_misfits(field["type"], datum[field["name"]], prefix + field["name"]))
            elif "default" not in field:
                found.append(f"missing required field {prefix}{field['name']}")
        return found
    if kind == "array" and isinstance(datum, list):
        return [
            misfit
            for index, item in enumerate(datum)
            for misfit in _misfits(schema["items"], item, f"{path}[{index}]")
        ]
    if validate(datum, schema, raise_errors=False):
        return []
    return [f"field {where} expects {_type_name(schema)}, got {_show(datum)}"]


def _type_name(schema: Any) -> str:
    if isinstance(schema, list):
        return " or ".join(_type_name(branch) for branch in schema)
    if isinstance(schema, dict):
        return str(schema.get("logicalType") or schema.get("name") or schema.get("type"))
    return str(schema)


def _show(datum: Any) -> str:
    # long values would drown the field name the reader is looking for
    text = repr(datum)
    return f"{type(datum).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
