"""Dead letters in Postgres: list them, and replay them to the topic they were read from.

Replay protocol (`replay`):
  0. a dead letter that embeds only part of its original (`value_truncated`, `headers_dropped`;
     see qmsflow/quality/dead_letter.py) gets the whole original re-read from its source
     coordinates, and only when that record's value has the dead letter's `value_sha256`. When
     the source no longer holds it (retention passed, records deleted, compacted away) or it
     differs, the dead letter is reported and NOT replayed: a cut value is never produced;
  1. each selected dead letter's ORIGINAL key, value and headers are produced to its ORIGINAL
     source topic (stored physical, environment prefix included), with one header added:
     `qmsflow-replay-of: <dead_letter_id>`; the partition is the key's (Java's murmur2 rule, as
     every qmsflow producer), the timestamp is now, so retention counts from the replay;
  2. the producer is flushed and every delivery report checked: nothing is recorded before the
     broker acknowledged it;
  3. one Postgres transaction records each acknowledged replay in `qms.dead_letter_replay`
     (who, when, target topic, partition, offset).
A crash between 2 and 3 leaves a replayed record without its audit row; the record itself still
names its dead letter in the header, so the trail can be completed from the topic. Replaying the
same dead letter twice produces it twice: the stages downstream deduplicate by event id.

Only dead letters the current environment's sink loaded (from its own `quality.dlq.v1`) are
visible, so one database shared by several topic prefixes never replays across them.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from qmsflow.errors import QmsflowError
from qmsflow.kafka.headers import Headers, header_pairs
from qmsflow.kafka.producer import create_producer
from qmsflow.kafka.security import librdkafka_security
from qmsflow.settings import Settings

__all__ = [
    "REPLAY_HEADER",
    "DeadLetterNotFound",
    "OriginalUnavailable",
    "OriginalsUnavailable",
    "ReplayFailed",
    "Replayed",
    "StoredDeadLetter",
    "list_dead_letters",
    "recover_originals",
    "replay",
    "replay_headers",
    "select_dead_letters",
]

#: header naming the dead letter a replayed record came from
REPLAY_HEADER = "qmsflow-replay-of"
_ACK_TIMEOUT = 30.0  # seconds; acks=all on a healthy cluster answers in milliseconds
_REREAD_TIMEOUT = 15.0  # seconds to fetch one original; a healthy broker answers in milliseconds


class DeadLetterNotFound(QmsflowError):
    """A dead letter id asked for is not in this environment's `qms.dead_letter`."""


class ReplayFailed(QmsflowError):
    """The broker did not acknowledge every replayed record."""


class OriginalsUnavailable(QmsflowError):
    """Some dead letters hold a cut original whose whole record their source no longer has."""


@dataclass(frozen=True)
class StoredDeadLetter:
    """A row of `qms.dead_letter`, with the original record's bytes."""

    dead_letter_id: str
    reason_code: str
    reason: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    failed_at: datetime
    replays: int  # how often it was replayed already
    value_length: int | None = None  # of the whole original value
    value_sha256: str | None = None  # of the whole original value, lowercase hex
    value_truncated: bool = False  # `value` is only the original's first bytes
    headers_dropped: int = 0  # the original's last headers left out of `headers`

    @property
    def source(self) -> str:
        """Where the original record was read: topic[partition]@offset."""
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"

    @property
    def holds_whole_original(self) -> bool:
        """Whether key, value and headers are the whole original, ready to replay as stored."""
        return not self.value_truncated and self.headers_dropped == 0


@dataclass(frozen=True)
class OriginalUnavailable:
    """A dead letter whose cut original cannot be re-read whole from its source: why not."""

    dead_letter_id: str
    source: str
    why: str

    def __str__(self) -> str:
        return f"cannot replay {self.dead_letter_id}: original at {self.source} {self.why}"


@dataclass(frozen=True)
class Replayed:
    """One dead letter put back on its source topic (or, in a dry run, about to be)."""

    dead_letter_id: str
    topic: str
    partition: int | None  # None in a dry run
    offset: int | None


_SELECT = (
    "SELECT d.dead_letter_id, d.reason_code, d.reason, d.stage, d.source_topic,"
    " d.source_partition, d.source_offset, d.original_key, d.original_value, d.headers,"
    " d.failed_at,"
    " (SELECT count(*) FROM qms.dead_letter_replay r WHERE r.dead_letter_id = d.dead_letter_id),"
    " d.value_length, d.value_digest, d.value_truncated, d.headers_dropped"
    " FROM qms.dead_letter d WHERE d.kafka_topic = %(dlq)s"
)


def _stored(row: tuple[Any, ...]) -> StoredDeadLetter:
    # qms.dead_letter keeps header values as hex (jsonb has no bytes); turn them back into bytes
    headers = [
        (h["key"], None if h["value"] is None else bytes.fromhex(h["value"])) for h in row[9]
    ]
    return StoredDeadLetter(
        str(row[0]), row[1], row[2], row[3], row[4], row[5], row[6],
        None if row[7] is None else bytes(row[7]),
        None if row[8] is None else bytes(row[8]),
        headers, row[10], int(row[11]), row[12], row[13], bool(row[14]), int(row[15]),
    )  # fmt: skip


