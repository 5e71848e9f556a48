"""Dead letters in Postgres: list them, and replay them to the topic they were read from.

Replay protocol (`replay`):
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

import getpass
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from qmsflow.errors import QmsflowError
from qmsflow.kafka.headers import Headers
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings

__all__ = [
    "REPLAY_HEADER",
    "DeadLetterNotFound",
    "ReplayFailed",
    "Replayed",
    "StoredDeadLetter",
    "list_dead_letters",
    "replay",
    "replay_headers",
    "select_dead_letters",
]

#: header naming the dead letter a replayed record came from
REPLAY_HEADER = "qmsflow-replay-of"
_ACK_TIMEOUT = 30.0  # seconds; acks=all on a healthy cluster answers in milliseconds


class DeadLetterNotFound(QmsflowError):
    """A dead letter id asked for is not in this environment's `qms.dead_letter`."""


class ReplayFailed(QmsflowError):
    """The broker did not acknowledge every replayed record."""


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

    @property
    def source(self) -> str:
        """Where the original record was read: topic[partition]@offset."""
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"


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
    " (SELECT count(*) FROM qms.dead_letter_replay r WHERE r.dead_letter_id = d.dead_letter_id)"
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
        headers, row[10], int(row[11]),
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


def replay(
    conn: psycopg.Connection[Any],
    settings: Settings,
    letters: Sequence[StoredDeadLetter],
    *,
    dry_run: bool = False,
    replayed_by: str | None = None,
    producer: Producer | None = None,
    echo: Callable[[str], None] = print,
) -> list[Replayed]:
    """Re-produce each dead letter's original record to its source topic and record it (steps 1–3).

    A dry run produces and records nothing. Raises ReplayFailed, after recording the replays
    that were acknowledged, when any was not.
    """
    if dry_run:
        for letter in letters:
            echo(f"would replay {letter.dead_letter_id} to {letter.source_topic}")
        return [
            Replayed(letter.dead_letter_id, letter.source_topic, None, None) for letter in letters
        ]
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
    return acknowledged
