"""Delivering one request: retries with backoff behind the breaker, with scripted ERP answers."""

from __future__ import annotations

import pytest

from connectors.erp_adapter.breaker import CircuitBreaker
from connectors.erp_adapter.delivery import Backoff, ErpDelivery
from connectors.erp_adapter.mapping import ErpRequest, ErpResponse, ResponseRules
from connectors.erp_adapter.testing import UNREACHABLE, ScriptedTransport

REQUEST = ErpRequest(
    "0b6f2d8e-0000-5000-8000-000000000001",
    "POST",
    "/api/qm/v1/plants/BOS1/batches/LOT-1/goods-movements",
    (("Idempotency-Key", "0b6f2d8e-0000-5000-8000-000000000001"),),
    b"{}",
)


class Harness:
    """A delivery on a fake clock whose waits advance the clock instead of sleeping."""

    def __init__(self, answers: list[ErpResponse], *, threshold: int = 3) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.stopping = False
        self.transport = ScriptedTransport(answers)
        self.breaker = CircuitBreaker(threshold, cooldown=5.0, clock=lambda: self.now)
        self.delivery = ErpDelivery(
            self.transport,
            ResponseRules(),
            self.breaker,
            Backoff(first=0.5, maximum=1.5),
            wait=self.wait,
        )

    def wait(self, seconds: float) -> bool:
        """Advance the clock instead of sleeping; True when the test is stopping."""
        self.waits.append(seconds)
        self.now += seconds
        return self.stopping


class TestErpDelivery:
    def test_first_answer_applies(self) -> None:
        """A 201 is applied after one request, with no wait."""
        h = Harness([ErpResponse(201, "posted")])
        assert h.delivery.deliver(REQUEST).kind == "applied"
        assert len(h.transport.sent) == 1 and h.waits == []
        assert h.delivery.metrics.applied == 1

    def test_repeat_counts_as_done(self) -> None:
        """A 409 for a key the ERP already has is done, not an error."""
        h = Harness([ErpResponse(409, "already posted")])
        assert h.delivery.deliver(REQUEST).kind == "already-applied"
        assert h.delivery.metrics.already_applied == 1

    def test_transient_failures_are_retried_with_growing_backoff(self) -> None:
        """A 503 and a 429 are retried after 0.5 s and 1 s; the same request is resent."""
        h = Harness([ErpResponse(503, ""), ErpResponse(429, ""), ErpResponse(201, "")])
        assert h.delivery.deliver(REQUEST).kind == "applied"
        assert h.waits == [0.5, 1.0]
        assert h.transport.sent == [REQUEST] * 3
        assert h.delivery.metrics.retried == 2
        assert h.breaker.state == "closed"

    def test_backoff_is_capped(self) -> None:
        """Waits double up to the maximum."""
        backoff = Backoff(first=0.5, maximum=1.5)
        assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]

    def test_permanent_refusal_is_rejected_without_retry(self) -> None:
        """A 422 is returned with the ERP's text, once, and does not count against the ERP."""
        h = Harness([ErpResponse(422, "batch LOT-1 unknown in plant BOS1")])
        verdict = h.delivery.deliver(REQUEST)
        assert verdict.kind == "rejected"
        assert verdict.response == ErpResponse(422, "batch LOT-1 unknown in plant BOS1")
        assert len(h.transport.sent) == 1 and h.breaker.state == "closed"

    def test_breaker_opens_after_consecutive_failures(self) -> None:
        """Three unreachable attempts open the breaker and the delivery gives the record back."""
        h = Harness([UNREACHABLE] * 5)
        verdict = h.delivery.deliver(REQUEST)
        assert verdict.kind == "breaker-open"
        assert len(h.transport.sent) == 3
        assert h.delivery.metrics.breaker_state == "open"
        assert h.delivery.metrics.breaker_opened == 1

    def test_open_breaker_sends_nothing(self) -> None:
        """While the breaker is open, delivery returns at once without a request."""
        h = Harness([UNREACHABLE] * 3)
        h.delivery.deliver(REQUEST)
        assert h.delivery.deliver(REQUEST).kind == "breaker-open"
        assert len(h.transport.sent) == 3

    def test_half_open_probe_success_closes(self) -> None:
        """After the cool-down the next delivery is the probe; its success closes the breaker."""
        h = Harness([UNREACHABLE] * 3 + [ErpResponse(201, "")])
        h.delivery.deliver(REQUEST)
        h.now += 5.0
        assert h.delivery.deliver(REQUEST).kind == "applied"
        assert h.delivery.metrics.breaker_state == "closed"

    def test_half_open_probe_failure_reopens_after_one_request(self) -> None:
        """A failed probe reopens the breaker at once: one request, not three."""
        h = Harness([UNREACHABLE] * 4)
        h.delivery.deliver(REQUEST)
        h.now += 5.0
        assert h.delivery.deliver(REQUEST).kind == "breaker-open"
        assert len(h.transport.sent) == 4 and h.delivery.metrics.breaker_opened == 2

    def test_stop_during_backoff_keeps_the_record(self) -> None:
        """A stop while waiting to retry ends delivery as stopped, not as done."""
        h = Harness([ErpResponse(500, "")])
        h.stopping = True
        assert h.delivery.deliver(REQUEST).kind == "stopped"

    @pytest.mark.parametrize("threshold", [1, 2])
    def test_threshold_is_respected(self, threshold: int) -> None:
        """The breaker opens after exactly the configured number of failures."""
        h = Harness([UNREACHABLE] * 5, threshold=threshold)
        h.delivery.deliver(REQUEST)
        assert len(h.transport.sent) == threshold
