"""The ERP adapter against a real local HTTP server that goes down for 30 s during a burst."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock, Thread

import pytest
from confluent_kafka import Consumer, KafkaError, Message

from connectors.erp_adapter.adapter import (
    COMMANDS_SUBJECT,
    COMMANDS_TOPIC,
    DEAD_LETTER_STAGE,
    ErpAdapter,
)
from connectors.erp_adapter.delivery import AdapterMetrics
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.kafka.admin import consumed_offsets, create_topics
from qmsflow.kafka.headers import SYNTHETIC_HEADER
from qmsflow.kafka.producer import create_producer
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.quality.quarantine import QuarantineCommand, command_id
from qmsflow.settings import Settings
from qmsflow.topics import TopicCatalog, load_catalog
from tests.integration.pipeline import wait_for

pytestmark = pytest.mark.integration

BURST = 200
OUTAGE_SECONDS = 30.0
ERP_LATENCY_SECONDS = 0.02  # a posting takes the ERP a moment, so the burst spans seconds


class ErpStandIn:
    """An ERP on 127.0.0.1 that posts each idempotency key once and answers repeats with 409.

    `stop()` closes the listening socket (callers then get connection refused) and `start()`
    opens it again on the same port; the ledger survives, like an ERP database across a restart.
    """

    def __init__(self) -> None:
        with socket.socket() as probe:  # a free port, reused on every start
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.lock = Lock()
        self.applied: Counter[str] = Counter()  # postings per key: must end at exactly 1 each
        self.arrivals: list[str] = []  # keys in the order they were first posted
        self.repeats = 0  # requests whose key was already posted (answered 409)
        self.bodies: dict[str, dict[str, object]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: Thread | None = None

    @property
    def base_url(self) -> str:
        """Where the adapter finds this ERP (with a path prefix, as real gateways have)."""
        return f"http://127.0.0.1:{self.port}/sap"

    def posted(self) -> int:
        """Distinct keys posted so far."""
        with self.lock:
            return len(self.applied)

    def start(self) -> None:
        """Listen (again) on the same port."""
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.headers.get("Idempotency-Key", "")
                time.sleep(ERP_LATENCY_SECONDS)
                with stand_in.lock:
                    if not key or not self.path.startswith("/sap/api/qm/v1/plants/"):
                        status, answer = 400, {"error": "no Idempotency-Key or unknown path"}
                    elif str(body.get("batch", "")).startswith("BAD"):
                        status, answer = 422, {"error": f"batch {body['batch']} unknown"}
                    elif key in stand_in.applied:
                        stand_in.repeats += 1
                        status, answer = 409, {"error": f"{key} already posted"}
                    else:
                        stand_in.applied[key] += 1
                        stand_in.arrivals.append(key)
                        stand_in.bodies[key] = body
                        status, answer = 201, {"material_document": f"49{len(stand_in.arrivals)}"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # 200 lines of access log say nothing the ledger does not

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        # not daemon: server_close() then waits for requests in flight, so the ledger read after
        # stop() is final (a posting finishing after it made `posted()` move by one)
        server.daemon_threads = False
        self._server = server
        self._thread = Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class AdapterThread:
    """The adapter in a thread of the test, stopped through its Event."""

    def __init__(self, adapter: Settings | ErpAdapter) -> None:
        self.adapter = adapter if isinstance(adapter, ErpAdapter) else ErpAdapter(adapter)
        self.error: BaseException | None = None
        self.thread = Thread(target=self._run, name="erp-adapter", daemon=True)

    @property
    def metrics(self) -> AdapterMetrics:
        """The running adapter's counters and breaker state."""
        return self.adapter.metrics

    def _run(self) -> None:
        try:
            self.adapter.run()
        except BaseException as error:  # reported by assert_alive in the test's thread
            self.error = error

    def assert_alive(self) -> None:
        """Fail with the adapter's own error if it has died."""
        if self.error is not None:
            raise AssertionError(f"the adapter died: {self.error!r}") from self.error
        assert self.thread.is_alive(), "the adapter stopped"


@pytest.fixture
def erp() -> Iterator[ErpStandIn]:
    stand_in = ErpStandIn()
    stand_in.start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, topic_prefix: str, erp: ErpStandIn) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        erp_base_url=erp.base_url,
        erp_timeout=2.0,
        erp_retry_backoff=0.05,
        erp_retry_backoff_max=0.4,
        erp_breaker_failures=3,
        erp_breaker_cooldown=2.0,  # a probe every 2 s: recovery seen within 2 s of the ERP
    )
    catalog = load_catalog()
    only = TopicCatalog(topics=(catalog[COMMANDS_TOPIC], catalog["quality.dlq.v1"]))
    create_topics(settings, only, echo=lambda _line: None)
    return settings


