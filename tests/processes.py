"""Pagelens's processes as the end-to-end tests run them: started from a clean environment, waited
for until they answer, stopped with SIGTERM within a bound, and their child processes accounted for.

Shared by tests/test_e2e_observability.py, tests/live.py, tests/test_prometheus_live.py and
tests/test_chaos.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from app.core.settings import ROOT

POLL = 0.2
API_START_POLLS = 300  # x POLL: up to ~60 s for imports on a busy box
WORKER_START_POLLS = 450  # x POLL: up to ~90 s, the worker loads the KeyBERT model before it is ready
METRICS_PORT_POLLS = 50  # x POLL: the worker's /metrics must answer within ~10 s of "worker ready"
CHILD_EXIT_POLLS = 100  # x POLL: ~20 s for a worker's children (its KeyBERT pool) to notice it is gone
STOP_TIMEOUT = 30.0


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def log(self) -> list[dict[str, Any]]:
        """The JSON lines of its stderr (arq prints a few plain lines before our logging is set up)."""
        entries = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def tail(self, lines: int = 40) -> str:
        text = self.stderr_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} stderr (last {lines} lines) ---\n" + "\n".join(text[-lines:])


def process_env(**overrides: str) -> dict[str, str]:
    """This environment without anything OTEL_* or PAGELENS_* from the caller's shell, plus `overrides`:
    the processes see exactly the setup the test gives them."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PAGELENS_"))}
    return {**inherited, **overrides}


def start_process(name: str, command: list[str], env: dict[str, str], logs: Path, *, cwd: Path = ROOT) -> Proc:
    stderr_path = logs / f"{name}.stderr"
    with stderr_path.open("wb") as stderr, (logs / f"{name}.stdout").open("wb") as stdout:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
    return Proc(name, process, stderr_path)


def stop_process(proc: Proc) -> tuple[int | None, bool]:
    """SIGTERM, a bounded wait, then SIGKILL: (return code, whether it had to be killed)."""
    if proc.process.poll() is not None:
        return proc.process.returncode, False
    proc.process.send_signal(signal.SIGTERM)
    try:
        return proc.process.wait(STOP_TIMEOUT), False
    except subprocess.TimeoutExpired:
        proc.process.kill()
        return proc.process.wait(10), True


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def child_processes(proc: Proc) -> list[psutil.Process]:
    if proc.process.poll() is not None:
        return []
    try:
        children: list[psutil.Process] = psutil.Process(proc.process.pid).children(recursive=True)
    except psutil.Error:
        return []
    return children


def describe_process(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:200]}"
    except psutil.Error:
        return str(p.pid)


async def wait_children_gone(children: list[psutil.Process], polls: int = CHILD_EXIT_POLLS) -> list[psutil.Process]:
    """Until none of `children` runs (bounded: `polls` x POLL): those still running then."""
    alive = still_running(children)
    for _ in range(polls):
        if not alive:
            break
        await asyncio.sleep(POLL)
        alive = still_running(alive)
    return alive


async def wait_for_200(proc: Proc, url: str, polls: int, *, exited: str, timed_out: str, poll: float = POLL) -> None:
    """Poll `url` until it answers 200 (bounded: `polls` x `poll` s); fail at once if `proc` exits.

    The failures say `exited` with the exit code, or `timed_out` with the last answer; both with
    the tail of the process's stderr."""
    last = "no answer"
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(polls):
            if proc.process.poll() is not None:
                pytest.fail(f"{exited} ({proc.process.returncode})\n{proc.tail()}")
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = type(exc).__name__
            await asyncio.sleep(poll)
    pytest.fail(f"{timed_out} (last: {last})\n{proc.tail()}")


async def wait_api_ready(api: Proc, base: str) -> None:
    await wait_for_200(
        api,
        f"{base}/readyz",
        API_START_POLLS,
        exited="the API exited early",
        timed_out="the API's /readyz did not answer 200 within the bound",
    )


async def wait_worker_ready(worker: Proc, metrics_url: str, metrics_port: int) -> None:
    for _ in range(WORKER_START_POLLS):
        if worker.process.poll() is not None:
            pytest.fail(f"the worker exited early ({worker.process.returncode})\n{worker.tail()}")
        if any(e.get("message") == "worker ready" for e in worker.log()):
            break
        await asyncio.sleep(POLL)
    else:
        pytest.fail(f"the worker did not log 'worker ready' within the bound\n{worker.tail()}")
    await wait_for_200(
        worker,
        metrics_url,
        METRICS_PORT_POLLS,
        exited="the worker exited early",
        timed_out=(
            f"the worker is ready but its /metrics (PAGELENS_WORKER_METRICS_PORT={metrics_port}) did not answer "
            "200 within the bound"
        ),
    )
