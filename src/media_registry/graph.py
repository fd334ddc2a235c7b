"""The Graph API client: upload, get, delete media over httpx, with retries.

The client never knows what carries its requests: pass an ``httpx`` transport (e.g.
``httpx.MockTransport``) or point ``api_base`` at :class:`media_registry.testing.FakeGraphAPI`.
The bearer token is attached by :class:`BearerAuth` only to allowed origins, and is redacted
from every message this module raises.
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import httpx
import tenacity

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


class GraphClient:
    """A synchronous Graph API client for the media endpoints.

    ``token`` may be None for a client that only ever serves cache hits; the first request
    then raises AuthError. Retries (``max_retries``) use exponential backoff with jitter and
    honour ``Retry-After`` up to ``max_wait`` seconds; 4xx errors other than rate limits are
    never retried.
    """

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
        transport: httpx.BaseTransport | None = None,
        media_host_suffixes: Iterable[str] = MEDIA_HOST_SUFFIXES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self._token = token
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_wait = max_wait
        # "Full jitter": a random wait up to backoff * 2**attempt, so retrying senders spread out.
        self._exponential = tenacity.wait_random_exponential(multiplier=backoff, max=max_wait)
        self._sleep = sleep
        self._auth = BearerAuth(token, self.api_base, media_host_suffixes) if token else None
        self._http = httpx.Client(
            auth=self._auth,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": user_agent},
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the endpoints ------------------------------------------------------------------

    def upload(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str) -> str:
        """POST the file as streamed multipart to ``/{phone_number_id}/media``; return its ID."""
        url = f"{self.api_base}/{phone_number_id}/media"
        data = {"messaging_product": "whatsapp", "type": mime_type}

        def send() -> httpx.Response:
            with open(path, "rb") as file:  # reopened per attempt: a retry starts at byte 0
                files = {"file": (os.path.basename(path), file, mime_type)}
                return self._http.post(url, data=data, files=files)

        payload = self._call(send)
        media_id = payload.get("id")
        if not isinstance(media_id, str) or not media_id.strip():
            raise GraphAPIError(
                "Graph API accepted the upload but sent no media id; try again, and report it "
                "if it persists"
            )
        return media_id

    def get_media(self, media_id: str, phone_number_id: str | None = None) -> MediaMetadata:
        """GET ``/{media_id}``: a fresh download URL (valid ~5 minutes) and the media's facts."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        payload = self._call(lambda: self._http.get(f"{self.api_base}/{media_id}", params=params))
        try:
            return MediaMetadata.model_validate(payload)
        except ValueError as exc:
            raise GraphAPIError(
                f"Graph API sent unexpected metadata for media {media_id} ({exc.__class__.__name__}); "
                "check WHATSAPP_API_BASE"
            ) from None

    def delete(self, media_id: str, phone_number_id: str | None = None) -> None:
        """DELETE ``/{media_id}``. Both documented answers, ``{"success": true}`` and
        ``{"deleted": true}``, count as done."""
        params = {"phone_number_id": phone_number_id} if phone_number_id else None
        payload = self._call(lambda: self._http.delete(f"{self.api_base}/{media_id}", params=params))
        if not (payload.get("success") or payload.get("deleted")):
            raise GraphAPIError(f"Graph API did not confirm deleting media {media_id}; try again")

    @contextmanager
    def open_download(self, url: str) -> Iterator[Iterator[bytes]]:
        """Stream a media download URL (with the token), following redirects only within the
        allowlist. Raises UnsafeDownloadURL before sending anything elsewhere, and
        DownloadURLExpired when the URL has lived out its few minutes."""
        if self._auth is None:
            raise AuthError("no access token: set WHATSAPP_TOKEN (or pass token=...)")
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            if not self._auth.allows(target):
                raise UnsafeDownloadURL(
                    f"refusing to download from {target.scheme}://{target.host}: not the API's "
                    "origin nor a Meta media host over https; the token was not sent (extend "
                    "MEDIA_REGISTRY_MEDIA_HOSTS only if you trust that host)"
                )
            request = self._http.build_request("GET", target)
            response = self._send(lambda: self._http.send(request, stream=True))
            if not response.is_redirect:
                break
            response.close()
            target = target.join(response.headers["Location"])
        else:
            raise UnsafeDownloadURL(f"more than {MAX_REDIRECTS} redirects from {url}; refusing")
        try:
            if response.status_code in (403, 404, 410):
                raise DownloadURLExpired(f"download URL answered HTTP {response.status_code}")
            if not response.is_success:
                response.read()
                raise self._error(response)
            yield _body(response)
        finally:
            response.close()

    # -- plumbing -----------------------------------------------------------------------

    def _call(self, send: Callable[[], httpx.Response]) -> dict[str, Any]:
        if not self._token:
            raise AuthError("no access token: set WHATSAPP_TOKEN (or pass token=...)")
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception(lambda exc: getattr(exc, "retryable", False)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(lambda: self._parse(self._send(send)))
        except MediaRegistryError as exc:
            message = str(exc)
            if self._token in message:  # an error page echoing the token must not leak it
                exc.args = (message.replace(self._token, "<token>"),)
            raise

    def _send(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        try:
            return send()
        except httpx.TimeoutException:
            raise APIUnreachable(
                f"Graph API at {self.api_base} timed out; check the network, or raise "
                "MEDIA_REGISTRY_TIMEOUT for large files on slow links"
            ) from None
        except httpx.TransportError as exc:
            raise APIUnreachable(
                f"cannot reach the Graph API at {self.api_base} ({exc.__class__.__name__}); "
                "check the network and WHATSAPP_API_BASE"
            ) from None

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
        raise self._error(response, payload)

    def _error(self, response: httpx.Response, payload: Any = None) -> GraphAPIError:
        if payload is None:
            try:
                payload = response.json()
            except ValueError:
                payload = None
        return from_graph_response(
            response.status_code, payload, retry_after(response.headers.get("Retry-After"))
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            return min(hinted, self._max_wait)
        return self._exponential(state)


def _body(response: httpx.Response) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes(CHUNK_SIZE)
    except httpx.TransportError as exc:
        raise IntegrityError(
            f"the download broke off after {response.num_bytes_downloaded:,} bytes "
            f"({exc.__class__.__name__}); nothing was kept"
        ) from None


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
