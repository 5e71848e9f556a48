"""Feature toggles: which non-critical integrations may be switched off, and their live state.

The switches live on `ops.toggles.v1` (compacted, keyed by feature name, one partition): the
latest record of a feature is its state, a feature never switched is on. Every process that owns
a toggleable integration runs a `ToggleReader`, which follows the topic from its start, so a
`qmsflow toggles set` reaches running workers within a poll interval and survives restarts.

Only the features in `TOGGLEABLE` can be switched. Core quality processing (ingest, dedup,
integrity checks, quarantine decisions, the sink) is listed in `CORE` and refused with a reason:
switching it off would silently drop or misjudge quality events, which no runtime flag may do.
A switched-off integration holds its input (it does not skip it): when switched on again it
resumes where it stopped, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qmsflow.errors import ConfigurationError

__all__ = [
    "CORE",
    "TOGGLEABLE",
    "TOGGLES_TOPIC",
    "FeatureToggle",
    "ToggleBoard",
    "ToggleReader",
    "ToggleRefusedError",
    "publish_toggle",
    "read_toggles",
    "switch",
]

log = logging.getLogger(__name__)

TOGGLES_TOPIC = "ops.toggles.v1"
TOGGLES_SUBJECT = f"{TOGGLES_TOPIC}-value"

#: the integrations an operator may switch off, and what switching off does
TOGGLEABLE: Mapping[str, str] = {
    "erp-outbound": "the ERP adapter's HTTP calls; commands wait on their topic until switched on",
    "correlation-alerts": "publishing correlation alerts (quality.alerts.v1); incidents go on",
}

#: core quality processing: refused, with the reason an operator reads
CORE: Mapping[str, str] = {
    "ingest": "every quality event must be normalised or dead-lettered",
    "dedup": "switching dedup off would let resends through as new events",
    "integrity": "integrity checks decide whether an event may be trusted",
    "quarantine": "quarantine decisions hold nonconforming lots; they must never be skipped",
    "sink": "the sink is the system of record for analysts and audits",
}

#: seconds a reader waits in one poll: a switch reaches a running worker within about this
_POLL_SECONDS = 1.0
#: seconds `read_toggles` waits for the broker before it gives up
_READ_TIMEOUT = 30.0


class ToggleRefusedError(ConfigurationError):
    """A toggle that is not allowed: core processing, or a feature nobody declared."""


@dataclass(frozen=True)
class FeatureToggle:
    """One switch: a feature on or off, who switched it, why and when."""

    feature: str
    enabled: bool
    changed_by: str
    reason: str
    changed_at: datetime

    def record(self) -> dict[str, Any]:
        """The Avro record of `ops.toggles.v1-value`."""
        return {
            "feature": self.feature,
            "enabled": self.enabled,
            "changed_by": self.changed_by,
            "reason": self.reason,
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> FeatureToggle:
        """Read a decoded `ops.toggles.v1-value` record."""
        return cls(
            feature=record["feature"],
            enabled=bool(record["enabled"]),
            changed_by=record["changed_by"],
            reason=record["reason"],
            changed_at=record["changed_at"],
        )


def switch(
    feature: str, enabled: bool, *, changed_by: str, reason: str, now: datetime | None = None
) -> FeatureToggle:
    """A validated switch; raises ToggleRefusedError for core processing or unknown features."""
    if feature in CORE:
        raise ToggleRefusedError(
            f"{feature!r} is core quality processing and cannot be toggled: {CORE[feature]}"
        )
    if feature not in TOGGLEABLE:
        raise ToggleRefusedError(
            f"unknown feature {feature!r}; toggleable features are {sorted(TOGGLEABLE)}"
        )
    if not reason.strip():
        raise ToggleRefusedError(f"switching {feature!r} needs a reason for the audit trail")
    return FeatureToggle(feature, enabled, changed_by, reason, now or datetime.now(UTC))


class ToggleBoard:
    """The latest switch of every feature; a feature never switched is on. Thread-safe."""

    def __init__(self) -> None:
        self._latest: dict[str, FeatureToggle] = {}
        self._lock = threading.Lock()

    def apply(self, toggle: FeatureToggle) -> None:
        """Take a switch read from the topic (a later record of a feature replaces it)."""
        if toggle.feature not in TOGGLEABLE:
            # a record for core processing or an unknown feature never switches anything off
            log.warning("ignoring toggle for non-toggleable feature %r", toggle.feature)
            return
        with self._lock:
            self._latest[toggle.feature] = toggle

    def forget(self, feature: str) -> None:
        """A tombstone: the feature is back to its default (on)."""
        with self._lock:
            self._latest.pop(feature, None)

    def enabled(self, feature: str) -> bool:
        """Whether the feature runs now."""
        if feature not in TOGGLEABLE:
            raise ToggleRefusedError(f"{feature!r} is not a toggleable feature")
        with self._lock:
            latest = self._latest.get(feature)
        return True if latest is None else latest.enabled

    def snapshot(self) -> dict[str, FeatureToggle | None]:
        """Every toggleable feature with its latest switch (None: never switched)."""
        with self._lock:
            return {feature: self._latest.get(feature) for feature in TOGGLEABLE}


# ---- Kafka edges ------------------------------------------------------------------------------
def _codec(settings: Any) -> Any:
    from qmsflow.contracts import AvroCodec, open_registry

    return AvroCodec(open_registry(settings))


def _consumer(settings: Any) -> Any:
    from confluent_kafka import Consumer

    from qmsflow.kafka.security import librdkafka_security

    return Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            # never joins or commits: each reader assigns itself every partition from the start
            "group.id": f"{settings.topic_prefix}qmsflow-toggles",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **librdkafka_security(settings),
        }
    )


def _apply_message(board: ToggleBoard, codec: Any, message: Any) -> None:
    key = message.key()
    value = message.value()
    if value is None:
        if key is not None:
            board.forget(key.decode("utf-8", errors="replace"))
        return
    try:
        board.apply(FeatureToggle.from_record(codec.decode(value, TOGGLES_SUBJECT).record))
    except Exception:  # a bad toggle record must never stop a worker; it switches nothing
        log.exception("unreadable toggle at offset %s", message.offset())


def _assign_from_start(settings: Any, consumer: Any) -> int:
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    topic = settings.topic(TOGGLES_TOPIC)
    metadata = consumer.list_topics(topic, timeout=_READ_TIMEOUT).topics.get(topic)
    partitions = sorted(metadata.partitions) if metadata and metadata.partitions else [0]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    return len(partitions)


def read_toggles(settings: Any) -> ToggleBoard:
    """Read `ops.toggles.v1` to its end once and return the state it describes."""
    from confluent_kafka import KafkaError

    board = ToggleBoard()
    codec = _codec(settings)
    consumer = _consumer(settings)
    try:
        remaining = _assign_from_start(settings, consumer)
        deadline = datetime.now(UTC).timestamp() + _READ_TIMEOUT
        while remaining and datetime.now(UTC).timestamp() < deadline:
            message = consumer.poll(_POLL_SECONDS)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    remaining -= 1
                continue
            _apply_message(board, codec, message)
    finally:
        consumer.close()
    return board


def publish_toggle(settings: Any, toggle: FeatureToggle) -> None:
    """Publish a switch keyed by feature name and wait for the broker's acknowledgement."""
    from qmsflow.kafka.producer import create_producer

    producer = create_producer(settings)
    producer.produce(
        settings.topic(TOGGLES_TOPIC),
        key=toggle.feature.encode("utf-8"),
        value=_codec(settings).encode(TOGGLES_SUBJECT, toggle.record()),
    )
    if producer.flush(_READ_TIMEOUT):
        raise ConfigurationError(f"toggle {toggle.feature!r} not acknowledged by the broker")


class ToggleReader:
    """A daemon thread following `ops.toggles.v1` into a `ToggleBoard`, for running workers."""

    def __init__(
        self, settings: Any, *, consumer_factory: Callable[[Any], Any] = _consumer
    ) -> None:
        self.board = ToggleBoard()
        self._settings = settings
        self._consumer_factory = consumer_factory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="toggle-reader", daemon=True)

    def enabled(self, feature: str) -> bool:
        """Whether the feature runs now (on until a switch says otherwise)."""
        return self.board.enabled(feature)

    def start(self) -> ToggleReader:
        """Start following the topic; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following; waits for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(_READ_TIMEOUT)

    def _run(self) -> None:
        try:
            codec = _codec(self._settings)
            consumer = self._consumer_factory(self._settings)
            _assign_from_start(self._settings, consumer)
        except Exception:  # no toggles readable: every feature stays on, as if never switched
            log.exception("toggle reader could not start; every feature stays on")
            return
        try:
            while not self._stop.is_set():
                message = consumer.poll(_POLL_SECONDS)
                if message is None or message.error():
                    continue
                _apply_message(self.board, codec, message)
        finally:
            consumer.close()
