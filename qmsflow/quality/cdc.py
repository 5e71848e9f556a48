"""Debezium change events as Kafka Connect's JsonConverter delivers them (schemas.enable=false).

A change topic is `<topic prefix>.<schema>.<table>`; its value is the envelope
`{"before", "after", "op", "source": {...}, "ts_ms"}` and its key the row's primary-key columns.
After a delete Debezium sends a tombstone (null value, same key) so that log compaction can forget
the row; it carries no change and is returned as a `Tombstone`.

The source system is the table's schema, upper-cased: the demo plant database holds one schema
per system (`cdc.erp.qms.supplier_approval` is QMS's `supplier_approval`). A table in `public`
names no system, so there the last segment of the topic prefix does (`cdc.mes.public.lot` is
MES's `lot`), for a connector per system database.

Facts the parser and the golden-record stage rely on (DESIGN §7):

- `before` holds only the key columns unless the table has REPLICA IDENTITY FULL, so nothing but
  the key may be read from it;
- a primary-key update arrives as delete (old key) + tombstone (old key) + create (new key);
- an unchanged TOASTed column arrives as `__debezium_unavailable_value` (see `merge_after`);
- incremental-snapshot rows (`source.snapshot = "incremental"`) carry no LSN: `position` falls back
  to the Kafka offset, which is the order Debezium emitted them in (see `position`);
- delivery is at-least-once, so a change may arrive again, at a higher offset, after a Connect
  restart: consumers apply changes against an LSN watermark, never blindly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from qmsflow.errors import ContractError, LimitError
from qmsflow.quality.event import Coordinates

__all__ = [
    "MAX_NESTING",
    "UNAVAILABLE_VALUE",
    "ChangeEvent",
    "Op",
    "Position",
    "SnapshotFlag",
    "Tombstone",
    "is_unavailable",
    "merge_after",
    "parse_change",
    "position",
]

#: Debezium's operation codes: create, update, delete, read (snapshot), truncate
Op = Literal["c", "u", "d", "r", "t"]
#: `source.snapshot` values: "false" for streamed changes, the rest mark snapshot rows
SnapshotFlag = Literal[
    "false",
    "true",
    "first",
    "first_in_data_collection",
    "last_in_data_collection",
    "last",
    "incremental",
]

#: Debezium's default `unavailable.value.placeholder` for unchanged TOASTed columns
UNAVAILABLE_VALUE = "__debezium_unavailable_value"
# binary (bytea) columns carry the same placeholder as bytes, which JSON shows in base64
_UNAVAILABLE_BASE64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="

#: Postgres's default schema: a table there names no source system (see the module docstring)
_PUBLIC = "public"

#: deepest JSON nesting accepted in a key, an envelope or a JSON text column (jsonb): deeper
#: JSON exhausts the recursion of the JSON parser and of every later walk over the row (10,000
#: levels raised RecursionError), so it is refused before anything recursive reads it. Real
#: envelopes nest about 4 levels, real specification documents a handful more.
MAX_NESTING = 64
#: how many levels of the path to the deepest point a limit message names
_PATH_LEVELS = 3
#: the JSON tokens that matter for nesting: strings (whose brackets do not count) and structure
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')

_OPS: frozenset[str] = frozenset(get_args(Op))
_SNAPSHOT_FLAGS: frozenset[str] = frozenset(get_args(SnapshotFlag))


class Position(NamedTuple):
    """Where a change sits in its source's order: the WAL LSN, then the Kafka offset.

    `lsn` is None for incremental-snapshot rows; see `position` for how those are ordered.
    """

    lsn: int | None
    offset: int


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change captured by Debezium, with the Kafka coordinates it was read from.

    `ts_ms` is when the source committed the change (`source.ts_ms`), `processed_ts_ms` when
    the connector handled it (envelope `ts_ms`). `key` holds the primary-key columns; `before`
    holds only those unless the table has REPLICA IDENTITY FULL.
    """

    source_system: str
    db: str
    schema: str
    table: str
    op: Op
    key: Mapping[str, Any]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    lsn: int | None
    tx_id: int | None
    ts_ms: int
    processed_ts_ms: int | None
    snapshot: SnapshotFlag
    topic: str
    partition: int
    offset: int

    @property
    def coordinates(self) -> Coordinates:
        """Topic, partition and offset, for lineage and error messages."""
        return Coordinates(self.topic, self.partition, self.offset)

    @property
    def is_delete(self) -> bool:
        """Whether the row was deleted at the source."""
        return self.op == "d"

    @property
    def is_incremental_snapshot(self) -> bool:
        """Whether this is a row read by an incremental snapshot (no LSN)."""
        return self.snapshot == "incremental"


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The null-valued record Debezium sends after a delete, for log compaction; no change."""

    source_system: str
    table: str
    key: Mapping[str, Any]
    topic: str
    partition: int
    offset: int


def position(change: ChangeEvent) -> Position:
    """The change's order within its source: (lsn, offset).

    Streamed changes are ordered by LSN, which survives redelivery (a change sent again after a
    Connect restart lands at a higher offset with its old LSN). Incremental-snapshot rows carry
    no LSN; Debezium emits them into the same topic between streamed changes, and its watermark
    algorithm drops a snapshot row whose key changed while the chunk was read, so the offset
    order of one partition is their true order. A snapshot row is therefore applied only when it
    comes after (by offset) the last applied version of that row: it never overrides a newer
    LSN-ordered version, and the LSN watermark stays in place for the streamed changes after it.
    """
    return Position(change.lsn, change.offset)


def is_unavailable(value: Any, placeholder: str = UNAVAILABLE_VALUE) -> bool:
    """Whether a column value is Debezium's placeholder for an unchanged TOASTed value."""
    if isinstance(value, str):
        return value in (placeholder, _UNAVAILABLE_BASE64)
    if isinstance(value, list):
        # array columns carry the placeholder as their single element
        return len(value) > 0 and all(is_unavailable(item, placeholder) for item in value)
    return False


