"""Dead letters: a record that could not be processed, kept whole with the reason and its origin.

The id derives from the source coordinates and stage, so reprocessing the same bad record after a
crash produces the same dead letter (the sink stores it once), and `dlq replay` can point back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict

from qmsflow.errors import ContractError
from qmsflow.quality.event import Coordinates

#: namespace of dead-letter ids (uuid5); fixed forever so ids stay stable across versions
DEAD_LETTER_NAMESPACE = uuid.UUID("5f3b1c2e-8c1d-4d0f-9a57-3c1de0a7d001")


class DeadLetter(TypedDict):
    """The `quality.dlq.v1` record."""

    dead_letter_id: str
    reason_code: str
    reason: str
    stage: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[dict[str, Any]]
    original_timestamp: int | None
    failed_at: datetime
    schema_id: int | None


def dead_letter_id(coordinates: Coordinates, stage: str) -> str:
    """Deterministic id of the dead letter for one record at one stage."""
    name = f"{coordinates.topic}/{coordinates.partition}/{coordinates.offset}/{stage}"
    return str(uuid.uuid5(DEAD_LETTER_NAMESPACE, name))


def dead_letter(
    error: Exception,
    *,
    stage: str,
    coordinates: Coordinates,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    timestamp_ms: int | None,
    failed_at: datetime,
    schema_id: int | None = None,
) -> DeadLetter:
    """Build the dead letter for a failed record; the original bytes are kept untouched."""
    reason_code = error.reason_code if isinstance(error, ContractError) else "unexpected"
    reason = str(error) or type(error).__name__
    where = f"{coordinates.topic}[{coordinates.partition}]@{coordinates.offset}"
    return {
        "dead_letter_id": dead_letter_id(coordinates, stage),
        "reason_code": reason_code,
        "reason": f"{reason} (at {where})",
        "stage": stage,
        "topic": coordinates.topic,
        "partition": coordinates.partition,
        "offset": coordinates.offset,
        "key": key,
        "value": value,
        "headers": [{"key": k, "value": v} for k, v in headers],
        "original_timestamp": timestamp_ms,
        "failed_at": failed_at,
        "schema_id": schema_id,
    }
