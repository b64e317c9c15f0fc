"""Trace headers coming in from clients: keep the well-formed ones, drop the rest quietly.

OpenTelemetry's propagators already ignore a malformed `traceparent`, but they log a warning for
each oversized `baggage` or odd `tracestate`: a client could flood our logs. This guard checks the
three headers first, against the W3C limits, and removes any that fail.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
TRACESTATE_MEMBER = re.compile(
    r"^[a-z0-9][a-z0-9_\-*/]{0,255}(@[a-z0-9][a-z0-9_\-*/]{0,13})?=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$"
)
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32
MAX_BAGGAGE = 8192
MAX_BAGGAGE_MEMBERS = 64


def valid_traceparent(value: str) -> bool:
    if not TRACEPARENT.match(value):
        return False
    version, trace_id, span_id, _ = value.split("-")
    return version != "ff" and trace_id != "0" * 32 and span_id != "0" * 16


def valid_tracestate(value: str) -> bool:
    if len(value) > MAX_TRACESTATE:
        return False
    members = [m.strip() for m in value.split(",") if m.strip()]
    return len(members) <= MAX_TRACESTATE_MEMBERS and all(TRACESTATE_MEMBER.match(m) for m in members)


def valid_baggage(value: str) -> bool:
    return len(value) <= MAX_BAGGAGE and value.count(",") < MAX_BAGGAGE_MEMBERS and value.isascii()


CHECKS = {b"traceparent": valid_traceparent, b"tracestate": valid_tracestate, b"baggage": valid_baggage}


def clean_carrier(carrier: object) -> dict[str, str]:
    """The same checks for a carrier read back from a job: anything odd is dropped, never raised."""
    if not isinstance(carrier, dict):
        return {}
    cleaned = {}
    for key, check in CHECKS.items():
        value = carrier.get(key.decode())
        if isinstance(value, str) and check(value):
            cleaned[key.decode()] = value
    return cleaned if "traceparent" in cleaned else {}


class TraceHeaderGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            kept = [(n, v) for n, v in headers if self._keep(n.lower(), v)]
            if sum(1 for n, _ in kept if n.lower() == b"traceparent") > 1:
                # Two parents are ambiguous: start a new trace, as the W3C test suite expects, and
                # drop tracestate, which means nothing without its traceparent.
                kept = [(n, v) for n, v in kept if n.lower() not in (b"traceparent", b"tracestate")]
            if len(kept) != len(headers):
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)

    @staticmethod
    def _keep(name: bytes, value: bytes) -> bool:
        check = CHECKS.get(name)
        return check is None or check(value.decode("latin-1").strip())
