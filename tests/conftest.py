"""Session fixtures for the servers integration tests talk to, and per-test isolation.

Where a server comes from, first match wins:

1. the environment: `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL` (CI services, a shared cluster);
2. testcontainers, when a Docker engine answers (stopped at the end of the session);
3. the local stack (`qmsflow stack up`), started if needed and left running: `make` targets
   own its lifecycle, and a warm broker saves ~5 s per test session.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from functools import lru_cache

import pytest

from qmsflow.settings import Settings
from qmsflow.stack.process import Echo

#: the images testcontainers runs; Postgres matches the local stack's major version
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:15"


@lru_cache(maxsize=1)
def _docker_answers() -> bool:
    """Tell whether a Docker engine answers a ping (a client without a daemon does not)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    # docker-py leaks its socket when a unix socket refuses the connection, and leaked sockets
    # are errors under our warning filters; so a local socket is probed here first
    if host.startswith("unix://"):
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(host.removeprefix("unix://"))
            except OSError:
                return False
    try:
        import docker

        client = docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no client library, no daemon, no permission: all mean "no Docker"
        return False


def _terminal_echo(pytestconfig: pytest.Config) -> Echo:
    """Print the stack's progress past pytest's capture: the first jar fetch takes minutes."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def echo(line: str) -> None:
        if capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    return echo


@pytest.fixture(scope="session")
def stack_settings() -> Settings:
    """Read the settings from the environment, as the CLI does."""
    return Settings()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_settings: Settings, pytestconfig: pytest.Config) -> Iterator[str]:
    """Yield the bootstrap servers of a broker for integration tests."""
    if stack_settings.kafka_bootstrap_servers is not None:
        yield stack_settings.kafka_bootstrap_servers
    elif _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        from qmsflow.stack import LocalKafka

        kafka = LocalKafka(stack_settings)
        kafka.up(_terminal_echo(pytestconfig))
        yield kafka.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_dsn(stack_settings: Settings, pytestconfig: pytest.Config) -> Iterator[str]:
    """Yield the DSN of a Postgres database for integration tests, as role `qmsflow`."""
    if stack_settings.database_url is not None:
        yield stack_settings.database_url
    elif _docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(
            POSTGRES_IMAGE, username="qmsflow", password="qmsflow", dbname="qmsflow"
        ) as container:
            yield container.get_connection_url(driver=None)
    else:
        from qmsflow.stack import LocalPostgres

        LocalPostgres(stack_settings).up(_terminal_echo(pytestconfig))
        yield stack_settings.dsn


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """Give this test a unique prefix for its topics and consumer groups (`t1a2b3c4d.`).

    Its topics are deleted afterwards: a broker keeps files open for every partition, and a full
    run creates thousands of them (one broker hit its 20,000 open-files limit without this).
    """
    prefix = f"t{uuid.uuid4().hex[:8]}."
    yield prefix
    if "kafka_bootstrap" in request.fixturenames:
        _delete_topics(request.getfixturevalue("kafka_bootstrap"), prefix)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # already gone, or deleted by the test itself
                future.result()
