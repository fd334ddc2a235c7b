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
import hmac
import ipaddress
import logging
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import anyio
import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..content import media_types
from ..content._async_io import Batches
from ..content.confined import open_under
from ..content.sources import Content, Spool
from ..errors import (
    AccessDenied,
    APIUnreachable,
    ConfigError,
    ContentDeleted,
    DownloadError,
    GraphAPIError,
    InputError,
    MediaRegistryError,
    MediaTooLarge,
    NotAuthenticated,
    NotInRegistry,
    RateLimited,
    RegistryError,
    SourceChanged,
    UnsafeDownloadURL,
    UnsupportedMedia,
)
from ..models import MediaRecord
from ..registry import AsyncMediaRegistry, Outcome
from ..rules.sources import Source
from . import _connections
from .metrics import Monitor, registry_trouble
from .scheduler import only_daemon, run_schedule

log = logging.getLogger("media_registry.service")

# The largest thing WhatsApp takes (a 100 MB document); each kind's own limit is checked later.
MAX_BODY = max(media_types.MAX_BYTES.values())
MAX_JSON_BODY = 64 * 1024
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
DIGITS = r"^[0-9]{1,32}$"


class BodyTimeout(InputError):
    """The request's body did not arrive whole within the service's ``--body-timeout``."""


# The most specific class wins: the status of the first class in the error's MRO found here.
STATUS_BY_ERROR: dict[type[MediaRegistryError], int] = {
    BodyTimeout: 408,
    NotAuthenticated: 401,
    AccessDenied: 403,
    NotInRegistry: 404,
    SourceChanged: 409,
    ContentDeleted: 409,
    MediaTooLarge: 413,
    UnsupportedMedia: 415,
    InputError: 400,
    RateLimited: 503,
    APIUnreachable: 503,
    GraphAPIError: 502,
    RegistryError: 503,
    UnsafeDownloadURL: 403,
    DownloadError: 502,
    MediaRegistryError: 500,
}


# -- shapes -------------------------------------------------------------------------------


class MediaID(BaseModel):
    """A media ID valid now for a content on one phone number."""

    media_id: str
    sha256: str
    mime_type: str
    expires_at: datetime


class Upload(MediaID):
    """The answer to ``POST /v1/media``: ``cached`` when the ID was already there."""

    status: Literal["cached", "uploaded"]


class UrlSource(BaseModel):
    """Fetch the content from this URL (https; private addresses only if the service allows)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=8192, pattern=r"^[hH][tT][tT][pP][sS]?://")  # any case, as RFC 3986


class PathSource(BaseModel):
    """Read the content from this absolute path, under a folder given with ``--allow-root``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(max_length=4096, pattern=r"^/[^\x00]*$")


class ErrorDetail(BaseModel):
    """What went wrong, in the registry's one-line words."""

    type: str
    message: str


class ErrorBody(BaseModel):
    """Every error the service answers with."""

    error: ErrorDetail


class Health(BaseModel):
    """``/healthz``: ``ok``, or ``failing`` with what (``registry`` or ``refresh``) and why."""

    status: Literal["ok", "failing"]
    failing: Literal["registry", "refresh"] | None = None
    reason: str | None = None
    last_refresh_success: float | None = Field(None, description="Unix time, this process's")


JsonSource = TypeAdapter(UrlSource | PathSource)
BEARER = HTTPBearer(auto_error=False, description="The service's MEDIA_REGISTRY_SERVICE_TOKEN")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {400: "Bad input", 401: "No valid client token", 403: "Source not allowed",
             404: "Not in the registry", 408: "The body did not arrive within --body-timeout",
             409: "The source changed, or its content was deleted, while it was uploaded; send it "
             "again", 413: "Too large", 415: "Unsupported media type",
             502: "Graph API error", 503: "Graph API or registry unavailable, retry later"}
    return {status: {"model": ErrorBody, "description": words[status]} for status in statuses}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The media's bytes (any content type but JSON: application/json, "
                       "text/json, application/*+json), or a JSON source.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                    "minLength": 1}},
            "application/json": {"schema": {"oneOf": [UrlSource.model_json_schema(),
                                                      PathSource.model_json_schema()]}},
        },
    }
}


