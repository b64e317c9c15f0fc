"""The worker's own /metrics server: real sockets, real scrapes, parsed as Prometheus reads them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from app.core import db
from app.core.settings import Settings
from observability.metrics_server import MetricsServer, observe_pool, start_metrics_server
from observability.sampler import lock_key, stats_key, workers_key
from tests.conftest import RUN_ID

if TYPE_CHECKING:  # the import loads KeyBERT
    from worker.keyphrases import KeyphraseExtractor


@pytest.fixture
async def small_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool of exactly two connections, so the pool gauge has known values."""
    pool = await db.create_pool(settings.require_database_url(), min_size=2, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def server(small_pool: asyncpg.Pool) -> AsyncIterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, before_render=lambda: observe_pool(small_pool), read_timeout=0.5)
    assert await srv.start()
    yield srv
    await srv.stop()


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are and read the whole answer (the server closes after one response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_scrape_has_build_info_and_pool_gauge(server: MetricsServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept": "text/plain"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["connection"] == "close"
    found = families(response.text)
    build = [s for s in found["pagelens_build_info"].samples if s.name == "pagelens_build_info"]
    assert [(s.labels, s.value) for s in build] == [({"version": __version__}, 1.0)]
    pool = {s.labels["state"]: s.value for s in found["pagelens_db_pool_connections"].samples}
    assert pool == {"open": 2.0, "idle": 2.0}


async def test_head_has_headers_without_body(server: MetricsServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.head(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


async def test_other_paths_404_and_other_methods_405(server: MetricsServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as client:
        missing = await client.get(f"{base}/")
        posted = await client.post(f"{base}/metrics", content=b"x")
        queried = await client.get(f"{base}/metrics?name=x")
    assert missing.status_code == 404
    assert posted.status_code == 405
    assert {method.strip() for method in posted.headers["allow"].split(",")} == {"GET", "HEAD"}
    assert queried.status_code == 200


HOST = b"Host: 127.0.0.1\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"nonsense\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"b" * 500 + b"\r\n\r\n", b"200"),
        (b"GET /metrics HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"b" * 10_000 + b"\r\n\r\n", b"400"),
        (
            b"GET /metrics HTTP/1.1\r\n"
            + HOST
            + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 100) for i in range(40))
            + b"\r\n",
            b"400",
        ),
        (b"GET /metrics HTTP/1.1\r\n" + HOST + b"no colon here\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host (RFC 9112 section 3.2)
        (b"GET /metrics HTTP/1.1\r\n" + HOST + b"X-Nul: a\x00b\r\n\r\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xaa" * 64 + b"\r\n\r\n", b"400"),  # TLS hello
        # A huge announced body is never read: the method is refused first.
        (b"POST /metrics HTTP/1.1\r\n" + HOST + b"Content-Length: 10000000000\r\n\r\n", b"405"),
    ],
)
async def test_hostile_request_heads_are_bounded_and_refused(
    server: MetricsServer, request_bytes: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.port is not None
    with caplog.at_level(logging.DEBUG):
        answer = await raw_request(server.port, request_bytes)
    assert answer.split(b" ", 2)[1] == status
    # A client's malformed request is its own problem: no traceback in our logs.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    async with httpx.AsyncClient() as client:  # and the next scrape is unaffected
        assert (await client.get(f"http://127.0.0.1:{server.port}/metrics")).status_code == 200


async def test_silent_client_is_dropped_without_blocking_scrapes(server: MetricsServer) -> None:
    assert server.port is not None
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", server.port)
    half_reader, half_writer = await asyncio.open_connection("127.0.0.1", server.port)
    half_writer.write(b"GET /metrics HTTP/1.1\r\n")  # a request line, then nothing
    await half_writer.drain()
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/metrics")
        assert response.status_code == 200
        # Both are closed by the server (read_timeout) with no answer; the bound only guards the test.
        assert await asyncio.wait_for(silent_reader.read(), 10) == b""
        assert await asyncio.wait_for(half_reader.read(), 10) == b""
    finally:
        for writer in (silent_writer, half_writer):
            writer.close()
            await writer.wait_closed()


async def test_port_in_use_warns_instead_of_raising(server: MetricsServer, caplog: pytest.LogCaptureFixture) -> None:
    assert server.port is not None
    second = MetricsServer("127.0.0.1", server.port)
    with caplog.at_level(logging.WARNING, logger="pagelens.metrics"):
        assert await second.start() is False
    assert second.port is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pagelens.metrics"]
    assert len(warnings) == 1
    assert str(server.port) in warnings[0].getMessage()
    await second.stop()  # a no-op, and safe
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/metrics")).status_code == 200


async def test_stop_closes_the_port(settings: Settings) -> None:
    srv = await start_metrics_server("127.0.0.1", 0)
    assert srv is not None and srv.port is not None
    port = srv.port
    await srv.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_worker_startup_serves_metrics_with_its_pool(
    settings: Settings, redis: ArqRedis, small_pool: asyncpg.Pool, extractor: KeyphraseExtractor
) -> None:
    from worker.settings import on_shutdown, on_startup

    worker_settings = settings.with_(worker_metrics_port=0, queue_name=f"pagelens:test:{RUN_ID}:metrics")
    ctx: dict[str, Any] = {
        "settings": worker_settings,
        "redis": redis,
        "pool": small_pool,
        "keyphrases": extractor,
        "configure_logging": False,
    }
    await on_startup(ctx)
    try:
        port = ctx["metrics_server"].port
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        pool = {s.labels["state"]: s.value for s in families(response.text)["pagelens_db_pool_connections"].samples}
        assert pool["open"] == 2.0
    finally:
        await on_shutdown(ctx)
        queue = worker_settings.queue_name
        await redis.delete(lock_key(queue), stats_key(queue), workers_key(queue))
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
