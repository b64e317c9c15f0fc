"""A whole pagelens in subprocesses for the tests that drive it from outside (browser, CLI, e2e).

The API (uvicorn) and one worker (`python -m worker`, what `pagelens worker` runs) run exactly as
deployed, configured only through the environment, on a database and a queue of their own, exporting spans over
OTLP/HTTP to a real receiver (tests/otlp.py). Built on the process helpers of tests/processes.py;
`follow` polls a scan's status as such a test's client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

from app.cli.embedded import free_port
from app.core.models import TERMINAL
from tests.otlp import OTLPReceiver, serve_otlp
from tests.processes import (
    POLL,
    Proc,
    child_processes,
    describe_process,
    process_env,
    start_process,
    stop_process,
    wait_api_ready,
    wait_children_gone,
    wait_worker_ready,
)
from tests.site import Site

SCAN_POLLS = 450  # x POLL: a scan (first one pays for the first KeyBERT call) within ~90 s


@dataclass
class Stopped:
    """How the stack ended, filled in as its block exits: for the tests that check the shutdown."""

    worker_code: int | None = None
    worker_killed: bool = False  # it ignored SIGTERM and had to be killed
    api_code: int | None = None
    api_killed: bool = False
    children: list[psutil.Process] = field(default_factory=list)  # the worker's, listed while it ran
    left: list[str] = field(default_factory=list)  # those still running after it stopped (then killed)


@dataclass
class Live:
    receiver: OTLPReceiver
    api: Proc
    worker: Proc
    api_url: str
    worker_metrics_url: str
    queue: str
    env: dict[str, str]  # what the processes were started with (DATABASE_URL, REDIS_URL, ...)
    stopped: Stopped = field(default_factory=Stopped)


@contextlib.asynccontextmanager
async def live_stack(
    logs: Path, migrated_database: Callable[[], Awaitable[str]], redis_url: str, site: Site, **extra_env: str
) -> AsyncIterator[Live]:
    """API, worker and receiver until the block ends; then SIGTERM to both, and whatever the worker
    left running is killed. How each step went is in `Live.stopped` once the block has exited."""
    database_url = await migrated_database()
    queue = f"pagelens:live:{secrets.token_hex(4)}"
    api_port, metrics_port = free_port(), free_port()
    with serve_otlp() as receiver:
        env = process_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            PAGELENS_QUEUE=queue,
            PAGELENS_FETCH_ALLOW_HOSTS=f"127.0.0.1:{site.port}",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
            PAGELENS_WORKER_METRICS_PORT=str(metrics_port),
            **extra_env,
        )
        api_url = f"http://127.0.0.1:{api_port}"
        api_command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(api_port)]
        api = start_process("api", api_command, env, logs)
        worker = start_process("worker", [sys.executable, "-m", "worker"], env, logs)
        live = Live(receiver, api, worker, api_url, f"http://127.0.0.1:{metrics_port}/metrics", queue, env)
        children: list[psutil.Process] = []
        try:
            await wait_api_ready(api, api_url)
            await wait_worker_ready(worker, live.worker_metrics_url, metrics_port)
            children = child_processes(worker)
            yield live
        finally:
            # Listed again while the worker still runs (afterwards they would be orphans nobody can
            # name); the first list stands in if the worker died meanwhile.
            stopped = live.stopped
            stopped.children = child_processes(worker) or children
            stopped.worker_code, stopped.worker_killed = stop_process(worker)
            stopped.api_code, stopped.api_killed = stop_process(api)
            left = await wait_children_gone(stopped.children)
            stopped.left = [describe_process(p) for p in left]
            for p in left:  # ours: started by the worker we started
                with contextlib.suppress(psutil.Error):
                    p.kill()


async def follow(client: httpx.AsyncClient, status_url: str) -> tuple[dict[str, Any], int]:
    """Poll the status until the scan is done (bounded): (last status, how many polls were sent)."""
    status: dict[str, Any] = {}
    polls = 0
    for _ in range(SCAN_POLLS):
        response = await client.get(status_url)
        polls += 1
        assert response.status_code == 200, response.text
        status = response.json()
        if status["status"] in TERMINAL:
            break
        await asyncio.sleep(POLL)
    return status, polls
