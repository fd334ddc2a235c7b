"""URL sources fetched over HTTP: :class:`SourceFetcher` (sync) and :class:`AsyncSourceFetcher`.

https only (http only to this machine), redirects followed by hand under the same rule,
conditional GETs from a remembered ``ETag``/``Last-Modified``, and a client of their own that
never carries the WhatsApp token. Errors name a URL only by its key form.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

import httpx

from ..content._async_io import Batches
from ..content.sources import Content, Spool, Validators, refuse_credentials, url_key
from ..defaults import DOWNLOAD_DEADLINE, TIMEOUT, USER_AGENT
from ..defaults import URL_IGNORE_QUERY as DEFAULT_URL_IGNORE_QUERY
from ..errors import SourceNotFound, SourceUnavailable, UnsafeSourceURL
from .redirects import MAX_REDIRECTS, Redirects, afollow, follow
from .urls import is_loopback

# A host as it goes to the resolver: a name (IDNs in punycode) or an IPv6 literal. Anything
# else (percent-encoding, a zone ID, spaces) is refused before any name is resolved.
PLAIN_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+")


def check_url(url: str | httpx.URL, label: str) -> httpx.URL:
    """``url`` parsed, if it may be fetched: https, or http to a loopback host, without
    credentials, its host a plain name or address. Raises UnsafeSourceURL (naming it by
    ``label``) before anything is resolved or sent."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # an invalid IDN host fails only here (a UnicodeError)
    except (httpx.InvalidURL, ValueError):
        raise UnsafeSourceURL(f"{label}: not a valid URL; check it") from None
    refuse_credentials(parsed, label)
    if host and not PLAIN_HOST.fullmatch(parsed.raw_host.decode("ascii")):
        raise UnsafeSourceURL(f"{label}: the host is not a plain name or address (percent-encoding, "
                              "a zone ID or a space in it); fix the URL")
    if host and (parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(host))):
        return parsed
    raise UnsafeSourceURL(
        f"{label}: only https:// URLs are fetched (http:// only from this machine); "
        "serve the file over https"
    )


class _FetcherBase:
    """What the sync and async fetchers share: the client's options, the redirect and
    status rules, and error messages that name a URL only by its key form."""

    def __init__(self, *, ignore_query: Iterable[str] = DEFAULT_URL_IGNORE_QUERY,
                 timeout: float = TIMEOUT, deadline: float = DOWNLOAD_DEADLINE, user_agent: str = USER_AGENT) -> None:
        self.ignore_query = tuple(ignore_query)
        self.deadline = deadline  # a whole download, however slowly the server trickles it
        # No auth at all: this client never carries the WhatsApp token, whatever the host.
        self._client_options: dict[str, Any] = {
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "headers": {"User-Agent": user_agent},
            "follow_redirects": False,
        }

    def key(self, url: str | httpx.URL) -> str:
        """:func:`url_key` with this fetcher's ignored query parameters."""
        return url_key(url, self.ignore_query)

    def _request(self, client: httpx.Client | httpx.AsyncClient, url: httpx.URL,
                 known: Validators | None) -> httpx.Request:
        return client.build_request("GET", url, headers=known.headers() if known else None)

    def _walk(self, url: str, label: str) -> Redirects:
        """The redirects from ``url``, each hop under the same rule as the URL itself."""
        return Redirects(
            check_url(url, label),
            hop=lambda target: check_url(target, f"{label} (redirected to {self.key(target)})"),
            too_many=lambda _last: UnsafeSourceURL(f"{label}: more than {MAX_REDIRECTS} redirects; use the final URL"),
        )

    def _unchanged(self, response: httpx.Response, label: str) -> bool:
        """True on 304 (the known version still holds); raises on an error status."""
        if response.status_code == 304:
            return True
        if response.status_code in (404, 410):
            raise SourceNotFound(f"{label}: HTTP {response.status_code}, the URL no longer serves a file; "
                                 "check the URL")
        if not response.is_success:
            raise SourceUnavailable(f"{label}: HTTP {response.status_code} from the server; "
                                    "check the URL and that it is public (or signed)")
        return False

    def _check_deadline(self, ends: float, label: str) -> None:
        if time.monotonic() > ends:
            raise SourceUnavailable(
                f"{label}: the download took longer than {self.deadline:g} s; nothing was kept; "
                "use a faster host or raise MEDIA_REGISTRY_DOWNLOAD_DEADLINE"
            )

    def _spool(self, response: httpx.Response, url: httpx.URL, label: str) -> Spool:
        announced = response.headers.get("Content-Length")
        return Spool(label, PurePosixPath(url.path).suffix,
                     int(announced) if announced and announced.isdigit() else None,
                     Validators.of(response))

    def _unreachable(self, exc: httpx.TransportError, label: str) -> SourceUnavailable:
        if isinstance(exc, httpx.TimeoutException):
            return SourceUnavailable(f"{label}: the server timed out; try again, or raise MEDIA_REGISTRY_TIMEOUT")
        return SourceUnavailable(
            f"{label}: the download failed ({exc.__class__.__name__}); check the URL and the network"
        )


