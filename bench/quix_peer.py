"""Peer baseline: the same dedup written as a Quix Streams app, run in its own venv (.venv-quix).

Run by bench.run as `<.venv-quix>/bin/python bench/quix_peer.py --bootstrap … --group …
--state-dir … --output … --schemas schemas.json TOPIC …`; it runs until SIGTERM. Per ingest
record: unframe (magic byte 0, 4-byte big-endian writer schema id, Avro body), decode the body
with fastavro, keep the record only if its `event_id` is not yet in Quix's RocksDB state (with
its changelog topic, Quix's default), and publish the original bytes to the output topic.

Imports nothing from qmsflow: quixstreams cannot be installed beside it (it pins older
confluent-kafka and pydantic), so this file sees only quixstreams, fastavro and the stdlib.
Writer schemas come from a JSON file `{"<id>": <Avro schema>, …}` the parent resolved with
qmsflow; an id missing from it is fetched from `--registry-url` (a Confluent-compatible
registry, when qmsflow uses one) and remembered.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader

#: Confluent framing: magic byte 0, then the writer schema id as 4 big-endian bytes
_HEADER = struct.Struct(">BI")


class FramingError(ValueError):
    """The bytes are not a Confluent-framed Avro record."""


def unframe(value: bytes) -> tuple[int, bytes]:
    """The writer schema id and the Avro body of a framed record; FramingError if not framed."""
    if len(value) < _HEADER.size:
        raise FramingError(f"expected at least {_HEADER.size} bytes, got {len(value)}")
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != 0:
        raise FramingError(f"expected magic byte 0x00, got 0x{magic:02x}")
    return schema_id, value[_HEADER.size :]


def fetch_schema(registry_url: str, schema_id: int) -> Any:
    """The schema registered under `schema_id` at a Confluent-compatible registry."""
    url = f"{registry_url.rstrip('/')}/schemas/ids/{schema_id}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(json.loads(response.read())["schema"])


class EventIds:
    """Decodes framed records to their `event_id` with the writer schemas it was given."""

    def __init__(
        self, schemas: Mapping[int, Any], fetch: Callable[[int], Any] | None = None
    ) -> None:
        self._parsed = {schema_id: parse_schema(s) for schema_id, s in schemas.items()}
        self._fetch = fetch

    def __call__(self, value: bytes) -> str:
        """The record's event_id; KeyError when its schema id is unknown and cannot be fetched."""
        schema_id, body = unframe(value)
        schema = self._parsed.get(schema_id)
        if schema is None:
            if self._fetch is None:
                raise KeyError(f"schema id {schema_id}: not in the schemas file, no registry")
            schema = self._parsed[schema_id] = parse_schema(self._fetch(schema_id))
        record = schemaless_reader(io.BytesIO(body), schema, None)
        if not isinstance(record, dict) or "event_id" not in record:
            raise KeyError(f"schema id {schema_id}: the record has no event_id")
        return str(record["event_id"])


def load_schemas(path: Path) -> dict[int, Any]:
    """The schemas file written by the parent: `{"<id>": <schema>}` with ids as keys."""
    return {int(k): v for k, v in json.loads(path.read_text("utf-8")).items()}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True, help="consumer group (prefixes changelogs)")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--output", required=True, help="topic the unique records go to")
    parser.add_argument("--schemas", required=True, type=Path, help="JSON: schema id → schema")
    parser.add_argument("--registry-url", default=None)
    parser.add_argument("--loglevel", default="WARNING", help="Quix's log level")
    parser.add_argument("topics", nargs="+", help="the ingest topics")
    return parser.parse_args()


def main() -> None:
    """Build the Quix app (one dataframe per ingest topic) and run it until SIGTERM."""
    from quixstreams import Application  # only in .venv-quix: imported where it is used

    args = _arguments()
    registry_url: str | None = args.registry_url
    event_id = EventIds(
        load_schemas(args.schemas),
        None if registry_url is None else (lambda i: fetch_schema(registry_url, i)),
    )
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel=args.loglevel,
    )
    output = app.topic(args.output, value_serializer="bytes", key_serializer="bytes")

    def first_sight(value: bytes, state: Any) -> bool:
        # Quix scopes state to the message key (the product line); a duplicate is an exact
        # re-send, so it has the same key and lands in the same partition and scope
        key = event_id(value)
        if state.get(key) is not None:
            return False
        state.set(key, 1)
        return True

    for name in args.topics:
        topic = app.topic(name, value_deserializer="bytes", key_deserializer="bytes")
        app.dataframe(topic).filter(first_sight, stateful=True).to_topic(output)
    app.run()


if __name__ == "__main__":
    main()
