"""How requests reach the ERP: the `ErpTransport` seam and its HTTP implementation.

A transport never raises for the ERP's sake: a refused connection, a reset or a timeout is an
`ErpResponse` with status None, which the mapping classifies as transient. Unit tests use
`connectors.erp_adapter.testing.ScriptedTransport` instead of the network.
"""

from __future__ import annotations

import http.client
from typing import Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from connectors.erp_adapter.mapping import ErpRequest, ErpResponse
from qmsflow.errors import ConfigurationError

__all__ = ["ErpTransport", "HttpTransport"]

#: most characters of an answer kept (for a dead letter's reason); an ERP error page can be huge
_MAX_TEXT = 4000


class ErpTransport(Protocol):
    """Sends one request and returns the ERP's answer, or status None when none came."""

    def send(self, request: ErpRequest) -> ErpResponse:
        """Send `request`; never raise for network failures."""
        ...


class HttpTransport:
    """HTTP/1.1 over http.client, one connection per request, no redirects followed.

    A fresh connection per request costs a handshake, but a kept-alive socket to an ERP that
    restarted fails in ways that are hard to tell from a lost request; at tens of commands a
    minute the handshake does not matter.
    """

    def __init__(self, base_url: str, *, timeout: float, token: SecretStr | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"QMSFLOW_ERP_BASE_URL: expected an http(s) URL such as "
                f"https://erp.example.com/sap, got {base_url!r}"
            )
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base_path = parts.path.rstrip("/")
        self._timeout = timeout
        self._token = token

    def send(self, request: ErpRequest) -> ErpResponse:
        """Send `request`; a connection failure or timeout is status None with its reason."""
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        headers = dict(request.headers)
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        try:
            connection.request(
                request.method, self._base_path + request.path, body=request.body, headers=headers
            )
            answer = connection.getresponse()
            text = answer.read().decode("utf-8", "replace")[:_MAX_TEXT]
            return ErpResponse(answer.status, text)
        except (OSError, http.client.HTTPException) as exc:
            return ErpResponse(None, f"no answer from the ERP: {type(exc).__name__}: {exc}")
        finally:
            connection.close()
