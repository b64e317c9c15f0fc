"""JSON lines on stderr, correlated with the current trace and the scan being worked on."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

# Fields that follow a job through every log line it causes, set by the worker around a job.
job_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("pagelens_job_fields", default=None)

MAX_VALUE_CHARS = 500
_CONTROL = dict.fromkeys(range(32)) | {127: None}
EXTRA_KEYS = (
    "scan_id", "job_id", "queue", "queue_wait_seconds", "job_try", "function",
    "outcome", "duration_seconds", "stage", "error_type",
    "child", "pid", "exit_code", "restarts", "backoff_seconds",  # `pagelens run`'s supervisor
    "audit_action", "key_id", "tenant", "via", "target_key_id", "target_tenant",
)  # fmt: skip


def clean(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """Truncate and strip control characters (CR/LF included) so a user value can't forge log lines."""
    text = str(value).translate(_CONTROL)
    return text if len(text) <= limit else text[:limit] + "…"


def encode(entry: dict[str, Any]) -> str:
    """One JSON line. orjson (already the metrics library's encoder) takes well under a microsecond
    where `json.dumps` takes several; what it refuses (an int beyond 64 bits) goes to the stdlib."""
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Clock:
    """`record.created` as ISO 8601 UTC with milliseconds; the part up to the second is formatted
    once per second, not once per line (a datetime round trip costs more than the rest of a line)."""

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last  # one read: another thread may swap the tuple, never half of it
        if last[0] != second:
            last = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
            self._last = last
        return f"{last[1]}.{int((created - second) * 1000):03d}+00:00"


class JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._time = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clean(record.getMessage(), 2000),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        fields = job_fields.get()
        if fields:
            entry.update(fields)
        attributes = record.__dict__
        for key in EXTRA_KEYS:
            if key in attributes:
                entry[key] = attributes[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return encode(entry)


def setup_logging(level: str = "INFO") -> None:
    # No file/line/function in our lines, so skip the stack walk that finds them for every record
    # (the logging HOWTO's own advice for speed): records arq makes for lines we filter out cost it too.
    logging._srcfile = None
    # Nor the thread, process or multiprocessing names every record otherwise looks up (same advice).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn installs its own handlers; route everything through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logger = logging.getLogger(name)
        if not (logger.propagate or logger.handlers):
            continue  # switched off on purpose (`uvicorn --no-access-log`, as make run and the image start it)
        logger.handlers[:] = []
        logger.propagate = True
    # httpx logs every request URL at INFO: user-supplied URLs belong in scan rows, not logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
