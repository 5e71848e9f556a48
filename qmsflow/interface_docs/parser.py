"""Validating the AsyncAPI document with the official JavaScript parser, installed on first use.

`@asyncapi/parser` (the reference implementation: JSON-schema validation against the official
AsyncAPI schemas plus semantic rules) with `@asyncapi/avro-schema-parser` (checks the Avro
payloads) is installed once with npm into a cache outside the work tree, like
deploy/tools/install-helm.sh does for helm, and run with node. Needs node ≥ 18 and npm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PARSER_PACKAGES", "AsyncApiVerdict", "install_parser", "validate_asyncapi"]

#: pinned: a newer parser may add rules; bump together with a check of the document
PARSER_PACKAGES = ("@asyncapi/parser@3.6.6", "@asyncapi/avro-schema-parser@3.0.24")
#: diagnostics severities of the parser (Spectral): 0 error, 1 warning, 2 info, 3 hint
ERROR, WARNING = 0, 1
_INSTALL_TIMEOUT = 600  # seconds; a cold npm install of ~170 packages takes ~10 s here

_SCRIPT = """\
import { Parser } from '@asyncapi/parser';
import { AvroSchemaParser } from '@asyncapi/avro-schema-parser';
import { readFileSync } from 'node:fs';
const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());
const { document, diagnostics } = await parser.parse(readFileSync(process.argv[2], 'utf8'));
console.log(JSON.stringify({
  valid: document !== undefined,
  channels: document ? document.channels().all().map((c) => c.address()) : [],
  operations: document ? document.operations().all().length : 0,
  diagnostics: diagnostics.map((d) => ({
    severity: d.severity, code: d.code, message: d.message, path: d.path.join('/'),
  })),
}));
"""


@dataclass(frozen=True)
class AsyncApiVerdict:
    """What the parser said: whether the document parsed, its channels, its diagnostics."""

    valid: bool
    channels: tuple[str, ...]
    operations: int
    diagnostics: tuple[dict[str, object], ...]

    def at_least(self, severity: int) -> list[dict[str, object]]:
        """Diagnostics at `severity` or worse (ERROR is the worst)."""
        return [d for d in self.diagnostics if int(str(d["severity"])) <= severity]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    tag = "-".join(p.rsplit("@", 1)[1] for p in PARSER_PACKAGES)
    return Path(base) / "qmsflow" / f"asyncapi-parser-{tag}"


def install_parser() -> Path:
    """The folder holding the parser and its script; installs it the first time."""
    target = _cache_dir()
    if (target / "validate.mjs").exists():
        return target
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the AsyncAPI parser needs node and npm on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".asyncapi-parser.", dir=target.parent))
    try:
        (build / "package.json").write_text('{"private": true, "type": "module"}\n')
        subprocess.run(
            # --ignore-scripts: no install hooks (one dependency phones home from one)
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", *PARSER_PACKAGES],
            cwd=build,
            check=True,
            capture_output=True,
            timeout=_INSTALL_TIMEOUT,
        )
        (build / "validate.mjs").write_text(_SCRIPT, encoding="utf-8")
        build.rename(target)  # atomic: a concurrent run never sees a half-installed parser
    except OSError:
        if not (target / "validate.mjs").exists():
            raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def validate_asyncapi(document: Path) -> AsyncApiVerdict:
    """Parse `document` (JSON or YAML) with the official parser and return its verdict."""
    folder = install_parser()
    done = subprocess.run(
        ["node", str(folder / "validate.mjs"), str(document.resolve())],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(done.stdout)
    return AsyncApiVerdict(
        valid=bool(result["valid"]),
        channels=tuple(result["channels"]),
        operations=int(result["operations"]),
        diagnostics=tuple(result["diagnostics"]),
    )
