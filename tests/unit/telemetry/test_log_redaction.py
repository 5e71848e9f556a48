"""Structured JSON logs: ids from the current span, and no secret ever written."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from qmsflow.logging_setup import REDACTED, JsonFormatter, RedactingFormatter, redact


class TestRedact:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "connecting to postgresql://qmsflow:s3cr3t@db:5432/qmsflow",
                f"connecting to postgresql://qmsflow:{REDACTED}@db:5432/qmsflow",
            ),
            (
                "dsn host=db user=q password=s3cr3t dbname=x",
                f"dsn host=db user=q password={REDACTED} dbname=x",
            ),
            ("{'sasl.password': 'hunter2'}", f"{{'sasl.password': '{REDACTED}'}}"),
            ("Authorization: Bearer abc.def.ghi", f"Authorization: Bearer {REDACTED}"),
            ("api_key=XYZ&x=1", f"api_key={REDACTED}&x=1"),
        ],
    )
    def test_secrets_are_replaced(self, text: str, expected: str) -> None:
        """URL passwords, key=value secrets and bearer tokens are redacted; the rest stays."""
        assert redact(text) == expected

    def test_plain_text_is_unchanged(self) -> None:
        """A message without secrets passes through untouched."""
        text = "sink assigned 6 partitions at kafka://127.0.0.1:19092"
        assert redact(text) == text


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("qmsflow.test", logging.WARNING, __file__, 1, message, args, None)


class TestJsonFormatter:
    def test_line_is_json_with_level_logger_and_message(self) -> None:
        """Each record renders as one JSON object."""
        line = JsonFormatter().format(_record("lag %d on %s", 5, "quality.events.v1"))
        document = orjson.loads(line)
        assert document["level"] == "warning" and document["logger"] == "qmsflow.test"
        assert document["message"] == "lag 5 on quality.events.v1"

    def test_arguments_are_redacted_after_formatting(self) -> None:
        """A DSN passed as an argument is redacted in the rendered message."""
        line = JsonFormatter().format(_record("db %s", "postgresql://u:pw@h/db"))
        assert "pw@" not in line and REDACTED in line

    def test_exception_text_is_redacted(self) -> None:
        """A secret inside an exception's message is redacted too."""
        try:
            raise RuntimeError("cannot connect to postgresql://u:topsecret@h/db")
        except RuntimeError:
            record = _record("failed")
            record.exc_info = sys.exc_info()
        document = orjson.loads(JsonFormatter().format(record))
        assert "topsecret" not in document["exception"]

    def test_span_and_correlation_ids_are_included(self) -> None:
        """Inside a stage span, log lines carry its trace, span and correlation ids."""
        from opentelemetry.sdk.trace import TracerProvider

        from qmsflow import telemetry

        provider = TracerProvider()
        original = telemetry._tracer
        telemetry._tracer = lambda: provider.get_tracer("test")  # type: ignore[assignment]
        try:
            headers = [
                ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                ("correlation_id", b"corr-9"),
            ]
            with telemetry.stage_span("quality", headers):
                document = orjson.loads(JsonFormatter().format(_record("hello")))
        finally:
            telemetry._tracer = original  # type: ignore[assignment]
        assert document["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert document["correlation_id"] == "corr-9" and len(document["span_id"]) == 16

    def test_text_format_redacts_too(self) -> None:
        """The plain-text formatter applies the same redaction."""
        text = RedactingFormatter("%(message)s").format(_record("x password=abc"))
        assert text == f"x password={REDACTED}"
