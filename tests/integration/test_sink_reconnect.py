"""The sink survives losing its Postgres session (a failover, a restart) without exiting."""

from __future__ import annotations

import psycopg
import pytest

from qmsflow.reconcile import reconcile
from qmsflow.settings import Settings
from tests.integration.pipeline import wait_for
from tests.integration.test_sink_stages import SinkThread, produce
from tests.integration.test_sink_stages import settings as settings
from tests.integration.test_sink_stages import sink as sink
from tests.unit.analytics.events import canonical_event
from tests.unit.connectors import stage_records as records

pytestmark = pytest.mark.integration

LINES = ("sterile-injectables", "oral-solids", "medical-devices", "biologics")
WAVES = 3
PER_WAVE = 150


def sink_sessions(settings: Settings) -> list[int]:
    """Backend pids of this test's sink (its application_name names its group)."""
    name = f"qmsflow-sink {settings.topic(f'{settings.app_id}-sink')}"[:63]
    with psycopg.connect(settings.dsn) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
    return [pid for (pid,) in rows]


def loaded(settings: Settings) -> int:
    with psycopg.connect(settings.dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM qms.quality_event WHERE kafka_topic = %s",
            (settings.topic("quality.events.v1"),),
        ).fetchone()
    return int(row[0]) if row else 0


class TestPostgresSessionLost:
    def test_terminated_session_is_replaced_and_nothing_is_lost_or_doubled(
        self, settings: Settings, sink: SinkThread
    ) -> None:
        """Three terminated sessions mid-stream: the sink reconnects; every event once."""
        ids = records.event_ids(WAVES * PER_WAVE, settings.topic_prefix)
        seen_pids: set[int] = set()
        for wave in range(WAVES):
            chunk = ids[wave * PER_WAVE : (wave + 1) * PER_WAVE]
            produce(
                settings,
                [
                    (
                        "quality.events.v1",
                        LINES[n % 4].encode(),
                        canonical_event(i, product_line=LINES[n % 4]),
                    )
                    for n, i in enumerate(chunk)
                ],
            )
            wait_for(
                lambda: bool(sink_sessions(settings)),
                timeout=30,
                what="the sink's Postgres session",
                alive=sink.assert_alive,
            )
            pids = sink_sessions(settings)
            seen_pids.update(pids)
            with psycopg.connect(settings.dsn) as admin:
                killed = admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                    " FROM unnest(%s::int[]) AS pid",
                    (pids,),
                ).fetchone()
            assert killed is not None and killed[0] == len(pids) >= 1
        sink.wait("every event in Postgres after three lost sessions")
        sink.assert_alive()
        assert loaded(settings) == WAVES * PER_WAVE
        now = sink_sessions(settings)
        assert now and not set(now) & seen_pids, "the sink did not open a new session"
        drift = [c for c in reconcile(settings, topics=["quality.events.v1"]) if c.drift]
        assert not drift, drift
