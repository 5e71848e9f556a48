"""Event-time watermarks that never run ahead of the wall clock by more than the allowed skew.

A watermark is the newest event time a partition has seen: escalation, dedup memory and incident
quiet periods are measured against it, so replays agree. But one record claiming year 3000 (valid
Avro) would move it there for good: every open CAPA escalates at once, dedup forgets every id, and
the persisted value keeps doing so after restarts. So every agent advances its watermarks through
`advance`, capped at `ceiling(now, max_skew)` (settings.max_clock_skew), and caps what it reads
back from its tables with `clamp`, so a value poisoned by an older version heals.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

__all__ = ["advance", "ceiling", "ceiling_us", "clamp"]

#: a watermark as a datetime (quality, correlation) or as microseconds since the epoch (dedup)
Watermark = TypeVar("Watermark", datetime, int)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def ceiling(now: datetime, max_skew: timedelta) -> datetime:
    """The latest event time a watermark may reach at wall-clock `now` (tz-aware)."""
    return now + max_skew


def ceiling_us(now: datetime, max_skew: timedelta) -> int:
    """`ceiling` in microseconds since the epoch, for watermarks kept as integers."""
    return (ceiling(now, max_skew) - _EPOCH) // _MICROSECOND


def clamp(watermark: Watermark, limit: Watermark) -> Watermark:
    """The watermark, or `limit` if it lies beyond it (a value read back from a table)."""
    return watermark if watermark <= limit else limit


def advance(watermark: Watermark | None, event_time: Watermark, limit: Watermark) -> Watermark:
    """The watermark after an event: the newer of the two, never past `limit`.

    A watermark already past `limit` (read back poisoned) comes back down to it.
    """
    newer = event_time if watermark is None or event_time > watermark else watermark
    return newer if newer <= limit else limit
