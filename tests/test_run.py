"""`make run`'s command end to end: servers, migrations, the API and workers under a supervisor that
restarts whatever crashes, until Ctrl-C, or until one child keeps crashing."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.embedded import free_port, port_answers
from app.core.settings import ROOT
from tests.hostile import Hostile
from tests.processes import POLL, Proc, process_env, start_process, wait_api_ready
from tests.site import Site

pytestmark = pytest.mark.slow

IN_FLIGHT = 60
SLOW_PAGES = 2  # pages in flight for sure when the worker is killed
SLOW_FIRST_MS = 20_000  # how long they take the first time: far longer than the test needs to kill
START_POLLS = 900  # x POLL: up to ~180 s for first-time initdb and the worker's model load
EVENT_POLLS = 600  # x POLL: a restart, or the worker being ready again after one
DONE_POLLS = 1500  # x POLL: ~300 s for all the scans, a worker restart and leases running out included
EXIT_TIMEOUT = 120.0  # s: `pagelens run` stopping everything (the worker drains first)
WORKER_TIMEOUT = "30"  # s, PAGELENS_JOB_TIMEOUT: scans held by a killed worker are free again soon after


def open_to_everyone(path: Path) -> None:
    # The data directory must be reachable by the unprivileged user pgserver runs PostgreSQL as under root.
    for parent in (path, *path.parents):
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)


class Run:
    """A `pagelens run` process, its output in files, and what its supervisor logged."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.base = f"http://127.0.0.1:{port}"

    @property
    def stdout(self) -> str:
        return self.proc.stderr_path.with_suffix(".stdout").read_text(errors="replace")

    def events(self, child: str | None = None) -> list[dict[str, Any]]:
        """The supervisor's JSON log lines (the children log to the same stderr)."""
        return [
            e
            for e in self.proc.log()
            if e.get("logger") == "pagelens.run" and (child is None or e.get("child") == child)
        ]

    def pid(self, child: str) -> int:
        started = [e for e in self.events(child) if "pid" in e]
        assert started, f"no start of {child} logged\n{self.proc.tail()}"
        pid: int = started[-1]["pid"]
        return pid

    async def until(self, what: str, check: Callable[[], bool], polls: int = EVENT_POLLS) -> None:
        for _ in range(polls):
            if check():
                return
            assert self.proc.process.poll() is None, f"pagelens run exited while waiting for {what}\n{self.proc.tail()}"
            await asyncio.sleep(POLL)
        pytest.fail(f"timed out waiting for {what}\n{self.stdout[-3000:]}\n{self.proc.tail()}")

    def workers_ready(self) -> int:
        return sum(1 for e in self.proc.log() if e.get("message") == "worker ready")

    async def restarted(self, child: str, pid: int) -> None:
        """After `pid` of `child` is killed: its exit and the restart are said and logged."""
        await self.until(f"{child} to be restarted", lambda: self.pid(child) != pid)
        exited = [e for e in self.events(child) if e.get("exit_code") == -signal.SIGKILL]
        assert exited and exited[-1]["level"] == "warning" and exited[-1]["backoff_seconds"] > 0, self.events(child)
        assert f"pagelens: {child} exited (killed by SIGKILL); restarting it in" in self.stdout
        assert f"pagelens: {child} restarted (pid {self.pid(child)})" in self.stdout

    def stop(self) -> int:
        """Ctrl-C, then its exit code."""
        if self.proc.process.poll() is None:
            self.proc.process.send_signal(signal.SIGINT)
        try:
            return self.proc.process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.process.kill()
            self.proc.process.wait()
            pytest.fail(f"pagelens run did not stop on Ctrl-C\n{self.proc.tail()}")


@asynccontextmanager
async def pagelens_run(logs: Path, env: dict[str, str], *args: str, cwd: Path = ROOT) -> AsyncIterator[Run]:
    port = free_port()
    command = [sys.executable, "-m", "app.cli.main", "run", "--port", str(port), *args]
    # PYTHONPATH, if the suite runs with one, keeps the children on the code under test whatever
    # their working directory.
    run = Run(start_process("run", command, process_env(PYTHONPATH=str(ROOT), **env), logs, cwd=cwd), port)
    try:
        yield run
    finally:
        if run.proc.process.poll() is None:
            run.stop()
        print(run.stdout[-3000:], run.proc.tail(60))  # pytest shows it when the test fails


