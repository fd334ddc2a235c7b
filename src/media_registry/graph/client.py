"""The Graph API client: upload, get, delete media over httpx, with retries.

:class:`GraphClient` (sync) and :class:`AsyncGraphClient` share everything but the I/O.
The client never knows what carries its requests: pass an ``httpx`` transport (e.g.
``httpx.MockTransport``) or point ``api_base`` at :class:`media_registry.testing.FakeGraphAPI`.
The bearer token is attached by :class:`BearerAuth` only to allowed origins, and is
registered with :func:`~media_registry.errors.register_secret`, so no error shows it.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import os
import re
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO, Any

import httpx
import tenacity

from .._version import __version__
from ..content._async_io import Batches, FileBody, changed_while_uploaded
from ..content.blobs import VerifiedFile
from ..content.media_types import MAX_BYTES
from ..errors import (
    APIUnreachable,
    AuthError,
    ConfigError,
    DownloadError,
    DownloadURLExpired,
    GraphAPIError,
    IntegrityError,
    MediaRegistryError,
    UnsafeDownloadURL,
    from_graph_response,
    register_secret,
)
from ..models import MediaMetadata, graph_id
from ..models import phone_number_id as phone_number_id_checked
from ..setting_checks import check_token

MEDIA_HOST_SUFFIXES = (".fbsbx.com", ".whatsapp.net", ".facebook.com", ".fbcdn.net")
MAX_REDIRECTS = 5
# The largest media WhatsApp takes (documents): nothing larger is ever downloaded.
MAX_MEDIA_BYTES = max(MAX_BYTES.values())
DOWNLOAD_DEADLINE = 300.0
# Meta's OpenAPI spec constrains the User-Agent of Graph API requests to this pattern.
USER_AGENT_PATTERN = re.compile(
    r"^[a-zA-Z0-9\-_]+\/[0-9]+\.[0-9]+\.[0-9]+(;[a-zA-Z0-9\-=\.]+)?(\s+[a-zA-Z0-9\-_]+\/[0-9\-\.]+)?$"
)
USER_AGENT = f"media-registry/{__version__}"
# Some clients report Meta's media hosts refusing requests without a browser-like User-Agent.
DOWNLOAD_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


# -- settings the client checks (config.py reports them under their variable's name) ----


def check_api_base(api_base: str) -> str:
    """``api_base`` without its trailing slash; ValueError unless https, or http on loopback."""
    url = parse_url(api_base, ValueError)
    if url.scheme == "https" and url.host:
        return api_base.rstrip("/")
    if url.scheme == "http" and is_loopback(url.host):
        return api_base.rstrip("/")
    raise ValueError(
        "must start with https:// (http:// only for a local test server on 127.0.0.1, ::1 or "
        "localhost: anything else would carry the token in clear text)"
    )


def check_media_hosts(suffixes: Iterable[str]) -> tuple[str, ...]:
    """Host suffixes, lower-cased; ValueError unless each is a dot and a domain (``.fbsbx.com``):
    ``fbsbx.com`` would also match ``evilfbsbx.com``, an empty one every host."""
    checked = []
    for suffix in suffixes:
        labels = suffix.lower().split(".")
        if labels[0] != "" or len(labels) < 3 or not all(_HOST_LABEL.match(label) for label in labels[1:]):
            raise ValueError(
                f"{suffix!r} is not a host suffix: write a dot and a domain, e.g. \".fbsbx.com\""
            )
        checked.append(suffix.lower())
    return tuple(checked)


def check_user_agent(user_agent: str) -> str:
    """``user_agent`` if it matches the pattern of Meta's OpenAPI spec, else ValueError."""
    if not USER_AGENT_PATTERN.match(user_agent):
        raise ValueError(f"must look like {USER_AGENT!r} (name/X.Y.Z, Meta's spec)")
    return user_agent


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_url(url: str | httpx.URL, error: type[Exception] = UnsafeDownloadURL) -> httpx.URL:
    """``url`` as an httpx.URL with its host decoded; ``error`` when it is malformed (e.g. an
    invalid internationalized host name)."""
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decoding an IDN host is what may fail
    except (httpx.InvalidURL, ValueError) as exc:
        raise error(f"{str(url)[:200]!r} is not a valid URL ({exc}); nothing was sent to it") from None
    return parsed


