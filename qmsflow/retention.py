"""Retention per record type: archive regulated rows, then delete them from `qms`; audit never.

Rules are data (`qmsflow/config/retention.toml`). `plan_retention` is pure: what each policy
would do at a given instant. `run_retention` carries a plan out, one transaction per record
type: for an archived type `DELETE … RETURNING` feeds `INSERT INTO archive.<table>` in one
statement, so a row is never in neither place nor in both.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qmsflow.errors import ConfigurationError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
#: schemas retention may delete from; `audit` (Part 11 trails) and `archive` are never pruned
_PRUNABLE_SCHEMAS = frozenset({"qms"})


class RetentionPolicy(BaseModel):
    """How long one record type stays in `qms`, and whether it is archived first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_type: str
    table: str
    age_from: str
    days: int = Field(ge=1)
    archive: bool

    @field_validator("table")
    @classmethod
    def _prunable(cls, table: str) -> str:
        schema, _, name = table.partition(".")
        if not (_IDENTIFIER.match(schema) and _IDENTIFIER.match(name)):
            raise ValueError(f"expected schema.table, got {table!r}")
        if schema not in _PRUNABLE_SCHEMAS:
            raise ValueError(
                f"expected a table in {sorted(_PRUNABLE_SCHEMAS)}, got {table!r}: "
                "audit and archive tables are never pruned"
            )
        return table

    @field_validator("age_from")
    @classmethod
    def _column(cls, column: str) -> str:
        if not _IDENTIFIER.match(column):
            raise ValueError(f"expected a column name, got {column!r}")
        return column

    @property
    def archive_table(self) -> str:
        """Where archived rows go: archive.<table name>."""
        return "archive." + self.table.partition(".")[2]


@dataclass(frozen=True)
class RetentionStep:
    """What one policy does at one instant: rows older than `cutoff` leave `table`."""

    policy: RetentionPolicy
    cutoff: datetime

    @property
    def action(self) -> str:
        """`archive+delete` or `delete`."""
        return "archive+delete" if self.policy.archive else "delete"


def parse_policies(document: Mapping[str, Any]) -> list[RetentionPolicy]:
    """Policies from a parsed retention.toml; a ConfigurationError says which entry is wrong."""
    policies = []
    for record_type, entry in document.items():
        if not isinstance(entry, Mapping):
            raise ConfigurationError(
                f"retention.toml: [{record_type}] expected a table of settings, got {entry!r}"
            )
        try:
            policies.append(RetentionPolicy(record_type=record_type, **entry))
        except ValidationError as error:
            raise ConfigurationError(f"retention.toml: [{record_type}] {error}") from error
    tables = [p.table for p in policies]
    if len(set(tables)) != len(tables):
        raise ConfigurationError("retention.toml: a table is named by more than one entry")
    return policies


def load_policies() -> list[RetentionPolicy]:
    """The policies shipped with the package."""
    text = resources.files("qmsflow").joinpath("config/retention.toml").read_text("utf-8")
    return parse_policies(tomllib.loads(text))


def plan_retention(policies: Sequence[RetentionPolicy], now: datetime) -> list[RetentionStep]:
    """One step per policy: the cutoff is `now` minus its days (`now` must be time-zone aware)."""
    if now.tzinfo is None:
        raise ValueError("now: expected an aware datetime, got a naive one")
    return [RetentionStep(p, now - timedelta(days=p.days)) for p in policies]


def run_retention(
    conn: psycopg.Connection[Any],
    steps: Sequence[RetentionStep],
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] = lambda _line: None,
) -> dict[str, int]:
    """Carry out the steps (each in its own transaction); return rows removed per record type."""
    done: dict[str, int] = {}
    for step in steps:
        policy = step.policy
        where = f"{policy.age_from} < %s"
        with conn.transaction():
            if dry_run:
                row = conn.execute(
                    f"SELECT count(*) FROM {policy.table} WHERE {where}", (step.cutoff,)
                ).fetchone()
                count = int(row[0]) if row else 0
            elif policy.archive:
                columns = ", ".join(_columns(conn, policy.table))
                cur = conn.execute(
                    f"WITH moved AS (DELETE FROM {policy.table} WHERE {where} RETURNING *)"
                    f" INSERT INTO {policy.archive_table} ({columns}) SELECT {columns} FROM moved",
                    (step.cutoff,),
                )
                count = cur.rowcount
            else:
                count = conn.execute(
                    f"DELETE FROM {policy.table} WHERE {where}", (step.cutoff,)
                ).rowcount
        done[policy.record_type] = count
        verb = "would remove" if dry_run else "removed"
        echo(
            f"{policy.record_type:20} {step.action:15} {verb} {count} rows"
            f" with {policy.age_from} before {step.cutoff.isoformat()}"
        )
    return done


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    schema, _, name = table.partition(".")
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, name),
    ).fetchall()
    if not rows:
        raise ConfigurationError(f"retention: table {table} does not exist")
    return [r[0] for r in rows]
