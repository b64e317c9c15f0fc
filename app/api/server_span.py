"""The SERVER span of every traced request: a small ASGI middleware of our own.

OpenTelemetry's generic ASGI middleware did the same job at several times the cost: it wraps
`receive` and `send` in functions of its own, builds each attribute through the old/new semantic
convention switch, normalises and classifies the user agent, builds the full URL, records HTTP
server metrics through a meter even when no meter provider is installed, and looks up excluded
URLs by regex. Here a request costs one context extraction, one span with the attributes of the
stable HTTP server conventions (https://opentelemetry.io/docs/specs/semconv/http/http-spans/),
and a check of the response status. The span name and `http.route` are the route template's
(app/api/middleware.py `span_details`); a 5xx answer or an exception sets the status to ERROR.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import context, propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider, use_span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability import service_version
from observability.metrics import known_method

# The headers the W3C propagators read; only these are handed to the propagator.
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})

SpanDetails = Callable[[Scope], tuple[str, dict[str, str]]]


def request_attributes(scope: Scope) -> dict[str, str | int]:
    """The HTTP server span's attributes known before the response: method, path, scheme, query,
    protocol, server and client address, user agent."""
    method = known_method(scope["method"])
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if method != scope["method"]:
        attributes["http.request.method_original"] = scope["method"]
    if query := scope.get("query_string"):
        attributes["url.query"] = query.decode("latin-1")
    host = None
    agent = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"user-agent":
            agent = value.decode("latin-1")
    if host:
        address, colon, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        attributes["server.address"] = (address if colon and port.isdigit() else host).strip("[]")
        if colon and port.isdigit():
            attributes["server.port"] = int(port)
    elif server := scope.get("server"):
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    if client := scope.get("client"):
        attributes["client.address"] = client[0]
    if agent:
        attributes["user_agent.original"] = agent
    return attributes


def carrier(scope: Scope) -> dict[str, str]:
    """The request's trace headers as a carrier; repeated tracestate or baggage lines are joined as
    HTTP joins repeated fields (TraceHeaderGuard has already dropped a repeated traceparent)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in TRACE_HEADERS:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            found[key] = f"{found[key]},{text}" if key in found else text
    return found


class ServerSpans:
    """One SERVER span per HTTP request, except for the `excluded` paths and those under the
    `excluded_prefixes`."""

    def __init__(
        self,
        app: ASGIApp,
        tracer_provider: TracerProvider,
        details: SpanDetails,
        excluded: frozenset[str] = frozenset(),
        excluded_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.tracer: Tracer = tracer_provider.get_tracer("pagelens.api", service_version())
        self.details = details
        self.excluded = excluded
        self.excluded_prefixes = excluded_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.excluded or path.startswith(self.excluded_prefixes):
            await self.app(scope, receive, send)
            return
        name, route = self.details(scope)
        attributes = request_attributes(scope)
        attributes.update(route)
        headers = carrier(scope)
        parent = propagate.extract(headers) if headers else None  # no trace headers: a new trace
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        # The extracted context is made current, not only its span: the client's baggage then
        # travels on with the job's carrier, as the W3C propagators promise.
        token = context.attach(parent) if parent is not None else None
        try:
            # The span ends when the handler returns or raises; an exception is recorded on it.
            with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
                await self.app(scope, receive, send_status if span.is_recording() else send)
        finally:
            if token is not None:
                context.detach(token)
