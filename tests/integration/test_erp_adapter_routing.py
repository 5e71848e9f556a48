"""Two ERPs behind one commands topic: routed by site, one ERP's outage never stalls the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupState
from confluent_kafka.admin import AdminClient

from connectors.erp_adapter.adapter import (
    COMMANDS_SUBJECT,
    COMMANDS_TOPIC,
    ErpAdapter,
    run_erp_adapter,
)
from connectors.erp_adapter.delivery import AdapterMetrics
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


# ---- several routes in one process (`qmsflow erp-adapter` without --route) ----------------

ROUTE_A, ROUTE_B = "erp-a", "erp-b"
#: holds per site in the one-process tests: enough that a stop lands mid-stream (each posting
#: takes the stand-in ≥ 20 ms, so 60 take ≥ 1.2 s per ERP)
STREAM = 60
STOP_WITHIN_SECONDS = 10.0  # a poll is 0.5 s and a posting 20 ms; 10 s means something hangs


@pytest.fixture
def routes_file(tmp_path: Path, erps: tuple[ErpStandIn, ErpStandIn]) -> Path:
    """The routing table of the two stand-ins, as an operator writes it (tokens by variable)."""
    erp_a, erp_b = erps
    path = tmp_path / "routes.toml"
    path.write_text(
        "version = 1\n"
        f'[[route]]\nname = "{ROUTE_A}"\nsites = ["{SITE_A}"]\nbase_url = "{erp_a.base_url}"\n'
        'token_env = "ERP_TOKEN_ERP_A"\n'
        f'[[route]]\nname = "{ROUTE_B}"\nsites = ["{SITE_B}"]\nbase_url = "{erp_b.base_url}"\n'
        'token_env = "ERP_TOKEN_ERP_B"\n',
        "utf-8",
    )
    return path


def route_group(settings: Settings, route: str) -> str:
    """The consumer group of one route (connectors/erp_adapter/adapter.py, step 1)."""
    return settings.topic(f"{settings.app_id}-erp-adapter-{route}")


def committed(settings: Settings, route: str) -> int:
    """Offsets the route's group has committed past on the commands topic."""
    topic = settings.topic(COMMANDS_TOPIC)
    return consumed_offsets(settings, route_group(settings, route), [topic]).get(topic, 0)


def group_states(settings: Settings) -> dict[str, ConsumerGroupState]:
    """The broker's view of each route's group: EMPTY once its consumer left cleanly."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    groups = [route_group(settings, r) for r in (ROUTE_A, ROUTE_B)]
    futures = admin.describe_consumer_groups(groups)
    return {group: futures[group].result(10).state for group in groups}


def adapter_threads() -> list[str]:
    """Threads of run_erp_adapter still alive: one per route, and the toggle reader."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("erp-adapter-") or t.name == "toggle-reader"
    ]


class OneProcess:
    """`run_erp_adapter(settings)` for every route of the table, in a thread of the test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.result: dict[str, AdapterMetrics] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="one-process", daemon=True)

    def _run(self) -> None:
        try:
            self.result = run_erp_adapter(self.settings, stop=self.stop)
        except BaseException as error:  # reported by assert_alive in the test's thread
            self.error = error

    def assert_alive(self) -> None:
        """Fail with the process's own error if it has died."""
        if self.error is not None:
            raise AssertionError(f"run_erp_adapter died: {self.error!r}") from self.error
        assert self.thread.is_alive(), "run_erp_adapter returned before it was stopped"

    def stop_and_wait(self) -> float:
        """Set the stop event; return how long every route took to return."""
        started = time.monotonic()
        self.stop.set()
        self.thread.join(STOP_WITHIN_SECONDS)
        assert not self.thread.is_alive(), f"not stopped within {STOP_WITHIN_SECONDS:.0f} s"
        assert self.error is None, self.error
        return time.monotonic() - started


