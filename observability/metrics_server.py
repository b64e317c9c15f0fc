"""The worker's own GET /metrics: a minimal HTTP/1.1 server on asyncio streams.

The worker is no web app, and uvicorn's `serve()` installs signal handlers that would take SIGTERM
away from arq, so this is a few dozen lines of asyncio instead: one request per connection
(`Connection: close`), bounded request line and headers, and a deadline for reading them, so a
slow or silent client is dropped instead of holding a connection open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from observability import metrics

logger = logging.getLogger("pagelens.metrics")

MAX_LINE = 8 * 1024  # request line or one header line
MAX_HEAD = 16 * 1024  # request line and all headers together
READ_TIMEOUT = 5.0
CLOSE_TIMEOUT = 1.0
ALLOWED = ("GET", "HEAD")
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


def observe_pool(pool: asyncpg.Pool) -> None:
    """Set pagelens_db_pool_connections from the pool, right before a scrape reads it."""
    metrics.db_pool_connections.set({"state": "open"}, pool.get_size())
    metrics.db_pool_connections.set({"state": "idle"}, pool.get_idle_size())


class _Reject(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class MetricsServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        before_render: Callable[[], object] | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.before_render = before_render
        self.read_timeout = read_timeout
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[object]] = set()

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0); None when not listening."""
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> bool:
        """Listen; False (and a warning) when the address is unavailable, e.g. a second worker on one host."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.requested_port, limit=MAX_LINE)
        except OSError as exc:
            logger.warning(
                "worker /metrics disabled: cannot listen on %s:%d (%s); "
                "set PAGELENS_WORKER_METRICS_PORT to a free port, or 0 for any",
                self.host,
                self.requested_port,
                exc.strerror or exc,
            )
            return False
        logger.info("worker metrics on http://%s:%d/metrics", self.host, self.port)
        return True

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for open connections: end them ourselves.
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        sent = False
        try:
            response = await self._respond(reader)
            if response is not None:
                writer.write(response)
                async with asyncio.timeout(self.read_timeout):  # a client that will not read is dropped too
                    await writer.drain()
                sent = True
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            self._clients.discard(task)
            await _close(writer, graceful=sent)

    async def _respond(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.read_timeout):
                method, target, accept = await _read_head(reader)
        except _Reject as reject:
            return _response(reject.status)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None  # silent, slow, or closed before finishing its request
        if target.split("?", 1)[0] != "/metrics":
            return _response(404)
        if method not in ALLOWED:
            return _response(405, {"Allow": ", ".join(ALLOWED)})
        body, headers = self._render(accept)
        return _response(200, headers, body, head=method == "HEAD")

    def _render(self, accept: list[str]) -> tuple[bytes, dict[str, str]]:
        if self.before_render is not None:
            try:
                self.before_render()
            except Exception:
                # A broken gauge refresh must not cost the scrape: the other metrics still matter.
                logger.warning("refreshing gauges before a scrape failed", exc_info=True)
        return metrics.exposition(accept)


async def _read_line(reader: asyncio.StreamReader, too_long: int) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _Reject(too_long) from None


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, list[str]]:
    """(method, target, Accept values) of one request; the body, if any, is never read."""
    line = await _read_line(reader, 414)
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Reject(400)
    method, target, _ = parts
    size, accept = len(line), list[str]()
    while True:
        line = await _read_line(reader, 431)
        size += len(line)
        if size > MAX_HEAD:
            raise _Reject(431)
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return method, target, accept
        name, colon, value = text.partition(":")
        if not colon:
            raise _Reject(400)
        if name.strip().lower() == "accept":
            accept.append(value.strip())


def _response(
    status: int, headers: dict[str, str] | None = None, body: bytes | None = None, *, head: bool = False
) -> bytes:
    if body is None:
        body = f"{REASONS[status].lower()}\n".encode()
        headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
    lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


async def _close(writer: asyncio.StreamWriter, *, graceful: bool) -> None:
    if not graceful:
        writer.transport.abort()  # nothing left worth flushing to this client
        return
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()


async def start_metrics_server(
    host: str, port: int, *, before_render: Callable[[], object] | None = None
) -> MetricsServer | None:
    """The worker's /metrics on host:port; None when the port is unavailable."""
    server = MetricsServer(host, port, before_render=before_render)
    return server if await server.start() else None
