"""One thin path through the whole platform: ingest topics → worker → canonical topic → Postgres."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from qmsflow.demo.produce import produce_demo
from qmsflow.kafka.admin import end_offsets
from tests.integration.pipeline import (
    PipelineProcesses,
    count_rows,
    environment,
    prepared_settings,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    settings = prepared_settings(
        kafka_bootstrap,
        postgres_dsn,
        topic_prefix,
        sink_batch_size=250,  # small batches, so a kill lands between commits
    )
    env = environment(settings, kafka_bootstrap, postgres_dsn)
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    processes.start_sink()
    yield processes
    processes.stop()


class TestExactlyTheUniqueEvents:
    def test_duplicates_dropped_corrupt_dead_lettered_sink_killed(
        self, pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """Postgres holds exactly the unique events and the 20 dead letters, despite a SIGKILL.

        5,000 records with 10% resends and 20 corrupt ones; the sink is killed mid-run and
        restarted.
        """
        settings = pipeline.settings
        seed = zlib.crc32(settings.topic_prefix.encode())  # fresh event ids on every run
        sent = produce_demo(
            settings,
            count=5000,
            duplicate_rate=0.1,
            corrupt=20,
            seed=seed,
            echo=lambda _line: None,
        )
        unique = len(sent.unique_event_ids)
        assert sent.duplicates == 5000 - unique and 400 <= sent.duplicates <= 600
        events_topic = settings.topic("quality.events.v1")
        dlq_topic = settings.topic("quality.dlq.v1")

        wait_for(
            lambda: count_rows(postgres_dsn, "qms.quality_event", events_topic) > unique // 4,
            timeout=180,
            what="the sink to write a quarter of the events",
            alive=pipeline.assert_alive,
        )
        pipeline.kill_sink()
        killed_at = count_rows(postgres_dsn, "qms.quality_event", events_topic)
        pipeline.start_sink()

        wait_for(
            lambda: (
                count_rows(postgres_dsn, "qms.quality_event", events_topic) >= unique
                and count_rows(postgres_dsn, "qms.dead_letter", dlq_topic) >= 20
            ),
            timeout=240,
            what=f"{unique} events and 20 dead letters in Postgres",
            alive=pipeline.assert_alive,
        )
        assert killed_at < unique, "the kill must land mid-run for this test to mean anything"

        with psycopg.connect(postgres_dsn) as conn:
            stored = {
                str(row[0])
                for row in conn.execute(
                    "SELECT event_id FROM qms.quality_event WHERE kafka_topic = %s", (events_topic,)
                )
            }
            reasons = conn.execute(
                "SELECT reason_code, reason, original_value FROM qms.dead_letter"
                " WHERE kafka_topic = %s",
                (dlq_topic,),
            ).fetchall()
            offsets = dict(
                ((topic, partition), next_offset)
                for topic, partition, next_offset in conn.execute(
                    "SELECT topic, partition, next_offset FROM qms.sink_offsets"
                    " WHERE consumer_group = %s",
                    (settings.topic("qmsflow-sink"),),
                )
            )
        assert stored == sent.unique_event_ids
        assert len(reasons) == 20
        assert all(code and reason for code, reason, _ in reasons)
        expected_codes = {"framing", "unknown-schema", "wrong-subject", "decode"}
        assert {code for code, _, _ in reasons} <= expected_codes
        assert all(value is not None for _, _, value in reasons)

        counts = end_offsets(settings, [events_topic, dlq_topic])
        assert counts[events_topic] == unique, "dedup let a resend through to the canonical topic"
        assert counts[dlq_topic] == 20
        # the sink's stored positions are exactly the ends of what it consumed
        assert sum(o for (t, _), o in offsets.items() if t == events_topic) == unique
        assert sum(o for (t, _), o in offsets.items() if t == dlq_topic) == 20
