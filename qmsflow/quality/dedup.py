"""Dedup: the decision whether an event was seen before, and when its memory may be forgotten.

The idempotency key is the producer's `event_id`. A resend with the same content is a duplicate
(dropped, counted); the same id with different content is a conflict (dead-lettered), because
silently keeping either version would hide a producer bug from the audit trail.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from datetime import timedelta
from typing import Any, Literal, NamedTuple

import orjson

from qmsflow.quality.event import QualityEvent

Verdict = Literal["new", "duplicate", "conflict"]


class SeenEvent(NamedTuple):
    """What the dedup table remembers of an event: enough to judge a resend, nothing more."""

    fingerprint: str
    recorded_at_us: int
    partition: int


def fingerprint(event: QualityEvent) -> str:
    """A digest of the event's content, lineage excluded (a replay has new coordinates)."""
    content = {k: v for k, v in event.items() if k != "lineage"}
    return hashlib.sha256(
        orjson.dumps(content, option=orjson.OPT_SORT_KEYS, default=_json_default)
    ).hexdigest()


def judge(seen: SeenEvent | None, event_fingerprint: str) -> Verdict:
    """New when never seen; duplicate when the content matches; conflict otherwise."""
    if seen is None:
        return "new"
    return "duplicate" if seen.fingerprint == event_fingerprint else "conflict"


class RetentionQueue:
    """Which remembered event ids have left the retention window, per partition, by event time.

    Time is event time (`recorded_at`), not the wall clock, so a replay forgets exactly what the
    original run forgot. The queue lives in memory; after a restart it is rebuilt from the table.
    """

    def __init__(self, retention: timedelta) -> None:
        self._retention_us = int(retention.total_seconds() * 1_000_000)
        self._queues: defaultdict[int, list[tuple[int, str]]] = defaultdict(list)
        self._watermarks: defaultdict[int, int] = defaultdict(int)

    def remember(self, event_id: str, seen: SeenEvent) -> None:
        """Track an id recorded in the table."""
        heapq.heappush(self._queues[seen.partition], (seen.recorded_at_us, event_id))

    def advance(self, partition: int, recorded_at_us: int) -> list[str]:
        """Move the partition's watermark to an event's time; return the ids now expired."""
        watermark = max(self._watermarks[partition], recorded_at_us)
        self._watermarks[partition] = watermark
        queue = self._queues[partition]
        horizon = watermark - self._retention_us
        expired = []
        while queue and queue[0][0] < horizon:
            expired.append(heapq.heappop(queue)[1])
        return expired

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())


def _json_default(value: Any) -> Any:
    # Decimal and date are not JSON; their str() is exact and stable, which a digest needs.
    return str(value)


def forgotten(seen: SeenEvent, watermark_us: int, retention_us: int) -> bool:
    """Whether a stored dedup mark has left the retention window of its partition's watermark."""
    return seen.recorded_at_us < watermark_us - retention_us
