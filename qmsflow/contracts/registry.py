"""Where writer and reader schemas come from: the committed files with pinned ids, or a registry.

The file registry is the source of truth in a checkout: `schemas/avro/<subject>/vN.avsc`, with
every version's id and fingerprints pinned in `schemas/avro/registry.lock.json`. Committed
versions are immutable; the lock file is how a changed one is caught before it ships.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form
from fastavro.types import Schema

from qmsflow.errors import ConfigurationError, ContractError, UnknownSchemaError
from qmsflow.settings import Settings

#: the lock file's name inside the schemas folder
LOCK_FILE = "registry.lock.json"

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    """One version of one subject, parsed once and shared by every decode and encode."""

    subject: str
    version: int
    schema_id: int
    #: the fastavro-parsed schema, ready for schemaless reading and writing
    parsed: Schema = field(compare=False, repr=False)
    #: Avro Parsing Canonical Form: what a fingerprint is computed over
    canonical: str = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """The sha256 of the Parsing Canonical Form, as pinned in the lock file."""
        return _sha256(self.canonical)


@dataclass(frozen=True, slots=True)
class LockEntry:
    """A pinned id for one subject version, with the fingerprints that freeze its text.

    `fingerprint` covers what the binary encoding depends on (Parsing Canonical Form, which
    drops docs, defaults and logical types); `content_sha256` covers the whole schema, so a
    changed default or logical type in a committed version is caught too.
    """

    subject: str
    version: int
    schema_id: int
    fingerprint: str
    content_sha256: str


@dataclass(frozen=True, slots=True)
class SchemaFile:
    """A committed `vN.avsc` file, parsed."""

    path: Path
    schema: RegisteredSchema
    content_sha256: str
    #: the file's text as committed, e.g. for registering it with an HTTP registry
    text: str = field(repr=False)

    @property
    def subject(self) -> str:
        """The subject the file belongs to (its folder name)."""
        return self.schema.subject

    @property
    def version(self) -> int:
        """The version the file defines (N of vN.avsc)."""
        return self.schema.version

    @property
    def key(self) -> tuple[str, int]:
        """The (subject, version) the file defines."""
        return self.schema.subject, self.schema.version


class SchemaRegistry(Protocol):
    """What the codec needs from a registry: writer schemas by id, reader schemas by subject."""

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """Return the schema a frame names; raise UnknownSchemaError when it is not registered."""
        ...

    def latest(self, subject: str) -> RegisteredSchema:
        """Return the newest version of a subject."""
        ...

    def versions(self, subject: str) -> list[int]:
        """Return the subject's version numbers, oldest first."""
        ...


def parse_avro(text: str, origin: str) -> tuple[Schema, str, str]:
    """Parse schema text into (fastavro schema, canonical form, content sha256).

    Raises ConfigurationError naming `origin` when the text is not JSON or not a valid schema.
    """
    try:
        document = json.loads(text)
        parsed = parse_schema(document)
        canonical = to_parsing_canonical_form(document)
    except (ValueError, TypeError, KeyError) as exc:
        # fastavro reports invalid schemas as SchemaParseError, a ValueError subclass
        raise ConfigurationError(f"{origin}: expected an Avro schema, got: {exc}") from exc
    content = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return parsed, canonical, _sha256(content)


def read_schema_files(schemas_dir: Path) -> list[SchemaFile]:
    """Read every `<subject>/vN.avsc` under `schemas_dir`, sorted by subject and version.

    A file's schema_id is 0 until it is matched with the lock file.
    """
    if not schemas_dir.is_dir():
        raise ConfigurationError(f"expected a schemas folder at {schemas_dir}, found none")
    files: list[SchemaFile] = []
    for subject_dir in sorted(p for p in schemas_dir.iterdir() if p.is_dir()):
        for path in sorted(subject_dir.glob("*.avsc")):
            match = _VERSION_FILE.match(path.name)
            if match is None:
                raise ConfigurationError(f"{path}: expected a file named vN.avsc (N from 1)")
            text = path.read_text(encoding="utf-8")
            parsed, canonical, content = parse_avro(text, str(path))
            schema = RegisteredSchema(subject_dir.name, int(match[1]), 0, parsed, canonical)
            files.append(SchemaFile(path, schema, content, text))
    files.sort(key=lambda f: f.key)
    return files


