"""The SSRF guard: the transport of URL sources in the service, which reaches public
addresses only, each hop of a redirect included."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from ..errors import AccessDenied, InputError


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
