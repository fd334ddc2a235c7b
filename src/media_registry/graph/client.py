"""The Graph API clients: upload, get, delete and download media over httpx, with retries.

:class:`GraphClient` (sync) and :class:`AsyncGraphClient` share everything but the I/O
(:class:`~media_registry.graph.base.GraphBase`). The client never knows what carries its
requests: pass an ``httpx`` transport (e.g. ``httpx.MockTransport``) or point ``api_base`` at
:class:`media_registry.testing.FakeGraphAPI`. The bearer token is attached by
:class:`~media_registry.graph.auth.BearerAuth` only to allowed origins, and is registered with
:func:`~media_registry.errors.register_secret`, so no error shows it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import httpx
import tenacity

from ..content._async_io import Batches, FileBody, changed_while_uploaded
from ..content.blobs import Sink
from ..errors import AuthError, MediaNotFound, MediaRegistryError
from ..models import MediaMetadata, graph_id
from .auth import OAUTH
from .base import Budget, GraphBase
from .redirects import afollow, follow
from .transfer import RunningDigest, achunks, chunks, open_at

SESSION_AUTH = {"Authorization": OAUTH}  # an upload session takes the token as "OAuth <token>"


class GraphClient(GraphBase):
    """A synchronous Graph API client for the media endpoints.

    ``token`` may be None for a client that only ever serves cache hits; the first request
    then raises AuthError. Retries (``max_retries``) use exponential backoff with jitter and
    honour ``Retry-After`` up to ``max_wait`` seconds; 4xx errors other than rate limits are
    never retried. ``transport`` swaps the HTTP transport (e.g. ``httpx.MockTransport``).
    """

    _http: httpx.Client

    def __init__(self, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, **options: Any) -> None:
        super().__init__(**options)
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **self._client_options)

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def upload(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str,
               ttl_minutes: int | None = None) -> str:
        """POST the file as streamed multipart to ``/{phone_number_id}/media``; return its ID."""
        url, data, (name, part_type) = self._upload_request(path, mime_type, phone_number_id, ttl_minutes)

        def send() -> httpx.Response:
            with _upload_file(path) as file:  # reopened per attempt: a retry starts at byte 0
                return self._http.post(url, data=data, files={"file": (name, file, part_type)})

        return self._media_id(self._call(send))

    def open_session(self, path: str | os.PathLike[str], mime_type: str, app_id: str) -> str:
        """Open an upload session of ``app_id`` for the file (Meta's Resumable Upload API): its
        ID (``upload:...``)."""
        url, params = self._session_request(path, mime_type, app_id)
        return self._session_id(self._call(lambda: self._http.post(url, params=params)))

    def session_offset(self, session: str, size: int) -> int | None:
        """The offset an upload session of a ``size``-byte file resumes from, or None when
        Meta no longer knows the session (start over)."""
        try:
            return self._offset(self._session_url(session), size)
        except MediaNotFound:
            return None

    def _offset(self, url: str, size: int) -> int:
        return self._resume_at(self._call(lambda: self._http.get(url, headers=SESSION_AUTH)), size)

    def transfer(self, session: str, path: str | os.PathLike[str], offset: int, size: int,
                 digest: RunningDigest | None = None) -> str:
        """Stream the file to an upload session from ``offset``: its header handle. When the
        transfer breaks, ask the session for its offset and send only the rest (up to
        ``max_retries`` times). ``digest`` hashes the file's bytes as they go."""
        url = self._session_url(session)
        for attempt in range(self._max_retries + 1):
            try:
                answer = self._parse(self._send(functools.partial(self._transfer, url, path, offset, size, digest)))
            except MediaRegistryError as exc:
                answer = self._broken(exc, last=attempt == self._max_retries)
            if handle := self._handle(answer):
                return handle
            offset = self._offset(url, size)
        raise self._unfinished(size)

    def _transfer(self, url: str, path: str | os.PathLike[str], offset: int, size: int,
                  digest: RunningDigest | None) -> httpx.Response:
        with open_at(path, offset, digest) as file:
            return self._http.post(url, content=chunks(file, offset, size - offset, digest),
                                   headers=self._transfer_headers(offset, size))

    def get_object(self, object_id: str, fields: str,
                   dated: Callable[[str], None] | None = None) -> dict[str, Any]:
        """GET ``/{object_id}?fields=...`` once (a phone number, an app: ``doctor``'s reads): its
        fields. ``dated`` is given the answer's ``Date`` header, a refusal's too (a 401 has one)."""
        if not self._token:
            raise AuthError("no access token: set WHATSAPP_TOKEN")
        response = self._send(lambda: self._http.get(
            f"{self.api_base}/{graph_id(object_id, 'Graph API ID')}", params={"fields": fields}))
        if dated is not None and (date := response.headers.get("Date")):
            dated(date)
        return self._parse(response)

    def get_media(self, media_id: str, phone_number_id: str | None = None) -> MediaMetadata:
        """GET ``/{media_id}``: a fresh download URL (valid ~5 minutes) and the media's facts."""
        payload = self._call(lambda: self._http.get(
            self._media_url(media_id), params=self._params(phone_number_id)))
        return self._metadata(payload, media_id)

    def delete(self, media_id: str, phone_number_id: str | None = None) -> None:
        """DELETE ``/{media_id}``; ``{"success": true}`` and ``{"deleted": true}`` both count."""
        payload = self._call(lambda: self._http.delete(
            self._media_url(media_id), params=self._params(phone_number_id)))
        self._check_deleted(payload, media_id)

    def download_to(self, url: str, file: Sink) -> None:
        """Stream a download URL (with the token) into ``file``, following redirects only
        within the allowlist. Raises UnsafeDownloadURL before sending anything elsewhere, and
        DownloadURLExpired once the URL has lived out its few minutes."""
        budget = Budget(self._download_deadline)
        _, response = follow(self._download_walk(url), lambda target: self._send(
            functools.partial(self._http.send, self._download_request(target, budget), stream=True), budget))
        try:
            if not response.is_success:
                response.read()
            self._check_download(response)
            try:
                for chunk in response.iter_bytes():  # as they arrive: the deadline is checked each time
                    file.write(budget.spend(chunk))
            except httpx.TransportError as exc:
                raise self._broke_off(budget, exc) from None
        finally:
            response.close()

    def _call(self, send: Callable[[], httpx.Response]) -> dict[str, Any]:
        retrying = tenacity.Retrying(sleep=self._sleep, **self._retry_policy())
        return retrying(lambda: self._parse(self._send(send)))

    def _send(self, send: Callable[[], httpx.Response], budget: Budget | None = None) -> httpx.Response:
        try:
            return send()
        except (httpx.TransportError, httpx.InvalidURL, ValueError) as exc:
            raise self._failed(exc, budget) from None


class AsyncGraphClient(GraphBase):
    """The same client on ``httpx.AsyncClient``, for asyncio senders."""

    _http: httpx.AsyncClient

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **options: Any) -> None:
        super().__init__(**options)
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **self._client_options)

    async def aclose(self) -> None:
        """Close the underlying connection pool."""
        await self._http.aclose()

    async def upload(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str,
                     ttl_minutes: int | None = None) -> str:
        """POST the file as streamed multipart; return its media ID."""
        url, data, (name, part_type) = self._upload_request(path, mime_type, phone_number_id, ttl_minutes)

        async def send() -> httpx.Response:
            # Reopened per attempt (a retry starts at byte 0); opened and read in threads.
            body = await asyncio.to_thread(FileBody.open, path, data, name, part_type)
            try:
                return await self._http.post(url, content=body, headers=body.headers)
            except Exception:
                changed = await asyncio.to_thread(body.changed, path)
                if changed is None:
                    raise
                raise changed from None
            finally:
                await asyncio.to_thread(body.close)

        return self._media_id(await self._call(send))

    async def open_session(self, path: str | os.PathLike[str], mime_type: str, app_id: str) -> str:
        """See :meth:`GraphClient.open_session`."""
        url, params = await asyncio.to_thread(self._session_request, path, mime_type, app_id)
        return self._session_id(await self._call(lambda: self._http.post(url, params=params)))

    async def session_offset(self, session: str, size: int) -> int | None:
        """See :meth:`GraphClient.session_offset`."""
        try:
            return await self._offset(self._session_url(session), size)
        except MediaNotFound:
            return None

    async def _offset(self, url: str, size: int) -> int:
        return self._resume_at(await self._call(lambda: self._http.get(url, headers=SESSION_AUTH)), size)

    async def transfer(self, session: str, path: str | os.PathLike[str], offset: int, size: int,
                       digest: RunningDigest | None = None) -> str:
        """See :meth:`GraphClient.transfer`; the file is read (and hashed) in threads."""
        url, attempts = self._session_url(session), self._max_retries + 1
        while attempts:
            attempts -= 1
            sent = self._send(functools.partial(self._transfer, url, path, offset, size, digest))
            try:
                if handle := self._handle(self._parse(await sent)):
                    return handle
            except MediaRegistryError as exc:
                self._broken(exc, last=not attempts)
            offset = await self._offset(url, size)
        raise self._unfinished(size)

    async def _transfer(self, url: str, path: str | os.PathLike[str], offset: int, size: int,
                        digest: RunningDigest | None) -> httpx.Response:
        file = await asyncio.to_thread(open_at, path, offset, digest)
        try:
            return await self._http.post(url, content=achunks(file, offset, size - offset, digest),
                                         headers=self._transfer_headers(offset, size))
        finally:
            await asyncio.to_thread(file.close)

    async def get_media(self, media_id: str, phone_number_id: str | None = None) -> MediaMetadata:
        """GET ``/{media_id}``: a fresh download URL and the media's facts."""
        payload = await self._call(lambda: self._http.get(
            self._media_url(media_id), params=self._params(phone_number_id)))
        return self._metadata(payload, media_id)

    async def delete(self, media_id: str, phone_number_id: str | None = None) -> None:
        """DELETE ``/{media_id}``; both documented answers count."""
        payload = await self._call(lambda: self._http.delete(
            self._media_url(media_id), params=self._params(phone_number_id)))
        self._check_deleted(payload, media_id)

    async def download_to(self, url: str, file: Sink) -> None:
        """Stream a download URL into ``file``; the same rules as :meth:`GraphClient.download_to`."""
        budget = Budget(self._download_deadline)
        _, response = await afollow(self._download_walk(url), lambda target: self._send(
            functools.partial(self._http.send, self._download_request(target, budget), stream=True), budget))
        try:
            if not response.is_success:
                await response.aread()
            self._check_download(response)
            batches = Batches(file.write)  # hashed and written in a thread
            try:
                async for chunk in response.aiter_bytes():
                    await batches.write(budget.spend(chunk))
                await batches.flush()
            except httpx.TransportError as exc:
                raise self._broke_off(budget, exc) from None
        finally:
            await response.aclose()

    async def _call(self, send: Callable[[], Awaitable[httpx.Response]]) -> dict[str, Any]:
        retrying = tenacity.AsyncRetrying(sleep=self._sleep, **self._retry_policy())

        async def attempt() -> dict[str, Any]:
            return self._parse(await self._send(send))

        return await retrying(attempt)

    async def _send(self, send: Callable[[], Awaitable[httpx.Response]],
                    budget: Budget | None = None) -> httpx.Response:
        try:
            return await send()
        except (httpx.TransportError, httpx.InvalidURL, ValueError) as exc:
            raise self._failed(exc, budget) from None


@contextmanager
def _upload_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """The file to upload, open; SourceChanged when its size changed while it was sent (the
    body no longer matched the Content-Length announced, which the HTTP stack refuses)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        try:
            yield file
        except Exception:
            if os.fstat(file.fileno()).st_size == size:
                raise
            raise changed_while_uploaded(path) from None
