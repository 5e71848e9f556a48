"""Kafka ACLs per service account, derived from the code's own topics, groups and tables.

Nothing here is a second list of topics: every name comes from where the code that uses it
gets it (CONVENTIONS §12):
  - the topic catalog (`config/topics.toml`): ingest, canonical and internal topics the worker
    reads, every topic whose `producers` names qmsflow (the worker writes them);
  - the constants the stream code reads with (`MASTER_TOPICS`, `EMPLOYEE_TOPIC`, `CDC_TOPICS`)
    and the master-data reader's group prefix;
  - the Faust tables declared in `streams/*.py` (each has a `<app id>-<table>-changelog` topic,
    plus Faust's `<app id>-__assignor-__leader` topic), found by reading the modules' syntax
    tree, because building the app needs a broker (the CDC agent lists topics at start-up);
  - the sink's table bindings (`connectors.postgres_sink.rows.BINDINGS`) and its group;
  - the ERP adapter's topic (`connectors.erp_adapter.adapter.COMMANDS_TOPIC`) and its groups
    (`<app id>-erp-adapter`, and `<app id>-erp-adapter-<route>` per ERP of a routing table);
  - the feature toggles (`qmsflow.toggles.TOGGLES_TOPIC`), read whole by the worker and the ERP
    adapter with `assign()` and no commits, so they need no group ACL.
Each service may also write `quality.dlq.v1`, where it puts what it cannot process.
The group names follow the code's rule `settings.topic(f"{app_id}-<service>")`; the tests in
tests/deploy check these against the modules that build them.
"""

from __future__ import annotations

import ast
import importlib.util
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog

__all__ = [
    "Acl",
    "Service",
    "faust_table_names",
    "plan_acls",
    "render_commands",
    "render_table",
]

Service = Literal["worker", "sink", "erp-adapter", "migrate"]
ResourceType = Literal["topic", "group"]
PatternType = Literal["literal", "prefixed"]
Operation = Literal["Read", "Write", "Describe", "Create", "DescribeConfigs", "AlterConfigs"]

#: where every service puts what it cannot process
DEAD_LETTER_TOPIC = "quality.dlq.v1"
#: the master-data reader's group is `<prefix>qmsflow-md-reader-<random>` (streams/master_data.py)
MD_READER_GROUP = "qmsflow-md-reader-"
#: the batch runtime's changelog restores read as `<prefix>qmsflow-restore-<random>`
#: (streams/changelog_state.py), with `assign()` like the master-data reader
RESTORE_GROUP = "qmsflow-restore-"

_READ: tuple[Operation, ...] = ("Read", "Describe")
_WRITE: tuple[Operation, ...] = ("Write", "Describe")
# Faust creates its changelog and leader topics itself (topic_allow_declare) and reads them back
# on recovery.
_OWN: tuple[Operation, ...] = ("Create", "Read", "Write", "Describe")
# `qmsflow topics create` creates missing topics and checks the others' layout and configuration.
_ADMIN: tuple[Operation, ...] = ("Create", "Describe", "DescribeConfigs", "AlterConfigs")


@dataclass(frozen=True, order=True)
class Acl:
    """One allow rule: a service may perform operations on one resource (or name prefix)."""

    service: Service
    resource_type: ResourceType
    name: str
    pattern: PatternType
    operations: tuple[Operation, ...]


