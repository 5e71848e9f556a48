"""Poison that Avro accepts, mid-stream through the real worker and sink: nothing stops.

Valid demo events are sent before and after a handful of boundary poison records (a NUL, a
6,000-character id, a year-3000 timestamp, a 9999-12-31 due date, a bidirectional override, a
record at 99% of the maximum message size). The ledger must be exact: every valid event one
row, every poison record one dead letter at its own coordinates with its reason, and the events
sent after the poison arrive within 30 s while both processes stay up.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.demo.master_data import demo_master_data
from qmsflow.demo.produce import DemoPublisher
from qmsflow.demo.traffic import DemoRecord, DemoTraffic, backdated_start
from tests.integration.boundary_poison import (
    Poison,
    boundary_poison,
    large_message_producer,
    near_limit_poison,
)
from tests.integration.pipeline import (
    PipelineProcesses,
    count_rows,
    environment,
    prepared_settings,
    wait_for,
)

pytestmark = pytest.mark.integration

VALID = 1200
#: the issue's bound: events sent after a poison record are rows within this many seconds
ARRIVAL_SECONDS = 30.0

Coordinates = tuple[str, int, int]


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    settings = prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix, sink_batch_size=200)
    processes = PipelineProcesses(
        settings, environment(settings, kafka_bootstrap, postgres_dsn), tmp_path
    )
    processes.start_worker()
    processes.start_sink()
    yield processes
    processes.stop()


class _Sender:
    """An ordinary producer with delivery reports: where the broker put each record."""

    def __init__(self, pipeline: PipelineProcesses) -> None:
        self.settings = pipeline.settings
        self.codec = AvroCodec(open_registry(self.settings))
        self.producer = large_message_producer(self.settings)
        self.positions: dict[str, Coordinates] = {}
        self.refused: list[str] = []

    def send(self, records: list[DemoRecord]) -> None:
        for record in records:
            event_id = str(record.record["event_id"])

            def delivered(error: Any, message: Any, event_id: str = event_id) -> None:
                if error is not None:
                    self.refused.append(f"{event_id}: {error}")
                else:
                    self.positions[event_id] = (
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    )

            self.producer.produce(
                self.settings.topic(record.topic),
                key=record.key.encode("utf-8"),
                value=self.codec.encode(f"{record.topic}-value", record.record),
                on_delivery=delivered,
            )
            self.producer.poll(0)
        assert self.producer.flush(60) == 0, "records not acknowledged within 60 s"
        assert not self.refused, self.refused


def _stored_ids(dsn: str, events_topic: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_id FROM qms.quality_event WHERE kafka_topic = %s", (events_topic,)
        ).fetchall()
    return {str(row[0]) for row in rows}


def _dead_letters(dsn: str, dlq_topic: str) -> list[tuple[Coordinates, str, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT source_topic, source_partition, source_offset, reason_code, reason,"
            " octet_length(original_value) FROM qms.dead_letter WHERE kafka_topic = %s",
            (dlq_topic,),
        ).fetchall()
    return [((t, p, o), code, reason, size or 0) for t, p, o, code, reason, size in rows]


class TestBoundaryPoisonMidStream:
    def test_each_poison_is_one_dead_letter_and_traffic_flows_on(
        self, pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """Exact ledger: valid events are rows, poison records dead letters; nothing stalls."""
        settings = pipeline.settings
        seed = zlib.crc32(settings.topic_prefix.encode())
        start = backdated_start(VALID, datetime.now(UTC))
        valid = list(DemoTraffic(seed, start).records(VALID))
        DemoPublisher(settings).master(demo_master_data(seed, start, VALID))
        sender = _Sender(pipeline)
        rng = random.Random(seed)
        poison: list[Poison] = [
            *boundary_poison(valid, rng),
            near_limit_poison(valid, rng, sender.codec),
        ]
        events_topic = settings.topic("quality.events.v1")
        dlq_topic = settings.topic("quality.dlq.v1")
        before, after = valid[: VALID // 2], valid[VALID // 2 :]
        unique_before = {str(r.record["event_id"]) for r in before}
        every_valid = {str(r.record["event_id"]) for r in valid}

        sender.send(before)
        wait_for(
            lambda: _stored_ids(postgres_dsn, events_topic) >= unique_before,
            timeout=180,
            what=f"the {len(unique_before)} events sent before the poison as rows",
            alive=pipeline.assert_alive,
        )
        sender.send([p.record for p in poison])
        sent_after = time.monotonic()
        sender.send(after)
        wait_for(
            lambda: _stored_ids(postgres_dsn, events_topic) >= every_valid,
            timeout=ARRIVAL_SECONDS,
            what=f"the {len(after)} events sent after the poison as rows",
            alive=pipeline.assert_alive,
        )
        arrived_in = time.monotonic() - sent_after
        wait_for(
            lambda: count_rows(postgres_dsn, "qms.dead_letter", dlq_topic) >= len(poison),
            timeout=60,
            what=f"{len(poison)} dead letters",
            alive=pipeline.assert_alive,
        )
        time.sleep(2)  # anything more (a doubled row, a second dead letter) would show by now
        pipeline.assert_alive()

        assert _stored_ids(postgres_dsn, events_topic) == every_valid
        assert count_rows(postgres_dsn, "qms.quality_event", events_topic) == len(every_valid)
        letters = _dead_letters(postgres_dsn, dlq_topic)
        by_place = {where: (code, reason, size) for where, code, reason, size in letters}
        assert len(letters) == len(by_place) == len(poison), letters
        for item in poison:
            where = sender.positions[str(item.record.record["event_id"])]
            assert where in by_place, f"{item.kind}: no dead letter at {where}"
            code, reason, _ = by_place[where]
            assert code == item.reason_code, f"{item.kind}: {code} {reason}"
            assert reason.startswith("limits: "), f"{item.kind}: {reason}"
        assert arrived_in <= ARRIVAL_SECONDS
        # the dead letter of the near-limit record keeps a prefix, not the whole original
        near = sender.positions[str(poison[-1].record.record["event_id"])]
        assert 0 < by_place[near][2] < 64 * 1024, by_place[near]
