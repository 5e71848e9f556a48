"""An injected slow path: outputs of events recorded long ago breach their SLAs."""

from __future__ import annotations

import re
import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.integration.pipeline import wait_for
from tests.integration.test_tracing import TracedPlant, plant, scalar

pytestmark = pytest.mark.integration

__all__ = ["plant"]  # the fixture, shared with test_tracing


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of a child's /metrics endpoint; 0 when it has not been set yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


class TestSlaBreach:
    def test_late_quarantine_command_and_incident_breach_their_slas(
        self, plant: TracedPlant, postgres_dsn: str
    ) -> None:
        """An NC recorded 10 min ago and an OOS result 2 min ago are both late.

        The NC's quarantine command misses its 5-minute SLA and the OOS result's incident its
        1-minute SLA: each is one qms.sla_breach row (with the event's trace id) and one count
        of `qmsflow_sla_breaches_total` on the worker's /metrics, whose compliance ratio is 0.
        """
        prefix = plant.settings.topic_prefix
        now = datetime.now(UTC)
        nc = plant.nonconformance(now - timedelta(minutes=10))
        oos = plant.lab_oos(now - timedelta(minutes=2))
        plant.publish(nc, "qms.nonconformance.v1", [])

        def breaches() -> dict[str, tuple[str, int, int, str | None]]:
            with psycopg.connect(postgres_dsn) as conn:
                rows = conn.execute(
                    "SELECT sla, event_id::text, elapsed_ms, limit_ms, trace_id"
                    " FROM qms.sla_breach WHERE kafka_topic LIKE %s",
                    (prefix + "%",),
                ).fetchall()
            return {
                sla: (event_id, elapsed, limit, trace)
                for sla, event_id, elapsed, limit, trace in rows
            }

        # one after the other: ingest topics are not ordered among themselves, and the lot's
        # HOLD command belongs to whichever event reaches the quality agent first
        wait_for(
            lambda: "nonconformance-quarantine" in breaches(),
            timeout=120,
            what="the quarantine command's qms.sla_breach row",
            alive=plant.processes.assert_alive,
        )
        plant.publish(oos, "lims.lab-result.v1", [])
        wait_for(
            lambda: len(breaches()) == 2,
            timeout=120,
            what="the incident's qms.sla_breach row",
            alive=plant.processes.assert_alive,
        )
        found = breaches()
        event_id, elapsed, limit, trace_id = found["nonconformance-quarantine"]
        assert (event_id, limit) == (nc["event_id"], 300_000) and elapsed >= 600_000
        assert trace_id == scalar(
            postgres_dsn, "SELECT trace_id FROM qms.quality_event WHERE event_id = %s", event_id
        )
        assert trace_id is not None
        event_id, elapsed, limit, _ = found["lab-oos-incident"]
        assert (event_id, limit) == (oos["event_id"], 60_000) and elapsed >= 120_000

        port = plant.metrics_port
        for sla in ("nonconformance-quarantine", "lab-oos-incident"):
            assert metric(port, "qmsflow_sla_breaches_total", sla=sla) == 1.0
            assert metric(port, "qmsflow_sla_compliance_ratio", sla=sla) == 0.0
