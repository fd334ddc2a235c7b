"""The URL rules every client here follows: what counts as this machine, how a URL is parsed
before anything is sent to it, and what makes two URLs one origin."""

from __future__ import annotations

import ipaddress

import httpx

from ..errors import UnsafeDownloadURL


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` (any case), 127.0.0.0/8 or ::1. Any
    other name may resolve to anything, so it never counts; nor does ``localhost.``, which the
    hosts file may not match, so a resolver would answer it."""
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


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports made explicit, for same-origin checks."""
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    return (url.scheme, url.host, port)
