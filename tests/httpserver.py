"""A threaded HTTP server on loopback that stops cleanly: the base of the suite's test servers.

Handler threads are non-daemon so server_close() joins them, and stop() wakes handlers blocked on
kept-alive or slow connections, so no thread outlives a test (pytest runs with warnings as errors).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would also look up our FQDN (a DNS query); the address is all we need.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.socket.getsockname()[1]

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self.lock:
            if not add:
                self.connections.discard(conn)
                return
            self.connections.add(conn)
            late = self.stopping.is_set()
        if late:  # accepted while stop() was closing the others: it has missed this one
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close_connections(self) -> None:
        with self.lock:
            self.stopping.set()
            open_connections = list(self.connections)
        for conn in open_connections:  # wakes handlers blocked reading a kept-alive connection
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.close_connections()
        self.server_close()  # joins the handler threads

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-response (timeouts, size caps) are the point of several tests.
        pass


class TrackedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def running(server: LoopbackServer, name: str) -> Iterator[None]:
    """Serve in a background thread for the duration of the block, then stop and join it (bounded,
    and checked: a server thread still running afterwards fails the test)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name)
    thread.start()
    try:
        yield
    finally:
        server.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), f"the {name} server thread did not stop"
