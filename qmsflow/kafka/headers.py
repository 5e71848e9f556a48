"""Kafka record headers in one shape, whichever client delivered them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Headers = list[tuple[str, bytes | None]]


def header_pairs(
    headers: Mapping[str, str | bytes | None] | Iterable[tuple[str, str | bytes | None]] | None,
) -> Headers:
    """Headers as (name, bytes) pairs: clients hand over lists, dicts, str or bytes values."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v.encode("utf-8") if isinstance(v, str) else v) for k, v in items]
