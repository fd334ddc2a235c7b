"""The one redirect walk, as downloads drive it (sync and async): five hops are followed, a
sixth is refused, and a hop to a host the token may not reach is never requested."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from media_registry.errors import UnsafeDownloadURL
from media_registry.graph.client import AsyncGraphClient, GraphClient

TOKEN = "test-token-for-the-redirect-walk"
START = "https://lookaside.fbsbx.com/start"


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk


def _download(locations: list[str], use_async: bool) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(locations):
            return httpx.Response(302, headers={"Location": locations[len(seen) - 1]})
        return httpx.Response(200, content=b"media")

    options = {"token": TOKEN, "api_base": "https://graph.facebook.com/v26.0",
               "transport": httpx.MockTransport(answer)}
    if use_async:
        async def run() -> None:
            client = AsyncGraphClient(**options)
            try:
                await client.download_to(START, _Sink())  # type: ignore[arg-type]
            finally:
                await client.aclose()
        asyncio.run(run())
    else:
        with GraphClient(**options) as client:
            client.download_to(START, _Sink())  # type: ignore[arg-type]
    return seen


@pytest.mark.parametrize("use_async", [False, True])
def test_five_redirects_are_followed_and_a_sixth_is_refused(use_async: bool) -> None:
    assert len(_download([f"/hop{i}" for i in range(5)], use_async)) == 6
    with pytest.raises(UnsafeDownloadURL, match="more than 5 redirects"):
        _download([f"/hop{i}" for i in range(6)], use_async)


@pytest.mark.parametrize("use_async", [False, True])
@pytest.mark.parametrize("location", ["https://evil.example/x", "HTTPS://EVIL.EXAMPLE/x", "//evil.example/x",
                                      "http://lookaside.fbsbx.com/x", "https://lookaside.fbsbx.com@evil.example/x",
                                      "https://fbsbx.com.evil.example/x", "https://evil.example./x"])
def test_a_hop_the_token_may_not_reach_is_never_requested(location: str, use_async: bool) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": location})

    with pytest.raises(UnsafeDownloadURL), GraphClient(
            token=TOKEN, api_base="https://graph.facebook.com/v26.0", transport=httpx.MockTransport(answer)) as client:
        if use_async:
            async def run() -> None:
                aclient = AsyncGraphClient(token=TOKEN, api_base="https://graph.facebook.com/v26.0",
                                           transport=httpx.MockTransport(answer))
                try:
                    await aclient.download_to(START, _Sink())  # type: ignore[arg-type]
                finally:
                    await aclient.aclose()
            asyncio.run(run())
        else:
            client.download_to(START, _Sink())  # type: ignore[arg-type]
    assert [str(request.url) for request in seen] == [START]
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