def hold(n: int, lot: str | None = None) -> QuarantineCommand:
    lot = lot or f"LOT-{n:05d}"
    return QuarantineCommand(
        command_id=command_id(lot, 1, "HOLD"),
        action="HOLD",
        lot_id=lot,
        part_number=f"PN-{n % 7:03d}",
        product_line="cardio",
        site="BOS1",
        reason=f"NCR-{1000 + n} major nonconformance: crack",
        trigger_event_id=command_id(lot, 0, "HOLD"),  # any stable uuid
        trigger_event_type="nonconformance",
        trigger_source_record_id=f"NCR-{1000 + n}",
        issued_at=datetime(2026, 3, 1, 8, tzinfo=UTC) + timedelta(seconds=n),
        target_stock_type="BLOCKED",
        sap_movement_type="350",
    )


def produce_burst(settings: Settings) -> dict[int, list[str]]:
    """Publish BURST holds; return their command ids per partition, in offset order."""
    codec = AvroCodec(open_registry(settings))
    producer = create_producer(settings)
    placed: dict[int, list[tuple[int, str]]] = defaultdict(list)
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error)
            return
        record = codec.decode(message.value() or b"", COMMANDS_SUBJECT).record
        placed[message.partition() or 0].append((message.offset() or 0, str(record["command_id"])))

    for n in range(BURST):
        command = hold(n)
        producer.produce(
            settings.topic(COMMANDS_TOPIC),
            key=command.lot_id.encode(),
            value=codec.encode(COMMANDS_SUBJECT, command.to_avro()),
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0 and not failures, failures
    return {p: [cid for _, cid in sorted(ids)] for p, ids in placed.items()}


class TestErpOutage:
    def test_outage_mid_burst_applies_each_hold_exactly_once(
        self, settings: Settings, erp: ErpStandIn
    ) -> None:
        """The ERP down for 30 s mid-burst pauses consumption; each hold is posted exactly once.

        The breaker opens, the partitions pause and stay committed where they were, half-open
        probes fail while the ERP is down, and after it returns every hold arrives once, in
        partition order.
        """
        timeline: list[tuple[float, str]] = []
        started = time.monotonic()

        def mark(what: str) -> None:
            timeline.append((time.monotonic() - started, what))

        expected = produce_burst(settings)
        mark(f"{BURST} holds produced on {len(expected)} partitions")
        running = AdapterThread(settings)
        running.thread.start()
        try:
            deadline = time.monotonic() + 30
            while erp.posted() < BURST // 4:  # fine-grained: the burst takes only seconds
                running.assert_alive()
                assert time.monotonic() < deadline, "the adapter posted nothing within 30 s"
                time.sleep(0.005)
            mark(f"{erp.posted()} posted, stopping the ERP mid-burst")
            erp.stop()
            stopped_at = time.monotonic()
            posted_before = erp.posted()
            mark(f"ERP down with {posted_before}/{BURST} posted")

            wait_for(
                lambda: running.metrics.paused and running.metrics.breaker_opened >= 1,
                timeout=10,
                what="the breaker to open and the consumer to pause",
                alive=running.assert_alive,
                interval=0.05,
            )
            mark(
                f"breaker open, {len(running.adapter.assignment)} partitions paused after "
                f"{running.metrics.retried} transient failures"
            )
            group, topic = running.adapter.group, settings.topic(COMMANDS_TOPIC)
            committed_at_pause = consumed_offsets(settings, group, [topic]).get(topic, 0)

            time.sleep(max(0.0, stopped_at + OUTAGE_SECONDS - time.monotonic()))
            committed_at_end = consumed_offsets(settings, group, [topic]).get(topic, 0)
            outage = running.metrics
            mark(
                f"30 s outage over: breaker opened {outage.breaker_opened}x, "
                f"{outage.pauses} pauses, {outage.resumes} half-open probes, committed "
                f"{committed_at_end} (at pause {committed_at_pause})"
            )
            assert erp.posted() == posted_before
            assert committed_at_end == committed_at_pause < BURST, "consumption did not pause"
            assert outage.breaker_opened >= 2, "no half-open probe was tried during the outage"

            erp.start()
            mark("ERP back on the same port")
            wait_for(
                lambda: erp.posted() == BURST,
                timeout=30,
                what=f"all {BURST} holds posted",
                alive=running.assert_alive,
                interval=0.05,
            )
            mark(f"all {BURST} holds posted; breaker {running.metrics.breaker_state}")
            wait_for(
                lambda: consumed_offsets(settings, group, [topic]).get(topic, 0) == BURST,
                timeout=15,
                what="every offset committed",
                alive=running.assert_alive,
            )
            mark("every offset committed")
        finally:
            running.adapter.stop.set()
            running.thread.join(30)
        for at, what in timeline:
            print(f"{at:6.1f} s  {what}")

        assert running.error is None, running.error
        every_id = sorted(cid for ids in expected.values() for cid in ids)
        assert sorted(erp.applied) == every_id, "a hold is missing or unexpected"
        assert set(erp.applied.values()) == {1}, "a hold was posted twice"
        assert erp.repeats == 0, f"{erp.repeats} holds were sent again after being applied"
        arrival = {cid: i for i, cid in enumerate(erp.arrivals)}
        for partition, ids in expected.items():
            assert sorted(ids, key=arrival.__getitem__) == ids, f"partition {partition} reordered"
        metrics = running.metrics
        assert metrics.applied == BURST and metrics.dead_lettered == 0
        assert metrics.breaker_state == "closed" and not metrics.paused
        body = erp.bodies[command_id("LOT-00007", 1, "HOLD")]
        assert body["goods_movement_type"] == "350"
        assert (body["plant"], body["material"], body["batch"]) == ("BOS1", "PN-000", "LOT-00007")


class TestErpRefusal:
    def test_refused_command_is_dead_lettered_with_the_answer(
        self, settings: Settings, erp: ErpStandIn
    ) -> None:
        """A 422 goes to quality.dlq.v1 with the ERP's answer; the commands around it post."""
        codec = AvroCodec(open_registry(settings))
        producer = create_producer(settings)
        commands = [hold(0), hold(1, lot="BAD-1"), hold(2)]
        for command in commands:
            producer.produce(
                settings.topic(COMMANDS_TOPIC),
                key=command.lot_id.encode(),
                value=codec.encode(COMMANDS_SUBJECT, command.to_avro()),
            )
        assert producer.flush(30) == 0
        running = AdapterThread(settings)
        running.thread.start()
        try:
            wait_for(
                lambda: erp.posted() == 2 and running.metrics.dead_lettered == 1,
                timeout=30,
                what="two postings and one dead letter",
                alive=running.assert_alive,
                interval=0.1,
            )
        finally:
            running.adapter.stop.set()
            running.thread.join(30)
        consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "group.id": settings.topic("dlq-reader"),
                "auto.offset.reset": "earliest",
            }
        )
        try:
            consumer.subscribe([settings.topic("quality.dlq.v1")])
            message = None
            deadline = time.monotonic() + 30
            while message is None and time.monotonic() < deadline:
                polled = consumer.poll(0.5)
                if polled is not None and polled.error() is None:
                    message = polled
        finally:
            consumer.close()
        assert message is not None, "no dead letter on quality.dlq.v1"
        letter = codec.decode(message.value() or b"", DEAD_LETTER_SUBJECT).record
        assert letter["stage"] == DEAD_LETTER_STAGE
        assert letter["reason_code"] == "erp-rejected"
        assert "422" in letter["reason"] and "batch BAD-1 unknown" in letter["reason"]
        assert letter["key"] == b"BAD-1"
        assert erp.repeats == 0 and running.metrics.applied == 2


