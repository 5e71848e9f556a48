"""The Grafana dashboard queries only metrics that qmsflow/telemetry.py defines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from qmsflow import telemetry
from qmsflow.settings import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "qmsflow-dashboard.json"
#: the series names prometheus_client exposes for each metric type
SUFFIXES: dict[type, tuple[str, ...]] = {
    Counter: ("_total",),
    Gauge: ("",),
    Histogram: ("_bucket", "_sum", "_count"),
}


def _exposed_series() -> dict[str, str]:
    """Every series name telemetry.py's metrics expose, mapped to its metric's name."""
    series = {}
    for value in vars(telemetry).values():
        for kind, suffixes in SUFFIXES.items():
            if isinstance(value, kind):
                name = value._name  # prometheus_client has no public accessor
                series.update({name + suffix: name for suffix in suffixes})
    return series


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if isinstance(variable.get("query"), dict):
            queries.append(variable["query"]["query"])
    return queries


class TestGrafanaDashboard:
    def test_every_queried_metric_exists_in_telemetry(self) -> None:
        """Each qmsflow_* series a panel or variable queries is exposed by telemetry.py."""
        exposed = _exposed_series()
        queried = {
            m
            for q in _queries(json.loads(DASHBOARD.read_text()))
            for m in re.findall(r"\bqmsflow_[a-z0-9_]+", q)
        }
        assert queried, "the dashboard queries no qmsflow metric"
        assert sorted(queried - exposed.keys()) == []

    def test_the_dashboard_covers_the_operating_questions(self) -> None:
        """Throughput, dead letters, lag, end-to-end latency, SLA compliance and sink rows."""
        queried = " ".join(_queries(json.loads(DASHBOARD.read_text())))
        for series in (
            "qmsflow_events_in_total",
            "qmsflow_dead_letters_total",
            "qmsflow_end_to_end_seconds_bucket",
            "qmsflow_consumer_lag",
            "qmsflow_sla_compliance_ratio",
            "qmsflow_sink_rows_total",
        ):
            assert series in queried, series

    def test_panels_have_unique_ids_and_a_datasource_variable(self) -> None:
        """Grafana needs unique panel ids; the datasource is chosen on import, not hard-wired."""
        dashboard = json.loads(DASHBOARD.read_text())
        ids = [p["id"] for p in _panels(dashboard["panels"])]
        assert len(ids) == len(set(ids))
        names = [v["name"] for v in dashboard["templating"]["list"]]
        assert "datasource" in names
