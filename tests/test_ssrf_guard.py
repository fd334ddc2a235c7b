"""The service's guard against server-side request forgery: which addresses a URL source may
reach, and hosts refused before any name is resolved. Nothing here connects to a refused
address: the guard's decision is asserted, and the transport behind it records any request."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import httpx
import pytest

from media_registry import AccessDenied, AsyncMediaRegistry, MediaRegistry, UnsafeSourceURL
from media_registry.graph.guard import PublicOnly, is_public
from media_registry.testing import FakeGraphAPI

REFUSED = [
    "64:ff9b::a00:1",        # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",       # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",    # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1::a00:1",      # local-use NAT64 prefix
    "2002:a00:1::1",         # 6to4 of 10.0.0.1
    "2002:c0a8:101::",       # 6to4 of 192.168.1.1
    "::10.0.0.1",            # IPv4-compatible
    "::127.0.0.1",
    "::ffff:0:a00:1",        # IPv4-translated
    "::ffff:10.0.0.1",       # IPv4-mapped
    "fec0::1",               # site-local
    "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "10.0.0.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1",
]
PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_also_when_embedded_in_ipv6(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_also_when_embedded_in_ipv6(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_a_url_to_an_embedded_private_address_is_denied_without_a_request(tmp_path: Path,
                                                                          api: FakeGraphAPI) -> None:
    hops: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        hops.append(str(request.url))
        return httpx.Response(200, content=b"\x89PNG\r\n\x1a\n")

    async def fetch() -> None:
        async with AsyncMediaRegistry(db=tmp_path / "registry.db", token=api.token,
                                      phone_number_id=api.phone_number_id, api_base=api.base_url,
                                      source_transport=PublicOnly(httpx.MockTransport(record))) as reg:
            for host in ("[64:ff9b::a00:1]", "[2002:a00:1::1]", "[::10.0.0.1]", "[fec0::1]"):
                with pytest.raises(AccessDenied, match="a loopback, private or link-local address"):
                    await reg.get_or_upload(f"https://{host}/logo.png")

    asyncio.run(fetch())
    assert hops == [] and api.uploads == 0


@pytest.mark.parametrize("url", ["https://exa%6dple.com/logo.png", "https://[fe80::1%25eth0]/logo.png",
                                 "https://example.com /logo.png", "https://%31%32%37.0.0.1/logo.png"])
def test_a_malformed_host_is_refused_before_it_is_resolved(tmp_path: Path, api: FakeGraphAPI,
                                                           url: str) -> None:
    hops: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        hops.append(str(request.url))
        return httpx.Response(404)

    with MediaRegistry(db=tmp_path / "registry.db", token=api.token, phone_number_id=api.phone_number_id,
                       api_base=api.base_url, source_transport=httpx.MockTransport(record)) as reg:
        with pytest.raises(UnsafeSourceURL, match="the host is not a plain name or address"):
            reg.get_or_upload(url)
    assert hops == [] and api.uploads == 0
