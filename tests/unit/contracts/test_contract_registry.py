"""Schema registries: the committed files with the lock file, and the HTTP registry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qmsflow.contracts import (
    ConfluentSchemaRegistry,
    FileSchemaRegistry,
    lock_schemas,
    open_registry,
)
from qmsflow.contracts.registry import LOCK_FILE, read_lock, verify_lock
from qmsflow.errors import ConfigurationError, UnknownSchemaError
from qmsflow.settings import PROJECT_ROOT, Settings

SCHEMAS_DIR = PROJECT_ROOT / "schemas" / "avro"
NONCONFORMANCE = "qms.nonconformance.v1-value"


def edit_schema(path: Path, change: Any) -> None:
    """Rewrite a schema file after applying a change to its JSON."""
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def add_v3(schemas_dir: Path) -> Path:
    """Add a compatible nonconformance v3 (a new optional payload field)."""
    v3 = schemas_dir / NONCONFORMANCE / "v3.avsc"
    v3.write_text((schemas_dir / NONCONFORMANCE / "v2.avsc").read_text(encoding="utf-8"))
    edit_schema(
        v3,
        lambda d: d["fields"][-1]["type"]["fields"].append(
            {"name": "containment", "type": ["null", "string"], "default": None, "doc": "x"}
        ),
    )
    return v3


class TestFileRegistry:
    def test_ids_are_unique_and_pinned(self, registry: FileSchemaRegistry) -> None:
        """Every subject version resolves by its pinned id to itself."""
        for subject in registry.subjects():
            for version in registry.versions(subject):
                schema = registry.get(subject, version)
                assert registry.by_id(schema.schema_id) is schema

    def test_latest_is_newest_version(self, registry: FileSchemaRegistry) -> None:
        """The newest version of a subject is its highest version number."""
        assert registry.latest(NONCONFORMANCE).version == 2

    def test_unknown_id(self, registry: FileSchemaRegistry) -> None:
        """An id with no pin raises UnknownSchemaError."""
        with pytest.raises(UnknownSchemaError, match="got 4242"):
            registry.by_id(4242)

    def test_unknown_subject(self, registry: FileSchemaRegistry) -> None:
        """A subject with no folder raises ConfigurationError listing the known ones."""
        with pytest.raises(ConfigurationError, match=r"qms\.capa\.v1-value"):
            registry.latest("qms.capa-value")

    def test_fingerprint_is_sha256_of_canonical_form(self, registry: FileSchemaRegistry) -> None:
        """The pinned fingerprint is the sha256 of the Parsing Canonical Form."""
        schema = registry.latest(NONCONFORMANCE)
        assert schema.fingerprint == hashlib.sha256(schema.canonical.encode()).hexdigest()


class TestLockFile:
    def test_repository_agrees_with_lock(self) -> None:
        """The committed schemas and lock file agree."""
        assert verify_lock(SCHEMAS_DIR) == []

    def test_tampered_type_is_detected(self, schemas_copy: Path) -> None:
        """A committed version whose field type changed fails to load, naming the file."""
        edit_schema(
            schemas_copy / NONCONFORMANCE / "v1.avsc",
            lambda d: d["fields"][-1]["type"]["fields"][3].update(type="int"),
        )
        with pytest.raises(ConfigurationError, match=r"v1\.avsc: changed after it was pinned"):
            FileSchemaRegistry.load(schemas_copy)

    def test_tampered_default_is_detected(self, schemas_copy: Path) -> None:
        """A changed default, invisible to the canonical form, is still detected."""
        edit_schema(
            schemas_copy / "qms.capa.v1-value" / "v1.avsc",
            lambda d: d["fields"][-2].update(default=True),
        )
        with pytest.raises(ConfigurationError, match="changed after it was pinned"):
            FileSchemaRegistry.load(schemas_copy)

    def test_unpinned_file_is_rejected(self, schemas_copy: Path) -> None:
        """A schema file without a lock entry fails to load."""
        add_v3(schemas_copy)
        with pytest.raises(ConfigurationError, match=r"v3\.avsc: no entry"):
            FileSchemaRegistry.load(schemas_copy)

    def test_missing_file_is_rejected(self, schemas_copy: Path) -> None:
        """A pinned version whose file was deleted fails to load."""
        (schemas_copy / NONCONFORMANCE / "v2.avsc").unlink()
        with pytest.raises(ConfigurationError, match="its file is missing"):
            FileSchemaRegistry.load(schemas_copy)

    def test_lock_appends_new_ids(self, schemas_copy: Path) -> None:
        """Locking a new version appends the next id and keeps every existing pin."""
        before = read_lock(schemas_copy)
        add_v3(schemas_copy)
        added = lock_schemas(schemas_copy)
        assert [(e.subject, e.version, e.schema_id) for e in added] == [
            (NONCONFORMANCE, 3, max(e.schema_id for e in before) + 1)
        ]
        assert read_lock(schemas_copy) == [*before, *added]
        assert FileSchemaRegistry.load(schemas_copy).latest(NONCONFORMANCE).version == 3

    def test_lock_is_idempotent(self, schemas_copy: Path) -> None:
        """Locking with nothing new pins nothing and leaves the file untouched."""
        text = (schemas_copy / LOCK_FILE).read_text(encoding="utf-8")
        assert lock_schemas(schemas_copy) == []
        assert (schemas_copy / LOCK_FILE).read_text(encoding="utf-8") == text

    def test_lock_refuses_to_repin_changed_file(self, schemas_copy: Path) -> None:
        """Locking refuses, writing nothing, when a pinned version changed."""
        add_v3(schemas_copy)
        edit_schema(schemas_copy / NONCONFORMANCE / "v1.avsc", lambda d: d.update(doc="edited"))
        text = (schemas_copy / LOCK_FILE).read_text(encoding="utf-8")
        with pytest.raises(ConfigurationError, match="changed after it was pinned"):
            lock_schemas(schemas_copy)
        assert (schemas_copy / LOCK_FILE).read_text(encoding="utf-8") == text

    def test_version_gap_is_rejected(self, schemas_copy: Path) -> None:
        """A subject whose versions skip a number fails to lock."""
        add_v3(schemas_copy).rename(schemas_copy / NONCONFORMANCE / "v4.avsc")
        with pytest.raises(ConfigurationError, match=r"got \[1, 2, 4\]"):
            lock_schemas(schemas_copy)


@dataclass
class FakeSchema:
    schema_str: str
    schema_type: str = "AVRO"


@dataclass
class FakeVersion:
    subject: str
    version: int
    schema_id: int = 0
    schema: FakeSchema | None = None


class NotFound(Exception):
    """Stands in for confluent_kafka's SchemaRegistryError with a 404."""

    http_status_code = 404