class TestRoutesInOneProcess:
    """Every route of a routes file in one process, as `qmsflow erp-adapter` without --route."""

    def test_every_route_runs_and_a_stop_mid_stream_resends_nothing(
        self,
        settings: Settings,
        erps: tuple[ErpStandIn, ErpStandIn],
        routes_file: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """One process applies each site's holds at its own ERP only; its stop event ends both.

        The stop lands while both ERPs are still receiving: both routes return within seconds,
        leave their groups, and a restart posts the rest with no hold sent twice.
        """
        erp_a, erp_b = erps
        monkeypatch.setenv("ERP_TOKEN_ERP_A", "token-a")
        monkeypatch.setenv("ERP_TOKEN_ERP_B", "token-b")
        settings = settings.model_copy(update={"erp_routes_file": routes_file})
        site_a = [site_hold(n, SITE_A) for n in range(STREAM)]
        site_b = [site_hold(n, SITE_B) for n in range(STREAM)]
        produce(settings, interleave(site_a, site_b))

        first = OneProcess(settings)
        first.thread.start()
        wait_for(
            lambda: erp_a.posted() >= STREAM // 4 and erp_b.posted() >= STREAM // 4,
            timeout=30,
            what="both ERPs to receive their first holds",
            alive=first.assert_alive,
            interval=0.02,
        )
        took = first.stop_and_wait()
        at_stop = (erp_a.posted(), erp_b.posted())
        print(f"stopped in {took:.2f} s with ERP A {at_stop[0]}, ERP B {at_stop[1]} of {STREAM}")
        assert at_stop[0] < STREAM and at_stop[1] < STREAM, "the stop came after the stream"
        assert first.result is not None
        assert sorted(first.result) == [ROUTE_A, ROUTE_B]
        assert first.result[ROUTE_A].applied == at_stop[0]
        assert first.result[ROUTE_B].applied == at_stop[1]
        assert adapter_threads() == [], "a route's thread outlived run_erp_adapter"
        # a clean stop leaves the group and keeps what it confirmed: the offsets are committed
        assert set(group_states(settings).values()) == {ConsumerGroupState.EMPTY}

        second = OneProcess(settings)
        second.thread.start()
        wait_for(
            lambda: erp_a.posted() == STREAM and erp_b.posted() == STREAM,
            timeout=30,
            what="the rest of both sites' holds after the restart",
            alive=second.assert_alive,
            interval=0.05,
        )
        wait_for(
            lambda: committed(settings, ROUTE_A) == committed(settings, ROUTE_B) == 2 * STREAM,
            timeout=15,
            what="both routes' groups to commit every offset",
            alive=second.assert_alive,
        )
        second.stop_and_wait()

        assert sorted(erp_a.applied) == sorted(c.command_id for c in site_a)
        assert sorted(erp_b.applied) == sorted(c.command_id for c in site_b)
        assert set(erp_a.applied.values()) == {1} and set(erp_b.applied.values()) == {1}
        assert (erp_a.repeats, erp_b.repeats) == (0, 0), "a hold was sent again after the stop"
        assert {body["plant"] for body in erp_a.bodies.values()} == {SITE_A}
        assert {body["plant"] for body in erp_b.bodies.values()} == {SITE_B}
        assert second.result is not None
        for route, already in ((ROUTE_A, at_stop[0]), (ROUTE_B, at_stop[1])):
            metrics = second.result[route]
            assert (metrics.applied, metrics.already_applied) == (STREAM - already, 0), route
            assert metrics.dead_lettered == 0, route

    def test_cli_runs_every_route_and_stops_on_sigterm(
        self,
        settings: Settings,
        erps: tuple[ErpStandIn, ErpStandIn],
        routes_file: Path,
        tmp_path: Path,
    ) -> None:
        """`qmsflow erp-adapter` without --route serves both ERPs; SIGTERM stops both, exit 0."""
        erp_a, erp_b = erps
        site_a = [site_hold(n, SITE_A) for n in range(STREAM)]
        site_b = [site_hold(n, SITE_B) for n in range(STREAM)]
        produce(settings, interleave(site_a, site_b))
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "QMSFLOW_TOPIC_PREFIX": settings.topic_prefix,
            "QMSFLOW_ERP_ROUTES_FILE": str(routes_file),
            "QMSFLOW_ERP_TIMEOUT": "2.0",
            "ERP_TOKEN_ERP_A": "token-a",
            "ERP_TOKEN_ERP_B": "token-b",
        }
        log = tmp_path / "erp-adapter.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "qmsflow", "erp-adapter"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def alive() -> None:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]

        try:
            wait_for(
                lambda: erp_a.posted() == STREAM and erp_b.posted() == STREAM,
                timeout=60,
                what="both sites' holds at their ERPs",
                alive=alive,
                interval=0.1,
            )
            wait_for(
                lambda: committed(settings, ROUTE_A) == committed(settings, ROUTE_B) == 2 * STREAM,
                timeout=15,
                what="both routes' groups to commit every offset",
                alive=alive,
            )
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(STOP_WITHIN_SECONDS)
            took = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        output = log.read_text(errors="replace")
        print(f"SIGTERM to exit: {took:.2f} s")
        assert code == 0, output[-3000:]
        for route in (ROUTE_A, ROUTE_B):
            assert f"erp adapter {route} stopped: {STREAM} applied, 0 already applied" in output
        assert sorted(erp_a.applied) == sorted(c.command_id for c in site_a)
        assert sorted(erp_b.applied) == sorted(c.command_id for c in site_b)
        assert (erp_a.repeats, erp_b.repeats) == (0, 0)
        assert set(group_states(settings).values()) == {ConsumerGroupState.EMPTY}
