"""BACKWARD_TRANSITIVE checks of the committed schema versions, and of the lock file.

Every version must read data written by every older version of its subject, so a consumer on
the newest schema can replay a topic from the beginning. The Apache `avro` package's checker
decides; this module turns its locations into field names a reviewer can act on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from qmsflow.contracts.registry import SchemaFile, lock_problems, read_lock, read_schema_files
from qmsflow.errors import CompatibilityError


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One place where a newer reader cannot read what an older writer wrote."""

    subject: str
    reader_version: int
    writer_version: int
    #: the checker's JSON-pointer-like path into the reader schema, e.g. /fields/18/type/fields/10
    location: str
    #: the same place as field names, e.g. payload.risk_priority_number
    field: str
    #: the checker's kind, e.g. reader_field_missing_default_value, type_mismatch
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return (
            f"{self.subject}: v{self.reader_version} cannot read data written with "
            f"v{self.writer_version}: {self.kind} at field {self.field} "
            f"({self.location}){detail}"
        )


@dataclass(frozen=True, slots=True)
class CompatibilityReport:
    """The outcome of check_all: schema incompatibilities and lock-file disagreements."""

    incompatibilities: list[Incompatibility] = field(default_factory=list)
    lock_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every subject is BACKWARD_TRANSITIVE and the lock agrees with the files."""
        return not self.incompatibilities and not self.lock_problems

    def render(self) -> str:
        """One line per problem, or a one-line all-clear."""
        if self.ok:
            return "all subjects are BACKWARD_TRANSITIVE compatible and match the lock file"
        return "\n".join([*map(str, self.incompatibilities), *self.lock_problems])

    def raise_for_problems(self) -> None:
        """Raise CompatibilityError listing every problem, unless there are none."""
        if not self.ok:
            raise CompatibilityError(self.render())


def check_subject(subject: str, versions: Sequence[str]) -> list[Incompatibility]:
    """Check BACKWARD_TRANSITIVE compatibility of a subject's schema texts, oldest first.

    Every version (the newest included) must read data written by each older one; the list is
    empty when they all can.
    """
    documents = [json.loads(text) for text in versions]
    parsed = [avro.schema.parse(text) for text in versions]
    found: list[Incompatibility] = []
    for reader_index in range(1, len(parsed)):
        for writer_index in range(reader_index):
            # avro ships no annotations for the checker's constructor
            checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
            result = checker.get_compatibility(parsed[reader_index], parsed[writer_index])
            if result.compatibility is SchemaCompatibilityType.compatible:
                continue
            found.extend(
                _describe(
                    subject,
                    reader_index + 1,
                    writer_index + 1,
                    documents[reader_index],
                    [kind.value for kind in result.incompatibilities],
                    result.locations,
                    result.messages,
                )
            )
    return found


def check_all(schemas_dir: Path) -> CompatibilityReport:
    """Check every subject under schemas_dir, and that the lock file agrees with the files."""
    files = read_schema_files(schemas_dir)
    by_subject: dict[str, list[SchemaFile]] = {}
    for schema_file in files:
        by_subject.setdefault(schema_file.schema.subject, []).append(schema_file)
    incompatibilities: list[Incompatibility] = []
    for subject, subject_files in sorted(by_subject.items()):
        ordered = sorted(subject_files, key=lambda f: f.schema.version)
        texts = [f.text for f in ordered]
        incompatibilities.extend(check_subject(subject, texts))
    return CompatibilityReport(incompatibilities, lock_problems(files, read_lock(schemas_dir)))


def _describe(
    subject: str,
    reader_version: int,
    writer_version: int,
    reader_document: Any,
    kinds: list[str],
    locations: set[str],
    messages: set[str],
) -> list[Incompatibility]:
    """Pair the checker's kinds with its locations.

    The checker keeps locations and messages as sets and adds the root "/" when merging, so
    locations are put back in traversal order to line up with the ordered kinds; the messages
    are attached only when there is one, since a set cannot be paired.
    """
    ordered = sorted((loc for loc in locations if loc != "/"), key=_traversal_key) or ["/"]
    if len(ordered) != len(kinds):
        kinds = [", ".join(sorted(set(kinds)))] * len(ordered)
    detail = next(iter(messages)) if len(messages) == 1 else "; ".join(sorted(messages))
    return [
        Incompatibility(
            subject,
            reader_version,
            writer_version,
            location,
            _field_path(reader_document, location),
            kind,
            detail,
        )
        for location, kind in zip(ordered, kinds, strict=True)
    ]


def _traversal_key(location: str) -> list[tuple[int, int | str]]:
    return [(0, int(t)) if t.isdigit() else (1, t) for t in location.strip("/").split("/")]


def _field_path(document: Any, location: str) -> str:
    """Translate a checker location into dotted field names of the reader schema.

    Union branches show as [RecordName]; the path stops where the location leaves the schema
    text the walker understands, so a partial name is returned rather than none.
    """
    named = _named_types(document)
    node: Any = document
    names: list[str] = []
    tokens = [t for t in location.split("/") if t]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        node = _resolve(node, named)
        if token == "fields" and index + 1 < len(tokens) and isinstance(node, dict):
            position = int(tokens[index + 1])
            node = node["fields"][position]
            names.append(node["name"])
            index += 2
            continue
        if token == "type" and isinstance(node, dict):
            node = node["type"]
        elif token.isdigit() and isinstance(node, list):
            node = _resolve(node[int(token)], named)
            if isinstance(node, dict) and "name" in node:
                names.append(f"[{node['name']}]")
        elif token in ("items", "values") and isinstance(node, dict):
            node = node[token]
            names.append(f"[{token}]")
        else:
            names.append(token)
            break
        index += 1
    return ".".join(names).replace(".[", "[") or "(whole record)"


def _resolve(node: Any, named: dict[str, Any]) -> Any:
    while isinstance(node, str) and node in named:
        node = named[node]
    return node


def _named_types(document: Any, namespace: str = "") -> dict[str, Any]:
    """Every named type in a schema document, by short and full name."""
    found: dict[str, Any] = {}
    if isinstance(document, list):
        for branch in document:
            found.update(_named_types(branch, namespace))
    elif isinstance(document, dict):
        if document.get("type") in ("record", "error", "enum", "fixed") and "name" in document:
            name = str(document["name"])
            namespace = str(document.get("namespace", namespace))
            full = name if "." in name or not namespace else f"{namespace}.{name}"
            found[name] = found[full] = document
        for child in document.get("fields", []):
            found.update(_named_types(child.get("type"), namespace))
        for key in ("type", "items", "values"):
            if isinstance(document.get(key), (dict, list)):
                found.update(_named_types(document[key], namespace))
    return found
