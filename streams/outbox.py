"""Outputs of one input record, published together and acknowledged before state changes.

Every agent follows the same order: compute outputs (pure), `deliver()` them and wait for the
broker's acknowledgement of each, and only then write its tables. A crash in between replays the
input and republishes the same outputs (their ids are deterministic), which consumers absorb;
the opposite order could remember state for outputs that were never sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import faust

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec

#: content-type header of every record qmsflow publishes (Confluent-framed Avro)
CONTENT_TYPE = b"application/vnd.confluent.avro"


class Outbox:
    """Records to publish for one input, sent as a batch and awaited together."""

    def __init__(
        self,
        codec: AvroCodec,
        *,
        stage: str = "stream",
        topic_prefix: str = "",
        topics: Mapping[str, faust.TopicT] | None = None,
    ) -> None:
        self._codec = codec
        #: logical topic name → Faust topic, for outputs addressed by name (processors)
        self._topics = dict(topics or {})
        self._stage = stage
        self._prefix = topic_prefix
        #: the input's event type, for the `qmsflow_events_out_total` label (set once decoded)
        self.event_type: str | None = None
        self._pending: list[tuple[faust.TopicT, bytes | None, bytes, list[tuple[str, bytes]]]] = []

    def add(
        self,
        topic: faust.TopicT | str,
        subject: str,
        key: str | bytes | None,
        record: dict[str, Any],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Encode a record for `topic` under `subject` (raises EncodeError naming the field)."""
        self.add_encoded(topic, key, self._codec.encode(subject, record), headers)

    def add_encoded(
        self,
        topic: faust.TopicT | str,
        key: str | bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue an already encoded value (e.g. an input passed on under a new key)."""
        topic = self.resolve(topic)
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        self._pending.append((topic, raw_key, value, [*headers, ("content-type", CONTENT_TYPE)]))

    def resolve(self, topic: faust.TopicT | str) -> faust.TopicT:
        """The Faust topic of a logical topic name (or the topic itself)."""
        return self._topics[topic] if isinstance(topic, str) else topic

    def __len__(self) -> int:
        return len(self._pending)

    async def deliver(self) -> None:
        """Send everything queued and wait until the broker has acknowledged all of it."""
        if not self._pending:
            return
        futures = [
            await topic.send(key=key, value=value, headers=headers)
            for topic, key, value, headers in self._pending
        ]
        names = [topic.get_topic_name() for topic, _, _, _ in self._pending]
        self._pending.clear()
        await asyncio.gather(*futures)
        for name in names:
            logical = name.removeprefix(self._prefix)
            telemetry.record_event("out", self._stage, logical, self.event_type)
