"""The bad-supplier-lot scenario through the running pipeline, then a full replay from offset 0."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.master_data import plant_master_records
from qmsflow.demo.scenarios import Scenario, bad_supplier_lot
from qmsflow.demo.traffic import DemoRecord
from qmsflow.kafka.admin import consumed_offsets, end_offsets
from qmsflow.kafka.producer import create_producer
from qmsflow.settings import Settings
from tests.integration.pipeline import (
    PipelineProcesses,
    environment,
    prepared_settings,
    wait_for,
    worker_read_everything,
)

pytestmark = pytest.mark.integration

#: every sink table the scenario writes, compared row for row before and after the replay
SINK_TABLES = (
    "qms.quality_event",
    "qms.parked_event",
    "qms.incident",
    "qms.incident_member",
    "qms.alert",
    "qms.quarantine_command",
    "qms.escalation",
    "qms.dead_letter",
)


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
    env = {**environment(settings, kafka_bootstrap, postgres_dsn), "QMSFLOW_TICK_INTERVAL": "1"}
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    processes.start_sink()
    yield processes
    processes.stop()


class _Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = AvroCodec(open_registry(settings))
        self.producer = create_producer(settings)

    def master(self, messages: list[tuple[str, str, dict[str, Any]]]) -> None:
        for topic, key, record in messages:
            self.producer.produce(
                self.settings.topic(topic),
                key=key.encode(),
                value=self.codec.encode(f"{topic}-value", record),
            )
        assert self.producer.flush(30) == 0

    def events(self, records: list[DemoRecord]) -> None:
        for r in records:
            self.producer.produce(
                self.settings.topic(r.topic),
                key=r.key.encode(),
                value=self.codec.encode(f"{r.topic}-value", r.record),
            )
        assert self.producer.flush(30) == 0


def _scalar(dsn: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _digest(dsn: str, prefix: str) -> dict[str, str]:
    """A digest of every row of the environment in each sink table (loaded_at included)."""
    digests = {}
    with psycopg.connect(dsn) as conn:
        for table in SINK_TABLES:
            row = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f" FROM {table} t WHERE kafka_topic LIKE %s",
                (prefix + "%",),
            ).fetchone()
            digests[table] = f"{row[0]}:{row[1]}" if row else ""
    return digests


class TestBadSupplierLot:
    def test_one_incident_one_hold_one_release_and_replay_changes_nothing(
        self, pipeline: PipelineProcesses, postgres_dsn: str, tmp_path: Path
    ) -> None:
        """40 events on an unknown lot park, flow once it appears, and replay changes no row.

        They become one incident of 40 members with one alert and one hold; the use-as-is
        disposition releases the lot once; a second worker replaying every ingest topic from
        offset 0 leaves every sink row as it was.
        """
        settings = pipeline.settings
        prefix = settings.topic_prefix
        seed = zlib.crc32(prefix.encode())
        start = datetime.now(UTC) - timedelta(hours=3)
        scenario: Scenario = bad_supplier_lot(seed, start)
        publish = _Publisher(settings)
        publish.master(plant_master_records(start - timedelta(days=30)))
        publish.events(list(scenario.trouble))
        ids = [r.record["event_id"] for r in scenario.trouble]

        def parked(status: str) -> int:
            return int(
                _scalar(
                    postgres_dsn,
                    "SELECT count(*) FROM qms.parked_event WHERE status = %s"
                    " AND event_id = ANY(%s::uuid[]) AND kafka_topic LIKE %s",
                    status,
                    ids,
                    prefix + "%",
                )
            )

        wait_for(
            lambda: parked("PARKED") == 40,
            timeout=120,
            what="40 parked events",
            alive=pipeline.assert_alive,
        )
        assert (
            _scalar(
                postgres_dsn,
                "SELECT count(*) FROM qms.incident WHERE kafka_topic LIKE %s",
                prefix + "%",
            )
            == 0
        ), "parked events must not correlate yet"

        publish.master([scenario.lot_master])
        root = f"lot:{scenario.lot_id}"
        wait_for(
            lambda: (
                parked("RELEASED") == 40
                and _scalar(
                    postgres_dsn,
                    "SELECT max(member_count) FROM qms.incident WHERE root_cause_key = %s"
                    " AND kafka_topic LIKE %s",
                    root,
                    prefix + "%",
                )
                == 40
            ),
            timeout=120,
            what="the 40 released events to form the incident",
            alive=pipeline.assert_alive,
        )
        with psycopg.connect(postgres_dsn) as conn:
            incidents = conn.execute(
                "SELECT incident_id, member_count, suppressed_alerts, source_systems"
                " FROM qms.incident WHERE kafka_topic LIKE %s",
                (prefix + "%",),
            ).fetchall()
            alerts = conn.execute(
                "SELECT incident_id FROM qms.alert WHERE kafka_topic LIKE %s", (prefix + "%",)
            ).fetchall()
            members = conn.execute(
                "SELECT count(*) FROM qms.incident_member WHERE incident_id = %s",
                (incidents[0][0],),
            ).fetchone()
        assert len(incidents) == 1
        incident_id, member_count, suppressed, systems = incidents[0]
        assert (member_count, suppressed, sorted(systems)) == (40, 39, ["LIMS", "MES", "QMS"])
        assert members == (40,)
        assert alerts == [(incident_id,)]

        def commands() -> list[tuple[str, str]]:
            with psycopg.connect(postgres_dsn) as conn:
                return [
                    tuple(r)
                    for r in conn.execute(
                        "SELECT action, lot_id FROM qms.quarantine_command"
                        " WHERE kafka_topic LIKE %s ORDER BY issued_at",
                        (prefix + "%",),
                    )
                ]

        wait_for(
            lambda: commands() == [("HOLD", scenario.lot_id)],
            timeout=60,
            what="one hold command",
            alive=pipeline.assert_alive,
        )

        publish.events([scenario.disposition])
        wait_for(
            lambda: commands() == [("HOLD", scenario.lot_id), ("RELEASE", scenario.lot_id)],
            timeout=60,
            what="one release command",
            alive=pipeline.assert_alive,
        )
        assert (
            _scalar(
                postgres_dsn,
                "SELECT status FROM qms.lot_hold_status WHERE environment = %s AND lot_id = %s",
                prefix,
                scenario.lot_id,
            )
            == "RELEASED"
        )

        # ---- replay: a second worker with empty state reads every ingest topic from offset 0
        before = _digest(postgres_dsn, prefix)
        replay = PipelineProcesses(
            settings, {**pipeline.env, "QMSFLOW_APP_ID": "qmsflow-replay"}, tmp_path / "replay"
        )
        (tmp_path / "replay").mkdir()
        replay.start_worker()
        try:
            replayed = settings.model_copy(update={"app_id": "qmsflow-replay"})

            def replay_caught_up() -> bool:
                return worker_read_everything(replayed)

            wait_for(
                replay_caught_up,
                timeout=180,
                what="the replay worker to catch up",
                alive=replay.assert_alive,
            )
            sinked = [
                settings.topic(t)
                for t in (
                    "quality.events.v1",
                    "quality.incidents.v1",
                    "quality.alerts.v1",
                    "inventory.quarantine-commands.v1",
                    "quality.parked.v1",
                    "capa.escalations.v1",
                )
            ]
            wait_for(
                lambda: all(
                    consumed_offsets(settings, settings.topic("qmsflow-sink"), sinked).get(t, 0)
                    >= n
                    for t, n in end_offsets(settings, sinked).items()
                ),
                timeout=120,
                what="the sink to catch up with the replay",
                alive=pipeline.assert_alive,
            )
        finally:
            replay.stop()
        assert (
            end_offsets(settings, [settings.topic("quality.events.v1")])[
                settings.topic("quality.events.v1")
            ]
            > 41
        ), "the replay must have republished events"
        assert _digest(postgres_dsn, prefix) == before
