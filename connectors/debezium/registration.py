"""Registering a Debezium connector with a Kafka Connect worker through its REST API.

A connector file (`erp-postgres.json`) is `{"name": …, "config": {…}}`, the shape Connect's
`POST /connectors` takes. Values that differ between environments are `${env:NAME}`
placeholders, left for the worker's EnvVarConfigProvider to resolve from its own environment,
so the same file serves the local stack and the Helm chart and no secret passes through here.
Per-deployment names (connector name, `topic.prefix`, `slot.name`) are plain values a caller
overrides.

`register` is idempotent: `PUT /connectors/<name>/config` creates or updates, and a second call
with the same config changes nothing. It returns once the connector and every task report
RUNNING, and raises ConnectorError with the worker's trace when one FAILED.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qmsflow.errors import QmsflowError

__all__ = [
    "ERP_POSTGRES",
    "ConnectorError",
    "ConnectorSpec",
    "MemoryConnect",
    "Transport",
    "delete",
    "load",
    "placeholders",
    "register",
    "resolve",
    "slot_name",
    "status",
]

#: the plant source systems connector (database `erp`, one schema per system), shared by the
#: local stack and the Helm chart
ERP_POSTGRES = Path(__file__).with_name("erp-postgres.json")

#: `${env:NAME}`: the form Kafka's EnvVarConfigProvider resolves when registered as `env`
_PLACEHOLDER = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")

#: Postgres replication slot names: lower-case letters, digits and underscores, at most 63
_SLOT = re.compile(r"[a-z0-9_]{1,63}")

#: a Debezium snapshot of a small database takes seconds; a cold worker loads the task in ~10
REGISTER_TIMEOUT = 120.0

#: (status code, decoded JSON body or None) for one HTTP exchange with the worker
Response = tuple[int, Any]

#: one HTTP exchange: (method, url, JSON body or None) -> Response; the seam unit tests replace
Transport = Callable[[str, str, Any], Response]


class ConnectorError(QmsflowError):
    """A connector file is invalid, or the worker refused, failed or did not start a connector."""


@dataclass(frozen=True)
class ConnectorSpec:
    """A connector's name and its config map (every value a string, as Connect stores them)."""

    name: str
    config: Mapping[str, str]

    def with_overrides(self, overrides: Mapping[str, str]) -> ConnectorSpec:
        """Return a copy with `overrides` applied; a `name` key renames the connector."""
        config = {**self.config, **{k: v for k, v in overrides.items() if k != "name"}}
        return replace(self, name=overrides.get("name", self.name), config=config)


def load(path: Path) -> ConnectorSpec:
    """Read and check a connector file; raises ConnectorError naming the file and the field."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConnectorError(f"expected a JSON connector file at {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("name"), str):
        raise ConnectorError(f'expected {{"name": str, "config": {{…}}}} in {path}')
    config = document.get("config")
    if not isinstance(config, dict) or "connector.class" not in config:
        raise ConnectorError(f"expected a config object with connector.class in {path}")
    for key, value in config.items():
        if not isinstance(value, str):
            raise ConnectorError(
                f"expected every config value in {path} to be a string, "
                f"but {key} is {type(value).__name__} {value!r}"
            )
    return ConnectorSpec(name=document["name"], config=config)


def placeholders(config: Mapping[str, str]) -> set[str]:
    """Names of the environment variables the config's `${env:NAME}` placeholders read."""
    return {name for value in config.values() for name in _PLACEHOLDER.findall(value)}


