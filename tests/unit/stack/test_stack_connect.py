"""The local Connect worker's configuration and the Debezium connector file and registration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from connectors.debezium import registration
from connectors.debezium.registration import ConnectorError, MemoryConnect
from qmsflow.quality.golden_record import load_survivorship_rules
from qmsflow.settings import Settings
from qmsflow.stack.connect import (
    CONNECT_PORT,
    DEBEZIUM_POSTGRES,
    LocalConnect,
    connect_url,
    connect_version,
    lists_debezium,
    render_worker_properties,
    worker_environment,
)
from qmsflow.stack.postgres import ERP_SCHEMA, REPLICATION_SETTINGS, erp_layout


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


def _schema_tables() -> list[str]:
    """The `<schema>.<table>` names erp_schema.sql creates, in file order."""
    return re.findall(r"create table if not exists (\w+\.\w+)", ERP_SCHEMA.read_text())


class TestWorkerProperties:
    def test_state_topics_are_prefixed_and_unreplicated(self) -> None:
        """The worker keeps its state in qmsflow-connect-* topics with one replica each."""
        props = _properties(render_worker_properties("127.0.0.1:19092", CONNECT_PORT))

        assert props["bootstrap.servers"] == "127.0.0.1:19092"
        assert props["group.id"] == "qmsflow-connect"
        for kind in ("config", "offset", "status"):
            assert props[f"{kind}.storage.topic"].startswith("qmsflow-connect-")
            assert props[f"{kind}.storage.replication.factor"] == "1"

    def test_a_second_worker_has_its_own_group_and_state_topics(self) -> None:
        """A test's own worker joins no other cluster: its group and state topics are its own."""
        props = _properties(
            render_worker_properties("b:9092", 18999, "t1a2b3c4d.connect", "t1a2b3c4d.connect-")
        )

        assert props["group.id"] == "t1a2b3c4d.connect"
        assert props["listeners"] == "http://127.0.0.1:18999"
        for kind, topic in (("config", "configs"), ("offset", "offsets"), ("status", "status")):
            assert props[f"{kind}.storage.topic"] == f"t1a2b3c4d.connect-{topic}"

    def test_local_worker_port_comes_from_the_settings(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """QMSFLOW_CONNECT_PORT moves the local worker, so two checkouts can run side by side."""
        monkeypatch.delenv("QMSFLOW_CONNECT_PORT", raising=False)
        assert LocalConnect(Settings()).url == f"http://127.0.0.1:{CONNECT_PORT}"
        assert LocalConnect(Settings(connect_port=18183)).url == "http://127.0.0.1:18183"

    def test_json_without_schemas(self) -> None:
        """Keys and values are plain JSON: the Debezium envelope without a schema wrapper."""
        props = _properties(render_worker_properties("b:9092", CONNECT_PORT))

        for side in ("key", "value"):
            assert props[f"{side}.converter"] == "org.apache.kafka.connect.json.JsonConverter"
            assert props[f"{side}.converter.schemas.enable"] == "false"

    def test_rest_on_loopback(self) -> None:
        """The REST API listens on 127.0.0.1 at the given port and advertises that address."""
        props = _properties(render_worker_properties("b:9092", 18083))

        assert props["listeners"] == "http://127.0.0.1:18083"
        assert (props["rest.advertised.host.name"], props["rest.advertised.port"]) == (
            "127.0.0.1",
            "18083",
        )

    def test_env_provider_reads_only_cdc_variables(self) -> None:
        """Connector placeholders resolve through EnvVarConfigProvider, limited to CDC_*."""
        props = _properties(render_worker_properties("b:9092", CONNECT_PORT))

        assert props["config.providers"] == "env"
        assert props["config.providers.env.class"].endswith(".EnvVarConfigProvider")
        assert props["config.providers.env.param.allowlist.pattern"] == "^CDC_.*"

    def test_version_from_pom(self) -> None:
        """The worker's Kafka version is the pom's, the broker's 4.1.1."""
        assert connect_version() == "4.1.1"


class TestConnectUrl:
    def test_unset_means_local(self) -> None:
        """Without KAFKA_CONNECT_URL (or with it blank) the local worker is used."""
        assert connect_url(Settings()) is None
        assert connect_url(Settings(kafka_connect_url="  ")) is None

    def test_external_url_without_trailing_slash(self) -> None:
        """A configured URL is used as given, minus a trailing slash."""
        assert (
            connect_url(Settings(kafka_connect_url="http://connect:8083/")) == "http://connect:8083"
        )


class TestReadiness:
    def test_debezium_listed(self) -> None:
        """A plugin list holding Debezium's Postgres connector means the worker is ready."""
        plugins = [{"class": DEBEZIUM_POSTGRES, "type": "source", "version": "3.6.1.Final"}]

        assert lists_debezium(plugins)

    def test_other_answers_are_not_ready(self) -> None:
        """An empty list, another connector or an error document is not ready."""
        assert not lists_debezium([])
        assert not lists_debezium([{"class": "org.example.Other"}])
        assert not lists_debezium({"error_code": 500})
        assert not lists_debezium(None)


class TestLocalDatabase:
    def test_logical_replication_configured(self) -> None:
        """The local Postgres runs with wal_level=logical and room for per-test slots."""
        assert REPLICATION_SETTINGS["wal_level"] == "logical"
        assert int(REPLICATION_SETTINGS["max_replication_slots"]) >= 10
        assert int(REPLICATION_SETTINGS["max_wal_senders"]) >= 10

    def test_every_table_has_full_replica_identity(self) -> None:
        """Each table of the schema is altered to REPLICA IDENTITY FULL."""
        text = ERP_SCHEMA.read_text()

        for table in _schema_tables():
            assert re.search(rf"alter table {re.escape(table)}\s+replica identity full", text)

    def test_every_table_is_published(self) -> None:
        """The publication's table list names exactly the tables the schema creates."""
        text = ERP_SCHEMA.read_text()
        published = re.search(r"alter publication qmsflow_cdc set table([^;]+);", text)

        assert published is not None
        assert re.findall(r"[\w.]+", published.group(1)) == _schema_tables()

    def test_one_schema_per_source_system(self) -> None:
        """Tables live in one schema per plant system, each named after its system."""
        schemas = {table.split(".")[0] for table in _schema_tables()}

        assert schemas == {"erp", "plm", "mes", "cmms", "qms", "hr", "lms", "portal"}

    def test_every_survivorship_source_is_a_table(self) -> None:
        """Each [[sources]] table of the survivorship rules exists, in its system's schema."""
        tables = set(_schema_tables())

        for source in load_survivorship_rules().sources:
            assert f"{source.system.lower()}.{source.table}" in tables, source

    def test_layout_stamp_follows_the_schema_file(self, tmp_path: Path) -> None:
        """The layout stamp is the schema file's hash: any edit asks for a rebuild."""
        schema = tmp_path / "schema.sql"
        schema.write_text("create table t (id int primary key);")
        before = erp_layout(schema)
        schema.write_text("create table t (id int primary key, x int);")

        assert erp_layout(schema) != before
        assert erp_layout() == erp_layout(ERP_SCHEMA)


class TestConnectorFile:
    def test_loads(self) -> None:
        """The ERP connector file is a named Debezium Postgres config of string values."""
        spec = registration.load(registration.ERP_POSTGRES)

        assert spec.name == "qmsflow-erp-postgres"
        assert spec.config["connector.class"] == DEBEZIUM_POSTGRES
        assert spec.config["plugin.name"] == "pgoutput"
        assert spec.config["topic.prefix"] == "cdc.erp"
        assert spec.config["tombstones.on.delete"] == "true"

    def test_captures_every_schema_table(self) -> None:
        """table.include.list names exactly the tables erp_schema.sql creates."""
        spec = registration.load(registration.ERP_POSTGRES)

        included = spec.config["table.include.list"].split(",")
        assert included == _schema_tables()

    def test_local_worker_sets_every_placeholder(self) -> None:
        """The local worker's environment defines every ${env:…} the shared file reads."""
        spec = registration.load(registration.ERP_POSTGRES)

        names = registration.placeholders(spec.config)
        assert names == set(worker_environment(Settings()))
        assert all(name.startswith("CDC_") for name in names)

    def test_source_database_is_beside_the_sink_database(self) -> None:
        """Host and port follow DATABASE_URL when set, else the local stack's Postgres port."""
        local = worker_environment(Settings(database_url=None, postgres_port=54339))
        assert (local["CDC_ERP_DATABASE_HOSTNAME"], local["CDC_ERP_DATABASE_PORT"]) == (
            "127.0.0.1",
            "54339",
        )
        external = worker_environment(
            Settings(database_url="postgresql://sink:pw@db.plant.example:6543/qmsflow")
        )
        assert external["CDC_ERP_DATABASE_HOSTNAME"] == "db.plant.example"
        assert external["CDC_ERP_DATABASE_PORT"] == "6543"

    def test_non_string_value_rejected(self, tmp_path: Path) -> None:
        """A number where Connect expects a string is refused, naming the key."""
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"name": "x", "config": {"connector.class": "C", "port": 1}}))

        with pytest.raises(ConnectorError, match="port is int"):
            registration.load(path)


