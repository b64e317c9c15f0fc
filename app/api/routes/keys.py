"""/api/v1/keys: API key management over HTTP, for admins (`pagelens keys` does the same against
the database directly).

POST creates a key and answers its secret, once; GET lists keys without secrets; DELETE revokes a
key (its row stays, with revokedAt). Each creation and revocation is audited (app/core/audit.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api.auth import require_admin
from app.api.params import ascii_uuid
from app.api.problems import Problem
from app.api.schemas import CreateKey, parse_json, reply
from app.api.state import State
from app.core import audit, keys
from app.core.report import Wire
from app.core.types import Record

PREFIX = "/api/v1/keys"


class ApiKey(Wire):
    """A key as lists show it: never its secret, only the prefix that tells keys apart."""

    id: uuid.UUID
    name: str
    tenant: str
    role: keys.Role
    prefix: str = Field(description="The key's first characters, to tell keys apart")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Record) -> ApiKey:
        return cls.model_validate(dict(row))


class NewApiKey(ApiKey):
    key: str = Field(description="The secret, shown in this answer only")


class ApiKeyList(Wire):
    items: list[ApiKey]


async def create_key(request: Request) -> Response:
    admin = require_admin(request)
    state = State.of(request)
    body, _ = await parse_json(request, CreateKey, state.settings)
    try:
        new = await keys.create(state.pool, body.name, body.tenant or admin.tenant, keys.Role(body.role))
    except keys.InvalidKeyField as exc:
        raise Problem(
            422, "request body is invalid", code="validation", errors=[{"field": exc.field, "message": exc.message}]
        ) from None
    audit.record(
        audit.Action.KEY_CREATE,
        audit.Outcome.OK,
        actor_key_id=admin.key_id,
        actor_tenant=admin.tenant,
        via="api",
        target_key_id=str(new.row["id"]),
        target_tenant=new.row["tenant"],
    )
    location = f"{PREFIX}/{new.row['id']}"
    created = NewApiKey.model_validate({**dict(new.row), "key": new.secret})
    return reply(created, 201, {"Location": location})


async def list_keys(request: Request) -> Response:
    require_admin(request)
    rows = await keys.listing(State.of(request).pool)
    return reply(ApiKeyList(items=[ApiKey.from_row(r) for r in rows]))


def key_not_found() -> Problem:
    return Problem(404, "no API key with this id", code="key-not-found")


async def revoke_key(request: Request) -> Response:
    admin = require_admin(request)
    raw = request.path_params["keyId"]
    try:
        key_id: uuid.UUID | None = ascii_uuid(raw)
    except ValueError:
        key_id = None
    found = await keys.revoke(State.of(request).pool, key_id) if key_id is not None else None
    audit.record(
        audit.Action.KEY_REVOKE,
        keys.revoke_outcome(found),
        actor_key_id=admin.key_id,
        actor_tenant=admin.tenant,
        via="api",
        # A malformed id is audited too (cut short: it is whatever the client sent).
        target_key_id=str(key_id) if key_id is not None else raw[:64],
        target_tenant=found[0]["tenant"] if found is not None else None,
    )
    if found is None:
        raise key_not_found()
    return reply(ApiKey.from_row(found[0]))


async def key_collection(request: Request) -> Response:
    # One route for both methods, so that a 405 on this path lists both in its Allow header.
    return await (create_key if request.method == "POST" else list_keys)(request)


routes = [
    Route(PREFIX, key_collection, methods=["GET", "POST"]),
    Route(PREFIX + "/{keyId}", revoke_key, methods=["DELETE"]),
]
