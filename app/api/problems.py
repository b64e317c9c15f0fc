"""RFC 9457 problem details: every error the API answers is one of these."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.core.backing import UNAVAILABLE
from app.core.models import Status
from app.core.report import ErrorInfo

logger = logging.getLogger("pagelens.api")

MEDIA_TYPE = "application/problem+json"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


class FieldError(BaseModel):
    field: str
    message: str
    type: str | None = None


class ProblemDetails(BaseModel):
    """The body of every error answer; members that are not set are left out."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, extra="forbid")

    type: str  # urn:pagelens:problem:<code>
    title: str
    status: int
    detail: str
    instance: str | None = None  # the request path
    errors: list[FieldError] | None = None  # 422: which field is invalid and why
    scan_id: uuid.UUID | None = None  # 409 about a scan: its id, status and error
    scan_status: Status | None = None
    error: ErrorInfo | None = None


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    body = ProblemDetails(
        type=f"urn:pagelens:problem:{problem.code}",
        title=TITLES.get(problem.status, "Error"),
        status=problem.status,
        detail=problem.detail,
        **({"instance": instance} if instance else {}),
        **problem.extra,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_unset=True),
        status_code=problem.status,
        headers=problem.headers,
        media_type=MEDIA_TYPE,
    )


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    detail = exc.detail if exc.detail else TITLES.get(exc.status_code, "Error")
    return problem_response(Problem(exc.status_code, detail, headers=headers), request.url.path)


RETRY_AFTER_UNAVAILABLE = "5"


# A backing service being down is the one case where the API answers 5xx on purpose: 503 and a hint
# when to come back, so clients and load balancers back off instead of treating it as a bug.
def unavailable(exc: BaseException) -> Problem:
    """503 with Retry-After for a backing service that is down (logged, with the error's type)."""
    logger.warning("backing service unavailable: %s", type(exc).__name__)
    return Problem(
        503,
        "a backing service is unavailable, try again shortly",
        code="unavailable",
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


async def on_unavailable(request: Request, exc: Exception) -> Response:
    return problem_response(unavailable(exc), request.url.path)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(Problem(500, "unexpected error", code="internal"), request.url.path)


def exception_handlers() -> dict[Any, Any]:
    handlers: dict[Any, Any] = {Problem: on_problem, HTTPException: on_http_exception, Exception: on_unexpected}
    handlers.update(dict.fromkeys(UNAVAILABLE, on_unavailable))
    return handlers
