"""analytics.sla_compliance on a scripted scenario: outputs, late ones, synthetic ones left out.

The scenario is inserted straight into the qms tables in one transaction under a unique marker
(its own fake topic, hence its own `environment`) and rolled back (tests/integration/
test_analytics.py's Scenario).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from connectors.postgres_sink.rows import (
    INCIDENT_COLUMNS,
    INCIDENT_MEMBER_COLUMNS,
    incident_member_rows,
    incident_row,
)
from tests.integration.test_analytics import NOW, Scenario, scenario
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

__all__ = ["scenario"]  # the fixture, shared with test_analytics


def breach(s: Scenario, event_id: str, *, late_by: timedelta, synthetic: bool = False) -> None:
    """A qms.sla_breach row of the nonconformance-quarantine SLA for one scenario event."""
    at = s.at("ops.sla-breaches.v1")
    s.conn.execute(
        "INSERT INTO qms.sla_breach (breach_id, sla, interface, event_id, event_type,"
        " source_system, source_record_id, product_line, site, output, output_id, recorded_at,"
        " produced_at, elapsed_ms, limit_ms, synthetic, kafka_topic, kafka_partition,"
        " kafka_offset) VALUES (%s, 'nonconformance-quarantine', 'QMS nonconformance → ERP"
        " quarantine command', %s, 'nonconformance', 'QMS', 'NC', %s, 'BOS1',"
        " 'quarantine_command', 'cmd', %s, %s, %s, 300000, %s, %s, %s, %s)",
        (
            str(uuid.uuid4()),
            event_id,
            f"pl-{s.marker}",
            NOW,
            NOW + timedelta(minutes=5) + late_by,
            int((timedelta(minutes=5) + late_by).total_seconds() * 1000),
            synthetic,
            at.topic,
            at.partition,
            at.offset,
        ),
    )


class TestSlaCompliance:
    def test_compliance_per_interface_counts_holds_and_leaves_out_synthetic(
        self, scenario: Scenario
    ) -> None:
        """Four real HOLDs, one late: 0.75 on time; a RELEASE and a canary HOLD do not count."""
        s = scenario
        real = [s.event(f"NC-{n}") for n in range(4)]
        for n, event_id in enumerate(real):
            s.command(f"L{n}", "HOLD", event_id, NOW)
        s.command("L0", "RELEASE", real[0], NOW)  # the SLA measures holds only
        breach(s, real[1], late_by=timedelta(seconds=90))
        canary = s.event("NC-C", synthetic=True)
        s.command("LC", "HOLD", canary, NOW)
        breach(s, canary, late_by=timedelta(minutes=10), synthetic=True)

        rows = s.rows(
            "SELECT interface, sla, within_seconds, day, outputs, breaches, compliance,"
            " worst_seconds FROM analytics.sla_compliance"
            " WHERE environment = 'analytics-test.' || %(m)s || '.'"
        )
        day = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
        assert rows == [
            (
                "QMS nonconformance → ERP quarantine command",
                "nonconformance-quarantine",
                300,
                day,
                4,
                1,
                Decimal("0.7500"),
                Decimal("390.0"),
            )
        ]

    def test_a_day_with_breaches_but_no_loaded_output_shows_no_ratio(
        self, scenario: Scenario
    ) -> None:
        """A late output whose command is not loaded yet is a breach with an empty ratio."""
        s = scenario
        breach(s, s.event("NC-1"), late_by=timedelta(seconds=1))
        rows = s.rows(
            "SELECT outputs, breaches, compliance FROM analytics.sla_compliance"
            " WHERE environment = 'analytics-test.' || %(m)s || '.'"
        )
        assert rows == [(0, 1, None)]

    def test_incident_is_measured_by_the_members_of_its_own_environment(
        self, scenario: Scenario
    ) -> None:
        """A canary-only incident is left out though another environment's, same id, is real."""
        s = scenario
        canary = s.event("LAB-C", event_type="lab_result", synthetic=True)
        real = s.event("LAB-1", event_type="lab_result")
        cause = f"lot:L-SLA-{s.marker}"
        for members, topic in (
            ((canary,), "quality.incidents.v1"),
            ((real,), "validation.quality.incidents.v1"),
        ):
            view = {**records.incident(cause, members=members), "event_types": ["lab_result"]}
            at = s.at(topic)
            s._insert("qms.incident", INCIDENT_COLUMNS, incident_row(view, at))
            for row in incident_member_rows(view, at):
                s._insert("qms.incident_member", INCIDENT_MEMBER_COLUMNS, row)
        rows = s.rows(
            "SELECT environment, outputs FROM analytics.sla_compliance"
            " WHERE sla = 'lab-oos-incident'"
            " AND environment LIKE 'analytics-test.' || %(m)s || '.%%'"
        )
        assert rows == [(f"analytics-test.{s.marker}.validation.", 1)]
