"""A circuit breaker for the ERP: closed → open → half-open → closed, on an injected clock.

Pure and single-threaded (the adapter delivers one command at a time):

1. **closed**: requests flow; `failure_threshold` transient failures in a row open it (a success
   or a permanent refusal, which proves the ERP answers, resets the count);
2. **open**: no request is allowed until `cooldown` seconds have passed since it opened;
3. **half-open**: one probe is allowed; its success closes the breaker, its failure opens it
   again for another full cool-down.

`clock` returns seconds (monotonic); tests pass a fake one, so nothing here sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """Counts consecutive transient failures and refuses requests while the ERP is down."""

    def __init__(
        self,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold: expected at least 1, got {failure_threshold}")
        if cooldown < 0:
            raise ValueError(f"cooldown: expected seconds ≥ 0, got {cooldown}")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        #: how many times the breaker has opened (a half-open probe failing counts again)
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The state now; open turns half-open by itself once the cool-down has passed."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allows_request(self) -> bool:
        """Tell whether a request may be sent now (closed, or the half-open probe)."""
        return self.state != "open"

    def remaining_cooldown(self) -> float:
        """Seconds until an open breaker lets a probe through; 0 when not open."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.cooldown - self._clock())

    def record_success(self) -> None:
        """The ERP answered (applied, repeat or refusal): close and forget past failures."""
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        """A transient failure: count it; open at the threshold, or at once when half-open."""
        if self._opened_at is not None:  # a failed half-open probe (open never sends)
            self._open()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self.times_opened += 1