def list_dead_letters(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    reason_code: str | None = None,
    stage: str | None = None,
    limit: int = 50,
) -> list[StoredDeadLetter]:
    """Dead letters of the current environment, newest failure first."""
    rows = conn.execute(
        _SELECT + " AND (%(reason)s::text IS NULL OR d.reason_code = %(reason)s)"
        " AND (%(stage)s::text IS NULL OR d.stage = %(stage)s)"
        " ORDER BY d.failed_at DESC, d.dead_letter_id LIMIT %(limit)s",
        {"dlq": settings.topic("quality.dlq.v1"), "reason": reason_code, "stage": stage,
         "limit": limit},
    ).fetchall()  # fmt: skip
    return [_stored(row) for row in rows]


def select_dead_letters(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    ids: Sequence[str] = (),
    reason_code: str | None = None,
    include_replayed: bool = False,
) -> list[StoredDeadLetter]:
    """The dead letters to replay, in source order: the ids given, or every one of a reason.

    Named ids are always selected (and must all exist here); by reason, dead letters already
    replayed are left out unless `include_replayed`, so a second run does not duplicate the first.
    """
    if bool(ids) == (reason_code is not None):
        raise ValueError("select dead letters either by id or by reason code")
    dlq = settings.topic("quality.dlq.v1")
    order = " ORDER BY d.source_topic, d.source_partition, d.source_offset"
    if ids:
        rows = conn.execute(
            _SELECT + " AND d.dead_letter_id = ANY(%(ids)s::uuid[])" + order,
            {"dlq": dlq, "ids": list(ids)},
        ).fetchall()
        found = {str(row[0]) for row in rows}
        missing = sorted({str(i) for i in ids} - found)
        if missing:
            raise DeadLetterNotFound(
                f"dead letters {', '.join(missing)}: expected in qms.dead_letter as loaded "
                f"from {dlq}, found none; see `qmsflow dlq list`"
            )
    else:
        rows = conn.execute(
            _SELECT + " AND d.reason_code = %(reason)s"
            + ("" if include_replayed else " AND NOT EXISTS (SELECT 1 FROM"
               " qms.dead_letter_replay r WHERE r.dead_letter_id = d.dead_letter_id)")
            + order,
            {"dlq": dlq, "reason": reason_code},
        ).fetchall()  # fmt: skip
    return [_stored(row) for row in rows]


def replay_headers(letter: StoredDeadLetter) -> Headers:
    """The original headers, in order, plus the header naming the dead letter."""
    return [*letter.headers, (REPLAY_HEADER, letter.dead_letter_id.encode("ascii"))]


def original_reader(settings: Settings) -> Consumer:
    """A consumer that only ever reads assigned offsets: no group offsets, no offset reset.

    `auto.offset.reset=error`: an offset the log no longer holds must be an error, never a
    silent jump to another record.
    """
    return Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.topic("qmsflow-dlq-replay"),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            **librdkafka_security(settings),
        }
    )


def _reread(consumer: Consumer, letter: StoredDeadLetter) -> StoredDeadLetter | str:
    """The dead letter with its whole original re-read from the source, or why that failed."""
    where = TopicPartition(letter.source_topic, letter.source_partition, letter.source_offset)
    try:
        low, high = consumer.get_watermark_offsets(where, timeout=_REREAD_TIMEOUT)
    except KafkaException as error:
        return f"cannot be read: {error.args[0] if error.args else error}"
    if letter.source_offset < low:
        return (
            f"is gone: the partition now starts at offset {low} (retention passed or records "
            "deleted)"
        )
    if letter.source_offset >= high:
        return f"is not there: the partition ends before it, at offset {high}"
    consumer.assign([where])
    deadline = time.monotonic() + _REREAD_TIMEOUT
    while time.monotonic() < deadline:
        message = consumer.poll(min(1.0, max(deadline - time.monotonic(), 0.0)))
        if message is None:
            continue
        failure = message.error()
        if failure is not None:
            if failure.code() == KafkaError._PARTITION_EOF:
                continue
            return f"cannot be read: {failure}"
        if (message.topic(), message.partition()) != (where.topic, where.partition):
            continue  # a record fetched for an earlier assignment
        if message.offset() != letter.source_offset:
            return f"is gone: the next record there is at offset {message.offset()} (compacted)"
        return _verified(letter, message)
    return f"cannot be read: no record within {_REREAD_TIMEOUT:.0f} s"


