"""The API benchmark's peer: `POST /api/v1/scan-jobs` as a bare Starlette endpoint.

The same work as pagelens's route, without anything pagelens adds around it: read the JSON body,
insert the scan row (the same INSERT ... RETURNING * into the same table), enqueue the arq job with
arq's own `enqueue_job`, answer 202 with the same body and Location header. No validation beyond the
body being JSON with a "url", no tracing, no metrics, no logging, arq's default (pickle) payloads.

Served by the same uvicorn, with the same flags, as `app.main:app`: `uvicorn bench.bare_api:app`.
DATABASE_URL, REDIS_URL and PAGELENS_QUEUE come from the environment (through Settings).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.settings import Settings

PREFIX = "/api/v1/scan-jobs"
INSERT = """INSERT INTO scans (id, kind, url, document, title, options, idempotency_key, request_hash, trace_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *"""


class Backends:
    pool: asyncpg.Pool
    redis: ArqRedis
    queue: str

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """The database pool and arq's Redis pool, from DATABASE_URL, REDIS_URL and PAGELENS_QUEUE,
        for the app's lifetime (this endpoint's and the typical peer's, bench/peer_api.py)."""
        settings = Settings.from_env()
        pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=10)
        assert pool is not None
        self.pool, self.queue = pool, settings.queue_name
        self.redis = await create_pool(RedisSettings.from_dsn(settings.require_redis_url()))
        try:
            yield
        finally:
            await self.redis.aclose()
            await pool.close()


backends = Backends()


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    async with backends.connected():
        yield


async def create_scan(request: Request) -> Response:
    body = json.loads(await request.body())
    row = await backends.pool.fetchrow(INSERT, uuid.uuid4(), "url", body["url"], None, None, "{}", None, None, None)
    assert row is not None  # RETURNING * always returns the row
    scan_id = str(row["id"])
    await backends.redis.enqueue_job("run_scan", _job_id=scan_id, _queue_name=backends.queue, scan_id=scan_id)
    status_url = f"{PREFIX}/{scan_id}/status"
    return JSONResponse(
        {"scanId": scan_id, "status": row["status"], "statusUrl": status_url},
        status_code=202,
        headers={"Location": status_url},
    )


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route(PREFIX, create_scan, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
    lifespan=lifespan,
)