async def status_counts(client: httpx.AsyncClient) -> dict[str, int]:
    items = (await client.get("/api/v1/scan-jobs", params={"limit": "100"})).json()["items"]
    counts: dict[str, int] = {}
    for item in items:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    return counts


async def test_embedded_servers_stay_up_while_the_api_is_restarted(tmp_path: Path, site: Site) -> None:
    data = tmp_path / "data"  # made by `pagelens run`
    open_to_everyone(tmp_path)
    env = {
        "PAGELENS_DATA_DIR": str(data),
        "PAGELENS_FETCH_ALLOW_HOSTS": f"127.0.0.1:{site.port}",
        "PAGELENS_QUEUE": "pagelens:run-test",
        "PAGELENS_WORKER_METRICS_PORT": "0",
    }
    async with pagelens_run(tmp_path, env) as run, httpx.AsyncClient(base_url=run.base, timeout=5) as client:
        await run.until("the API", lambda: port_answers("127.0.0.1", run.port), START_POLLS)
        await wait_api_ready(run.proc, run.base)
        assert "pagelens is starting (embedded: postgres, redis)" in run.stdout
        assert f"export PAGELENS_API_URL={run.base}" in run.stdout
        env_file = (data / "env").read_text()
        assert "DATABASE_URL=postgresql://" in env_file and "REDIS_URL=redis://127.0.0.1:" in env_file
        redis_port = int(env_file.split("REDIS_URL=redis://127.0.0.1:")[1].split("/")[0])

        api = run.pid("api")
        os.kill(api, signal.SIGKILL)
        await run.restarted("api", api)
        await wait_api_ready(run.proc, run.base)
        assert port_answers("127.0.0.1", redis_port), "the embedded Redis stayed up"

        created = await client.post("/api/v1/scan-jobs", json={"url": site.url("/pages/article.html")})
        assert created.status_code == 202, created.text
        status_url = created.json()["statusUrl"]
        status: dict[str, Any] = {}
        for _ in range(START_POLLS):
            status = (await client.get(status_url)).json()
            if status["status"] in {"FULL_READY", "FAILED"}:
                break
            await asyncio.sleep(POLL)
        assert status["status"] == "FULL_READY", status
        assert run.stop() == 0
    assert "pagelens: stopping" in run.stdout
    assert not port_answers("127.0.0.1", run.port), "the API stopped"
    assert not port_answers("127.0.0.1", redis_port), "the embedded Redis stopped"


