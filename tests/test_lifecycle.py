"""Refresh before expiry, delete, purge: a whole life on a frozen clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from media_registry import MediaRegistry, NotInRegistry
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import PDF

DAY0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
Day0 = tuple[MediaRegistry, FrozenDateTimeFactory]


@pytest.fixture
def day0(make_registry: Callable[..., MediaRegistry]) -> Iterator[Day0]:
    """A registry whose test runs on a frozen clock, starting on DAY0 (move it with clock)."""
    with freeze_time(DAY0) as clock:
        yield make_registry(), clock


def media_rows(registry: MediaRegistry) -> list[tuple[str, str]]:
    return registry_db.media_states(registry.settings.db)


def test_a_whole_life(day0: Day0, api: FakeGraphAPI,
                      make_file: Callable[..., Path]) -> None:
    path = make_file("catalogue.pdf", PDF)
    registry, clock = day0
    first = registry.get_or_upload(path)

    clock.move_to(DAY0 + timedelta(days=10))
    assert registry.refresh_expiring().actions == []
    assert registry.get_or_upload(path) == first

    clock.move_to(DAY0 + timedelta(days=27, hours=12))
    report = registry.refresh_expiring()
    assert [(a.action, a.media_id) for a in report.actions] == [("refreshed", first)]
    second = report.actions[0].new_media_id
    assert second != first and api.live(second)
    assert registry.get_or_upload(path) == second
    assert media_rows(registry) == [(first, "superseded"), (second, "current")]

    clock.move_to(DAY0 + timedelta(days=31))  # the first ID is dead; the refreshed one is not
    assert not api.live(first)
    assert registry.get_or_upload(path) == second
    purged = registry.purge()
    assert [(a.action, a.media_id) for a in purged.actions] == [("expired", first)]
    assert media_rows(registry) == [(second, "current")]
    assert api.uploads == 2


def test_without_a_refresh_a_dead_id_is_never_served(
    day0: Day0, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("catalogue.pdf", PDF)
    registry, clock = day0
    first = registry.get_or_upload(path)
    clock.move_to(DAY0 + timedelta(days=31))
    again = registry.get_or_upload_with_status(path)
    assert again.uploaded and again.media_id != first and api.live(again.media_id)


def test_refresh_dry_run_changes_nothing(day0: Day0, api: FakeGraphAPI,
                                         make_file: Callable[..., Path]) -> None:
    path = make_file("catalogue.pdf", PDF)
    registry, clock = day0
    first = registry.get_or_upload(path)
    clock.move_to(DAY0 + timedelta(days=28))
    report = registry.refresh_expiring(dry_run=True)
    assert report.dry_run and report.count("refreshed") == 1
    assert "would upload" in report.actions[0].detail
    assert media_rows(registry) == [(first, "current")] and api.uploads == 1


def test_refresh_failures_keep_the_old_id_and_say_why(
    day0: Day0, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("catalogue.pdf", PDF)
    registry, clock = day0
    first = registry.get_or_upload(path)
    clock.move_to(DAY0 + timedelta(days=28))
    api.fail(status=503, times=3)
    report = registry.refresh_expiring()
    assert report.count("failed") == 1 and "HTTP 503" in report.actions[0].detail
    assert registry.get_or_upload(path) == first  # still 2 days left, above min_validity
    assert registry.refresh_expiring().count("refreshed") == 1


def test_refresh_runs_uploads_concurrently(make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI,
                                           make_file: Callable[..., Path]) -> None:
    paths = [make_file(f"doc-{i}.pdf", PDF) for i in range(12)]
    with freeze_time(DAY0, tick=True) as clock:
        registry = make_registry(refresh_concurrency=4)
        old = {registry.get_or_upload(p) for p in paths}
        clock.move_to(DAY0 + timedelta(days=28))
        seen: list[str] = []
        report = registry.refresh_expiring(on_action=lambda a: seen.append(a.action))
    assert report.count("refreshed") == 12 and seen == ["refreshed"] * 12
    assert {a.media_id for a in report.actions} == old
    assert api.uploads == 24


def test_refresh_skips_content_whose_sources_vanished_and_purge_deletes_it(
    day0: Day0, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    kept, gone = make_file("kept.pdf", PDF), make_file("gone.pdf", PDF)
    registry, clock = day0
    kept_id, gone_id = registry.get_or_upload(kept), registry.get_or_upload(gone)
    gone.unlink()
    clock.move_to(DAY0 + timedelta(days=28))
    refreshed = registry.refresh_expiring()
    assert {(a.action, a.media_id) for a in refreshed.actions} == {
        ("refreshed", kept_id), ("skipped", gone_id)}

    dry = registry.purge(dry_run=True)
    assert [a.action for a in dry.actions] == ["vanished"] and api.live(gone_id)
    purged = registry.purge()
    assert [(a.action, a.media_id) for a in purged.actions] == [
        ("vanished", None), ("deleted", gone_id)]
    assert not api.live(gone_id)

    clock.move_to(DAY0 + timedelta(days=29))
    assert registry.refresh_expiring().actions == []  # nothing of it is uploaded again
    assert api.uploads == 3


def test_a_touched_but_unchanged_source_still_counts(
    day0: Day0, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("touched.pdf", PDF)
    registry, clock = day0
    registry.get_or_upload(path)
    path.write_bytes(path.read_bytes())  # same bytes, new mtime
    clock.move_to(DAY0 + timedelta(days=28))
    assert registry.refresh_expiring().count("refreshed") == 1
    assert registry.purge().actions == []


@pytest.mark.parametrize("answer", ["success", "deleted"])
def test_delete_removes_the_id_remotely_and_forgets_the_content(
    tmp_path: Path, make_file: Callable[..., Path], answer: str
) -> None:
    path = make_file("old-offer.pdf", PDF)
    with FakeGraphAPI(delete_answer=answer) as api:
        with MediaRegistry(db=tmp_path / "r.db", token=api.token, api_base=api.base_url,
                           phone_number_id=api.phone_number_id) as registry:
            media_id = registry.get_or_upload(path)
            report = registry.delete(path)
            assert [(a.action, a.media_id) for a in report.actions] == [("deleted", media_id)]
            assert not api.live(media_id)
            assert registry.lookup(path) is None and media_rows(registry) == []
            with pytest.raises(NotInRegistry, match="not in the registry"):
                registry.delete(media_id)
            # An explicit send of the same bytes later may upload them again.
            assert registry.get_or_upload_with_status(path).uploaded


def test_delete_by_sha_or_media_id(registry: MediaRegistry, api: FakeGraphAPI,
                                   make_file: Callable[..., Path]) -> None:
    one, two = make_file("one.pdf", PDF), make_file("two.pdf", PDF)
    id_one, id_two = registry.get_or_upload(one), registry.get_or_upload(two)
    registry.delete(id_one)
    registry.delete(registry.lookup(two).sha256)
    assert not api.live(id_one) and not api.live(id_two) and media_rows(registry) == []


def test_an_id_already_gone_at_the_api_counts_as_deleted(registry: MediaRegistry, api: FakeGraphAPI,
                                                         make_file: Callable[..., Path]) -> None:
    path = make_file("a.pdf", PDF)
    media_id = registry.get_or_upload(path)
    api.media[media_id].deleted = True
    report = registry.delete(path)
    assert report.actions[0].action == "deleted" and "already gone" in report.actions[0].detail


def test_delete_while_the_api_is_down_then_purge(
    day0: Day0, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("withdrawn.pdf", PDF)
    registry, clock = day0
    media_id = registry.get_or_upload(path)
    api.fail(reset=True, times=3, method="DELETE")
    report = registry.delete(path)
    assert [a.action for a in report.actions] == ["pending"]
    assert "cannot reach the Graph API" in report.actions[0].detail
    assert media_rows(registry) == [(media_id, "deleting")]
    assert registry.lookup(media_id).media_id is None  # never served again

    clock.move_to(DAY0 + timedelta(days=28))
    assert registry.refresh_expiring().actions == []  # deleted content is not refreshed
    purged = registry.purge()
    assert [(a.action, a.media_id) for a in purged.actions] == [("deleted", media_id)]
    assert not api.live(media_id) and media_rows(registry) == [] and api.uploads == 1
    assert registry_db.actions(registry.settings.db) == ["upload", "delete", "deleted"]


def test_purge_drops_expired_deletions_without_calling_the_api(
    day0: Day0, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("stale.pdf", PDF)
    registry, clock = day0
    registry.get_or_upload(path)
    api.fail(status=503, times=3, method="DELETE")
    registry.delete(path)
    clock.move_to(DAY0 + timedelta(days=30, seconds=1))
    deletes_before = api.count("DELETE")
    assert [a.action for a in registry.purge().actions] == ["expired"]
    assert api.count("DELETE") == deletes_before and media_rows(registry) == []


def test_stats_and_refresh_agree_on_expiring_for_a_number_with_its_own_ttl(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    phone = api.phone_number_id
    with freeze_time(DAY0) as clock:
        registry = make_registry(ttl_by_phone_number={phone: timedelta(hours=1)})
        registry.get_or_upload(make_file("menu.pdf", PDF))

        def expiring() -> tuple[int, int, int]:
            stats = registry.stats()
            refresh = registry.refresh_expiring(dry_run=True)
            return stats["expiring_ids"], stats["by_phone_number"][phone]["expiring_ids"], len(refresh.actions)

        assert expiring() == (0, 0, 0)  # just uploaded: the hour has barely begun
        clock.move_to(DAY0 + timedelta(minutes=55))  # inside the number's 6-minute window
        assert expiring() == (1, 1, 1)
