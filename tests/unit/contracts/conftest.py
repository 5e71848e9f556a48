"""Fixtures shared by the contract tests: the committed schemas and a scratch copy of them."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from qmsflow.contracts import FileSchemaRegistry
from qmsflow.settings import PROJECT_ROOT

SCHEMAS_DIR = PROJECT_ROOT / "schemas" / "avro"
TOPICS_FILE = PROJECT_ROOT / "qmsflow" / "config" / "topics.toml"


def declared_topics(role: str) -> list[str]:
    """List topic names of one role, in topics.toml order."""
    document = tomllib.loads(TOPICS_FILE.read_text(encoding="utf-8"))
    return [t["name"] for t in document["topic"] if t["role"] == role]


@pytest.fixture(scope="session")
def ingest_subjects() -> list[str]:
    """List the ingest subjects, in topics.toml order."""
    return [f"{topic}-value" for topic in declared_topics("ingest")]


@pytest.fixture(scope="session")
def output_subjects() -> list[str]:
    """List the value subjects of every non-ingest topic (shared subjects once)."""
    from qmsflow.topics import load_catalog

    return sorted({t.subject for t in load_catalog().topics if t.role != "ingest"})


@pytest.fixture(scope="session")
def registry() -> FileSchemaRegistry:
    """Load the committed schemas with their pinned ids."""
    return FileSchemaRegistry.load(SCHEMAS_DIR)


@pytest.fixture
def schemas_copy(tmp_path: Path) -> Path:
    """Copy the committed schemas and lock file somewhere writable."""
    target = tmp_path / "avro"
    shutil.copytree(SCHEMAS_DIR, target)
    return target
