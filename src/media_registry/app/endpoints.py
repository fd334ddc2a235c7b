"""The service's endpoints: upload (bytes, a URL or a path), look up, invalidate, metrics
and health, over one registry."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import anyio
import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError

from ..content._async_io import Batches
from ..content.confined import open_under
from ..content.sources import Content, Spool
from ..defaults import BODY_TIMEOUT, GRACEFUL_TIMEOUT
from ..errors import ContentDeleted, InputError, MediaTooLarge, NotAuthenticated, NotInRegistry
from ..models import MediaRecord
from ..registry import AsyncMediaRegistry, Outcome
from ..rules.sources import Source
from .answers import (
    BEARER,
    DIGITS,
    MAX_BODY,
    MAX_JSON_BODY,
    SHA256_PATTERN,
    UPLOAD_BODY,
    BodyTimeout,
    HeaderHandle,
    JsonSource,
    MediaID,
    PathSource,
    Upload,
    error_responses,
)
from .lookups import Lookups
from .metrics import Monitor


@dataclass(frozen=True)
class Options:
    """What the service allows: client token, folders for path sources, private URLs; how
    long a body may take to arrive, how long a stop waits for requests in flight (seconds),
    and how many connections it holds at once (None: as many as its file descriptors allow)."""

    token: str | None = None
    allow_roots: tuple[Path, ...] = ()
    allow_private_urls: bool = False
    max_body: int = MAX_BODY
    body_timeout: int = BODY_TIMEOUT
    graceful_timeout: int = GRACEFUL_TIMEOUT
    limit_concurrency: int | None = None


class Endpoints:
    """The endpoints, holding the registry, the monitor and the options."""

    def __init__(self, registry: AsyncMediaRegistry, monitor: Monitor, options: Options) -> None:
        self.registry = registry
        self.monitor = monitor
        self.options = options
        self.lookups = Lookups(registry)

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
        """Add the guarded endpoints to ``router``."""
        router.add_api_route(
            "/v1/media", self.upload, methods=["POST"], response_model=Upload,
            responses=error_responses(400, 403, 408, 409, 413, 415, 502, 503), openapi_extra=UPLOAD_BODY,
            summary="The media ID for these bytes (or this URL or path), uploading only if new",
        )
        router.add_api_route(
            "/v1/media/{sha256}", self.get, methods=["GET"], response_model=MediaID,
            responses=error_responses(400, 404, 503), summary="The valid media ID for a content's sha256",
        )
        router.add_api_route(
            "/v1/media/{media_id}/invalidate", self.invalidate, methods=["POST"],
            response_model=MediaRecord, responses=error_responses(400, 404, 502, 503),
            summary="Meta refused this ID: never serve it again",
        )
        router.add_api_route(
            "/v1/handles", self.header_handle, methods=["POST"], response_model=HeaderHandle,
            responses=error_responses(400, 403, 408, 413, 415, 502, 503), openapi_extra=UPLOAD_BODY,
            summary="A template header handle for these bytes (or this URL or path), made once per app",
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

    async def header_handle(self, request: Request,
                            app_id: Annotated[str | None, Query(pattern=DIGITS)] = None) -> HeaderHandle:
        """Raw bytes (PDF, JPEG, PNG or MP4) as the body, or JSON ``{"url": ...}`` or ``{"path": ...}``."""
        if _is_json(_media_type(request)):
            source = await self._json_source(request)
            try:
                return HeaderHandle(handle=await self.registry.get_header_handle(source, app_id=app_id))
            finally:
                if not isinstance(source, str):
                    source.close()
        content = await _spool(request, self.options.max_body, self.options.body_timeout)
        try:
            if content.size == 0:
                raise InputError('the body is empty; send the sample\'s bytes, or JSON {"url": ...} or {"path": ...}')
            return HeaderHandle(handle=await self.registry.get_header_handle(content, app_id=app_id))
        finally:
            await asyncio.to_thread(content.close)

    async def get(self, sha256: Annotated[str, PathParam(pattern=SHA256_PATTERN)],
                  phone_number_id: Annotated[str | None, Query(pattern=DIGITS)] = None) -> Response:
        """Hash locally, ask here, and send the bytes only on a 404."""
        body = await self.lookups.answer(sha256, phone_number_id)
        if body is None:
            raise NotInRegistry(f"{sha256.lower()}: no valid media ID for this content on this "
                                "number; POST the bytes to /v1/media")
        return Response(body, media_type="application/json")  # MediaID's bytes (see .lookups)

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
        """The Prometheus exposition."""
        body = await asyncio.to_thread(self.monitor.exposition)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def healthz(self) -> JSONResponse:
        """``ok``, or 503 with what is failing."""
        healthy, body = await asyncio.to_thread(self.monitor.health)
        return JSONResponse(body, status_code=200 if healthy else 503)

    # -- helpers --------------------------------------------------------------------------

    async def _timed(self, source: Source, phone_number_id: str | None, mime_type: str | None) -> Outcome:
        """The registry's answer for a source that missed the hash lookup, counted and timed."""
        self.monitor.cache_misses.inc()
        try:
            with self.monitor.upload_seconds.time():
                outcome = await self.registry.get_or_upload_with_status(
                    source, phone_number_id=phone_number_id, mime_type=mime_type)
        except Exception as exc:
            if not isinstance(exc, (InputError, ContentDeleted)):  # the client's to mend, or a race lost
                self.monitor.upload_failures.inc()
            raise
        if outcome.uploaded:
            self.monitor.uploads.inc()
        return outcome

    async def _json_source(self, request: Request) -> str | IO[bytes]:
        """The URL, or the file opened under an allowed folder (see :mod:`media_registry.content.confined`)."""
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


async def known_query(request: Request) -> None:
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
