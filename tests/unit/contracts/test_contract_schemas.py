"""The committed schema files honour the contract spec's shape rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmsflow.contracts import FileSchemaRegistry
from qmsflow.contracts.registry import read_lock
from qmsflow.settings import PROJECT_ROOT

SCHEMAS_DIR = PROJECT_ROOT / "schemas" / "avro"
CANONICAL_SUBJECT = "quality.events.v1-value"
DEAD_LETTER_SUBJECT = "quality.dlq.v1-value"
NONCONFORMANCE_SUBJECT = "qms.nonconformance.v1-value"


def newest_document(registry: FileSchemaRegistry, subject: str) -> dict[str, Any]:
    """Read the newest version's schema file as JSON."""
    version = registry.latest(subject).version
    document: dict[str, Any] = json.loads(
        (SCHEMAS_DIR / subject / f"v{version}.avsc").read_text(encoding="utf-8")
    )
    return document


def without_docs(node: Any) -> Any:
    """Strip every doc from a schema node, leaving names and types to compare."""
    if isinstance(node, dict):
        return {k: without_docs(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [without_docs(v) for v in node]
    return node


def envelope(document: dict[str, Any]) -> list[Any]:
    """Return the fields before the payload, docs removed."""
    return [without_docs(f) for f in document["fields"] if f["name"] != "payload"]


def fields_of(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every field of every record in a schema, with a readable path."""
    if isinstance(node, list):
        for branch in node:
            yield from fields_of(branch, where)
    elif isinstance(node, dict):
        for field in node.get("fields", []):
            yield f"{where}.{field['name']}", field
            yield from fields_of(field["type"], f"{where}.{field['name']}")
        for key in ("items", "values"):
            if key in node:
                yield from fields_of(node[key], where)


class TestSubjects:
    def test_one_subject_per_declared_topic(
        self,
        registry: FileSchemaRegistry,
        ingest_subjects: list[str],
        output_subjects: list[str],
    ) -> None:
        """Every topic in topics.toml has a subject folder, and no folder lacks a topic."""
        assert sorted(registry.subjects()) == sorted([*ingest_subjects, *output_subjects])

    def test_nonconformance_has_two_versions(self, registry: FileSchemaRegistry) -> None:
        """The nonconformance subject carries v1 and the risk-priority v2."""
        assert registry.versions(NONCONFORMANCE_SUBJECT) == [1, 2]

    @pytest.mark.parametrize("path", sorted(SCHEMAS_DIR.glob("*/v*.avsc")), ids=str)
    def test_every_field_has_a_doc(self, path: Path) -> None:
        """Every field of every record, nested ones included, carries a doc."""
        document = json.loads(path.read_text(encoding="utf-8"))
        undocumented = [where for where, f in fields_of(document, "") if not f.get("doc")]
        assert undocumented == []


class TestEnvelope:
    def test_ingest_subjects_share_the_envelope(
        self, registry: FileSchemaRegistry, ingest_subjects: list[str]
    ) -> None:
        """Every ingest subject's newest version has exactly the same envelope names and types."""
        reference = envelope(newest_document(registry, ingest_subjects[0]))
        for subject in ingest_subjects[1:]:
            assert envelope(newest_document(registry, subject)) == reference, subject

    def test_ingest_record_names(
        self, registry: FileSchemaRegistry, ingest_subjects: list[str]
    ) -> None:
        """Ingest records are io.qmsflow.ingest.<Payload>Event with a payload field last."""
        for subject in ingest_subjects:
            document = newest_document(registry, subject)
            payload = document["fields"][-1]
            assert payload["name"] == "payload"
            assert document["namespace"] == "io.qmsflow.ingest"
            assert document["name"] == f"{payload['type']['name']}Event"

    def test_canonical_event_carries_the_envelope(
        self, registry: FileSchemaRegistry, ingest_subjects: list[str]
    ) -> None:
        """The canonical event has every envelope field, by the same name and type."""
        canonical = {
            f["name"]: f["type"] for f in envelope(newest_document(registry, CANONICAL_SUBJECT))
        }
        for field in envelope(newest_document(registry, ingest_subjects[0])):
            assert canonical[field["name"]] == field["type"], field["name"]


class TestCanonicalPayload:
    def test_union_holds_each_newest_ingest_payload(
        self, registry: FileSchemaRegistry, ingest_subjects: list[str]
    ) -> None:
        """The canonical payload union holds each ingest subject's newest payload exactly."""
        canonical = newest_document(registry, CANONICAL_SUBJECT)
        (union,) = [f["type"] for f in canonical["fields"] if f["name"] == "payload"]
        payloads = [newest_document(registry, s)["fields"][-1]["type"] for s in ingest_subjects]
        assert union == payloads

    def test_union_carries_the_v2_nonconformance(self, registry: FileSchemaRegistry) -> None:
        """The canonical Nonconformance includes risk_priority_number from v2."""
        canonical = newest_document(registry, CANONICAL_SUBJECT)
        (union,) = [f["type"] for f in canonical["fields"] if f["name"] == "payload"]
        (nonconformance,) = [b for b in union if b["name"] == "Nonconformance"]
        assert "risk_priority_number" in [f["name"] for f in nonconformance["fields"]]


class TestDeadLetter:
    def test_keeps_original_bytes(self, registry: FileSchemaRegistry) -> None:
        """The dead letter keeps the original key and value as nullable bytes."""
        fields = {
            f["name"]: f["type"] for f in newest_document(registry, DEAD_LETTER_SUBJECT)["fields"]
        }
        assert fields["key"] == ["null", "bytes"]
        assert fields["value"] == ["null", "bytes"]


class TestDocs:
    def test_subject_table_matches_lock(self) -> None:
        """The docs/schemas.md table lists every subject with each version's pinned id."""
        rows = {
            line.split("|")[1].strip(" `"): line
            for line in (PROJECT_ROOT / "docs" / "schemas.md")
            .read_text(encoding="utf-8")
            .splitlines()
            if line.startswith("| `")
        }
        for entry in read_lock(SCHEMAS_DIR):
            assert f"v{entry.version} ({entry.schema_id})" in rows[entry.subject], entry
