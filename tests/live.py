"""A whole pagelens in subprocesses for the tests that drive it from outside (browser, CLI).

The API (uvicorn) and one worker (`arq worker.WorkerSettings`) run exactly as deployed, configured
only through the environment, on a database and a queue of their own, exporting spans over
OTLP/HTTP to a real receiver (tests/otlp.py). Built on the process helpers of the end-to-end
observability test.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from app.embedded import free_port
from tests.otlp import OTLPReceiver, serve_otlp
from tests.site import Site
from tests.test_e2e_observability import (
    Proc,
    _children,
    _env,
    _start,
    _stop,
    _wait_api_ready,
    _wait_children_gone,
    _wait_worker_ready,
)


@dataclass
class Live:
    receiver: OTLPReceiver
    api: Proc
    worker: Proc
    api_url: str
    queue: str
    env: dict[str, str]  # what the processes were started with (DATABASE_URL, REDIS_URL, ...)


@contextlib.asynccontextmanager
async def live_stack(
    logs: Path, migrated_database: Callable[[], Awaitable[str]], redis_url: str, site: Site, **extra_env: str
) -> AsyncIterator[Live]:
    """API, worker and receiver until the block ends; then SIGTERM, and nothing may be left running."""
    database_url = await migrated_database()
    queue = f"pagelens:live:{secrets.token_hex(4)}"
    api_port, metrics_port = free_port(), free_port()
    with serve_otlp() as receiver:
        env = _env(
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
        api = _start("api", api_command, env, logs)
        worker = _start("worker", [sys.executable, "-m", "arq", "worker.WorkerSettings"], env, logs)
        children: list[psutil.Process] = []
        try:
            await _wait_api_ready(api, api_url)
            await _wait_worker_ready(worker, f"http://127.0.0.1:{metrics_port}/metrics", metrics_port)
            children = _children(worker)
            yield Live(receiver, api, worker, api_url, queue, env)
        finally:
            children = children or _children(worker)
            _stop(worker)
            _stop(api)
            for p in await _wait_children_gone(children):  # ours: started by the worker we started
                with contextlib.suppress(psutil.Error):
                    p.kill()
