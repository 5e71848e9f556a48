"""The Part 11 audit trail: one hash-chained `audit.record_change` row per regulated record.

Chain protocol (implemented here and nowhere else; the table is migration 0006):
  1. the sink calls `append_audit_trail` inside its batch transaction, after the table writes;
  2. it takes a transaction-level advisory lock (`AUDIT_CHAIN_LOCK`), so concurrent sinks
     append one at a time and the chain has a single order; the lock ends with the transaction;
  3. it skips records already in the trail (`record_type`, `record_id` unique: a redelivered
     record is audited once, under its first delivery's lineage); a caller that expects none
     may skip the look-up (`look_up_known=False`): a record already there then fails the COPY
     with a unique violation, and the caller writes the batch again with the look-up;
  4. each new row gets `seq` = head + 1 and `row_hash = sha256(prev_hash ‖ canonical_json(row))`,
     where the canonical row is every column except the two hashes (`canonical_json`);
  5. the rows commit, or roll back, with the records they describe.
`verify_chain` recomputes steps 4 over the stored rows, in `seq` order, and names the first
broken link: a gap in `seq`, a `prev_hash` that is not the previous row's hash, or a row whose
content no longer yields its `row_hash` (a row changed with the trigger disabled).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple

import orjson
import psycopg

#: advisory-lock key serialising appends to the chain (any fixed bigint; "qmsaudit")
AUDIT_CHAIN_LOCK = 0x716D7361756469
#: prev_hash of the first row
GENESIS_HASH = "0" * 64
#: the stage that issues records without a human author (commands, escalations)
SYSTEM_USER = "qmsflow"

#: audit columns in table order, the two hashes last (they are not part of the hashed row)
AUDIT_COLUMNS = (
    "seq",
    "record_type",
    "record_id",
    "source_record_id",
    "operation",
    "changed_by",
    "changed_at",
    "reason",
    "changes",
    "signer_id",
    "printed_name",
    "signed_at",
    "signature_meaning",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "source_topic",
    "source_partition",
    "source_offset",
    "schema_id",
    "trace_id",
    "logged_at",
)


@dataclass(frozen=True)
class AuditEntry:
    """One regulated record's change, before it is given its place in the chain."""

    record_type: str
    record_id: str
    source_record_id: str | None
    changed_by: str
    changed_at: datetime
    reason: str | None
    changes: list[dict[str, str | None]]
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    operation: str = "create"
    signer_id: str | None = None
    printed_name: str | None = None
    signed_at: datetime | None = None
    signature_meaning: str | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    schema_id: int | None = None
    trace_id: str | None = None

    def values(self, seq: int, logged_at: datetime) -> list[Any]:
        """The entry's column values in `AUDIT_COLUMNS` order, given its place in the chain.

        Built field by field: `dataclasses.asdict` deep-copies every value and cost more than
        the hash itself.
        """
        return [
            seq,
            self.record_type,
            self.record_id,
            self.source_record_id,
            self.operation,
            self.changed_by,
            self.changed_at,
            self.reason,
            self.changes,
            self.signer_id,
            self.printed_name,
            self.signed_at,
            self.signature_meaning,
            self.kafka_topic,
            self.kafka_partition,
            self.kafka_offset,
            self.source_topic,
            self.source_partition,
            self.source_offset,
            self.schema_id,
            self.trace_id,
            logged_at,
        ]


#: position of the `changes` column, written as jsonb text
_CHANGES = AUDIT_COLUMNS.index("changes")


@dataclass(frozen=True)
class BrokenLink:
    """The first row at which the chain no longer holds."""

    seq: int
    record_type: str
    record_id: str
    problem: str


@dataclass
class ChainReport:
    """What `verify_chain` found."""

    rows: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    broken: BrokenLink | None = None
    problems: list[BrokenLink] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """Whether every link holds."""
        return self.broken is None


def _canonical_value(value: Any) -> Any:
    if value is None or value.__class__ in _PLAIN:
        return value
    if isinstance(value, datetime):
        # one spelling per instant, whatever the session time zone a reader uses
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, list):
        return [_canonical_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)  # UUIDs and the like: their text form


#: values the canonical form keeps as they are
_PLAIN = frozenset({str, int, bool})


