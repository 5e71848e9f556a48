"""The generated AsyncAPI document and ICDs against the code's own configuration."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from qmsflow.contracts.registry import read_lock
from qmsflow.errors import ConfigurationError, ContractError
from qmsflow.interface_docs.documents import ASYNCAPI_FILE, build_documents, stale_documents
from qmsflow.interface_docs.reasons import reason_codes
from qmsflow.interface_docs.systems import load_systems, parse_system
from qmsflow.settings import PROJECT_ROOT

TOPICS_TOML = PROJECT_ROOT / "qmsflow" / "config" / "topics.toml"
SCHEMAS = PROJECT_ROOT / "schemas" / "avro"
#: the systems the issue names; each needs its ICD
REQUIRED_SYSTEMS = {"QMS", "ERP", "MES", "LIMS", "EMS", "CMMS", "SUPPLIER_PORTAL"}


def declared_topics() -> dict[str, dict[str, Any]]:
    """topics.toml read directly (not through qmsflow.topics), defaults applied."""
    document = tomllib.loads(TOPICS_TOML.read_text("utf-8"))
    return {t["name"]: {**document["defaults"], **t} for t in document["topic"]}


@pytest.fixture(scope="module")
def documents() -> dict[Path, str]:
    return build_documents()


@pytest.fixture(scope="module")
def asyncapi(documents: dict[Path, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(documents[ASYNCAPI_FILE])
    return parsed


class TestAsyncApi:
    def test_every_declared_topic_is_a_channel_with_its_layout(
        self, asyncapi: dict[str, Any]
    ) -> None:
        """Channels are exactly topics.toml's topics, with partitions, retention and cleanup."""
        topics = declared_topics()
        channels = asyncapi["channels"]
        assert {c["address"] for c in channels.values()} == set(topics)
        for name, topic in topics.items():
            kafka = channels[name]["bindings"]["kafka"]
            assert kafka["partitions"] == topic["partitions"], name
            assert kafka["replicas"] == topic["replication_factor"], name
            config = kafka["topicConfiguration"]
            assert config["cleanup.policy"] == topic["cleanup_policy"].split(","), name
            assert config["retention.ms"] == int(topic["retention_days"] * 86_400_000), name

    def test_every_pinned_schema_version_is_a_message_of_its_channel(
        self, asyncapi: dict[str, Any]
    ) -> None:
        """Each channel carries one message per version its subject has in the lock file."""
        pinned: dict[str, set[tuple[int, int]]] = {}
        for entry in read_lock(SCHEMAS):
            pinned.setdefault(entry.subject, set()).add((entry.version, entry.schema_id))
        messages = asyncapi["components"]["messages"]
        for name, topic in declared_topics().items():
            subject = topic.get("value_subject", f"{name}-value")
            refs = asyncapi["channels"][name]["messages"].values()
            found = {
                (m["x-qmsflow-schema"]["version"], m["x-qmsflow-schema"]["id"])
                for m in (messages[r["$ref"].rsplit("/", 1)[1]] for r in refs)
            }
            assert found == pinned[subject], name

    def test_producers_send_and_consumers_receive(self, asyncapi: dict[str, Any]) -> None:
        """Every declared producer has a send operation; the ERP adapter receives commands."""
        sends = {
            (op["channel"]["$ref"].rsplit("/", 1)[1], op["summary"].split(" ")[0])
            for op in asyncapi["operations"].values()
            if op["action"] == "send"
        }
        for name, topic in declared_topics().items():
            for producer in topic.get("producers", []):
                assert (name, producer) in sends
        receives = [
            op["summary"]
            for op in asyncapi["operations"].values()
            if op["action"] == "receive"
            and op["channel"]["$ref"].endswith("/inventory.quarantine-commands.v1")
        ]
        assert any(s.startswith("qmsflow erp-adapter") for s in receives)

    def test_headers_keys_and_partitioning_are_described(self, asyncapi: dict[str, Any]) -> None:
        """Messages name the trace headers, the key and how the partition is chosen."""
        channel = asyncapi["channels"]["inventory.quarantine-commands.v1"]
        assert "lot_id" in channel["description"]
        assert "murmur2" in channel["x-qmsflow-partitioning"]
        message = asyncapi["components"]["messages"][
            channel["messages"]["inventory.quarantine-commands.v1.schema-v1"]["$ref"].rsplit(
                "/", 1
            )[1]
        ]
        assert {"traceparent", "tracestate", "correlation_id", "content-type"} <= set(
            message["headers"]["properties"]
        )
        assert message["bindings"]["kafka"]["key"]["type"] == "string"