class TestConfigSubstitution:
    def test_overrides_rename_and_replace(self) -> None:
        """Overrides replace config keys; a `name` override renames the connector."""
        spec = registration.load(registration.ERP_POSTGRES).with_overrides(
            {"name": "t1.erp", "topic.prefix": "t1.cdc.erp", "slot.name": "qmsflow_erp_t1"}
        )

        assert spec.name == "t1.erp"
        assert "name" not in spec.config
        assert spec.config["topic.prefix"] == "t1.cdc.erp"
        assert spec.config["slot.name"] == "qmsflow_erp_t1"

    def test_resolve_substitutes_inside_values(self) -> None:
        """`${env:NAME}` is replaced wherever it appears in a value."""
        config = {"a": "${env:CDC_HOST}:${env:CDC_PORT}", "b": "plain"}

        resolved = registration.resolve(config, {"CDC_HOST": "db", "CDC_PORT": "5432"})

        assert resolved == {"a": "db:5432", "b": "plain"}

    def test_resolve_names_missing_variables(self) -> None:
        """Every unset variable is named in one error."""
        with pytest.raises(ConnectorError, match="CDC_A, CDC_B"):
            registration.resolve({"x": "${env:CDC_B}", "y": "${env:CDC_A}"}, {})

    def test_slot_name_from_topic_prefix(self) -> None:
        """A topic prefix becomes a valid, distinct slot name; no prefix keeps the base name."""
        assert registration.slot_name("t1a2b3c4d.") == "qmsflow_erp_t1a2b3c4d"
        assert registration.slot_name("Staging-EU.") == "qmsflow_erp_staging_eu"
        assert registration.slot_name("") == "qmsflow_erp"

    def test_slot_name_too_long(self) -> None:
        """A prefix that would exceed Postgres' 63-character names is refused."""
        with pytest.raises(ConnectorError, match="63"):
            registration.slot_name("x" * 60)


