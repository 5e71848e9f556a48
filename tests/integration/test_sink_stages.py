"""The sink loads every stage output; incidents are upserted, everything else inserted once.

Incidents are keyed by environment (topic prefix) and incident_id (migration 0014): the same
root cause gives the same incident_id in every environment sharing the database. Alerts,
quarantine commands and escalations likewise (migration 0015): their ids are uuid5s of content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from threading import Event, Thread
from typing import Any

import psycopg
import pytest

from connectors.postgres_sink.rows import BINDINGS
from connectors.postgres_sink.sink import SinkStats, run_sink
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.kafka.admin import end_offsets
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings
from tests.integration.pipeline import prepared_settings, wait_for
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

SUBJECT = {b.topic: b.subject for b in BINDINGS}
STAGE_TABLES = (
    "qms.incident",
    "qms.incident_member",
    "qms.alert",
    "qms.quarantine_command",
    "qms.escalation",
    "qms.parked_event",
)
Sent = tuple[str, bytes, dict[str, Any]]  # logical topic, key, record


class SinkThread:
    """`run_sink` in a thread of the test, stopped through its Event."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = Event()
        self.stats: SinkStats | None = None
        self.error: BaseException | None = None
        self.thread = Thread(target=self._run, name="sink", daemon=True)

    def _run(self) -> None:
        try:
            self.stats = run_sink(self.settings, stop=self.stop, echo=lambda _line: None)
        except BaseException as error:  # reported by assert_alive in the test's thread
            self.error = error

    def assert_alive(self) -> None:
        """Fail with the sink's own error if it has died."""
        if self.error is not None:
            raise AssertionError(f"the sink died: {self.error!r}") from self.error
        assert self.thread.is_alive(), "the sink stopped"

    def caught_up(self) -> bool:
        """Tell whether Postgres holds the offsets of every record on the bound topics."""
        topics = [self.settings.topic(b.topic) for b in BINDINGS]
        ends = end_offsets(self.settings, topics)
        with psycopg.connect(self.settings.dsn) as conn:
            stored = dict(
                conn.execute(
                    "SELECT topic, sum(next_offset) FROM qms.sink_offsets"
                    " WHERE consumer_group = %s GROUP BY topic",
                    (self.settings.topic(f"{self.settings.app_id}-sink"),),
                ).fetchall()
            )
        return all(stored.get(t, 0) == n for t, n in ends.items())

    def wait(self, what: str) -> None:
        """Wait until every produced record is in Postgres."""
        wait_for(self.caught_up, timeout=90, what=what, alive=self.assert_alive)


@pytest.fixture
def settings(kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str) -> Settings:
    settings = prepared_settings(
        kafka_bootstrap,
        postgres_dsn,
        topic_prefix,
        sink_batch_size=100,
    )
    return settings


@pytest.fixture
def sink(settings: Settings) -> Iterator[SinkThread]:
    running = SinkThread(settings)
    running.thread.start()
    yield running
    running.stop.set()
    running.thread.join(60)
    assert not running.thread.is_alive(), "the sink did not stop within 60 s"
    if running.error is not None:
        raise running.error


def produce(settings: Settings, sent: list[Sent]) -> None:
    """Publish records, in order, and wait for the broker's acks."""
    codec = AvroCodec(open_registry(settings))
    producer = create_producer(settings)
    for topic, key, record in sent:
        producer.produce(settings.topic(topic), key=key, value=codec.encode(SUBJECT[topic], record))
    assert producer.flush(30) == 0


def digest(dsn: str, prefix: str) -> str:
    """A digest of every stage row of one environment, lineage and load time included."""
    hashed = hashlib.sha256()
    with psycopg.connect(dsn) as conn:
        for table in STAGE_TABLES:
            for (text,) in conn.execute(
                f"SELECT t::text FROM {table} t WHERE kafka_topic LIKE %s ORDER BY 1",
                (f"{prefix}%",),
            ):
                hashed.update(f"{table}:{text}\n".encode())
    return hashed.hexdigest()


