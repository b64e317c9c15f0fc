"""API keys: who is asking, and whether they may.

Keys live in the api_keys table (`pagelens keys create`, or POST /api/v1/keys), each with a tenant
and a role; PAGELENS_API_KEYS adds bootstrap keys, admins of the `default` tenant. As soon as any
key exists, either way, /api/* and /v1/traces (browser spans: otherwise anyone could write into the
trace store) require `Authorization: Bearer <key>`. Before that the API is open and every request
acts as an admin of the one `default` tenant, as pagelens always worked. The web page at / stays
open; it holds no data and asks for a key when the API answers 401.

Each request with a key is then held to the key's rate limit (app/api/limits.py), and its identity
(app/api/keyring.py) is left in the request state for the routes to scope by.
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import limits
from app.api.keyring import OPEN, Identity, digest
from app.api.problems import Problem, problem_response, unavailable
from app.api.state import State
from app.core.backing import UNAVAILABLE
from app.core.keys import TENANT_PATTERN

IDENTITY_STATE = "pagelens_identity"
PROTECTED = ("/api/", "/v1/traces")


def _token(header: str | None) -> str | None:
    if not header or not header.lower().startswith("bearer "):
        return None
    return header[7:].strip() or None


def bearer_matches(header: str | None, secret: str) -> bool:
    """Whether an Authorization header presents `secret` as a bearer token (constant time)."""
    token = _token(header)
    return token is not None and hmac.compare_digest(digest(token), digest(secret))


class APIKeyAuth:
    def __init__(self, app: ASGIApp, rate_limit: int = 0) -> None:
        self.app = app
        self.limiter = limits.RateLimiter(rate_limit) if rate_limit else None  # per minute per key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        state = State.of_app(scope["app"])
        try:
            identity = await self._identify(state, scope)
        except UNAVAILABLE as exc:  # the key cannot be checked: never let the request through
            await problem_response(unavailable(exc), scope["path"])(scope, receive, send)
            return
        if identity is None:
            problem = Problem(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
            await problem_response(problem, scope["path"])(scope, receive, send)
            return
        if self.limiter is not None and identity.key_id is not None:
            wait = await self.limiter.wait(state.redis, identity.key_id)
            if wait is not None:
                await problem_response(self.limiter.limited(wait), scope["path"])(scope, receive, send)
                return
        scope.setdefault("state", {})[IDENTITY_STATE] = identity
        await state.keys.touch(identity)
        await self.app(scope, receive, send)

    async def _identify(self, state: State, scope: Scope) -> Identity | None:
        if not await state.keys.enabled():
            return OPEN
        for name, value in scope["headers"]:
            if name.lower() == b"authorization":
                token = _token(value.decode("latin-1"))
                return None if token is None else await state.keys.identify(token)
        return None


def request_identity(scope: Scope) -> Identity:
    """Who made this request, as the middleware established. Fails closed: a route reached without
    the middleware having run is refused, never treated as the open API."""
    state = scope.get("state") or {}
    value = state.get(IDENTITY_STATE)
    if not isinstance(value, Identity):
        raise Problem(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
    return value


def request_key_id(scope: Scope) -> str | None:
    """The id of the API key that made this request (None when the API runs without keys)."""
    return request_identity(scope).key_id


def require_admin(connection: HTTPConnection) -> Identity:
    """The caller, when an admin; else 403 (about the route, never about whether a scan exists)."""
    identity = request_identity(connection.scope)
    if not identity.admin:
        raise Problem(403, "this needs an admin API key", code="forbidden")
    return identity


def scope_tenant(connection: HTTPConnection) -> str:
    """The tenant whose scans a request reads or acts on: the caller's own, or with `?tenant=` any
    tenant for an admin. A member naming another tenant gets 403 whatever the scan id, so the
    answer tells nothing about the scan."""
    identity = request_identity(connection.scope)
    asked = connection.query_params.get("tenant")
    if asked is None or asked == identity.tenant:
        return identity.tenant
    if not TENANT_PATTERN.fullmatch(asked):
        raise Problem(
            422,
            "invalid query parameter",
            code="validation",
            errors=[{"field": "tenant", "message": "1-63 characters: lower-case letters, digits, '-' and '_'"}],
        )
    if not identity.admin:
        raise Problem(403, "only an admin API key may name another tenant", code="forbidden")
    return asked