def read_lock(schemas_dir: Path) -> list[LockEntry]:
    """Read the lock file's entries in file order; none when there is no lock file yet."""
    path = schemas_dir / LOCK_FILE
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return [
            LockEntry(
                subject=str(item["subject"]),
                version=int(item["version"]),
                schema_id=int(item["id"]),
                fingerprint=str(item["fingerprint"]),
                content_sha256=str(item["content_sha256"]),
            )
            for item in document["schemas"]
        ]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(
            f"{path}: expected {{'schemas': [{{subject, version, id, fingerprint, "
            f"content_sha256}}, ...]}}, got: {exc!r}"
        ) from exc


def verify_lock(schemas_dir: Path) -> list[str]:
    """List every disagreement between the schema files and the lock file, one per line."""
    return lock_problems(read_schema_files(schemas_dir), read_lock(schemas_dir))


def lock_schemas(schemas_dir: Path) -> list[LockEntry]:
    """Pin ids for schema files the lock file does not know yet, and return the new pins.

    Ids are appended after the highest pinned id and never renumbered; new files are pinned in
    (version, subject) order. Raises ConfigurationError, writing nothing, when a pinned version
    changed, vanished or left a gap: history is fixed by adding a version, not by re-pinning.
    """
    files = read_schema_files(schemas_dir)
    entries = read_lock(schemas_dir)
    pinned = {(e.subject, e.version) for e in entries}
    unpinned = sorted(
        (f for f in files if f.key not in pinned), key=lambda f: (f.schema.version, f.key)
    )
    problems = lock_problems(files, entries, ignore=unpinned)
    if problems:
        raise ConfigurationError("cannot lock schemas:\n" + "\n".join(problems))
    next_id = max((e.schema_id for e in entries), default=0) + 1
    added = [
        LockEntry(
            f.schema.subject, f.schema.version, next_id + n, f.schema.fingerprint, f.content_sha256
        )
        for n, f in enumerate(unpinned)
    ]
    if added:
        _write_lock(schemas_dir, [*entries, *added])
    return added


class FileSchemaRegistry:
    """The committed schema files with the ids pinned in the lock file; read-only."""

    def __init__(self, schemas: Iterable[RegisteredSchema]) -> None:
        self._by_id: dict[int, RegisteredSchema] = {}
        self._by_subject: dict[str, dict[int, RegisteredSchema]] = {}
        for schema in schemas:
            self._by_id[schema.schema_id] = schema
            self._by_subject.setdefault(schema.subject, {})[schema.version] = schema

    @classmethod
    def load(cls, schemas_dir: Path) -> FileSchemaRegistry:
        """Read every schema file and its pinned id.

        Raises ConfigurationError when a file has no lock entry, differs from its fingerprints,
        or when the lock pins a version whose file is missing.
        """
        files = read_schema_files(schemas_dir)
        entries = read_lock(schemas_dir)
        problems = lock_problems(files, entries)
        if problems:
            raise ConfigurationError(
                f"{schemas_dir / LOCK_FILE} disagrees with the schema files:\n"
                + "\n".join(problems)
            )
        ids = {(e.subject, e.version): e.schema_id for e in entries}
        return cls(
            RegisteredSchema(
                f.schema.subject, f.schema.version, ids[f.key], f.schema.parsed, f.schema.canonical
            )
            for f in files
        )

    def subjects(self) -> list[str]:
        """Return every subject, sorted."""
        return sorted(self._by_subject)

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """Return the schema a frame names; raise UnknownSchemaError when no file pins the id."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(
                f"expected a schema id pinned in {LOCK_FILE}, got {schema_id} "
                f"(pinned ids: 1..{max(self._by_id, default=0)})"
            ) from None

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """Return one version of a subject; raise ConfigurationError when there is no such file."""
        try:
            return self._subject(subject)[version]
        except KeyError:
            raise ConfigurationError(
                f"expected {subject} v{version}, but it has versions {self.versions(subject)}"
            ) from None

    def latest(self, subject: str) -> RegisteredSchema:
        """Return the newest version of a subject; raise ConfigurationError if it is unknown."""
        by_version = self._subject(subject)
        return by_version[max(by_version)]

    def versions(self, subject: str) -> list[int]:
        """Return the subject's version numbers, oldest first."""
        return sorted(self._subject(subject))

    def _subject(self, subject: str) -> dict[int, RegisteredSchema]:
        try:
            return self._by_subject[subject]
        except KeyError:
            raise ConfigurationError(
                f"expected one of the subjects {self.subjects()}, got {subject!r}"
            ) from None


