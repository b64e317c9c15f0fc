"""A page that makes the parser quadratic pins nothing: it is killed at its deadline, on cancel, or
when its worker stops, and the worker goes on serving.

Real arq workers (in this process, and one in a subprocess for SIGTERM), real PostgreSQL and Redis,
the real parser pool, and the hostile page from tests/hostile.py: `<div><span><b>` x 100,000, which
lexbor takes minutes to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from app.cli.embedded import free_port
from app.core import scans
from app.core.keys import DEFAULT_TENANT
from app.core.models import ErrorType, ScanError
from app.core.queue import redis_settings
from app.core.settings import Settings
from tests.conftest import serve_api
from tests.hostile import PARSER_HOSTILE, Hostile
from tests.processes import (
    POLL,
    child_processes,
    process_env,
    start_process,
    still_running,
    wait_children_gone,
    wait_worker_ready,
)
from tests.site import Site
from tests.waiting import until
from worker.keyphrases import KeyphraseExtractor
from worker.parse import parse_html
from worker.parse_pool import ParsePool

SCANS = "/api/v1/scan-jobs"
HOSTILE = "/nested-formatting"
SCAN_POLLS = 600  # x 0.1 s: a scan (keyphrases included) on a busy box
KILL_POLLS = 50  # x 0.1 s: generous for "within a second"; the kill itself takes milliseconds
# How long past PAGELENS_SHUTDOWN_GRACE a stopping worker may take before its orchestrator kills it
# (compose.yaml's stop_grace_period leaves 15 s).
STOP_MARGIN = 15.0


async def submit(client: httpx.AsyncClient, url: str) -> str:
    response = await client.post(SCANS, json={"url": url})
    assert response.status_code == 202, response.text
    scan_id: str = response.json()["scanId"]
    return scan_id


async def status(client: httpx.AsyncClient, scan_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"{SCANS}/{scan_id}/status")).json()
    return body


async def wait_status(client: httpx.AsyncClient, scan_id: str, *wanted: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await status(client, scan_id))
        return seen["status"] in wanted

    await until(reached, f"scan {scan_id} to reach {wanted}", poll=0.1, polls=SCAN_POLLS)
    return seen


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, pool: asyncpg.Pool, extractor: KeyphraseExtractor, parser: ParsePool
) -> AsyncIterator[Worker]:
    """A long-running (not burst) worker in this process, as deployed but on the test queue."""
    from worker.settings import worker_options

    options = worker_options(settings)
    options["ctx"] = {
        "settings": settings,
        "pool": pool,
        "keyphrases": extractor,
        "parser": parser,
        "configure_logging": False,
    }
    options["cron_jobs"] = []
    worker = Worker(**options, redis_settings=redis_settings(settings.require_redis_url()), handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        yield worker
        # A scan is terminal in PostgreSQL before its job has written its end to Redis: let the
        # jobs end, or close() cancels one in its last write and raises that CancelledError.
        await until(lambda: all(job.done() for job in worker.tasks.values()), "the jobs to end", poll=0.05, polls=400)
    finally:
        task.cancel()  # the poll loop first, then what close() stops (it cancels running jobs)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


def busy_child(pids: list[int]) -> int | None:
    """The child that is using the CPU (the one parsing), if any."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).cpu_percent(interval=0.3) > 50:
                return pid
    return None


def gone(pid: int) -> bool:
    try:
        return not still_running([psutil.Process(pid)])
    except psutil.NoSuchProcess:  # reaped already
        return True


