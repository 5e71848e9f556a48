"""The committed AsyncAPI document through the official parser (@asyncapi/parser, npm).

The parser is installed once into ~/.cache/qmsflow (qmsflow.interface_docs.parser); without npm
these tests skip with that reason. The first install takes about 10 s, later runs ~1 s per parse.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from qmsflow.interface_docs.documents import ASYNCAPI_FILE
from qmsflow.interface_docs.parser import ERROR, WARNING, AsyncApiVerdict, validate_asyncapi
from qmsflow.settings import PROJECT_ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None,
    reason="node and npm are needed to install and run @asyncapi/parser",
)

DOCUMENT = PROJECT_ROOT / ASYNCAPI_FILE


def declared_topics() -> set[str]:
    """Topic names read from topics.toml directly, not through the generator."""
    text = (PROJECT_ROOT / "qmsflow" / "config" / "topics.toml").read_text("utf-8")
    return {t["name"] for t in tomllib.loads(text)["topic"]}


@pytest.fixture(scope="module")
def verdict() -> AsyncApiVerdict:
    return validate_asyncapi(DOCUMENT)


class TestOfficialParser:
    def test_the_committed_document_validates_without_errors_or_warnings(
        self, verdict: AsyncApiVerdict
    ) -> None:
        """@asyncapi/parser (schema and semantic rules, Avro payloads) accepts the document."""
        assert verdict.valid
        assert verdict.at_least(WARNING) == []

    def test_the_parser_sees_every_declared_topic(self, verdict: AsyncApiVerdict) -> None:
        """The parsed document's channel addresses are exactly topics.toml's topics."""
        assert set(verdict.channels) == declared_topics()
        assert verdict.operations > len(verdict.channels)

    def test_a_broken_document_is_rejected(self, tmp_path: Path) -> None:
        """An unknown action and an Avro payload with an unknown type are errors."""
        document = json.loads(DOCUMENT.read_text("utf-8"))
        operation = next(iter(document["operations"].values()))
        operation["action"] = "publish"  # AsyncAPI 2 wording, invalid in 3.0
        message = next(iter(document["components"]["messages"].values()))
        message["payload"]["schema"]["fields"][0]["type"] = "strang"
        broken = tmp_path / "asyncapi.json"
        broken.write_text(json.dumps(document), encoding="utf-8")
        rejected = validate_asyncapi(broken)
        assert not rejected.valid
        assert rejected.at_least(ERROR)