def incident_state(settings: Settings, incident_id: str) -> tuple[Any, ...] | None:
    """(status, revision, member_count, kafka_offset) of this environment's incident."""
    with psycopg.connect(settings.dsn) as conn:
        return conn.execute(
            "SELECT status, revision, member_count, kafka_offset FROM qms.incident"
            " WHERE environment = %s AND incident_id = %s",
            (settings.topic_prefix, incident_id),
        ).fetchone()


def incident_members(settings: Settings, incident_id: str) -> set[str]:
    """The member event ids this environment stored for one incident."""
    with psycopg.connect(settings.dsn) as conn:
        return {
            event_id
            for (event_id,) in conn.execute(
                "SELECT event_id::text FROM qms.incident_member"
                " WHERE environment = %s AND incident_id = %s",
                (settings.topic_prefix, incident_id),
            )
        }


class TestStageOutputsInPostgres:
    def test_rows_upserts_members_holds_and_idempotent_replay(
        self, settings: Settings, sink: SinkThread
    ) -> None:
        """Each output lands once; incidents keep their newest view; a replay changes no row."""
        dsn, prefix = settings.dsn, settings.topic_prefix
        cause_a, cause_b = f"lot:LA-{prefix}", f"supplier:SUP-{prefix}"
        members_a = records.event_ids(2, cause_a)
        members_b = records.event_ids(3, cause_b)
        lot_x, lot_y = f"LX-{prefix}", f"LY-{prefix}"
        parked_id = records.event_ids(1, prefix)[0]
        incident_a = records.incident(cause_a, members=members_a)
        first: list[Sent] = [
            ("quality.incidents.v1", b"a", incident_a),
            # the same batch: an older view after a newer one is not kept
            ("quality.incidents.v1", b"b", records.incident(cause_b, members=members_b)),
            ("quality.incidents.v1", b"b", records.incident(cause_b, members=members_b[:1])),
            ("quality.alerts.v1", b"a", records.alert(cause_a)),
            ("inventory.quarantine-commands.v1", lot_x.encode(), records.quarantine_command(lot_x)),
            (
                "inventory.quarantine-commands.v1",
                lot_x.encode(),
                records.quarantine_command(lot_x, "RELEASE", hours=5),
            ),
            ("inventory.quarantine-commands.v1", lot_y.encode(), records.quarantine_command(lot_y)),
            ("capa.escalations.v1", b"c", records.escalation(f"QMS:CAPA-{prefix}", 1)),
            ("capa.escalations.v1", b"c", records.escalation(f"QMS:CAPA-{prefix}", 2)),
            ("quality.parked.v1", b"p", records.parked(parked_id, "PARKED", lot_x)),
            ("quality.parked.v1", b"p", records.parked(parked_id, "RELEASED", lot_x)),
        ]
        produce(settings, first)
        sink.wait("the first records in Postgres")

        id_a, id_b = incident_a["incident_id"], records.incident(cause_b)["incident_id"]
        assert incident_state(settings, id_a)[:3] == ("open", 2, 2)  # type: ignore[index]
        assert incident_state(settings, id_b)[:3] == ("open", 3, 3)  # type: ignore[index]
        with psycopg.connect(dsn) as conn:
            members = conn.execute(
                "SELECT incident_id::text, event_id::text FROM qms.incident_member"
                " WHERE kafka_topic = %s",
                (settings.topic("quality.incidents.v1"),),
            ).fetchall()
            holds = dict(
                conn.execute(
                    "SELECT lot_id, status FROM qms.lot_hold_status"
                    " WHERE environment = %s AND lot_id IN (%s, %s)",
                    (prefix, lot_x, lot_y),
                ).fetchall()
            )
            released_by = conn.execute(
                "SELECT command_id::text, since FROM qms.lot_hold_status"
                " WHERE environment = %s AND lot_id = %s",
                (prefix, lot_x),
            ).fetchone()
            counts = {
                table: conn.execute(
                    f"SELECT count(*) FROM {table} WHERE kafka_topic LIKE %s", (f"{prefix}%",)
                ).fetchone()[0]  # type: ignore[index]
                for table in STAGE_TABLES
            }
            parked = conn.execute(
                "SELECT status, event_json->>'event_id' FROM qms.parked_event"
                " WHERE event_id = %s ORDER BY status",
                (parked_id,),
            ).fetchall()
        assert set(members) == {(id_a, m) for m in members_a} | {(id_b, m) for m in members_b}
        assert holds == {lot_x: "RELEASED", lot_y: "ON_HOLD"}
        release = records.quarantine_command(lot_x, "RELEASE", hours=5)
        assert released_by == (release["command_id"], release["issued_at"])
        assert counts == {
            "qms.incident": 2,
            "qms.incident_member": 5,
            "qms.alert": 1,
            "qms.quarantine_command": 3,
            "qms.escalation": 2,
            "qms.parked_event": 2,
        }
        assert parked == [("PARKED", parked_id), ("RELEASED", parked_id)]

        # a later batch: an older view arriving after the newer one changes nothing
        stored_a = incident_state(settings, id_a)
        older: list[Sent] = [
            ("quality.incidents.v1", b"a", records.incident(cause_a, members=members_a[:1]))
        ]
        produce(settings, older)
        sink.wait("the older incident view to be consumed")
        assert incident_state(settings, id_a) == stored_a

        # closing at the same revision does replace the open view
        closing: list[Sent] = [
            (
                "quality.incidents.v1",
                b"a",
                records.incident(cause_a, members=members_a, status="closed"),
            )
        ]
        produce(settings, closing)
        sink.wait("the closing incident view to be consumed")
        assert incident_state(settings, id_a)[:3] == ("closed", 2, 2)  # type: ignore[index]

        # the same records again: the offsets move on, not a single row changes
        before = digest(dsn, prefix)
        produce(settings, first + older + closing)
        sink.wait("the re-produced records to be consumed")
        assert digest(dsn, prefix) == before