def resolve(config: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Substitute `${env:NAME}` from `environ` here, for a worker without the env provider.

    Raises ConnectorError listing every variable `environ` lacks.
    """
    missing = sorted(placeholders(config) - environ.keys())
    if missing:
        raise ConnectorError(
            f"expected environment variables {', '.join(missing)} for the connector's "
            "${env:…} placeholders, but they are not set"
        )
    return {
        key: _PLACEHOLDER.sub(lambda match: environ[match.group(1)], value)
        for key, value in config.items()
    }


def slot_name(topic_prefix: str, base: str = "qmsflow_erp") -> str:
    """The replication slot for a qmsflow topic prefix: `t1a2b3c4d.` -> `qmsflow_erp_t1a2b3c4d`.

    Slots are per connector and outlive it; one per topic prefix keeps test runs and
    environments sharing a database apart.
    """
    suffix = re.sub(r"[^a-z0-9_]", "_", topic_prefix.lower()).strip("_")
    slot = f"{base}_{suffix}" if suffix else base
    if not _SLOT.fullmatch(slot):
        raise ConnectorError(
            f"expected a slot name of at most 63 of [a-z0-9_] from prefix {topic_prefix!r}, "
            f"got {slot!r}"
        )
    return slot


def register(
    connect_url: str,
    config_path: Path = ERP_POSTGRES,
    overrides: Mapping[str, str] | None = None,
    *,
    timeout: float = REGISTER_TIMEOUT,
    transport: Transport | None = None,
) -> ConnectorSpec:
    """Create or update the connector and wait until it and all its tasks are RUNNING.

    Returns the spec as registered. Raises ConnectorError when the worker rejects the config
    (its validation message included), when the connector or a task FAILED (with its trace),
    or when they are not RUNNING within `timeout` seconds.
    """
    send = transport or http_transport
    spec = load(config_path).with_overrides(overrides or {})
    base = connect_url.rstrip("/")
    name = urllib.parse.quote(spec.name, safe="")
    code, body = send("PUT", f"{base}/connectors/{name}/config", dict(spec.config))
    if code not in (200, 201):
        raise ConnectorError(
            f"expected Kafka Connect at {base} to accept connector {spec.name}, "
            f"but it answered {code}: {_message(body)}"
        )
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while True:
        last = status(base, spec.name, transport=send)
        if last is not None and _all_running(spec.name, last):
            return spec
        if time.monotonic() > deadline:
            raise ConnectorError(
                f"expected connector {spec.name} and its tasks RUNNING on {base} within "
                f"{timeout:.0f} s, but the last status was {json.dumps(last)}"
            )
        time.sleep(0.5)


def status(connect_url: str, name: str, *, transport: Transport | None = None) -> Any:
    """The worker's `/connectors/<name>/status` document, or None while it is unknown."""
    send = transport or http_transport
    quoted = urllib.parse.quote(name, safe="")
    code, body = send("GET", f"{connect_url.rstrip('/')}/connectors/{quoted}/status", None)
    return body if code == 200 else None


def delete(
    connect_url: str,
    name: str,
    *,
    timeout: float = REGISTER_TIMEOUT,
    transport: Transport | None = None,
) -> bool:
    """Stop the connector, wait until its tasks are gone, then delete it.

    Returns False when it did not exist. Its replication slot stays in the database; once this
    returns no task holds it, so it can be dropped (a plain DELETE returns while the task still
    runs, and a task streaming on would re-create a slot dropped under it).
    """
    send = transport or http_transport
    base = f"{connect_url.rstrip('/')}/connectors/{urllib.parse.quote(name, safe='')}"
    code, body = send("PUT", f"{base}/stop", None)
    if code == 404:
        return False
    if code not in (200, 202, 204):
        raise ConnectorError(f"expected to stop connector {name}, but got {code}: {_message(body)}")
    deadline = time.monotonic() + timeout
    while True:
        last = status(connect_url, name, transport=send)
        if last is None or (last["connector"].get("state") == "STOPPED" and not last["tasks"]):
            break
        if time.monotonic() > deadline:
            raise ConnectorError(
                f"expected connector {name} STOPPED without tasks within {timeout:.0f} s, "
                f"but the last status was {json.dumps(last)}"
            )
        time.sleep(0.2)
    code, body = send("DELETE", base, None)
    if code in (200, 204, 404):
        return code != 404
    raise ConnectorError(f"expected to delete connector {name}, but got {code}: {_message(body)}")


def _all_running(name: str, document: Mapping[str, Any]) -> bool:
    """RUNNING everywhere; raises ConnectorError at the first FAILED connector or task."""
    connector = document.get("connector", {})
    tasks = document.get("tasks", [])
    failed = [("connector", connector)] if connector.get("state") == "FAILED" else []
    failed += [(f"task {t.get('id')}", t) for t in tasks if t.get("state") == "FAILED"]
    if failed:
        where, part = failed[0]
        raise ConnectorError(
            f"expected connector {name} to run, but its {where} FAILED on worker "
            f"{part.get('worker_id')}:\n{part.get('trace', '(no trace)')}"
        )
    return (
        connector.get("state") == "RUNNING"
        and bool(tasks)
        and all(t.get("state") == "RUNNING" for t in tasks)
    )


def _message(body: Any) -> str:
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return json.dumps(body)


def http_transport(method: str, url: str, body: Any) -> Response:
    """One JSON request with urllib; HTTP errors come back as their code, not as exceptions."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        # a worker answers in milliseconds; 30 s covers one busy rebalancing its group
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            code = response.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        code = exc.code
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectorError(f"expected Kafka Connect to answer {method} {url}: {exc}") from exc
    try:
        return code, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return code, raw.decode("utf-8", errors="replace")


@dataclass
class MemoryConnect:
    """An in-memory Connect worker for unit tests, as a Transport: `register(…, transport=w)`.

    Stored configs are answered back; `task_states` scripts the task state reported by each
    successive status call (the last one repeats), so a FAILED task or a slow start is data.
    """

    task_states: list[str] = field(default_factory=lambda: ["RUNNING"])
    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    reject: str | None = None

    def __call__(self, method: str, url: str, body: Any) -> Response:
        """Answer one request as a worker would."""
        self.requests.append((method, url))
        path = urllib.parse.urlparse(url).path.split("/")
        name = urllib.parse.unquote(path[2]) if len(path) > 2 else ""
        if method == "PUT" and path[-1] == "config":
            if self.reject is not None:
                return 400, {"error_code": 400, "message": self.reject}
            created = name not in self.configs
            self.configs[name] = dict(body)
            self.stopped.discard(name)
            return (201 if created else 200), {"name": name, "config": body, "tasks": []}
        if method == "GET" and path[-1] == "status":
            if name not in self.configs:
                return 404, {"error_code": 404, "message": f"No status found for {name}"}
            if name in self.stopped:
                return 200, {"name": name, "connector": {"state": "STOPPED"}, "tasks": []}
            state = self.task_states.pop(0) if len(self.task_states) > 1 else self.task_states[0]
            task: dict[str, Any] = {"id": 0, "state": state, "worker_id": "memory:0"}
            if state == "FAILED":
                task["trace"] = "org.postgresql.util.PSQLException: connection refused"
            return 200, {
                "name": name,
                "connector": {"state": "RUNNING", "worker_id": "memory:0"},
                "tasks": [task],
            }
        if method == "PUT" and path[-1] == "stop":
            if name not in self.configs:
                return 404, {"error_code": 404, "message": f"Connector {name} not found"}
            self.stopped.add(name)
            return 202, None
        if method == "DELETE":
            self.stopped.discard(name)
            return (204, None) if self.configs.pop(name, None) is not None else (404, None)
        return 404, {"error_code": 404, "message": f"{method} {url} unknown"}
