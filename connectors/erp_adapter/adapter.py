"""The ERP adapter process: quarantine commands from Kafka → the ERP's HTTP API, each applied once.

One adapter instance applies the commands of one ERP route (`connectors/erp_adapter/routing.py`:
the sites of one ERP; without a routing table, one route taking every site).

Delivery protocol (implemented here and nowhere else):
  1. the adapter consumes `inventory.quarantine-commands.v1` in its route's own consumer group
     (`<app_id>-erp-adapter`, or `<app_id>-erp-adapter-<route>` with a routing table; prefixed);
     a partition starts at the group's committed offset, the beginning when there is none;
  2. records are handled one at a time, so each partition (one lot's commands) reaches the ERP
     in order; a record below its partition's next offset (a re-fetch after a seek) is skipped;
     a command of a site another route applies is committed without a request (that route's
     own group applies it); one of a site no route takes is a dead letter of the first route;
  3. a record that does not decode or map becomes a dead letter (stage `erp-adapter`); a command
     the ERP refuses for good (a permanent 4xx) becomes one too, with the ERP's answer; the dead
     letter is acknowledged by the broker before the offset moves past the record;
  4. otherwise the request (header `Idempotency-Key` = command_id) is sent; transient failures
     (connection errors, timeouts, 429, 5xx) are retried with exponential backoff;
  5. only after the ERP answered 2xx (applied) or 409 (already applied) is the offset committed;
  6. when the circuit breaker opens, every assigned partition is paused (`consumer.pause`) and
     the failing record's partition is sought back to it; the loop keeps polling (heartbeats,
     no records) until the cool-down ends, then resumes: the failing record comes back first
     and is the half-open probe; an answer closes the breaker, a failure pauses again.
Nothing is dropped: an offset moves only past a record the ERP confirmed or a dead letter the
broker confirmed. Nothing is applied twice: a crash between the ERP's answer and the commit
resends the record with the same idempotency key, which the ERP must honour (docs/erp-adapter.md).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from threading import Event, Thread

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from pydantic import SecretStr

from connectors.erp_adapter.breaker import CircuitBreaker
from connectors.erp_adapter.delivery import AdapterMetrics, Backoff, ErpDelivery
from connectors.erp_adapter.errors import ErpRejectedError
from connectors.erp_adapter.mapping import (
    ErpMapping,
    ErpResponse,
    build_request,
    load_erp_mapping,
)
from connectors.erp_adapter.routing import (
    DEFAULT_ROUTE,
    ErpRoute,
    ErpUnroutedError,
    RoutingTable,
    load_routing_table,
    single_route,
)
from connectors.erp_adapter.transport import ErpTransport, HttpTransport
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.errors import ConfigurationError, ContractError
from qmsflow.kafka.headers import header_pairs, is_synthetic
from qmsflow.kafka.producer import producer_config
from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.dead_letter import dead_letter
from qmsflow.quality.event import Coordinates
from qmsflow.quality.ingest import DEAD_LETTER_SUBJECT
from qmsflow.settings import Settings
from qmsflow.toggles import ToggleReader

__all__ = [
    "COMMANDS_TOPIC",
    "DEAD_LETTER_STAGE",
    "ErpAdapter",
    "load_routes",
    "run_erp_adapter",
]

log = logging.getLogger(__name__)

COMMANDS_TOPIC = "inventory.quarantine-commands.v1"
COMMANDS_SUBJECT = f"{COMMANDS_TOPIC}-value"
DEAD_LETTER_STAGE = "erp-adapter"
ERP_OUTBOUND = "erp-outbound"  # the feature toggle of the ERP calls (qmsflow/toggles.py)

_POLL_SECONDS = 0.5  # how long one poll waits for a record; bounds how fast a stop is noticed
_PAUSED_POLL_SECONDS = 0.2  # polls while paused only serve heartbeats and rebalances
_DEAD_LETTER_ACK_SECONDS = 30.0  # same bound as the sink's dead letters


def load_routes(settings: Settings) -> RoutingTable:
    """The routing table `QMSFLOW_ERP_ROUTES_FILE` names; unset, one route for every site."""
    if settings.erp_routes_file is not None:
        return load_routing_table(settings.erp_routes_file)
    return single_route(settings.erp_base_url)


class ErpAdapter:
    """Consumes quarantine commands and applies its route's to its ERP once (protocol above)."""

    def __init__(
        self,
        settings: Settings,
        *,
        route: str | None = None,
        routes: RoutingTable | None = None,
        transport: ErpTransport | None = None,
        mapping: ErpMapping | None = None,
        stop: Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        toggles: Callable[[str], bool] = lambda _feature: True,
    ) -> None:
        self._settings = settings
        self._toggles = toggles  # qmsflow/toggles.py: is ERP_OUTBOUND switched on?
        self._stop = stop or Event()
        self._routes = routes or load_routes(settings)
        if route is None:
            if len(self._routes.route) != 1:
                raise ConfigurationError(
                    f"ERP routing table: expected a route name (one of "
                    f"{', '.join(self._routes.names)}), got none"
                )
            route = self._routes.names[0]
        try:
            self.route: ErpRoute = self._routes[route]
        except KeyError as exc:
            raise ConfigurationError(str(exc.args[0])) from exc
        self._mapping = mapping or load_erp_mapping(
            self.route.mapping_file or settings.erp_mapping_file
        )
        if transport is None:
            transport = _http_transport(self.route, settings)
        self._codec = AvroCodec(open_registry(settings))
        self._topic = settings.topic(COMMANDS_TOPIC)
        # the default route keeps the single-ERP group and stage, so upgrading moves no offsets
        single = self.route.name == DEFAULT_ROUTE
        group = settings.topic(f"{settings.app_id}-erp-adapter")
        self.group = group if single else f"{group}-{self.route.name}"
        #: dead letters of this route: `erp-adapter`, or `erp-adapter:<route>` with a table
        self.dead_letter_stage = (
            DEAD_LETTER_STAGE if single else f"{DEAD_LETTER_STAGE}:{self.route.name}"
        )
        self._breaker = CircuitBreaker(
            self.route.breaker_failures or settings.erp_breaker_failures,
            settings.erp_breaker_cooldown
            if self.route.breaker_cooldown is None
            else self.route.breaker_cooldown,
            clock,
        )
        self.metrics = AdapterMetrics()
        self._delivery = ErpDelivery(
            transport,
            self._mapping.responses,
            self._breaker,
            Backoff(settings.erp_retry_backoff, settings.erp_retry_backoff_max),
            wait=self._stop.wait,
            metrics=self.metrics,
        )
        #: the next offset to handle per (topic, partition): skips re-fetched records (step 2)
        self._next: dict[tuple[str, int], int] = {}
        self._assigned: list[TopicPartition] = []
        self._producer: Producer | None = None

    @property
    def stop(self) -> Event:
        """Set it to stop the adapter after the record in hand."""
        return self._stop

    @property
    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this adapter holds now."""
        return [(p.topic, p.partition) for p in self._assigned]

    def run(self) -> AdapterMetrics:
        """Consume and deliver until stopped; returns the metrics."""
        consumer = Consumer(
            {
                "bootstrap.servers": self._settings.bootstrap_servers,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": False,
                # same reasoning as the sink: a crashed adapter's partitions move after 10 s
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                **librdkafka_security(self._settings),
            }
        )
        consumer.subscribe([self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info(
            "erp adapter route %s (sites %s) consuming %s as group %s",
            self.route.name,
            ", ".join(self.route.sites),
            self._topic,
            self.group,
        )
        try:
            while not self._stop.is_set():
                if self.metrics.paused:
                    if not self._breaker.allows_request():
                        message = consumer.poll(_PAUSED_POLL_SECONDS)
                        if message is not None and not _is_error(message):
                            self._rewind(consumer, message)  # never lose a record (step 6)
                        continue
                    self._resume(consumer)
                message = consumer.poll(_POLL_SECONDS)
                if message is None or _is_error(message):
                    continue
                if not self._toggles(ERP_OUTBOUND):
                    # switched off by an operator: the command waits on its topic, not skipped
                    self._rewind(consumer, message)
                    self._stop.wait(_PAUSED_POLL_SECONDS)
                    continue
                self._handle(consumer, message)
        finally:
            consumer.close()
            if self._producer is not None:
                self._producer.flush(_DEAD_LETTER_ACK_SECONDS)
        self.metrics.breaker_state = self._breaker.state
        return self.metrics

    # ---- one record ----------------------------------------------------------------------
    def _handle(self, consumer: Consumer, message: Message) -> None:
        topic, partition, offset = message.topic() or "", message.partition() or 0, message.offset()
        offset = offset if offset is not None else 0
        expected = self._next.get((topic, partition))
        if expected is not None and offset < expected:
            return  # step 2: already confirmed, fetched again after a seek
        at = Coordinates(topic, partition, offset)
        try:
            value = message.value()
            if value is None:
                raise ContractError("value: expected a quarantine command, got a tombstone")
            command = self._codec.decode(value, COMMANDS_SUBJECT).record
            if is_synthetic(header_pairs(message.headers())):
                self.metrics.synthetic += 1  # a canary's hold must not block real stock
                self._commit(consumer, topic, partition, offset)
                return
            owner = self._routes.route_for(str(command["site"]))
            if owner is None and self._routes.dead_letters_unrouted(self.route):
                raise ErpUnroutedError(
                    f"site: expected one of {', '.join(self._routes.names)}'s sites in the ERP "
                    f"routing table, got {command['site']!r} (command {command['command_id']})"
                )
            if owner is None or owner.name != self.route.name:
                self.metrics.other_route += 1
                self._commit(consumer, topic, partition, offset)  # step 2: another route's
                return
            request = build_request(command, self._mapping)
        except ContractError as error:
            self._dead_letter(error, message, at)
            self._commit(consumer, topic, partition, offset)
            return
        verdict = self._delivery.deliver(request)
        if verdict.kind in ("applied", "already-applied"):
            self._commit(consumer, topic, partition, offset)
        elif verdict.kind == "rejected":
            answer = verdict.response
            status = answer.status if answer is not None else None
            text = answer.text if answer is not None else ""
            refusal = ErpRejectedError(
                f"ERP answered {status} to {request.method} {request.path} for command "
                f"{request.command_id}: {text}"
            )
            log.error("ERP refused command %s: %s", request.command_id, refusal)
            self._dead_letter(refusal, message, at)
            self._commit(consumer, topic, partition, offset)
        elif verdict.kind == "breaker-open":
            self._pause(consumer, topic, partition, offset, verdict.response)
        else:  # stopped: leave the offset where it is; the record is handled after restart
            self._next[(topic, partition)] = offset

    def _commit(self, consumer: Consumer, topic: str, partition: int, offset: int) -> None:
        self._next[(topic, partition)] = offset + 1
        # asynchronous: a lost commit only resends a record the idempotency key absorbs
        consumer.commit(offsets=[TopicPartition(topic, partition, offset + 1)], asynchronous=True)

    def _dead_letter(self, error: ContractError, message: Message, at: Coordinates) -> None:
        """Publish the dead letter and wait for the broker (step 3)."""
        timestamp_type, timestamp = message.timestamp()
        letter = dead_letter(
            error,
            stage=self.dead_letter_stage,
            coordinates=at,
            key=message.key(),
            value=message.value(),
            headers=header_pairs(message.headers()),
            timestamp_ms=timestamp if timestamp_type else None,
            failed_at=datetime.now(UTC),
            max_bytes=self._settings.dead_letter_max_bytes,
        )
        if self._producer is None:
            self._producer = Producer(producer_config(self._settings))
        self._producer.produce(
            self._settings.topic("quality.dlq.v1"),
            key=letter["key"],
            value=self._codec.encode(DEAD_LETTER_SUBJECT, dict(letter)),
        )
        if self._producer.flush(_DEAD_LETTER_ACK_SECONDS) > 0:
            raise RuntimeError(
                f"dead letter for {at.topic}[{at.partition}]@{at.offset} not acknowledged by the "
                f"broker within {_DEAD_LETTER_ACK_SECONDS:.0f} s"
            )
        self.metrics.dead_lettered += 1

    # ---- pausing -------------------------------------------------------------------------
    def _pause(
        self,
        consumer: Consumer,
        topic: str,
        partition: int,
        offset: int,
        last: ErpResponse | None,
    ) -> None:
        """Step 6: stop fetching everywhere and rewind the failing partition to its record."""
        if self._assigned:
            consumer.pause(self._assigned)
        # seek after pause: librdkafka ≥ 1.9 then resumes from the sought offset (#3471)
        consumer.seek(TopicPartition(topic, partition, offset))
        self._next[(topic, partition)] = offset
        self.metrics.paused = True
        self.metrics.pauses += 1
        log.warning(
            "ERP unavailable (%s): circuit breaker open (%d×), %d partitions paused at "
            "%s[%d]@%d for %.1f s",
            last.text if last is not None else "no answer",
            self._breaker.times_opened,
            len(self._assigned),
            topic,
            partition,
            offset,
            self._breaker.remaining_cooldown(),
        )

    def _resume(self, consumer: Consumer) -> None:
        """The cool-down is over: resume; the next record is the half-open probe."""
        if self._assigned:
            consumer.resume(self._assigned)
        self.metrics.paused = False
        self.metrics.resumes += 1
        self.metrics.breaker_state = self._breaker.state
        log.info("circuit breaker half-open: %d partitions resumed", len(self._assigned))

    def _rewind(self, consumer: Consumer, message: Message) -> None:
        """A record that slipped through while paused goes back to be fetched after resume."""
        offset = message.offset()
        if offset is not None:
            consumer.seek(TopicPartition(message.topic() or "", message.partition() or 0, offset))

    # ---- rebalances ----------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = list(partitions)
        for p in partitions:
            self._next.pop((p.topic, p.partition), None)
        if self.metrics.paused and partitions:
            # a rebalance while the ERP is down: the new partitions wait too; they start at
            # their committed offsets, so no seek is needed
            consumer.pause(partitions)
        log.info("erp adapter assigned %d partitions", len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self._assigned = [p for p in self._assigned if (p.topic, p.partition) not in revoked]
        for key in revoked:
            self._next.pop(key, None)


def run_erp_adapter(
    settings: Settings, *, route: str | None = None, stop: Event | None = None
) -> dict[str, AdapterMetrics]:
    """Run one route's adapter, or every route's (a thread each), until SIGTERM, SIGINT or `stop`.

    Returns the metrics per route. The instances share nothing but the stop event: each has its
    own consumer group, breaker and dead-letter stage. An instance that dies stops the others.
    """
    stop = stop or Event()
    _stop_on_signals(stop)
    routes = load_routes(settings)
    names = routes.names if route is None else (route,)
    reader = ToggleReader(settings).start()
    try:
        adapters = [
            ErpAdapter(settings, route=name, routes=routes, stop=stop, toggles=reader.enabled)
            for name in names
        ]
        if len(adapters) == 1:
            return {adapters[0].route.name: adapters[0].run()}
        failures: list[BaseException] = []

        def run(adapter: ErpAdapter) -> None:
            try:
                adapter.run()
            except BaseException as error:
                failures.append(error)
                stop.set()  # a dead instance must not leave its ERP silently unserved
                raise

        threads = [
            Thread(target=run, args=(a,), name=f"erp-adapter-{a.route.name}") for a in adapters
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return {a.route.name: a.metrics for a in adapters}
    finally:
        reader.stop()


def _http_transport(route: ErpRoute, settings: Settings) -> HttpTransport:
    """The route's HTTP client; a route's own URL never receives the global token."""
    base_url = route.base_url or settings.erp_base_url
    if not base_url:
        raise ConfigurationError(
            f"ERP route {route.name}: expected base_url in the routing table or "
            "QMSFLOW_ERP_BASE_URL, got nothing"
        )
    token: SecretStr | None = None
    if route.token_env is not None:
        value = os.environ.get(route.token_env)
        if not value:
            raise ConfigurationError(
                f"ERP route {route.name}: expected a token in ${route.token_env}, got nothing"
            )
        token = SecretStr(value)
    elif route.base_url is None:
        token = settings.erp_api_token
    timeout = route.timeout or settings.erp_timeout
    return HttpTransport(base_url, timeout=timeout, token=token)


def _is_error(message: Message) -> bool:
    error = message.error()
    if error is None:
        return False
    if error.code() != KafkaError._PARTITION_EOF:
        log.error("consume error: %s", error)
    return True


def _stop_on_signals(stop: Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            return
