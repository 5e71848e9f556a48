"""Which features may be toggled, and the board that keeps their state."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from qmsflow.toggles import CORE, TOGGLEABLE, FeatureToggle, ToggleBoard, ToggleRefusedError, switch

AT = datetime(2026, 1, 1, tzinfo=UTC)


class TestSwitch:
    @pytest.mark.parametrize("feature", sorted(CORE))
    def test_core_processing_is_refused(self, feature: str) -> None:
        """Ingest, dedup, integrity, quarantine and the sink cannot be switched off."""
        with pytest.raises(ToggleRefusedError, match="core quality processing"):
            switch(feature, False, changed_by="sre", reason="maintenance")

    def test_unknown_features_are_refused(self) -> None:
        """Only declared features can be switched."""
        with pytest.raises(ToggleRefusedError, match="unknown feature"):
            switch("everything", False, changed_by="sre", reason="x")

    def test_a_reason_is_required(self) -> None:
        """The audit trail says why."""
        with pytest.raises(ToggleRefusedError, match="reason"):
            switch("erp-outbound", False, changed_by="sre", reason=" ")

    def test_core_and_toggleable_do_not_overlap(self) -> None:
        """No feature is both."""
        assert not set(CORE) & set(TOGGLEABLE)


class TestBoard:
    def test_features_are_on_until_switched(self) -> None:
        """A feature never switched runs."""
        assert ToggleBoard().enabled("erp-outbound")

    def test_the_latest_switch_wins_and_a_tombstone_restores_the_default(self) -> None:
        """Off, then on, then off; a tombstone turns it back on."""
        board = ToggleBoard()
        for enabled in (False, True, False):
            board.apply(switch("erp-outbound", enabled, changed_by="sre", reason="r", now=AT))
        assert not board.enabled("erp-outbound")
        board.forget("erp-outbound")
        assert board.enabled("erp-outbound")

    def test_a_record_for_core_processing_switches_nothing(self) -> None:
        """A hand-written record on the topic cannot turn dedup off."""
        board = ToggleBoard()
        board.apply(FeatureToggle("dedup", False, "x", "x", AT))
        assert "dedup" not in board.snapshot()
        with pytest.raises(ToggleRefusedError):
            board.enabled("dedup")

    def test_records_round_trip(self) -> None:
        """The Avro record reads back as the same switch."""
        toggle = switch("correlation-alerts", False, changed_by="sre", reason="noisy", now=AT)
        assert FeatureToggle.from_record(toggle.record()) == toggle
