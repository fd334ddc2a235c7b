"""The Graph API client: upload, get, delete media over httpx, with retries.

:class:`GraphClient` (sync) and :class:`AsyncGraphClient` share everything but the I/O.
The client never knows what carries its requests: pass an ``httpx`` transport (e.g.
``httpx.MockTransport``) or point ``api_base`` at :class:`media_registry.testing.FakeGraphAPI`.
The bearer token is attached by :class:`BearerAuth` only to allowed origins, and is redacted
from every message this module raises.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import httpx
import tenacity

from .blobs import VerifiedFile
from .errors import (
    APIUnreachable,
    AuthError,
    DownloadURLExpired,
    GraphAPIError,
    IntegrityError,
    MediaRegistryError,
    UnsafeDownloadURL,
    from_graph_response,
)
from .models import MediaMetadata

MEDIA_HOST_SUFFIXES = (".fbsbx.com", ".whatsapp.net", ".facebook.com", ".fbcdn.net")
MAX_REDIRECTS = 5
CHUNK_SIZE = 1 << 20


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports made explicit, for same-origin checks."""
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    return (url.scheme, url.host, port)


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer`` to requests for the API's own origin and Meta's media
    hosts over https, and to nothing else."""

    def __init__(self, token: str, api_base: str, media_host_suffixes: Iterable[str]) -> None:
        self._header = f"Bearer {token}"
        self._api_origin = origin(httpx.URL(api_base))
        self._suffixes = tuple(media_host_suffixes)

    def allows(self, url: httpx.URL) -> bool:
        """Whether the token may be sent to ``url``."""
        if origin(url) == self._api_origin:
            return True
        host = url.host.lower()
        return url.scheme == "https" and any(
            host.endswith(suffix) or host == suffix.lstrip(".") for suffix in self._suffixes
        )

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        """Attach the header when the destination is allowed."""
        if self.allows(request.url):
            request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<token hidden>)"


class _GraphBase:
    """What the sync and async clients share: settings, request shapes, answer parsing,
    retry policy, error mapping and the host allowlist. Subclasses only do the I/O."""

    def __init__(
        self,
        *,
        token: str | None,
        api_base: str,
        user_agent: str = "media-registry",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        media_host_suffixes: Iterable[str] = MEDIA_HOST_SUFFIXES,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._token = token
        self._max_retries = max_retries
        self._max_wait = max_wait
        # "Full jitter": a random wait up to backoff * 2**attempt, so retrying senders spread out.
        self._exponential = tenacity.wait_random_exponential(multiplier=backoff, max=max_wait)
        self._auth = BearerAuth(token, self.api_base, media_host_suffixes) if token else None
        self._client_options: dict[str, Any] = {
            "auth": self._auth,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "headers": {"User-Agent": user_agent},
            "follow_redirects": False,
        }

    # -- request shapes and answers -----------------------------------------------------

    def _upload_request(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str,
                        ttl_minutes: int | None) -> tuple[str, dict[str, str], tuple[str, str]]:
        """URL, form fields, and (file name, MIME type) of the file part."""
        data = {"messaging_product": "whatsapp", "type": mime_type}
        if ttl_minutes is not None:  # No-Storage numbers: how long Meta keeps the media
            data["ttl_minutes"] = str(ttl_minutes)
        return f"{self.api_base}/{phone_number_id}/media", data, (os.path.basename(path), mime_type)

    def _media_url(self, media_id: str) -> str:
        return f"{self.api_base}/{media_id}"

    @staticmethod
    def _params(phone_number_id: str | None) -> dict[str, str] | None:
        return {"phone_number_id": phone_number_id} if phone_number_id else None

    @staticmethod
    def _media_id(payload: dict[str, Any]) -> str:
        media_id = payload.get("id")
        if not isinstance(media_id, str) or not media_id.strip():
            raise GraphAPIError(
                "Graph API accepted the upload but sent no media id; try again, and report it "
                "if it persists"
            )
        return media_id

    @staticmethod
    def _metadata(payload: dict[str, Any], media_id: str) -> MediaMetadata:
        try:
            return MediaMetadata.model_validate(payload)
        except ValueError as exc:
            raise GraphAPIError(
                f"Graph API sent unexpected metadata for media {media_id} ({exc.__class__.__name__}); "
                "check WHATSAPP_API_BASE"
            ) from None

    @staticmethod
    def _check_deleted(payload: dict[str, Any], media_id: str) -> None:
        # The seed page documents {"deleted": true}, the official spec {"success": true}.
        if not (payload.get("success") or payload.get("deleted")):
            raise GraphAPIError(f"Graph API did not confirm deleting media {media_id}; try again")

    # -- retries and errors -------------------------------------------------------------

    def _retry_policy(self) -> dict[str, Any]:
        if not self._token:
            raise AuthError("no access token: set WHATSAPP_TOKEN (or pass token=...)")
        return {
            "stop": tenacity.stop_after_attempt(self._max_retries + 1),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(lambda exc: getattr(exc, "retryable", False)),
            "reraise": True,
        }

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            return min(hinted, self._max_wait)
        return self._exponential(state)

    def _redact(self, exc: MediaRegistryError) -> None:
        message = str(exc)
        if self._token and self._token in message:  # an error page echoing the token
            exc.args = (message.replace(self._token, "<token>"),)

    def _unreachable(self, exc: httpx.TransportError) -> APIUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            return APIUnreachable(
                f"Graph API at {self.api_base} timed out; check the network, or raise "
                "MEDIA_REGISTRY_TIMEOUT for large files on slow links"
            )
        return APIUnreachable(
            f"cannot reach the Graph API at {self.api_base} ({exc.__class__.__name__}); "
            "check the network and WHATSAPP_API_BASE"
        )

    def _parse(self, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success:
            if not isinstance(payload, dict):
                raise GraphAPIError(
                    f"Graph API answered HTTP {response.status_code} with something that is not "
                    "a JSON object; check WHATSAPP_API_BASE",
                    status=response.status_code,
                )
            return payload
        raise from_graph_response(
            response.status_code, payload, retry_after(response.headers.get("Retry-After"))
        )

    # -- downloads ----------------------------------------------------------------------

    def _download_target(self, url: httpx.URL) -> httpx.URL:
        """``url`` if the token may go there; else UnsafeDownloadURL, before anything is sent."""
        if self._auth is None:
            raise AuthError("no access token: set WHATSAPP_TOKEN (or pass token=...)")
        if not self._auth.allows(url):
            raise UnsafeDownloadURL(
                f"refusing to download from {url.scheme}://{url.host}: not the API's origin nor "
                "a Meta media host over https; the token was not sent (extend "
                "MEDIA_REGISTRY_MEDIA_HOSTS only if you trust that host)"
            )
        return url

    def _check_download(self, response: httpx.Response) -> None:
        if response.status_code in (403, 404, 410):
            raise DownloadURLExpired(f"download URL answered HTTP {response.status_code}")
        if not response.is_success:
            self._parse(response)

    def _broke_off(self, response: httpx.Response, exc: httpx.TransportError) -> IntegrityError:
        return IntegrityError(
            f"the download broke off after {response.num_bytes_downloaded:,} bytes "
            f"({exc.__class__.__name__}); nothing was kept"
        )


class GraphClient(_GraphBase):
    """A synchronous Graph API client for the media endpoints.

    ``token`` may be None for a client that only ever serves cache hits; the first request
    then raises AuthError. Retries (``max_retries``) use exponential backoff with jitter and
    honour ``Retry-After`` up to ``max_wait`` seconds; 4xx errors other than rate limits are
    never retried. ``transport`` swaps the HTTP transport (e.g. ``httpx.MockTransport``).
    """

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
            with open(path, "rb") as file:  # reopened per attempt: a retry starts at byte 0
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

    def download_to(self, url: str, file: VerifiedFile) -> None:
        """Stream a download URL (with the token) into ``file``, following redirects only
        within the allowlist. Raises UnsafeDownloadURL before sending anything elsewhere, and
        DownloadURLExpired once the URL has lived out its few minutes."""
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            request = self._http.build_request("GET", self._download_target(target))
            response = self._send(functools.partial(self._http.send, request, stream=True))
            if not response.is_redirect:
                break
            response.close()
            target = target.join(response.headers["Location"])
        else:
            raise UnsafeDownloadURL(f"more than {MAX_REDIRECTS} redirects from {url}; refusing")
        try:
            if not response.is_success:
                response.read()
            self._check_download(response)
            try:
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    file.write(chunk)
            except httpx.TransportError as exc:
                raise self._broke_off(response, exc) from None
        finally:
            response.close()

    def _call(self, send: Callable[[], httpx.Response]) -> dict[str, Any]:
        retrying = tenacity.Retrying(sleep=self._sleep, **self._retry_policy())
        try:
            return retrying(lambda: self._parse(self._send(send)))
        except MediaRegistryError as exc:
            self._redact(exc)
            raise

    def _send(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        try:
            return send()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


class AsyncGraphClient(_GraphBase):
    """The same client on ``httpx.AsyncClient``, for asyncio senders."""

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
            with open(path, "rb") as file:  # reopened per attempt: a retry starts at byte 0
                return await self._http.post(url, data=data, files={"file": (name, file, part_type)})

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

    async def download_to(self, url: str, file: VerifiedFile) -> None:
        """Stream a download URL into ``file``; the same rules as :meth:`GraphClient.download_to`."""
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            request = self._http.build_request("GET", self._download_target(target))
            response = await self._send(functools.partial(self._http.send, request, stream=True))
            if not response.is_redirect:
                break
            await response.aclose()
            target = target.join(response.headers["Location"])
        else:
            raise UnsafeDownloadURL(f"more than {MAX_REDIRECTS} redirects from {url}; refusing")
        try:
            if not response.is_success:
                await response.aread()
            self._check_download(response)
            try:
                async for chunk in response.aiter_bytes(CHUNK_SIZE):
                    file.write(chunk)
            except httpx.TransportError as exc:
                raise self._broke_off(response, exc) from None
        finally:
            await response.aclose()

    async def _call(self, send: Callable[[], Awaitable[httpx.Response]]) -> dict[str, Any]:
        retrying = tenacity.AsyncRetrying(sleep=self._sleep, **self._retry_policy())

        async def attempt() -> dict[str, Any]:
            return self._parse(await self._send(send))

        try:
            return await retrying(attempt)
        except MediaRegistryError as exc:
            self._redact(exc)
            raise

    async def _send(self, send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        try:
            return await send()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
