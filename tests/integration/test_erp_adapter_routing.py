"""Two ERPs behind one commands topic: routed by site, one ERP's outage never stalls the other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Consumer

from connectors.erp_adapter.adapter import COMMANDS_SUBJECT, COMMANDS_TOPIC, ErpAdapter
from connectors.erp_adapter.routing import ErpRoute, RoutingTable
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.kafka.admin import consumed_offsets, create_topics
from qmsflow.kafka.producer import create_producer
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.quality.quarantine import QuarantineCommand, command_id
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog, load_catalog
from tests.integration.pipeline import wait_for
from tests.integration.test_erp_adapter import AdapterThread, ErpStandIn, hold

pytestmark = pytest.mark.integration

SITE_A, SITE_B = "BOS1", "DUB1"
WAVE = 30  # holds per site per wave; two waves, the second produced while ERP A is down


@pytest.fixture
def erps() -> Iterator[tuple[ErpStandIn, ErpStandIn]]:
    a, b = ErpStandIn(), ErpStandIn()
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        erp_timeout=2.0,
        erp_retry_backoff=0.05,
        erp_retry_backoff_max=0.4,
        erp_breaker_failures=3,
        erp_breaker_cooldown=2.0,
    )
    catalog = load_catalog()
    only = TopicCatalog(topics=(catalog[COMMANDS_TOPIC], catalog["quality.dlq.v1"]))
    create_topics(settings, only, echo=lambda _line: None)
    return settings


def site_hold(n: int, site: str) -> QuarantineCommand:
    """Hold n of a site; lots of both sites interleave on the same partitions."""
    lot = f"LOT-{site}-{n:04d}"
    return replace(hold(n, lot=lot), site=site, command_id=command_id(lot, 1, "HOLD"))


def produce(settings: Settings, commands: list[QuarantineCommand]) -> None:
    codec = AvroCodec(open_registry(settings))
    producer = create_producer(settings)
    for command in commands:
        producer.produce(
            settings.topic(COMMANDS_TOPIC),
            key=command.lot_id.encode(),
            value=codec.encode(COMMANDS_SUBJECT, command.to_avro()),
        )
    assert producer.flush(30) == 0


def read_dead_letter(settings: Settings) -> dict[str, Any]:
    """The first dead letter on the test's quality.dlq.v1."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.topic("dlq-reader"),
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([settings.topic("quality.dlq.v1")])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                codec = AvroCodec(open_registry(settings))
                return dict(codec.decode(message.value() or b"", DEAD_LETTER_SUBJECT).record)
    finally:
        consumer.close()
    raise AssertionError("no dead letter on quality.dlq.v1 within 30 s")


def wave(start: int) -> tuple[list[QuarantineCommand], list[QuarantineCommand]]:
    return (
        [site_hold(n, SITE_A) for n in range(start, start + WAVE)],
        [site_hold(n, SITE_B) for n in range(start, start + WAVE)],
    )


def interleave(a: list[QuarantineCommand], b: list[QuarantineCommand]) -> list[QuarantineCommand]:
    return [c for pair in zip(a, b, strict=True) for c in pair]