class SchemaRegistryClient(Protocol):
    """The part of confluent_kafka's SchemaRegistryClient this module calls (a test seam)."""

    def get_schema(self, schema_id: int) -> Any:
        """Fetch the Schema registered under an id."""
        ...

    def get_schema_versions(self, schema_id: int) -> list[Any]:
        """Fetch the (subject, version) pairs an id is registered under."""
        ...

    def get_latest_version(self, subject_name: str) -> Any:
        """Fetch the newest RegisteredSchema of a subject."""
        ...

    def get_versions(self, subject_name: str) -> list[int]:
        """Fetch the subject's version numbers."""
        ...

    def register_schema(self, subject_name: str, schema: Any) -> int:
        """Register a Schema under a subject and return its id."""
        ...


class ConfluentSchemaRegistry:
    """A Confluent-compatible registry over HTTP; parsed schemas are cached by id for good."""

    def __init__(self, url: str, *, client: SchemaRegistryClient | None = None) -> None:
        if client is None:
            # imported here: the HTTP client pulls in httpx and authlib, which the file-backed
            # registry (tests, local stack) never needs
            from confluent_kafka.schema_registry import SchemaRegistryClient as HttpClient

            client = HttpClient({"url": url})
        self.url = url
        self._client: SchemaRegistryClient = client
        self._by_id: dict[int, RegisteredSchema] = {}

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """Return the schema a frame names; raise UnknownSchemaError when the registry lacks it.

        An id registered under several subjects resolves to its first (subject, version) pair.
        """
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = self._client.get_schema(schema_id)
            pairs = self._client.get_schema_versions(schema_id)
        except Exception as exc:
            if _is_not_found(exc):
                raise UnknownSchemaError(
                    f"expected a schema id registered at {self.url}, got {schema_id}"
                ) from exc
            raise
        if not pairs:
            raise UnknownSchemaError(
                f"schema id {schema_id} at {self.url} belongs to no subject version"
            )
        return self._remember(schema_id, pairs[0].subject, pairs[0].version, schema)

    def latest(self, subject: str) -> RegisteredSchema:
        """Return the newest version of a subject; raise ConfigurationError if it is unknown."""
        try:
            registered = self._client.get_latest_version(subject)
        except Exception as exc:
            if _is_not_found(exc):
                raise ConfigurationError(
                    f"expected subject {subject!r} at {self.url}, found none"
                ) from exc
            raise
        cached = self._by_id.get(registered.schema_id)
        if cached is not None and cached.subject == subject:
            return cached
        return self._remember(registered.schema_id, subject, registered.version, registered.schema)

    def versions(self, subject: str) -> list[int]:
        """Return the subject's version numbers, oldest first."""
        return sorted(self._client.get_versions(subject))

    def push(self, subject: str, schema_text: str) -> int:
        """Register schema text under a subject and return the id the registry assigned.

        The registry applies its own compatibility level; run check_all locally first.
        """
        parse_avro(schema_text, f"schema for {subject}")
        from confluent_kafka.schema_registry import Schema as HttpSchema

        return self._client.register_schema(subject, HttpSchema(schema_text, "AVRO"))

    def _remember(
        self, schema_id: int, subject: str, version: int, schema: Any
    ) -> RegisteredSchema:
        if schema.schema_type not in (None, "AVRO"):
            raise ContractError(
                f"expected an AVRO schema for id {schema_id}, got {schema.schema_type}"
            )
        parsed, canonical, _ = parse_avro(schema.schema_str, f"{self.url} schema id {schema_id}")
        registered = RegisteredSchema(subject, version, schema_id, parsed, canonical)
        self._by_id[schema_id] = registered
        return registered