class TestSyntheticCommands:
    def test_canary_commands_never_reach_the_erp(self, settings: Settings, erp: ErpStandIn) -> None:
        """A command marked synthetic (a canary's) is committed past; the real ones post."""
        codec = AvroCodec(open_registry(settings))
        producer = create_producer(settings)
        commands = [hold(0), hold(1, lot="CANARY-1"), hold(2)]
        for command in commands:
            synthetic = command.lot_id.startswith("CANARY")
            producer.produce(
                settings.topic(COMMANDS_TOPIC),
                key=command.lot_id.encode(),
                value=codec.encode(COMMANDS_SUBJECT, command.to_avro()),
                headers=[(SYNTHETIC_HEADER, b"true")] if synthetic else [],
            )
        assert producer.flush(30) == 0
        running = AdapterThread(settings)
        running.thread.start()
        group, topic = running.adapter.group, settings.topic(COMMANDS_TOPIC)
        try:
            wait_for(
                lambda: consumed_offsets(settings, group, [topic]).get(topic, 0) == 3,
                timeout=30,
                what="all three commands committed",
                alive=running.assert_alive,
                interval=0.1,
            )
        finally:
            running.adapter.stop.set()
            running.thread.join(30)
        assert sorted(erp.applied) == sorted(c.command_id for c in (commands[0], commands[2]))
        assert running.metrics.synthetic == 1 and running.metrics.applied == 2
