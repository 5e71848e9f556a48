"""The pure parts of the local Kafka launcher: configuration, version pin, error wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmsflow.errors import StackError
from qmsflow.settings import Settings
from qmsflow.stack.kafka import (
    LocalKafka,
    first_error,
    kafka_version,
    readiness_error,
    render_server_properties,
)


def _parse(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


class TestServerProperties:
    def test_one_node_kraft_cluster(self, tmp_path: Path) -> None:
        """The node is broker and controller, voting alone on the port above the broker's."""
        properties = _parse(render_server_properties(19092, tmp_path / "data"))

        assert properties["process.roles"] == "broker,controller"
        assert properties["node.id"] == "1"
        assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
        assert properties["listeners"] == (
            "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
        )
        assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
        assert properties["log.dirs"] == str(tmp_path / "data")

    def test_single_replica_internal_topics(self, tmp_path: Path) -> None:
        """Internal topics ask for one replica, the most a single broker can hold."""
        properties = _parse(render_server_properties(19092, tmp_path))

        assert properties["offsets.topic.replication.factor"] == "1"
        assert properties["transaction.state.log.replication.factor"] == "1"
        assert properties["transaction.state.log.min.isr"] == "1"
        assert properties["group.initial.rebalance.delay.ms"] == "0"

    def test_topics_are_never_created_implicitly(self, tmp_path: Path) -> None:
        """Producing to an undeclared topic fails instead of creating it."""
        properties = _parse(render_server_properties(19092, tmp_path))

        assert properties["auto.create.topics.enable"] == "false"

    def test_port_follows_settings(self, tmp_path: Path) -> None:
        """Another port moves both listeners together."""
        properties = _parse(render_server_properties(29092, tmp_path))

        assert properties["listeners"] == (
            "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
        )


class TestKafkaVersion:
    def test_read_from_the_pom(self) -> None:
        """The version comes from the pom's kafka.version property, its single source."""
        assert kafka_version() == "4.1.1"

    def test_missing_property(self, tmp_path: Path) -> None:
        """A pom without kafka.version is a StackError naming the file."""
        pom = tmp_path / "pom.xml"
        pom.write_text("<project><properties/></project>")

        with pytest.raises(StackError, match=r"kafka\.version"):
            kafka_version(pom)


class TestReadinessError:
    def test_names_address_wait_and_log(self, tmp_path: Path) -> None:
        """The message says where the broker should answer, how long we waited, and why."""
        log = tmp_path / "broker.log"

        message = readiness_error("127.0.0.1:19092", 90.4, log, "ERROR Address already in use")

        assert "127.0.0.1:19092" in message
        assert "within 90 s" in message
        assert str(log) in message
        assert message.endswith("ERROR Address already in use")


class TestEnsureJars:
    def test_cached_class_path_is_reused(self, tmp_path: Path) -> None:
        """With the completion marker present, no download runs and the cached folder is used."""
        settings = Settings(cache_dir=tmp_path, stack_dir=tmp_path / "stack")
        kafka = LocalKafka(settings)
        kafka.libs.mkdir(parents=True)
        (kafka.libs / "kafka_2.13-4.1.1.jar").write_bytes(b"")
        kafka.libs_marker.write_text("1 jar\n")
        lines: list[str] = []

        assert kafka.ensure_jars(lines.append) == kafka.libs
        assert lines == []


class TestFirstError:
    def test_cause_above_the_stack_trace(self) -> None:
        """The first ERROR line is the cause; the stack trace under it is not."""
        log = (
            "[2026-01-01 00:00:00,000] INFO starting (kafka.Kafka)\n"
            "[2026-01-01 00:00:01,000] ERROR Unable to bind 127.0.0.1:19093 (kafka.network)\n"
            "\tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:634)\n"
            "[2026-01-01 00:00:01,100] ERROR exiting (kafka.Kafka)\n"
        )

        assert first_error(log) == (
            "[2026-01-01 00:00:01,000] ERROR Unable to bind 127.0.0.1:19093 (kafka.network)"
        )

    def test_none_without_errors(self) -> None:
        """A log without ERROR or FATAL lines has no cause to show."""
        assert first_error("[2026-01-01 00:00:00,000] INFO started (kafka.Kafka)\n") is None