class TestIncidentsPerEnvironment:
    def test_same_incident_id_in_two_environments_keeps_both_with_their_members(
        self, kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str
    ) -> None:
        """Two environments' incidents of one id are two rows, each with only its own members."""
        # nested prefixes, as production's '' is of every other: the fixture deletes both
        production = prepared_settings(
            kafka_bootstrap, postgres_dsn, topic_prefix, sink_batch_size=100
        )
        validation = prepared_settings(
            kafka_bootstrap, postgres_dsn, f"{topic_prefix}validation.", sink_batch_size=100
        )
        cause = f"lot:LE-{topic_prefix}"
        members = {
            production.topic_prefix: records.event_ids(3, f"{cause}-production"),
            validation.topic_prefix: records.event_ids(2, f"{cause}-validation"),
        }
        # production's newer view first: before migration 0014 (keyed by incident_id alone)
        # validation's older view was refused against it and its members filed under it
        for settings in (production, validation):
            running = SinkThread(settings)
            running.thread.start()
            try:
                view = records.incident(cause, members=members[settings.topic_prefix])
                produce(settings, [("quality.incidents.v1", b"e", view)])
                running.wait(f"the incident of {settings.topic_prefix!r} in Postgres")
            finally:
                running.stop.set()
                running.thread.join(60)
            assert running.error is None, running.error

        incident_id = records.incident(cause)["incident_id"]
        assert incident_state(production, incident_id)[:3] == ("open", 3, 3)  # type: ignore[index]
        assert incident_state(validation, incident_id)[:3] == ("open", 2, 2)  # type: ignore[index]
        for settings in (production, validation):
            assert incident_members(settings, incident_id) == set(members[settings.topic_prefix])
        with psycopg.connect(postgres_dsn) as conn:
            environments = conn.execute(
                "SELECT environment, kafka_topic FROM qms.incident WHERE incident_id = %s"
                " AND environment LIKE %s ORDER BY environment",
                (incident_id, f"{topic_prefix}%"),
            ).fetchall()
        assert environments == [
            (production.topic_prefix, production.topic("quality.incidents.v1")),
            (validation.topic_prefix, validation.topic("quality.incidents.v1")),
        ]


