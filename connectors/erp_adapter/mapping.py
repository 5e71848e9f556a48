"""The ERP request mapping: a quarantine command → one HTTP request, and its answer → an outcome.

Pure: no network, no Kafka. The mapping is data (`qmsflow/config/erp_mapping.toml`, or the file
`QMSFLOW_ERP_MAPPING_FILE` names), validated here at start-up; every placeholder must name a field
of `QuarantineCommand`, so a typo fails the start, not the first hold.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Formatter
from typing import Any, Literal
from urllib.parse import quote
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.erp_adapter.errors import ErpMappingError
from qmsflow.errors import ConfigurationError
from qmsflow.quality.quarantine import QuarantineCommand

__all__ = [
    "COMMAND_FIELDS",
    "ActionMapping",
    "ErpMapping",
    "ErpRequest",
    "ErpResponse",
    "Outcome",
    "ResponseRules",
    "build_request",
    "classify",
    "load_erp_mapping",
    "parse_erp_mapping",
]

#: what an ERP answer means for the command: done (first time or a repeat), retry, or dead letter
Outcome = Literal["applied", "already-applied", "transient", "permanent"]

#: the names a template may use: the fields of the command contract
COMMAND_FIELDS = frozenset(f.name for f in fields(QuarantineCommand))

_PACKAGED_FILE = "config/erp_mapping.toml"
_FORMATTER = Formatter()


def _placeholders(template: str, where: str) -> list[str]:
    """The field names of a template; only plain `{name}` placeholders are allowed."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"{where}: {template!r} is not a valid template: {exc}") from exc
    names = []
    for _text, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or name not in COMMAND_FIELDS:
            raise ValueError(
                f"{where}: expected placeholders naming command fields "
                f"({', '.join(sorted(COMMAND_FIELDS))}), got {{{name}}} in {template!r}"
            )
        names.append(name)
    return names


def _check_templates(value: Any, where: str) -> None:
    if isinstance(value, str):
        _placeholders(value, where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_templates(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_templates(item, f"{where}[{index}]")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ActionMapping(_Model):
    """The request for one action: method, path template and JSON body template."""

    method: Literal["POST", "PUT", "PATCH"]
    path: str = Field(pattern=r"^/")
    body: dict[str, Any]

    @field_validator("path")
    @classmethod
    def _path_placeholders(cls, path: str) -> str:
        _placeholders(path, "path")
        return path

    @field_validator("body")
    @classmethod
    def _body_placeholders(cls, body: dict[str, Any]) -> dict[str, Any]:
        _check_templates(body, "body")
        return body


class ResponseRules(_Model):
    """Which non-2xx status codes mean "already applied" and which mean "try again"."""

    already_applied: frozenset[int] = frozenset({409})
    transient: frozenset[int] = frozenset({408, 425, 429})


class ErpMapping(_Model):
    """The validated contents of `erp_mapping.toml`."""

    version: int
    idempotency_header: str = Field(default="Idempotency-Key", min_length=1)
    headers: dict[str, str] = {}
    responses: ResponseRules = ResponseRules()
    action: dict[Literal["HOLD", "RELEASE"], ActionMapping]

    @field_validator("action")
    @classmethod
    def _both_actions(
        cls, action: dict[Literal["HOLD", "RELEASE"], ActionMapping]
    ) -> dict[Literal["HOLD", "RELEASE"], ActionMapping]:
        missing = {"HOLD", "RELEASE"} - set(action)
        if missing:
            raise ValueError(f"expected a mapping for HOLD and RELEASE, missing {sorted(missing)}")
        return action


@dataclass(frozen=True)
class ErpRequest:
    """One HTTP call to the ERP; `path` is relative to the ERP's base URL."""

    command_id: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class ErpResponse:
    """The ERP's answer; `status` is None when no answer came (refused, reset, timed out)."""

    status: int | None
    text: str


def parse_erp_mapping(document: Mapping[str, Any], source: str = _PACKAGED_FILE) -> ErpMapping:
    """Validate a parsed mapping document; an invalid one is a ConfigurationError saying why."""
    try:
        return ErpMapping.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{source} is invalid: {exc}") from exc


@lru_cache(maxsize=4)
def load_erp_mapping(path: Path | None = None) -> ErpMapping:
    """The mapping in `path`, or the one shipped with the package when None."""
    if path is None:
        source = f"qmsflow/{_PACKAGED_FILE}"
        text = resources.files("qmsflow").joinpath(_PACKAGED_FILE).read_text("utf-8")
    else:
        source = str(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigurationError(f"ERP mapping {source} cannot be read: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML: {exc}") from exc
    return parse_erp_mapping(document, source)


def build_request(command: Mapping[str, Any], mapping: ErpMapping) -> ErpRequest:
    """The request for one decoded command; ErpMappingError when the mapping cannot express it."""
    action = command.get("action")
    command_id = str(command.get("command_id") or "")
    if not command_id:
        raise ErpMappingError("command_id: expected the command's id, got none")
    if action not in mapping.action:
        raise ErpMappingError(
            f"action: expected one of {sorted(mapping.action)}, got {action!r} "
            f"(command {command_id})"
        )
    spec = mapping.action[action]
    values = {name: _json_value(command.get(name)) for name in COMMAND_FIELDS}
    path = _render_path(spec.path, values, command_id)
    body = json.dumps(_render(spec.body, values), ensure_ascii=False).encode("utf-8")
    headers = (
        *mapping.headers.items(),
        ("Content-Type", "application/json"),
        (mapping.idempotency_header, command_id),
    )
    return ErpRequest(command_id, spec.method, path, tuple(headers), body)


def classify(response: ErpResponse, rules: ResponseRules) -> Outcome:
    """What an answer means: 2xx applied; a repeat already applied; 5xx/429/none transient."""
    status = response.status
    if status is None or status >= 500 or status in rules.transient:
        return "transient"
    if 200 <= status < 300:
        return "applied"
    if status in rules.already_applied:
        return "already-applied"
    # 1xx and 3xx should never reach us (redirects are not followed): treat as a refusal a
    # person must look at rather than retrying forever
    return "permanent"


def _json_value(value: Any) -> Any:
    """Command values as JSON: timestamps as ISO 8601, uuids as text, the rest as decoded."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def _render(template: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(template, str):
        names = _placeholders(template, "body")
        if len(names) == 1 and template == f"{{{names[0]}}}":
            return values[names[0]]  # a whole-value placeholder keeps its JSON type
        return template.format_map({n: "" if values[n] is None else values[n] for n in names})
    if isinstance(template, Mapping):
        return {key: _render(item, values) for key, item in template.items()}
    if isinstance(template, list):
        return [_render(item, values) for item in template]
    return template


def _render_path(template: str, values: Mapping[str, Any], command_id: str) -> str:
    names = _placeholders(template, "path")
    empty = [n for n in names if values[n] in (None, "")]
    if empty:
        raise ErpMappingError(
            f"{', '.join(empty)}: expected a value for the ERP path {template!r}, got none "
            f"(command {command_id})"
        )
    return template.format_map({n: quote(str(values[n]), safe="") for n in names})
