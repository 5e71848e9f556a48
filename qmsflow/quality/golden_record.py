"""Golden records: one master record per entity, assembled from several sources' CDC changes.

Every (kind, entity_id) has a `GoldenState`: per source its latest field values and position,
the resolved golden values, and a version. `apply_change` folds one Debezium change into it:

1. the change's table names its source and kind (`survivorship_rules.toml`, `[[sources]]`);
2. a change at or below the source's stored position is ignored (LSN watermark, offset order
   for incremental-snapshot rows: see `cdc.position`), so redelivery and replay change nothing;
3. an insert or update replaces that source's field values, keeping stored values where the
   change has Debezium's unavailable-TOAST placeholder; a delete withdraws that source's
   contribution but keeps its position, so a late duplicate cannot resurrect the row;
4. each field is resolved: the most trusted source with a non-null value wins, then the most
   recent (`source.ts_ms`, ties by source name); fields without a trust list take the most
   recent value. No live source left → the golden record is deleted (a tombstone);
5. for fields the rules mark conflict-checked, every live source that disagrees with the winner
   is reported once as a `Conflict` with a deterministic id, while the disagreement lasts;
6. when the golden values change, the version goes up and SCD-2 history rows close the previous
   current row and open the new one.

The result depends only on each source's latest change, never on how sources interleave, so a
replay in any order that keeps each source's own order ends with the same golden record.
Everything here is pure: the agent keeps `GoldenState.to_dict()` in a table keyed by kind/entity.
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from qmsflow.errors import ConfigurationError, ContractError
from qmsflow.quality.cdc import ChangeEvent, merge_after

__all__ = [
    "CONFLICT_NAMESPACE",
    "Conflict",
    "Contribution",
    "EmployeeGolden",
    "EntityKind",
    "GoldenAction",
    "GoldenOutcome",
    "GoldenState",
    "HistoryRow",
    "KindRules",
    "SourceTable",
    "SurvivorshipRules",
    "Training",
    "apply_change",
    "conflict_id",
    "employee_from_state",
    "entity_of",
    "golden_to_customer_spec",
    "golden_to_employee",
    "golden_to_equipment",
    "golden_to_lot",
    "golden_to_part",
    "golden_to_supplier",
    "load_survivorship_rules",
    "parse_survivorship_rules",
]

EntityKind = Literal["supplier", "part", "lot", "equipment", "employee", "customer_spec"]
#: what the agent publishes for an outcome: the golden record, a tombstone, or nothing
GoldenAction = Literal["upsert", "tombstone", "none"]

#: namespace of conflict ids (uuid5); fixed forever so a replay reproduces the same ids
CONFLICT_NAMESPACE = uuid.UUID("5f0c3a9e-8d21-4b6f-a7e4-2c9d1b3e6a58")

_RULES_FILE = "config/survivorship_rules.toml"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# the md.customer-spec.v1 limits are decimal(18, 6)
_LIMIT_SCALE = Decimal("0.000001")


# --------------------------------------------------------------------------- rules


class _Rules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceTable(_Rules):
    """One CDC table feeding one kind of golden record, as one named source."""

    system: str  # the connector's source system, e.g. ERP (from the topic prefix)
    table: str  # Debezium's source.table
    kind: EntityKind
    source: str  # the name trust lists use; defaults to `system`
    id_column: str  # the column holding the entity id; must be a key column (deletes)
    columns: dict[str, str]  # golden field -> source column

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("system"), str):
            data = {**data, "system": data["system"].upper()}
            data.setdefault("source", data["system"])
        return data


class KindRules(_Rules):
    """Survivorship for one kind: trusted sources per field, conflict checks, required fields."""

    trust: dict[str, tuple[str, ...]] = {}
    conflict_checked: frozenset[str] = frozenset()
    required: tuple[str, ...] = ()


class SurvivorshipRules(_Rules):
    """The validated contents of `config/survivorship_rules.toml`."""

    version: int
    sources: tuple[SourceTable, ...]
    kinds: dict[EntityKind, KindRules]

    @model_validator(mode="after")
    def _consistent(self) -> SurvivorshipRules:
        tables: set[tuple[str, str]] = set()
        named: set[tuple[str, str]] = set()
        for table in self.sources:
            if (table.system, table.table) in tables:
                raise ValueError(f"table {table.system}.{table.table} is declared twice")
            if (table.kind, table.source) in named:
                raise ValueError(f"source {table.source!r} feeds {table.kind} from two tables")
            tables.add((table.system, table.table))
            named.add((table.kind, table.source))
        for kind, rules in self.kinds.items():
            sources = {t.source for t in self.sources if t.kind == kind}
            fields = self.fields_of(kind)
            for name, trusted in rules.trust.items():
                unknown = [s for s in trusted if s not in sources]
                if unknown:
                    raise ValueError(
                        f"kinds.{kind}.trust.{name} names {unknown}; {kind} sources are "
                        f"{sorted(sources)}"
                    )
            for group, names in (
                ("trust", rules.trust),
                ("conflict_checked", rules.conflict_checked),
                ("required", rules.required),
            ):
                unmapped = sorted(set(names) - fields)
                if unmapped:
                    raise ValueError(
                        f"kinds.{kind}.{group} names {unmapped}, which no {kind} source maps; "
                        f"mapped fields are {sorted(fields)}"
                    )
        return self

    def source_for(self, system: str, table: str) -> SourceTable | None:
        """The declaration of a CDC table, or None when no golden record uses it."""
        for declared in self.sources:
            if declared.system == system.upper() and declared.table == table:
                return declared
        return None

    def fields_of(self, kind: str) -> frozenset[str]:
        """Every golden field some source of `kind` maps."""
        return frozenset(f for t in self.sources if t.kind == kind for f in t.columns)

    def kind_rules(self, kind: EntityKind) -> KindRules:
        """The kind's survivorship rules; a kind without a section takes the most recent value."""
        return self.kinds.get(kind, _NO_RULES)


