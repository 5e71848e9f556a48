"""The audit trail's pure core: canonical rows, chained hashes and which records are audited."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.postgres_sink.rows import (
    ESCALATION_COLUMNS,
    QUALITY_EVENT_COLUMNS,
    QUARANTINE_COMMAND_COLUMNS,
    SIGNATURE_CHECK_COLUMNS,
    escalation_row,
    quality_event_row,
    quarantine_command_row,
    signature_check_row,
)
from qmsflow.audit import (
    AUDIT_COLUMNS,
    AUDITED_TABLES,
    GENESIS_HASH,
    audit_entries,
    canonical_json,
    chained_rows,
    link_hash,
)
from qmsflow.quality.event import Coordinates
from tests.unit.connectors import stage_records as records

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def event_row(event_id: str, offset: int, **changes: object) -> tuple[object, ...]:
    event = {**records.quality_event(event_id), **changes}
    return quality_event_row(event, Coordinates("quality.events.v1", 0, offset))


def chained_row(seq: int = 1) -> dict[str, object]:
    (entry,) = audit_entries({"qms.quality_event": (QUALITY_EVENT_COLUMNS, [event_row("e1", 5)])})
    return {**asdict(entry), "seq": seq, "logged_at": T0}


class TestCanonicalRow:
    def test_same_instant_same_text_in_any_time_zone(self) -> None:
        """A timestamp read back in another session time zone canonicalises identically."""
        row = chained_row()
        shifted = {**row, "logged_at": T0.astimezone(timezone(timedelta(hours=-5)))}
        assert canonical_json(row) == canonical_json(shifted)

    def test_hash_is_sha256_of_previous_hash_and_canonical_row(self) -> None:
        """row_hash = sha256(prev_hash ‖ canonical_json(row))."""
        row = chained_row()
        expected = hashlib.sha256((GENESIS_HASH + canonical_json(row)).encode()).hexdigest()
        assert link_hash(GENESIS_HASH, row) == expected

    def test_any_changed_field_changes_the_hash(self) -> None:
        """Changing the reason, or the previous hash, gives another hash."""
        row = chained_row()
        assert link_hash(GENESIS_HASH, row) != link_hash(GENESIS_HASH, {**row, "reason": "x"})
        assert link_hash(GENESIS_HASH, row) != link_hash("f" * 64, row)

    def test_known_good_hashes(self) -> None:
        """Hashes computed by the json.dumps canonical form that wrote the chain's first rows.

        A change of canonical form (a library, an option, a value's spelling) would make every
        stored row fail verification: this pins it.
        """
        row = chained_row()
        first = link_hash(GENESIS_HASH, row)
        assert first == "ceef67cdfdeecd6343d7463a2ae0f683057883c2360dad80e5085594990ac673"
        awkward = {
            **row,
            "seq": 2,
            "reason": 'Prüfung \t fehlgeschlagen \u2028 😀 "quoted" \\ \x01',
            "changes": [{"field": "status", "old_value": "Öffnen", "new_value": None}],
        }
        assert link_hash(first, awkward) == (
            "879fb5871f1204e4852f0fa425d8834d72f2e345318399c7087569583fc39172"
        )
        (entry,) = audit_entries(
            {"qms.quality_event": (QUALITY_EVENT_COLUMNS, [event_row("e1", 5)])}
        )
        assert dict(zip(AUDIT_COLUMNS, entry.values(1, T0), strict=True)) == row

    @given(st.text(), st.text(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
    def test_same_bytes_as_the_json_form(self, reason: str, value: str, offset: int) -> None:
        """Orjson writes exactly what json.dumps(sort_keys, compact, ensure_ascii=False) wrote."""
        row = {
            **chained_row(),
            "reason": reason,
            "changes": [{"field": value, "old_value": None, "new_value": reason}],
            "kafka_offset": offset,
        }
        reference = json.dumps(
            {k: _json_value(row[k]) for k in AUDIT_COLUMNS},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        assert canonical_json(row) == reference

    def test_canonical_form_is_sorted_compact_json(self) -> None:
        """Keys sorted, no spaces: one spelling per row."""
        text = canonical_json(chained_row())
        assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


class TestChainedRows:
    def test_rows_carry_the_known_good_hash(self) -> None:
        """The COPY rows hash as link_hash does: the pinned first hash, chained from genesis."""
        (entry,) = audit_entries(
            {"qms.quality_event": (QUALITY_EVENT_COLUMNS, [event_row("e1", 5)])}
        )
        ((*values, prev_hash, row_hash),) = chained_rows([entry], 0, GENESIS_HASH, T0)
        assert (values[0], prev_hash) == (1, GENESIS_HASH)
        assert row_hash == "ceef67cdfdeecd6343d7463a2ae0f683057883c2360dad80e5085594990ac673"
        assert values[AUDIT_COLUMNS.index("changes")] == "[]"  # jsonb text for the COPY

    @given(st.text(), st.text(), st.integers(min_value=0, max_value=2**63 - 1))
    def test_each_row_links_to_the_one_before(self, reason: str, field: str, seq: int) -> None:
        """Every row's hash is link_hash of its own columns after the previous row's hash."""
        audit = {
            "changed_by": "jdoe",
            "reason": reason,
            "changes": [{"field": field, "old_value": None, "new_value": reason}],
        }
        signature = {"signer_id": "a", "printed_name": "A", "signed_at": T0, "meaning": "review"}
        rows = [
            event_row("e1", 1, audit=audit),
            event_row("e2", 2, signature=signature),
            event_row("e3", 3),
        ]
        entries = audit_entries({"qms.quality_event": (QUALITY_EVENT_COLUMNS, rows)})
        prev = "f" * 64
        for entry, (*values, prev_hash, row_hash) in zip(
            entries, chained_rows(entries, seq, prev, T0), strict=True
        ):
            expected = dict(zip(AUDIT_COLUMNS, entry.values(values[0], T0), strict=True))
            assert prev_hash == prev
            assert row_hash == link_hash(prev, expected)
            prev = row_hash


def audited_rows() -> dict[str, tuple[tuple[str, ...], tuple[object, ...]]]:
    """One real row of each audited table, as the sink maps it: `table: (columns, row)`."""
    check = {
        "check_id": "7f1d3c52-2b1e-5f0a-9a57-0c3b8e6d4f21",
        "event_id": records.event_ids(1)[0],
        "event_type": "capa",
        "source_system": "QMS",
        "source_record_id": "CAPA-77",
        "product_line": "sterile-injectables",
        "signer_id": "asmith",
        "printed_name": "Alice Smith",
        "meaning": "approval",
        "signed_at": T0,
        "status": "invalid",
        "problems": ["signed after recorded_at", "unknown signer"],
        "checked_at": T0,
    }
    return {
        "qms.quality_event": (QUALITY_EVENT_COLUMNS, event_row("e1", 5)),
        "qms.escalation": (
            ESCALATION_COLUMNS,
            escalation_row(records.escalation(), Coordinates("capa.escalations.v1", 1, 2)),
        ),
        "qms.quarantine_command": (
            QUARANTINE_COMMAND_COLUMNS,
            quarantine_command_row(
                records.quarantine_command(),
                Coordinates("inventory.quarantine-commands.v1", 0, 3),
            ),
        ),
        "qms.signature_check": (
            SIGNATURE_CHECK_COLUMNS,
            signature_check_row(check, Coordinates("quality.signature-checks.v1", 2, 4)),
        ),
    }


class TestAuditedColumns:
    @pytest.mark.parametrize("table", sorted(AUDITED_TABLES))
    def test_entry_from_the_read_columns_is_the_entry_from_the_whole_row(self, table: str) -> None:
        """Handing over only the declared columns loses nothing an entry is made from."""
        columns, row = audited_rows()[table]
        (entry,) = audit_entries({table: (columns, [row])})
        assert entry == AUDITED_TABLES[table](dict(zip(columns, row, strict=True)))


class TestAuditEntries:
    def test_who_why_old_new_and_signature_come_from_the_event(self) -> None:
        """changed_by, reason, old/new values and the e-signature manifestation are kept."""
        audit = {
            "changed_by": "jdoe",
            "reason": "MRB decision",
            "changes": [{"field": "disposition", "old_value": None, "new_value": "scrap"}],
        }
        signature = {
            "signer_id": "asmith",
            "printed_name": "Alice Smith",
            "signed_at": T0,
            "meaning": "approval",
        }
        row = event_row("e1", 3, audit=audit, signature=signature)
        (entry,) = audit_entries({"qms.quality_event": (QUALITY_EVENT_COLUMNS, [row])})
        assert (entry.changed_by, entry.reason) == ("jdoe", "MRB decision")
        assert entry.changes == audit["changes"]
        assert (entry.printed_name, entry.signed_at, entry.signature_meaning) == (
            "Alice Smith",
            T0,
            "approval",
        )
        assert (entry.kafka_topic, entry.kafka_partition, entry.kafka_offset) == (
            "quality.events.v1",
            0,
            3,
        )
        assert (entry.source_topic, entry.schema_id) == ("qms.nonconformance.v1", 8)

    def test_signer_then_source_system_when_no_audit_context(self) -> None:
        """Without an audit context the signer, else the source system, is the author."""
        signed = event_row(
            "e1",
            1,
            signature={
                "signer_id": "asmith",
                "printed_name": "A",
                "signed_at": T0,
                "meaning": "review",
            },
        )
        plain = event_row("e2", 2)
        entries = audit_entries({"qms.quality_event": (QUALITY_EVENT_COLUMNS, [signed, plain])})
        assert [e.changed_by for e in entries] == ["asmith", "QMS"]

    def test_a_record_met_twice_is_audited_once_under_its_first_delivery(self) -> None:
        """A republished record keeps the lowest offset, as the insert-only table does."""
        rows = [event_row("e1", 9), event_row("e1", 4), event_row("e2", 6)]
        entries = audit_entries({"qms.quality_event": (QUALITY_EVENT_COLUMNS, rows)})
        assert [(e.record_id, e.kafka_offset) for e in entries] == [("e1", 4), ("e2", 6)]

    def test_only_regulated_tables_are_audited(self) -> None:
        """Escalations are audited as the system's own records; other tables are not."""
        at = Coordinates("capa.escalations.v1", 1, 0)
        row = escalation_row(records.escalation("QMS:CAPA-77", 2), at)
        entries = audit_entries(
            {
                "qms.escalation": (ESCALATION_COLUMNS, [row]),
                "qms.parked_event": (("event_id",), [("x",)]),
            }
        )
        assert [(e.record_type, e.changed_by) for e in entries] == [
            ("escalation", "qmsflow:escalation")
        ]

    def test_same_escalation_in_two_environments_is_audited_in_each(self) -> None:
        """Its id is alike in every environment: the record_id carries a prefixed environment."""
        record = records.escalation("QMS:CAPA-77", 2)
        rows = [
            escalation_row(record, Coordinates(f"{prefix}capa.escalations.v1", 1, 0))
            for prefix in ("", "tval.")
        ]
        entries = audit_entries({"qms.escalation": (ESCALATION_COLUMNS, rows)})
        assert sorted(e.record_id for e in entries) == [
            record["escalation_id"],
            f"tval.{record['escalation_id']}",
        ]

    @pytest.mark.parametrize("offsets", [(1, 2, 3), (3, 1, 2)])
    def test_chain_order_is_by_lineage(self, offsets: tuple[int, ...]) -> None:
        """The same rows chain in the same order whatever order they were buffered in."""
        rows = [event_row(f"e{o}", o) for o in offsets]
        entries = audit_entries({"qms.quality_event": (QUALITY_EVENT_COLUMNS, rows)})
        assert [e.kafka_offset for e in entries] == [1, 2, 3]


def _json_value(value: object) -> object:
    """The canonical spelling of a value, as the json form wrote it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value