def merge_after(
    stored_fields: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    placeholder: str = UNAVAILABLE_VALUE,
) -> dict[str, Any]:
    """The row after the change, keeping stored values where `after` has the TOAST placeholder.

    A placeholder for a column with no stored value is left out: the value is unknown, and a
    placeholder must never be stored as if it were data.
    """
    stored = stored_fields or {}
    merged: dict[str, Any] = {}
    for column, value in after.items():
        if not is_unavailable(value, placeholder):
            merged[column] = value
        elif column in stored:
            merged[column] = stored[column]
    return merged


def parse_change(
    topic: str,
    partition: int,
    offset: int,
    key_json: str | bytes | None,
    value_json: str | bytes | None,
) -> ChangeEvent | Tombstone:
    """Parse one Kafka record of a Debezium change topic.

    Raises ContractError naming the coordinates and what was expected when the key or the
    envelope is malformed. A value wrapped with its schema (`schemas.enable=true`) is unwrapped.
    """
    where = f"{topic}[{partition}]@{offset}"
    key = _optional_object(_decode(key_json, where, "key"), where, "key")
    value = _decode(value_json, where, "value")
    if value is None:
        if key is None:
            raise ContractError(f"{where}: expected a key on a tombstone, got a null key")
        segments = topic.split(".")
        return Tombstone(
            source_system=_system_of_tombstone(segments),
            table=segments[-1],
            key=key,
            topic=topic,
            partition=partition,
            offset=offset,
        )
    envelope = _object(value, where, "value")
    if "op" not in envelope and set(envelope) == {"schema", "payload"}:
        envelope = _object(envelope["payload"], where, "payload")
    op = envelope.get("op")
    if op not in _OPS:
        raise ContractError(
            f"{where}: expected a Debezium envelope with op in {sorted(_OPS)}, got op={op!r}"
        )
    source = _object(envelope.get("source"), where, "source")
    table = _text(source, "table", where)
    schema = _text(source, "schema", where, default="")
    db = _text(source, "db", where, default="")
    before = _optional_object(envelope.get("before"), where, "before")
    after = _optional_object(envelope.get("after"), where, "after")
    _check_json_columns(before, where, "before")
    _check_json_columns(after, where, "after")
    if op in ("c", "r", "u") and after is None:
        raise ContractError(f"{where}: op {op!r} expected an 'after' row, got null")
    if op == "d" and before is None:
        raise ContractError(f"{where}: op 'd' expected a 'before' row (key columns), got null")
    if op != "t" and not key:
        raise ContractError(f"{where}: op {op!r} expected a key object, got {key!r}")
    snapshot = str(source.get("snapshot", "false")).lower()
    if snapshot not in _SNAPSHOT_FLAGS:
        raise ContractError(
            f"{where}: source.snapshot expected one of {sorted(_SNAPSHOT_FLAGS)}, "
            f"got {source.get('snapshot')!r}"
        )
    system = _system_of(topic, schema, table, source, db)
    if not system:
        raise ContractError(
            f"{where}: cannot tell the source system: expected source.schema other than "
            f"'public', or a topic <prefix>.<system>.public.{table}, got schema {schema!r}"
        )
    return ChangeEvent(
        source_system=system,
        db=db,
        schema=schema,
        table=table,
        op=op,
        key=key or {},
        before=before,
        after=after,
        lsn=_integer(source, "lsn", where, required=False),
        tx_id=_integer(source, "txId", where, required=False),
        ts_ms=_required_integer(source, "ts_ms", where),
        processed_ts_ms=_integer(envelope, "ts_ms", where, required=False),
        snapshot=snapshot,  # type: ignore[arg-type]  # checked against SnapshotFlag above
        topic=topic,
        partition=partition,
        offset=offset,
    )


