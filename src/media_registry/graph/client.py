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
from ..models import MediaMetadata
from .base import Budget, GraphBase
from .redirects import afollow, follow


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
