"""PostgreSQL and Redis servers private to one test, which the test may stop and start again.

Tests that take a backing service down never touch the shared servers: they start their own, the
way the embedded fallback does (app/cli/embedded.py), on a free port or socket under a temporary
directory, and stop them at the end.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.cli.embedded import EmbeddedRedis, port_answers, start_postgres, start_redis

with warnings.catch_warnings():
    # pgserver asks platformdirs for a runtime directory at import; without XDG_RUNTIME_DIR (CI,
    # containers) that warns, and the suite turns warnings into errors.
    warnings.simplefilter("ignore")
    from pgserver import _commands as pg_commands

START_TIMEOUT = 30.0


class PrivateRedis:
    """redis-server with AOF on (as in production), restartable on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: EmbeddedRedis = start_redis(data_dir)
        self.url = self._server.url
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        """SIGTERM: Redis writes its AOF and exits, closing every client connection."""
        self._server.stop()

    def start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while port_answers("127.0.0.1", self.port):  # the old process may still be closing
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} still busy")
            time.sleep(0.05)
        self._server = start_redis(self.data_dir, self.port)


class PrivatePostgres:
    """A PostgreSQL cluster from pgserver's binaries (unix socket only), restartable in place."""

    def __init__(self, data_dir: Path) -> None:
        self.dsn, self._handle = start_postgres(data_dir)
        self._pg_ctl: Any = pg_commands.pg_ctl  # type: ignore[attr-defined]  # made at import time
        info = self._handle.get_postmaster_info()
        self._pgdata: Path = self._handle.pgdata
        # pgserver runs the cluster as an unprivileged system user when we are root.
        self._user: str | None = self._handle.system_user
        self._options = ["-o", '-h ""', "-o", f"-k {info.socket_dir}", "-l", str(self._pgdata / "log")]

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, as in a real restart or failover."""
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._pgdata, user=self._user, timeout=60)

    def start(self) -> None:
        self._pg_ctl(["-w", *self._options, "start"], pgdata=self._pgdata, user=self._user, timeout=60)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        # pgserver would stop the server it started (by its original pid) once more: it is gone.
        self._handle._postmaster_info = None
        self._handle.cleanup()


@contextlib.contextmanager
def private_redis(data_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(data_dir)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under pytest's tmp_path: the cluster runs as another user, and a pytest session starting
    # meanwhile (several share /tmp/pytest-of-<user>) resets that tree to owner-only access.
    with tempfile.TemporaryDirectory(prefix="pagelens-pg-") as tmp:
        server = PrivatePostgres(Path(tmp) / "pg")
        try:
            yield server
        finally:
            server.close()