_NO_RULES = KindRules()


def parse_survivorship_rules(document: Mapping[str, Any]) -> SurvivorshipRules:
    """Validate a parsed rules document; an invalid one is a ConfigurationError saying why."""
    try:
        return SurvivorshipRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is invalid: {exc}") from exc


@lru_cache(maxsize=1)
def load_survivorship_rules() -> SurvivorshipRules:
    """The survivorship rules shipped with the package."""
    text = resources.files("qmsflow").joinpath(_RULES_FILE).read_text("utf-8")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{_RULES_FILE} is not valid TOML: {exc}") from exc
    return parse_survivorship_rules(document)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Contribution:
    """One source's latest view of an entity and where it came from.

    `lsn` is the highest LSN applied (the watermark; an incremental-snapshot row keeps it);
    `topic`, `partition`, `offset` are those of the last applied change. A deleted source keeps
    its position and contributes no values.
    """

    fields: Mapping[str, Any]
    lsn: int | None
    topic: str
    partition: int
    offset: int
    ts_ms: int
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "fields": dict(sorted(self.fields.items())),
            "lsn": self.lsn,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "ts_ms": self.ts_ms,
            "deleted": self.deleted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contribution:
        """The contribution `to_dict` wrote."""
        return cls(
            fields=dict(data["fields"]),
            lsn=data["lsn"],
            topic=data["topic"],
            partition=int(data["partition"]),
            offset=int(data["offset"]),
            ts_ms=int(data["ts_ms"]),
            deleted=bool(data["deleted"]),
        )


