"""The dead-letter reason codes the code can write, read from the code itself.

A reason code is the `reason_code` class attribute of a `ContractError` subclass; the classes are
found by reading the packages' syntax trees (like `qmsflow.acl` finds Faust tables), so a new
error class anywhere in qmsflow, streams or connectors shows up in the documents without being
imported or listed. Anything else a stage catches is dead-lettered as `unexpected`
(`qmsflow.quality.dead_letter.dead_letter`).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UNEXPECTED", "ReasonCode", "reason_codes"]

#: the code of an error that is not a ContractError (qmsflow/quality/dead_letter.py)
UNEXPECTED = "unexpected"
_PACKAGES = ("qmsflow", "streams", "connectors")


@dataclass(frozen=True, order=True)
class ReasonCode:
    """A reason code, the error class that carries it and what it means (its docstring)."""

    code: str
    error: str
    meaning: str
    module: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not importable: is qmsflow installed?")
    return Path(next(iter(spec.submodule_search_locations)))


def reason_codes() -> tuple[ReasonCode, ...]:
    """Every reason code, sorted by code; `unexpected` included."""
    found = [
        ReasonCode(
            UNEXPECTED,
            "any other exception",
            "A stage failed on the record for a reason no contract names; a bug to report.",
            "qmsflow.quality.dead_letter",
        )
    ]
    for package in _PACKAGES:
        root = _package_dir(package)
        for path in sorted(root.rglob("*.py")):
            module = ".".join((package, *path.relative_to(root).with_suffix("").parts))
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and any(
                            isinstance(t, ast.Name) and t.id == "reason_code" for t in item.targets
                        )
                        and isinstance(item.value, ast.Constant)
                        and isinstance(item.value.value, str)
                    ):
                        doc = (ast.get_docstring(node) or "").split("\n")[0]
                        found.append(ReasonCode(item.value.value, node.name, doc, module))
    return tuple(sorted(found))
