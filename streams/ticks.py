"""Ticks: each worker sends one tick to each partition of `quality.ticks.v1` it owns.

A worker owns the same partition numbers of every co-partitioned topic, so its ticks reach its
own agents, no leader election is needed, and after a rebalance the new owner ticks.
"""

from __future__ import annotations

from datetime import UTC, datetime

import faust

from qmsflow.contracts import AvroCodec
from qmsflow.settings import Settings
from streams.quality import TICK_SUBJECT


def register_ticks(app: faust.App, settings: Settings, codec: AvroCodec) -> None:
    """Declare the timer that ticks the worker's own partitions every `tick_interval` seconds."""
    ticks_topic = settings.topic("quality.ticks.v1")
    ticks = app.topic(ticks_topic, key_serializer="raw", value_serializer="raw")

    @app.timer(interval=settings.tick_interval)
    async def send_ticks() -> None:
        now = datetime.now(UTC)
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == ticks_topic)
        for partition in owned:
            value = codec.encode(TICK_SUBJECT, {"partition": partition, "emitted_at": now})
            await ticks.send(value=value, partition=partition)
