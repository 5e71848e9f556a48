"""`qmsflow reconcile` finds a sink row deleted behind the sink's back, in its partition."""

from __future__ import annotations

import psycopg
import pytest

from qmsflow.reconcile import reconcile
from qmsflow.settings import Settings
from tests.integration.test_sink_stages import SinkThread, produce
from tests.integration.test_sink_stages import settings as settings
from tests.integration.test_sink_stages import sink as sink
from tests.unit.analytics.events import canonical_event
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

LINES = ("sterile-injectables", "oral-solids", "medical-devices", "biologics")


class TestReconcile:
    def test_clean_then_a_deleted_row_is_drift_in_its_partition(
        self, settings: Settings, sink: SinkThread
    ) -> None:
        """All partitions agree after loading; one deleted row makes its partition drift."""
        ids = records.event_ids(40, settings.topic_prefix)
        produce(
            settings,
            [
                (
                    "quality.events.v1",
                    LINES[n % 4].encode(),
                    canonical_event(i, product_line=LINES[n % 4]),
                )
                for n, i in enumerate(ids)
            ],
        )
        sink.wait("40 events in Postgres")
        clean = reconcile(settings, topics=["quality.events.v1"])
        assert clean and not any(c.drift for c in clean)
        assert sum(c.kafka_count for c in clean) == 40

        topic = settings.topic("quality.events.v1")
        with psycopg.connect(settings.dsn) as conn:
            partition = conn.execute(
                "DELETE FROM qms.quality_event WHERE event_id = %s AND kafka_topic = %s"
                " RETURNING kafka_partition",
                (ids[7], topic),
            ).fetchone()
        assert partition is not None
        drifted = [c for c in reconcile(settings, topics=["quality.events.v1"]) if c.drift]
        assert [(c.topic, c.partition) for c in drifted] == [(topic, partition[0])]
        assert drifted[0].missing_in_sink == [ids[7]]
        assert drifted[0].kafka_count == drifted[0].sink_count + 1