@dataclass(frozen=True, slots=True)
class GoldenState:
    """Everything known about one golden record; JSON-able through `to_dict` for a Faust table.

    `golden` is None before the first live source and after the last source deleted it.
    `current_*` describe the open SCD-2 row; `open_conflicts` the conflict ids already reported.
    """

    kind: EntityKind
    entity_id: str
    contributions: Mapping[str, Contribution] = field(default_factory=dict)
    golden: Mapping[str, Any] | None = None
    version: int = 0
    current_since_ms: int | None = None
    current_source: str | None = None
    current_lsn: int | None = None
    open_conflicts: frozenset[str] = frozenset()

    @property
    def updated_ts_ms(self) -> int | None:
        """The source time of the newest live contribution, or None when there is none."""
        latest = _latest_live(self.contributions)
        return None if latest is None else latest[1].ts_ms

    @property
    def latest_source(self) -> str | None:
        """The source of the newest live contribution (ties by name), or None."""
        latest = _latest_live(self.contributions)
        return None if latest is None else latest[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for a Faust table."""
        return {
            "kind": self.kind,
            "entity_id": self.entity_id,
            "contributions": {s: c.to_dict() for s, c in sorted(self.contributions.items())},
            "golden": None if self.golden is None else dict(sorted(self.golden.items())),
            "version": self.version,
            "current_since_ms": self.current_since_ms,
            "current_source": self.current_source,
            "current_lsn": self.current_lsn,
            "open_conflicts": sorted(self.open_conflicts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenState:
        """The state `to_dict` wrote."""
        kind = data["kind"]
        if kind not in get_args(EntityKind):
            raise ValueError(
                f"golden state kind: expected one of {get_args(EntityKind)}, got {kind!r}"
            )
        golden = data["golden"]
        return cls(
            kind=kind,
            entity_id=str(data["entity_id"]),
            contributions={s: Contribution.from_dict(c) for s, c in data["contributions"].items()},
            golden=None if golden is None else dict(golden),
            version=int(data["version"]),
            current_since_ms=data["current_since_ms"],
            current_source=data["current_source"],
            current_lsn=data["current_lsn"],
            open_conflicts=frozenset(data["open_conflicts"]),
        )


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two live sources disagree on a conflict-checked field; reported, never hidden.

    `conflict_id` derives from kind, entity, field and the two (source, value) pairs, so a
    replay reproduces it; `detected_at` is the source time of the change that revealed it.
    """

    conflict_id: str
    kind: EntityKind
    entity_id: str
    field: str
    winning_value: Any
    winning_source: str
    winning_ts: datetime
    losing_value: Any
    losing_source: str
    losing_ts: datetime
    rule: str
    detected_at: datetime

    def to_avro(self) -> dict[str, Any]:
        """The `md.conflicts.v1-value` datum (values as text, JSON for non-text values)."""
        return {
            "conflict_id": self.conflict_id,
            "kind": self.kind,
            "entity_id": self.entity_id,
            "field": self.field,
            "winning_value": _display(self.winning_value),
            "winning_source": self.winning_source,
            "winning_ts": self.winning_ts,
            "losing_value": _display(self.losing_value),
            "losing_source": self.losing_source,
            "losing_ts": self.losing_ts,
            "rule": self.rule,
            "detected_at": self.detected_at,
        }


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """An SCD-2 row: the golden values from `valid_from` until `valid_to` (None: current).

    Rows are keyed by (kind, entity_id, version); a closing row repeats its version with
    `valid_to` set. `valid_from` never precedes the previous row's, even when sources' clocks
    disagree, so intervals never invert.
    """

    kind: EntityKind
    entity_id: str
    valid_from: datetime
    valid_to: datetime | None
    source: str
    lsn: int | None
    fields: Mapping[str, Any]
    version: int


@dataclass(frozen=True, slots=True)
class GoldenOutcome:
    """What one change did: the new state, what to publish, conflicts and history rows.

    `applied` is False for a change at or below its source's watermark (nothing else changes);
    `changed` says whether the golden values changed; `missing` lists required fields the golden
    record still lacks (the adapters refuse to build a datum while any is missing).
    """

    state: GoldenState
    record: Mapping[str, Any] | None
    action: GoldenAction
    changed: bool
    applied: bool
    conflicts: tuple[Conflict, ...] = ()
    history: tuple[HistoryRow, ...] = ()
    missing: tuple[str, ...] = ()


# --------------------------------------------------------------------------- applying


def entity_of(change: ChangeEvent, rules: SurvivorshipRules) -> tuple[EntityKind, str] | None:
    """The golden record a change belongs to, or None when no rule uses its table.

    The id is read from the key first (a delete's `before` may hold only key columns). Raises
    ContractError when the declared id column is nowhere in the change.
    """
    table = rules.source_for(change.source_system, change.table)
    if table is None:
        return None
    for row in (change.key, change.after, change.before):
        if row is not None and row.get(table.id_column) is not None:
            return table.kind, str(row[table.id_column])
    topic, partition, offset = change.coordinates
    raise ContractError(
        f"{topic}[{partition}]@{offset}: expected id column {table.id_column!r} of "
        f"{table.system}.{table.table} in the key or row, got key {dict(change.key)!r}"
    )


def apply_change(
    state: GoldenState, change: ChangeEvent, rules: SurvivorshipRules
) -> GoldenOutcome:
    """Fold one change into a golden record's state; idempotent under redelivery and replay.

    Raises ContractError for a change that does not belong to this state's entity, for a table
    no rule declares, and for a truncate (it names no rows: an operator decides what it means
    for master data, so it is dead-lettered, never applied as a mass delete).
    """
    topic, partition, offset = change.coordinates
    where = f"{topic}[{partition}]@{offset}"
    if change.op == "t":
        raise ContractError(
            f"{where}: truncate of {change.source_system}.{change.table} names no rows; "
            "expected row changes (an operator decides what a truncate means for master data)"
        )
    table = rules.source_for(change.source_system, change.table)
    routed = entity_of(change, rules)
    if table is None or routed is None:
        raise ContractError(
            f"{where}: expected a table declared in {_RULES_FILE}, got "
            f"{change.source_system}.{change.table}"
        )
    if routed != (state.kind, state.entity_id):
        raise ContractError(
            f"{where}: change for {routed[0]} {routed[1]!r} applied to the state of "
            f"{state.kind} {state.entity_id!r}"
        )
    stored = state.contributions.get(table.source)
    if not _is_newer(stored, change):
        return GoldenOutcome(
            state=state,
            record=state.golden,
            action="none",
            changed=False,
            applied=False,
            missing=_missing(state.golden, rules.kind_rules(state.kind)),
        )
    contributions = dict(state.contributions)
    contributions[table.source] = _contribution(stored, change, table)
    kind_rules = rules.kind_rules(state.kind)
    resolved = _resolve(contributions, kind_rules)
    golden = None if resolved is None else {f: w.value for f, w in resolved.items()}
    at = _from_ms(change.ts_ms)
    conflicts = (
        () if resolved is None else _conflicts(state, contributions, resolved, kind_rules, at)
    )
    open_ids = frozenset(c.conflict_id for c in conflicts)
    reported = tuple(c for c in conflicts if c.conflict_id not in state.open_conflicts)
    changed = golden != (None if state.golden is None else dict(state.golden))
    history: tuple[HistoryRow, ...] = ()
    new_state = GoldenState(
        kind=state.kind,
        entity_id=state.entity_id,
        contributions=contributions,
        golden=state.golden,
        version=state.version,
        current_since_ms=state.current_since_ms,
        current_source=state.current_source,
        current_lsn=state.current_lsn,
        open_conflicts=open_ids,
    )
    if changed:
        since = max(change.ts_ms, state.current_since_ms or change.ts_ms)
        version = state.version + 1
        rows: list[HistoryRow] = []
        if state.golden is not None and state.current_since_ms is not None:
            rows.append(
                HistoryRow(
                    kind=state.kind,
                    entity_id=state.entity_id,
                    valid_from=_from_ms(state.current_since_ms),
                    valid_to=_from_ms(since),
                    source=state.current_source or "",
                    lsn=state.current_lsn,
                    fields=dict(state.golden),
                    version=state.version,
                )
            )
        if golden is not None:
            rows.append(
                HistoryRow(
                    kind=state.kind,
                    entity_id=state.entity_id,
                    valid_from=_from_ms(since),
                    valid_to=None,
                    source=table.source,
                    lsn=change.lsn,
                    fields=dict(golden),
                    version=version,
                )
            )
        history = tuple(rows)
        new_state = GoldenState(
            kind=state.kind,
            entity_id=state.entity_id,
            contributions=contributions,
            golden=golden,
            version=version,
            current_since_ms=None if golden is None else since,
            current_source=None if golden is None else table.source,
            current_lsn=None if golden is None else change.lsn,
            open_conflicts=open_ids,
        )
    action: GoldenAction = "none"
    if changed:
        action = "upsert" if golden is not None else "tombstone"
    return GoldenOutcome(
        state=new_state,
        record=golden,
        action=action,
        changed=changed,
        applied=True,
        conflicts=reported,
        history=history,
        missing=_missing(golden, kind_rules),
    )


def conflict_id(
    kind: str, entity_id: str, field_name: str, one: tuple[str, Any], other: tuple[str, Any]
) -> str:
    """The deterministic id of a disagreement between two (source, value) pairs, in any order."""
    pairs = sorted([[one[0], one[1]], [other[0], other[1]]], key=lambda pair: str(pair[0]))
    name = json.dumps([kind, entity_id, field_name, pairs], sort_keys=True, default=str)
    return str(uuid.uuid5(CONFLICT_NAMESPACE, name))


@dataclass(frozen=True, slots=True)
class _Winner:
    value: Any
    source: str
    ts_ms: int
    rule: str


def _is_newer(stored: Contribution | None, change: ChangeEvent) -> bool:
    """The watermark test: `stored.lsn < incoming.lsn`, else offset order in one partition."""
    if stored is None:
        return True
    if change.lsn is not None and stored.lsn is not None:
        return stored.lsn < change.lsn
    if (stored.topic, stored.partition) == (change.topic, change.partition):
        return stored.offset < change.offset
    # offsets of different partitions do not compare (a repartitioned topic): source time
    return stored.ts_ms < change.ts_ms


def _contribution(
    stored: Contribution | None, change: ChangeEvent, table: SourceTable
) -> Contribution:
    watermark = change.lsn
    if stored is not None and stored.lsn is not None:
        watermark = stored.lsn if watermark is None else max(watermark, stored.lsn)
    fields: dict[str, Any] = {}
    if change.op != "d" and change.after is not None:
        mapped = {f: change.after[c] for f, c in table.columns.items() if c in change.after}
        previous = None if stored is None or stored.deleted else stored.fields
        fields = merge_after(previous, mapped)
    return Contribution(
        fields=fields,
        lsn=watermark,
        topic=change.topic,
        partition=change.partition,
        offset=change.offset,
        ts_ms=change.ts_ms,
        deleted=change.op == "d",
    )


def _resolve(
    contributions: Mapping[str, Contribution], rules: KindRules
) -> dict[str, _Winner] | None:
    live = {s: c for s, c in contributions.items() if not c.deleted}
    if not live:
        return None
    names = sorted({f for c in live.values() for f in c.fields})
    resolved: dict[str, _Winner] = {}
    for name in names:
        ranked = _ranked(name, live, rules)
        if not ranked:
            resolved[name] = _Winner(None, "", 0, "no source has a value")
            continue
        source, contribution = ranked[0]
        trust = rules.trust.get(name, ())
        rule = (
            f"trusted source {source} (order {' > '.join(trust)})"
            if source in trust
            else "most recent change"
        )
        resolved[name] = _Winner(contribution.fields[name], source, contribution.ts_ms, rule)
    return resolved


def _ranked(
    name: str, live: Mapping[str, Contribution], rules: KindRules
) -> list[tuple[str, Contribution]]:
    """Sources with a non-null value for the field, best first."""
    trust = rules.trust.get(name, ())
    candidates = [(s, c) for s, c in live.items() if c.fields.get(name) is not None]

    def rank(item: tuple[str, Contribution]) -> tuple[int, int, str]:
        source, contribution = item
        order = trust.index(source) if source in trust else len(trust)
        return order, -contribution.ts_ms, source

    return sorted(candidates, key=rank)


def _conflicts(
    state: GoldenState,
    contributions: Mapping[str, Contribution],
    resolved: Mapping[str, _Winner],
    rules: KindRules,
    detected_at: datetime,
) -> tuple[Conflict, ...]:
    live = {s: c for s, c in contributions.items() if not c.deleted}
    found: list[Conflict] = []
    for name in sorted(rules.conflict_checked):
        winner = resolved.get(name)
        if winner is None or winner.value is None:
            continue
        for source, contribution in sorted(live.items()):
            value = contribution.fields.get(name)
            if source == winner.source or value is None or value == winner.value:
                continue
            found.append(
                Conflict(
                    conflict_id=conflict_id(
                        state.kind,
                        state.entity_id,
                        name,
                        (winner.source, winner.value),
                        (source, value),
                    ),
                    kind=state.kind,
                    entity_id=state.entity_id,
                    field=name,
                    winning_value=winner.value,
                    winning_source=winner.source,
                    winning_ts=_from_ms(winner.ts_ms),
                    losing_value=value,
                    losing_source=source,
                    losing_ts=_from_ms(contribution.ts_ms),
                    rule=winner.rule,
                    detected_at=detected_at,
                )
            )
    return tuple(found)


def _missing(golden: Mapping[str, Any] | None, rules: KindRules) -> tuple[str, ...]:
    if golden is None:
        return ()
    return tuple(name for name in rules.required if golden.get(name) is None)


def _latest_live(contributions: Mapping[str, Contribution]) -> tuple[str, Contribution] | None:
    live = [(s, c) for s, c in contributions.items() if not c.deleted]
    if not live:
        return None
    return max(live, key=lambda item: (item[1].ts_ms, item[0]))


def _from_ms(ts_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ts_ms)


def _display(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------- md.* adapters


def _golden(state: GoldenState, kind: EntityKind, required: Iterable[str]) -> dict[str, Any]:
    """The golden values of a live record of `kind` with every `required` field present."""
    topic = f"md.{kind.replace('_', '-')}.v1"
    if state.kind != kind:
        raise ContractError(f"{topic}: expected a {kind} golden record, got a {state.kind}")
    if state.golden is None:
        raise ContractError(
            f"{topic} {state.entity_id!r}: the golden record is deleted; publish a tombstone"
        )
    missing = [name for name in required if state.golden.get(name) is None]
    if missing:
        raise ContractError(
            f"{topic} {state.entity_id!r}: golden record lacks {missing} "
            f"(sources so far: {sorted(state.contributions)})"
        )
    return dict(state.golden)


def _stamp(state: GoldenState) -> dict[str, Any]:
    return {
        "updated_at": _from_ms(state.updated_ts_ms or 0),
        "source_system": state.latest_source or "",
        "deleted": False,
    }


def golden_to_lot(state: GoldenState) -> dict[str, Any]:
    """The `md.lot.v1-value` datum of a live lot golden record (see `LotRecord.to_avro`).

    Raises ContractError when the record is deleted or lacks a field the schema requires.
    """
    values = _golden(state, "lot", ("part_number", "product_line", "site", "status"))
    return {
        "lot_id": state.entity_id,
        "part_number": str(values["part_number"]),
        "product_line": str(values["product_line"]),
        "site": str(values["site"]),
        "supplier_id": _optional_text(values.get("supplier_id")),
        "parent_lot_ids": _texts(values.get("parent_lot_ids")),
        "status": str(values["status"]),
        "manufactured_at": _optional_datetime(values.get("manufactured_at")),
        **_stamp(state),
    }


def golden_to_part(state: GoldenState) -> dict[str, Any]:
    """The `md.part.v1-value` datum of a live part golden record (see `PartRecord.to_avro`)."""
    values = _golden(state, "part", ("revision", "description", "product_line", "lifecycle_status"))
    return {
        "part_number": state.entity_id,
        "revision": str(values["revision"]),
        "description": str(values["description"]),
        "product_line": str(values["product_line"]),
        "lifecycle_status": str(values["lifecycle_status"]),
        **_stamp(state),
    }


def golden_to_supplier(state: GoldenState) -> dict[str, Any]:
    """The `md.supplier.v1-value` datum of a live supplier golden record.

    Fields md.supplier.v1 does not carry (e.g. the portal's scorecard) stay in the golden state.
    """
    values = _golden(state, "supplier", ("name", "country", "approval_status"))
    return {
        "supplier_id": state.entity_id,
        "name": str(values["name"]),
        "country": str(values["country"]),
        "approval_status": str(values["approval_status"]),
        **_stamp(state),
    }


def golden_to_equipment(state: GoldenState) -> dict[str, Any]:
    """The `md.equipment.v1-value` datum of a live equipment golden record."""
    values = _golden(state, "equipment", ("description", "site", "calibration_status"))
    return {
        "equipment_id": state.entity_id,
        "description": str(values["description"]),
        "site": str(values["site"]),
        "calibration_status": str(values["calibration_status"]),
        "calibration_due": _optional_date(values.get("calibration_due")),
        **_stamp(state),
    }


def golden_to_employee(state: GoldenState) -> dict[str, Any]:
    """The `md.employee.v1-value` datum of a live employee golden record.

    `roles` may arrive as an array column or comma-separated text, `trainings` as an array or a
    jsonb column (JSON text) of {course, completed_at, expires_at}.
    """
    values = _golden(state, "employee", ("printed_name", "site", "active"))
    return {
        "employee_id": state.entity_id,
        "printed_name": str(values["printed_name"]),
        "site": str(values["site"]),
        "active": _boolean(values["active"]),
        "roles": _texts(values.get("roles")),
        "trainings": [
            {
                "course": str(item["course"]),
                "completed_at": _datetime(item["completed_at"]),
                "expires_at": _optional_datetime(item.get("expires_at")),
            }
            for item in _items(values.get("trainings"))
        ],
        **_stamp(state),
    }


def golden_to_customer_spec(state: GoldenState) -> dict[str, Any]:
    """The `md.customer-spec.v1-value` datum of a live customer specification golden record."""
    values = _golden(
        state, "customer_spec", ("customer", "part_number", "characteristic", "revision")
    )
    return {
        "spec_id": state.entity_id,
        "customer": str(values["customer"]),
        "part_number": str(values["part_number"]),
        "characteristic": str(values["characteristic"]),
        "lower_limit": _limit(values.get("lower_limit")),
        "upper_limit": _limit(values.get("upper_limit")),
        "unit": _optional_text(values.get("unit")),
        "revision": str(values["revision"]),
        **_stamp(state),
    }


@dataclass(frozen=True, slots=True)
class Training:
    """A course an employee completed; `expires_at` None means it does not expire."""

    course: str
    completed_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class EmployeeGolden:
    """An employee as signature checks see it (`md.employee.v1`)."""

    employee_id: str
    printed_name: str
    site: str
    active: bool
    roles: tuple[str, ...]
    trainings: tuple[Training, ...]
    updated_at: datetime
    source_system: str

    @classmethod
    def from_avro(cls, datum: Mapping[str, Any]) -> EmployeeGolden:
        """The employee of a decoded `md.employee.v1` datum (a deleted one is not active)."""
        return cls(
            employee_id=str(datum["employee_id"]),
            printed_name=str(datum["printed_name"]),
            site=str(datum["site"]),
            active=bool(datum["active"]) and not bool(datum.get("deleted", False)),
            roles=tuple(datum.get("roles", ())),
            trainings=tuple(
                Training(
                    course=str(t["course"]),
                    completed_at=_datetime(t["completed_at"]),
                    expires_at=_optional_datetime(t.get("expires_at")),
                )
                for t in datum.get("trainings", ())
            ),
            updated_at=_datetime(datum["updated_at"]),
            source_system=str(datum["source_system"]),
        )


def employee_from_state(state: GoldenState) -> EmployeeGolden:
    """The employee of a live employee golden record."""
    return EmployeeGolden.from_avro(golden_to_employee(state))


# Debezium's JSON for Postgres types (time.precision.mode=adaptive, the default): date → days
# since epoch, timestamp(6) → microseconds since epoch, timestamptz → ISO text, numeric →
# text with decimal.handling.mode=string, text[] → array, jsonb → JSON text.


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parsed = _json_or_none(value)
        if isinstance(parsed, list):
            return [str(item) for item in parsed]
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(item) for item in value]


def _items(value: Any) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    parsed = _json_or_none(value) if isinstance(value, str) else value
    if not isinstance(parsed, list) or not all(isinstance(item, Mapping) for item in parsed):
        raise ContractError(f"expected an array of objects, got {str(value)[:80]!r}")
    return list(parsed)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    word = str(value).strip().casefold()
    if word in ("true", "t", "yes", "y", "1", "active"):
        return True
    if word in ("false", "f", "no", "n", "0", "inactive"):
        return False
    raise ContractError(f"expected a boolean, got {value!r}")


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        return _EPOCH + timedelta(microseconds=value)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ContractError(f"expected a timestamp, got {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _optional_datetime(value: Any) -> datetime | None:
    return None if value is None else _datetime(value)


def _optional_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return date(1970, 1, 1) + timedelta(days=value)
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ContractError(f"expected a date, got {value!r}") from exc


def _limit(value: Any) -> Decimal | str | None:
    """A specification limit: a number as decimal(18, 6), anything else (e.g. "<0.5") as text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if not number.is_finite():
        return str(value)
    return number.quantize(_LIMIT_SCALE)
