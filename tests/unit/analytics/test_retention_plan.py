"""Retention rules: validated at load, planned purely, audit never pruned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from qmsflow.errors import ConfigurationError
from qmsflow.retention import load_policies, parse_policies, plan_retention

NOW = datetime(2026, 3, 2, tzinfo=UTC)


class TestRetentionPlan:
    def test_shipped_policies_archive_every_regulated_type(self) -> None:
        """Quality events, holds, escalations and signature checks are archived before delete."""
        archived = {p.record_type for p in load_policies() if p.archive}
        assert {"quality_event", "quarantine_command", "escalation", "signature_check"} <= archived

    def test_cutoff_is_now_minus_days(self) -> None:
        """Each step's cutoff is its policy's days before now, with its action."""
        policies = parse_policies(
            {
                "a": {
                    "table": "qms.quality_event",
                    "age_from": "occurred_at",
                    "days": 10,
                    "archive": True,
                },
                "b": {
                    "table": "qms.parked_event",
                    "age_from": "parked_at",
                    "days": 1,
                    "archive": False,
                },
            }
        )
        steps = plan_retention(policies, NOW)
        assert [(s.policy.record_type, s.cutoff, s.action) for s in steps] == [
            ("a", NOW - timedelta(days=10), "archive+delete"),
            ("b", NOW - timedelta(days=1), "delete"),
        ]
        assert steps[0].policy.archive_table == "archive.quality_event"

    @pytest.mark.parametrize("table", ["audit.record_change", "archive.quality_event"])
    def test_audit_and_archive_are_never_pruned(self, table: str) -> None:
        """A policy naming the audit trail or the archive is refused at load."""
        with pytest.raises(ConfigurationError, match="never pruned"):
            parse_policies(
                {"x": {"table": table, "age_from": "logged_at", "days": 1, "archive": False}}
            )

    @pytest.mark.parametrize(
        "entry",
        [
            {"table": "qms.x", "age_from": "t", "days": 0, "archive": False},
            {"table": "qms.x; drop", "age_from": "t", "days": 1, "archive": False},
            {"table": "qms.x", "age_from": "t or true", "days": 1, "archive": False},
            {"table": "qms.x", "age_from": "t", "days": 1, "archive": False, "extra": 1},
        ],
    )
    def test_invalid_entries_are_refused_with_their_name(self, entry: dict[str, object]) -> None:
        """Days below 1, non-identifiers and unknown keys are configuration errors."""
        with pytest.raises(ConfigurationError, match=r"\[bad\]"):
            parse_policies({"bad": entry})

    def test_naive_now_is_refused(self) -> None:
        """The plan needs an aware instant."""
        with pytest.raises(ValueError, match="aware"):
            plan_retention(load_policies(), datetime(2026, 3, 2))