async def test_a_too_complex_page_fails_typed_and_the_next_page_on_the_worker_is_served(
    client: httpx.AsyncClient,
    settings: Settings,
    pool: asyncpg.Pool,
    extractor: KeyphraseExtractor,
    parser: ParsePool,
    hostile: Hostile,
    site: Site,
) -> None:
    own = settings.with_(parse_timeout=2.0, max_tries=3, fetch_allow_hosts=frozenset({hostile.allow, "127.0.0.1"}))
    async with running_worker(own, pool, extractor, parser):
        before = set(parser.pids)
        hard = await wait_status(client, await submit(client, hostile.url(HOSTILE)), "FULL_READY", "FAILED")
        assert hard["status"] == "FAILED", hard
        assert hard["error"]["type"] == "too_complex" and hard["error"]["retryable"] is False, hard["error"]
        assert hard["attempts"] == 1, "a page too complex to parse is not parsed again"
        assert hostile.hits(HOSTILE) == 1
        killed = before - set(parser.pids)
        assert len(killed) == 1 and all(gone(pid) for pid in killed), (before, parser.pids)
        assert len(parser.pids) == parser.processes, "the killed child was replaced"

        ordinary = await wait_status(
            client, await submit(client, site.url("/pages/article.html")), "FULL_READY", "FAILED"
        )
        assert ordinary["status"] == "FULL_READY", ordinary


async def test_cancelling_a_scan_kills_its_parse_at_once_and_frees_the_worker(
    client: httpx.AsyncClient,
    settings: Settings,
    pool: asyncpg.Pool,
    extractor: KeyphraseExtractor,
    parser: ParsePool,
    hostile: Hostile,
    site: Site,
) -> None:
    # A deadline far away: only the cancel can stop this parse.
    own = settings.with_(parse_timeout=600.0, fetch_allow_hosts=frozenset({hostile.allow, "127.0.0.1"}))
    async with running_worker(own, pool, extractor, parser) as worker:
        scan_id = await submit(client, hostile.url(HOSTILE) + f"?k={uuid.uuid4()}")
        await until(
            lambda: busy_child(parser.pids) is not None, "a parser child to be busy", poll=POLL, polls=SCAN_POLLS
        )
        child = busy_child(parser.pids)
        assert child is not None
        assert (await status(client, scan_id))["stage"] == "PARSE"

        assert (await client.delete(f"{SCANS}/{scan_id}")).status_code == 202
        await until(lambda: gone(child), "the parsing child to be killed", poll=0.1, polls=KILL_POLLS)
        await until(
            lambda: not worker.tasks or all(t.done() for t in worker.tasks.values()),
            "the job to end",
            poll=0.1,
            polls=KILL_POLLS,
        )
        assert (await status(client, scan_id))["status"] == "CANCELLED"
        row = await scans.get(pool, uuid.UUID(scan_id), DEFAULT_TENANT)
        assert row is not None and row["status"] == "CANCELLED"

        ordinary = await wait_status(
            client, await submit(client, site.url("/pages/article.html")), "FULL_READY", "FAILED"
        )
        assert ordinary["status"] == "FULL_READY", ordinary


async def test_sigterm_during_a_long_parse_stops_the_worker_within_its_grace(
    settings: Settings, pool: asyncpg.Pool, redis: ArqRedis, hostile: Hostile, tmp_path: Path
) -> None:
    grace = 2
    metrics_port = free_port()
    env = process_env(
        DATABASE_URL=settings.require_database_url(),
        REDIS_URL=settings.require_redis_url(),
        PAGELENS_QUEUE=f"{settings.queue_name}:sigterm",
        PAGELENS_FETCH_ALLOW_HOSTS=hostile.allow,
        PAGELENS_SHUTDOWN_GRACE=str(grace),
        PAGELENS_PARSE_TIMEOUT="600",
        PAGELENS_WORKER_METRICS_PORT=str(metrics_port),
        OTEL_SDK_DISABLED="true",
    )
    proc = start_process("worker", [sys.executable, "-m", "arq", "worker.WorkerSettings"], env, tmp_path)
    try:
        await wait_worker_ready(proc, f"http://127.0.0.1:{metrics_port}/metrics", metrics_port)
        own = settings.with_(queue_name=env["PAGELENS_QUEUE"])
        async with serve_api(own) as base, httpx.AsyncClient(base_url=base, timeout=10) as api:
            scan_id = await submit(api, hostile.url(HOSTILE) + f"?k={uuid.uuid4()}")

            async def parsing() -> bool:
                return bool((await status(api, scan_id))["stage"] == "PARSE")

            await until(parsing, "the scan to reach PARSE", poll=POLL, polls=SCAN_POLLS)
            await asyncio.sleep(1.0)  # well into the parse, which would take minutes
            children = child_processes(proc)
            proc.process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.process.wait, grace + STOP_MARGIN)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the worker did not stop within its grace period\n{proc.tail()}")
            assert code == 0, proc.tail()
            assert not await wait_children_gone(children), "a child of the worker outlived it"
            row = await scans.get(pool, uuid.UUID(scan_id), DEFAULT_TENANT)
            assert row is not None
            # Handed back as every scan of a stopping worker is: not failed, its lease released.
            assert row["status"] == "RUNNING" and row["lease_until"] is None and row["error"] is None, dict(row)
            assert await redis.zscore(own.queue_name, scan_id) is not None, "the job is back on the queue"
    finally:
        if proc.process.poll() is None:
            proc.process.kill()
        await redis.delete(env["PAGELENS_QUEUE"])


