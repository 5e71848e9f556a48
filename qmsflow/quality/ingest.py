"""The ingest stage: raw ingest bytes → a canonical event, a duplicate, or a dead letter.

Fuses normalise and dedup (DESIGN §3 stages 1–2): both are keyed by the ingest record, so running
them in one pass saves a topic hop, i.e. one Avro decode and one encode per event. Engine-free: the
Faust agent supplies the dedup table lookup and performs what the outcome says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from qmsflow.contracts import AvroCodec
from qmsflow.errors import ContractError, IdempotencyConflict
from qmsflow.quality.data_dictionary import DataDictionary
from qmsflow.quality.dead_letter import DEFAULT_MAX_BYTES, DeadLetter, dead_letter
from qmsflow.quality.dedup import SeenEvent, fingerprint, judge
from qmsflow.quality.event import Coordinates, QualityEvent
from qmsflow.quality.limits import RecordLimits
from qmsflow.quality.normalise import normalise
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog

#: the event-time window when no settings are given (tests, tools): the settings' defaults
_EARLIEST_EVENT_TIME: datetime = Settings.model_fields["earliest_event_time"].default
_MAX_CLOCK_SKEW: timedelta = Settings.model_fields["max_clock_skew"].default

CANONICAL_SUBJECT = "quality.events.v1-value"
DEAD_LETTER_SUBJECT = "quality.dlq.v1-value"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A consumed Kafka record, as the transport hands it over."""

    topic: str  # the physical topic name, environment prefix included
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    timestamp_ms: int | None

    @property
    def coordinates(self) -> Coordinates:
        """Topic, partition and offset of this record."""
        return Coordinates(self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class Emit:
    """A first-seen event: publish it, then remember it."""

    event: QualityEvent
    seen: SeenEvent
    kind: Literal["emit"] = "emit"


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A resend of an event already published: drop it and count it."""

    event_id: str
    kind: Literal["duplicate"] = "duplicate"


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A record that cannot be processed: publish the dead letter, never drop it silently."""

    letter: DeadLetter
    kind: Literal["dead_letter"] = "dead_letter"


Outcome = Emit | Duplicate | DeadLettered


class IngestStage:
    """Decode, normalise and judge one ingest record against what dedup remembers."""

    def __init__(
        self,
        codec: AvroCodec,
        catalog: TopicCatalog,
        dictionary: DataDictionary,
        *,
        topic_prefix: str = "",
        earliest_event_time: datetime = _EARLIEST_EVENT_TIME,
        max_clock_skew: timedelta = _MAX_CLOCK_SKEW,
        dead_letter_max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._codec = codec
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._dictionary = dictionary
        self._limits = RecordLimits(
            dictionary.limits,
            earliest_event_time=earliest_event_time,
            max_clock_skew=max_clock_skew,
        )
        #: physical topic → (event type it carries, its value subject)
        self._contracts = {
            f"{topic_prefix}{t.name}": (t.event_type or "", t.subject)
            for t in catalog.by_role("ingest")
        }

    def decode(self, message: RawMessage) -> QualityEvent | DeadLettered:
        """Decode and normalise, or explain why not."""
        schema_id: int | None = None
        try:
            contract = self._contracts.get(message.topic)
            if contract is None:
                raise ContractError(f"topic {message.topic!r} is not a declared ingest topic")
            event_type, subject = contract
            if message.value is None:
                raise ContractError("value: expected an Avro record, got a tombstone (null)")
            decoded = self._codec.decode(message.value, subject)
            schema_id = decoded.schema.schema_id
            now = datetime.now(UTC)
            self._limits.check(decoded.record, now)
            return normalise(
                decoded.record,
                expected_event_type=event_type,
                key=message.key,
                coordinates=message.coordinates,
                schema_id=decoded.schema.schema_id,
                subject=decoded.schema.subject,
                schema_version=decoded.schema.version,
                dictionary=self._dictionary,
                ingested_at=now,
            )
        except ContractError as error:
            return self.reject(message, error, stage="normalise", schema_id=schema_id)
        except Exception as error:
            return self.reject(message, error, stage="normalise", schema_id=schema_id)

    def judge(self, event: QualityEvent, message: RawMessage, seen: SeenEvent | None) -> Outcome:
        """Decide what to do with a normalised event given the dedup table's memory of it."""
        digest = fingerprint(event)
        verdict = judge(seen, digest)
        if verdict == "duplicate":
            return Duplicate(event["event_id"])
        if verdict == "conflict":
            error = IdempotencyConflict(
                f"event_id {event['event_id']} was already accepted with different content; "
                "an idempotency key must not be reused (send a new event_id for a correction)"
            )
            return self.reject(
                message, error, stage="dedup", schema_id=event["lineage"]["schema_id"]
            )
        recorded_us = int(event["recorded_at"].timestamp() * 1_000_000)
        return Emit(event, SeenEvent(digest, recorded_us, message.partition))

    def reject(
        self, message: RawMessage, error: Exception, *, stage: str, schema_id: int | None = None
    ) -> DeadLettered:
        """The dead letter for a message that failed at a stage."""
        return DeadLettered(
            dead_letter(
                error,
                stage=stage,
                coordinates=message.coordinates,
                key=message.key,
                value=message.value,
                headers=message.headers,
                timestamp_ms=message.timestamp_ms,
                failed_at=datetime.now(UTC),
                schema_id=schema_id,
                max_bytes=self._dead_letter_max_bytes,
            )
        )
