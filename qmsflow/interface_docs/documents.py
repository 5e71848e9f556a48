"""The generated interface documents as files: build them all, write them, find stale ones.

`build_documents` is the one place that loads every source (topic catalog, schema lock, system
files, SLA rules, reason codes, retry policies) and renders:
  - docs/asyncapi.json  the AsyncAPI 3.0 document,
  - docs/asyncapi.md    the same as a page,
  - docs/icd/README.md  the systems and every dead-letter reason code,
  - docs/icd/<system>.md one interface control document per `config/systems/<system>.toml`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.metadata import version as package_version
from pathlib import Path

from qmsflow.errors import ConfigurationError
from qmsflow.interface_docs.asyncapi import build_asyncapi
from qmsflow.interface_docs.channels import describe_channels
from qmsflow.interface_docs.icd import Policies, render_asyncapi_page, render_icd, render_index
from qmsflow.interface_docs.reasons import reason_codes
from qmsflow.interface_docs.systems import SystemSpec, load_systems
from qmsflow.quality.sla import load_sla_rules
from qmsflow.settings import PROJECT_ROOT, Settings
from qmsflow.topics import load_catalog

__all__ = ["ASYNCAPI_FILE", "build_documents", "stale_documents", "write_documents"]

ASYNCAPI_FILE = Path("docs/asyncapi.json")
ICD_DIR = Path("docs/icd")


def _policies() -> Policies:
    from streams.processing import RetryPolicy

    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    return Policies(
        ingest_retry_delays=tuple(RetryPolicy().delays()),
        erp_timeout=defaults["erp_timeout"],
        erp_retry_backoff=defaults["erp_retry_backoff"],
        erp_retry_backoff_max=defaults["erp_retry_backoff_max"],
        erp_breaker_failures=defaults["erp_breaker_failures"],
        erp_breaker_cooldown=defaults["erp_breaker_cooldown"],
    )


def build_documents(schemas_dir: Path | None = None) -> dict[Path, str]:
    """Every generated document, by path relative to the project root."""
    catalog = load_catalog()
    systems = load_systems()
    channels = describe_channels(catalog, systems, schemas_dir or PROJECT_ROOT / "schemas" / "avro")
    document = build_asyncapi(channels, version=package_version("qmsflow"))
    reasons = reason_codes()
    sla_rules = load_sla_rules()
    _check_references(
        systems,
        {c.name for c in channels},
        {r.code for r in reasons},
        {rule.name for rule in sla_rules.sla},
    )
    policies = _policies()
    files = {
        ASYNCAPI_FILE: json.dumps(document, indent=2, ensure_ascii=False) + "\n",
        Path("docs/asyncapi.md"): render_asyncapi_page(channels, document),
        ICD_DIR / "README.md": render_index(systems, reasons),
    }
    for system in systems:
        files[ICD_DIR / f"{system.slug}.md"] = render_icd(
            system, channels, sla_rules, reasons, policies
        )
    return files


def _check_references(
    systems: Sequence[SystemSpec], topics: set[str], codes: set[str], sla_names: set[str]
) -> None:
    """A system file may only name declared topics, existing reason codes and SLA rules."""
    for system in systems:
        problems = [
            *(
                f"reads {r.topic!r}: not a declared topic"
                for r in system.reads
                if r.topic not in topics
            ),
            *(
                f"dead-letter reason {c!r}: no error class has it"
                for c in system.dead_letter_reasons
                if c not in codes
            ),
            *(f"SLA {n!r}: not in config/sla.toml" for n in system.sla if n not in sla_names),
        ]
        if problems:
            raise ConfigurationError(f"config/systems/{system.slug}.toml: " + "; ".join(problems))


def write_documents(root: Path = PROJECT_ROOT) -> list[Path]:
    """Write every document under `root`; remove ICDs of systems that no longer exist."""
    files = build_documents()
    (root / ICD_DIR).mkdir(parents=True, exist_ok=True)
    for old in (root / ICD_DIR).glob("*.md"):
        if old.relative_to(root) not in files:
            old.unlink()
    for path, text in files.items():
        (root / path).write_text(text, encoding="utf-8")
    return sorted(files)


def stale_documents(root: Path = PROJECT_ROOT) -> list[str]:
    """The documents under `root` that differ from what the code generates now, with why."""
    files = build_documents()
    problems = [
        f"{path}: {'missing' if not (root / path).exists() else 'differs from the code'}"
        for path, text in sorted(files.items())
        if not (root / path).exists() or (root / path).read_text("utf-8") != text
    ]
    problems += [
        f"{old.relative_to(root)}: no system file generates it"
        for old in sorted((root / ICD_DIR).glob("*.md"))
        if old.relative_to(root) not in files
    ]
    return problems
