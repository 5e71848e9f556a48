"""Each analytics view returns the expected rows for a small scripted scenario.

The scenario is inserted straight into the qms tables in one transaction, with a marker in
every key the views group or filter by, and rolled back at the end: nothing stays behind and
other tests' rows never match. The database's comments are checked against the migrations.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from connectors.postgres_sink.migrations import load_migrations, migrate
from connectors.postgres_sink.rows import (
    ESCALATION_COLUMNS,
    QUALITY_EVENT_COLUMNS,
    QUARANTINE_COMMAND_COLUMNS,
    escalation_row,
    quality_event_row,
    quarantine_command_row,
)
from qmsflow.cli import analyst_catalog_from_db, analyst_catalog_from_sql
from qmsflow.quality.event import Coordinates
from tests.unit.analytics.events import canonical_event
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
TODAY = NOW.date()


@dataclass
class Scenario:
    conn: psycopg.Connection[Any]
    marker: str
    offset: int = 0

    def _insert(self, table: str, columns: tuple[str, ...], row: tuple[Any, ...]) -> None:
        self.conn.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(row))})",
            row,
        )

    def at(self, topic: str = "") -> Coordinates:
        """The next lineage of the scenario's own (fake) topic, or of `topic` under its prefix."""
        self.offset += 1
        name = f"analytics-test.{self.marker}" + (f".{topic}" if topic else "")
        return Coordinates(name, 0, self.offset)

    def event(
        self, record: str, event_type: str = "nonconformance", env: str = "", **fields: Any
    ) -> str:
        """Insert one quality event of the scenario's product line (in `env`); return its id."""
        event_id = str(uuid.uuid4())
        event = canonical_event(
            event_id,
            event_type=event_type,
            source_record_id=f"{record}-{self.marker}",
            product_line=f"pl-{self.marker}",
            occurred_at=fields.pop("occurred_at", NOW - timedelta(days=1)),
            recorded_at=fields.pop("recorded_at", NOW),
            **fields,
        )
        self._insert(
            "qms.quality_event",
            QUALITY_EVENT_COLUMNS,
            quality_event_row(event, self.at(f"{env}quality.events.v1")),
        )
        return event_id

    def escalation(self, record: str, level: int, due: date, env: str = "") -> None:
        """Insert an escalation of a scenario CAPA (in `env`, a prefix after the scenario's)."""
        key = f"QMS:{record}-{self.marker}"
        esc = {
            **records.escalation(key, level),
            "due_date": due,
            "product_line": f"pl-{self.marker}",
        }
        at = self.at(f"{env}capa.escalations.v1")
        self._insert("qms.escalation", ESCALATION_COLUMNS, escalation_row(esc, at))

    def command(
        self, lot: str, action: str, trigger: str, issued_at: datetime, env: str = ""
    ) -> None:
        """Insert a quarantine command for a scenario lot (in `env`)."""
        cmd = {
            **records.quarantine_command(f"{lot}-{self.marker}", action),  # type: ignore[arg-type]
            "trigger_event_id": trigger,
            "issued_at": issued_at,
        }
        self._insert(
            "qms.quarantine_command",
            QUARANTINE_COMMAND_COLUMNS,
            quarantine_command_row(cmd, self.at(f"{env}inventory.quarantine-commands.v1")),
        )

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query with %(m)s bound to the marker."""
        return self.conn.execute(sql, {"m": self.marker}).fetchall()


@pytest.fixture
def scenario(postgres_dsn: str) -> Iterator[Scenario]:
    migrate(postgres_dsn, echo=lambda _line: None)
    with psycopg.connect(postgres_dsn) as conn:
        yield Scenario(conn, uuid.uuid4().hex[:8])
        conn.rollback()


def nc_payload(title: str) -> tuple[str, dict[str, Any]]:
    return (
        "io.qmsflow.quality.Nonconformance",
        {"title": title, "description": "d", "nc_source": "internal", "defect_code": "defect"},
    )


class TestAnalyticsViews:
    def test_open_nonconformances_by_line_and_age(self, scenario: Scenario) -> None:
        """Latest state per record decides; closed and synthetic records never show."""
        s = scenario
        s.event(
            "NC-A",
            occurred_at=NOW - timedelta(days=40),
            recorded_at=NOW - timedelta(days=40),
            severity="critical",
            payload=nc_payload("first title"),
        )
        s.event(
            "NC-A",
            status="in_progress",
            recorded_at=NOW,
            severity="critical",
            payload=nc_payload("current title"),
        )
        s.event("NC-B", recorded_at=NOW - timedelta(days=3))
        s.event("NC-B", status="closed", recorded_at=NOW)
        s.event("NC-C", synthetic=True)
        s.event("NC-D", occurred_at=NOW - timedelta(days=2), severity="major")
        detail = s.rows(
            "SELECT nonconformance_id, status, title, age_days, age_band FROM"
            " analytics.open_nonconformance WHERE product_line = 'pl-' || %(m)s ORDER BY 1"
        )
        m = s.marker
        assert detail == [
            (f"NC-A-{m}", "in_progress", "current title", 40, "31-90 days"),
            (f"NC-D-{m}", "open", "Particulate in vial", 2, "0-7 days"),
        ]
        summary = s.rows(
            "SELECT age_band, open_count, critical_count, oldest_age_days FROM"
            " analytics.open_nonconformance_by_line WHERE product_line = 'pl-' || %(m)s ORDER BY 1"
        )
        assert summary == [("0-7 days", 1, 0, 2), ("31-90 days", 1, 1, 40)]

    def test_incidents_with_their_members(self, scenario: Scenario) -> None:
        """One row per loaded, non-synthetic member, under its own environment's incident."""
        s = scenario
        real, synthetic, other = s.event("NC-1"), s.event("NC-2", synthetic=True), s.event("NC-3")
        incident = records.incident(f"lot:L-{s.marker}", members=(real, synthetic))
        # the same incident_id in a second environment, with a member of its own
        elsewhere = records.incident(f"lot:L-{s.marker}", members=(other,))
        from connectors.postgres_sink.rows import (
            INCIDENT_COLUMNS,
            INCIDENT_MEMBER_COLUMNS,
            incident_member_rows,
            incident_row,
        )

        for view, at in (
            (incident, s.at("quality.incidents.v1")),
            (elsewhere, s.at("validation.quality.incidents.v1")),
        ):
            s._insert("qms.incident", INCIDENT_COLUMNS, incident_row(view, at))
            for row in incident_member_rows(view, at):
                s._insert("qms.incident_member", INCIDENT_MEMBER_COLUMNS, row)
        environment = f"analytics-test.{s.marker}."
        assert s.rows(
            "SELECT environment, root_cause_key, event_id::text, source_record_id"
            " FROM analytics.incident_member WHERE root_cause_key = 'lot:L-' || %(m)s ORDER BY 1"
        ) == [
            (environment, f"lot:L-{s.marker}", real, f"NC-1-{s.marker}"),
            (f"{environment}validation.", f"lot:L-{s.marker}", other, f"NC-3-{s.marker}"),
        ]

    def test_lots_on_hold(self, scenario: Scenario) -> None:
        """Held lots show; released lots and holds triggered by synthetic events do not."""
        s = scenario
        real, synthetic = s.event("NC-1"), s.event("NC-2", synthetic=True)
        s.command("L1", "HOLD", real, NOW - timedelta(days=5))
        s.command("L2", "HOLD", real, NOW - timedelta(days=5))
        s.command("L2", "RELEASE", real, NOW - timedelta(days=1))
        s.command("L3", "HOLD", synthetic, NOW)
        # the same commands (same ids) in a second environment, which also releases L1
        s.command("L1", "HOLD", real, NOW - timedelta(days=5), env="validation.")
        s.command("L1", "RELEASE", real, NOW - timedelta(days=2), env="validation.")
        s.command("L2", "HOLD", real, NOW - timedelta(days=5), env="validation.")
        environment = f"analytics-test.{s.marker}."
        assert s.rows(
            "SELECT environment, lot_id, days_on_hold, trigger_source_record_id"
            " FROM analytics.lot_on_hold WHERE lot_id LIKE '%%-' || %(m)s ORDER BY 1, 2"
        ) == [
            (environment, f"L1-{s.marker}", 5, "NCR-1042"),
            (f"{environment}validation.", f"L2-{s.marker}", 5, "NCR-1042"),
        ]

    def test_capa_ageing_and_overdue_escalations(self, scenario: Scenario) -> None:
        """Open CAPAs with days overdue and highest level; closed records drop out of both."""
        s = scenario
        capa = (
            "io.qmsflow.quality.Capa",
            {
                "title": "Fix sealing",
                "capa_type": "corrective",
                "owner_id": "owner1",
                "due_date": TODAY - timedelta(days=10),
            },
        )
        s.event("CAPA-1", event_type="capa", occurred_at=NOW - timedelta(days=30), payload=capa)
        s.event("CAPA-2", event_type="capa", payload=capa, recorded_at=NOW - timedelta(hours=2))
        s.event("CAPA-2", event_type="capa", payload=capa, status="closed")
        for record in ("CAPA-1", "CAPA-2"):
            s.escalation(record, 1, TODAY - timedelta(days=10))
            s.escalation(record, 2, TODAY - timedelta(days=10))
        # a second environment (same escalation ids) took CAPA-1 to level 3, and escalated
        # CAPA-2, which only production closed: each environment sees its own escalations
        for record, level in (("CAPA-1", 1), ("CAPA-1", 3), ("CAPA-2", 1)):
            s.escalation(record, level, TODAY - timedelta(days=10), env="validation.")
        assert s.rows(
            "SELECT capa_id, owner_id, age_days, due_date, days_overdue, escalation_level"
            " FROM analytics.capa_ageing WHERE product_line = 'pl-' || %(m)s"
        ) == [(f"CAPA-1-{s.marker}", "owner1", 30, TODAY - timedelta(days=10), 10, 2)]
        environment = f"analytics-test.{s.marker}."
        assert s.rows(
            "SELECT environment, record_key, level, days_overdue FROM analytics.overdue_escalation"
            " WHERE product_line = 'pl-' || %(m)s ORDER BY 1, 2"
        ) == [
            (environment, f"QMS:CAPA-1-{s.marker}", 2, 10),
            (f"{environment}validation.", f"QMS:CAPA-1-{s.marker}", 3, 10),
            (f"{environment}validation.", f"QMS:CAPA-2-{s.marker}", 1, 10),
        ]

    def test_supplier_scorecard(self, scenario: Scenario) -> None:
        """Distinct records per type; NC rate = NCs / inspections; synthetic ignored."""
        s = scenario
        supplier = f"SUP-{s.marker}"
        s.event("NC-1", supplier_id=supplier)
        s.event("NC-1", supplier_id=supplier, status="in_progress")  # same record, once
        s.event("NC-2", supplier_id=supplier)
        s.event("NC-3", supplier_id=supplier, synthetic=True)
        for n in range(4):
            s.event(f"INSP-{n}", event_type="inspection_result", supplier_id=supplier)
        s.event("SCAR-1", event_type="supplier_corrective_action", supplier_id=supplier)
        s.event("AF-1", event_type="audit_finding", supplier_id=supplier)
        assert s.rows(
            "SELECT inspection_count, nonconformance_count, nc_rate, scar_count,"
            " audit_finding_count FROM analytics.supplier_scorecard"
            " WHERE supplier_id = 'SUP-' || %(m)s"
        ) == [(4, 2, Decimal("0.5000"), 1, 1)]

    def test_environmental_excursions(self, scenario: Scenario) -> None:
        """Past alert or action limit (pressure: below); in-limit and synthetic readings not."""
        s = scenario

        def reading(
            record: str,
            parameter: str,
            value: str,
            alert: str,
            action: str,
            synthetic: bool = False,
        ) -> None:
            payload = (
                "io.qmsflow.quality.EnvironmentalReading",
                {
                    "location_id": "R1",
                    "parameter": parameter,
                    "value": Decimal(value),
                    "unit": "u",
                    "alert_limit": Decimal(alert),
                    "action_limit": Decimal(action),
                    "cleanroom_grade": "B",
                },
            )
            s.event(
                record, event_type="environmental_reading", payload=payload, synthetic=synthetic
            )

        reading("R-1", "particles_0_5um", "120", "100", "200")
        reading("R-2", "particles_0_5um", "250", "100", "200")
        reading("R-3", "particles_0_5um", "50", "100", "200")
        reading("R-4", "differential_pressure", "5", "10", "8")
        reading("R-5", "particles_0_5um", "999", "100", "200", synthetic=True)
        m = s.marker
        assert s.rows(
            "SELECT reading_id, parameter, value, excursion_level FROM"
            " analytics.environmental_excursion WHERE product_line = 'pl-' || %(m)s ORDER BY 1"
        ) == [
            (f"R-1-{m}", "particles_0_5um", Decimal("120"), "alert"),
            (f"R-2-{m}", "particles_0_5um", Decimal("250"), "action"),
            (f"R-4-{m}", "differential_pressure", Decimal("5"), "action"),
        ]

    def test_data_quality(self, scenario: Scenario) -> None:
        """Dead letters by reason and stage; parked events by missing kind and furthest state."""
        s = scenario
        m = s.marker
        for n in range(2):
            s.conn.execute(
                "INSERT INTO qms.dead_letter (dead_letter_id, reason_code, reason, stage,"
                " source_topic, source_partition, source_offset, headers, failed_at, kafka_topic,"
                " kafka_partition, kafka_offset) VALUES (gen_random_uuid(), %s, 'r', 'sink', 't',"
                " 0, %s, '[]', now(), 't', 0, %s)",
                (f"code-{m}", n, n),
            )
        for event_id, steps, synthetic in (
            (str(uuid.uuid4()), ("PARKED", "RELEASED"), False),
            (str(uuid.uuid4()), ("PARKED",), False),
            (str(uuid.uuid4()), ("PARKED",), True),
        ):
            for status in steps:
                s.conn.execute(
                    "INSERT INTO qms.parked_event (event_id, status, event_type, product_line,"
                    " missing_references, parked_at, deadline_at, event_json, kafka_topic,"
                    " kafka_partition, kafka_offset) VALUES (%s, %s, 'nonconformance', 'p',"
                    " %s, now(), now(), %s, 't', 0, 0)",
                    (
                        event_id,
                        status,
                        [f"kind{m}:x"],
                        f'{{"synthetic": {str(synthetic).lower()}}}',
                    ),
                )
        assert s.rows(
            "SELECT source, reason, state, record_count FROM analytics.data_quality"
            " WHERE reason IN ('code-' || %(m)s, 'missing kind' || %(m)s) ORDER BY 1, 3"
        ) == [
            ("dead_letter", f"code-{m}", "sink", 2),
            ("parked", f"missing kind{m}", "PARKED", 1),
            ("parked", f"missing kind{m}", "RELEASED", 1),
        ]


class TestAnalystDocsSource:
    def test_database_comments_equal_the_migrations(self, scenario: Scenario) -> None:
        """`db docs` (live database) and the unit test (migration SQL) see the same catalog."""
        assert analyst_catalog_from_db(scenario.conn) == analyst_catalog_from_sql(
            m.sql for m in load_migrations()
        )
