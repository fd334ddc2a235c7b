"""`serve`'s connections, held to what the process can afford: at most ``--limit-concurrency``
of them (sized by default to the file descriptors it may open), none kept open without a
request, and running out of file descriptors said once a minute rather than per accept.
Needs uvicorn (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import socket
import time
from typing import Any, TypeGuard

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

log = logging.getLogger("media_registry.service")

MAX_DEFAULT_LIMIT = 256
# Kept aside for Python, the listener, the registry's files and the Graph API's connections;
# the PostgreSQL pools (two of MEDIA_REGISTRY_PG_POOL_SIZE) come on top.
RESERVED_FDS = 64
# A connection's socket, its body spooled to a temporary file, the upload's own connection.
FDS_PER_CONNECTION = 3
SAY_AGAIN_AFTER = 60.0


def default_limit(pg_pool_size: int) -> int:
    """The default ``--limit-concurrency``: 256, or fewer when RLIMIT_NOFILE cannot hold them."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_LIMIT
    spare = soft - RESERVED_FDS - 2 * pg_pool_size
    return max(1, min(MAX_DEFAULT_LIMIT, spare // FDS_PER_CONNECTION))


class Throttled:
    """A warning said at most once a minute: a flood must not flood the log too."""

    def __init__(self) -> None:
        self._said_at: float | None = None

    def warn(self, message: str, *args: object) -> None:
        """Log ``message`` unless it was logged less than a minute ago."""
        now = time.monotonic()
        if self._said_at is None or now - self._said_at >= SAY_AGAIN_AFTER:
            self._said_at = now
            log.warning(message, *args)


def is_out_of_files(exc: object) -> TypeGuard[OSError]:
    """Whether ``exc`` says the process (or the system) has no file descriptor left."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


class OutOfFiles(Throttled):
    """Running out of file descriptors, said once a minute however often it happens. As the
    event loop's exception handler: asyncio reports every accept that finds none left (with a
    traceback, many times a second)."""

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not is_out_of_files(exc):
            loop.default_exception_handler(context)
            return
        self.say(exc)

    def say(self, exc: OSError) -> None:
        """Log the WARNING, unless it was logged less than a minute ago."""
        self.warn("out of file descriptors (%s): new connections wait, and requests that need one "
                  "are answered 503, until some close; raise the limit (systemd: LimitNOFILE) or "
                  "lower --limit-concurrency", exc.strerror)


OUT_OF_FILES = OutOfFiles()
# asyncio's wait before it accepts again once accept found no file descriptor left.
ACCEPT_RETRY_DELAY = 1.0


class Listener(socket.socket):
    """The listening socket, fit for asyncio's way with running out of file descriptors: on
    that error asyncio stops watching it and starts again a second later, but goes on calling
    accept for the rest of its batch (up to the backlog: 2048), scheduling a restart per call;
    and a restart that comes after the server closed the socket finds no descriptor (-1) and
    logs a traceback. Here the batch ends at the first such error (one restart), and a close
    while a restart is due only stops listening: the restart finds the descriptor, and the
    first accept after it closes the socket for good."""

    def __init__(self, family: int) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self._batch_over = False
        self._restart_due = -1.0  # loop time until which asyncio may still restart
        self._closing = False

    def accept(self) -> tuple[socket.socket, Any]:
        """``socket.accept``; BlockingIOError (asyncio's "none left") after running out."""
        if self._closing:
            asyncio.get_running_loop().remove_reader(self)
            super().close()
            raise BlockingIOError
        if self._batch_over:
            self._batch_over = False
            raise BlockingIOError
        try:
            return super().accept()
        except OSError as exc:
            if is_out_of_files(exc):
                self._batch_over = True
                # Late timers included: a loaded loop runs the restart after its time.
                self._restart_due = asyncio.get_running_loop().time() + 2 * ACCEPT_RETRY_DELAY
            raise

    def close(self) -> None:
        """Close; or, with a restart due, stop listening and close at the first accept after it."""
        if self._closing:
            return
        if not self._restart_pending():
            super().close()
            return
        self._closing = True
        self.shutdown(socket.SHUT_RDWR)  # waiting connections are reset; the restart wakes accept

    def _restart_pending(self) -> bool:
        try:
            return asyncio.get_running_loop().time() < self._restart_due
        except RuntimeError:  # no loop running: nothing will restart
            return False


class LimitedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with two changes. A connection beyond ``limit_concurrency``
    (or while that many requests still run) is answered 503 at once and closed, so it never
    holds a file descriptor. A connection must send a whole request head within the keep-alive
    timeout of opening or of its last answer: uvicorn's own wait starts only after an answer,
    and any byte restarts it, so a client that sends nothing, or a byte now and then, would
    hold its connection forever."""

    over_limit = Throttled()

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.connection_limit = self.limit_concurrency
        self.limit_concurrency = None  # uvicorn's check per request: this one is per connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse the connection beyond the limit, or start its wait for a request head."""
        super().connection_made(transport)
        limit = self.connection_limit
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self.over_limit.warn("%d connections open (--limit-concurrency): answering new ones "
                                 "503 until some close", limit)
            transport.write(_busy(limit))
            transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        """uvicorn's, without ending the wait for a request head at any byte: the head ends it."""
        self.conn.receive_data(data)
        self.handle_events()


def answering_when_cut_short(app: ASGIApp) -> ASGIApp:
    """``app``, whose requests cancelled by a stop that ran out of ``--graceful-timeout`` are
    answered 503 and logged in one line, instead of uvicorn's traceback and bare 500."""

    async def cut_short(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, sending)
        except asyncio.CancelledError:
            if scope["type"] != "http":
                raise
            log.warning("stopping: %s %s was still running after --graceful-timeout; cancelled",
                        scope["method"], scope["path"])
            if not started:  # uvicorn awaits nothing more of this task: it ends here
                body = _error_body("ServiceStopping", "the service stopped before this request "
                                   "finished; send it again")
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})

    return cut_short


def _busy(limit: int) -> bytes:
    body = _error_body("ServiceBusy", f"the service has {limit} connections open, its "
                       "--limit-concurrency; retry in a moment")
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message}}).encode()
