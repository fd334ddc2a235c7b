"""``media-registry serve``: the registry as a small HTTP service (FastAPI on uvicorn).

Senders in any language post bytes (or name a URL, or a file under an allowed folder) and get
a media ID valid now. Bytes are streamed to an unnamed temporary file while hashing, under a
size limit enforced as they arrive; a content already in the registry is answered from its
hash alone. The same process can run the daemon's refresh and purge schedule, under the
daemon's lock. Needs the ``serve`` extra (FastAPI, uvicorn, prometheus_client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI
from pydantic import SecretStr
from starlette.types import ASGIApp

from .. import __version__
from ..errors import ConfigError
from ..graph.guard import PublicOnly
from ..graph.urls import is_loopback
from ..registry import AsyncMediaRegistry
from . import _connections
from .answers import Health, answer_errors_as_json, error_responses
from .endpoints import Endpoints, Options, known_query
from .lookups import Lookups, lookups_first
from .metrics import Monitor
from .scheduler import only_daemon, run_schedule
from .webhook_endpoints import WebhookEndpoints

log = logging.getLogger("media_registry.service")


Lifespan = Callable[[FastAPI], Any]


def create_app(registry: AsyncMediaRegistry, monitor: Monitor, options: Options,
               lifespan: Lifespan | None = None, wake: Callable[[], None] = lambda: None) -> FastAPI:
    """The ASGI application over ``registry``; ``wake`` tells the archive worker that
    webhook items arrived."""
    service = Endpoints(registry, monitor, options)
    app = FastAPI(title="media-registry", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Media IDs for the WhatsApp Cloud API that are valid now, uploaded once.")
    guarded = APIRouter(dependencies=[Depends(service.authorize), Depends(known_query)],
                        responses=error_responses(401) if options.token else {})
    service.routes(guarded)
    app.include_router(guarded)
    webhooks = APIRouter()
    WebhookEndpoints(registry, monitor, options.body_timeout, wake).routes(webhooks)
    app.include_router(webhooks)
    app.add_api_route("/healthz", service.healthz, methods=["GET"], response_model=Health,
                      responses={503: {"model": Health, "description": "Not healthy"}},
                      summary="Whether the registry answers and refresh keeps up")
    answer_errors_as_json(app)
    return app


def serving(registry: AsyncMediaRegistry, monitor: Monitor, options: Options, lifespan: Lifespan | None = None,
            wake: Callable[[], None] = lambda: None) -> ASGIApp:
    """What ``serve`` runs: :func:`create_app`'s application with its plain lookups answered
    first (:mod:`.lookups`), and requests cut short by a stop answered 503."""
    app = create_app(registry, monitor, options, lifespan, wake)
    return _connections.answering_when_cut_short(lookups_first(app, Lookups(registry), options.token))


def run_service(*, host: str, port: int, options: Options, run_schedule_too: bool,
                **settings: Any) -> None:
    """Serve until SIGTERM or SIGINT: in-flight requests finish (their uploads recorded), the
    schedule's running passes finish, then the process exits.

    ``settings`` override the environment (``db``, ``refresh_interval``, ...). Raises
    ConfigError for a non-loopback bind without a client token, RegistryLocked when the
    schedule is wanted and a daemon already runs it.
    """
    registry = AsyncMediaRegistry.from_env(
        source_transport=None if options.allow_private_urls else PublicOnly(), **settings)
    limit = options.limit_concurrency or _connections.default_limit(registry.settings.pg_pool_size)
    options = dataclasses.replace(options, token=_client_token(registry.settings.service_token, host),
                                  allow_roots=tuple(_root(root) for root in options.allow_roots),
                                  limit_concurrency=limit)
    monitor = Monitor(registry)
    stopping, archive_wake = asyncio.Event(), asyncio.Event()
    tempfile.gettempdir()  # found now: looked for with no file descriptor left, none is usable

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_exception_handler(_connections.OUT_OF_FILES)
        anyio.current_time()  # anyio's backend imported now: at the first request, it needs a descriptor
        passes = [run_schedule(registry, stopping, monitor.observe_pass, archive_wake)] if run_schedule_too else []
        schedule = [asyncio.create_task(coroutine) for coroutine in passes]
        # Said once uvicorn's signal handlers are in place: from now on SIGTERM is graceful.
        log.info("serving on http://%s:%d (%s); SIGTERM or Ctrl-C stops it", host if ":" not in host
                 else f"[{host}]", listener.getsockname()[1],
                 "with the refresh and purge schedule" if run_schedule_too else "no schedule")
        yield  # uvicorn has stopped taking requests and finished those in flight
        registry.stop()
        stopping.set()
        await asyncio.gather(*schedule)  # a pass running now finishes its uploads first
        await registry.aclose()

    config = uvicorn.Config(serving(registry, monitor, options, lifespan, archive_wake.set), host=host, port=port,
                            log_config=None, server_header=False, proxy_headers=False,
                            http=_connections.LimitedH11, limit_concurrency=limit,
                            timeout_graceful_shutdown=options.graceful_timeout)
    # A signal before uvicorn takes over (nothing in flight yet), and the one uvicorn raises
    # again once it has shut down gracefully: like the daemon, a stop exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_quietly)
    with only_daemon(registry) if run_schedule_too else nullcontext():
        listener = _listen(host, port)
        uvicorn.Server(config).run(sockets=[listener])


def _client_token(token: SecretStr | None, host: str) -> str | None:
    """The token clients must send (None: none), or ConfigError. A blank one counts as unset,
    since it would let anyone in; one with spaces or a line break around it is refused, since
    no client could send it (unlike WHATSAPP_TOKEN, it is not stripped: the clients' copy must
    be the same bytes, and a mismatch is better found now than as a 401 for everyone)."""
    given = token.get_secret_value() if token else ""
    if not given.strip():
        if not is_loopback(host):
            raise ConfigError(f"binding to {host} reaches beyond this machine: set "
                              "MEDIA_REGISTRY_SERVICE_TOKEN (unset or blank now; e.g. `openssl rand "
                              "-hex 32`) so clients must send it, or bind to 127.0.0.1")
        return None
    if given != given.strip() or not (given.isascii() and given.isprintable()):
        raise ConfigError("MEDIA_REGISTRY_SERVICE_TOKEN has spaces or a line break around it, or "
                          "characters a client cannot send in a header, so no client could match "
                          "it; set it to the bare token (e.g. `openssl rand -hex 32`)")
    return given


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, or one line saying why there is none (uvicorn would log it)."""
    listener = _connections.Listener(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {host} port {port} ({exc.strerror or exc}); pick "
                          "another --port, or stop the process that holds it") from None
    return listener


def _root(folder: Path) -> Path:
    resolved = folder.resolve()
    if not resolved.is_dir():
        raise ConfigError(f"--allow-root {folder}: not a folder; give an existing folder")
    return resolved
