from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from opentelemetry import trace

from observability.logs import JSONFormatter, clean, job_fields


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("pagelens.test", logging.INFO, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_lines_carry_the_current_trace_and_job() -> None:
    tracer = trace.get_tracer("test")
    token = job_fields.set({"scan_id": "s-1", "job_id": "s-1", "queue": "q"})
    try:
        with tracer.start_as_current_span("work") as span:
            line = json.loads(JSONFormatter().format(record("job started", queue_wait_seconds=0.25)))
            ctx = span.get_span_context()
    finally:
        job_fields.reset(token)
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert (line["scan_id"], line["job_id"], line["queue"]) == ("s-1", "s-1", "q")
    assert line["queue_wait_seconds"] == 0.25 and line["level"] == "info" and line["message"] == "job started"


def test_no_trace_fields_outside_a_span() -> None:
    line = json.loads(JSONFormatter().format(record("idle")))
    assert "trace_id" not in line and "scan_id" not in line


def test_user_values_cannot_forge_lines() -> None:
    hostile = 'ok\r\n{"level": "error", "message": "forged"}\x1b[31m' + "x" * 5000
    formatted = JSONFormatter().format(record(hostile))
    assert "\n" not in formatted and "\r" not in formatted
    line = json.loads(formatted)
    assert "\x1b" not in line["message"] and len(line["message"]) <= 2001
    assert clean("a\nb\tc", 10) == "abc"
    assert clean("y" * 20, 5) == "yyyyy…"


def test_time_is_utc_iso_8601_with_milliseconds_across_seconds() -> None:
    formatter = JSONFormatter()
    for created in (1764769000.0, 1764769000.123456, 1764769000.999, 1764769001.0005, 1764772800.5):
        rec = record("tick")
        rec.created = created
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(rec))["time"] == expected, created


def test_values_the_fast_encoder_refuses_are_still_logged() -> None:
    huge = 2**70  # beyond orjson's 64-bit integers: the line falls back to the standard library
    line = json.loads(JSONFormatter().format(record("odd values", job_try=huge, stage=object())))
    assert line["job_try"] == huge and line["stage"].startswith("<object object")
    assert line["message"] == "odd values" and line["level"] == "info"