def canonical_json(row: Mapping[str, Any]) -> str:
    """The row's canonical form: sorted keys, no spaces, UTC microsecond timestamps, UTF-8.

    The bytes are those of `json.dumps(..., sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`, which wrote the chain's first rows; orjson writes them ~5x faster.
    `tests/unit/analytics/test_audit_chain.py` pins hashes made by the json form and checks both
    agree on arbitrary text, so a change of canonical form fails a test before it breaks a chain.
    """
    return _canonical_bytes(row).decode("utf-8")


def _canonical_bytes(row: Mapping[str, Any]) -> bytes:
    return orjson.dumps(
        {k: _canonical_value(row[k]) for k in AUDIT_COLUMNS}, option=orjson.OPT_SORT_KEYS
    )


def link_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """sha256(prev_hash ‖ canonical_json(row)) as lowercase hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + _canonical_bytes(row)).hexdigest()


# ---- which records are audited, and how ----------------------------------------------------


def _json_field(value: Any) -> Any:
    # the sink wrote this text with orjson: orjson reads it back to the same values, ~5x faster
    return orjson.loads(value) if isinstance(value, str) else value


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _quality_event(row: Mapping[str, Any]) -> AuditEntry:
    audit = _json_field(row["audit"]) or {}
    signature = _json_field(row["signature"]) or {}
    changed_by = audit.get("changed_by") or signature.get("signer_id") or row["source_system"]
    return AuditEntry(
        record_type="quality_event",
        record_id=str(row["event_id"]),
        source_record_id=row["source_record_id"],
        changed_by=str(changed_by),
        changed_at=row["recorded_at"],
        reason=audit.get("reason"),
        changes=[
            {"field": c["field"], "old_value": c.get("old_value"), "new_value": c.get("new_value")}
            for c in audit.get("changes", [])
        ],
        signer_id=signature.get("signer_id"),
        printed_name=signature.get("printed_name"),
        signed_at=_timestamp(signature.get("signed_at")),
        signature_meaning=signature.get("meaning"),
        kafka_topic=row["kafka_topic"],
        kafka_partition=row["kafka_partition"],
        kafka_offset=row["kafka_offset"],
        source_topic=row["source_topic"],
        source_partition=row["source_partition"],
        source_offset=row["source_offset"],
        schema_id=row["source_schema_id"],
        trace_id=row["trace_id"],
    )


def _created(fields: Mapping[str, Any], *names: str) -> list[dict[str, str | None]]:
    return [
        {"field": n, "old_value": None, "new_value": None if fields[n] is None else str(fields[n])}
        for n in names
    ]


def _environment_keyed(row: Mapping[str, Any], id_column: str) -> str:
    """The record_id of a row keyed by (environment, id) (0015): production's stays the bare id.

    The id is a uuid5 of content, alike in every environment: by the id alone, a second
    environment's record would be taken for one already audited and never get its entry.
    """
    return f"{row['environment']}{row[id_column]}"


def _quarantine_command(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        record_type="quarantine_command",
        record_id=_environment_keyed(row, "command_id"),
        source_record_id=row["lot_id"],
        changed_by=f"{SYSTEM_USER}:quarantine",
        changed_at=row["issued_at"],
        reason=row["reason"],
        changes=_created(row, "action", "lot_id", "target_stock_type", "sap_movement_type"),
        kafka_topic=row["kafka_topic"],
        kafka_partition=row["kafka_partition"],
        kafka_offset=row["kafka_offset"],
    )


def _escalation(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        record_type="escalation",
        record_id=_environment_keyed(row, "escalation_id"),
        source_record_id=row["record_key"],
        changed_by=f"{SYSTEM_USER}:escalation",
        changed_at=row["escalated_at"],
        reason=f"{row['overdue_days']} days past due {row['due_date']}",
        changes=_created(row, "level", "recipient_role"),
        kafka_topic=row["kafka_topic"],
        kafka_partition=row["kafka_partition"],
        kafka_offset=row["kafka_offset"],
    )


def _signature_check(row: Mapping[str, Any]) -> AuditEntry:
    problems = "; ".join(row["problems"])
    return AuditEntry(
        record_type="signature_check",
        record_id=str(row["check_id"]),
        source_record_id=row["source_record_id"],
        changed_by=row["signer_id"],
        changed_at=row["checked_at"],
        reason=f"signature {row['status']}" + (f": {problems}" if problems else ""),
        changes=_created(row, "event_id", "status"),
        signer_id=row["signer_id"],
        printed_name=row["printed_name"],
        signed_at=row["signed_at"],
        signature_meaning=row["meaning"],
        kafka_topic=row["kafka_topic"],
        kafka_partition=row["kafka_partition"],
        kafka_offset=row["kafka_offset"],
    )


#: the regulated tables and how one of their rows becomes an audit entry
AUDITED_TABLES = {
    "qms.quality_event": _quality_event,
    "qms.quarantine_command": _quarantine_command,
    "qms.escalation": _escalation,
    "qms.signature_check": _signature_check,
}

_LINEAGE = ("kafka_topic", "kafka_partition", "kafka_offset")
#: the columns each audited table's entry is made from: a row is handed over as a mapping of
#: these only, not of all its columns (34 for an event), which cost more than the entry itself
AUDITED_COLUMNS: dict[str, tuple[str, ...]] = {
    "qms.quality_event": (
        "event_id",
        "source_record_id",
        "source_system",
        "recorded_at",
        "audit",
        "signature",
        "source_topic",
        "source_partition",
        "source_offset",
        "source_schema_id",
        "trace_id",
        *_LINEAGE,
    ),
    "qms.quarantine_command": (
        "environment",
        "command_id",
        "lot_id",
        "issued_at",
        "reason",
        "action",
        "target_stock_type",
        "sap_movement_type",
        *_LINEAGE,
    ),
    "qms.escalation": (
        "environment",
        "escalation_id",
        "record_key",
        "escalated_at",
        "overdue_days",
        "due_date",
        "level",
        "recipient_role",
        *_LINEAGE,
    ),
    "qms.signature_check": (
        "check_id",
        "event_id",
        "source_record_id",
        "signer_id",
        "printed_name",
        "signed_at",
        "meaning",
        "checked_at",
        "status",
        "problems",
        *_LINEAGE,
    ),
}


def audit_entries(
    batch: Mapping[str, tuple[Sequence[str], Iterable[Sequence[Any]]]],
) -> list[AuditEntry]:
    """The entries of a batch of rows per table (`table: (columns, rows)`), in chain order.

    A record met twice keeps its first delivery (lowest offset), as the insert-only tables do;
    the order is by lineage, so the same batch always chains the same way.
    """
    first: dict[tuple[str, str], AuditEntry] = {}
    for table, (columns, rows) in batch.items():
        to_entry = AUDITED_TABLES.get(table)
        if to_entry is None:
            continue
        names = AUDITED_COLUMNS[table]
        pick = itemgetter(*(columns.index(name) for name in names))
        for values in rows:
            entry = to_entry(dict(zip(names, pick(values), strict=True)))
            key = (entry.record_type, entry.record_id)
            kept = first.get(key)
            if kept is None or _position(entry) < _position(kept):
                first[key] = entry
    return sorted(first.values(), key=lambda e: (*_position(e), e.record_type))


def _position(entry: AuditEntry) -> tuple[str, int, int]:
    return (entry.kafka_topic, entry.kafka_partition, entry.kafka_offset)


# ---- the database side ----------------------------------------------------------------------


class AuditAppend(NamedTuple):
    """What `append_audit_trail` did with a batch's regulated records."""

    appended: int
    known: int  # already in the trail: a redelivery, skipped (step 3)


