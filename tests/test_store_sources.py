"""The Store contract for sources beyond paths (URL mappings) and invalidated IDs, on every
backend; and a version-1 registry upgraded to take them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from media_registry.store import LeaseStatus, NewMedia, Store, UrlSource, open_store

import registry_db

V1 = Path(__file__).parent / "data" / "registry-v1.db"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
PHONE = "106540352242922"
SHA = "b" * 64
URL = "https://cdn.example.com/cards/a.png"


@pytest.fixture
def store(registry_db_value: str) -> Iterator[Store]:
    opened = open_store(registry_db_value)
    yield opened
    opened.close()


def uploaded(store: Store, media_id: str, sha256: str = SHA) -> None:
    store.remember_content(sha256, "image/png", 10, NOW)
    outcome = store.take_lease(sha256, PHONE, "me", NOW, NOW + timedelta(days=1), timedelta(minutes=5))
    assert outcome.status is LeaseStatus.ACQUIRED
    store.record_upload(NewMedia(media_id, sha256, PHONE, "image/png", 10, NOW, NOW + timedelta(days=30), URL),
                        "me")


def mapping(checked_at: datetime = NOW, **changes: object) -> UrlSource:
    return UrlSource(URL, SHA, '"v1"', "Sun, 01 Mar 2026 08:00:00 GMT", checked_at, True)._replace(**changes)


def test_url_mappings_round_trip(store: Store) -> None:
    uploaded(store, "111")
    assert store.url_source(URL) is None
    store.remember_url(mapping())
    assert store.url_source(URL) == mapping()
    assert store.url_sources(SHA) == [mapping()]
    store.touch_url(URL, NOW + timedelta(minutes=7))
    assert store.url_source(URL) == mapping(NOW + timedelta(minutes=7))
    store.remember_url(mapping(etag='"v2"', refetchable=False))
    assert store.url_sources(SHA) == [mapping(etag='"v2"', refetchable=False)]


def test_a_url_hit_needs_a_recent_check_and_a_valid_id(store: Store) -> None:
    uploaded(store, "111")
    store.remember_url(mapping())
    assert store.url_hit(URL, PHONE, NOW + timedelta(days=1), NOW - timedelta(minutes=5)) == "111"
    assert store.url_hit(URL, PHONE, NOW + timedelta(days=1), NOW) is None  # checked too long ago
    assert store.url_hit(URL, PHONE, NOW + timedelta(days=31), NOW - timedelta(minutes=5)) is None
    assert store.url_hit(URL, "999", NOW, NOW - timedelta(minutes=5)) is None
    assert store.current_media_id(SHA, PHONE, NOW + timedelta(days=1)) == "111"


def test_forgetting_a_url_keeps_the_content_and_logs_why(store: Store) -> None:
    uploaded(store, "111")
    store.remember_url(mapping())
    store.forget_url(URL, NOW, "the URL answered 404/410")
    store.forget_url(URL, NOW, "again")  # already gone: nothing to do
    assert store.url_source(URL) is None
    assert store.current_media_id(SHA, PHONE, NOW) == "111"
    forgotten = [e for e in store.events(SHA) if e.action == "forget url"]
    assert [(e.path, e.detail) for e in forgotten] == [(URL, "the URL answered 404/410")]


def test_a_deleted_content_loses_its_url_mappings(store: Store) -> None:
    uploaded(store, "111")
    store.remember_url(mapping())
    store.mark_deleted(SHA, NOW, "delete")
    assert store.url_source(URL) is None
    store.forget_media("111", NOW, "deleted")  # the content row goes too: no mapping holds it


def test_an_invalidated_id_is_never_served_and_says_why(store: Store) -> None:
    uploaded(store, "111")
    store.remember_url(mapping())
    assert store.invalidate_media("111", NOW, "Meta refused it at send time")
    assert store.current_media_id(SHA, PHONE, NOW) is None
    assert store.url_hit(URL, PHONE, NOW, NOW - timedelta(minutes=1)) is None
    outcome = store.take_lease(SHA, PHONE, "you", NOW, NOW + timedelta(days=1), timedelta(minutes=5))
    assert outcome.status is LeaseStatus.ACQUIRED  # the next get_or_upload uploads anew
    assert [row.state for row in store.expired_media(NOW + timedelta(days=31))] == ["invalidated"]
    events = [(e.action, e.media_id, e.detail) for e in store.events(SHA) if e.action == "invalidate"]
    assert events == [("invalidate", "111", "Meta refused it at send time")]
    assert not store.invalidate_media("404", NOW, "unknown")


def test_an_id_owing_a_delete_keeps_owing_it(store: Store) -> None:
    uploaded(store, "111")
    store.mark_deleted(SHA, NOW, "delete")
    assert store.invalidate_media("111", NOW, "refused")
    assert [row.media_id for row in store.pending_deletes(SHA)] == ["111"]


def test_sending_content_again_clears_its_deletion_mark(store: Store) -> None:
    uploaded(store, "111")
    store.mark_deleted(SHA, NOW, "delete")
    store.remember_content(SHA, "image/png", 10, NOW)
    outcome = store.take_lease(SHA, PHONE, "me2", NOW, NOW + timedelta(days=1), timedelta(minutes=5))
    assert outcome.status is LeaseStatus.ACQUIRED


def test_a_version_1_registry_takes_url_sources_and_invalidated_ids(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(V1, db)
    current = registry_db.query(db, "SELECT media_id, sha256 FROM media WHERE state = 'current' ORDER BY media_id")
    media_id, sha256 = current[0]
    store = open_store(db)
    try:
        assert store.invalidate_media(media_id, NOW, "refused")
        store.remember_url(mapping(sha256=sha256))
        assert store.url_sources(sha256) == [mapping(sha256=sha256)]
    finally:
        store.close()
    assert registry_db.media_states(db).count((media_id, "invalidated")) == 1
