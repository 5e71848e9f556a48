"""Dead letters: a record that could not be processed, kept with the reason and its origin.

The id derives from the source coordinates and stage, so reprocessing the same bad record after a
crash produces the same dead letter (the sink stores it once), and `dlq replay` can point back.

A dead letter must always be publishable and storable, or a poison record crashes its stage on
every restart. So it embeds at most `max_bytes` of the original (value plus headers; setting
`QMSFLOW_DEAD_LETTER_MAX_BYTES`):
  - an original that fits is kept whole, bytes untouched;
  - otherwise the headers are kept in order while they fit (`headers_dropped` counts the rest),
    and a value that no longer fits is cut to its first `VALUE_PREFIX_BYTES`
    (`value_truncated`); `value_length` and `value_sha256` always describe the whole original,
    so `qmsflow dlq replay` can re-read it from its source coordinates and prove it is the same.
Text fields are made storable too: no NUL (Postgres text refuses it), no lone surrogates (UTF-8
refuses them) and bounded length (a reason may quote an attacker-chosen value).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict

from qmsflow.errors import ContractError
from qmsflow.quality.event import Coordinates

#: namespace of dead-letter ids (uuid5); fixed forever so ids stay stable across versions
DEAD_LETTER_NAMESPACE = uuid.UUID("5f3b1c2e-8c1d-4d0f-9a57-3c1de0a7d001")

#: the default of Settings.dead_letter_max_bytes, for callers without settings at hand
DEFAULT_MAX_BYTES = 256 * 1024
#: what a truncated value keeps: enough to see the framing (magic byte, schema id) and the start
#: of the payload, which is what a person diagnosing a poison record looks at; not more, because
#: a burst of huge poison records must not bloat quality.dlq.v1 and qms.dead_letter, and the
#: whole original is re-read from its source topic when it is replayed
VALUE_PREFIX_BYTES = 1024
#: most characters of `reason`: a full error message, while a quoted 500,000-character field
#: cannot make the dead letter itself too large
MAX_REASON_CHARS = 4096
#: most characters of the short text fields (reason code, stage, header names)
MAX_NAME_CHARS = 256

_NUL = "\x00"
_REPLACEMENT = "\ufffd"


class DeadLetterHeader(TypedDict):
    """One Kafka header of the original record."""

    key: str
    value: bytes | None


class DeadLetter(TypedDict):
    """The `quality.dlq.v1` record (schema v2)."""

    dead_letter_id: str
    reason_code: str
    reason: str
    stage: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[DeadLetterHeader]
    original_timestamp: int | None
    failed_at: datetime
    schema_id: int | None
    value_length: int | None
    value_sha256: str | None
    value_truncated: bool
    headers_dropped: int


def dead_letter_id(coordinates: Coordinates, stage: str) -> str:
    """Deterministic id of the dead letter for one record at one stage."""
    name = f"{coordinates.topic}/{coordinates.partition}/{coordinates.offset}/{stage}"
    return str(uuid.uuid5(DEAD_LETTER_NAMESPACE, name))


def clean_text(text: str) -> str:
    """Text that Avro and Postgres both accept: NUL becomes U+FFFD, a lone surrogate `?`."""
    return text.replace(_NUL, _REPLACEMENT).encode("utf-8", "replace").decode("utf-8")


def storable_text(text: str, max_chars: int) -> str:
    """clean_text, at most `max_chars` long.

    A longer text keeps its start and says how long it was, so the reader knows it is cut.
    """
    clean = clean_text(text)
    if len(clean) <= max_chars:
        return clean
    marker = f"… [{len(clean)} characters, cut]"
    return clean[: max(max_chars - len(marker), 0)] + marker


def header_bytes(name: str, value: bytes | None) -> int:
    """What one header costs against the budget: its name's UTF-8 bytes plus its value's."""
    return len(name.encode("utf-8", "replace")) + (0 if value is None else len(value))


def _bounded_original(
    value: bytes | None, headers: Sequence[tuple[str, bytes | None]], max_bytes: int
) -> tuple[bytes | None, list[DeadLetterHeader], int, bool]:
    """The value and headers to embed, how many headers were dropped, whether the value was cut."""
    costs = [header_bytes(name, header_value) for name, header_value in headers]
    value_length = 0 if value is None else len(value)
    if value_length + sum(costs) <= max_bytes:
        kept_headers = list(headers)
    else:
        # headers first: they are small and say where the record came from; room stays reserved
        # for the value's prefix, so the value never vanishes behind a pile of headers
        budget = max_bytes - min(value_length, VALUE_PREFIX_BYTES)
        kept_headers = []
        for header, cost in zip(headers, costs, strict=True):
            if cost > budget:
                break  # keep the original order: a prefix of the headers, never a selection
            kept_headers.append(header)
            budget -= cost
    embedded: list[DeadLetterHeader] = [
        {"key": clean_text(name), "value": header_value} for name, header_value in kept_headers
    ]
    used = sum(costs[: len(kept_headers)])
    truncated = value is not None and value_length + used > max_bytes
    kept_value = value[:VALUE_PREFIX_BYTES] if truncated and value is not None else value
    return kept_value, embedded, len(headers) - len(kept_headers), truncated


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
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DeadLetter:
    """Build the dead letter for a failed record, embedding at most `max_bytes` of it.

    An original within `max_bytes` (value plus headers) is kept untouched; a larger one keeps
    its headers while they fit and the first VALUE_PREFIX_BYTES of its value (module docstring).
    The key is kept whole: it is also the dead letter's own Kafka key.
    """
    reason_code = error.reason_code if isinstance(error, ContractError) else "unexpected"
    reason = str(error) or type(error).__name__
    where = f"{coordinates.topic}[{coordinates.partition}]@{coordinates.offset}"
    suffix = f" (at {where})"
    kept_value, kept_headers, dropped, truncated = _bounded_original(value, headers, max_bytes)
    return {
        "dead_letter_id": dead_letter_id(coordinates, stage),
        "reason_code": storable_text(reason_code, MAX_NAME_CHARS),
        "reason": storable_text(reason, MAX_REASON_CHARS - len(suffix)) + suffix,
        "stage": storable_text(stage, MAX_NAME_CHARS),
        "topic": coordinates.topic,
        "partition": coordinates.partition,
        "offset": coordinates.offset,
        "key": key,
        "value": kept_value,
        "headers": kept_headers,
        "original_timestamp": timestamp_ms,
        "failed_at": failed_at,
        "schema_id": schema_id,
        "value_length": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "value_truncated": truncated,
        "headers_dropped": dropped,
    }


def embedded_bytes(letter: DeadLetter | dict[str, Any]) -> int:
    """The original bytes a dead letter embeds (value plus headers), as max_bytes counts them."""
    value = letter["value"]
    headers = letter["headers"]
    return (0 if value is None else len(value)) + sum(
        header_bytes(h["key"], h["value"]) for h in headers
    )