async def test_the_parser_pool_kills_late_and_cancelled_tasks_and_leaves_no_children() -> None:
    html = PARSER_HOSTILE[HOSTILE].decode()
    parsers = ParsePool(processes=2)
    await parsers.start()
    try:
        first = parsers.pids
        assert len(first) == 2
        with pytest.raises(ScanError) as caught:
            await parsers.run(parse_html, html, "http://127.0.0.1/", deadline=0.5)
        assert caught.value.type is ErrorType.TOO_COMPLEX and not caught.value.retryable
        killed = set(first) - set(parsers.pids)
        assert len(killed) == 1 and all(gone(pid) for pid in killed), "the late child was killed, not the other"
        await until(lambda: len(parsers.pids) == 2, "a replacement child", poll=0.1, polls=KILL_POLLS)
        page = await parsers.run(parse_html, "<title>fine</title><p>ok</p>", "http://127.0.0.1/", deadline=60)
        assert page.title == "fine"

        task = asyncio.create_task(parsers.run(parse_html, html, "http://127.0.0.1/", deadline=600))
        await until(lambda: busy_child(parsers.pids) is not None, "a busy child", poll=0.1, polls=KILL_POLLS)
        busy = busy_child(parsers.pids)
        assert busy is not None
        task.cancel()
        await until(lambda: gone(busy), "the cancelled task's child to be killed", poll=0.1, polls=KILL_POLLS)
        assert task.cancelled()
    finally:
        pids = parsers.pids
        await parsers.close()
    assert pids and all(gone(pid) for pid in pids)
    assert parsers.pids == []
    with pytest.raises(ScanError, match="closed"):
        await parsers.run(parse_html, "<p>late</p>", "http://127.0.0.1/", deadline=60)


async def test_a_tenants_hostile_pages_hold_up_anothers_page_by_one_at_most() -> None:
    """Pages wait for the parser in turns per tenant: one tenant's queue of pages that each hold a
    child until its deadline does not make another tenant's page wait for all of them."""
    html = PARSER_HOSTILE[HOSTILE].decode()
    parsers = ParsePool(processes=1)
    await parsers.start()
    finished: list[str] = []

    async def parse(name: str, text: str, share: str) -> None:
        with contextlib.suppress(ScanError):  # the hostile ones: too_complex at the deadline
            await parsers.run(parse_html, text, "http://127.0.0.1/", deadline=0.5, share=share)
        finished.append(name)

    try:
        alpha = [parse(f"a{n}", html, "alpha") for n in (1, 2, 3)]
        await asyncio.gather(*alpha, parse("b1", "<title>fine</title><p>ok</p>", "beta"))
    finally:
        await parsers.close()
    assert finished == ["a1", "b1", "a2", "a3"]  # first come, first served: b1 last