def _configured(check: Callable[[Any], Any], value: Any, name: str) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"invalid {name}: {exc}") from None


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
        self._suffixes = _configured(check_media_hosts, media_host_suffixes, "MEDIA_REGISTRY_MEDIA_HOSTS")

    def allows(self, url: httpx.URL) -> bool:
        """Whether the token may be sent to ``url``."""
        if origin(url) == self._api_origin:
            return True
        host = url.host.lower()
        return url.scheme == "https" and any(
            host.endswith(suffix) or host == suffix.lstrip(".") for suffix in self._suffixes
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach the header when the destination is allowed."""
        if self.allows(request.url):
            request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(<token hidden>)"


class _GraphBase:
    """What the sync and async clients share: settings, request shapes, answer parsing,
    retry policy, error mapping and the host allowlist. Subclasses only do the I/O."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        *,
        token: str | None,
        api_base: str,
        user_agent: str = USER_AGENT,
        download_user_agent: str = DOWNLOAD_USER_AGENT,
        timeout: float = 60.0,
        download_deadline: float = DOWNLOAD_DEADLINE,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        media_host_suffixes: Iterable[str] = MEDIA_HOST_SUFFIXES,
    ) -> None:
        self.api_base = _configured(check_api_base, api_base, "WHATSAPP_API_BASE")
        self._token = token = _configured(check_token, token, "WHATSAPP_TOKEN")
        register_secret(token, "token")
        self._timeout = timeout
        self._download_deadline = download_deadline
        self._download_headers = {"User-Agent": download_user_agent}
        self._max_retries = max_retries
        self._max_wait = max_wait
        # "Full jitter": a random wait up to backoff * 2**attempt, so retrying senders spread out.
        self._exponential = tenacity.wait_random_exponential(multiplier=backoff, max=max_wait)
        self._auth = BearerAuth(token, self.api_base, media_host_suffixes) if token else None
        self._client_options: dict[str, Any] = {
            "auth": self._auth,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "headers": {"User-Agent": _configured(check_user_agent, user_agent, "MEDIA_REGISTRY_USER_AGENT")},
            "follow_redirects": False,
        }

    # -- request shapes and answers -----------------------------------------------------

    def _upload_request(self, path: str | os.PathLike[str], mime_type: str, phone_number_id: str,
                        ttl_minutes: int | None) -> tuple[str, dict[str, str], tuple[str, str]]:
        """URL, form fields, and (file name, MIME type) of the file part."""
        data = {"messaging_product": "whatsapp", "type": mime_type}
        if ttl_minutes is not None:  # No-Storage numbers: how long Meta keeps the media
            data["ttl_minutes"] = str(ttl_minutes)
        url = f"{self.api_base}/{phone_number_id_checked(phone_number_id)}/media"
        return url, data, (os.path.basename(path), mime_type)

    def _media_url(self, media_id: str) -> str:
        return f"{self.api_base}/{graph_id(media_id, 'media ID')}"

    @staticmethod
    def _params(phone_number_id: str | None) -> dict[str, str] | None:
        return {"phone_number_id": phone_number_id_checked(phone_number_id)} if phone_number_id else None

    @staticmethod
    def _media_id(payload: dict[str, Any]) -> str:
        media_id = payload.get("id")
        if not isinstance(media_id, str) or not media_id.isdigit():
            raise GraphAPIError(
                "Graph API accepted the upload but sent no media id (digits); try again, and "
                "report it if it persists"
            )
        return media_id

    @staticmethod
    def _metadata(payload: dict[str, Any], media_id: str) -> MediaMetadata:
        try:
            metadata = MediaMetadata.model_validate(payload)
        except ValueError as exc:
            raise GraphAPIError(
                f"Graph API sent unexpected metadata for media {media_id} ({exc.__class__.__name__}); "
                "check WHATSAPP_API_BASE"
            ) from None
        if metadata.file_size > MAX_MEDIA_BYTES:
            raise DownloadError(
                f"media {media_id} announces {metadata.file_size:,} bytes, over WhatsApp's largest "
                f"media size ({MAX_MEDIA_BYTES:,} bytes); refusing to download it"
            )
        return metadata

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
        hinted: float | None = getattr(exc, "retry_after", None)
        if hinted is not None:
            return min(hinted, self._max_wait)
        return self._exponential(state)

    def _failed(self, exc: Exception, budget: _Budget | None) -> MediaRegistryError:
        """What a request that raised ``exc`` (``budget``: of a download) amounts to."""
        if budget is not None:
            budget.check_time()  # a timeout at the deadline is the deadline's doing
        if isinstance(exc, httpx.TransportError):
            return self._unreachable(exc)
        # httpx reads a redirect's Location (an invalid IDN host, say) as the answer arrives.
        if budget is not None:
            return UnsafeDownloadURL(f"the download answered with a malformed redirect ({exc}); "
                                     "the token was not sent there")
        return GraphAPIError(f"the Graph API answered with a malformed redirect ({exc}); "
                             "check WHATSAPP_API_BASE")

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

    def _download_request(self, url: httpx.URL, budget: _Budget) -> httpx.Request:
        """A GET of ``url`` with the download User-Agent and what is left of the deadline;
        UnsafeDownloadURL if the token may not go there, before anything is sent."""
        return self._http.build_request(
            "GET", self._download_target(url), headers=self._download_headers,
            timeout=budget.timeout(self._timeout),
        )

    def _download_target(self, url: httpx.URL) -> httpx.URL:
        """``url`` if the token may go there; else UnsafeDownloadURL, before anything is sent."""
        url = parse_url(url)
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

    def _broke_off(self, budget: _Budget, exc: httpx.TransportError) -> DownloadError:
        budget.check_time()  # a read that timed out at the deadline is the deadline's doing
        return IntegrityError(
            f"the download broke off after {budget.received:,} bytes "
            f"({exc.__class__.__name__}); nothing was kept"
        )


