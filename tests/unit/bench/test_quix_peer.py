"""The Quix Streams peer's pure part: framing, event ids, schemas, its venv's pins and targets."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from bench.quix_peer import EventIds, FramingError, load_schemas, unframe
from bench.quix_venv import QUIX_VERSION, pinned_version, requirements
from bench.results_model import QUIX_PEER_FLOOR_RATIO, Run, check_targets, steady_medians
from bench.run import writer_schemas
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog

_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "lot", "type": "string"},
    ],
}
_ID = "0b0e5f44-5a3c-4b1e-9d0b-2f5f0c1d9e01"


def _framed(schema_id: int, record: dict[str, Any], schema: dict[str, Any] = _SCHEMA) -> bytes:
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(schema), record)
    return struct.pack(">BI", 0, schema_id) + body.getvalue()


class TestFraming:
    def test_unframe_splits_the_schema_id_from_the_body(self) -> None:
        """The magic byte is dropped, the 4-byte big-endian id read, the rest is the body."""
        assert unframe(b"\x00\x00\x00\x01\x07body") == (263, b"body")

    def test_unframed_bytes_are_refused(self) -> None:
        """A short record or another magic byte is a FramingError, not a wrong id."""
        with pytest.raises(FramingError, match="at least 5 bytes"):
            unframe(b"\x00\x00")
        with pytest.raises(FramingError, match="magic byte"):
            unframe(b"\x01\x00\x00\x00\x01")


class TestEventIds:
    def test_event_id_is_decoded_with_the_writer_schema_of_the_frame(self) -> None:
        """The id in the frame picks the schema; the record's event_id comes back as text."""
        ids = EventIds({3: _SCHEMA})
        assert ids(_framed(3, {"event_id": _ID, "lot": "L-1"})) == _ID

    def test_an_unknown_schema_id_is_fetched_once_and_remembered(self) -> None:
        """A schema id missing from the file is asked of the registry, then cached."""
        asked: list[int] = []

        def fetch(schema_id: int) -> Any:
            asked.append(schema_id)
            return _SCHEMA

        ids = EventIds({}, fetch)
        value = _framed(9, {"event_id": _ID, "lot": "L-1"})
        assert ids(value) == ids(value) == _ID
        assert asked == [9]

    def test_an_unknown_schema_id_without_a_registry_is_an_error(self) -> None:
        """Without a registry an id missing from the schemas file is a KeyError naming it."""
        with pytest.raises(KeyError, match="schema id 4"):
            EventIds({3: _SCHEMA})(_framed(4, {"event_id": _ID, "lot": "L-1"}))

    def test_the_schemas_file_maps_text_ids_to_schemas(self, tmp_path: Path) -> None:
        """JSON keys are text; the loaded mapping has int ids."""
        path = tmp_path / "schemas.json"
        path.write_text(json.dumps({"3": _SCHEMA}))
        assert load_schemas(path) == {3: _SCHEMA}


class TestWriterSchemas:
    def test_every_ingest_subject_version_is_given_by_its_pinned_id(self) -> None:
        """The peer gets each ingest topic's value schemas, and each decodes an event_id."""
        schemas = writer_schemas(Settings(schema_registry_url=None))
        names = {s["name"] for s in schemas.values()}
        assert len(names) >= len(load_catalog().by_role("ingest"))
        for schema in schemas.values():
            assert "event_id" in {f["name"] for f in schema["fields"]}

    def test_an_http_registry_is_left_to_the_peer(self) -> None:
        """With SCHEMA_REGISTRY_URL set no file schemas are passed: the peer asks the registry."""
        assert writer_schemas(Settings(schema_registry_url="http://registry:8081")) == {}


class TestVenvPins:
    _PYPROJECT = """
[project]
name = "x"
dependencies = ["confluent-kafka[schemaregistry]==2.16.1", "fastavro==1.13.1", "orjson>=3"]
"""

    def test_the_pinned_version_is_read_from_the_dependencies(self) -> None:
        """A `name==version` pin is found, extras and case notwithstanding."""
        assert pinned_version(self._PYPROJECT, "fastavro") == "1.13.1"
        assert pinned_version(self._PYPROJECT, "Confluent-Kafka") == "2.16.1"

    def test_an_unpinned_package_is_an_error(self) -> None:
        """A dependency without `==` cannot say what to install beside quixstreams."""
        with pytest.raises(ValueError, match="orjson==<version>"):
            pinned_version(self._PYPROJECT, "orjson")

    def test_the_venv_holds_quixstreams_and_the_projects_fastavro(self) -> None:
        """The peer decodes with the fastavro version qmsflow pins."""
        assert requirements(self._PYPROJECT) == [
            f"quixstreams=={QUIX_VERSION}",
            "fastavro==1.13.1",
        ]


class TestQuixTargets:
    def _checks(self, runs: list[Run]) -> dict[str, str]:
        rates = {r.measurement: r.per_second for r in runs}
        checks = check_targets(rates, None, steady_medians(runs))
        return {c.target: c.sentence() for c in checks if "Quix" in c.target}

    def test_each_runtime_is_held_against_half_the_peer(self) -> None:
        """Both runtimes get the 0.5× floor, on the whole run and after the first output."""
        runs = [
            Run("e2e", 0, 1000, 1.0, 0.5),  # 1,000/s; 2,000/s after the first
            Run("e2e_batch", 0, 1000, 0.5, 0.25),  # 2,000/s; 4,000/s after the first
            Run("quix_peer", 0, 1000, 0.6, 0.5),  # 1,667/s; 10,000/s after the first
        ]
        checks = self._checks(runs)
        assert len(checks) == 4
        assert "met" in checks["end-to-end ÷ Quix Streams peer, faust runtime (issue 16)"]
        after = "end-to-end ÷ Quix Streams peer after the first output, faust runtime (issue 16)"
        assert "MISSED" in checks[after]
        assert QUIX_PEER_FLOOR_RATIO == 0.5

    def test_a_peer_that_did_not_run_is_not_measured(self) -> None:
        """Without the peer's runs the ratio is said to be not measured, not met or missed."""
        checks = self._checks([Run("e2e", 0, 1000, 1.0, 0.5)])
        assert checks["end-to-end ÷ Quix Streams peer, faust runtime (issue 16)"].endswith(
            "not measured"
        )