def faust_table_names(streams_dir: Path | None = None) -> tuple[str, ...]:
    """The names of the Faust tables the worker declares, read from `streams/*.py`.

    A table is a call `<x>.Table("name", …)`, a call of a local helper `table("name")` that
    wraps it, or a key of a module-level dict named `…_TABLES` from which tables are declared
    by name (streams/quality_processor.py). Sorted, without repeats.
    """
    directory = streams_dir or _streams_dir()
    names: set[str] = set()
    for path in sorted(directory.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
            names.update(_declared_table_names(node))
            if not isinstance(node, ast.Call) or not node.args:
                continue
            callee = node.func
            called = (
                callee.attr
                if isinstance(callee, ast.Attribute)
                else callee.id
                if isinstance(callee, ast.Name)
                else ""
            )
            first = node.args[0]
            if (
                called in ("Table", "table")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                names.add(first.value)
    return tuple(sorted(names))


def _declared_table_names(node: ast.AST) -> set[str]:
    """String keys of `NAME_TABLES = {...}` at module level (tables declared by name)."""
    if not isinstance(node, ast.Assign | ast.AnnAssign) or not isinstance(node.value, ast.Dict):
        return set()
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    if not any(isinstance(t, ast.Name) and t.id.endswith("_TABLES") for t in targets):
        return set()
    return {
        key.value
        for key in node.value.keys
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    }


def _streams_dir() -> Path:
    spec = importlib.util.find_spec("streams")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package 'streams' is not importable: is qmsflow installed?")
    return Path(next(iter(spec.submodule_search_locations)))


def plan_acls(settings: Settings, catalog: TopicCatalog) -> list[Acl]:
    """Every ACL each service account needs, in a stable order."""
    from connectors.erp_adapter.adapter import COMMANDS_TOPIC
    from connectors.postgres_sink.rows import BINDINGS
    from qmsflow.quality.master_data import MASTER_TOPICS
    from qmsflow.toggles import TOGGLES_TOPIC
    from streams.golden_records import CDC_TOPICS
    from streams.master_data import EMPLOYEE_TOPIC

    t = settings.topic
    app_id = t(settings.app_id)
    acls: list[Acl] = []

    def add(
        service: Service,
        names: Iterable[str],
        ops: tuple[Operation, ...],
        resource: ResourceType = "topic",
        pattern: PatternType = "literal",
    ) -> None:
        acls.extend(Acl(service, resource, name, pattern, ops) for name in sorted(set(names)))

    # worker: the ingest, quality and correlate agents, the ticks timer, master data, CDC
    worker_reads = [
        *(s.name for s in catalog.topics if s.role in ("ingest", "canonical", "internal")),
        *MASTER_TOPICS.values(),
        EMPLOYEE_TOPIC,
        TOGGLES_TOPIC,
    ]
    add("worker", (t(n) for n in worker_reads), _READ)
    add("worker", [t(CDC_TOPICS)], _READ, pattern="prefixed")
    worker_writes = [s.name for s in catalog.topics if "qmsflow" in s.producers]
    add("worker", (t(n) for n in worker_writes), _WRITE)
    faust_topics = [f"{app_id}-{table}-changelog" for table in faust_table_names()]
    add("worker", [*faust_topics, f"{app_id}-__assignor-__leader"], _OWN)
    add("worker", [app_id], ("Read",), resource="group")
    add("worker", [t(MD_READER_GROUP)], ("Read",), resource="group", pattern="prefixed")
    if settings.ingest_group != app_id:  # the batch runtime commits under a group of its own
        add("worker", [settings.ingest_group], ("Read",), resource="group")
        add("worker", [t(RESTORE_GROUP)], ("Read",), resource="group", pattern="prefixed")

    # sink: every bound topic, dead letters of records it cannot map, its own group
    add("sink", (t(b.topic) for b in BINDINGS), _READ)
    add("sink", [t(DEAD_LETTER_TOPIC)], _WRITE)
    add("sink", [t(f"{settings.app_id}-sink")], ("Read",), resource="group")

    # ERP adapter: the quarantine commands, the toggles, dead letters of commands the ERP refuses,
    # its group and, with a routing table, one group per route (the prefix covers both)
    add("erp-adapter", [t(COMMANDS_TOPIC), t(TOGGLES_TOPIC)], _READ)
    add("erp-adapter", [t(DEAD_LETTER_TOPIC)], _WRITE)
    add("erp-adapter", [t(f"{settings.app_id}-erp-adapter")], ("Read",), resource="group")
    add(
        "erp-adapter",
        [t(f"{settings.app_id}-erp-adapter-")],
        ("Read",),
        resource="group",
        pattern="prefixed",
    )

    # migrate: the pre-install Job running `qmsflow topics create`
    add("migrate", (t(s.name) for s in catalog.topics), _ADMIN)
    return acls


def _lines(acls: Iterable[Acl], principals: dict[Service, str]) -> Iterator[str]:
    for acl in acls:
        parts = [
            "kafka-acls.sh",
            "--bootstrap-server",
            '"$KAFKA_BOOTSTRAP_SERVERS"',
            "--command-config",
            '"$KAFKA_ADMIN_CONFIG"',
            "--add",
            "--allow-principal",
            shlex.quote(principals[acl.service]),
        ]
        for op in acl.operations:
            parts += ["--operation", op]
        parts += [f"--{acl.resource_type}", shlex.quote(acl.name)]
        if acl.pattern == "prefixed":
            parts += ["--resource-pattern-type", "prefixed"]
        yield " ".join(parts)


def render_commands(acls: Iterable[Acl], principals: dict[Service, str]) -> str:
    """A shell script of `kafka-acls.sh --add` commands, one per ACL."""
    header = [
        "#!/bin/sh",
        "# generated by `qmsflow acl plan`; needs KAFKA_BOOTSTRAP_SERVERS and KAFKA_ADMIN_CONFIG",
        "# (a client properties file for an account allowed to alter ACLs)",
        "set -eu",
    ]
    return "\n".join([*header, *_lines(acls, principals)]) + "\n"


def render_table(acls: Iterable[Acl], principals: dict[Service, str]) -> str:
    """A plain-text table: principal, resource, name, pattern, operations."""
    rows = [("principal", "resource", "name", "pattern", "operations")]
    rows += [
        (principals[a.service], a.resource_type, a.name, a.pattern, ",".join(a.operations))
        for a in acls
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return (
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )
        + "\n"
    )