def _verified(letter: StoredDeadLetter, message: Message) -> StoredDeadLetter | str:
    """The re-read record as the dead letter's original, when it is provably the same one."""
    value = message.value()
    if isinstance(value, str):  # confluent-kafka hands out bytes; its stubs allow str
        value = value.encode("utf-8")
    if letter.value_sha256 is not None or value is not None:
        digest = None if value is None else hashlib.sha256(value).hexdigest()
        if digest != letter.value_sha256:
            return (
                f"differs from the one dead-lettered: sha256 {digest}, expected "
                f"{letter.value_sha256}"
            )
    key = message.key()
    return dataclasses.replace(
        letter,
        key=key.encode("utf-8") if isinstance(key, str) else key,
        value=value,
        headers=header_pairs(message.headers()),
        value_length=None if value is None else len(value),
        value_truncated=False,
        headers_dropped=0,
    )


def recover_originals(
    settings: Settings,
    letters: Sequence[StoredDeadLetter],
    *,
    consumer: Consumer | None = None,
) -> tuple[list[StoredDeadLetter], list[OriginalUnavailable]]:
    """Each dead letter with its whole original (step 0), and those whose original is gone.

    Dead letters holding the whole original pass unchanged, without touching Kafka.
    """
    ready: list[StoredDeadLetter] = []
    unavailable: list[OriginalUnavailable] = []
    cut = [letter for letter in letters if not letter.holds_whole_original]
    reader = consumer or (original_reader(settings) if cut else None)
    try:
        for letter in letters:
            if letter.holds_whole_original:
                ready.append(letter)
                continue
            assert reader is not None
            recovered = _reread(reader, letter)
            if isinstance(recovered, str):
                unavailable.append(
                    OriginalUnavailable(letter.dead_letter_id, letter.source, recovered)
                )
            else:
                ready.append(recovered)
    finally:
        if reader is not None and consumer is None:
            reader.close()
    return ready, unavailable


def replay(
    conn: psycopg.Connection[Any],
    settings: Settings,
    letters: Sequence[StoredDeadLetter],
    *,
    dry_run: bool = False,
    replayed_by: str | None = None,
    producer: Producer | None = None,
    consumer: Consumer | None = None,
    echo: Callable[[str], None] = print,
) -> list[Replayed]:
    """Re-produce each dead letter's original record to its source topic and record it (steps 0–3).

    A dry run produces and records nothing (it does re-read cut originals, to tell which would
    fail). Raises ReplayFailed, after recording the replays that were acknowledged, when any was
    not; raises OriginalsUnavailable, after replaying all others, when a cut original is gone.
    """
    letters, unavailable = recover_originals(settings, letters, consumer=consumer)
    for gone in unavailable:
        echo(str(gone))
    if dry_run:
        for letter in letters:
            echo(f"would replay {letter.dead_letter_id} to {letter.source_topic}")
        _raise_unavailable(unavailable, replayed=len(letters), dry_run=True)
        return [
            Replayed(letter.dead_letter_id, letter.source_topic, None, None) for letter in letters
        ]
    if not letters:
        _raise_unavailable(unavailable, replayed=0, dry_run=False)
        return []
    producer = producer or create_producer(settings)
    acknowledged: list[Replayed] = []
    failures: list[str] = []

    def delivered(letter: StoredDeadLetter) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"{letter.dead_letter_id} → {letter.source_topic}: {error}")
                return
            acknowledged.append(
                Replayed(
                    letter.dead_letter_id,
                    message.topic() or letter.source_topic,
                    message.partition() or 0,
                    message.offset() or 0,
                )
            )

        return report

    for letter in letters:
        headers: list[tuple[str, str | bytes | None]] = list(replay_headers(letter))
        producer.produce(
            letter.source_topic,
            key=letter.key,
            value=letter.value,
            headers=headers,
            on_delivery=delivered(letter),
        )
        producer.poll(0)
    unacknowledged = producer.flush(_ACK_TIMEOUT)
    who = replayed_by or getpass.getuser()
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO qms.dead_letter_replay (dead_letter_id, replayed_by, target_topic,"
            " target_partition, target_offset) VALUES (%s, %s, %s, %s, %s)",
            [(r.dead_letter_id, who, r.topic, r.partition, r.offset) for r in acknowledged],
        )
    for r in acknowledged:
        echo(f"replayed {r.dead_letter_id} to {r.topic}[{r.partition}]@{r.offset}")
    if failures or unacknowledged:
        raise ReplayFailed(
            f"expected {len(letters)} replays acknowledged, got {len(acknowledged)} "
            f"({unacknowledged} still unacknowledged after {_ACK_TIMEOUT:.0f} s); "
            + "; ".join(failures)
        )
    _raise_unavailable(unavailable, replayed=len(acknowledged), dry_run=False)
    return acknowledged


def _raise_unavailable(
    unavailable: Sequence[OriginalUnavailable], *, replayed: int, dry_run: bool
) -> None:
    if unavailable:
        done = "would be replayed" if dry_run else "replayed"
        raise OriginalsUnavailable(
            f"{len(unavailable)} dead letters not replayed: they hold only part of their "
            f"original, and the whole one is no longer readable from its source "
            f"({replayed} others {done}): "
            + "; ".join(f"{u.dead_letter_id} at {u.source} {u.why}" for u in unavailable)
        )
