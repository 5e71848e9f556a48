"""Least privilege by migration: the analyst reads analytics only; the writer never edits audit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from connectors.postgres_sink.migrations import migrate

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection in one transaction, rolled back at the end (grants included)."""
    migrate(postgres_dsn, echo=lambda _line: None)
    with psycopg.connect(postgres_dsn) as connection:
        # the migrating login may SET ROLE only to roles it belongs to; the grant is undone
        # with the rest of the transaction
        for role in ("qmsflow_analyst", "qmsflow_writer"):
            member = connection.execute(
                "SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)
            ).fetchone()
            if not (member and member[0]):
                connection.execute(f"GRANT {role} TO current_user")
        yield connection
        connection.rollback()


def refused(conn: psycopg.Connection[Any], role: str, statement: str) -> bool:
    """Run `statement` as `role` in a savepoint; tell whether Postgres refused it."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {role}")
            conn.execute(statement)
            raise _Allowed
    except (errors.InsufficientPrivilege, errors.RaiseException):
        return True
    except _Allowed:
        return False


class _Allowed(Exception):
    """The statement ran: rolled back by raising out of the savepoint."""


WRITES_ANYWHERE = [
    "INSERT INTO qms.sink_offsets (consumer_group, topic, partition, next_offset)"
    " VALUES ('g', 't', 0, 1)",
    "UPDATE qms.quality_event SET site = site",
    "DELETE FROM qms.dead_letter",
    "INSERT INTO audit.record_change (seq) VALUES (0)",
    "UPDATE audit.record_change SET reason = reason",
    "DELETE FROM audit.record_change",
    "INSERT INTO archive.quality_event (event_id) VALUES (gen_random_uuid())",
    "INSERT INTO public.qmsflow_migrations (version, name, checksum) VALUES (-1, 'x', 'x')",
    "CREATE TABLE analytics.sneaky (x int)",
    "CREATE TABLE public.sneaky (x int)",
]


class TestAnalystRole:
    @pytest.mark.parametrize("statement", WRITES_ANYWHERE)
    def test_analyst_cannot_write_anywhere(
        self, conn: psycopg.Connection[Any], statement: str
    ) -> None:
        """INSERT, UPDATE, DELETE and CREATE are refused to the analyst in every schema."""
        assert refused(conn, "qmsflow_analyst", statement)

    def test_analyst_holds_no_write_privilege_on_any_relation(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        """No table or view in any schema grants the analyst INSERT, UPDATE, DELETE or TRUNCATE."""
        writable = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
            " AND has_table_privilege('qmsflow_analyst', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')"
        ).fetchall()
        assert writable == []

    @pytest.mark.parametrize(
        "table",
        [
            "qms.quality_event",
            "qms.dead_letter",
            "audit.record_change",
            "archive.quality_event",
            "public.qmsflow_migrations",
        ],
    )
    def test_analyst_cannot_read_outside_analytics(
        self, conn: psycopg.Connection[Any], table: str
    ) -> None:
        """SELECT on qms, audit, archive and the migration log is refused."""
        assert refused(conn, "qmsflow_analyst", f"SELECT count(*) FROM {table}")

    def test_analyst_reads_every_analytics_view(self, conn: psycopg.Connection[Any]) -> None:
        """Each view in analytics answers the analyst (through its owner's rights on qms)."""
        views = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.views WHERE table_schema = 'analytics'"
            )
        ]
        assert len(views) >= 9
        for view in views:
            assert not refused(conn, "qmsflow_analyst", f"SELECT * FROM analytics.{view} LIMIT 1")


class TestWriterRole:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE audit.record_change SET reason = 'x'",
            "DELETE FROM audit.record_change",
            "TRUNCATE audit.record_change",
            "UPDATE qms.quality_event SET site = site",
            "DELETE FROM qms.quality_event",
            "SELECT count(*) FROM archive.quality_event",
        ],
    )
    def test_writer_cannot_change_audit_nor_delete_records(
        self, conn: psycopg.Connection[Any], statement: str
    ) -> None:
        """UPDATE/DELETE on audit rows, and edits the sink never makes, are refused."""
        assert refused(conn, "qmsflow_writer", statement)

    def test_writer_inserts_what_the_sink_inserts(self, conn: psycopg.Connection[Any]) -> None:
        """The writer may insert offsets and read audit (the chain head), as the sink does."""
        assert not refused(
            conn,
            "qmsflow_writer",
            "INSERT INTO qms.sink_offsets (consumer_group, topic, partition, next_offset)"
            " VALUES ('roles-test', 't', 0, 1) ON CONFLICT (consumer_group, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset",
        )
        assert not refused(conn, "qmsflow_writer", "SELECT max(seq) FROM audit.record_change")

    def test_owner_is_refused_too_by_the_trigger(self, conn: psycopg.Connection[Any]) -> None:
        """Even the owning login cannot UPDATE or DELETE audit rows while the trigger is on."""
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"), conn.transaction():
            conn.execute(
                "INSERT INTO audit.record_change SELECT * FROM audit.record_change WHERE false"
            )
            conn.execute("DELETE FROM audit.record_change WHERE seq = -1")
            conn.execute("UPDATE audit.record_change SET reason = reason")
            # with no rows the row triggers do not fire; TRUNCATE's statement trigger does
            conn.execute("TRUNCATE audit.record_change")
