"""get_or_upload against a real SQLite file and the FakeGraphAPI server."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from freezegun import freeze_time

from media_registry import GraphAPIError, MediaRegistry
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import PDF, PNG


def test_miss_uploads_then_hits_are_served_from_the_registry(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("banner.png")
    first = registry.get_or_upload_with_status(path)
    assert first.uploaded and api.live(first.media_id)
    uploads_seen = api.count("POST")
    for _ in range(3):
        assert registry.get_or_upload_with_status(path) == (first.media_id, False)
    assert api.count() == uploads_seen == 1


def test_the_same_bytes_at_another_path_get_the_same_id(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path], tmp_path: Path
) -> None:
    original = make_file("brochure.pdf", PDF)
    copy = tmp_path / "elsewhere" / "copy.pdf"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    assert registry.get_or_upload(original) == registry.get_or_upload(copy)
    assert api.uploads == 1
    assert sorted(registry.lookup(copy).paths) == sorted([str(original), str(copy)])


def test_a_changed_file_is_uploaded_again(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("menu.png", salt="v1")
    old = registry.get_or_upload(path)
    make_file("menu.png", salt="version two")
    new = registry.get_or_upload(path)
    assert new != old and api.uploads == 2
    assert registry.lookup(path).media_id == new


def test_the_content_is_recorded_readably(registry: MediaRegistry, make_file: Callable[..., Path]) -> None:
    path = make_file("logo.jpg")  # a PNG under a .jpg name
    media_id = registry.get_or_upload(path)
    db = registry.settings.db
    [(mime_type, uploaded_at, expires_at)] = registry_db.query(
        db, "SELECT c.mime_type, m.uploaded_at, m.expires_at FROM media m JOIN contents c USING (sha256) "
            "WHERE m.media_id = ?", media_id)
    live = registry_db.query(db, "SELECT media_id FROM live_media")
    event = registry_db.query(db, "SELECT action, media_id, path FROM events")[0]
    assert mime_type == PNG
    assert uploaded_at.endswith("Z") and datetime.fromisoformat(uploaded_at.replace("Z", "+00:00"))
    assert expires_at > uploaded_at
    assert live == [(media_id,)]
    assert event == ("upload", media_id, str(path))


def test_the_upload_is_multipart_with_the_sniffed_type(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    media_id = registry.get_or_upload(make_file("photo.jpg"))
    assert api.media[media_id].mime_type == PNG
    assert api.media[media_id].data == (Path(registry.lookup(media_id).paths[0])).read_bytes()
    upload = next(r for r in api.received if r.method == "POST")
    assert upload.path == f"/v26.0/{api.phone_number_id}/media"
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert upload.headers["user-agent"].startswith("media-registry/")


# -- expiry -------------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("later", "uploads_again"),
    [
        (timedelta(days=28, hours=23, minutes=59), False),  # just over a day left: served
        (timedelta(days=29), True),  # exactly min_validity left: never served
        (timedelta(days=29, hours=12), True),
    ],
)
def test_an_id_with_less_than_min_validity_left_is_never_served(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path],
    later: timedelta, uploads_again: bool,
) -> None:
    path = make_file("flyer.pdf", PDF)
    with freeze_time(T0) as clock:
        registry = make_registry()
        first = registry.get_or_upload(path)
        clock.move_to(T0 + later)
        again = registry.get_or_upload_with_status(path)
    assert again.uploaded is uploads_again
    assert (again.media_id != first) is uploads_again


@pytest.mark.parametrize(
    ("later", "uploads_again"),
    [(timedelta(days=29, hours=23), False), (timedelta(days=30), True)],
)
def test_the_30_day_boundary_with_a_short_min_validity(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path],
    later: timedelta, uploads_again: bool,
) -> None:
    path = make_file("flyer.pdf", PDF)
    with freeze_time(T0) as clock:
        registry = make_registry(min_validity=60)
        first = registry.get_or_upload(path)
        clock.move_to(T0 + later)
        again = registry.get_or_upload_with_status(path)
    assert again.uploaded is uploads_again
    assert (again.media_id == first) is not uploads_again


# -- single flight ------------------------------------------------------------------------


def test_sixteen_threads_asking_for_new_content_make_one_upload(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("popular.png")
    api.fail(delay=0.3, method="POST")  # keep the first upload in flight while others arrive
    start = threading.Barrier(16)
    results: list[str] = []

    def send() -> None:
        start.wait()
        results.append(registry.get_or_upload(path))

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16 and len(set(results)) == 1
    assert api.uploads == 1 and api.count("POST") == 1


def test_a_lease_left_by_a_dead_process_does_not_block(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    path = make_file("orphan.png")
    registry.get_or_upload(path)  # records the content
    sha256 = registry.lookup(path).sha256
    registry_db.execute(registry.settings.db, "DELETE FROM media")
    registry_db.add_lease(registry.settings.db, sha256, api.phone_number_id,
                          f"{os.uname().nodename}:{dead.stdout.strip()}:1:x",
                          datetime.now(timezone.utc) + timedelta(hours=1))
    assert registry.get_or_upload_with_status(path).uploaded
    assert api.uploads == 2


def test_a_failed_upload_releases_its_lease(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("retry-me.png")
    api.fail(status=400, code=100, message="Invalid parameter")
    with pytest.raises(GraphAPIError, match="Invalid parameter"):
        registry.get_or_upload(path)
    assert registry_db.count(registry.settings.db, "leases") == 0
    assert registry.get_or_upload_with_status(path).uploaded


def test_phone_numbers_have_their_own_ids(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("shared.png")
    api.add_phone_number("222333444")
    first = registry.get_or_upload(path)
    other = registry.get_or_upload(path, phone_number_id="222333444")
    assert first != other and api.media[other].phone_number_id == "222333444"
    assert registry.get_or_upload(path, phone_number_id="222333444") == other
    assert api.uploads == 2


def test_from_env_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, api: FakeGraphAPI, tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    monkeypatch.setenv("WHATSAPP_TOKEN", api.token)
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", api.phone_number_id)
    monkeypatch.setenv("WHATSAPP_API_BASE", api.base_url)
    monkeypatch.setenv("MEDIA_REGISTRY_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("MEDIA_REGISTRY_TTL", "P7D")
    monkeypatch.setenv("MEDIA_REGISTRY_MIN_VALIDITY", "3600")  # durations also take seconds
    with MediaRegistry.from_env() as registry:
        media_id = registry.get_or_upload(make_file("env.png"))
        record = registry.lookup(media_id)
        assert registry.settings.min_validity == timedelta(hours=1)
    assert (tmp_path / "env.db").exists()
    assert record.expires_at - record.uploaded_at == timedelta(days=7)
