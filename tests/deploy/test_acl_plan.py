"""`qmsflow acl plan`: the ACLs match the topics and groups each component actually uses."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from connectors.erp_adapter.adapter import COMMANDS_TOPIC
from connectors.postgres_sink.sink import PostgresSink
from qmsflow.acl import Acl, faust_table_names, plan_acls
from qmsflow.cli import main
from qmsflow.settings import PROJECT_ROOT, Settings
from qmsflow.toggles import TOGGLES_TOPIC
from qmsflow.topics import load_catalog

STREAMS = PROJECT_ROOT / "streams"
#: a table declared in the stream code: app.Table("name", …) or the local table("name") helper
TABLE_CALL = re.compile(r"(?:\.Table|\btable)\(\s*\"([a-z0-9-]+)\"")
#: tables declared by name: the string keys of a module-level `…_TABLES = {…}` dict
TABLES_DICT = re.compile(r"(?ms)^[A-Z_]+_TABLES = \{(.*?)^\}")
TABLES_DICT_KEY = re.compile(r"^\s*\"([a-z0-9-]+)\":", re.M)
#: a topic the stream code names literally: settings.topic("…"), raw_topic("…") or a constant
TOPIC_LITERAL = re.compile(
    r"\"((?:qms|quality|inventory|capa|md|mes|lims|ems|cmms|supplier)\.[a-z0-9.-]+\.v[0-9]+)\""
)


@pytest.fixture(params=["", "prod."], ids=["no-prefix", "prefixed"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Settings of an environment, with and without a topic prefix."""
    return Settings(app_id="qmsflow", topic_prefix=request.param)


def names(acls: list[Acl], service: str, op: str, resource: str = "topic") -> set[str]:
    """Literal resource names a service may perform `op` on."""
    return {
        a.name
        for a in acls
        if a.service == service
        and a.resource_type == resource
        and op in a.operations
        and a.pattern == "literal"
    }


def source_text() -> str:
    """All of streams/*.py."""
    return "\n".join(p.read_text("utf-8") for p in sorted(STREAMS.glob("*.py")))


class TestWorker:
    def test_the_batch_runtime_may_use_its_own_group_and_no_more(self, settings: Settings) -> None:
        """Its consumer group is granted only when the worker runs the batch runtime."""
        batch = settings.model_copy(update={"worker_runtime": "batch"})
        granted = names(plan_acls(batch, load_catalog()), "worker", "Read", resource="group")
        assert batch.ingest_group in granted
        faust = names(plan_acls(settings, load_catalog()), "worker", "Read", resource="group")
        assert batch.ingest_group not in faust

    def test_changelog_topics_cover_every_table(self, settings: Settings) -> None:
        """The worker owns one changelog topic per Faust table in streams/*.py."""
        source = source_text()
        tables = set(TABLE_CALL.findall(source))
        for block in TABLES_DICT.findall(source):
            tables |= set(TABLES_DICT_KEY.findall(block))
        assert tables == set(faust_table_names())
        app_id = settings.topic(settings.app_id)
        acls = plan_acls(settings, load_catalog())
        expected = {f"{app_id}-{t}-changelog" for t in tables} | {f"{app_id}-__assignor-__leader"}
        owned = {a.name for a in acls if a.service == "worker" and "Create" in a.operations}
        assert owned == expected

    def test_every_topic_the_stream_code_names_is_allowed(self, settings: Settings) -> None:
        """Each topic literal in streams/*.py is readable or writable by the worker."""
        acls = plan_acls(settings, load_catalog())
        allowed = names(acls, "worker", "Read") | names(acls, "worker", "Write")
        literals = set(TOPIC_LITERAL.findall(source_text()))
        assert literals
        assert {settings.topic(t) for t in literals} <= allowed

    def test_reads_ingest_and_internal_topics(self, settings: Settings) -> None:
        """The worker reads every ingest, canonical and internal topic of the catalog."""
        catalog = load_catalog()
        reads = names(plan_acls(settings, catalog), "worker", "Read")
        for role in ("ingest", "canonical", "internal"):
            assert {settings.topic(s.name) for s in catalog.by_role(role)} <= reads

    def test_writes_what_the_catalog_says_qmsflow_produces(self, settings: Settings) -> None:
        """Every topic declared with producer qmsflow is writable by the worker, no other."""
        catalog = load_catalog()
        expected = {settings.topic(s.name) for s in catalog.topics if "qmsflow" in s.producers}
        acls = plan_acls(settings, catalog)
        faust_owned = {a.name for a in acls if a.service == "worker" and "Create" in a.operations}
        assert names(acls, "worker", "Write") - faust_owned == expected

    def test_group_is_the_faust_app_id(self, settings: Settings) -> None:
        """The worker's group is <prefix><app id>, the Faust app's id (streams/app.py)."""
        groups = names(plan_acls(settings, load_catalog()), "worker", "Read", "group")
        assert groups == {settings.topic(settings.app_id)}
        assert 'f"{settings.topic_prefix}{settings.app_id}"' in (STREAMS / "app.py").read_text()


