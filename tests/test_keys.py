"""API keys as data: `pagelens keys` against the database, /api/v1/keys for admins, authentication
turning on with the first key, revocation reaching two separate API processes, last_used_at, and
the audit trail (one JSON line per action, never the secret, and the metric).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.cli.embedded import free_port
from app.core import keys
from app.core.settings import ROOT, Settings
from observability import metrics
from tests.conftest import serve_api
from tests.processes import API_START_POLLS, POLL, Proc, process_env, start_process, stop_process

SCANS = "/api/v1/scan-jobs"
REVOKE_POLLS = 50  # x 0.1 s: "within a few seconds"


def pagelens(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in a process of its own."""
    env = process_env(DATABASE_URL=dsn, OTEL_SDK_DISABLED="true")
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def audit_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "pagelens.audit"]


def audited(action: str, outcome: str) -> float:
    try:
        value = metrics.audit_events_total.get({"action": action, "outcome": outcome})
    except KeyError:
        return 0.0
    assert isinstance(value, int | float)
    return float(value)


@pytest.fixture
async def dsn(migrated_database: Callable[[], Awaitable[str]]) -> str:
    return await migrated_database()


async def test_the_command_line_creates_lists_and_revokes_keys(dsn: str) -> None:
    created = pagelens(dsn, "keys", "create", "--name", "Acme's importer", "--tenant", "acme", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    secret = key["key"]
    assert secret.startswith("pl_") and len(secret) >= 3 + 22, "at least 128 random bits after the prefix"
    assert (key["tenant"], key["role"], key["revokedAt"]) == ("acme", "member", None)
    assert secret.startswith(key["prefix"]) and len(key["prefix"]) < len(secret) // 2
    (line,) = audit_lines(created.stderr)
    assert line["audit_action"] == "key_create" and line["target_key_id"] == key["id"] and line["via"] == "cli"
    assert secret not in created.stderr

    admin = pagelens(dsn, "keys", "create", "--name", "ops", "--admin")
    assert admin.returncode == 0, admin.stderr
    assert "pl_" in admin.stdout and "only time" in admin.stdout

    listed = pagelens(dsn, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["tenant"], r["role"]) for r in rows] == [
        ("Acme's importer", "acme", "member"),
        ("ops", "default", "admin"),
    ]
    assert secret not in listed.stdout, "a list never shows a secret"
    plain = pagelens(dsn, "keys", "list")
    assert key["id"] in plain.stdout and key["prefix"] in plain.stdout and secret not in plain.stdout

    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", uuid.UUID(key["id"]))
    finally:
        await conn.close()
    assert stored is not None and stored["secret_sha256"] == keys.digest(secret)
    assert secret.encode() not in bytes(stored["secret_sha256"]) and secret not in str(dict(stored))

    revoked = pagelens(dsn, "keys", "revoke", key["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    assert [line["audit_action"] for line in audit_lines(revoked.stderr)] == ["key_revoke"]
    after = json.loads(pagelens(dsn, "keys", "list", "--json").stdout)
    assert [r["name"] for r in after] == ["ops"], "revoked keys are listed only with --all"
    assert len(json.loads(pagelens(dsn, "keys", "list", "--all", "--json").stdout)) == 2

    for bad in (
        ["create", "--name", "x", "--tenant", "Bad Tenant"],
        ["revoke", "not-an-id"],
        ["revoke", key["id"][:-1]],
    ):
        refused = pagelens(dsn, "keys", *bad)
        assert refused.returncode == 2 and refused.stderr.strip(), (bad, refused.stderr)
    unknown = pagelens(dsn, "keys", "revoke", str(uuid.uuid4()))
    assert unknown.returncode == 2 and "no API key" in unknown.stderr
    again = pagelens(dsn, "keys", "revoke", key["id"])
    assert again.returncode == 0 and "already revoked" in again.stdout, again.stderr
    assert [(line["audit_action"], line["outcome"]) for line in audit_lines(again.stderr)] == [
        ("key_revoke", "unchanged")
    ]


async def test_authentication_turns_on_with_the_first_key_and_keys_work_over_http(settings: Settings, dsn: str) -> None:
    own = settings.with_(database_url=dsn, queue_name=f"{settings.queue_name}:keys", rate_limit=0)
    async with serve_api(own) as base, httpx.AsyncClient(base_url=base, timeout=15) as client:
        assert (await client.get(SCANS)).status_code == 200, "no key anywhere: open, as before"
        conn = await asyncpg.connect(dsn)
        try:
            admin = (await keys.create(conn, "first admin", "ops", keys.Role.ADMIN)).secret
        finally:
            await conn.close()
        for _ in range(REVOKE_POLLS):
            if (await client.get(SCANS)).status_code == 401:
                break
            await asyncio.sleep(0.1)
        assert (await client.get(SCANS)).status_code == 401, "the first key turns authentication on"
        as_admin = {"Authorization": f"Bearer {admin}"}

        before = audited("key_create", "ok")
        made = await client.post("/api/v1/keys", json={"name": "Beta Corp", "tenant": "beta"}, headers=as_admin)
        assert made.status_code == 201, made.text
        new = made.json()
        assert new["key"].startswith("pl_") and (new["tenant"], new["role"]) == ("beta", "member")
        assert made.headers["location"] == f"/api/v1/keys/{new['id']}"
        assert audited("key_create", "ok") == before + 1
        as_beta = {"Authorization": f"Bearer {new['key']}"}
        assert (await client.get(SCANS, headers=as_beta)).status_code == 200

        listed = (await client.get("/api/v1/keys", headers=as_admin)).json()["items"]
        assert {k["name"] for k in listed} == {"first admin", "Beta Corp"}
        assert all("key" not in k and new["key"] not in json.dumps(k) for k in listed)
        beta_row = next(k for k in listed if k["name"] == "Beta Corp")
        assert beta_row["lastUsedAt"] is not None, "the use just made is recorded"

        bad_keys = ({"name": ""}, {"name": "x", "tenant": "UPPER"}, {"name": "x", "role": "owner"}, {"nme": "x"})
        for bad in (*bad_keys, {"name": "nul\x00byte"}):
            response = await client.post("/api/v1/keys", json=bad, headers=as_admin)
            assert response.status_code == 422, (bad, response.text)
        missing = audited("key_revoke", "not_found")
        assert (await client.delete(f"/api/v1/keys/{uuid.uuid4()}", headers=as_admin)).status_code == 404
        assert (await client.delete("/api/v1/keys/nope", headers=as_admin)).status_code == 404
        assert (await client.delete("/api/v1/keys/%D9%A1", headers=as_admin)).status_code == 404
        assert audited("key_revoke", "not_found") == missing + 3, "malformed ids are audited too"

        ok, unchanged = audited("key_revoke", "ok"), audited("key_revoke", "unchanged")
        revoked = await client.delete(f"/api/v1/keys/{new['id']}", headers=as_admin)
        assert revoked.status_code == 200 and revoked.json()["revokedAt"] is not None
        again = await client.delete(f"/api/v1/keys/{new['id']}", headers=as_admin)
        assert again.status_code == 200 and again.json()["revokedAt"] == revoked.json()["revokedAt"]
        assert (audited("key_revoke", "ok"), audited("key_revoke", "unchanged")) == (ok + 1, unchanged + 1)
        for _ in range(REVOKE_POLLS):
            if (await client.get(SCANS, headers=as_beta)).status_code == 401:
                break
            await asyncio.sleep(0.1)
        assert (await client.get(SCANS, headers=as_beta)).status_code == 401
        assert (
            await client.get(SCANS, headers={"Authorization": "Bearer pl_made-up-but-well-formed"})
        ).status_code == 401


async def test_last_used_is_written_about_once_a_minute(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        key_id = (await keys.create(conn, "busy", "acme")).row["id"]
        await keys.touch(conn, key_id)
        first = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)
        await keys.touch(conn, key_id)
        assert await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id) == first
        await conn.execute("UPDATE api_keys SET last_used_at = now() - interval '61 seconds' WHERE id = $1", key_id)
        await keys.touch(conn, key_id)
        assert await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id) > first
    finally:
        await conn.close()