# -- the application ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the service allows: client token, folders for path sources, private URLs; how
    long a body may take to arrive, how long a stop waits for requests in flight (seconds),
    and how many connections it holds at once (None: as many as its file descriptors allow)."""

    token: str | None = None
    allow_roots: tuple[Path, ...] = ()
    allow_private_urls: bool = False
    max_body: int = MAX_BODY
    body_timeout: int = 60
    graceful_timeout: int = 30
    limit_concurrency: int | None = None


Lifespan = Callable[[FastAPI], Any]


def create_app(registry: AsyncMediaRegistry, monitor: Monitor, options: Options,
               lifespan: Lifespan | None = None) -> FastAPI:
    """The ASGI application over ``registry``."""
    service = _Service(registry, monitor, options)
    app = FastAPI(title="media-registry", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Media IDs for the WhatsApp Cloud API that are valid now, uploaded once.")
    guarded = APIRouter(dependencies=[Depends(service.authorize), Depends(_known_query)],
                        responses=_errors(401) if options.token else {})
    service.routes(guarded)
    app.include_router(guarded)
    app.add_api_route("/healthz", service.healthz, methods=["GET"], response_model=Health,
                      responses={503: {"model": Health, "description": "Not healthy"}},
                      summary="Whether the registry answers and refresh keeps up")
    app.add_exception_handler(MediaRegistryError, _registry_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class _Service:
    """The endpoints, holding the registry, the monitor and the options."""

    def __init__(self, registry: AsyncMediaRegistry, monitor: Monitor, options: Options) -> None:
        self.registry = registry
        self.monitor = monitor
        self.options = options

    async def authorize(self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
                        ) -> None:
        """Every guarded endpoint: the client token, compared in constant time."""
        expected = self.options.token
        if expected is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise NotAuthenticated(
                "missing or wrong client token; send 'Authorization: Bearer <token>' with "
                "the service's MEDIA_REGISTRY_SERVICE_TOKEN"
            )

    def routes(self, router: APIRouter) -> None:
        router.add_api_route(
            "/v1/media", self.upload, methods=["POST"], response_model=Upload,
            responses=_errors(400, 403, 408, 409, 413, 415, 502, 503), openapi_extra=UPLOAD_BODY,
            summary="The media ID for these bytes (or this URL or path), uploading only if new",
        )
        router.add_api_route(
            "/v1/media/{sha256}", self.get, methods=["GET"], response_model=MediaID,
            responses=_errors(400, 404, 503), summary="The valid media ID for a content's sha256",
        )
        router.add_api_route(
            "/v1/media/{media_id}/invalidate", self.invalidate, methods=["POST"],
            response_model=MediaRecord, responses=_errors(400, 404, 502, 503),
            summary="Meta refused this ID: never serve it again",
        )
        router.add_api_route(
            "/metrics", self.metrics, methods=["GET"], response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}},
            summary="Prometheus metrics",
        )

    # -- endpoints ------------------------------------------------------------------------

    async def upload(
        self, request: Request,
        phone_number_id: Annotated[str | None, Query(pattern=DIGITS)] = None,
        mime_type: Annotated[str | None, Query(max_length=255)] = None,
    ) -> Upload:
        """Raw bytes as the body, or JSON ``{"url": ...}`` or ``{"path": ...}``."""
        if mime_type is not None and not mime_type.strip():
            raise InputError("mime_type is empty or blank; give a MIME type (e.g. image/png), or leave it "
                             "out to let the bytes decide")
        if _is_json(_media_type(request)):
            source = await self._json_source(request)
            try:
                outcome = await self._timed(source, phone_number_id, mime_type)
            finally:
                if not isinstance(source, str):
                    source.close()
            return _known(outcome) or _answer(outcome, await self.registry.alookup(
                outcome.media_id, phone_number_id=phone_number_id))
        # Hashed and spooled once, off the loop: the registry takes the content as it is.
        content = await _spool(request, self.options.max_body, self.options.body_timeout)
        try:
            if content.size == 0:
                raise InputError("the body is empty; send the media's bytes, or JSON "
                                 '{"url": ...} or {"path": ...}')
            record = await self.registry.avalid_record(content.sha256, phone_number_id=phone_number_id)
            if record is not None and mime_type in (None, record.mime_type):
                self.monitor.cache_hits.inc()
                return _answer(Outcome(record.media_id or "", uploaded=False), record)
            outcome = await self._timed(content, phone_number_id, mime_type)
        finally:
            await asyncio.to_thread(content.close)
        return _known(outcome) or _answer(outcome, await self.registry.avalid_record(
            content.sha256, phone_number_id=phone_number_id))

    async def get(self, sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)],
                  phone_number_id: Annotated[str | None, Query(pattern=DIGITS)] = None) -> MediaID:
        """Hash locally, ask here, and send the bytes only on a 404."""
        record = await self.registry.avalid_record(sha256, phone_number_id=phone_number_id)
        if record is None or record.media_id is None or record.expires_at is None:
            raise NotInRegistry(f"{sha256.lower()}: no valid media ID for this content on this "
                                "number; POST the bytes to /v1/media")
        return MediaID(media_id=record.media_id, sha256=record.sha256, mime_type=record.mime_type,
                       expires_at=record.expires_at)

    async def invalidate(self, media_id: Annotated[str, PathParam(pattern=DIGITS)]) -> MediaRecord:
        """The record of the content, after its ID was marked dead."""
        if await self.registry.alookup(media_id) is None:
            raise NotInRegistry(f"media ID {media_id}: not in the registry; check the ID")
        await self.registry.invalidate(media_id)
        record = await self.registry.alookup(media_id)
        if record is None:  # deleted meanwhile: nothing left to serve, as asked
            raise NotInRegistry(f"media ID {media_id}: no longer in the registry")
        return record

    async def metrics(self) -> Response:
        body = await asyncio.to_thread(self.monitor.exposition)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(self) -> JSONResponse:
        healthy, body = await asyncio.to_thread(self.monitor.health)
        return JSONResponse(body, status_code=200 if healthy else 503)

    # -- helpers --------------------------------------------------------------------------

    async def _timed(self, source: Source, phone_number_id: str | None, mime_type: str | None) -> Outcome:
        """The registry's answer for a source that missed the hash lookup, counted and timed."""
        self.monitor.cache_misses.inc()
        with self.monitor.upload_seconds.time():
            outcome = await self.registry.get_or_upload_with_status(
                source, phone_number_id=phone_number_id, mime_type=mime_type)
        if outcome.uploaded:
            self.monitor.uploads.inc()
        return outcome

    async def _json_source(self, request: Request) -> str | IO[bytes]:
        """The URL, or the file opened under an allowed folder (see :mod:`.confined`)."""
        body = bytearray()

        async def take(chunk: bytes) -> None:
            body.extend(chunk)
            if len(body) > MAX_JSON_BODY:
                raise InputError(f"the JSON body is over {MAX_JSON_BODY:,} bytes; send "
                                 '{"url": ...} or {"path": ...} only')

        await _receive(request, self.options.body_timeout, take)
        try:
            source = JsonSource.validate_json(body)
        except ValidationError:
            raise InputError('the JSON body must be {"url": "https://..."} or {"path": "/absolute/path"}; '
                             "send raw bytes as application/octet-stream") from None
        if isinstance(source, PathSource):
            return await asyncio.to_thread(open_under, self.options.allow_roots, source.path)
        try:
            httpx.URL(source.url)
        except httpx.InvalidURL:
            raise InputError("the url is not a valid URL; check it") from None
        return source.url  # each hop is checked by PublicOnly, unless --allow-private-urls


