"""Template header handles against the local Graph API: made once per content and app
whatever the source, a broken transfer resumed with only the rest sent, a wrong offset
refused, the cache's TTL and invalidate_handle, types refused before any request, and one
upload session for sixteen threads asking at once."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from file_server import FileServer
from media_registry import AsyncMediaRegistry, ConfigError, MediaRegistry, NotInRegistry, UnsupportedMedia
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import PDF, PNG, wait_for

JPEG, MP4 = "image/jpeg", "video/mp4"


@pytest.fixture
def handles(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI) -> MediaRegistry:
    return make_registry(app_id=api.app_id)


def test_the_same_bytes_make_one_handle_under_every_source_kind(
    handles: MediaRegistry, api: FakeGraphAPI, tmp_path: Path, files: FileServer
) -> None:
    data = sample_media(PNG, salt="header")
    path = tmp_path / "header.png"
    path.write_bytes(data)
    handle = handles.get_header_handle(path)
    assert handle.startswith("4::")
    url = files.add("/header.png", data)
    for source in (str(path), data, bytearray(data), io.BytesIO(data), url):
        assert handles.get_header_handle(source) == handle
    assert api.sessions.count() == 1 and api.sessions.bytes_received == len(data)
    assert api.sessions.handles[handle] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mime_type", [PDF, JPEG, PNG, MP4])
def test_each_type_meta_takes_gets_a_handle(handles: MediaRegistry, api: FakeGraphAPI, mime_type: str) -> None:
    handles.get_header_handle(sample_media(mime_type, salt=mime_type))
    (opened,) = [r for r in api.received if r.path.endswith("/uploads")]
    assert opened.path == f"/v26.0/{api.app_id}/uploads"


@pytest.mark.parametrize("mime_type", ["image/webp", "text/plain", "audio/mpeg",
                                       "application/vnd.openxmlformats-officedocument.wordprocessingml.document"])
def test_other_types_are_refused_before_any_request(handles: MediaRegistry, api: FakeGraphAPI,
                                                     tmp_path: Path, mime_type: str) -> None:
    path = tmp_path / "sample"
    path.write_bytes(sample_media(mime_type))
    for source in (path, path.read_bytes()):
        with pytest.raises(UnsupportedMedia, match="a template header sample must be a PDF, JPEG, PNG or MP4"):
            handles.get_header_handle(source)
    assert api.count() == 0


def test_a_transfer_broken_at_40_percent_resumes_sending_only_the_rest(
    handles: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    path = tmp_path / "catalogue.pdf"
    path.write_bytes(sample_media(PDF, size=3_000_000, salt="resume"))
    size = path.stat().st_size
    broken_at = size * 40 // 100
    api.break_transfer_at(broken_at)
    handle = handles.get_header_handle(path)
    assert api.transfer_bytes == size  # 40% before the break, the other 60% after it
    transfers = [r for r in api.received if r.method == "POST" and "/upload:" in r.path]
    assert [r.headers["file_offset"] for r in transfers] == ["0", str(broken_at)]
    assert [r.headers["content-length"] for r in transfers] == [str(size), str(size - broken_at)]
    assert all(r.headers["authorization"] == f"OAuth {api.token}" for r in transfers)
    assert api.count("GET", "/upload:") == 1  # the offset to resume from, asked once
    assert api.sessions.count() == 1 and handle in api.sessions.handles


def test_a_wrong_offset_is_refused(api: FakeGraphAPI) -> None:
    data = sample_media(PNG, size=1000)
    auth = {"Authorization": f"OAuth {api.token}"}
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {api.token}"}) as http:
        session = http.post(f"/{api.app_id}/uploads", params={
            "file_name": "a.png", "file_length": len(data), "file_type": PNG}).json()["id"]
        wrong = http.post(f"/{session}", content=data[10:], headers={**auth, "file_offset": "10"})
        assert wrong.status_code == 400 and "Invalid file_offset '10'" in wrong.json()["error"]["message"]
        assert http.get(f"/{session}", headers=auth).json()["file_offset"] == 0
        done = http.post(f"/{session}", content=data, headers={**auth, "file_offset": "0"})
        assert done.json()["h"].startswith("4::")
        assert http.post(f"/{session}", content=data, headers=auth).status_code == 400  # no offset


def test_the_cache_honours_its_ttl_and_invalidate_handle(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI
) -> None:
    now = [datetime.now(timezone.utc)]
    registry = make_registry(app_id=api.app_id, handle_ttl=3600, clock=lambda: now[0])
    data = sample_media(JPEG, salt="ttl")
    first = registry.get_header_handle(data)
    now[0] += timedelta(minutes=59)
    assert registry.get_header_handle(data) == first and api.sessions.count() == 1
    now[0] += timedelta(minutes=2)
    second = registry.get_header_handle(data)
    assert second != first and api.sessions.count() == 2
    registry.invalidate_handle(second)
    third = registry.get_header_handle(data)
    assert third not in (first, second) and api.sessions.count() == 3
    with pytest.raises(NotInRegistry, match="not in the registry"):
        registry.invalidate_handle(second)
    actions = [event.action for event in registry.store.events(hashlib.sha256(data).hexdigest())]
    assert actions.count("handle") == 3 and actions.count("invalidate_handle") == 1


def test_handles_are_per_app(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI) -> None:
    registry = make_registry(app_id=api.app_id)
    data = sample_media(PNG, salt="apps")
    registry.get_header_handle(data)
    with pytest.raises(ConfigError, match="app ID 999: the Graph API does not know it for this token"):
        registry.get_header_handle(data, app_id="999")  # another app: its own session, refused here
    assert api.sessions.count() == 1


def test_no_app_id_is_one_clear_line(registry: MediaRegistry, api: FakeGraphAPI) -> None:
    with pytest.raises(ConfigError, match="no app ID: set WHATSAPP_APP_ID"):
        registry.get_header_handle(sample_media(PNG))
    assert api.count() == 0


def test_sixteen_threads_asking_for_one_new_handle_make_one_upload_session(
    handles: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    path = tmp_path / "header.mp4"
    path.write_bytes(sample_media(MP4, salt="16 threads"))
    release = threading.Event()
    api.fail(method="POST", path="/upload:", until=release)  # the transfer waits for everyone
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(handles.get_header_handle(path)))
               for _ in range(16)]
    for thread in threads:
        thread.start()
    wait_for(lambda: api.count("POST", "/upload:") == 1, "the one transfer")
    release.set()
    for thread in threads:
        thread.join(30)
    assert len(results) == 16 and len(set(results)) == 1
    assert api.sessions.count() == 1 and api.count("POST", "/uploads") == 1


def test_the_async_registry_makes_and_serves_handles(registry_db_value: str, api: FakeGraphAPI) -> None:
    data = sample_media(PDF, size=200_000, salt="async")
    api.fail(method="POST", path="/upload:", break_at=80_000)

    async def main() -> tuple[str, str]:
        async with AsyncMediaRegistry(db=registry_db_value, token=api.token, api_base=api.base_url,
                                      app_id=api.app_id, retry_backoff=0.01) as registry:
            first = await registry.get_header_handle(data)
            again = await registry.get_header_handle(io.BytesIO(data))
            await registry.invalidate_handle(first)
            return first, again, await registry.get_header_handle(data)

    first, again, anew = asyncio.run(main())
    assert first == again != anew and api.upload_sessions == 2
    assert api.transfer_bytes == 2 * len(data)  # the first broke at 80,000 bytes and sent only the rest
