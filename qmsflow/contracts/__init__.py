"""Avro contracts of qmsflow's topics: wire framing, schema registries, codec, compatibility."""

from qmsflow.contracts.codec import AvroCodec, DecodedRecord
from qmsflow.contracts.compatibility import (
    CompatibilityReport,
    Incompatibility,
    check_all,
    check_subject,
)
from qmsflow.contracts.framing import frame, unframe
from qmsflow.contracts.registry import (
    ConfluentSchemaRegistry,
    FileSchemaRegistry,
    RegisteredSchema,
    SchemaRegistry,
    lock_schemas,
    open_registry,
)

__all__ = [
    "AvroCodec",
    "CompatibilityReport",
    "ConfluentSchemaRegistry",
    "DecodedRecord",
    "FileSchemaRegistry",
    "Incompatibility",
    "RegisteredSchema",
    "SchemaRegistry",
    "check_all",
    "check_subject",
    "frame",
    "lock_schemas",
    "open_registry",
    "unframe",
]
