"""The AsyncAPI 3.0 document of every qmsflow channel, built from the described channels.

Pure: a dict from `Channel`s. One channel per declared topic (id and address = logical topic
name), one message per pinned schema version (payload = the `.avsc`, Avro schema format), one
`send` operation per producer and one `receive` operation per consumer. Layout (partitions,
replicas, retention, cleanup policy) is in the Kafka channel binding, the key in the Kafka
message binding, the partitioning rule in `x-qmsflow-partitioning`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from qmsflow.interface_docs.channels import Channel, SchemaVersion

__all__ = ["ASYNCAPI_VERSION", "build_asyncapi"]

#: 3.0.0, what the issue asks for; the official parser accepts it (3.1 only adds fields)
ASYNCAPI_VERSION = "3.0.0"
#: the Avro version fastavro's schemas follow; the parser's Avro plug-in accepts 1.9.0
AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
CONTENT_TYPE = "application/vnd.confluent.avro"  # Confluent wire format: magic byte, id, body
KAFKA_BINDING = "0.5.0"
_MS_PER_DAY = 86_400_000
_ID = re.compile(r"[^A-Za-z0-9_.\-]")


def _id(text: str) -> str:
    """An AsyncAPI component or operation id (letters, digits, `_ . -`)."""
    return _ID.sub("_", text)


def _message_id(channel: Channel, version: SchemaVersion) -> str:
    """Per channel: a channel carrying another topic's subject has its own key and headers."""
    return _id(f"{channel.name}.schema-v{version.version}")


def _message(channel: Channel, version: SchemaVersion, newest: int) -> dict[str, Any]:
    state = "newest" if version.version == newest else "older, still readable"
    return {
        "name": version.record_name,
        "title": f"{version.subject} v{version.version} (schema id {version.schema_id})",
        "summary": str(version.schema.get("doc", "")).split("\n")[0],
        "contentType": CONTENT_TYPE,
        "headers": {
            "type": "object",
            "properties": {
                h.name: {"type": "string", "description": f"{h.value}; set by {h.set_by}"}
                for h in channel.headers
            },
        },
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": version.schema},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": f"{channel.key.key}: {channel.key.why}"},
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "x-qmsflow-schema": {
            "subject": version.subject,
            "version": version.version,
            "id": version.schema_id,
            "status": state,
        },
    }


def _cleanup(policy: str) -> list[str]:
    return policy.split(",")


def _channel(channel: Channel) -> dict[str, Any]:
    spec = channel.spec
    return {
        "address": spec.name,
        "title": spec.name,
        "description": (
            f"Role: {spec.role}. Key: {channel.key.key} ({channel.key.why}). Partitioning: "
            f"{channel.partitioning}. Producers: {', '.join(spec.producers) or 'none'}. "
            f"Consumers: {', '.join(channel.consumers) or 'none declared'}."
        ),
        "messages": {
            _message_id(channel, v): {"$ref": f"#/components/messages/{_message_id(channel, v)}"}
            for v in channel.schemas
        },
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "topicConfiguration": {
                    "cleanup.policy": _cleanup(spec.cleanup_policy),
                    "retention.ms": int(spec.retention_days * _MS_PER_DAY),
                },
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "x-qmsflow-role": spec.role,
        "x-qmsflow-partitioning": channel.partitioning,
        "x-qmsflow-value-subject": spec.subject,
    }


def _operations(channel: Channel) -> dict[str, Any]:
    ref = {"$ref": f"#/channels/{channel.name}"}
    messages = [
        {"$ref": f"#/channels/{channel.name}/messages/{_message_id(channel, v)}"}
        for v in channel.schemas
    ]
    operations: dict[str, Any] = {}
    parties: Sequence[tuple[str, str, str]] = [
        *(("send", p, f"{p} publishes on {channel.name}") for p in channel.spec.producers),
        *(("receive", c, f"{c} consumes {channel.name}") for c in channel.consumers),
    ]
    for action, party, summary in parties:
        operations[_id(f"{party}.{action}.{channel.name}")] = {
            "action": action,
            "channel": ref,
            "summary": summary,
            "messages": messages,
        }
    return operations


def build_asyncapi(channels: Iterable[Channel], *, version: str) -> dict[str, Any]:
    """The AsyncAPI document of `channels`; `version` is qmsflow's (the API's) version."""
    channels = tuple(channels)
    operations: dict[str, Any] = {}
    for channel in channels:
        operations.update(_operations(channel))
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "qmsflow quality event streams",
            "version": version,
            "description": (
                "Every Kafka topic qmsflow declares (config/topics.toml), with its Avro "
                "contracts (schemas/avro, ids from registry.lock.json). Generated by `qmsflow "
                "icd generate`; do not edit. Topic names are logical: a deployment may prefix "
                "them (QMSFLOW_TOPIC_PREFIX)."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:19092",
                "protocol": "kafka",
                "description": "the local stack (`qmsflow stack up`); production brokers are "
                "set by KAFKA_BOOTSTRAP_SERVERS",
            }
        },
        "channels": {c.name: _channel(c) for c in channels},
        "operations": operations,
        "components": {
            "messages": {
                _message_id(c, v): _message(c, v, max(s.version for s in c.schemas))
                for c in channels
                for v in c.schemas
            }
        },
    }
