"""How every agent consumes a record: manual acks, transient failures retried in place.

The protocol, for each record of an agent's stream:
  1. acks are manual. Faust's own iteration acks a record in a `finally`, also when the handler
     raised, and the acked offset is committed, so a failed record would be lost;
  2. the handler runs; a transient failure (broker unreachable, request timed out, leader moved)
     is retried in place with exponential backoff. Retrying in place blocks only this partition
     and keeps the order of a product line's events, which quarantine and escalation rely on (a
     disposition must not overtake its nonconformance); retry topics would reorder them;
  3. on success the record is acked; Faust commits its offset after flushing the producer;
  4. when the retries are spent, or the failure is not transient, the worker crashes WITHOUT
     acking: after the restart the record is read again. Bad input never gets here: the stages
     turn it into dead letters.
Before each retry the agent's `on_failure` runs, so in-memory indexes that may be ahead of the
tables (which are only written after delivery) are rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.errors import KafkaTimeoutError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried before the worker gives up."""

    attempts: int = 6  # 0.5 + 1 + 2 + 4 + 8 s ≈ 15 s: longer than a broker leader election
    first_delay: float = 0.5
    factor: float = 2.0

    def delays(self) -> list[float]:
        """Seconds to wait before each retry (one fewer than attempts)."""
        return [self.first_delay * self.factor**n for n in range(self.attempts - 1)]


def is_transient(error: BaseException) -> bool:
    """Worth retrying: Kafka marks its retriable errors; timeouts and lost connections are too."""
    if getattr(error, "retriable", False):
        return True
    # aiokafka's KafkaTimeoutError (a send not acknowledged in time) is not marked retriable,
    # but a slow or failing-over broker is exactly what a retry is for.
    return isinstance(error, TimeoutError | ConnectionError | KafkaTimeoutError)


async def consume(
    app: faust.App,
    stream: faust.StreamT[Any],
    handle: Callable[[Any], Awaitable[None]],
    *,
    on_failure: Callable[[], None] = lambda: None,
    policy: RetryPolicy = RetryPolicy(),
) -> None:
    """Run `handle(message)` for every record of `stream`, following the module's protocol."""
    manual: Any = stream.noack()  # type: ignore[attr-defined]  # on Stream, not on StreamT
    async for event in manual.events():
        delays = iter(policy.delays())
        while True:
            try:
                await handle(event.message)
                break
            except Exception as error:
                on_failure()
                delay = next(delays, None) if is_transient(error) else None
                if delay is None:
                    log.exception(
                        "giving up on %s[%s]@%s; crashing without acknowledging it",
                        event.message.topic,
                        event.message.partition,
                        event.message.offset,
                    )
                    await app.crash(error)
                    return
                log.warning("transient failure (%s); retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
        await manual.ack(event)