def chained_rows(
    entries: Iterable[AuditEntry], seq: int, prev_hash: str, logged_at: datetime
) -> Iterator[list[Any]]:
    """The entries' `audit.record_change` rows after the head (`seq`, `prev_hash`) (step 4).

    Each row is `AUDIT_COLUMNS` (`changes` as jsonb text), then prev_hash and row_hash; the
    hash is `link_hash` of the row, computed without building the row as a mapping first.
    """
    logged = _canonical_value(logged_at)  # one batch, one logged_at: spelled once
    canonical = _canonical_value
    for entry in entries:
        seq += 1
        # the canonical row as _canonical_bytes spells it, field by field (keys: AUDIT_COLUMNS)
        text = orjson.dumps(
            {
                "seq": seq,
                "record_type": canonical(entry.record_type),
                "record_id": canonical(entry.record_id),
                "source_record_id": canonical(entry.source_record_id),
                "operation": canonical(entry.operation),
                "changed_by": canonical(entry.changed_by),
                "changed_at": canonical(entry.changed_at),
                "reason": canonical(entry.reason),
                "changes": canonical(entry.changes),
                "signer_id": canonical(entry.signer_id),
                "printed_name": canonical(entry.printed_name),
                "signed_at": canonical(entry.signed_at),
                "signature_meaning": canonical(entry.signature_meaning),
                "kafka_topic": canonical(entry.kafka_topic),
                "kafka_partition": canonical(entry.kafka_partition),
                "kafka_offset": canonical(entry.kafka_offset),
                "source_topic": canonical(entry.source_topic),
                "source_partition": canonical(entry.source_partition),
                "source_offset": canonical(entry.source_offset),
                "schema_id": canonical(entry.schema_id),
                "trace_id": canonical(entry.trace_id),
                "logged_at": logged,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        row_hash = hashlib.sha256(prev_hash.encode("ascii") + text).hexdigest()
        values = entry.values(seq, logged_at)
        values[_CHANGES] = orjson.dumps(entry.changes).decode("utf-8")  # jsonb text
        values += (prev_hash, row_hash)
        yield values
        prev_hash = row_hash


def append_audit_trail(
    conn: psycopg.Connection[Any],
    batch: Mapping[str, tuple[Sequence[str], Iterable[Sequence[Any]]]],
    *,
    logged_at: datetime | None = None,
    look_up_known: bool = True,
) -> AuditAppend:
    """Chain the batch's regulated records into `audit.record_change` (steps 2–4).

    Must run inside the caller's transaction. Without `look_up_known`, a record already in the
    trail is not skipped but fails the COPY with a unique violation (SQLSTATE 23505), and the
    caller's transaction with it (step 3).
    """
    entries = audit_entries(batch)
    if not entries:
        return AuditAppend(0, 0)
    logged_at = logged_at or datetime.now(UTC)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_CHAIN_LOCK,))
    fresh = _not_yet_audited(conn, entries) if look_up_known else entries
    known = len(entries) - len(fresh)
    if not fresh:
        return AuditAppend(0, known)
    head = conn.execute(
        "SELECT seq, row_hash FROM audit.record_change ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    seq, prev_hash = (0, GENESIS_HASH) if head is None else (head[0], head[1])
    with conn.cursor() as cur:
        columns = ", ".join((*AUDIT_COLUMNS, "prev_hash", "row_hash"))
        with cur.copy(f"COPY audit.record_change ({columns}) FROM STDIN") as copy:
            for row in chained_rows(fresh, seq, prev_hash, logged_at):
                copy.write_row(row)
    return AuditAppend(len(fresh), known)


def _not_yet_audited(conn: psycopg.Connection[Any], entries: list[AuditEntry]) -> list[AuditEntry]:
    """The entries whose record is not in the trail yet (step 3)."""
    known: set[tuple[str, str]] = set()
    by_type: dict[str, list[str]] = {}
    for e in entries:
        by_type.setdefault(e.record_type, []).append(e.record_id)
    for record_type, ids in by_type.items():
        known.update(
            (record_type, rid)
            for (rid,) in conn.execute(
                "SELECT record_id FROM audit.record_change"
                " WHERE record_type = %s AND record_id = ANY(%s)",
                (record_type, ids),
            )
        )
    return [e for e in entries if (e.record_type, e.record_id) not in known]


def verify_chain(conn: psycopg.Connection[Any], *, all_problems: bool = False) -> ChainReport:
    """Recompute the chain in `seq` order; `broken` is the first link that fails.

    With `all_problems`, keep going and list every failing row (each judged against the stored
    hash of the row before it, so one tampered row is reported once).
    """
    report = ChainReport()
    expected_seq, prev_hash = 1, GENESIS_HASH
    columns = ", ".join((*AUDIT_COLUMNS, "prev_hash", "row_hash"))
    with conn.transaction(), conn.cursor(name="audit_verify") as cur:
        cur.itersize = 5000
        cur.execute(f"SELECT {columns} FROM audit.record_change ORDER BY seq")
        for values in cur:
            row = dict(zip((*AUDIT_COLUMNS, "prev_hash", "row_hash"), values, strict=True))
            problem = None
            if row["seq"] != expected_seq:
                problem = f"seq {row['seq']} follows {expected_seq - 1}: rows are missing"
            elif row["prev_hash"] != prev_hash:
                problem = "prev_hash is not the previous row's row_hash"
            elif link_hash(row["prev_hash"], row) != row["row_hash"]:
                problem = "content does not match row_hash: changed after it was written"
            if problem is not None:
                link = BrokenLink(row["seq"], row["record_type"], row["record_id"], problem)
                report.problems.append(link)
                if report.broken is None:
                    report.broken = link
                if not all_problems:
                    break
            report.rows += 1
            report.head_seq, report.head_hash = row["seq"], row["row_hash"]
            expected_seq, prev_hash = row["seq"] + 1, row["row_hash"]
    return report
