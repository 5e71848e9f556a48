"""Avro readers compiled per schema: fastavro's values from a body, at about half its cost.

The worker decodes every ingest record and the sink every canonical event; fastavro's reader
walks the schema for each (20–40 µs per record). As with the compiled writer
(compiled_writer.py), each writer schema is turned once into Python source that reads its fields
in order, and logical types are converted by fastavro's own functions, so the values are the
ones fastavro returns.

The bytes come from producers, so the compiled reader trusts nothing: a length or a block count
that runs past the end, a union index or a boolean out of range, an over-long varint, invalid
UTF-8 all raise, and the caller then reads the record with fastavro, which decodes it or names
the fault. It never returns a value fastavro would not: the tests compare the two on every demo
record of every schema and on truncated and corrupted bodies. Only the plain case is compiled
(the writer's schema is the reader's); a record that needs schema resolution goes to fastavro.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from fastavro._logical_readers import LOGICAL_READERS

from qmsflow.contracts.compiled_writer import NotCompiled, named_types

#: a compiled reader: (body, start) → (record, the position after it)
RecordReader = Callable[[bytes, int], tuple[dict[str, Any], int]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of at most 10 bytes at `pos`; IndexError at the end of `data`."""
    shift = 0
    result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise NotCompiled("varint longer than 10 bytes")


def _refuse(what: str) -> Any:
    raise NotCompiled(what)