class TestCommittedDocuments:
    def test_committed_documents_match_what_the_code_generates(self) -> None:
        """docs/asyncapi.* and docs/icd/*.md are regenerated whenever their sources change."""
        assert stale_documents() == [], "run `qmsflow icd generate` and commit the result"

    def test_a_changed_document_is_reported(self, tmp_path: Path) -> None:
        """The staleness check notices an edited, a missing and an orphaned document."""
        for path, text in build_documents().items():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text, encoding="utf-8")
        assert stale_documents(tmp_path) == []
        (tmp_path / "docs/icd/erp.md").write_text("edited\n", encoding="utf-8")
        (tmp_path / "docs/asyncapi.md").unlink()
        (tmp_path / "docs/icd/old-system.md").write_text("gone\n", encoding="utf-8")
        assert stale_documents(tmp_path) == [
            "docs/asyncapi.md: missing",
            "docs/icd/erp.md: differs from the code",
            "docs/icd/old-system.md: no system file generates it",
        ]


class TestSystems:
    def test_every_named_system_and_every_producer_has_a_system_file(self) -> None:
        """The seven systems of the issue and every external producer in topics.toml."""
        codes = {s.code for s in load_systems()}
        producers = {p for t in declared_topics().values() for p in t.get("producers", [])}
        assert codes >= REQUIRED_SYSTEMS
        assert producers - {"qmsflow"} <= codes

    def test_each_required_system_has_an_icd(self, documents: dict[Path, str]) -> None:
        """One ICD per system, with its SLA section and escalation path."""
        for system in load_systems():
            text = documents[Path(f"docs/icd/{system.slug}.md")]
            assert f"({system.code})" in text
            assert "## Escalation path" in text and "## Service levels" in text
        erp = documents[Path("docs/icd/erp.md")]
        assert "`erp-rejected`" in erp and "`erp-unrouted`" in erp
        assert "nonconformance-quarantine" in erp and "300 s from `recorded_at`" in erp

    def test_a_system_file_naming_an_unknown_reason_code_fails_the_generation(self) -> None:
        """Reason codes in a system file must exist in the code."""
        from qmsflow.interface_docs.documents import _check_references

        system = parse_system(
            {
                "code": "QMS",
                "name": "n",
                "owner": "o",
                "connection": "c",
                "description": "d",
                "dead_letter_reasons": ["no-such-reason"],
                "escalation": [{"when": "w", "signal": "s", "notify": "n"}],
            },
            "qms",
        )
        with pytest.raises(ConfigurationError, match="no-such-reason"):
            _check_references([system], {"qms.capa.v1"}, {"decode"}, set())

    def test_a_system_file_without_escalation_is_refused(self) -> None:
        """The escalation path is mandatory."""
        with pytest.raises(ConfigurationError, match="escalation"):
            parse_system(
                {"code": "QMS", "name": "n", "owner": "o", "connection": "c", "description": "d"},
                "qms",
            )


class TestReasonCodes:
    def test_every_contract_error_class_imported_here_is_found_by_reading_the_code(self) -> None:
        """The syntax-tree scan finds every ContractError subclass's reason code."""
        import connectors.erp_adapter.errors
        import connectors.erp_adapter.routing
        import qmsflow.quality.integrity  # noqa: F401  (defines UnresolvedReferences)

        def subclasses(cls: type) -> set[type]:
            return {c for s in cls.__subclasses__() for c in {s, *subclasses(s)}}

        imported = {ContractError.reason_code} | {
            str(getattr(c, "reason_code", "")) for c in subclasses(ContractError)
        }
        assert connectors.erp_adapter.errors and connectors.erp_adapter.routing
        scanned = {r.code for r in reason_codes()}
        assert imported <= scanned
        assert {"erp-unrouted", "erp-rejected", "unresolved-reference", "unexpected"} <= scanned