def open_registry(settings: Settings) -> SchemaRegistry:
    """Open the HTTP registry when SCHEMA_REGISTRY_URL is set, else the committed files."""
    if settings.schema_registry_url:
        return ConfluentSchemaRegistry(settings.schema_registry_url)
    return FileSchemaRegistry.load(settings.schemas_dir)


def lock_problems(
    files: list[SchemaFile],
    entries: list[LockEntry],
    ignore: Iterable[SchemaFile] = (),
) -> list[str]:
    """List files without a pin (unless ignored), changed or missing files, duplicates, gaps."""
    problems: list[str] = []
    by_key: dict[tuple[str, int], LockEntry] = {}
    by_id: dict[int, LockEntry] = {}
    for entry in entries:
        key = (entry.subject, entry.version)
        if key in by_key:
            problems.append(f"{LOCK_FILE} pins {entry.subject} v{entry.version} twice")
        if entry.schema_id in by_id:
            other = by_id[entry.schema_id]
            problems.append(
                f"{LOCK_FILE} gives id {entry.schema_id} to both {other.subject} "
                f"v{other.version} and {entry.subject} v{entry.version}"
            )
        by_key[key] = entry
        by_id[entry.schema_id] = entry
    ignored = {f.key for f in ignore}
    files_by_key = {f.key: f for f in files}
    for f in files:
        pin = by_key.get(f.key)
        if pin is None:
            if f.key not in ignored:
                problems.append(f"{f.path}: no entry in {LOCK_FILE}; pin it with lock_schemas")
        elif (pin.fingerprint, pin.content_sha256) != (f.schema.fingerprint, f.content_sha256):
            problems.append(
                f"{f.path}: changed after it was pinned as id {pin.schema_id} "
                f"(lock fingerprint {pin.fingerprint[:12]}…/{pin.content_sha256[:12]}…, "
                f"file {f.schema.fingerprint[:12]}…/{f.content_sha256[:12]}…); committed "
                f"versions are immutable: restore it and add v{_newest(files, f) + 1} instead"
            )
    for key, entry in by_key.items():
        if key not in files_by_key:
            problems.append(
                f"{LOCK_FILE} pins {entry.subject} v{entry.version} as id {entry.schema_id}, "
                f"but its file is missing"
            )
    problems.extend(_version_gaps(files))
    return problems


def _version_gaps(files: list[SchemaFile]) -> list[str]:
    versions: dict[str, list[int]] = {}
    for f in files:
        versions.setdefault(f.schema.subject, []).append(f.schema.version)
    return [
        f"{subject}: expected versions 1..{len(found)} without gaps, got {sorted(found)}"
        for subject, found in versions.items()
        if sorted(found) != list(range(1, len(found) + 1))
    ]


def _newest(files: list[SchemaFile], of: SchemaFile) -> int:
    return max(f.schema.version for f in files if f.schema.subject == of.schema.subject)


def _write_lock(schemas_dir: Path, entries: list[LockEntry]) -> None:
    document: Mapping[str, object] = {
        "_comment": "Pinned schema ids; append-only. Written by qmsflow.contracts.lock_schemas.",
        "schemas": [
            {
                "subject": e.subject,
                "version": e.version,
                "id": e.schema_id,
                "fingerprint": e.fingerprint,
                "content_sha256": e.content_sha256,
            }
            for e in entries
        ],
    }
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    (schemas_dir / LOCK_FILE).write_text(text, encoding="utf-8")


def _is_not_found(exc: Exception) -> bool:
    # confluent_kafka's SchemaRegistryError carries the HTTP status; 404 = no such id or subject
    return getattr(exc, "http_status_code", None) == 404


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