async def test_a_killed_worker_is_restarted_and_every_scan_finishes(
    tmp_path: Path, migrated_database: Callable[[], Awaitable[str]], redis_url: str, hostile: Hostile
) -> None:
    env = {
        "DATABASE_URL": await migrated_database(),
        "REDIS_URL": redis_url,
        "PAGELENS_QUEUE": f"pagelens:run-kill:{os.getpid()}",
        "PAGELENS_JOB_TIMEOUT": WORKER_TIMEOUT,
        "PAGELENS_WORKER_METRICS_PORT": "0",
        "PAGELENS_DATA_DIR": str(tmp_path / "data"),
        "PAGELENS_FETCH_ALLOW_HOSTS": hostile.allow,
    }
    async with (
        pagelens_run(tmp_path, env, "--workers", "1") as run,
        httpx.AsyncClient(base_url=run.base, timeout=10) as client,
    ):
        await run.until("the worker", lambda: run.workers_ready() == 1, START_POLLS)
        await wait_api_ready(run.proc, run.base)
        # Pages that answer only after a long wait the first time they are asked for: their scans are
        # certainly in flight, held by the worker, when it is killed. Asked again, they answer at once.
        slow = [f"/slow-once?ms={SLOW_FIRST_MS}&n={n}" for n in range(SLOW_PAGES)]
        held = []
        for path in slow:
            created = await client.post("/api/v1/scan-jobs", json={"url": hostile.url(path)})
            assert created.status_code == 202, created.text
            held.append(created.json()["scanId"])
        texts = [f"Note {i}: compost heaps need air, water and {i} kinds of green waste." for i in range(IN_FLIGHT)]
        for text in texts:
            created = await client.post("/api/v1/documents", json={"text": text})
            assert created.status_code == 202, created.text

        await run.until("the slow pages to be asked for", lambda: all(hostile.hits(p) == 1 for p in slow), EVENT_POLLS)
        worker = run.pid("worker-1")
        os.kill(worker, signal.SIGKILL)  # with those scans in flight: claimed, not finished
        await run.restarted("worker-1", worker)

        total = IN_FLIGHT + SLOW_PAGES
        counts: dict[str, int] = {}
        for _ in range(DONE_POLLS):
            counts = await status_counts(client)
            if counts.get("FULL_READY", 0) == total:
                break
            assert run.proc.process.poll() is None, run.proc.tail()
            await asyncio.sleep(POLL)
        assert counts == {"FULL_READY": total}, counts
        for scan_id in held:
            status = (await client.get(f"/api/v1/scan-jobs/{scan_id}/status")).json()
            assert status["attempts"] > 1, ("a scan held by the killed worker ran again", status)
        assert all(hostile.hits(p) == 2 for p in slow), "each held page was fetched once more, not lost"
        # No manual step: the supervisor started the worker again (it may still be loading the model).
        await run.until("the restarted worker", lambda: run.workers_ready() == 2, START_POLLS)
        assert run.stop() == 0


async def test_a_child_that_keeps_crashing_stops_everything(
    tmp_path: Path, migrated_database: Callable[[], Awaitable[str]], redis_url: str
) -> None:
    # A worker that exits at once: the working directory comes first on a child's sys.path, so this
    # `worker` package stands in for the real one (the API never imports it).
    broken = tmp_path / "cwd"
    (broken / "worker").mkdir(parents=True)
    (broken / "worker" / "__init__.py").write_text("raise SystemExit(3)\n")
    env = {
        "DATABASE_URL": await migrated_database(),
        "REDIS_URL": redis_url,
        "PAGELENS_QUEUE": f"pagelens:run-loop:{os.getpid()}",
        "PAGELENS_WORKER_METRICS_PORT": "0",
        "PAGELENS_DATA_DIR": str(tmp_path / "data"),
    }
    async with pagelens_run(tmp_path, env, "--workers", "1", cwd=broken) as run:
        try:
            code = await asyncio.to_thread(run.proc.process.wait, EXIT_TIMEOUT + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no crash loop detected\n{run.stdout[-3000:]}")
        assert code == 1, run.proc.tail()
        said = run.proc.stderr_path.read_text(errors="replace")
        assert "pagelens: worker-1 kept failing: it exited 5 times within 60 s (the last time: exit code 3)" in said
        assert "pagelens: worker-1 exited (exit code 3); restarting it in 0.5 s" in run.stdout
        loop = [e for e in run.events("worker-1") if e["level"] == "error"]
        assert loop and loop[-1]["exit_code"] == 3 and loop[-1]["restarts"] == 5, run.events()
        assert not run.events("api") or all(e["level"] == "info" for e in run.events("api")), "the API never failed"
    assert not port_answers("127.0.0.1", run.port), "the API was stopped too"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_port_and_workers_through() -> None:
    def command(*overrides: str) -> str:
        # --no-print-directory: under `make test` this make is nested and would announce its directory.
        dry = subprocess.run(
            ["make", "--no-print-directory", "-n", "run", *overrides],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert dry.returncode == 0, dry.stderr
        return dry.stdout.strip().splitlines()[-1]

    assert command("PORT=8123", "WORKERS=3").endswith("/pagelens run --port 8123 --workers 3")
    assert command().endswith("/pagelens run --port 8000 --workers 1")
