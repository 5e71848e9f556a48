"""The local development stack: one Kafka broker and one Postgres server, run without Docker.

`up` starts whatever is not configured externally (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`)
and leaves it running; both servers keep their data in `settings.stack_dir` between runs.
Calling `up` again is a no-op once both answer.
"""

from __future__ import annotations

from typing import Any

from qmsflow.settings import Settings
from qmsflow.stack.kafka import LocalKafka
from qmsflow.stack.postgres import LocalPostgres
from qmsflow.stack.process import Echo, echo_stdout

__all__ = ["Echo", "LocalKafka", "LocalPostgres", "down", "status", "up"]


def up(settings: Settings, echo: Echo = echo_stdout) -> None:
    """Start the local servers not configured externally; raises StackError on failure."""
    if settings.kafka_bootstrap_servers is None:
        LocalKafka(settings).up(echo)
    else:
        echo(f"Kafka: using KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}")
    if settings.database_url is None:
        LocalPostgres(settings).up(echo)
    else:
        echo("Postgres: using DATABASE_URL")


def down(settings: Settings, echo: Echo = echo_stdout) -> None:
    """Stop the local servers; data stays in `settings.stack_dir` for the next `up`."""
    if settings.kafka_bootstrap_servers is None:
        LocalKafka(settings).down(echo)
    if settings.database_url is None:
        LocalPostgres(settings).down(echo)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """State of each server: `{"kafka": {...}, "postgres": {...}}`, "external" when configured."""
    kafka: dict[str, Any] = (
        {"state": "external", "bootstrap_servers": settings.kafka_bootstrap_servers}
        if settings.kafka_bootstrap_servers is not None
        else LocalKafka(settings).status()
    )
    postgres: dict[str, Any] = (
        {"state": "external"}  # the URL may carry a password; it is not echoed
        if settings.database_url is not None
        else LocalPostgres(settings).status()
    )
    return {"kafka": kafka, "postgres": postgres}