def load_in_turn(environments: list[Settings], sent: dict[str, list[Sent]]) -> None:
    """Sink each environment's records with its own sink, one environment after the other."""
    for settings in environments:
        running = SinkThread(settings)
        running.thread.start()
        try:
            produce(settings, sent[settings.topic_prefix])
            running.wait(f"the records of {settings.topic_prefix!r} in Postgres")
        finally:
            running.stop.set()
            running.thread.join(60)
        assert running.error is None, running.error


#: per table: its topic, id column, a column that tells the environments' rows apart, and the
#: record of one environment (`mark` goes into that column)
CONTENT_KEYED: dict[str, tuple[str, str, str, Callable[[str, str], dict[str, Any]]]] = {
    "qms.alert": (
        "quality.alerts.v1",
        "alert_id",
        "summary",
        lambda key, mark: {**records.alert(f"lot:{key}"), "summary": mark},
    ),
    "qms.quarantine_command": (
        "inventory.quarantine-commands.v1",
        "command_id",
        "reason",
        lambda key, mark: {**records.quarantine_command(key), "reason": mark},
    ),
    "qms.escalation": (
        "capa.escalations.v1",
        "escalation_id",
        "title",
        lambda key, mark: {**records.escalation(f"QMS:{key}", 2), "title": mark},
    ),
}


class TestContentKeyedOutputsPerEnvironment:
    @pytest.mark.parametrize("table", CONTENT_KEYED)
    def test_same_id_in_two_environments_keeps_both_rows(
        self, kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, table: str
    ) -> None:
        """Two environments' records of one id are two rows, each its own (0015).

        Insert-only and keyed by the id alone, the second environment's row was dropped.
        """
        topic, id_column, told_by, record = CONTENT_KEYED[table]
        production = prepared_settings(
            kafka_bootstrap, postgres_dsn, topic_prefix, sink_batch_size=100
        )
        validation = prepared_settings(
            kafka_bootstrap, postgres_dsn, f"{topic_prefix}validation.", sink_batch_size=100
        )
        key = f"L-{topic_prefix}"
        sent = {
            s.topic_prefix: [(topic, key.encode(), record(key, f"from {s.topic_prefix}"))]
            for s in (production, validation)
        }
        if table == "qms.quarantine_command":  # only validation releases the lot it held
            release = records.quarantine_command(key, "RELEASE", hours=5)
            sent[validation.topic_prefix].append((topic, key.encode(), release))
        load_in_turn([production, validation], sent)

        same_id = sent[production.topic_prefix][0][2][id_column]
        assert sent[validation.topic_prefix][0][2][id_column] == same_id
        with psycopg.connect(postgres_dsn) as conn:
            stored = conn.execute(
                f"SELECT environment, {told_by}, kafka_topic FROM {table}"
                f" WHERE {id_column} = %s AND environment LIKE %s ORDER BY environment",
                (same_id, f"{topic_prefix}%"),
            ).fetchall()
            holds = conn.execute(
                "SELECT environment, status FROM qms.lot_hold_status"
                " WHERE lot_id = %s ORDER BY environment",
                (key,),
            ).fetchall()
        assert stored == [
            (s.topic_prefix, f"from {s.topic_prefix}", s.topic(topic))
            for s in (production, validation)
        ]
        if table == "qms.quarantine_command":
            assert holds == [
                (production.topic_prefix, "ON_HOLD"),
                (validation.topic_prefix, "RELEASED"),
            ]
