"""Baseline (b): a naive Faust app that decodes each ingest record and forwards it, one at a time.

Run as its own process (`python -m bench.naive_faust worker`), with its own app id
(`BENCH_NAIVE_APP_ID`) and output topic (`BENCH_NAIVE_OUTPUT`), on the topics of
`QMSFLOW_TOPIC_PREFIX`. It is what a first Faust app looks like: one agent, concurrency 1, Avro
decode per record, JSON re-encode, `await topic.send(...)` per record; no dedup, no batching.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import faust
import orjson

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog

settings = Settings()
codec = AvroCodec(open_registry(settings))
ingest = [settings.topic(spec.name) for spec in load_catalog().by_role("ingest")]

app = faust.App(
    os.environ.get("BENCH_NAIVE_APP_ID", f"{settings.topic_prefix}bench-naive"),
    broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
    store="memory://",
    datadir=tempfile.mkdtemp(prefix="bench-naive-"),
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    web_port=6099,  # Faust validates the port even when the web server is off
    topic_allow_declare=False,  # the runner creates the output topic
)
source = app.topic(*ingest, key_serializer="raw", value_serializer="raw")
output = app.topic(
    os.environ.get("BENCH_NAIVE_OUTPUT", f"{settings.topic_prefix}bench.naive.v1"),
    key_serializer="raw",
    value_serializer="raw",
)


@app.agent(source)
async def forward(stream: Any) -> None:
    """Decode one record, forward it as JSON, await the send, next."""
    async for event in stream.events():
        topic = event.message.topic.removeprefix(settings.topic_prefix)
        decoded = codec.decode(event.value, f"{topic}-value")
        await output.send(key=event.key, value=orjson.dumps(decoded.record, default=str))


if __name__ == "__main__":
    app.main()
