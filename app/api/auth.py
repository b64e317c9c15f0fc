"""API keys: when PAGELENS_API_KEYS is set, /api/* requires `Authorization: Bearer <key>`.

So does /v1/traces (browser spans): otherwise anyone could write into the trace store. The web
page at / stays open; it holds no data and asks for a key when the API answers 401.

Each request with a valid key is then held to the key's rate limit (app/api/limits.py), and the key's
short id is left in the request state for the cap on open scans.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import limits
from app.api.problems import Problem, problem_response
from app.api.state import State

KEY_ID_STATE = "api_key_id"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


PROTECTED = ("/api/", "/v1/traces")


def _presented(header: str | None) -> bytes | None:
    """The digest of the bearer token an Authorization header presents."""
    if not header or not header.lower().startswith("bearer "):
        return None
    return _digest(header[7:].strip())


def bearer_matches(header: str | None, secret: str) -> bool:
    """Whether an Authorization header presents `secret` as a bearer token (constant time)."""
    presented = _presented(header)
    return presented is not None and hmac.compare_digest(presented, _digest(secret))


def key_id(digest: bytes) -> str:
    """What identifies a key in Redis, in the scans table and in logs: 16 hex digits of its SHA-256.
    Not the key, and no use for finding it."""
    return digest.hex()[:16]


class APIKeyAuth:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...], rate_limit: int = 0) -> None:
        self.app = app
        # Only digests are kept, and compared in constant time, so neither a memory dump nor
        # response timing gives a key away.
        self.digests = [_digest(k) for k in keys]
        self.rate_limit = rate_limit  # requests per minute per key; 0 = unlimited

    def identify(self, header: str | None) -> str | None:
        """The id of the key the header presents, or None when it presents no valid key."""
        presented = _presented(header)
        if presented is None:
            return None
        found: bytes | None = None
        for digest in self.digests:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(presented, digest):
                found = digest
        return key_id(found) if found is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.digests or scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        identity = self.identify(headers.get("authorization"))
        if identity is None:
            problem = Problem(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
            await problem_response(problem, scope["path"])(scope, receive, send)
            return
        if self.rate_limit:
            redis = State.of_app(scope["app"]).redis
            wait = await limits.rate_limit_wait(redis, identity, self.rate_limit)
            if wait is not None:
                problem = limits.rate_limited(wait, self.rate_limit)
                await problem_response(problem, scope["path"])(scope, receive, send)
                return
        scope.setdefault("state", {})[KEY_ID_STATE] = identity
        await self.app(scope, receive, send)


def request_key_id(scope: Scope) -> str | None:
    """The id of the API key that made this request (None when the API runs without keys)."""
    state = scope.get("state") or {}
    value = state.get(KEY_ID_STATE)
    return value if isinstance(value, str) else None
