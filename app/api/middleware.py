"""ASGI middleware: HTTP metrics labelled by route template, and request header limits."""

from __future__ import annotations

import time

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import Problem, problem_response
from observability import metrics

MAX_HEADER_COUNT = 100


# Where the request's route template is kept once found: the span and the metrics both need it.
ROUTE_KEY = "pagelens.route_template"


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    # Label by the template (/api/v1/scan-jobs/{scan_id}/status), never the raw path: raw paths
    # carry scan ids and would grow the label set without bound.
    found: str | None = scope.get(ROUTE_KEY)
    if found is None:
        found = "unmatched"
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                found = getattr(route, "path", "other")
                break
        scope[ROUTE_KEY] = found
    return found


def span_details(routes: list[BaseRoute], scope: Scope) -> tuple[str, dict[str, str]]:
    """Server span name and route attribute (app/api/server_span.py)."""
    template = route_template(routes, scope)
    method = metrics.known_method(scope.get("method", "HTTP"))
    method = "HTTP" if method == "_OTHER" else method  # the conventions' span name for an unknown one
    if template == "unmatched":
        return method, {}
    return f"{method} {template}", {"http.route": template}


class HTTPMetrics:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute], enabled: bool) -> None:
        self.app = app
        self.routes = routes
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        route = metrics.RouteMetrics.of(scope["method"], route_template(self.routes, scope))
        status = 500
        start = time.perf_counter()
        done = False

        def record() -> None:
            nonlocal done
            if not done:
                done = True
                route.finished(status, time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if _is_event_stream(message):
                    # A server-sent event stream lasts as long as the client watches. Counted to its
                    # end it would sit "in progress" for minutes and put minutes into the latency
                    # histogram every dashboard reads; so it counts as served once its headers are
                    # sent (the time to open the stream), and pagelens_sse_streams_open counts it
                    # while it stays open.
                    record()
            await send(message)

        route.started()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record()


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == b"text/event-stream")
    return False


class HeaderLimits:
    """431 for requests with too many or too large headers, before authentication, routing and the
    handlers read them.

    uvicorn's default parser accepts megabytes of headers; this tells the client what was wrong.
    It sits inside the tracing and HTTP metrics middleware on purpose, so a 431 is still traced and
    counted (TraceHeaderGuard, outermost, already drops oversized trace headers)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(name) + len(value) for name, value in headers)
            if len(headers) > MAX_HEADER_COUNT or size > self.max_bytes:
                problem = Problem(
                    431,
                    f"request headers may be at most {MAX_HEADER_COUNT} lines and {self.max_bytes} bytes",
                    code="headers-too-large",
                )
                await problem_response(problem, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)
