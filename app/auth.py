"""API keys: when PAGELENS_API_KEYS is set, /api/* requires `Authorization: Bearer <key>`.

So does /v1/traces (browser spans): otherwise anyone could write into the trace store. The web
page at / stays open; it holds no data and asks for a key when the API answers 401.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from app.problems import Problem, problem_response


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


PROTECTED = ("/api/", "/v1/traces")


class APIKeyAuth:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        # Only digests are kept, and compared in constant time, so neither a memory dump nor
        # response timing gives a key away.
        self.digests = [_digest(k) for k in keys]

    def allowed(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        presented = _digest(header[7:].strip())
        found = False
        for digest in self.digests:  # no early exit: the time does not depend on which key matched
            found |= hmac.compare_digest(presented, digest)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.digests or scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.allowed(headers.get("authorization")):
            problem = Problem(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
            await problem_response(problem, scope["path"])(scope, receive, send)
            return
        await self.app(scope, receive, send)