def _decode(raw: str | bytes | None, where: str, part: str) -> Any:
    if raw is None or (isinstance(raw, bytes | str) and len(raw) == 0):
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    _check_nesting(text, where, part)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(
            f"{where}: {part} expected JSON, got {str(raw)[:80]!r} ({exc})"
        ) from exc


def _optional_object(value: Any, where: str, part: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, where, part)


def _object(value: Any, where: str, part: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContractError(f"{where}: {part} expected a JSON object, got {type(value).__name__}")
    return value


def _text(block: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = block.get(name, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ContractError(f"{where}: source.{name} expected text, got {value!r}")
    return value


def _integer(block: Mapping[str, Any], name: str, where: str, *, required: bool) -> int | None:
    value = block.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractError(f"{where}: {name} expected an integer, got {value!r}")
    return value


def _required_integer(block: Mapping[str, Any], name: str, where: str) -> int:
    value = _integer(block, name, where, required=True)
    assert value is not None  # required=True raises instead
    return value


def _system_of(
    topic: str, schema: str, table: str, source: Mapping[str, Any], db: str
) -> str | None:
    """The schema upper-cased; for `public`, the topic prefix's last segment, else source.name's."""
    if schema and schema != _PUBLIC:
        return schema.upper()
    return _system_from_topic(topic, schema, table) or _last_segment(source.get("name")) or db


def _system_of_tombstone(segments: list[str]) -> str:
    """A tombstone's system, from its topic alone: `<prefix>.<schema>.<table>`."""
    if len(segments) >= 3 and segments[-2] != _PUBLIC:
        return segments[-2].upper()
    return segments[-3].upper() if len(segments) >= 3 else ""


def _system_from_topic(topic: str, schema: str, table: str) -> str | None:
    """The last segment of the topic prefix, upper-cased: `cdc.mes.public.lot` → MES."""
    segments = topic.split(".")
    suffix = [schema, table] if schema else [table]
    if segments[-len(suffix) :] == suffix and len(segments) > len(suffix):
        return segments[-len(suffix) - 1].upper()
    return None


def _last_segment(name: Any) -> str | None:
    if isinstance(name, str) and name:
        return name.split(".")[-1].upper()
    return None


def _check_json_columns(row: Mapping[str, Any] | None, where: str, part: str) -> None:
    """Refuse a JSON text column (jsonb arrives as text) nested deeper than MAX_NESTING."""
    if row is None:
        return
    for column, value in row.items():
        if isinstance(value, str) and value[:1] in ("{", "["):
            _check_nesting(value, where, f"{part}.{column}", inner_path=False)


def _check_nesting(text: str, where: str, part: str, *, inner_path: bool = True) -> None:
    """Raise LimitError, naming the field path, for JSON nested deeper than MAX_NESTING.

    Iterative, so any depth is measured without recursion; a text with few brackets is passed
    by counting them.
    """
    if text.count("{") + text.count("[") <= MAX_NESTING:
        return
    depth, path = nesting(text)
    if depth > MAX_NESTING:
        inner = path if inner_path else ()
        field = part + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in inner)
        raise LimitError(f"{where}: {field} is nested {depth:,} levels; at most {MAX_NESTING}")


def nesting(text: str) -> tuple[int, tuple[str | int, ...]]:
    """How deep a JSON text nests, and the first levels of the path to where it is deepest.

    Malformed JSON is measured as far as its brackets go; the parser reports the rest.
    """
    depth = deepest = 0
    keys: list[str | int] = []  # the current key (object) or index (array) of the open levels
    deepest_path: tuple[str | int, ...] = ()
    previous = ""
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        first = token[0]
        if first in "{[":
            depth += 1
            if depth > deepest:
                deepest, deepest_path = depth, tuple(keys)
            if depth <= _PATH_LEVELS:
                keys.append("" if first == "{" else 0)
        elif first in "}]":
            if 0 < depth <= _PATH_LEVELS and keys:
                keys.pop()
            depth = max(depth - 1, 0)
        elif first == ",":
            if 0 < depth <= _PATH_LEVELS and keys and isinstance(keys[-1], int):
                keys[-1] += 1
        elif previous in "{," and 0 < depth <= _PATH_LEVELS and keys and isinstance(keys[-1], str):
            keys[-1] = token[1:-1]  # a string right after { or , in an object is a key
        previous = first
    return deepest, deepest_path
