"""`pagelens keys create|list|revoke`: API keys, managed against the database directly.

Directly, not through the API, so the first key can be made before any key exists (the moment it
exists the API requires one) and an operator who lost every admin key can still get in. Each
creation and revocation is audited like its HTTP counterpart, with `via: cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from app.core import audit, keys
from app.core.settings import Settings
from app.core.types import Record
from observability.logs import setup_logging

T = TypeVar("T")


class KeyCommandError(Exception):
    """Bad input or a database without the api_keys table: exit code 2 with this message."""


async def _with_db(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return await work(conn)
    except asyncpg.UndefinedTableError:
        raise KeyCommandError("the database has no api_keys table yet: run `pagelens migrate` first") from None
    finally:
        await conn.close()


def _when(row: Record, column: str) -> str:
    value = row[column]
    return value.isoformat(timespec="seconds") if value is not None else ""


def _row_json(row: Record) -> dict[str, str | None]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "tenant": row["tenant"],
        "role": row["role"],
        "prefix": row["prefix"],
        "createdAt": _when(row, "created_at"),
        "lastUsedAt": _when(row, "last_used_at") or None,
        "revokedAt": _when(row, "revoked_at") or None,
    }


def cmd_create(settings: Settings, args: argparse.Namespace) -> int:
    setup_logging(settings.log_level)  # the audit line is JSON on stderr, as the API writes it
    role = keys.Role.ADMIN if args.admin else keys.Role.MEMBER
    try:
        new = asyncio.run(_with_db(settings, lambda db: keys.create(db, args.name, args.tenant, role)))
    except keys.InvalidKeyField as exc:
        raise KeyCommandError(str(exc)) from None
    audit.record(
        audit.Action.KEY_CREATE,
        audit.Outcome.OK,
        actor_key_id=None,
        actor_tenant=new.row["tenant"],
        via="cli",
        target_key_id=str(new.row["id"]),
        target_tenant=new.row["tenant"],
    )
    if args.json:
        print(json.dumps({**_row_json(new.row), "key": new.secret}, indent=2))
        return 0
    row = new.row
    print(f"created {row['role']} key {row['id']} ({row['name']!r}, tenant {row['tenant']})")
    print(f"  key: {new.secret}")
    print("  This is the only time the key is shown: store it now (pagelens keeps only its hash).")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_db(settings, lambda db: keys.listing(db, include_revoked=args.all)))
    if args.json:
        print(json.dumps([_row_json(r) for r in rows], indent=2, ensure_ascii=False))
        return 0
    # Plain aligned columns, never wrapped or cut: the id is what `keys revoke` takes.
    header = ("ID", "NAME", "TENANT", "ROLE", "PREFIX", "CREATED", "LAST USED", "REVOKED")
    lines = [header] + [
        (
            str(row["id"]),
            row["name"],
            row["tenant"],
            row["role"],
            row["prefix"] + "…",
            _when(row, "created_at"),
            _when(row, "last_used_at") or "-",
            _when(row, "revoked_at") or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def cmd_revoke(settings: Settings, args: argparse.Namespace) -> int:
    setup_logging(settings.log_level)  # the audit line is JSON on stderr, as the API writes it
    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        raise KeyCommandError(f"not a key id: {args.key_id!r} (see `pagelens keys list`)") from None
    found = asyncio.run(_with_db(settings, lambda db: keys.revoke(db, key_id)))
    audit.record(
        audit.Action.KEY_REVOKE,
        keys.revoke_outcome(found),
        actor_key_id=None,
        actor_tenant=found[0]["tenant"] if found is not None else keys.DEFAULT_TENANT,
        via="cli",
        target_key_id=str(key_id),
        target_tenant=found[0]["tenant"] if found is not None else None,
    )
    if found is None:
        raise KeyCommandError(f"no API key {key_id}")
    row, revoked_now = found
    if not revoked_now:
        when = _when(row, "revoked_at")
        print(f"key {row['id']} ({row['name']!r}, tenant {row['tenant']}) was already revoked at {when}")
        return 0
    print(f"revoked key {row['id']} ({row['name']!r}, tenant {row['tenant']}) at {_when(row, 'revoked_at')}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("keys", help="create, list and revoke API keys (in the database, directly)")
    commands = parser.add_subparsers(dest="keys_command", required=True)
    create = commands.add_parser("create", help="create a key and print it, once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--tenant", default=keys.DEFAULT_TENANT, help="the tenant its scans belong to (default: default)"
    )
    create.add_argument("--admin", action="store_true", help="an admin key: all tenants, queues and key management")
    create.add_argument("--json", action="store_true", help="print JSON instead of text")
    create.set_defaults(handler=cmd_create)
    listing = commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(handler=cmd_list)
    revoke = commands.add_parser("revoke", help="revoke a key: every API process refuses it within seconds")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=cmd_revoke)
