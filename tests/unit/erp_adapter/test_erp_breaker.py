"""The circuit breaker's states on a fake clock."""

from __future__ import annotations

import pytest

from connectors.erp_adapter.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """Seconds, as the test set them."""
        return self.now


def state(breaker: CircuitBreaker) -> str:
    """The state, read through a call so each read is a fresh one (mypy would narrow it)."""
    return breaker.state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown=10.0, clock=clock)


class TestCircuitBreaker:
    def test_starts_closed(self, breaker: CircuitBreaker) -> None:
        """A new breaker lets requests through."""
        assert state(breaker) == "closed" and breaker.allows_request()

    def test_opens_after_n_consecutive_failures(self, breaker: CircuitBreaker) -> None:
        """The third failure in a row opens it and refuses requests."""
        breaker.record_failure()
        breaker.record_failure()
        assert state(breaker) == "closed"
        breaker.record_failure()
        assert state(breaker) == "open" and not breaker.allows_request()
        assert breaker.times_opened == 1

    def test_success_resets_the_count(self, breaker: CircuitBreaker) -> None:
        """Failures must be consecutive: a success in between starts the count again."""
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
        breaker.record_failure()
        breaker.record_failure()
        assert state(breaker) == "closed"

    def test_turns_half_open_after_the_cooldown(
        self, breaker: CircuitBreaker, clock: FakeClock
    ) -> None:
        """Once the cool-down has passed, one probe is allowed."""
        for _ in range(3):
            breaker.record_failure()
        clock.now += 9.9
        assert state(breaker) == "open"
        assert breaker.remaining_cooldown() == pytest.approx(0.1)
        clock.now += 0.1
        assert state(breaker) == "half-open" and breaker.allows_request()

    def test_successful_probe_closes(self, breaker: CircuitBreaker, clock: FakeClock) -> None:
        """A probe that gets an answer closes the breaker."""
        for _ in range(3):
            breaker.record_failure()
        clock.now += 10
        breaker.record_success()
        assert state(breaker) == "closed" and breaker.remaining_cooldown() == 0.0

    def test_failed_probe_reopens_for_a_full_cooldown(
        self, breaker: CircuitBreaker, clock: FakeClock
    ) -> None:
        """One failed probe opens it again, without waiting for three failures."""
        for _ in range(3):
            breaker.record_failure()
        clock.now += 10
        breaker.record_failure()
        assert state(breaker) == "open" and breaker.times_opened == 2
        assert breaker.remaining_cooldown() == pytest.approx(10.0)

    def test_rejects_a_zero_threshold(self) -> None:
        """A breaker that opens before any failure is a configuration mistake."""
        with pytest.raises(ValueError, match="failure_threshold"):
            CircuitBreaker(failure_threshold=0, cooldown=1.0)
