"""qms.sla_rule (migration 0013) mirrors qmsflow/config/sla.toml, which stays the source."""

from __future__ import annotations

import re
from pathlib import Path

from qmsflow.quality.sla import load_sla_rules

MIGRATIONS = Path(__file__).parents[3] / "connectors" / "postgres_sink" / "migrations"
_ROW = re.compile(
    r"\('(?P<sla>[^']+)',\s*'(?P<interface>[^']+)',\s*'(?P<event_type>[^']+)',\s*"
    r"'(?P<output>[^']+)',\s*'\{(?P<actions>[^}]*)\}',\s*(?P<within>\d+)\)"
)


def mirrored_rules() -> dict[str, tuple[str, str, str, tuple[str, ...], int]]:
    """The rows the migrations insert into qms.sla_rule, by SLA name (the latest one wins)."""
    rows = {}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        text = path.read_text("utf-8")
        if "qms.sla_rule" not in text:
            continue
        for m in _ROW.finditer(text):
            actions = tuple(a for a in m["actions"].split(",") if a)
            rows[m["sla"]] = (
                m["interface"],
                m["event_type"],
                m["output"],
                actions,
                int(m["within"]),
            )
    return rows


def test_every_sla_is_mirrored_as_configured() -> None:
    """A change to sla.toml needs a migration that updates qms.sla_rule, or the view drifts."""
    configured = {
        r.name: (r.interface, r.event_type, r.output, r.actions, int(r.within_seconds))
        for r in load_sla_rules().sla
    }
    assert mirrored_rules() == configured
