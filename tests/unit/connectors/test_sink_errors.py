"""Which database errors reject one record and which stop, retry or reconnect the sink (pure)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from connectors.postgres_sink.sink import DatabaseVerdict, SinkRejected, database_verdict

REJECT = DatabaseVerdict.REJECT_RECORD
RECONNECT = DatabaseVerdict.RECONNECT
RETRY = DatabaseVerdict.RETRY_BATCH
WAIT = DatabaseVerdict.WAIT_AND_RETRY
FATAL = DatabaseVerdict.FATAL


def server_error(sqlstate: str) -> psycopg.Error:
    """The exception psycopg raises for a server error with this SQLSTATE."""
    return errors.lookup(sqlstate)(f"server said {sqlstate}")


class TestDatabaseVerdict:
    @pytest.mark.parametrize(
        ("sqlstate", "verdict"),
        [
            ("22021", REJECT),  # character_not_in_repertoire (a NUL the server refused)
            ("22001", REJECT),  # string_data_right_truncation
            ("22P02", REJECT),  # invalid_text_representation
            ("22P05", REJECT),  # untranslatable_character (\u0000 in jsonb)
            ("54000", REJECT),  # program_limit_exceeded: btree index row too large
            ("23502", REJECT),  # not_null_violation
            ("23503", REJECT),  # foreign_key_violation
            ("23505", REJECT),  # unique_violation on an index other than the conflict key
            ("23514", REJECT),  # check_violation
            ("08006", RECONNECT),  # connection_failure
            ("08003", RECONNECT),  # connection_does_not_exist
            ("57P01", RECONNECT),  # admin_shutdown (pg_terminate_backend, a restart)
            ("57P02", RECONNECT),  # crash_shutdown
            ("57P03", RECONNECT),  # cannot_connect_now (starting up, in recovery)
            ("40001", RETRY),  # serialization_failure
            ("40P01", RETRY),  # deadlock_detected
            ("53100", WAIT),  # disk_full
            ("53200", WAIT),  # out_of_memory
            ("58030", WAIT),  # io_error
            ("55P03", WAIT),  # lock_not_available (lock_timeout)
            ("57014", WAIT),  # query_canceled (statement_timeout)
            ("42501", FATAL),  # insufficient_privilege: a missing GRANT
            ("42P01", FATAL),  # undefined_table: migrations not run
            ("42601", FATAL),  # syntax_error: a code error
            ("21000", FATAL),  # cardinality_violation: DISTINCT ON no longer narrows the batch
            ("25P02", FATAL),  # in_failed_sql_transaction: a code error
            ("57P04", FATAL),  # database_dropped
            ("XX000", FATAL),  # internal_error
        ],
    )
    def test_server_errors_by_sqlstate(self, sqlstate: str, verdict: DatabaseVerdict) -> None:
        """The SQLSTATE decides: a record's values, the session, a transient state, or a bug."""
        error = server_error(sqlstate)
        assert error.sqlstate == sqlstate
        assert database_verdict(error) is verdict

    def test_program_limit_is_a_rejected_record_not_a_lost_connection(self) -> None:
        """ProgramLimitExceeded subclasses OperationalError, yet a connection is not the fault."""
        error = errors.ProgramLimitExceeded("index row size 6016 exceeds btree maximum 2704")
        assert isinstance(error, psycopg.OperationalError)
        assert database_verdict(error) is REJECT

    def test_client_side_nul_refusal_rejects_the_record(self) -> None:
        """A NUL in text is refused by psycopg before sending: a DataError without SQLSTATE."""
        error = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        assert error.sqlstate is None
        assert database_verdict(error) is REJECT

    def test_operational_error_without_sqlstate_is_a_lost_connection(self) -> None:
        """No answer from the server (a cut socket, a closed connection) means reconnect."""
        assert database_verdict(psycopg.OperationalError("consuming input failed")) is RECONNECT
        assert database_verdict(psycopg.OperationalError("the connection is closed")) is RECONNECT

    def test_a_closed_connection_overrides_the_sqlstate(self) -> None:
        """Whatever the error said, a connection that is now closed must be replaced."""
        error = server_error("22021")
        assert database_verdict(error, connection_closed=True) is RECONNECT

    @pytest.mark.parametrize(
        "error",
        [psycopg.ProgrammingError("wrong number of columns"), psycopg.InterfaceError("misuse")],
    )
    def test_other_client_side_errors_are_fatal(self, error: psycopg.Error) -> None:
        """Misuse errors raised by psycopg itself are code errors: retrying cannot help."""
        assert database_verdict(error) is FATAL


class TestSinkRejected:
    def test_reason_names_the_message_and_sqlstate(self) -> None:
        """The dead letter's reason is the database's message with its SQLSTATE."""
        refusal = SinkRejected(server_error("54000"))
        assert refusal.reason_code == "sink-rejected"
        assert refusal.sqlstate == "54000"
        assert str(refusal) == (
            "Postgres refused the record's rows: server said 54000 (SQLSTATE 54000)"
        )

    def test_client_side_refusal_says_it_has_no_sqlstate(self) -> None:
        """A NUL psycopg would not send is told apart from a server refusal."""
        refusal = SinkRejected(psycopg.DataError("PostgreSQL text fields cannot contain NUL"))
        assert refusal.sqlstate is None
        assert "cannot contain NUL" in str(refusal)
        assert "no SQLSTATE" in str(refusal)
