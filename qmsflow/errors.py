"""The exceptions qmsflow raises, as one tree under QmsflowError.

    QmsflowError
    ├── ConfigurationError      a settings value or a rules file is wrong; fix it and restart
    ├── ContractError           a message does not honour its contract (dead-lettered)
    │   ├── FramingError        not Confluent wire format: no magic byte, too short
    │   ├── UnknownSchemaError  the schema id is in neither the lock file nor the registry
    │   ├── WrongSubjectError   the schema id belongs to another topic's contract
    │   ├── DecodeError         the Avro body does not decode with its writer schema
    │   ├── EncodeError         a record to publish does not match its contract
    │   ├── NormalisationError  decoded, but not mappable to the canonical model
    │   ├── LimitError          decoded, but a value breaks a limit (length, characters, time)
    │   └── IdempotencyConflict an event_id already accepted arrives with other content
    ├── CompatibilityError      a schema version breaks BACKWARD_TRANSITIVE compatibility
    └── StackError              a local Kafka or Postgres server could not be fetched or started

Every message says what was expected, what arrived and where (topic, partition, offset, field).
"""

from __future__ import annotations


class QmsflowError(Exception):
    """Root of every error qmsflow raises on purpose."""


class ConfigurationError(QmsflowError):
    """A setting or a rules file is invalid."""


class ContractError(QmsflowError):
    """A message breaks its topic's contract; the reason goes to the dead-letter topic."""

    #: short, stable reason code stored with the dead letter (for grouping and alerting)
    reason_code = "contract"


class FramingError(ContractError):
    """The bytes are not Confluent wire format (magic byte 0, 4-byte schema id, Avro body)."""

    reason_code = "framing"


class UnknownSchemaError(ContractError):
    """The schema id in the frame is not registered."""

    reason_code = "unknown-schema"


class WrongSubjectError(ContractError):
    """The frame names a schema registered for another subject (a record on the wrong topic)."""

    reason_code = "wrong-subject"


class EncodeError(ContractError):
    """A record to be published does not match the newest schema of its subject."""

    reason_code = "encode"


class DecodeError(ContractError):
    """The Avro body does not decode with the writer schema its frame names."""

    reason_code = "decode"


class NormalisationError(ContractError):
    """The record decoded but cannot be mapped to the canonical model."""

    reason_code = "normalise"


class LimitError(ContractError):
    """A decoded value breaks a boundary limit (length, characters, time window).

    The message names the field path and the limit, so the producer knows what to fix.
    """

    reason_code = "limits"


class IdempotencyConflict(ContractError):
    """An event_id was reused for different content; correcting a record needs a new event."""

    reason_code = "idempotency-conflict"


class CompatibilityError(QmsflowError):
    """A subject's schema versions are not BACKWARD_TRANSITIVE compatible."""


class StackError(QmsflowError):
    """A local server of the development stack could not be fetched, started or reached."""