class TestRoutingBySite:
    def test_sites_reach_only_their_erp_and_an_outage_stalls_only_its_own(
        self, settings: Settings, erps: tuple[ErpStandIn, ErpStandIn]
    ) -> None:
        """Site A's holds reach only ERP A and site B's only ERP B; with ERP A down, B flows.

        After ERP A returns, every site-A hold produced during its outage arrives exactly once.
        A command of a site in no route is one dead letter, from the first route only.
        """
        erp_a, erp_b = erps
        routes = RoutingTable(
            version=1,
            route=(
                ErpRoute(name="erp-a", sites=(SITE_A,), base_url=erp_a.base_url),
                ErpRoute(name="erp-b", sites=(SITE_B,), base_url=erp_b.base_url),
            ),
        )
        timeline: list[tuple[float, str]] = []
        started = time.monotonic()

        def mark(what: str) -> None:
            timeline.append((time.monotonic() - started, what))

        a1, b1 = wave(0)
        unrouted = site_hold(0, "SIN3")  # a site in no route: one dead letter, from the first
        produce(settings, [*interleave(a1, b1), unrouted])
        runners = {
            name: AdapterThread(ErpAdapter(settings, route=name, routes=routes))
            for name in routes.names
        }
        run_a, run_b = runners["erp-a"], runners["erp-b"]
        assert run_a.adapter.group != run_b.adapter.group

        def alive() -> None:
            for runner in runners.values():
                runner.assert_alive()

        for runner in runners.values():
            runner.thread.start()
        try:
            wait_for(
                lambda: erp_a.posted() == WAVE and erp_b.posted() == WAVE,
                timeout=30,
                what="the first wave at both ERPs",
                alive=alive,
                interval=0.05,
            )
            mark(f"wave 1: ERP A {erp_a.posted()}, ERP B {erp_b.posted()}")

            erp_a.stop()
            mark("ERP A stopped")
            a2, b2 = wave(WAVE)
            produce(settings, interleave(a2, b2))
            mark(f"wave 2 produced ({WAVE} holds per site) while ERP A is down")
            wait_for(
                lambda: erp_b.posted() == 2 * WAVE,
                timeout=30,
                what="site B's second wave at ERP B while ERP A is down",
                alive=alive,
                interval=0.05,
            )
            mark(f"ERP B has all {2 * WAVE} holds; ERP A still down")
            wait_for(
                lambda: run_a.metrics.paused and run_a.metrics.breaker_opened >= 1,
                timeout=15,
                what="ERP A's breaker to open",
                alive=alive,
                interval=0.05,
            )
            assert erp_a.posted() == WAVE
            assert run_b.metrics.breaker_opened == 0 and not run_b.metrics.paused
            time.sleep(3.0)  # a half-open probe fails too: A stays behind, B is unaffected
            assert erp_a.posted() == WAVE and run_a.metrics.breaker_opened >= 2
            mark(
                f"ERP A's breaker opened {run_a.metrics.breaker_opened}x; "
                f"ERP B breaker {run_b.metrics.breaker_state}"
            )

            erp_a.start()
            mark("ERP A back on the same port")
            wait_for(
                lambda: erp_a.posted() == 2 * WAVE,
                timeout=30,
                what="site A's second wave at ERP A",
                alive=alive,
                interval=0.05,
            )
            mark(f"ERP A has all {2 * WAVE} holds")
            topic = settings.topic(COMMANDS_TOPIC)

            def all_committed() -> bool:
                return all(
                    consumed_offsets(settings, r.adapter.group, [topic]).get(topic, 0)
                    == 4 * WAVE + 1
                    for r in runners.values()
                )

            wait_for(
                all_committed, timeout=15, what="both groups to commit every offset", alive=alive
            )
            mark("both groups committed every offset")
        finally:
            for runner in runners.values():
                runner.adapter.stop.set()
            for runner in runners.values():
                runner.thread.join(30)
        for at, what in timeline:
            print(f"{at:6.1f} s  {what}")

        for runner in runners.values():
            assert runner.error is None, runner.error
        site_a = sorted(c.command_id for c in a1 + a2)
        site_b = sorted(c.command_id for c in b1 + b2)
        assert sorted(erp_a.applied) == site_a, "ERP A did not get exactly site A's holds"
        assert sorted(erp_b.applied) == site_b, "ERP B did not get exactly site B's holds"
        assert set(erp_a.applied.values()) == {1} and set(erp_b.applied.values()) == {1}
        assert erp_a.repeats == 0 and erp_b.repeats == 0, "a hold was sent again"
        assert {body["plant"] for body in erp_a.bodies.values()} == {SITE_A}
        assert {body["plant"] for body in erp_b.bodies.values()} == {SITE_B}
        assert run_a.metrics.other_route == 2 * WAVE
        assert run_b.metrics.other_route == 2 * WAVE + 1  # B skips the unrouted one too
        assert run_a.metrics.breaker_state == "closed"
        assert (run_a.metrics.dead_lettered, run_b.metrics.dead_lettered) == (1, 0)
        letter = read_dead_letter(settings)
        assert (letter["stage"], letter["reason_code"]) == ("erp-adapter:erp-a", "erp-unrouted")
        assert "SIN3" in letter["reason"] and letter["key"] == unrouted.lot_id.encode()
