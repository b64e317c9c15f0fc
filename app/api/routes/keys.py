"""/api/v1/keys: API key management over HTTP, for admins (`pagelens keys` does the same against
the database directly).

POST creates a key and answers its secret, once; GET lists keys without secrets; DELETE revokes a
key (its row stays, with revokedAt). Each creation and revocation is audited (app/core/audit.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.auth import require_admin
from app.api.problems import Problem
from app.api.schemas import CreateKey, parse_json
from app.api.state import State
from app.core import audit, keys
from app.core.types import JSONDict, Record

PREFIX = "/api/v1/keys"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def key_json(row: Record) -> JSONDict:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "tenant": row["tenant"],
        "role": row["role"],
        "prefix": row["prefix"],
        "createdAt": _iso(row["created_at"]),
        "lastUsedAt": _iso(row["last_used_at"]),
        "revokedAt": _iso(row["revoked_at"]),
    }


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
    return JSONResponse({**key_json(new.row), "key": new.secret}, status_code=201, headers={"Location": location})


async def list_keys(request: Request) -> Response:
    require_admin(request)
    rows = await keys.listing(State.of(request).pool)
    return JSONResponse({"items": [key_json(r) for r in rows]})


def key_not_found() -> Problem:
    return Problem(404, "no API key with this id", code="key-not-found")


async def revoke_key(request: Request) -> Response:
    admin = require_admin(request)
    try:
        key_id = uuid.UUID(request.path_params["keyId"])
    except ValueError:
        raise key_not_found() from None
    row = await keys.revoke(State.of(request).pool, key_id)
    audit.record(
        audit.Action.KEY_REVOKE,
        audit.Outcome.OK if row is not None else audit.Outcome.NOT_FOUND,
        actor_key_id=admin.key_id,
        actor_tenant=admin.tenant,
        via="api",
        target_key_id=str(key_id),
        target_tenant=row["tenant"] if row is not None else None,
    )
    if row is None:
        raise key_not_found()
    return JSONResponse(key_json(row))


routes = [
    Route(PREFIX, create_key, methods=["POST"]),
    Route(PREFIX, list_keys, methods=["GET"]),
    Route(PREFIX + "/{keyId}", revoke_key, methods=["DELETE"]),
]
