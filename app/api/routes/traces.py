"""POST /v1/traces: the OTLP/HTTP endpoint the web page exports its spans to.

Answers as an OTLP receiver does (200 with an empty ExportTraceServiceResponse, in the request's
encoding); refuses with problem+json: 404 when browser traces have nowhere to go, 413 over
PAGELENS_BROWSER_TRACES_MAX_BYTES (compressed or inflated), 415 for other media types or encodings,
400 for anything that is not a valid request (app/api/browser_spans.py), 429 past
PAGELENS_BROWSER_TRACES_PER_MINUTE per client address. It lives outside /api/ because it is
telemetry, not the product's API; once keys exist it needs a key all the same. The spans get the
sender's tenant as the resource attribute `pagelens.tenant` (`default` while there are no keys),
and no scope or span of the request keeps a `pagelens.tenant` or `service.name` of its own.
"""

from __future__ import annotations

import math

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.auth import request_identity
from app.api.browser_spans import BROWSER_SERVICE, JSON, BodyTooLarge, InvalidSpans, decode, inflate
from app.api.problems import Problem
from app.api.schemas import read_body
from app.api.state import State
from observability.otlp_http import PROTOBUF

PATH = "/v1/traces"
TENANT_ATTRIBUTE = "pagelens.tenant"


def _media_type(request: Request) -> str:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (PROTOBUF, JSON):
        raise Problem(415, f"send OTLP as {PROTOBUF} or {JSON}", code="unsupported-media-type")
    return media_type


async def receive_traces(request: Request) -> Response:
    state = State.of(request)
    settings, browser = state.settings, state.browser_traces
    if browser is None:
        raise Problem(404, "browser traces are not collected here: no OTLP endpoint is configured", code="disabled")
    wait = browser.limit.wait(request.client.host if request.client else "unknown")
    if wait:
        raise Problem(
            429,
            "too many trace exports from this client",
            code="rate-limited",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    media_type = _media_type(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise Problem(415, "Content-Encoding must be gzip or identity", code="unsupported-encoding")
    body = await read_body(request, settings.browser_traces_max_bytes)
    try:
        if encoding == "gzip":
            body = inflate(body, settings.browser_traces_max_bytes)
        export = decode(body, media_type)
    except BodyTooLarge as exc:
        raise Problem(413, str(exc), code="body-too-large") from None
    except InvalidSpans as exc:
        raise Problem(400, str(exc), code="invalid-traces") from None
    # Set over whatever the page claims about itself; what the API knows of the sender (such as
    # its tenant) joins here as further resource attributes.
    # The sender's tenant (the key's; `default` while the API has no keys), over any the page claims.
    resource = {"service.name": BROWSER_SERVICE, TENANT_ATTRIBUTE: request_identity(request.scope).tenant}
    browser.forward(export, resource)
    if media_type == PROTOBUF:
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)
    return Response(b"{}", media_type=JSON)


routes = [Route(PATH, receive_traces, methods=["POST"])]
