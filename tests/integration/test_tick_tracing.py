"""Outputs produced on a tick carry a traceparent: a released parked event stays in its trace."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.pipeline import wait_for
from tests.integration.test_tracing import TracedPlant, plant, scalar

pytestmark = pytest.mark.integration

__all__ = ["plant"]  # the fixture, shared with test_tracing


class TestTickTracing:
    def test_a_released_event_and_its_hold_stay_in_the_events_trace(
        self, plant: TracedPlant, postgres_dsn: str
    ) -> None:
        """An NC about a lot nobody knows parks; when the lot arrives a tick releases it.

        The release's quality span and the sink's span of the HOLD it caused carry the trace id
        the ingest agent gave the event (before this, a tick's outputs had no traceparent).
        """
        prefix = plant.settings.topic_prefix
        lot = f"LX-{uuid.uuid4().hex[:8]}"
        record = plant.nonconformance(datetime.now(UTC))
        record["lot_id"] = lot
        record["payload"]["affected_lots"] = [lot]
        plant.publish(record, "qms.nonconformance.v1", [])

        def trace_id() -> Any:
            return scalar(
                postgres_dsn,
                "SELECT trace_id FROM qms.quality_event"
                " WHERE event_id = %s AND kafka_topic LIKE %s",
                record["event_id"],
                prefix + "%",
            )

        wait_for(
            lambda: trace_id() is not None,
            timeout=120,
            what="the event's row",
            alive=plant.processes.assert_alive,
        )
        trace = trace_id()
        wait_for(
            lambda: (
                scalar(
                    postgres_dsn,
                    "SELECT status FROM qms.parked_event"
                    " WHERE event_id = %s AND kafka_topic LIKE %s",
                    record["event_id"],
                    prefix + "%",
                )
                == "PARKED"
            ),
            timeout=120,
            what="the event parked for its unknown lot",
            alive=plant.processes.assert_alive,
        )
        parked = [s for s in plant.spans() if s["trace_id"] == trace and s["name"] == "quality"]
        assert len(parked) == 1  # the span that parked it

        _, _, lot_record = plant.scenario.lot_master
        plant.producer.produce(
            plant.settings.topic("md.lot.v1"),
            key=lot.encode(),
            value=plant.codec.encode("md.lot.v1-value", {**lot_record, "lot_id": lot}),
        )
        assert plant.producer.flush(30) == 0

        def hold_span() -> list[dict[str, Any]]:
            return [
                s
                for s in plant.spans()
                if s["trace_id"] == trace
                and s["name"] == "sink"
                and s["attributes"].get("messaging.source") == "inventory.quarantine-commands.v1"
            ]

        wait_for(
            lambda: bool(hold_span()),
            timeout=120,
            what="the HOLD's sink span in the trace",
            alive=plant.processes.assert_alive,
        )
        releases = [s for s in plant.spans() if s["trace_id"] == trace and s["name"] == "quality"]
        assert len(releases) == len(parked) + 1, releases
        (hold,) = hold_span()
        assert hold["parent_span_id"] == releases[-1]["span_id"]
        assert (
            scalar(
                postgres_dsn,
                "SELECT action FROM qms.quarantine_command WHERE trigger_event_id = %s",
                record["event_id"],
            )
            == "HOLD"
        )
