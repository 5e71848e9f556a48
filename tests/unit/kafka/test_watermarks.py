"""Watermark queries wait out unsettled leadership (a fresh topic, an election), not fail."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import qmsflow.kafka.admin as admin


class FakeWatermarkConsumer:
    """Answers `get_watermark_offsets` with the queued errors first, then (0, 42)."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(self, partition: Any, timeout: float) -> tuple[int, int]:
        """Raise the next queued error, or answer."""
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 0, 42


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin.time, "sleep", lambda _seconds: None)


def test_not_leader_yet_is_retried_until_the_leader_answers() -> None:
    """Two NOT_LEADER answers, then the watermarks."""
    consumer = FakeWatermarkConsumer(
        KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE
    )
    assert admin._watermarks(consumer, TopicPartition("t", 0)) == (0, 42)  # type: ignore[arg-type]
    assert consumer.calls == 3


def test_a_permanent_error_is_raised_at_once() -> None:
    """An authorization failure is not waited out."""
    consumer = FakeWatermarkConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        admin._watermarks(consumer, TopicPartition("t", 0))  # type: ignore[arg-type]
    assert consumer.calls == 1