class TestSink:
    def test_reads_exactly_the_topics_the_sink_subscribes(self, settings: Settings) -> None:
        """The sink may read the topics PostgresSink subscribes to, and no others."""
        sink = PostgresSink(None, None, consumer_group="g", topic_prefix=settings.topic_prefix)  # type: ignore[arg-type]
        assert names(plan_acls(settings, load_catalog()), "sink", "Read") == set(sink.topics)

    def test_group_and_dead_letters(self, settings: Settings) -> None:
        """The sink's group is <prefix><app id>-sink and it writes only dead letters."""
        acls = plan_acls(settings, load_catalog())
        assert names(acls, "sink", "Read", "group") == {settings.topic("qmsflow-sink")}
        assert names(acls, "sink", "Write") == {settings.topic("quality.dlq.v1")}
        sink_code = (PROJECT_ROOT / "connectors" / "postgres_sink" / "sink.py").read_text()
        assert 'settings.topic(f"{settings.app_id}-sink")' in sink_code


class TestErpAdapterAndMigrate:
    def test_erp_adapter_reads_only_quarantine_commands(self, settings: Settings) -> None:
        """The ERP adapter reads commands and toggles in its own groups, writes dead letters."""
        acls = plan_acls(settings, load_catalog())
        assert names(acls, "erp-adapter", "Read") == {
            settings.topic(COMMANDS_TOPIC),
            settings.topic(TOGGLES_TOPIC),
        }
        assert names(acls, "erp-adapter", "Write") == {settings.topic("quality.dlq.v1")}
        assert names(acls, "erp-adapter", "Read", "group") == {
            settings.topic("qmsflow-erp-adapter")
        }
        route_groups = {
            a.name
            for a in acls
            if a.service == "erp-adapter" and a.resource_type == "group" and a.pattern == "prefixed"
        }
        assert route_groups == {settings.topic("qmsflow-erp-adapter-")}
        adapter_code = (PROJECT_ROOT / "connectors" / "erp_adapter" / "adapter.py").read_text()
        assert 'settings.topic(f"{settings.app_id}-erp-adapter")' in adapter_code
        assert 'f"{group}-{self.route.name}"' in adapter_code  # a route's group, under the prefix

    def test_every_reader_of_the_toggles_may_read_them(self, settings: Settings) -> None:
        """Each service that builds a ToggleReader may read the toggles topic."""
        acls = plan_acls(settings, load_catalog())
        readers = {
            service
            for service, path in (
                ("worker", PROJECT_ROOT / "streams"),
                ("erp-adapter", PROJECT_ROOT / "connectors" / "erp_adapter"),
                ("sink", PROJECT_ROOT / "connectors" / "postgres_sink"),
            )
            if any("ToggleReader(" in f.read_text() for f in path.glob("*.py"))
        }
        assert readers >= {"worker", "erp-adapter"}
        for service in readers:
            assert settings.topic(TOGGLES_TOPIC) in names(acls, service, "Read"), service

    def test_migrate_may_create_every_declared_topic(self, settings: Settings) -> None:
        """The migrate Job's account may create each catalog topic."""
        catalog = load_catalog()
        created = names(plan_acls(settings, catalog), "migrate", "Create")
        assert created == {settings.topic(s.name) for s in catalog.topics}

    def test_every_name_carries_the_prefix(self, settings: Settings) -> None:
        """With a topic prefix, every topic and group ACL is inside the environment."""
        assert all(
            a.name.startswith(settings.topic_prefix) for a in plan_acls(settings, load_catalog())
        )


class TestCommand:
    def test_prints_kafka_acls_commands(self) -> None:
        """`acl plan` prints one kafka-acls.sh --add command per ACL, per account."""
        result = CliRunner().invoke(main, ["acl", "plan", "--principal", "sink=User:sink-prod"])
        assert result.exit_code == 0, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("kafka-acls.sh")]
        assert lines and all("--add --allow-principal" in line for line in lines)
        principals = {re.search(r"--allow-principal (\S+)", line)[1] for line in lines}  # type: ignore[index]
        assert principals == {
            "User:qmsflow-worker",
            "User:sink-prod",
            "User:qmsflow-erp-adapter",
            "User:qmsflow-migrate",
        }
        assert "--resource-pattern-type prefixed" in result.output  # cdc.erp. and md-reader

    def test_table_format(self) -> None:
        """`acl plan --format table` prints a header and one row per ACL."""
        result = CliRunner().invoke(main, ["acl", "plan", "--format", "table"])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0].split() == [
            "principal",
            "resource",
            "name",
            "pattern",
            "operations",
        ]

    def test_bad_principal_is_refused(self) -> None:
        """A --principal that names no service fails with what was expected."""
        result = CliRunner().invoke(main, ["acl", "plan", "--principal", "nobody=User:x"])
        assert result.exit_code == 2
        assert "SERVICE=PRINCIPAL" in result.output
