"""The local development stack: a Kafka broker, a Postgres server and a Kafka Connect worker.

Run without Docker. `up` starts whatever is not configured externally
(`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `KAFKA_CONNECT_URL`) and leaves it running, in this
order: broker, Postgres (with the demo CDC source database `erp`), then Connect, whose state
lives in the broker. The servers keep their data in `settings.stack_dir` between runs; calling
`up` again is a no-op once all answer. `down` stops them in the reverse order.
"""

from __future__ import annotations

from typing import Any

from qmsflow.settings import Settings
from qmsflow.stack.connect import CONNECT_URL_ENV, LocalConnect, connect_url
from qmsflow.stack.kafka import LocalKafka
from qmsflow.stack.postgres import LocalPostgres
from qmsflow.stack.process import Echo, echo_stdout

__all__ = ["Echo", "LocalConnect", "LocalKafka", "LocalPostgres", "down", "status", "up"]


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
    external_connect = connect_url(settings)
    if external_connect is None:
        LocalConnect(settings).up(echo)
    else:
        echo(f"Kafka Connect: using {CONNECT_URL_ENV}={external_connect}")


def down(settings: Settings, echo: Echo = echo_stdout) -> None:
    """Stop the local servers; data stays in `settings.stack_dir` for the next `up`."""
    if connect_url(settings) is None:
        LocalConnect(settings).down(echo)
    if settings.kafka_bootstrap_servers is None:
        LocalKafka(settings).down(echo)
    if settings.database_url is None:
        LocalPostgres(settings).down(echo)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """State of each server: `{"kafka": {…}, "postgres": {…}, "connect": {…}}`.

    A server configured externally reports the state "external".
    """
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
    external_connect = connect_url(settings)
    connect: dict[str, Any] = (
        {"state": "external", "url": external_connect}
        if external_connect is not None
        else LocalConnect(settings).status()
    )
    return {"kafka": kafka, "postgres": postgres, "connect": connect}
