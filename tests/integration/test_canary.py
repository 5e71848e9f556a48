"""The canary on the real worker and sink: paths healthy, timed, recorded, hidden from analysts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY

from qmsflow.canary import PATHS, build_run, run_once
from qmsflow.demo.master_data import plant_master_records
from qmsflow.demo.produce import DemoPublisher
from tests.integration.pipeline import PipelineProcesses, environment, prepared_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    settings = prepared_settings(
        kafka_bootstrap,
        postgres_dsn,
        topic_prefix,
        sink_batch_size=200,
    )
    # the plant's parts and suppliers, as production has them; the canary brings its own lot
    DemoPublisher(settings).master(plant_master_records(datetime.now(UTC) - timedelta(days=30)))
    env = {**environment(settings, kafka_bootstrap, postgres_dsn), "QMSFLOW_TICK_INTERVAL": "1"}
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    processes.start_sink()
    yield processes
    processes.stop()


class TestCanary:
    def test_every_path_is_healthy_timed_recorded_and_hidden_from_analysts(
        self, pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """One run: a row, a HOLD and a RELEASE arrive, recorded and measured; analysts see none."""
        run_id = uuid.uuid4()
        results = run_once(pipeline.settings, timeout=120, run_id=run_id)
        pipeline.assert_alive()
        assert [r.path for r in results] == list(PATHS)
        assert all(r.healthy for r in results), results
        for result in results:
            assert result.latency_seconds is not None and 0 < result.latency_seconds < 120
            assert REGISTRY.get_sample_value("qmsflow_canary_healthy", {"path": result.path}) == 1.0
            assert REGISTRY.get_sample_value(
                "qmsflow_canary_latency_seconds", {"path": result.path}
            ) == pytest.approx(result.latency_seconds)

        run = build_run(run_id, datetime.now(UTC))
        with psycopg.connect(postgres_dsn) as conn:
            rows = conn.execute(
                "SELECT path, healthy, latency_ms, event_id::text, lot_id FROM qms.canary_check"
                " WHERE run_id = %s ORDER BY path",
                (str(run_id),),
            ).fetchall()
            assert sorted((p, h) for p, h, *_ in rows) == sorted((p, True) for p in PATHS)
            assert {(e, lot) for *_, e, lot in rows} == {(run.probe_event_id, run.lot_id)}
            # the synthetic event is loaded (the raw table has it) ...
            loaded = conn.execute(
                "SELECT synthetic FROM qms.quality_event WHERE event_id = %s",
                (run.probe_event_id,),
            ).fetchone()
            assert loaded == (True,)
            # ... and no analyst view shows it or its lot
            for view, column, value in (
                ("analytics.incident_member", "event_id", run.probe_event_id),
                ("analytics.incident_member", "lot_id", run.lot_id),
                ("analytics.lot_on_hold", "lot_id", run.lot_id),
            ):
                (shown,) = conn.execute(
                    f"SELECT count(*) FROM {view} WHERE {column}::text = %s", (value,)
                ).fetchone() or (0,)
                assert shown == 0, f"{view} shows the canary's {column} {value}"
