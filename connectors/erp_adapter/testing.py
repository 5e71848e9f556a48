"""Test doubles for the ERP adapter: a scripted transport where failure is data.

    transport = ScriptedTransport([UNREACHABLE, UNREACHABLE, ErpResponse(201, "posted")])

Each `send` records the request and returns the next scripted answer; when the script runs out,
`default` answers (201 unless told otherwise).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from connectors.erp_adapter.mapping import ErpRequest, ErpResponse

__all__ = ["UNREACHABLE", "ScriptedTransport"]

#: the answer of an ERP that is down: no status, a connection error
UNREACHABLE = ErpResponse(None, "no answer from the ERP: ConnectionRefusedError: refused")


class ScriptedTransport:
    """An `ErpTransport` that answers from a script and keeps every request it was sent."""

    def __init__(
        self, answers: Iterable[ErpResponse] = (), default: ErpResponse | None = None
    ) -> None:
        self._answers = deque(answers)
        self._default = default or ErpResponse(201, '{"status": "posted"}')
        self.sent: list[ErpRequest] = []

    def send(self, request: ErpRequest) -> ErpResponse:
        """Record `request` and return the next scripted answer."""
        self.sent.append(request)
        return self._answers.popleft() if self._answers else self._default
