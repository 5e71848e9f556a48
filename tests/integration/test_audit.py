"""The Part 11 audit trail through the real sink, tamper detection, and retention of one type."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from connectors.postgres_sink.rows import QUALITY_EVENT_COLUMNS, quality_event_row
from qmsflow.audit import verify_chain
from qmsflow.quality.event import Coordinates
from qmsflow.retention import RetentionPolicy, plan_retention, run_retention
from qmsflow.settings import Settings
from tests.integration.test_sink_stages import SinkThread, produce
from tests.integration.test_sink_stages import settings as settings
from tests.integration.test_sink_stages import sink as sink
from tests.unit.analytics.events import canonical_event
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def signed_event(event_id: str, record: str) -> dict[str, Any]:
    """A nonconformance change with its audit context and an approval signature."""
    return canonical_event(
        event_id,
        source_record_id=record,
        audit={
            "changed_by": "jdoe",
            "reason": "MRB disposition",
            "changes": [{"field": "disposition", "old_value": None, "new_value": "scrap"}],
        },
        signature={
            "signer_id": "asmith",
            "printed_name": "Alice Smith",
            "signed_at": T0,
            "meaning": "approval",
        },
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )


def as_superuser(dsn: str, sql: str, conn: psycopg.Connection[Any]) -> None:
    """Run `sql` as the cluster superuser when this machine allows it, else as the owner.

    The local stack's superuser is reached through `runuser -u postgres`; elsewhere (CI,
    testcontainers) the owning login, which may disable its own table's triggers just the same.
    """
    info = conninfo_to_dict(dsn)
    if (
        os.geteuid() == 0
        and shutil.which("runuser")
        and info.get("host") in ("127.0.0.1", "localhost")
    ):
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-h",
                str(info["host"]),
                "-p",
                str(info.get("port", 5432)),
                "-d",
                str(info["dbname"]),
                "-v",
                "ON_ERROR_STOP=1",
                "-qc",
                sql,
            ],
            check=True,
            capture_output=True,
        )
    else:
        conn.execute(sql)
        conn.commit()


def tamper_sql(seq: int, reason: str | None) -> str:
    quoted = "NULL" if reason is None else "'" + reason.replace("'", "''") + "'"
    return (
        "BEGIN; ALTER TABLE audit.record_change DISABLE TRIGGER record_change_append_only;"
        f" UPDATE audit.record_change SET reason = {quoted} WHERE seq = {seq};"
        " ALTER TABLE audit.record_change ENABLE TRIGGER record_change_append_only; COMMIT;"
    )


class TestAuditTrail:
    def test_sink_writes_chained_rows_and_verify_finds_tampering(
        self, settings: Settings, sink: SinkThread
    ) -> None:
        """One chained audit row per regulated record; `audit verify` names a tampered one.

        Each row keeps who, what, why, the signature and lineage; a row changed by a superuser
        with the trigger disabled is the first broken link.
        """
        prefix = settings.topic_prefix
        ids = records.event_ids(3, prefix)
        lot = f"LA-{prefix}"
        produce(
            settings,
            [
                *(
                    ("quality.events.v1", b"line", signed_event(i, f"NCR-{n}"))
                    for n, i in enumerate(ids)
                ),
                ("quality.events.v1", b"line", signed_event(ids[0], "NCR-0")),  # redelivered
                ("inventory.quarantine-commands.v1", lot.encode(), records.quarantine_command(lot)),
                ("capa.escalations.v1", b"c", records.escalation(f"QMS:CAPA-{prefix}", 1)),
            ],
        )
        sink.wait("the audited records in Postgres")
        with psycopg.connect(settings.dsn) as conn:
            rows = conn.execute(
                "SELECT seq, record_type, record_id, changed_by, reason, changes, printed_name,"
                " signed_at, signature_meaning, kafka_topic, kafka_offset, source_topic,"
                " schema_id, trace_id FROM audit.record_change WHERE kafka_topic LIKE %s"
                " ORDER BY seq",
                (f"{prefix}%",),
            ).fetchall()
            assert sorted((r[1], r[2]) for r in rows if r[1] == "quality_event") == sorted(
                ("quality_event", i) for i in ids
            )
            assert {r[1] for r in rows} == {"quality_event", "quarantine_command", "escalation"}
            event = next(r for r in rows if r[2] == ids[0])
            assert event[3:9] == (
                "jdoe",
                "MRB disposition",
                [{"field": "disposition", "old_value": None, "new_value": "scrap"}],
                "Alice Smith",
                T0,
                "approval",
            )
            assert event[9] == settings.topic("quality.events.v1") and event[10] == 0
            assert event[11:] == ("qms.nonconformance.v1", 8, "4bf92f3577b34da6a3ce929d0e0e4736")

            before = verify_chain(conn)
            assert before.intact, before.broken
            victim_seq, victim_id = event[0], event[2]
            as_superuser(settings.dsn, tamper_sql(victim_seq, "typo fixed quietly"), conn)
            try:
                cli = subprocess.run(
                    [sys.executable, "-m", "qmsflow", "audit", "verify"],
                    env={**os.environ, "DATABASE_URL": settings.dsn},
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                broken = verify_chain(conn).broken
            finally:
                as_superuser(settings.dsn, tamper_sql(victim_seq, "MRB disposition"), conn)
            assert cli.returncode == 1, cli.stdout + cli.stderr
            assert f"BROKEN at seq {victim_seq} (quality_event {victim_id})" in cli.stdout
            assert broken is not None and (broken.seq, broken.record_id) == (victim_seq, victim_id)
            assert verify_chain(conn).intact


@pytest.fixture
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    from connectors.postgres_sink.migrations import migrate

    migrate(postgres_dsn, echo=lambda _line: None)
    with psycopg.connect(postgres_dsn) as connection:
        yield connection
        connection.rollback()


class TestRetention:
    def test_regulated_rows_move_to_the_archive_and_audit_stays(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        """Quality events past retention leave qms for archive in one step; the trail is kept."""
        marker = f"retention-{uuid.uuid4().hex[:8]}"
        old, recent = str(uuid.uuid4()), str(uuid.uuid4())
        for event_id, occurred in ((old, datetime(1990, 1, 1, tzinfo=UTC)), (recent, T0)):
            event = {
                **records.quality_event(event_id),
                "occurred_at": occurred,
                "source_record_id": marker,
            }
            row = quality_event_row(event, Coordinates(marker, 0, 0))
            conn.execute(
                f"INSERT INTO qms.quality_event ({', '.join(QUALITY_EVENT_COLUMNS)})"
                f" VALUES ({', '.join(['%s'] * len(row))})",
                row,
            )
        audit_rows = conn.execute("SELECT count(*) FROM audit.record_change").fetchone()
        now = datetime.now(UTC)
        policy = RetentionPolicy(
            record_type="quality_event",
            table="qms.quality_event",
            age_from="occurred_at",
            # only this test's 1990 row is that old: other tests' rows stay untouched
            days=(now - datetime(1996, 1, 1, tzinfo=UTC)).days,
            archive=True,
        )
        done = run_retention(conn, plan_retention([policy], now))
        assert done == {"quality_event": 1}
        left = conn.execute(
            "SELECT event_id::text FROM qms.quality_event WHERE source_record_id = %s", (marker,)
        ).fetchall()
        archived = conn.execute(
            "SELECT event_id::text, occurred_at, archived_at IS NOT NULL FROM archive.quality_event"
            " WHERE source_record_id = %s",
            (marker,),
        ).fetchall()
        assert left == [(recent,)]
        assert archived == [(old, datetime(1990, 1, 1, tzinfo=UTC), True)]
        assert conn.execute("SELECT count(*) FROM audit.record_change").fetchone() == audit_rows
        assert now - timedelta(days=policy.days) > datetime(1990, 1, 1, tzinfo=UTC)
