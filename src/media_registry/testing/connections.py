"""The fake Graph API's threaded HTTP server, which can hang up every connection it holds."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any


class Server(ThreadingHTTPServer):
    """One daemon thread per connection; :meth:`close_connections` ends them all, and no
    request is answered once it has run."""

    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stopped = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a new connection in a thread of its own, unless stopped."""
        with self._connections_lock:
            if self.stopped:
                self.shutdown_request(request)
                return
            self._connections.add(request)
        threading.Thread(target=self.process_request_thread, args=(request, client_address),
                         daemon=True, name="FakeGraphAPI-connection").start()

    def shutdown_request(self, request: Any) -> None:
        """Forget and close a connection whose thread has ended."""
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Stop answering, and hang up every open connection: a thread waiting for the next
        request of a kept-alive connection sees the end of it and returns."""
        with self._connections_lock:
            self.stopped = True
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (timeouts, resets under test, a stop) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)