class SourceFetcher(_FetcherBase):
    """Fetches URL sources with ``httpx.Client``. ``transport`` swaps the HTTP transport."""

    def __init__(self, *, transport: httpx.BaseTransport | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._http = httpx.Client(transport=transport, **self._client_options)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def fetch(self, url: str, known: Validators | None = None) -> Content | None:
        """Download ``url`` into a spooled :class:`Content`; None when ``known`` validators
        still hold (HTTP 304). Raises SourceNotFound on 404/410, MediaTooLarge as soon as
        the body is over the limit, SourceUnavailable or UnsafeSourceURL otherwise."""
        label, ends = self.key(url), time.monotonic() + self.deadline
        walk = self._walk(url, label)
        try:
            target, response = follow(walk, lambda hop: self._http.send(self._request(self._http, hop, known),
                                                                        stream=True))
            return self._body(response, target, label, ends)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, label) from None

    def _body(self, response: httpx.Response, url: httpx.URL, label: str, ends: float) -> Content | None:
        try:
            if self._unchanged(response, label):
                response.read()  # empty: reading it keeps the connection for the next request
                return None
            with self._spool(response, url, label) as spool:
                for chunk in response.iter_bytes():  # as they arrive: the deadline is checked each time
                    spool.write(chunk)
                    self._check_deadline(ends, label)
                return spool.finish()
        finally:
            response.close()


class AsyncSourceFetcher(_FetcherBase):
    """:class:`SourceFetcher` on ``httpx.AsyncClient``."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._http = httpx.AsyncClient(transport=transport, **self._client_options)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def fetch(self, url: str, known: Validators | None = None) -> Content | None:
        """See :meth:`SourceFetcher.fetch`."""
        label, ends = self.key(url), time.monotonic() + self.deadline
        walk = self._walk(url, label)
        try:
            target, response = await afollow(walk, lambda hop: self._http.send(
                self._request(self._http, hop, known), stream=True))
            return await self._body(response, target, label, ends)
        except httpx.TransportError as exc:
            raise self._unreachable(exc, label) from None

    async def _body(self, response: httpx.Response, url: httpx.URL, label: str, ends: float) -> Content | None:
        try:
            if self._unchanged(response, label):
                await response.aread()
                return None
            # Created, written (hashed) and finished in threads: never on the event loop.
            spool = await asyncio.to_thread(self._spool, response, url, label)
            try:
                batches = Batches(spool.write)
                async for chunk in response.aiter_bytes():
                    await batches.write(chunk)
                    self._check_deadline(ends, label)
                await batches.flush()
                return await asyncio.to_thread(spool.finish)
            finally:
                await asyncio.shield(asyncio.to_thread(spool.__exit__, None, None, None))
        finally:
            await response.aclose()
