"""The development stack's servers: a broker that carries messages, a Postgres that answers."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where the stubs declare it; admin re-exports it

from qmsflow import stack
from qmsflow.settings import Settings

pytestmark = pytest.mark.integration


class TestBroker:
    def test_topic_round_trip(self, kafka_bootstrap: str, topic_prefix: str) -> None:
        """A created topic takes a produced message and gives it back to a consumer group."""
        topic = f"{topic_prefix}stack.roundtrip"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result(timeout=30)
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topic, key=b"lot-1", value=b"quarantined")
        assert producer.flush(30) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"{topic_prefix}stack",
                "auto.offset.reset": "earliest",
            }
        )
        try:
            consumer.subscribe([topic])
            deadline = time.monotonic() + 30
            message = None
            while message is None and time.monotonic() < deadline:
                polled = consumer.poll(1.0)
                if polled is not None and polled.error() is None:
                    message = polled
        finally:
            consumer.close()
            admin.delete_topics([topic])

        assert message is not None, f"no message on {topic} within 30 s"
        assert (message.key(), message.value()) == (b"lot-1", b"quarantined")


class TestPostgres:
    def test_answers_as_qmsflow(self, postgres_dsn: str, stack_settings: Settings) -> None:
        """The database answers `select version()` to the application's role."""
        with psycopg.connect(postgres_dsn, connect_timeout=10) as connection:
            row = connection.execute("select version(), current_user").fetchone()

        assert row is not None
        version, user = row
        assert version.startswith("PostgreSQL")
        if stack_settings.database_url is None:
            assert user == "qmsflow"


class TestLocalStack:
    def test_second_up_is_a_quick_no_op(self, stack_settings: Settings) -> None:
        """Starting a running stack again returns at once and keeps its data."""
        if stack_settings.kafka_bootstrap_servers or stack_settings.database_url:
            pytest.skip("KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL set: no local stack to test")
        stack.up(stack_settings, echo=lambda _: None)
        table = f"stack_survivor_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(stack_settings.dsn, autocommit=True) as connection:
            connection.execute(f"create table {table} (lot text primary key)")
            connection.execute(f"insert into {table} values ('L-42')")
        lines: list[str] = []

        started = time.monotonic()
        stack.up(stack_settings, echo=lines.append)
        elapsed = time.monotonic() - started

        try:
            with psycopg.connect(stack_settings.dsn) as connection:
                rows = connection.execute(f"select lot from {table}").fetchall()
        finally:
            with psycopg.connect(stack_settings.dsn, autocommit=True) as connection:
                connection.execute(f"drop table if exists {table}")
        assert elapsed < 5, f"second up took {elapsed:.1f} s: {lines}"
        assert all("already running" in line for line in lines), lines
        assert rows == [("L-42",)]

    def test_status_reports_all_running(self, stack_settings: Settings) -> None:
        """After `up`, status reports the broker, the database and Kafka Connect as running."""
        if stack_settings.kafka_bootstrap_servers or stack_settings.database_url:
            pytest.skip("KAFKA_BOOTSTRAP_SERVERS or DATABASE_URL set: no local stack to test")
        stack.up(stack_settings, echo=lambda _: None)

        states = {server: state["state"] for server, state in stack.status(stack_settings).items()}

        assert states == {"kafka": "running", "postgres": "running", "connect": "running"}
