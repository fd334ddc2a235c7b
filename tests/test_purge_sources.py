"""What purge takes for a vanished source: only "no such file" (ENOENT, ENOTDIR) is; a file
that is there but cannot be read (permission denied, a folder in its place) is reported and
left alone, and refresh skips it; content a URL still serves, or once sent as bytes, never
vanishes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from file_server import FileServer
from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PNG, unprivileged


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A file in a folder its reader may not enter (permissions restored afterwards)."""
    folder = tmp_path / "private"
    folder.mkdir()
    path = folder / "logo.png"
    path.write_bytes(sample_media(PNG, salt="private"))
    yield path
    folder.chmod(0o755)


def run_unprivileged(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(unprivileged(str(CLI), *args), env=env, capture_output=True, text=True, timeout=60)


def test_purge_never_deletes_a_file_it_may_not_read_and_refresh_skips_it(
    cli_env: dict[str, str], api: FakeGraphAPI, locked: Path
) -> None:
    db = cli_env["MEDIA_REGISTRY_DB"]
    uploaded = subprocess.run([str(CLI), "upload", "-q", str(locked)], env=cli_env, capture_output=True,
                              text=True, timeout=60)
    media_id = uploaded.stdout.strip()
    locked.parent.chmod(0)  # stat now fails with EACCES: the file may well still be there
    purged = run_unprivileged("purge", env=cli_env)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("unreadable") and f"{locked}: permission denied" in purged.stdout
    assert api.count("DELETE") == 0 and api.live(media_id)
    assert registry_db.media_ids(db, "current") == [media_id]
    registry_db.age_ids(db, days_left=2)
    refreshed = run_unprivileged("refresh", env=cli_env)
    assert refreshed.returncode == 0, refreshed.stderr
    assert refreshed.stdout.startswith("skipped") and "permission denied" in refreshed.stdout
    assert api.uploads == 1


def test_a_folder_in_place_of_the_file_is_unreadable_not_vanished(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("banner.png")
    media_id = registry.get_or_upload(path)
    path.unlink()
    path.mkdir()
    purged = registry.purge()
    assert [(a.action, a.detail) for a in purged.actions] == [("unreadable", f"{path}: is a directory; pass a file")]
    assert api.live(media_id) and registry.lookup(media_id).state == "current"
    assert registry.purge(dry_run=True).count("unreadable") == 1


def test_a_path_whose_folder_became_a_file_vanished(
    registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "menu.png").write_bytes(sample_media(PNG, salt="menu"))
    media_id = registry.get_or_upload(folder / "menu.png")
    (folder / "menu.png").unlink()
    folder.rmdir()
    folder.write_bytes(b"now a file")  # shared/menu.png: ENOTDIR, no such file
    purged = registry.purge()
    assert [(a.action, a.media_id) for a in purged.actions] == [("vanished", None), ("deleted", media_id)]
    assert not api.live(media_id)


def test_content_a_url_still_serves_never_vanishes(
    registry: MediaRegistry, api: FakeGraphAPI, files: FileServer, make_file: Callable[..., Path]
) -> None:
    path = make_file("card.png")
    media_id = registry.get_or_upload(path)
    assert registry.get_or_upload(files.add("/card.png", path.read_bytes())) == media_id
    path.unlink()
    purged = registry.purge()
    assert [a.action for a in purged.actions] == ["skipped"]
    assert api.count("DELETE") == 0 and registry.lookup(media_id).state == "current"
    assert registry.lookup(media_id).paths == ()  # the vanished path is forgotten
    assert registry.purge().actions == []  # and judged no more


@pytest.mark.parametrize("bytes_first", [True, False], ids=["bytes-first", "file-first"])
def test_content_sent_as_bytes_never_vanishes_with_a_file_of_it(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path], bytes_first: bool
) -> None:
    path = make_file("card.png")
    data = path.read_bytes()
    sends = [lambda: registry.get_or_upload(data), lambda: registry.get_or_upload(path)]
    media_id, same = (send() for send in (sends if bytes_first else sends[::-1]))
    assert same == media_id and api.uploads == 1
    path.unlink()
    assert [a.action for a in registry.purge().actions] == ["skipped"]
    assert api.live(media_id)
    assert registry.get_or_upload_with_status(data) == (media_id, False)


def test_a_delete_ends_what_a_bytes_send_promised(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    now = [datetime.now(timezone.utc)]
    registry = make_registry(clock=lambda: now[0])
    path = make_file("card.png")
    first = registry.get_or_upload(path.read_bytes())
    now[0] += timedelta(seconds=1)  # within one second, a send and a delete keep the content
    registry.delete(first)
    now[0] += timedelta(seconds=1)
    second = registry.get_or_upload(path)  # sent again, from a file only
    path.unlink()
    assert [action.action for action in registry.purge().actions] == ["vanished", "deleted"]
    assert not api.live(first) and not api.live(second)
