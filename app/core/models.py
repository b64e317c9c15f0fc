"""Statuses, stages and typed scan errors shared by the API and the worker."""

from __future__ import annotations

from enum import StrEnum

from app.core.types import JSONDict


class Status(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    TEASER_READY = "TEASER_READY"
    FULL_READY = "FULL_READY"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({Status.FULL_READY, Status.FAILED, Status.CANCELLED})
# The others, as the text values a `status = ANY($n::text[])` query takes.
OPEN = [s.value for s in Status if s not in TERMINAL]
# Statuses a worker may (re)claim: TEASER_READY is mid-pipeline, so a redelivered job resumes it.
CLAIMABLE = frozenset({Status.QUEUED, Status.RUNNING, Status.TEASER_READY})


class Stage(StrEnum):
    CRAWL = "CRAWL"
    PARSE = "PARSE"
    ANALYZE = "ANALYZE"
    GENERATE = "GENERATE"


# Progress (percent) reached when a stage starts.
STAGE_PROGRESS = {Stage.CRAWL: 5, Stage.PARSE: 30, Stage.ANALYZE: 50, Stage.GENERATE: 70}


class Kind(StrEnum):
    URL = "url"
    DOCUMENT = "document"


class ErrorType(StrEnum):
    INVALID_URL = "invalid_url"
    SSRF_BLOCKED = "ssrf_blocked"
    DNS_ERROR = "dns_error"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    TOO_LARGE = "too_large"
    UNSUPPORTED_CONTENT = "unsupported_content"
    # The page's parse or analysis passed its per-task deadline and was killed: the same page
    # would take as long again, so it is never retried.
    TOO_COMPLEX = "too_complex"
    RETRIES_EXHAUSTED = "retries_exhausted"
    INTERNAL = "internal"


class ScanError(Exception):
    """A failure with a type a client can act on.

    `retryable` means the cause is transient: the worker retries it with backoff and a client may
    replay the scan later; a permanent error fails the scan at once.
    """

    def __init__(self, type: ErrorType, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.retryable = retryable

    def to_json(self) -> JSONDict:
        return {"type": self.type.value, "message": self.message, "retryable": self.retryable}

    def __repr__(self) -> str:
        return f"ScanError({self.type.value!r}, {self.message!r}, retryable={self.retryable})"
