"""Downloads end: an overall deadline, and never more than WhatsApp's largest media size,
whether announced, streamed or expanded from a compressed body."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from media_registry import AsyncMediaRegistry, DownloadError, MediaRegistry
from media_registry.graph.base import MAX_MEDIA_BYTES
from media_registry.graph.client import GraphClient

API = "https://graph.facebook.com/v26.0"
MEDIA_URL = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=7"
DATA = b"one byte at a time, " * 2


class Drip(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that arrives one byte every 50 ms, as from a server trickling it out."""

    def __iter__(self) -> Iterator[bytes]:
        for byte in DATA:
            time.sleep(0.05)
            yield bytes([byte])

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for byte in DATA:
            await asyncio.sleep(0.05)
            yield bytes([byte])


def media_api(seen: list[httpx.Request], *, file_size: int = len(DATA)) -> Callable[..., httpx.Response]:
    """Graph API metadata for media 7, and a media host that sends its bytes through Drip."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "graph.facebook.com":
            return httpx.Response(200, json={
                "id": "7", "url": MEDIA_URL, "mime_type": "text/plain", "file_size": file_size,
                "sha256": hashlib.sha256(DATA).hexdigest(), "messaging_product": "whatsapp"})
        return httpx.Response(200, headers={"Content-Type": "text/plain"}, stream=Drip())

    return handler


def settings(tmp_path: Path) -> dict[str, object]:
    return {"db": tmp_path / "r.db", "token": "secret-token", "phone_number_id": "1",
            "api_base": API, "max_retries": 0, "download_deadline": 0.3}


def test_a_trickling_download_ends_at_the_deadline(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    with MediaRegistry(**settings(tmp_path), transport=httpx.MockTransport(media_api(seen))) as registry:
        with pytest.raises(DownloadError, match="did not finish within MEDIA_REGISTRY_DOWNLOAD_DEADLINE "
                                                "\\(0.3 s; .* bytes received\\); nothing was kept"):
            registry.download("7", tmp_path / "in")
    assert list((tmp_path / "in").iterdir()) == []
    assert [r.url.host for r in seen] == ["graph.facebook.com", "lookaside.fbsbx.com"]  # not retried


def test_the_deadline_holds_for_asyncio_senders(tmp_path: Path) -> None:
    async def download() -> None:
        async with AsyncMediaRegistry(**settings(tmp_path),
                                      transport=httpx.MockTransport(media_api([]))) as registry:
            await registry.download("7", tmp_path / "in")

    with pytest.raises(DownloadError, match="MEDIA_REGISTRY_DOWNLOAD_DEADLINE"):
        asyncio.run(download())


def test_an_announced_size_over_whatsapps_largest_is_refused_before_fetching(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(media_api(seen, file_size=10 * 10**12))  # 10 TB
    with MediaRegistry(**settings(tmp_path), transport=transport) as registry:
        with pytest.raises(DownloadError, match="announces 10,000,000,000,000 bytes, over WhatsApp's "
                                                "largest media size \\(100,000,000 bytes\\)"):
            registry.download("7", tmp_path / "in")
    assert [r.url.host for r in seen] == ["graph.facebook.com"]


class Sink:
    """Counts what a download writes, keeping none of it."""

    def __init__(self) -> None:
        self.received = 0

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 100 KB that expand to 1 MB more than WhatsApp's largest media."""
    return gzip.compress(bytes(MAX_MEDIA_BYTES + 1_000_000), compresslevel=1)


def test_a_gzip_body_cannot_expand_past_the_cap(gzip_bomb: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        pieces = (gzip_bomb[i:i + 16384] for i in range(0, len(gzip_bomb), 16384))
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=pieces)

    sink = Sink()
    with GraphClient(token="secret-token", api_base=API, transport=httpx.MockTransport(handler)) as graph:
        with pytest.raises(DownloadError, match="sent more than 100,000,000 bytes, WhatsApp's largest media size"):
            graph.download_to(MEDIA_URL, sink)  # type: ignore[arg-type]
    assert len(gzip_bomb) < 1_000_000 and sink.received <= MAX_MEDIA_BYTES
