"""Reconciliation's checksum and id rules."""

from __future__ import annotations

from connectors.postgres_sink.rows import BINDINGS
from qmsflow.reconcile import id_checksum, reconcilable, row_id


class TestChecksum:
    def test_order_independent_and_sensitive_to_each_id(self) -> None:
        """Any order gives the same sum; dropping one id changes it."""
        ids = [f"id-{n}" for n in range(100)]
        assert id_checksum(ids) == id_checksum(reversed(ids))
        assert id_checksum(ids) != id_checksum(ids[1:])
        assert 0 <= id_checksum(ids) < 2**64

    def test_only_insert_only_single_table_topics_are_compared(self) -> None:
        """Upserted tables and multi-table topics are left out; quality events are in."""
        topics = {b.topic for b in reconcilable()}
        assert "quality.events.v1" in topics
        assert "quality.incidents.v1" not in topics
        assert not any(t.startswith("md.") and t != "md.conflicts.v1" for t in topics)

    def test_row_id_joins_key_columns(self) -> None:
        """A composite key is its columns' text joined by |."""
        (parked,) = [b for b in BINDINGS if b.topic == "quality.parked.v1"]
        write = parked.writes[0]
        row = tuple(f"v{n}" for n in range(len(write.columns)))
        assert row_id(write, row) == "v0|v1"
