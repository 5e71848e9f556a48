"""Producer settings every qmsflow producer uses: idempotent, acks=all, Java's partitioner."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from qmsflow.kafka.security import librdkafka_security
from qmsflow.settings import Settings


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Librdkafka settings for a producer that agrees with Java clients on partitions."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,  # retries never duplicate or reorder within a partition
        "acks": "all",
        "partitioner": "murmur2_random",  # Java's rule; librdkafka's default is CRC32
        "linger.ms": 5,
        "compression.type": "lz4",
        **librdkafka_security(settings),
        **overrides,
    }


def create_producer(settings: Settings, **overrides: Any) -> Producer:
    """An idempotent producer for the configured cluster."""
    return Producer(producer_config(settings, **overrides))
