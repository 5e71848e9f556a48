"""Kafka record headers in one shape, whichever client delivered them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Headers = list[tuple[str, bytes | None]]

#: marks a record caused by a synthetic (canary) event: consumers that act on the outside world
#: (the ERP adapter) skip it, so a canary's quarantine never blocks real stock
SYNTHETIC_HEADER = "qmsflow.synthetic"


def is_synthetic(headers: Headers) -> bool:
    """Whether the headers mark the record as synthetic."""
    return any(name == SYNTHETIC_HEADER and value == b"true" for name, value in headers)


def header_pairs(
    headers: Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]] | None,
) -> Headers:
    """Headers as (name, bytes) pairs: clients hand over lists, dicts, str or bytes values."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v.encode("utf-8") if isinstance(v, str) else v) for k, v in items]