class PublicOnly(httpx.AsyncBaseTransport):
    """The transport of URL sources in the service: every request, each hop of a redirect
    included, goes only to a public address, against server-side request forgery.

    The host is resolved once and the connection made to the address that was checked (TLS
    still verifies the host name), so a DNS answer that changes in between cannot point it
    at this machine or its network.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check the host's address, then send the request to it."""
        host = request.url.host
        address = await _public_address(host, request.url.port or 443)
        request.url = request.url.copy_with(host=address)
        request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._inner.aclose()


async def _public_address(host: str, port: int) -> str:
    """The first address ``host`` resolves to, if every one is public; AccessDenied otherwise."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InputError(f"{host}: cannot resolve this host name; check the url") from None
    addresses = [str(info[4][0]).split("%")[0] for info in found]
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not is_public(ip):
            raise AccessDenied(
                f"{host}: resolves to {ip}, a loopback, private or link-local address; "
                "start the service with --allow-private-urls to fetch from such hosts"
            )
    return addresses[0]


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at: NAT64,
# IPv4-compatible (deprecated) and IPv4-translated. Python calls them all global.
_LAST_32_BITS_V4 = tuple(ipaddress.IPv6Network(net) for net in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
# Not globally reachable, though Python calls them global: site-local (deprecated), local NAT64.
_NOT_PUBLIC_V6 = tuple(ipaddress.IPv6Network(net) for net in ("fec0::/10", "64:ff9b:1::/48"))


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether the service may fetch from ``ip``: a global unicast address, and for an IPv6
    address that embeds an IPv4 one (mapped, 6to4, NAT64, compatible), that one too."""
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _NOT_PUBLIC_V6):
            return False
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and any(ip in net for net in _LAST_32_BITS_V4):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not ip.is_multicast


