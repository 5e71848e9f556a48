"""Demo traffic: realistic, deterministic ingest records and malformed values, no Kafka."""

from qmsflow.demo.traffic import (
    PLANT,
    TOPIC_EVENT_TYPES,
    TOPIC_SOURCE_SYSTEMS,
    DemoRecord,
    DemoTraffic,
    Plant,
    corrupt_payloads,
    with_duplicates,
)

__all__ = [
    "PLANT",
    "TOPIC_EVENT_TYPES",
    "TOPIC_SOURCE_SYSTEMS",
    "DemoRecord",
    "DemoTraffic",
    "Plant",
    "corrupt_payloads",
    "with_duplicates",
]
