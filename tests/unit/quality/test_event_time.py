"""Event-time watermarks never run ahead of the wall clock by more than the allowed skew."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from qmsflow.quality.dedup import SeenEvent, forgotten
from qmsflow.quality.escalation import escalate, load_escalation_rules, track
from qmsflow.quality.event_time import advance, ceiling, ceiling_us, clamp
from qmsflow.settings import Settings
from tests.unit.quality.test_escalation import capa

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SKEW = Settings.model_fields["max_clock_skew"].default
YEAR_3000 = datetime(3000, 1, 1, tzinfo=UTC)
RULES = load_escalation_rules()


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


class TestAdvance:
    def test_keeps_the_newest_event_time_within_the_ceiling(self) -> None:
        """An ordinary event moves the watermark forward, an older one leaves it."""
        limit = ceiling(NOW, SKEW)
        assert advance(None, NOW - timedelta(hours=1), limit) == NOW - timedelta(hours=1)
        assert advance(NOW, NOW - timedelta(hours=1), limit) == NOW
        assert advance(NOW, NOW + timedelta(minutes=5), limit) == NOW + timedelta(minutes=5)

    def test_a_future_event_time_stops_at_the_ceiling(self) -> None:
        """Year 3000 is valid Avro; the watermark goes no further than now + skew."""
        assert advance(NOW, YEAR_3000, ceiling(NOW, SKEW)) == NOW + SKEW
        assert advance(None, YEAR_3000, ceiling(NOW, SKEW)) == NOW + SKEW

    def test_a_poisoned_watermark_comes_back_down(self) -> None:
        """A value persisted by an older version heals: read back clamped, advanced clamped."""
        limit = ceiling(NOW, SKEW)
        assert clamp(YEAR_3000, limit) == NOW + SKEW
        assert advance(YEAR_3000, NOW, limit) == NOW + SKEW
        assert clamp(NOW, limit) == NOW

    def test_microsecond_watermarks_follow_the_same_rule(self) -> None:
        """Dedup keeps its watermark as microseconds since the epoch."""
        limit = ceiling_us(NOW, SKEW)
        assert limit == _us(NOW + SKEW)
        assert advance(_us(NOW), _us(YEAR_3000), limit) == limit
        assert clamp(_us(YEAR_3000), limit) == limit


class TestYear3000:
    def test_does_not_escalate_a_capa_due_next_week(self) -> None:
        """One record from year 3000 on the partition: the CAPA due next week stays quiet."""
        state = track(None, capa(due=(NOW + timedelta(days=7)).date(), at=NOW))
        limit = ceiling(NOW, SKEW)
        watermark = advance(None, NOW, limit)
        watermark = advance(watermark, YEAR_3000, limit)
        _, emitted = escalate(state, watermark, RULES)
        assert emitted == []

    def test_unclamped_it_would_have(self) -> None:
        """The failure the clamp prevents: every level at once."""
        state = track(None, capa(due=(NOW + timedelta(days=7)).date(), at=NOW))
        _, emitted = escalate(state, YEAR_3000, RULES)
        assert [e.level for e in emitted] == [rung.level for rung in RULES.levels]

    def test_does_not_make_dedup_forget_an_id_recorded_an_hour_ago(self) -> None:
        """The dedup watermark stays near now: a mark from an hour ago is still remembered."""
        retention_us = _us(datetime(1970, 1, 8, tzinfo=UTC))  # seven days
        seen = SeenEvent("fingerprint", _us(NOW - timedelta(hours=1)), 0)
        limit = ceiling_us(NOW, SKEW)
        watermark = advance(seen.recorded_at_us, _us(YEAR_3000), limit)
        assert not forgotten(seen, watermark, retention_us)
        assert forgotten(seen, _us(YEAR_3000), retention_us)  # what the clamp prevents

    def test_read_back_from_a_table_it_is_clamped(self) -> None:
        """A year-3000 watermark persisted earlier no longer escalates after a restart."""
        state = track(None, capa(due=date(2026, 12, 14), at=NOW))
        _, emitted = escalate(state, clamp(YEAR_3000, ceiling(NOW, SKEW)), RULES)
        assert emitted == []