class TestRegister:
    def test_creates_then_updates(self) -> None:
        """Registering twice PUTs the same config twice: created, then left as it is."""
        worker = MemoryConnect()

        first = registration.register("http://w:8083", transport=worker)
        second = registration.register("http://w:8083/", transport=worker)

        assert first == second
        puts = [url for method, url in worker.requests if method == "PUT"]
        assert puts == ["http://w:8083/connectors/qmsflow-erp-postgres/config"] * 2
        assert worker.configs["qmsflow-erp-postgres"]["topic.prefix"] == "cdc.erp"

    def test_placeholders_are_left_to_the_worker(self) -> None:
        """The config sent still holds ${env:…}: secrets never pass through the client."""
        worker = MemoryConnect()

        registration.register("http://w:8083", transport=worker)

        sent = worker.configs["qmsflow-erp-postgres"]
        assert sent["database.password"] == "${env:CDC_ERP_DATABASE_PASSWORD}"

    def test_waits_for_running(self) -> None:
        """A task still starting is polled until it reports RUNNING."""
        worker = MemoryConnect(task_states=["UNASSIGNED", "RUNNING"])

        registration.register("http://w:8083", transport=worker)

        statuses = [url for method, url in worker.requests if method == "GET"]
        assert len(statuses) == 2

    def test_failed_task_raises_with_trace(self) -> None:
        """A FAILED task ends the wait with the worker's stack trace in the error."""
        worker = MemoryConnect(task_states=["FAILED"])

        with pytest.raises(ConnectorError, match=r"(?s)task 0 FAILED.*connection refused"):
            registration.register("http://w:8083", transport=worker)

    def test_rejected_config_raises_with_message(self) -> None:
        """A config the worker refuses raises with the worker's validation message."""
        worker = MemoryConnect(reject="Connector configuration is invalid: slot.name")

        with pytest.raises(ConnectorError, match=r"answered 400.*slot\.name"):
            registration.register("http://w:8083", transport=worker)

    def test_times_out(self) -> None:
        """A task never RUNNING within the timeout raises with the last status seen."""
        worker = MemoryConnect(task_states=["UNASSIGNED"])

        with pytest.raises(ConnectorError, match="UNASSIGNED"):
            registration.register("http://w:8083", timeout=0, transport=worker)

    def test_delete(self) -> None:
        """Deleting reports whether the connector existed."""
        worker = MemoryConnect()
        registration.register("http://w:8083", transport=worker)

        assert registration.delete("http://w:8083", "qmsflow-erp-postgres", transport=worker)
        assert not registration.delete("http://w:8083", "qmsflow-erp-postgres", transport=worker)

    def test_delete_stops_tasks_first(self) -> None:
        """The connector is stopped, and seen STOPPED without tasks, before it is deleted."""
        worker = MemoryConnect()
        registration.register("http://w:8083", transport=worker)
        worker.requests.clear()

        registration.delete("http://w:8083", "qmsflow-erp-postgres", transport=worker)

        assert [method for method, _ in worker.requests] == ["PUT", "GET", "DELETE"]
        assert worker.requests[0][1].endswith("/qmsflow-erp-postgres/stop")