class _Compiler:
    def __init__(self, named: dict[str, Any]) -> None:
        self._named = named
        self._lines: list[str] = []
        self._constants: dict[str, Any] = {}
        self._counter = 0
        self._functions: dict[str, str] = {}
        self._pending: list[tuple[str, Any]] = []

    def _name(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def _constant(self, value: Any, stem: str) -> str:
        name = self._name(stem)
        self._constants[name] = value
        return name

    def compile(self, schema: Any) -> RecordReader:
        top = self._function_for(schema)
        while self._pending:
            fname, named_schema = self._pending.pop()
            self._emit_function(fname, named_schema)
        namespace: dict[str, Any] = {
            "_varint": _varint,
            "_refuse": _refuse,
            "_unpack_float": struct.Struct("<f").unpack_from,
            "_unpack_double": struct.Struct("<d").unpack_from,
            "len": len,
            **self._constants,
        }
        exec("\n".join(self._lines), namespace)
        reader: RecordReader = namespace[top]
        return reader

    def _function_for(self, schema: Any) -> str:
        if isinstance(schema, str):
            schema = self._named[schema]
        name = schema["name"]
        fname = self._functions.get(name)
        if fname is None:
            fname = self._functions[name] = self._name("r_")
            self._pending.append((fname, schema))
        return fname

    def _emit_function(self, fname: str, schema: dict[str, Any]) -> None:
        body = [f"def {fname}(data, pos):", "    size = len(data)"]
        names = []
        for field in schema["fields"]:
            value = self._name("v")
            names.append((field["name"], value))
            body += self._read(field["type"], value, "    ")
        items = ", ".join(f"{name!r}: {value}" for name, value in names)
        body += [f"    return {{{items}}}, pos", ""]
        self._lines += body

    # ---- statements that set `target` and advance `pos` ----------------------------------

    def _read(self, schema: Any, target: str, pad: str) -> list[str]:
        if isinstance(schema, list):
            return self._union(schema, target, pad)
        if isinstance(schema, str) and schema in self._named:
            schema = self._named[schema]
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind == "record":
                return [f"{pad}{target}, pos = {self._function_for(schema)}(data, pos)"]
            if kind == "enum":
                symbols = self._constant(tuple(schema["symbols"]), "symbols")
                index = self._name("n")
                return [
                    *self._long(index, pad),
                    f"{pad}if not 0 <= {index} < {len(schema['symbols'])}: _refuse('enum')",
                    f"{pad}{target} = {symbols}[{index}]",
                ]
            if kind == "fixed":
                return [
                    f"{pad}if pos + {schema['size']} > size: _refuse('fixed')",
                    f"{pad}{target} = data[pos:pos + {schema['size']}]",
                    f"{pad}pos += {schema['size']}",
                ]
            if kind in ("array", "map"):
                return self._blocks(schema, target, pad)
            if isinstance(kind, str):
                return self._primitive(kind, schema, target, pad)
            raise NotCompiled(f"schema {schema!r}")
        return self._primitive(schema, None, target, pad)

    def _long(self, target: str, pad: str) -> list[str]:
        """A varint, the one-byte case inline (lengths, small numbers, union indexes)."""
        byte = self._name("x")
        return [
            f"{pad}{byte} = data[pos]",
            f"{pad}if {byte} < 0x80:",
            f"{pad}    {target} = ({byte} >> 1) ^ -({byte} & 1)",
            f"{pad}    pos += 1",
            f"{pad}else:",
            f"{pad}    {target}, pos = _varint(data, pos)",
        ]

    def _slice(self, target: str, pad: str) -> list[str]:
        """`target` = the next length-prefixed bytes."""
        length = self._name("n")
        return [
            *self._long(length, pad),
            f"{pad}if {length} < 0 or pos + {length} > size: _refuse('length')",
            f"{pad}{target} = data[pos:pos + {length}]",
            f"{pad}pos += {length}",
        ]

    def _primitive(
        self, kind: str, schema: dict[str, Any] | None, target: str, pad: str
    ) -> list[str]:
        logical = None if schema is None else schema.get("logicalType")
        if kind == "null":
            lines = [f"{pad}{target} = None"]
        elif kind == "boolean":
            lines = [
                f"{pad}if data[pos] > 1: _refuse('boolean')",
                f"{pad}{target} = data[pos] == 1",
                f"{pad}pos += 1",
            ]
        elif kind in ("int", "long"):
            lines = self._long(target, pad)
        elif kind == "float":
            lines = [f"{pad}{target}, = _unpack_float(data, pos)", f"{pad}pos += 4"]
        elif kind == "double":
            lines = [f"{pad}{target}, = _unpack_double(data, pos)", f"{pad}pos += 8"]
        elif kind == "bytes":
            lines = self._slice(target, pad)
        elif kind == "string":
            raw = self._name("s")
            lines = [*self._slice(raw, pad), f"{pad}{target} = {raw}.decode()"]
        else:
            raise NotCompiled(f"type {kind!r}")
        convert = None if logical is None else LOGICAL_READERS.get(f"{kind}-{logical}")
        if convert is not None:
            function = self._constant(convert, "logical")
            own_schema = self._constant(schema, "schema")
            lines.append(f"{pad}{target} = {function}({target}, {own_schema}, None)")
        return lines

    def _blocks(self, schema: dict[str, Any], target: str, pad: str) -> list[str]:
        """Array or map blocks: a count (negative: a byte size follows), items, 0 at the end."""
        is_map = schema["type"] == "map"
        count, item, key = self._name("n"), self._name("i"), self._name("k")
        inner = pad + "        "
        lines = [
            f"{pad}{target} = {{}}" if is_map else f"{pad}{target} = []",
            f"{pad}while True:",
            *self._long(count, pad + "    "),
            f"{pad}    if {count} == 0: break",
            f"{pad}    if {count} < 0:",
            f"{pad}        {count} = -{count}",
            *self._long(self._name("_"), pad + "        "),
            # every item takes at least one byte of the rest: a larger count is a lie
            f"{pad}    if {count} > size - pos: _refuse('block count')",
            f"{pad}    for _ in range({count}):",
        ]
        if is_map:
            lines += self._primitive("string", None, key, inner)
            lines += self._read(schema["values"], item, inner)
            lines.append(f"{inner}{target}[{key}] = {item}")
        else:
            if _may_be_empty(schema["items"], self._named):
                raise NotCompiled("array items that may take no bytes")
            lines += self._read(schema["items"], item, inner)
            lines.append(f"{inner}{target}.append({item})")
        return lines

    def _union(self, branches: list[Any], target: str, pad: str) -> list[str]:
        index = self._name("n")
        lines = [*self._long(index, pad)]
        keyword = "if"
        for position, branch in enumerate(branches):
            lines.append(f"{pad}{keyword} {index} == {position}:")
            lines += self._read(branch, target, pad + "    ")
            keyword = "elif"
        lines += [f"{pad}else:", f"{pad}    _refuse('union index')"]
        return lines


def _may_be_empty(schema: Any, named: dict[str, Any]) -> bool:
    """Whether a value of this type may be encoded in zero bytes (null, an empty record)."""
    if isinstance(schema, str):
        if schema in named:
            return _may_be_empty(named[schema], named)
        return schema == "null"
    if isinstance(schema, list):
        return False  # a union writes its index
    kind = schema["type"]
    if kind == "record":
        return all(_may_be_empty(f["type"], named) for f in schema["fields"])
    if kind == "fixed":
        return bool(schema["size"] == 0)
    return isinstance(kind, str) and kind == "null"


def compile_reader(parsed: Any) -> RecordReader | None:
    """A compiled reader for a parsed record schema read as itself, or None.

    None when the schema has a shape the compiler does not cover: fastavro reads it then.
    """
    try:
        return _Compiler(named_types(parsed)).compile(parsed)
    except NotCompiled:
        return None