class FakeClient:
    """In-memory stand-in for confluent_kafka's SchemaRegistryClient, counting fetches."""

    def __init__(self, registry: FileSchemaRegistry) -> None:
        self.registry = registry
        self.fetches = 0

    def get_schema(self, schema_id: int) -> FakeSchema:
        """Return the schema text of a pinned id, or fail as a 404."""
        self.fetches += 1
        try:
            schema = self.registry.by_id(schema_id)
        except UnknownSchemaError:
            raise NotFound(schema_id) from None
        return FakeSchema(_text(schema.subject, schema.version))

    def get_schema_versions(self, schema_id: int) -> list[FakeVersion]:
        """Return the one (subject, version) pair of a pinned id."""
        schema = self.registry.by_id(schema_id)
        return [FakeVersion(schema.subject, schema.version)]

    def get_latest_version(self, subject_name: str) -> FakeVersion:
        """Return a subject's newest version with its schema text."""
        schema = self.registry.latest(subject_name)
        text = _text(subject_name, schema.version)
        return FakeVersion(subject_name, schema.version, schema.schema_id, FakeSchema(text))

    def get_versions(self, subject_name: str) -> list[int]:
        """Return a subject's versions, newest first as a registry may."""
        return list(reversed(self.registry.versions(subject_name)))

    def register_schema(self, subject_name: str, schema: Any) -> int:
        """Accept any schema under a fixed id."""
        return 99


def _text(subject: str, version: int) -> str:
    return (SCHEMAS_DIR / subject / f"v{version}.avsc").read_text(encoding="utf-8")


class TestConfluentRegistry:
    def test_by_id_resolves_subject_and_version(self, registry: FileSchemaRegistry) -> None:
        """An id fetched over HTTP carries its subject, version and canonical form."""
        http = ConfluentSchemaRegistry("http://registry", client=FakeClient(registry))
        expected = registry.get(NONCONFORMANCE, 1)
        assert http.by_id(expected.schema_id) == expected

    def test_by_id_is_cached(self, registry: FileSchemaRegistry) -> None:
        """A schema id is fetched and parsed once."""
        client = FakeClient(registry)
        http = ConfluentSchemaRegistry("http://registry", client=client)
        schema_id = registry.latest(NONCONFORMANCE).schema_id
        assert http.by_id(schema_id) is http.by_id(schema_id)
        assert client.fetches == 1

    def test_unknown_id(self, registry: FileSchemaRegistry) -> None:
        """A 404 for an id raises UnknownSchemaError naming the registry."""
        http = ConfluentSchemaRegistry("http://registry", client=FakeClient(registry))
        with pytest.raises(UnknownSchemaError, match="http://registry, got 4242"):
            http.by_id(4242)

    def test_latest_and_versions(self, registry: FileSchemaRegistry) -> None:
        """The registry's newest version and its version list come back sorted and parsed."""
        http = ConfluentSchemaRegistry("http://registry", client=FakeClient(registry))
        assert http.latest(NONCONFORMANCE) == registry.latest(NONCONFORMANCE)
        assert http.versions(NONCONFORMANCE) == [1, 2]

    def test_push_rejects_invalid_schema(self, registry: FileSchemaRegistry) -> None:
        """Pushing text that is not an Avro schema fails before any request."""
        http = ConfluentSchemaRegistry("http://registry", client=FakeClient(registry))
        with pytest.raises(ConfigurationError, match="expected an Avro schema"):
            http.push(NONCONFORMANCE, '{"type": "recrod"}')


class TestOpenRegistry:
    def test_files_without_url(self) -> None:
        """Without SCHEMA_REGISTRY_URL the committed files are the registry."""
        settings = Settings(schema_registry_url=None, schemas_dir=SCHEMAS_DIR)
        assert isinstance(open_registry(settings), FileSchemaRegistry)
