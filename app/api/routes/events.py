"""GET /api/v1/scan-jobs/{scanId}/events: a scan's status changes as server-sent events.

Each event is the scan's status document (the same shape as /status) with the scan's `version` as
its id:

    id: 7
    event: status
    data: {"scanId": "...", "status": "RUNNING", "stage": "PARSE", "progress": 30, ...}

The first event is the current state (skipped when `Last-Event-ID` already names it); the stream
ends after the event of a terminal state (FULL_READY, FAILED, CANCELLED), or after
PAGELENS_SSE_MAX_SECONDS, when the client reconnects with `Last-Event-ID` and carries on. A
reconnect with the terminal state's id gets 204, which tells an EventSource to stop reconnecting.
Idle streams carry a keep-alive comment every PAGELENS_SSE_KEEPALIVE seconds so proxies keep them.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.api.auth import request_identity, scope_tenant
from app.api.params import BIGINT_MAX, header_integer
from app.api.problems import Problem
from app.api.routes.scans import PREFIX, scan_id_of, scan_not_found
from app.api.scan_events import ScanEvents, TooManyStreams, Watcher
from app.api.state import State
from app.core import scans
from app.core.models import TERMINAL
from app.core.report import ScanStatus
from app.core.settings import Settings
from app.core.types import Record
from observability import metrics

MEDIA_TYPE = "text/event-stream"
RECONNECT_MILLIS = 2000  # how long an EventSource waits before it reconnects after a drop
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    # nginx and similar proxies buffer responses by default, which would hold events back.
    (b"x-accel-buffering", b"no"),
]


def format_event(row: Record) -> bytes:
    data = json.dumps(ScanStatus.from_row(row).to_json(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {row['version']}\nevent: status\ndata: {data}\n\n".encode()


def last_event_id(request: Request) -> int:
    """The version the client has already seen; 0 when none or unreadable (then it gets everything).

    An EventSource sends back the last id it received, and only ever gets decimal versions from
    here: anything else is no id of ours, so the stream starts afresh instead of failing."""
    seen = header_integer(request.headers.get("last-event-id"), low=0, high=BIGINT_MAX)
    return seen or 0


class EventStream(Response):
    """The stream as a raw ASGI response, so its clean-up runs however it ends: terminal state,
    client gone before or after the first byte, server shutting down, or an error."""

    def __init__(self, hub: ScanEvents, watcher: Watcher, seen: int, settings: Settings) -> None:
        super().__init__(status_code=200, media_type=MEDIA_TYPE)
        self.hub, self.watcher, self.seen = hub, watcher, seen
        self.keepalive, self.max_seconds = settings.sse_keepalive, settings.sse_max_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.sse_streams_open.inc({})
        try:
            stream = asyncio.create_task(self._stream(send), name="sse-stream")
            hangup = asyncio.create_task(_disconnected(receive), name="sse-disconnect")
            try:
                await asyncio.wait({stream, hangup}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stream, hangup):
                    task.cancel()
                results = await asyncio.gather(stream, hangup, return_exceptions=True)
            # The client hanging up mid-write surfaces as OSError: nothing is wrong on our side.
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, OSError):
                    raise result
        finally:
            self.hub.unsubscribe(self.watcher)
            metrics.sse_streams_open.dec({})

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await _body(send, f"retry: {RECONNECT_MILLIS}\n\n".encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_seconds
        while (remaining := deadline - loop.time()) > 0:
            row = await self.watcher.next(min(self.keepalive, remaining))
            if row is None:
                await _body(send, b": keep-alive\n\n")
                continue
            if row["version"] <= self.seen:
                continue
            await _body(send, format_event(row))
            self.seen = row["version"]
            if row["status"] in TERMINAL:
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def scan_events(request: Request) -> Response:
    state = State.of(request)
    tenant = scope_tenant(request)
    scan_id: uuid.UUID = scan_id_of(request)
    seen = last_event_id(request)
    identity = request_identity(request.scope)
    # With keys, a stream counts against the caller's tenant's share as well as the process's cap.
    holder = identity.tenant if identity.key_id is not None else None
    try:
        watcher = state.events.subscribe(scan_id, tenant, holder)  # before reading: no change can fall in between
    except TooManyStreams as full:
        whom = "this tenant already has" if full.tenant else "this server already streams events to"
        raise Problem(
            429,
            f"{whom} {full.limit} event streams open; poll the status instead",
            code="too-many-streams",
            headers={"Retry-After": "10"},
        ) from None
    handed_over = False
    try:
        row = await scans.status(state.pool, scan_id, tenant)
        if row is None:
            raise scan_not_found()
        if seen > row["version"]:
            seen = 0  # an id from some other history (a restored database): start afresh
        if row["status"] in TERMINAL and seen >= row["version"]:
            return Response(status_code=204)  # seen to the end: an EventSource stops reconnecting
        watcher.offer(row)
        handed_over = True
        return EventStream(state.events, watcher, seen, state.settings)
    finally:
        if not handed_over:
            state.events.unsubscribe(watcher)


routes = [Route(PREFIX + "/{scanId}/events", scan_events, methods=["GET"])]
