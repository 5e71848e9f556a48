"""Scenarios 3 and 2: Postgres stopped for 30 s mid-run; the broker stopped and restarted."""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from qmsflow.errors import StackError
from qmsflow.stack import LocalKafka, LocalPostgres
from tests.chaos.chaos_pipeline import ChaosPipeline, DemoSource, scenario_settings, settle
from tests.integration.pipeline import count_rows, wait_for

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("CHAOS_OUTAGE_EVENTS", "6000"))
#: producers keep sending through the outage at this rate (records per second)
RATE = float(os.environ.get("CHAOS_OUTAGE_RATE", "200"))
POSTGRES_DOWN = float(os.environ.get("CHAOS_POSTGRES_DOWN", "30"))
BROKER_DOWN = float(os.environ.get("CHAOS_BROKER_DOWN", "20"))


def _quiet(_line: str) -> None:
    pass


def _restart(kafka: LocalKafka) -> None:
    """Start the chaos broker again; a start racing the old JVM's exit is retried."""
    for _ in range(3):
        try:
            kafka.up(_quiet)
            return
        except StackError:
            time.sleep(5)
    kafka.up(_quiet)


def _outage(
    *,
    scenario: str,
    server: str,
    down_seconds: float,
    stop: Callable[[], None],
    start: Callable[[], None],
    kafka_bootstrap: str,
    postgres_dsn: str,
    topic_prefix: str,
    tmp_path: Path,
    record_ledger: Callable[..., None],
) -> None:
    """Stop a server mid-run while traffic flows, start it again, and take the ledger.

    The server goes down once a quarter of the rows are in and stays down `down_seconds`;
    nothing may exit, be lost or doubled.
    """
    started = time.monotonic()
    settings = scenario_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
    source = DemoSource(settings, zlib.crc32(topic_prefix.encode()), EVENTS)
    pipeline = ChaosPipeline(settings, tmp_path)
    events = settings.topic("quality.events.v1")
    sender = threading.Thread(target=source.send, args=(source.records,), kwargs={"rate": RATE})
    try:
        pipeline.start_worker()
        pipeline.start_sink()
        sender.start()
        wait_for(
            lambda: count_rows(postgres_dsn, "qms.quality_event", events) >= EVENTS // 4,
            timeout=300,
            what="a quarter of the rows",
            alive=pipeline.assert_alive,
        )
        rows_at_stop = count_rows(postgres_dsn, "qms.quality_event", events)
        stop()
        stopped = time.monotonic()
        time.sleep(down_seconds)
        start()
        down_for = time.monotonic() - stopped
        time.sleep(5)  # a process that waited reconnects now; one that gave up has exited
        exited = pipeline.restart_exited()
        sender.join()
        account = settle(
            pipeline,
            scenario=scenario,
            produced=source.sent,
            unique_ids=source.unique_ids,
            poison=0,
            timeout=120 + EVENTS / 100,
        )
    finally:
        start()  # idempotent: the server is up again even when the scenario failed midway
        if sender.ident is not None:  # started
            sender.join()
        pipeline.stop()
    account.figures[f"{server} down, seconds"] = down_for
    account.figures["rows when stopped"] = rows_at_stop
    account.notes["exited during the outage, restarted"] = ", ".join(exited) or "none"
    record_ledger(account, seconds=time.monotonic() - started, passed_checks=not exited)
    assert not exited, f"{exited} exited instead of waiting for the server"


class TestPostgresOutage:
    def test_the_sink_waits_for_postgres_and_resumes_exactly(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        chaos_postgres: LocalPostgres,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """Postgres stops for 30 s while traffic flows; afterwards nothing is lost or doubled."""
        _outage(
            scenario="3 Postgres stopped mid-run",
            server="Postgres",
            down_seconds=POSTGRES_DOWN,
            stop=lambda: chaos_postgres.down(_quiet),
            start=lambda: chaos_postgres.up(_quiet),
            kafka_bootstrap=kafka_bootstrap,
            postgres_dsn=postgres_dsn,
            topic_prefix=topic_prefix,
            tmp_path=tmp_path,
            record_ledger=record_ledger,
        )


class TestBrokerOutage:
    def test_producers_worker_and_sink_resume_after_a_broker_restart(
        self,
        kafka_bootstrap: str,
        postgres_dsn: str,
        chaos_kafka: LocalKafka,
        topic_prefix: str,
        tmp_path: Path,
        record_ledger: Callable[..., None],
    ) -> None:
        """The only broker stops and restarts while traffic flows; every record ends up once."""
        _outage(
            scenario="2 broker stopped and restarted",
            server="broker",
            down_seconds=BROKER_DOWN,
            stop=lambda: chaos_kafka.down(_quiet),
            start=lambda: _restart(chaos_kafka),
            kafka_bootstrap=kafka_bootstrap,
            postgres_dsn=postgres_dsn,
            topic_prefix=topic_prefix,
            tmp_path=tmp_path,
            record_ledger=record_ledger,
        )
