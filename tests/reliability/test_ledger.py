"""The chaos ledger's balance rules, on hand-made counts (no servers)."""

from __future__ import annotations

from qmsflow.reconcile import Ledger


def balanced() -> Ledger:
    return Ledger(
        "example",
        produced=120,
        unique=100,
        poison=5,
        rows=100,
        dead_letters=5,
        canonical_records=100,
        canonical_distinct=100,
        dlq_records=5,
        dlq_distinct=5,
    )


class TestLedger:
    def test_an_exact_account_has_no_differences(self) -> None:
        """Unique + poison = rows + dead letters, one topic record each: nothing to report."""
        account = balanced()
        assert account.differences == []
        assert "OK: balanced" in account.render()

    def test_a_lost_event_is_reported(self) -> None:
        """A row missing from Postgres breaks the balance and names the missing ids."""
        account = balanced()
        account.rows, account.canonical_records, account.canonical_distinct = 99, 99, 99
        account.missing = 1
        assert len(account.differences) == 2
        assert "1 ids missing" in account.differences[1]

    def test_a_republished_copy_is_counted_not_failed(self) -> None:
        """A copy of a record after a crash (same id) is shown; the balance still holds."""
        account = balanced()
        account.canonical_records, account.dlq_records = 103, 6
        assert account.differences == []
        assert account.republished == 4
        assert "copies republished after a crash (absorbed)" in account.render()

    def test_an_id_on_the_topic_without_its_row_is_reported(self) -> None:
        """Distinct ids on the canonical topic beyond the rows: an event did not reach Postgres."""
        account = balanced()
        account.canonical_records = account.canonical_distinct = 101
        assert account.differences == ["101 canonical event ids for 100 rows"]

    def test_parked_events_and_drift_are_reported(self) -> None:
        """Events left parked and partitions `reconcile` finds drifting both fail the ledger."""
        account = balanced()
        account.parked_open, account.drift = 2, 1
        assert account.differences == [
            "2 events still parked",
            "1 partitions drift (qmsflow reconcile)",
        ]
