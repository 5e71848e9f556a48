"""BACKWARD_TRANSITIVE compatibility of the committed schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qmsflow.contracts import check_all, check_subject
from qmsflow.errors import CompatibilityError
from qmsflow.settings import PROJECT_ROOT

SCHEMAS_DIR = PROJECT_ROOT / "schemas" / "avro"
NONCONFORMANCE = "qms.nonconformance.v1-value"


def nonconformance(version: int, schemas_dir: Path = SCHEMAS_DIR) -> dict[str, Any]:
    """Read a nonconformance version as JSON."""
    path = schemas_dir / NONCONFORMANCE / f"v{version}.avsc"
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def payload_field(document: dict[str, Any], name: str) -> dict[str, Any]:
    """Find a payload field of a nonconformance schema by name."""
    (found,) = [f for f in document["fields"][-1]["type"]["fields"] if f["name"] == name]
    return found


def write_v2(schemas_dir: Path, document: dict[str, Any]) -> None:
    """Overwrite nonconformance v2 in a scratch copy of the schemas."""
    path = schemas_dir / NONCONFORMANCE / "v2.avsc"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


class TestRepository:
    def test_committed_schemas_pass(self) -> None:
        """Every committed subject is BACKWARD_TRANSITIVE and matches the lock file."""
        report = check_all(SCHEMAS_DIR)
        assert report.ok, report.render()
        report.raise_for_problems()

    def test_all_clear_message(self) -> None:
        """A clean report says so in one line."""
        assert "BACKWARD_TRANSITIVE" in check_all(SCHEMAS_DIR).render()


class TestBrokenVersion:
    def test_new_required_field(self, schemas_copy: Path) -> None:
        """A v2 field without a default fails, naming the field and both versions."""
        broken = nonconformance(2)
        rpn = payload_field(broken, "risk_priority_number")
        rpn["type"] = "int"
        del rpn["default"]
        write_v2(schemas_copy, broken)
        report = check_all(schemas_copy)
        (problem,) = report.incompatibilities
        assert problem.field == "payload.risk_priority_number"
        assert str(problem).startswith(
            f"{NONCONFORMANCE}: v2 cannot read data written with v1: "
            "reader_field_missing_default_value at field payload.risk_priority_number"
        )

    def test_changed_type(self, schemas_copy: Path) -> None:
        """A v2 that changes a field's type fails, naming the field."""
        broken = nonconformance(2)
        payload_field(broken, "defect_code")["type"] = "int"
        write_v2(schemas_copy, broken)
        (problem,) = check_all(schemas_copy).incompatibilities
        assert problem.kind == "type_mismatch"
        assert "at field payload.defect_code" in str(problem)
        assert "reader type: int not compatible with writer type: string" in str(problem)

    def test_several_changes_are_each_named(self) -> None:
        """Two broken fields give one incompatibility each, in schema order."""
        broken = nonconformance(2)
        broken["fields"][3]["type"] = "long"
        payload_field(broken, "unit")["type"] = ["null", "int"]
        texts = [json.dumps(nonconformance(1)), json.dumps(broken)]
        problems = check_subject(NONCONFORMANCE, texts)
        assert [p.field for p in problems] == ["source_record_id", "payload.unit"]
        assert [p.kind for p in problems] == ["type_mismatch", "missing_union_branch"]

    def test_transitive_reaches_the_oldest_version(self) -> None:
        """A v3 that reads v2 but not v1 fails against v1 only."""
        v1, v2 = nonconformance(1), nonconformance(2)
        v3 = json.loads(json.dumps(v2))
        # v2 always writes the field, so only v1 data leaves it for the (now missing) default
        del payload_field(v3, "risk_priority_number")["default"]
        problems = check_subject(NONCONFORMANCE, [json.dumps(d) for d in (v1, v2, v3)])
        assert [(p.reader_version, p.writer_version, p.field) for p in problems] == [
            (3, 1, "payload.risk_priority_number")
        ]

    def test_broken_copy_also_breaks_the_lock(self, schemas_copy: Path) -> None:
        """Editing a committed version is reported against the lock file too."""
        broken = nonconformance(2)
        payload_field(broken, "defect_code")["type"] = "int"
        write_v2(schemas_copy, broken)
        report = check_all(schemas_copy)
        assert any("v2.avsc: changed after it was pinned" in p for p in report.lock_problems)
        with pytest.raises(CompatibilityError, match=r"payload\.defect_code"):
            report.raise_for_problems()
