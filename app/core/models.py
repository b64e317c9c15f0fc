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


# Errors the same input meets again on every try (too_complex is the parser's verdict on a page,
# where that type exists): never retried, whatever the code raising them says.
PERMANENT = frozenset(
    t
    for t in ErrorType
    if t.value in {"invalid_url", "ssrf_blocked", "too_large", "unsupported_content", "too_complex"}
)


class ScanError(Exception):
    """A failure with a type a client can act on.

    `retryable` means the cause is transient: the worker retries it with backoff, and a client's
    replay of the scan later may succeed; a permanent error fails the scan at once. `cause` is the
    last error behind a `retries_exhausted`.
    """

    def __init__(
        self, type: ErrorType, message: str, *, retryable: bool = False, cause: ScanError | None = None
    ) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.retryable = retryable and type not in PERMANENT
        self.cause = cause

    def to_json(self) -> JSONDict:
        body: JSONDict = {"type": self.type.value, "message": self.message, "retryable": self.retryable}
        if self.cause is not None:
            body["cause"] = self.cause.to_json()
        return body

    def __repr__(self) -> str:
        return f"ScanError({self.type.value!r}, {self.message!r}, retryable={self.retryable})"


def retries_exhausted(tries: int, last: ScanError) -> ScanError:
    """The end of a scan whose every try failed on `last`'s kind of error: as retryable as that
    error (a client's replay later may get past a timeout or a 503), and carrying it as `cause`."""
    return ScanError(
        ErrorType.RETRIES_EXHAUSTED,
        f"gave up after {tries} attempts; last error ({last.type.value}): {last.message}",
        retryable=last.retryable,
        cause=last,
    )