async def _known_query(request: Request) -> None:
    """Refuse query parameters an endpoint does not take: a misspelt ``phone_number_id`` must
    not quietly upload for the default number."""
    route = request.scope.get("route")
    taken = {param.alias for param in getattr(getattr(route, "dependant", None), "query_params", ())}
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        raise InputError(f"unknown query parameter {unknown[0]!r}; this endpoint takes "
                         f"{', '.join(sorted(taken)) or 'none'}")


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    """JSON by its media type: ``application/json``, ``text/json`` or ``application/*+json``."""
    return media_type in ("application/json", "text/json") or (
        media_type.startswith("application/") and media_type.endswith("+json"))


async def _spool(request: Request, limit: int, seconds: int) -> Content:
    """Stream the body into a temporary file while hashing it, both in threads (in batches),
    never on the event loop: the content, read once.

    The limit is checked against Content-Length first and then as the bytes arrive.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    spool = await asyncio.to_thread(Spool, "<stream>")
    batches = Batches(spool.write)
    size = 0

    async def take(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        await batches.write(chunk)

    try:
        await _receive(request, seconds, take)
        await batches.flush()
        return await asyncio.to_thread(spool.finish)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(spool.__exit__, None, None, None))
        raise


async def _receive(request: Request, seconds: int, take: Callable[[bytes], Awaitable[None]]) -> None:
    """Hand the body's chunks to ``take`` as they arrive; BodyTimeout unless the whole body is
    in within ``seconds``, however it trickles."""
    try:
        with anyio.fail_after(seconds):
            async for chunk in request.stream():
                await take(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive whole within {seconds} s (the service's "
                          "--body-timeout); send it again over a faster link") from None


def _too_large(size: int, limit: int) -> MediaTooLarge:
    return MediaTooLarge(f"the body ({size:,} bytes or more) is over the service's {limit:,}-byte "
                         "limit, WhatsApp's largest; send a smaller file")


def _known(outcome: Outcome) -> Upload | None:
    """The answer, from what the registry's call learned, when it learned all of it."""
    if outcome.sha256 is None or outcome.mime_type is None or outcome.expires_at is None:
        return None
    return Upload(media_id=outcome.media_id, status=outcome.status, sha256=outcome.sha256,
                  mime_type=outcome.mime_type, expires_at=outcome.expires_at)


def _answer(outcome: Outcome, record: MediaRecord | None) -> Upload:
    if record is None or record.expires_at is None:
        raise ContentDeleted("the content was deleted from the registry while it was being uploaded; "
                             "nothing is served; send it again to upload it anew")
    return Upload(media_id=outcome.media_id, status="uploaded" if outcome.uploaded else "cached",
                  sha256=record.sha256, mime_type=record.mime_type, expires_at=record.expires_at)


# -- errors as JSON -----------------------------------------------------------------------


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MediaRegistryError)
    status = next(STATUS_BY_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_BY_ERROR)
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(int(retry_after))} if retry_after else {}
    if isinstance(exc, BodyTimeout):  # the rest of the body may still trickle in: hang up
        headers["Connection"] = "close"
    message = str(exc)
    if status == 503 and isinstance(exc, RegistryError):  # the message names the database
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        message = registry_trouble(exc)
    return _error(status, type(exc).__name__, message, headers)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    log.info("a client hung up before sending the whole body; nothing was recorded")
    return Response(status_code=400)  # nobody is left to read it


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    first = exc.errors()[0] if isinstance(exc, RequestValidationError) and exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return _error(400, "InputError", f"{where}: {first.get('msg', 'invalid')}; fix the request")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, "HTTPError", str(exc.detail), getattr(exc, "headers", None))


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    """Out of file descriptors (spooling a body, opening a path): 503 and a WARNING at most
    once a minute; any other OSError is unexpected."""
    if not _connections.is_out_of_files(exc):
        return await _unexpected_error(request, exc)
    _connections.OUT_OF_FILES.say(exc)
    return _error(503, "ServiceBusy", "the service is out of file descriptors for now; retry in "
                  "a moment", {"Retry-After": "1"})


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")  # the message may hold anything: keep it in the log
    return _error(500, "InternalError", f"unexpected {type(exc).__name__}; see the service's log")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with its 422 answers replaced by our 400 (validation errors)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        for operation in (op for item in schema["paths"].values() for op in item.values()):
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", _errors(400)[400] | {"content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
                responses["400"].pop("model", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


# -- running it ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether a bind address keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


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
    stopping = asyncio.Event()
    tempfile.gettempdir()  # found now: looked for with no file descriptor left, none is usable

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_exception_handler(_connections.OUT_OF_FILES)
        passes = [run_schedule(registry, stopping, monitor.observe_pass)] if run_schedule_too else []
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

    app = create_app(registry, monitor, options, lifespan)
    config = uvicorn.Config(_connections.answering_when_cut_short(app), host=host, port=port,
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
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
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
