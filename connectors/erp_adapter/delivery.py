"""Delivering one request to the ERP: retries with backoff, behind the circuit breaker.

Pure apart from the injected transport, clock and sleep, so unit tests run it on a fake clock.
`deliver` returns a `Verdict` and never raises for the ERP's sake; the Kafka loop
(`connectors.erp_adapter.adapter`) decides from it whether to commit, dead-letter or pause.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from connectors.erp_adapter.breaker import BreakerState, CircuitBreaker
from connectors.erp_adapter.mapping import ErpRequest, ErpResponse, ResponseRules, classify
from connectors.erp_adapter.transport import ErpTransport

__all__ = ["AdapterMetrics", "Backoff", "ErpDelivery", "Verdict", "VerdictKind"]

#: applied / already-applied: commit; rejected: dead-letter, then commit;
#: breaker-open: keep the record and pause; stopped: shutting down, keep the record
VerdictKind = Literal["applied", "already-applied", "rejected", "breaker-open", "stopped"]


@dataclass(frozen=True)
class Verdict:
    """How delivering one request ended, with the last answer (None when nothing was sent)."""

    kind: VerdictKind
    response: ErpResponse | None = None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between transient failures: first, first×2, … capped at `maximum`."""

    first: float
    maximum: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        return float(min(self.maximum, self.first * 2 ** max(0, failures - 1)))


@dataclass
class AdapterMetrics:
    """Counters since start, in memory, for telemetry to read (single writer: the adapter)."""

    applied: int = 0  # the ERP posted the command (2xx)
    already_applied: int = 0  # the ERP had the idempotency key already (409)
    retried: int = 0  # transient failures; each one means the request is sent again later
    dead_lettered: int = 0  # refused by the ERP or not mappable
    other_route: int = 0  # commands of sites another ERP route applies (skipped, committed)
    synthetic: int = 0  # commands a canary caused (skipped, committed): never sent to an ERP
    breaker_state: BreakerState = "closed"
    breaker_opened: int = 0
    paused: bool = False  # the consumer's partitions are paused right now
    pauses: int = 0
    resumes: int = 0

    @property
    def sent(self) -> int:
        """Commands the ERP confirmed, first time or as a repeat."""
        return self.applied + self.already_applied


class ErpDelivery:
    """Sends a request until the ERP answers for good, the breaker opens, or a stop."""

    def __init__(
        self,
        transport: ErpTransport,
        responses: ResponseRules,
        breaker: CircuitBreaker,
        backoff: Backoff,
        *,
        wait: Callable[[float], bool],
        metrics: AdapterMetrics | None = None,
    ) -> None:
        """`wait(seconds)` sleeps and returns True when the adapter is being stopped."""
        self._transport = transport
        self._responses = responses
        self._breaker = breaker
        self._backoff = backoff
        self._wait = wait
        self.metrics = metrics or AdapterMetrics()

    def deliver(self, request: ErpRequest) -> Verdict:
        """Send `request`, retrying transient failures while the breaker stays closed."""
        failures = 0
        response: ErpResponse | None = None
        while True:
            if not self._breaker.allows_request():
                return self._verdict("breaker-open", response)
            response = self._transport.send(request)
            outcome = classify(response, self._responses)
            if outcome == "transient":
                self._breaker.record_failure()
                self.metrics.retried += 1
                failures += 1
                if not self._breaker.allows_request():
                    return self._verdict("breaker-open", response)
                if self._wait(self._backoff.delay(failures)):
                    return self._verdict("stopped", response)
                continue
            # any answer, a refusal included, proves the ERP is up
            self._breaker.record_success()
            if outcome == "applied":
                self.metrics.applied += 1
                return self._verdict("applied", response)
            if outcome == "already-applied":
                self.metrics.already_applied += 1
                return self._verdict("already-applied", response)
            return self._verdict("rejected", response)

    def _verdict(self, kind: VerdictKind, response: ErpResponse | None) -> Verdict:
        self.metrics.breaker_state = self._breaker.state
        self.metrics.breaker_opened = self._breaker.times_opened
        return Verdict(kind, response)
