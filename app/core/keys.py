"""The api_keys table: API keys as data, each with a tenant and a role.

A key is `pl_` and 32 URL-safe characters (192 random bits); the recognisable prefix lets secret
scanners find a leaked one. Only its SHA-256 is stored (a hash of that much randomness needs no salt
or slow hash: there is nothing to guess), with the first characters as a public prefix for lists.
The secret itself exists only in the answer to `create`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

from app.core.audit import Outcome
from app.core.db import timed
from app.core.types import Executor, Record

KEY_PREFIX = "pl_"
SECRET_BYTES = 24  # 192 bits, 32 characters of base64url
PUBLIC_CHARS = 8  # pl_ and this many characters of the secret are shown in lists
DEFAULT_TENANT = "default"
# Lower-case letters, digits, '-' and '_', at most 63: safe in URLs, logs and metric-free labels.
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_NAME_CHARS = 100
# How often a key's last_used_at is written at most: a busy key must not write a row per request.
TOUCH_INTERVAL_SECONDS = 60
# PostgreSQL NOTIFY channel of api_keys changes (migrations/0005_api_keys.sql).
CHANNEL = "pagelens_api_keys"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class InvalidKeyField(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def valid_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidKeyField("tenant", "1-63 characters: lower-case letters, digits, '-' and '_'")
    return tenant


def valid_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise InvalidKeyField("name", f"1-{MAX_NAME_CHARS} printable characters")
    return name


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def looks_like_key(secret: str) -> bool:
    """Whether a bearer token has the shape of a stored key (anything else is not looked up)."""
    return secret.startswith(KEY_PREFIX) and 16 <= len(secret) <= 128


@dataclass(frozen=True)
class NewKey:
    row: Record
    secret: str  # shown once; never stored


@timed("keys.create")
async def create(db: Executor, name: str, tenant: str = DEFAULT_TENANT, role: Role = Role.MEMBER) -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    row = await db.fetchrow(
        """INSERT INTO api_keys (id, name, tenant, role, prefix, secret_sha256)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
        uuid.uuid4(),
        valid_name(name),
        valid_tenant(tenant),
        role.value,
        secret[: len(KEY_PREFIX) + PUBLIC_CHARS],
        digest(secret),
    )
    assert row is not None
    return NewKey(row, secret)


@timed("keys.list")
async def listing(db: Executor, *, include_revoked: bool = True) -> list[Record]:
    return await db.fetch(
        "SELECT * FROM api_keys WHERE $1 OR revoked_at IS NULL ORDER BY created_at, id", include_revoked
    )


@timed("keys.revoke")
async def revoke(db: Executor, key_id: uuid.UUID) -> tuple[Record, bool] | None:
    """Revoke a key: its row, and whether this call revoked it (False when it already was: revoking
    a revoked key changes nothing, and the audit says so). None when there is no such key."""
    row: Record | None = await db.fetchrow(
        """WITH prior AS (SELECT id, revoked_at FROM api_keys WHERE id = $1 FOR UPDATE)
           UPDATE api_keys k SET revoked_at = COALESCE(k.revoked_at, now()) FROM prior WHERE k.id = prior.id
           RETURNING k.*, prior.revoked_at IS NULL AS revoked_now""",
        key_id,
    )
    return None if row is None else (row, bool(row["revoked_now"]))


def revoke_outcome(found: tuple[Record, bool] | None) -> Outcome:
    """The audit outcome of a `revoke`."""
    if found is None:
        return Outcome.NOT_FOUND
    return Outcome.OK if found[1] else Outcome.UNCHANGED


@timed("keys.lookup")
async def lookup(db: Executor, secret_sha256: bytes) -> Record | None:
    """The live (unrevoked) key with this hash."""
    row: Record | None = await db.fetchrow(
        "SELECT id, tenant, role FROM api_keys WHERE secret_sha256 = $1 AND revoked_at IS NULL", secret_sha256
    )
    return row


@timed("keys.exist")
async def any_exist(db: Executor) -> bool:
    """Whether a key was ever made (revoked ones count: revoking every key does not open the API)."""
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys)"))


@timed("keys.touch")
async def touch(db: Executor, key_id: uuid.UUID) -> None:
    """Record a use; written only when the last one is older than TOUCH_INTERVAL_SECONDS, so even
    several API processes write a busy key's row about once a minute."""
    await db.execute(
        """UPDATE api_keys SET last_used_at = now()
           WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))""",
        key_id,
        float(TOUCH_INTERVAL_SECONDS),
    )
