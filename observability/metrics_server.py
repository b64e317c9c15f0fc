"""GET /metrics on a listener of its own (the worker's, and the API's when PAGELENS_API_METRICS_PORT is set).

An aiohttp application run by an `AppRunner` inside the caller's event loop: unlike uvicorn's
`serve()`, it installs no signal handlers (SIGTERM stays arq's), it bounds the request head (line
and field sizes, header count), and its keep-alive timer starts at connect, so a client that never
completes a request is dropped instead of holding a connection open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from observability import metrics

logger = logging.getLogger("pagelens.metrics")

MAX_LINE = 8 * 1024  # request line, or one header field
MAX_HEADERS = 32
READ_TIMEOUT = 5.0  # to send a complete request, or to take the answer
SHUTDOWN_TIMEOUT = 1.0


class _DropClientErrors(logging.Filter):
    """aiohttp logs each malformed request at ERROR with a traceback; that is the client's fault, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


http_logger = logging.getLogger("pagelens.metrics.http")
http_logger.addFilter(_DropClientErrors())


def observe_pool(pool: asyncpg.Pool) -> None:
    """Set pagelens_db_pool_connections from the pool, right before a scrape reads it."""
    metrics.db_pool_connections.set({"state": "open"}, pool.get_size())
    metrics.db_pool_connections.set({"state": "idle"}, pool.get_idle_size())


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
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0); None when not listening."""
        addresses = self._runner.addresses if self._runner is not None else []
        return int(addresses[0][1]) if addresses else None

    async def start(self) -> bool:
        """Listen; False (and a warning) when the address is unavailable, e.g. a second worker on one host."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)  # and HEAD; other methods get 405, other paths 404
        runner = web.AppRunner(
            app,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=None,  # a scrape every few seconds is not worth a log line
            logger=http_logger,
            keepalive_timeout=self.read_timeout,
            lingering_time=self.read_timeout,  # an unwanted request body is drained for this long at most
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.requested_port).start()
        except OSError as exc:
            await runner.cleanup()
            logger.warning(
                "metrics listener disabled: cannot listen on %s:%d (%s); "
                "set PAGELENS_WORKER_METRICS_PORT to a free port, or 0 for any",
                self.host,
                self.requested_port,
                exc.strerror or exc,
            )
            return False
        self._runner = runner
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return True

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.before_render is not None:
            try:
                self.before_render()
            except Exception:
                # A broken gauge refresh must not cost the scrape: the other metrics still matter.
                logger.warning("refreshing gauges before a scrape failed", exc_info=True)
        body, headers = metrics.exposition(request.headers.getall("Accept", []))
        response = web.Response(body=body, headers=headers)
        response.force_close()  # one scrape per connection: nothing stays open between scrapes
        return response


async def start_metrics_server(
    host: str, port: int, *, before_render: Callable[[], object] | None = None
) -> MetricsServer | None:
    """/metrics on host:port; None when the port is unavailable."""
    server = MetricsServer(host, port, before_render=before_render)
    return server if await server.start() else None
