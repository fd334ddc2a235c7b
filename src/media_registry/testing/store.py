"""The Store contract's conformance suite: every operation, through the contract alone.

A backend passes it by subclassing :class:`StoreConformance` with a ``store`` fixture that
yields a new, empty registry of that backend (and closes it)::

    class TestMyBackend(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path): ...

The suite needs pytest; nothing else of media-registry imports this module.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from ..content.hashing import Fingerprint
from ..errors import RegistryLocked
from ..store import Cutoffs, InboundRow, LeaseStatus, NewMedia, Recorded, Store, UrlSource, new_owner

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
LEASE = timedelta(minutes=5)
PHONE = "106540352242922"
SHA = "a" * 64
OTHER = "b" * 64
URL = "https://cdn.example.com/cards/a.png"


def fp(path: str = "/srv/a.png", size: int = 10) -> Fingerprint:
    """A fingerprint of ``path`` with fixed stat fields."""
    return Fingerprint(path, size, 1, 2, 3, 4)


def new_media(media_id: str, sha256: str = SHA, **changes: Any) -> NewMedia:
    """A media ID issued at NOW, valid for 30 days."""
    return NewMedia(media_id, sha256, PHONE, "image/png", 10, NOW, NOW + 30 * DAY)._replace(**changes)


def upload(store: Store, media_id: str, sha256: str = SHA, owner: str = "me") -> Recorded:
    """Take the lease of ``sha256`` (needing a new ID) and record ``media_id``."""
    assert store.take_lease(sha256, PHONE, owner, NOW, NOW + 60 * DAY, LEASE).status is LeaseStatus.ACQUIRED
    return store.record_upload(new_media(media_id, sha256), owner)


def mapping(checked_at: datetime = NOW, **changes: Any) -> UrlSource:
    """What URL served: SHA, with validators."""
    return UrlSource(URL, SHA, '"v1"', "Sun, 01 Mar 2026 08:00:00 GMT", checked_at, True)._replace(**changes)


class StoreConformance:
    """Every operation of :class:`~media_registry.store.Store`; subclasses give ``store``."""

    @pytest.fixture
    def store(self) -> Store:
        """A new, empty registry of the backend under test."""
        raise NotImplementedError("subclass StoreConformance with a store fixture")

    # -- sending ------------------------------------------------------------------------------

    def test_a_cache_hit_gives_back_datetimes_and_the_current_id(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        assert upload(store, "111") is Recorded.CURRENT
        hit = store.lookup_path(fp(), PHONE, NOW + DAY)
        assert hit is not None and hit.sha256 == SHA and hit.media_id == "111" and hit.recorded_at == NOW
        assert store.lookup_path(fp(), PHONE, NOW + 31 * DAY) == (SHA, None, NOW)
        assert store.lookup_path(fp(size=11), PHONE, NOW) is None
        assert store.lookup_path(fp()._replace(device=9), PHONE, NOW) is None

    def test_huge_stat_fields_round_trip(self, store: Store) -> None:
        big = fp()._replace(inode=(1 << 64) - 1, device=1 << 63)
        store.remember_path(big, SHA, "image/png", NOW)
        assert store.lookup_path(big, PHONE, NOW) is not None
        assert store.source_paths(SHA)[0].fingerprint == big

    def test_a_refreshed_fingerprint_never_revives_a_deleted_content(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        store.refresh_fingerprint(fp(size=12), SHA, NOW + DAY)
        assert store.lookup_path(fp(size=12), PHONE, NOW) == (SHA, None, NOW + DAY)
        store.mark_deleted(SHA, NOW, "delete")
        store.refresh_fingerprint(fp(), SHA, NOW)
        assert store.lookup_path(fp(), PHONE, NOW) is None
        assert store.take_lease(SHA, PHONE, "me", NOW, NOW, LEASE).status is LeaseStatus.DELETED
        store.remember_path(fp(), SHA, "image/png", NOW)  # an explicit send revives it
        assert upload(store, "222") is Recorded.CURRENT

    # -- single flight ------------------------------------------------------------------------

    def test_one_lease_holder_at_a_time(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        me, you = new_owner(), new_owner()  # live owners of this process
        assert store.take_lease(SHA, PHONE, me, NOW, NOW, LEASE).status is LeaseStatus.ACQUIRED
        assert store.take_lease(SHA, PHONE, you, NOW, NOW, LEASE).status is LeaseStatus.WAIT
        assert store.stats(NOW, Cutoffs(NOW)).leases == 1
        store.renew_lease(SHA, PHONE, me, NOW + 2 * LEASE)
        store.release_lease(SHA, PHONE, me)
        store.release_lease(SHA, PHONE, me)  # idempotent
        assert store.stats(NOW, Cutoffs(NOW)).leases == 0
        assert upload(store, "111", owner=you) is Recorded.CURRENT
        assert store.take_lease(SHA, PHONE, me, NOW, NOW, LEASE) == (LeaseStatus.SERVE, "111")
        assert store.take_lease(OTHER, PHONE, "me", NOW, NOW, LEASE).status is LeaseStatus.DELETED  # unknown

    def test_a_new_id_supersedes_the_current_one_and_is_recorded_once(self, store: Store) -> None:
        store.remember_content(SHA, "image/png", 10, NOW)
        upload(store, "111")
        assert store.take_lease(SHA, PHONE, "me", NOW, NOW + 40 * DAY, LEASE).status is LeaseStatus.ACQUIRED
        assert store.record_upload(new_media("222"), "me") is Recorded.CURRENT
        assert store.record_upload(new_media("222"), "me") is Recorded.CURRENT  # a retried call
        assert store.current_media_id(SHA, PHONE, NOW) == "222"
        assert [e.media_id for e in store.events(SHA) if e.action == "upload"] == ["111", "222"]
        assert store.stats(NOW, Cutoffs(NOW)).superseded_ids == 1

    def test_deletion_wins_over_an_upload_in_flight(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        assert store.take_lease(SHA, PHONE, "me", NOW, NOW, LEASE).status is LeaseStatus.ACQUIRED
        store.mark_deleted(SHA, NOW, "delete")  # while the upload is in flight
        assert store.stats(NOW, Cutoffs(NOW)).leases == 0  # the delete revoked the lease
        assert store.record_upload(new_media("333"), "me") is Recorded.CONTENT_DELETED
        assert [row.media_id for row in store.pending_deletes(SHA)] == ["333"]
        assert store.lookup_path(fp(), PHONE, NOW) is None
        assert store.take_lease(SHA, PHONE, "you", NOW, NOW, LEASE).status is LeaseStatus.DELETED

    def test_an_upload_from_before_a_delete_stays_owed_when_sent_again(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        assert store.take_lease(SHA, PHONE, "me", NOW, NOW, LEASE).status is LeaseStatus.ACQUIRED
        store.mark_deleted(SHA, NOW, "delete")
        store.remember_path(fp(), SHA, "image/png", NOW)  # sent again meanwhile
        assert store.record_upload(new_media("333"), "me") is Recorded.CONTENT_DELETED
        assert store.current_media_id(SHA, PHONE, NOW) is None

    # -- lifecycle ----------------------------------------------------------------------------

    def test_expiring_ids_by_their_number_s_cutoff(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        upload(store, "111")
        assert [m.media_id for m in store.expiring_media(Cutoffs(NOW + 31 * DAY))] == ["111"]
        assert store.expiring_media(Cutoffs(NOW + 29 * DAY)) == []
        narrower = Cutoffs(NOW + 31 * DAY, ((PHONE, NOW + 29 * DAY),))
        assert store.expiring_media(narrower) == []
        assert store.stats(NOW, narrower).expiring_ids == 0
        assert store.stats(NOW, Cutoffs(NOW + 31 * DAY)).by_phone_number[PHONE] == (1, 1, 0)
        assert [m.media_id for m in store.expired_media(NOW + 30 * DAY)] == ["111"]
        store.mark_deleted(SHA, NOW, "delete")
        assert store.expiring_media(Cutoffs(NOW + 31 * DAY)) == []

    def test_vanished_sources_delete_a_content_only_when_none_is_left(self, store: Store) -> None:
        store.remember_path(fp("/srv/a.png"), SHA, "image/png", NOW)
        store.remember_path(fp("/srv/b.png"), SHA, "image/png", NOW + DAY)
        assert [s.fingerprint.path for s in store.source_paths(SHA)] == ["/srv/b.png", "/srv/a.png"]
        assert store.sourced_contents() == [SHA]
        assert not store.forget_vanished(SHA, ["/srv/a.png"], NOW)
        assert store.forget_vanished(SHA, ["/srv/b.png"], NOW)
        assert store.sourced_contents() == [] and store.source_paths(SHA) == []
        assert [e.action for e in store.events(SHA)] == ["vanished", "vanished", "delete"]
        assert not store.forget_vanished(SHA, [], NOW)  # deleted already

    def test_a_url_keeps_a_content_whose_files_vanished(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        store.remember_url(mapping())
        assert not store.forget_vanished(SHA, ["/srv/a.png"], NOW)
        assert store.resolve(SHA) == SHA and store.stats(NOW, Cutoffs(NOW)).deleted_contents == 0

    def test_each_owed_delete_is_claimed_then_forgotten(self, store: Store) -> None:
        store.remember_content(SHA, "image/png", 10, NOW)
        upload(store, "111")
        store.remember_content(OTHER, "image/png", 10, NOW)
        upload(store, "222", OTHER)
        store.mark_deleted(SHA, NOW, "delete")
        store.mark_deleted(OTHER, NOW, "delete")
        assert [row.media_id for row in store.claim_deletes(SHA, LEASE)] == ["111"]
        assert [(r.media_id, r.mime_type, r.state) for r in store.claim_deletes(None, LEASE)] == [
            ("111", "image/png", "deleting"), ("222", "image/png", "deleting")]  # its own claims
        assert store.stats(NOW, Cutoffs(NOW)).pending_deletes == 2
        store.forget_media("111", NOW, "deleted", "DELETE answered 200")
        store.forget_media("111", NOW, "deleted")  # unknown: ignored
        assert [row.media_id for row in store.claim_deletes(None, LEASE)] == ["222"]
        assert store.events(SHA)[-1][1:] == ("deleted", "111", PHONE, None, "DELETE answered 200")

    # -- sources beyond paths ------------------------------------------------------------------

    def test_url_mappings_round_trip(self, store: Store) -> None:
        store.remember_content(SHA, "image/png", 10, NOW)
        upload(store, "111")
        assert store.url_source(URL) is None
        store.remember_url(mapping())
        assert store.url_source(URL) == mapping() and store.url_sources(SHA) == [mapping()]
        store.touch_url(URL, NOW + timedelta(minutes=7))
        assert store.url_source(URL) == mapping(NOW + timedelta(minutes=7))
        store.remember_url(mapping(etag='"v2"', refetchable=False))
        assert store.url_sources(SHA) == [mapping(etag='"v2"', refetchable=False)]
        assert store.url_hit(URL, PHONE, NOW + DAY, NOW - timedelta(minutes=5)) == "111"
        assert store.url_hit(URL, PHONE, NOW + DAY, NOW + timedelta(minutes=7)) is None  # checked too long ago
        assert store.url_hit(URL, PHONE, NOW + 31 * DAY, NOW) is None
        assert store.url_hit(URL, "999", NOW, NOW - timedelta(minutes=5)) is None  # another number
        store.forget_url(URL, NOW, "the URL answered 404/410")
        store.forget_url(URL, NOW, "again")  # already gone: nothing to do
        assert store.url_source(URL) is None and store.current_media_id(SHA, PHONE, NOW) == "111"
        assert [(e.path, e.detail) for e in store.events(SHA) if e.action == "forget url"] == [
            (URL, "the URL answered 404/410")]
        store.remember_url(mapping())
        store.mark_deleted(SHA, NOW, "delete")  # a deleted content loses its URL mappings
        assert store.url_source(URL) is None and store.url_sources(SHA) == []
        store.remember_content(SHA, "image/png", 10, NOW)  # sent again: the deletion mark is cleared
        assert store.take_lease(SHA, PHONE, "me2", NOW, NOW + DAY, LEASE).status is LeaseStatus.ACQUIRED

    def test_an_invalidated_id_is_never_served_and_an_owed_delete_stays_owed(self, store: Store) -> None:
        store.remember_content(SHA, "image/png", 10, NOW)
        upload(store, "111")
        store.remember_url(mapping())
        assert store.invalidate_media("111", NOW, "Meta refused it at send time")
        assert not store.invalidate_media("404", NOW, "unknown")
        assert store.current_media_id(SHA, PHONE, NOW) is None
        assert store.url_hit(URL, PHONE, NOW, NOW - timedelta(minutes=1)) is None
        assert [(e.action, e.media_id, e.detail) for e in store.events(SHA) if e.action == "invalidate"] == [
            ("invalidate", "111", "Meta refused it at send time")]
        assert store.take_lease(SHA, PHONE, "you", NOW, NOW, LEASE).status is LeaseStatus.ACQUIRED
        assert [row.state for row in store.expired_media(NOW + 31 * DAY)] == ["invalidated"]
        store.mark_deleted(SHA, NOW, "delete")
        assert store.invalidate_media("111", NOW, "refused")
        assert [row.media_id for row in store.pending_deletes(SHA)] == ["111"]

    # -- inbound media and reading for people ----------------------------------------------------

    def test_an_inbound_download_is_recorded_once_and_logged(self, store: Store) -> None:
        row = InboundRow("777", SHA, "image/png", 10, "/srv/in/777.png", NOW)
        store.record_inbound(row, "verified")
        store.record_inbound(row._replace(path="/srv/in/again.png"))
        assert [(e.action, e.media_id, e.path) for e in store.events(SHA)] == [
            ("download", "777", "/srv/in/777.png"), ("download", "777", "/srv/in/again.png")]

    def test_a_path_a_media_id_or_a_sha256_resolves(self, store: Store) -> None:
        store.remember_path(fp(), SHA, "image/png", NOW)
        upload(store, "111")
        assert store.resolve("/srv/a.png") == store.resolve("111") == store.resolve(SHA.upper()) == SHA
        assert store.resolve("/srv/none.png") is None
        store.remember_content(OTHER, "image/png", 10, NOW)
        assert store.sha256s_starting_with("", 5) == [SHA, OTHER]
        assert store.sha256s_starting_with("b", 5) == [OTHER] and store.sha256s_starting_with("c", 5) == []

    def test_rows_come_back_typed(self, store: Store) -> None:
        store.remember_path(fp("/srv/a\nnew line.png"), SHA, "image/png", NOW)
        store.remember_path(fp("/srv/b.png"), SHA, "image/png", NOW + timedelta(seconds=1))
        upload(store, "111")
        [row] = store.content_rows()
        assert sorted(row.paths) == ["/srv/a\nnew line.png", "/srv/b.png"]
        assert (row.media_id, row.uploaded_at, row.expires_at, row.deleted_at) == ("111", NOW, NOW + 30 * DAY, None)
        assert [r.media_id for r in store.content_rows(expiring_before=NOW + 31 * DAY)] == ["111"]
        assert list(store.content_rows(expiring_before=NOW + 29 * DAY)) == []
        assert [r.sha256 for r in store.content_rows(sha256=SHA)] == [SHA]
        assert list(store.content_rows(sha256=OTHER)) == []
        stats = store.stats(NOW, Cutoffs(NOW + 3 * DAY))
        assert (stats.contents, stats.paths, stats.live_ids, stats.uploads) == (1, 2, 1, 1)

    def test_one_daemon_at_a_time(self, store: Store) -> None:
        with store.backend.daemon_lock():
            with pytest.raises(RegistryLocked), store.backend.daemon_lock():
                pass  # pragma: no cover
        with store.backend.daemon_lock():
            pass