@pytest.fixture
async def two_apis(settings: Settings, dsn: str, tmp_path: Path) -> AsyncIterator[tuple[list[str], list[Proc]]]:
    """Two API processes (uvicorn, each its own key cache) on one database. Their key cache lives
    a minute: what makes a revocation reach them in seconds is the NOTIFY each one listens for."""
    env = process_env(
        DATABASE_URL=dsn,
        REDIS_URL=settings.require_redis_url(),
        PAGELENS_QUEUE=f"{settings.queue_name}:two-apis",
        PAGELENS_KEY_CACHE_SECONDS="60",
        PAGELENS_RATE_LIMIT="0",
    )
    procs, bases = [], []
    try:
        for name in ("api-1", "api-2"):
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
            procs.append(start_process(name, command, env, tmp_path))
            bases.append(f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient(timeout=5) as client:
            for base, proc in zip(bases, procs, strict=True):
                for _ in range(API_START_POLLS):
                    try:
                        if (await client.get(f"{base}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.process.poll() is None, proc.tail()
                    await asyncio.sleep(POLL)
                else:
                    raise AssertionError(proc.tail())
        yield bases, procs
    finally:
        for proc in procs:
            stop_process(proc)


async def test_a_revoked_key_stops_working_on_every_api_process(
    dsn: str, two_apis: tuple[list[str], list[Proc]]
) -> None:
    bases, procs = two_apis
    conn = await asyncpg.connect(dsn)
    try:
        key = await keys.create(conn, "customer", "acme")
        admin = await keys.create(conn, "ops", "ops", keys.Role.ADMIN)
    finally:
        await conn.close()
    as_key = {"Authorization": f"Bearer {key.secret}"}
    async with httpx.AsyncClient(timeout=10) as client:
        # Both processes have seen the key and cached it as valid.
        for base in bases:
            assert (await client.get(f"{base}{SCANS}", headers=as_key)).status_code == 200
        accepted = await client.post(
            f"{bases[0]}/api/v1/documents", json={"text": "Hedges shelter birds."}, headers=as_key
        )
        scan_id = accepted.json()["scanId"]
        assert (await client.delete(f"{bases[0]}{SCANS}/{scan_id}", headers=as_key)).status_code == 202

        revoked = await client.delete(
            f"{bases[1]}/api/v1/keys/{key.row['id']}", headers={"Authorization": f"Bearer {admin.secret}"}
        )
        assert revoked.status_code == 200, revoked.text
        answers: list[int] = []
        for _ in range(REVOKE_POLLS):
            answers = [(await client.get(f"{base}{SCANS}", headers=as_key)).status_code for base in bases]
            if answers == [401, 401]:
                break
            await asyncio.sleep(0.1)
        assert answers == [401, 401], answers

    # The audit trail: one JSON line per action, with key id, tenant, scan id and trace id, no secret.
    (cancel,) = [
        line for line in audit_lines(procs[0].stderr_path.read_text()) if line["audit_action"] == "scan_cancel"
    ]
    assert (cancel["key_id"], cancel["tenant"], cancel["scan_id"], cancel["outcome"]) == (
        str(key.row["id"]),
        "acme",
        scan_id,
        "ok",
    )
    assert len(cancel["trace_id"]) == 32
    (revoke,) = audit_lines(procs[1].stderr_path.read_text())
    assert (revoke["audit_action"], revoke["key_id"], revoke["target_key_id"]) == (
        "key_revoke",
        str(admin.row["id"]),
        str(key.row["id"]),
    )
    for proc in procs:
        log = proc.stderr_path.read_text()
        assert key.secret not in log and admin.secret not in log
