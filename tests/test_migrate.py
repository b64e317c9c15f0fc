from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from app.core import migrate
from app.core.settings import Settings

MIGRATIONS = Settings().migrations_dir


async def test_applies_all_then_nothing(server_dsn: str, empty_database: object) -> None:
    dsn = await empty_database(server_dsn)  # type: ignore[operator]
    first = await migrate.apply(dsn, MIGRATIONS)
    assert first == [p.name for p in sorted(MIGRATIONS.glob("*.sql"))]
    assert await migrate.apply(dsn, MIGRATIONS) == []
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(first)
        assert await conn.fetchval("SELECT to_regclass('scans')::text") == "scans"
    finally:
        await conn.close()


async def test_concurrent_runs_apply_each_file_once(server_dsn: str, empty_database: object) -> None:
    dsn = await empty_database(server_dsn)  # type: ignore[operator]
    results = await asyncio.gather(*(migrate.apply(dsn, MIGRATIONS) for _ in range(4)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(p.name for p in MIGRATIONS.glob("*.sql"))


async def test_edited_migration_is_refused(server_dsn: str, empty_database: object, tmp_path: Path) -> None:
    dsn = await empty_database(server_dsn)  # type: ignore[operator]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    assert await migrate.apply(dsn, tmp_path) == ["0001_first.sql"]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        await migrate.apply(dsn, tmp_path)


async def test_failed_migration_rolls_back(server_dsn: str, empty_database: object, tmp_path: Path) -> None:
    dsn = await empty_database(server_dsn)  # type: ignore[operator]
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate.apply(dsn, tmp_path)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT array_agg(name) FROM schema_migrations") == ["0001_ok.sql"]
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNNN_snake_case"):
        migrate.load(tmp_path)


async def test_cli_migrate(server_dsn: str, empty_database: object) -> None:
    import os
    import subprocess
    import sys

    dsn = await empty_database(server_dsn)  # type: ignore[operator]
    env = {**os.environ, "DATABASE_URL": dsn}
    cmd = [sys.executable, "-m", "app.cli.main", "migrate"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "0001_scans.sql" in first.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "up to date" in again.stdout
    env.pop("DATABASE_URL")
    missing = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "DATABASE_URL is not set" in missing.stderr


async def test_scans_from_before_tenancy_belong_to_default(
    server_dsn: str, empty_database: object, tmp_path: Path
) -> None:
    """A database with scans (and Idempotency-Keys) from before 0005: they become the `default`
    tenant's, and a key is unique per tenant from then on."""
    dsn = await empty_database(server_dsn)  # type: ignore[operator]
    before = sorted(p for p in MIGRATIONS.glob("*.sql") if p.name < "0005")
    for path in before:
        (tmp_path / path.name).write_text(path.read_text())
    assert await migrate.apply(dsn, tmp_path) == [p.name for p in before]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO scans (id, kind, document, idempotency_key) VALUES (gen_random_uuid(), 'document', 'x', 'k1')"
        )
        assert "0005_api_keys.sql" in await migrate.apply(dsn, MIGRATIONS)
        assert await conn.fetchval("SELECT tenant FROM scans WHERE idempotency_key = 'k1'") == "default"
        await conn.execute(
            """INSERT INTO scans (id, kind, document, idempotency_key, tenant)
               VALUES (gen_random_uuid(), 'document', 'y', 'k1', 'acme')"""
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                """INSERT INTO scans (id, kind, document, idempotency_key)
                   VALUES (gen_random_uuid(), 'document', 'z', 'k1')"""
            )
    finally:
        await conn.close()
