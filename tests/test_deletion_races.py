"""Deletion wins: a refresh or upload racing a `delete`, each in its own real process on the
same registry, never leaves the deleted content served, nor a live ID at the API that the
registry does not know about. The fake API's per-request delay makes each order
deterministic: the upload (or the remote DELETE) is held in flight while the other runs."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI

import registry_db
from conftest import CLI, PDF, run_cli, wait_for


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def assert_deletion_won(db: str, api: FakeGraphAPI, path: Path, env: dict[str, str]) -> None:
    """Nothing of the content is served, and every live ID at the API is one the registry
    knows (as owing a DELETE at most)."""
    shown = run_cli("show", str(path), env=env)
    assert shown.returncode == 1 and "not in the registry" in shown.stderr  # its path is forgotten
    assert registry_db.media_ids(db, "current") == []
    known = {media_id for media_id, _ in registry_db.media_states(db)}
    live = {media_id for media_id in list(api.media) if api.live(media_id)}
    assert live <= known, f"live at the API but unknown to the registry: {live - known}"
    assert {state for media_id, state in registry_db.media_states(db) if media_id in live} <= {"deleting"}
    registry_db.check_consistent(db)


@pytest.fixture
def expiring(cli_env: dict[str, str], make_file: Callable[..., Path]) -> Path:
    """A file sent long ago whose ID is due for refresh."""
    path = make_file("offer.pdf", PDF)
    assert run_cli("upload", str(path), env=cli_env).returncode == 0
    registry_db.age_ids(cli_env["MEDIA_REGISTRY_DB"], days_left=2)
    return path


@pytest.mark.parametrize("remote_delete", ["succeeds", "fails"])
def test_delete_during_a_refresh_upload(
    cli_env: dict[str, str], api: FakeGraphAPI, expiring: Path, remote_delete: str
) -> None:
    db = cli_env["MEDIA_REGISTRY_DB"]
    if remote_delete == "fails":
        api.fail(status=500, method="DELETE", times=1000)
    held = threading.Event()  # the refresh's upload stays in flight until the delete is done
    api.fail(until=held, method="POST")
    refresh = start("refresh", env=cli_env)
    wait_for(lambda: api.count("POST") == 2, "the refresh upload to be in flight")
    deleted = run_cli("delete", str(expiring), env=cli_env)
    held.set()
    assert deleted.returncode == (0 if remote_delete == "succeeds" else 1), deleted.stderr  # 1: DELETE owed
    code, out, err = finish(refresh)
    assert api.uploads == 2  # the refresh's upload did reach the API ...
    assert_deletion_won(db, api, expiring, cli_env)  # ... and was not recorded as current
    if remote_delete == "succeeds":
        assert registry_db.media_states(db) == []  # and it was DELETEd at once
        assert not any(api.live(media_id) for media_id in api.media)
    else:
        assert len(registry_db.media_ids(db, "deleting")) == 2  # owed, retried by purge
        api.reset()  # the API is back
        assert run_cli("purge", env=cli_env).returncode == 0
        assert registry_db.media_states(db) == []


@pytest.mark.parametrize("remote_delete", ["succeeds", "fails"])
def test_refresh_during_a_delete(
    cli_env: dict[str, str], api: FakeGraphAPI, expiring: Path, remote_delete: str
) -> None:
    db = cli_env["MEDIA_REGISTRY_DB"]
    held = threading.Event()  # the remote DELETE stays in flight until the refresh is done
    if remote_delete == "fails":
        api.fail(status=500, method="DELETE", times=1000, until=held)
    else:
        api.fail(method="DELETE", until=held)
    delete = start("delete", str(expiring), env=cli_env)
    wait_for(lambda: api.count("DELETE") == 1, "the remote DELETE to be in flight")
    refreshed = run_cli("refresh", env=cli_env)
    held.set()
    assert refreshed.returncode == 0, refreshed.stderr
    finish(delete)
    assert api.uploads == 1  # the deleted content was not uploaded again
    assert_deletion_won(db, api, expiring, cli_env)


def test_delete_during_a_first_upload(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    db = cli_env["MEDIA_REGISTRY_DB"]
    path = make_file("quote.pdf", PDF)
    held = threading.Event()  # the upload stays in flight until the delete is done
    api.fail(until=held, method="POST")
    upload = start("upload", str(path), env=cli_env)
    wait_for(lambda: api.count("POST") == 1, "the upload to be in flight")
    wait_for(lambda: registry_db.count(db, "leases") == 1, "the upload to hold its lease")
    deleted = run_cli("delete", str(path), env=cli_env)
    held.set()
    assert deleted.returncode == 0, deleted.stderr
    code, out, err = finish(upload)
    assert code == 1 and "deleted" in err and len(err.strip().splitlines()) == 1
    assert_deletion_won(db, api, path, cli_env)
    assert registry_db.media_states(db) == []  # its ID was DELETEd at once


def test_sending_again_after_the_race_uploads_anew(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    registry = make_registry()
    path = make_file("again.pdf", PDF)
    first = registry.get_or_upload(path)
    registry.delete(path)
    second = registry.get_or_upload(path)  # an explicit send after the delete is honoured
    assert second != first and api.live(second) and not api.live(first)


def test_an_upload_from_before_a_delete_never_replaces_the_file_sent_again(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path], backend: str
) -> None:
    db = cli_env["MEDIA_REGISTRY_DB"]
    path = make_file("menu.pdf", PDF)
    held = threading.Event()  # the first upload stays in flight until the file is sent again
    api.fail(until=held, method="POST")
    stale = start("upload", str(path), env=cli_env)
    wait_for(lambda: api.count("POST") == 1, "the upload to be in flight")
    wait_for(lambda: registry_db.count(db, "leases") == 1, "the upload to hold its lease")
    assert run_cli("delete", str(path), env=cli_env).returncode == 0
    again = start("upload", "-q", str(path), env=cli_env)  # an explicit send after the delete
    if backend == "sqlite":  # the delete freed the lease: the new upload is done first
        code, new_id, err = finish(again)
        held.set()
        assert finish(stale)[0] == 1
    else:  # PostgreSQL: the new upload waits for the claim the first still holds
        held.set()
        assert finish(stale)[0] == 1
        code, new_id, err = finish(again)
    assert code == 0, err
    new_id = new_id.strip()
    assert registry_db.media_ids(db, "current") == [new_id]  # the upload sent after the delete
    assert run_cli("upload", "-q", str(path), env=cli_env).stdout.strip() == new_id
    assert [media_id for media_id in api.media if api.live(media_id)] == [new_id]  # the other DELETEd
