"""Structured logs: one JSON object per line with trace and correlation ids, secrets redacted.

Redaction runs on the fully formatted message and on exception text, whatever the arguments
were, so a DSN or a settings object interpolated into a message cannot leak its password:
`scheme://user:secret@host` keeps the user and loses the secret, `password=…`-style pairs (libpq
keyword DSNs, Kafka SASL configs) keep the key and lose the value, and `Bearer` tokens go too.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from qmsflow.settings import Settings
from qmsflow.telemetry import current_correlation_id

__all__ = ["REDACTED", "JsonFormatter", "RedactingFormatter", "configure_logging", "redact"]

REDACTED = "***"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@\s/]*@")
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|sasl\.password|"
    r"sasl_plain_password|client[_-]?secret)\b['\"]?\s*[=:]\s*)"
    r"(?P<quote>['\"]?)(?P<value>[^\s'\",;&)]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL passwords, `password=`-style values and bearer tokens replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['quote']}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m['head']}{REDACTED}", text)


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time, level, logger, message, trace/span/correlation ids."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record`; secrets in the message and exception are redacted."""
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            document["trace_id"] = f"{ctx.trace_id:032x}"
            document["span_id"] = f"{ctx.span_id:016x}"
        correlation = current_correlation_id()
        if correlation is not None:
            document["correlation_id"] = correlation
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            document["exception"] = redact(record.exc_text)
        return orjson.dumps(document).decode("utf-8")


class RedactingFormatter(logging.Formatter):
    """The plain-text format, with the same redaction as the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as text, secrets redacted."""
        return redact(super().format(record))


def formatter(settings: Settings, *, service: str) -> logging.Formatter:
    """The formatter `settings.log_format` asks for."""
    if settings.log_format == "json":
        return JsonFormatter()
    return RedactingFormatter(f"%(asctime)s {service} %(levelname)s %(name)s %(message)s")


def configure_logging(settings: Settings, *, service: str, level: int | str = logging.INFO) -> None:
    """Replace the root logger's handlers with one stdout handler in the configured format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter(settings, service=service))
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(level)


def faust_logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging_config` for Faust that swaps its coloured console handler for ours.

    `merge` keeps Faust's root logger and level (from `--loglevel`) and replaces only the
    handler named `default`.
    """
    return {
        "merge": True,
        "formatters": {
            "qmsflow": {"()": formatter, "settings": settings, "service": "worker"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "qmsflow",
                "stream": "ext://sys.stdout",
            }
        },
    }
