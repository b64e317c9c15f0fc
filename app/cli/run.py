"""`pagelens run`: everything on one machine, supervised.

Backing servers (embedded when none are configured, app/cli/embedded.py), migrations, then the API
and `--workers` workers as child processes. A child that exits is started again after a backoff
(0.5 s, doubling to 30 s), said on stdout and in a JSON log line on stderr; the backing servers
stay up meanwhile. It all stops on Ctrl-C or SIGTERM, or when one child keeps failing (a crash
loop: `CRASH_LOOP_EXITS` exits within `CRASH_LOOP_WINDOW` seconds), which is named before
`pagelens run` exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.cli.embedded import backing_servers
from app.core import migrate
from app.core.settings import Settings, child_env
from observability.logs import setup_logging

logger = logging.getLogger("pagelens.run")

API_HOST, API_PORT = "127.0.0.1", 8000
RESTART_DELAY, MAX_RESTART_DELAY = 0.5, 30.0  # seconds: the first restart's wait, doubling up to the cap
CRASH_LOOP_EXITS, CRASH_LOOP_WINDOW = 5, 60.0  # this many exits of one child within this many seconds
POLL = 0.2
STOP_MARGIN = 20.0  # seconds beyond the worker's shutdown grace before stragglers are killed
STOPPED, CRASH_LOOP = 0, 1


def worker_command() -> list[str]:
    """How a worker process is started: the one place this command line is written (`pagelens
    worker` execs the same)."""
    return [sys.executable, "-m", "worker"]


def api_command(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", API_HOST, "--port", str(port), "--no-access-log"]


def port_number(text: str) -> int:
    return _bounded(text, 1, 65535)


def worker_count(text: str) -> int:
    return _bounded(text, 1, 64)


def _bounded(text: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise argparse.ArgumentTypeError(f"expected a number from {low} to {high}, got {text!r}")
    return int(text)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    """One supervised process: how to start it, and the times it exited lately."""

    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    exits: list[float] = field(default_factory=list)
    restart_at: float | None = None

    def start(self) -> None:
        # A process group of its own: Ctrl-C in the terminal reaches `pagelens run` only, which then
        # stops the children in order (SIGTERM, so workers hand their scans back).
        self.process = subprocess.Popen(self.command, env=self.env, process_group=0)
        self.restart_at = None


class CrashLoop(Exception):
    def __init__(self, child: Child, how: str) -> None:
        super().__init__(
            f"{child.name} kept failing: it exited {len(child.exits)} times within {CRASH_LOOP_WINDOW:g} s "
            f"(the last time: {how}); stopping"
        )
        self.child = child


class Supervisor:
    """Starts the children, restarts those that exit, and stops them all."""

    def __init__(self, children: list[Child], say: Callable[[str], None] | None = None) -> None:
        self.children = children
        self.say = say or (lambda line: print(line, flush=True))

    def start(self) -> None:
        for child in self.children:
            child.start()
            self._started(child, "started")

    def check(self, now: float) -> None:
        """Restart what is due; note each child that exited since the last check. Raises CrashLoop."""
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
                    self._started(child, "restarted")
                continue
            assert child.process is not None
            code = child.process.poll()
            if code is not None:
                self._exited(child, code, now)

    def _started(self, child: Child, what: str) -> None:
        assert child.process is not None
        pid = child.process.pid
        if what == "restarted":
            self.say(f"pagelens: {child.name} restarted (pid {pid})")
        logger.info("%s %s", child.name, what, extra={"child": child.name, "pid": pid, "restarts": len(child.exits)})

    def _exited(self, child: Child, code: int, now: float) -> None:
        child.exits = [t for t in child.exits if now - t < CRASH_LOOP_WINDOW] + [now]
        how = describe_exit(code)
        extra = {"child": child.name, "exit_code": code, "restarts": len(child.exits)}
        if len(child.exits) >= CRASH_LOOP_EXITS:
            logger.error("%s kept failing; stopping", child.name, extra=extra)
            raise CrashLoop(child, how)
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (len(child.exits) - 1))
        child.restart_at = now + delay
        child.process = None
        self.say(f"pagelens: {child.name} exited ({how}); restarting it in {delay:g} s")
        logger.warning("%s exited (%s); restarting", child.name, how, extra={**extra, "backoff_seconds": delay})

    def stop(self, grace: float) -> None:
        """SIGTERM to every child, a wait of up to `grace` seconds in all, then SIGKILL."""
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def children(settings: Settings, env: dict[str, str], port: int, workers: int) -> list[Child]:
    found = [Child("api", api_command(port), env)]
    for i in range(1, workers + 1):
        # Each worker serves /metrics on a port of its own (0 stays 0: any free one).
        metrics_port = settings.worker_metrics_port + i - 1 if settings.worker_metrics_port else 0
        found.append(Child(f"worker-{i}", worker_command(), {**env, "PAGELENS_WORKER_METRICS_PORT": str(metrics_port)}))
    return found


def banner(settings: Settings, port: int, workers: int, started: list[str], applied: int, env_file: Path) -> str:
    base = f"http://{API_HOST}:{port}"
    embedded = f" (embedded: {', '.join(started)})" if started else ""
    metrics = (
        f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"
        + (f" … :{settings.worker_metrics_port + workers - 1}" if workers > 1 else "")
        if settings.worker_metrics_port
        else "on free ports"
    )
    return f"""
pagelens is starting{embedded}; {applied} migration(s) applied.
  web page      {base}/
  API           {base}/api/v1/scan-jobs   (OpenAPI: /openapi.json)
  API metrics   {base}/metrics
  workers       {workers}, metrics {metrics}
  servers       {env_file}
Use the pagelens command with this server:
  export PAGELENS_API_URL={base}
  pagelens scan https://example.com/ --wait
A crashed API or worker is restarted; Ctrl-C stops everything.
"""


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Backing servers (embedded when not configured), migrations, the API and the workers, until
    Ctrl-C, SIGTERM or a crash loop."""
    setup_logging(settings.log_level)
    data_dir: Path = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with backing_servers(data_dir, settings.database_url, settings.redis_url, probe_local=False) as (
        database_url,
        redis_url,
        started,
    ):
        env_file = data_dir / "env"
        env_file.write_text(f"DATABASE_URL={database_url}\nREDIS_URL={redis_url}\n")
        applied = asyncio.run(migrate.apply(database_url, settings.migrations_dir))
        env = child_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
        supervisor = Supervisor(children(settings, env, args.port, args.workers))
        stop = threading.Event()
        # A shell starts background jobs with SIGINT ignored; `kill -INT` should stop them too.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        supervisor.start()
        print(banner(settings, args.port, args.workers, started, len(applied), env_file), flush=True)
        try:
            while not stop.wait(POLL):
                supervisor.check(time.monotonic())
            print("pagelens: stopping", flush=True)
            return STOPPED
        except CrashLoop as exc:
            print(f"pagelens: {exc}", file=sys.stderr, flush=True)
            return CRASH_LOOP
        finally:
            # Longer than the worker's shutdown grace, so running scans can finish or be handed back.
            supervisor.stop(settings.shutdown_grace + STOP_MARGIN)