class _Budget:
    """What one download may still take: time until its deadline, bytes up to WhatsApp's
    largest media size (counted as decoded, so a compressed body cannot expand past it)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._ends = time.monotonic() + deadline
        self.received = 0

    def timeout(self, timeout: float) -> httpx.Timeout:
        """The request timeout, shortened to what is left before the deadline."""
        left = max(0.001, min(timeout, self._ends - time.monotonic()))
        return httpx.Timeout(left, connect=min(left, 10.0))

    def spend(self, chunk: bytes) -> bytes:
        """Count a decoded chunk; DownloadError past the cap or the deadline."""
        self.received += len(chunk)
        if self.received > MAX_MEDIA_BYTES:
            raise DownloadError(
                f"the download sent more than {MAX_MEDIA_BYTES:,} bytes, WhatsApp's largest media "
                "size; it was stopped and nothing was kept"
            )
        self.check_time()
        return chunk

    def check_time(self) -> None:
        """DownloadError once the deadline has passed."""
        if time.monotonic() > self._ends:
            raise DownloadError(
                f"the download did not finish within MEDIA_REGISTRY_DOWNLOAD_DEADLINE "
                f"({self._deadline:g} s; {self.received:,} bytes received); nothing was kept; "
                "raise it for large media on a slow link"
            )


class GraphClient(_GraphBase):
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

    def download_to(self, url: str, file: VerifiedFile) -> None:
        """Stream a download URL (with the token) into ``file``, following redirects only
        within the allowlist. Raises UnsafeDownloadURL before sending anything elsewhere, and
        DownloadURLExpired once the URL has lived out its few minutes."""
        budget, target = _Budget(self._download_deadline), parse_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            request = self._download_request(target, budget)
            response = self._send(functools.partial(self._http.send, request, stream=True), budget)
            if not response.is_redirect:
                break
            response.close()
            target = target.join(response.headers["Location"])
        else:
            raise UnsafeDownloadURL(f"more than {MAX_REDIRECTS} redirects from {target.host}; refusing")
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

    def _send(self, send: Callable[[], httpx.Response], budget: _Budget | None = None) -> httpx.Response:
        try:
            return send()
        except (httpx.TransportError, httpx.InvalidURL, ValueError) as exc:
            raise self._failed(exc, budget) from None


class AsyncGraphClient(_GraphBase):
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

    async def download_to(self, url: str, file: VerifiedFile) -> None:
        """Stream a download URL into ``file``; the same rules as :meth:`GraphClient.download_to`."""
        budget, target = _Budget(self._download_deadline), parse_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            request = self._download_request(target, budget)
            response = await self._send(functools.partial(self._http.send, request, stream=True), budget)
            if not response.is_redirect:
                break
            await response.aclose()
            target = target.join(response.headers["Location"])
        else:
            raise UnsafeDownloadURL(f"more than {MAX_REDIRECTS} redirects from {target.host}; refusing")
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
                    budget: _Budget | None = None) -> httpx.Response:
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
