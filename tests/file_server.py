"""A local HTTP file server for URL-source tests: ETag, Last-Modified, 304, redirects, and
slow, lying or endless bodies, with every request it received recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    """What one path answers. ``length`` overrides the announced Content-Length (None:
    the true one; -1: none, the body ends when the connection closes); ``repeat`` sends the
    body that many times; ``delay`` pauses before each block of ``block`` bytes."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    location: str | None = None
    length: int | None = None
    repeat: int = 1
    delay: float = 0.0
    block: int = 1 << 16
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    peer: tuple[str, int]  # the client's address: one per connection


class FileServer:
    """A threaded HTTP server on a loopback port; ``routes`` maps a path to its Route."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        self.sent: dict[str, int] = {}  # body bytes written per path
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self._host = host
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.005},
                         daemon=True).start()

    def url(self, path: str) -> str:
        """The http:// URL of ``path`` on this server."""
        return f"http://{self._host}:{self._server.server_port}{path}"

    def add(self, path: str, body: bytes = b"", **route: Any) -> str:
        """Serve ``path``; return its URL."""
        self.routes[path] = Route(body, **route)
        return self.url(path)

    def count(self, path: str) -> int:
        """How many requests asked for ``path`` (the query left aside)."""
        return sum(1 for hit in self.hits if hit.path.split("?")[0] == path)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet."""

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            server.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()},
                                   self.client_address))
            route = server.routes.get(path, Route(b"not found", status=404))
            if self._not_modified(route):
                self._head(304, route, 0)
                return
            if route.location is not None:
                self._head(route.status if route.status != 200 else 302, route, 0)
                return
            total = len(route.body) * route.repeat
            self._head(route.status, route, total if route.length is None else route.length)
            try:
                for block in _blocks(route):
                    if route.delay:
                        time.sleep(route.delay)
                    self.wfile.write(block)
                    server.sent[path] = server.sent.get(path, 0) + len(block)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what the size-limit tests want
            self.close_connection = route.length is not None

        def _not_modified(self, route: Route) -> bool:
            tag = self.headers.get("If-None-Match")
            since = self.headers.get("If-Modified-Since")
            return bool((tag and tag == route.etag) or (not tag and since and since == route.last_modified))

        def _head(self, status: int, route: Route, length: int) -> None:
            self.send_response(status)
            if length >= 0:
                self.send_header("Content-Length", str(length))
            else:
                self.send_header("Connection", "close")
            for name, value in (("ETag", route.etag), ("Last-Modified", route.last_modified),
                                ("Location", route.location), *route.headers.items()):
                if value is not None:
                    self.send_header(name, value)
            self.end_headers()

    return Handler


def _blocks(route: Route) -> Iterator[bytes]:
    for _ in range(route.repeat):
        for start in range(0, len(route.body), route.block):
            yield route.body[start:start + route.block]
