"""A loopback server of fixed files that counts the requests for each path."""

from __future__ import annotations

import threading

from tests.httpserver import LoopbackServer, TrackedHandler

Route = tuple[int, str, bytes]


class FilesServer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(FilesHandler)
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        self.count_lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class FilesHandler(TrackedHandler):
    server: FilesServer

    def do_GET(self) -> None:
        with self.server.count_lock:
            self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        status, media, body = self.server.routes.get(self.path, (404, "text/plain", b"not found"))
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", body.decode())
            body = b""
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
