"""``GET /v1/media/{sha256}``'s hot path: plain hits answered before the framework, byte for
byte as the endpoint answers them; everything else left to the endpoint. In this process
(httpx's ASGI transport), on both backends (PostgreSQL with its local cache)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from media_registry import AsyncMediaRegistry
from media_registry.app.answers import MediaID
from media_registry.app.lookups import Lookups, lookups_first, media_id_json
from media_registry.app.metrics import Monitor
from media_registry.app.service import Options, create_app
from media_registry.testing import FakeGraphAPI, sample_media

TOKEN = "client-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("expires_at", [
    datetime(2027, 1, 4, 7, 56, 18, tzinfo=timezone.utc),
    datetime(2027, 1, 4, 7, 56, 18, 120000, tzinfo=timezone.utc),
    datetime(2027, 1, 4, 7, 56, 18, 5, tzinfo=timezone(timedelta(hours=2))),
])
@pytest.mark.parametrize("mime_type", ["image/png", 'audio/ogg; codecs="opus"', "x/é\x01\\"])
def test_the_bytes_are_what_pydantic_writes(expires_at: datetime, mime_type: str) -> None:
    sha256 = "AB" * 32
    model = MediaID(media_id="1234", sha256=sha256.lower(), mime_type=mime_type, expires_at=expires_at)
    assert media_id_json(sha256, ("1234", mime_type, expires_at)) == model.model_dump_json().encode()


def test_plain_hits_skip_the_framework_and_answer_as_the_endpoint(
    registry_db_value: str, api: FakeGraphAPI, backend: str
) -> None:
    data = sample_media("image/png", salt="lookups")
    sha256 = hashlib.sha256(data).hexdigest()
    phone = api.phone_number_id
    hit = f"/v1/media/{sha256}"
    # (path, headers, whether the application answers it rather than the lane)
    plain = [(hit, BEARER), (f"{hit}?phone_number_id={phone}", BEARER), (f"/v1/media/{sha256.upper()}", BEARER)]
    other = [(hit, {}), (hit, {"Authorization": f"Bearer {TOKEN}x"}), (hit, {"Authorization": f"bearer {TOKEN}"}),
             (f"{hit}?phone={phone}", BEARER), (f"{hit}?phone_number_id=", BEARER), (f"{hit}x", BEARER),
             (f"/v1/media/{'0' * 64}", BEARER), (f"{hit}?phone_number_id={phone}&phone_number_id=1", BEARER)]

    async def run() -> None:
        async with AsyncMediaRegistry(db=registry_db_value, token=api.token, api_base=api.base_url,
                                      phone_number_id=phone) as registry:
            media_id = await registry.get_or_upload(data)
            app = create_app(registry, Monitor(registry), Options(token=TOKEN))
            through: list[str] = []

            async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
                through.append(scope["type"])
                await app(scope, receive, send)

            lane = lookups_first(counted, Lookups(registry), TOKEN)
            async with client(lane) as fast, client(app) as slow:
                await answered_by_the_lane(fast, through, hit)  # PostgreSQL: once memory holds it
                for path, headers in plain + other:
                    before = len(through)
                    ours, theirs = await fast.get(path, headers=headers), await slow.get(path, headers=headers)
                    assert (ours.status_code, ours.content) == (theirs.status_code, theirs.content), path
                    assert [ours.headers[h] for h in ("content-type", "content-length")] == [
                        theirs.headers[h] for h in ("content-type", "content-length")]
                    assert len(through) - before == ((path, headers) in other), (path, headers)
                assert (await fast.get(hit, headers=BEARER)).json()["media_id"] == media_id
                await registry.invalidate(media_id)  # memory drops it at once, the database no longer has it
                before = len(through)
                assert (await fast.get(hit, headers=BEARER)).status_code == 404
                assert len(through) == before + 1

    asyncio.run(run())


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def answered_by_the_lane(fast: httpx.AsyncClient, through: list[str], path: str) -> None:
    """Wait until a GET of ``path`` is answered without reaching the application."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = len(through)
        assert (await fast.get(path, headers=BEARER)).status_code == 200
        if len(through) == before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the lane never answered the hit")
