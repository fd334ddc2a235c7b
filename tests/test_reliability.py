"""Evidence that nothing is lost: kill -9 at each step, races, faults and bad input, all with
real processes, a real SQLite file and the FakeGraphAPI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import (
    GraphAPIError,
    MediaRegistry,
    SourceChanged,
    SourceUnreadable,
)
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PDF, PNG, run_cli, unprivileged, wait_for
from registry_db import age_ids, check_consistent, write_lock


def media_ids(db: str | Path, state: str = "current") -> list[str]:
    return registry_db.media_ids(db, state)


@pytest.fixture
def cli_env(cli_env: dict[str, str]) -> dict[str, str]:
    """Hour-long leases: a dead process's lease must be taken over because its owner is gone,
    not because it expired (the next call would then outlast run_cli's 60 s timeout)."""
    return {**cli_env, "MEDIA_REGISTRY_LEASE_SECONDS": "3600"}


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(CLI), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def kill_9(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)  # reaped: its lease is recognisably abandoned


# -- crashes ------------------------------------------------------------------------------


def test_kill_9_while_waiting_to_record_a_new_file(cli_env: dict[str, str], api: FakeGraphAPI,
                                                    make_file: Callable[..., Path]) -> None:
    path, db = make_file("new.png"), cli_env["MEDIA_REGISTRY_DB"]
    run_cli("init", env=cli_env)
    with write_lock(db):
        child = spawn("upload", str(path), env=cli_env)
        time.sleep(1.0)  # it has hashed the file and waits for the lock to record it
        kill_9(child)
    check_consistent(db)
    assert api.uploads == 0
    assert run_cli("upload", str(path), env=cli_env).stdout.split("\t")[1] == "uploaded"
    assert api.uploads == 1


def test_kill_9_during_the_upload_request(cli_env: dict[str, str], api: FakeGraphAPI,
                                          make_file: Callable[..., Path]) -> None:
    path, db = make_file("stalled.png"), cli_env["MEDIA_REGISTRY_DB"]
    api.fail(delay=30, method="POST")
    child = spawn("upload", str(path), env=cli_env)
    wait_for(lambda: api.count("POST") == 1, "the upload to reach the API")
    kill_9(child)
    check_consistent(db)
    assert media_ids(db) == []
    result = run_cli("upload", str(path), env=cli_env)  # run_cli gives up after 60 s
    assert result.stdout.split("\t")[1] == "uploaded"


def test_kill_9_after_the_api_answered_but_before_recording(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    old, new = make_file("old.png"), make_file("new.png")
    db = cli_env["MEDIA_REGISTRY_DB"]
    recorded = run_cli("upload", str(old), env=cli_env).stdout.split("\t")[0]
    api.fail(delay=0.5, method="POST")
    child = spawn("upload", str(new), env=cli_env)
    wait_for(lambda: api.count("POST") == 2, "the upload to reach the API")
    with write_lock(db):
        wait_for(lambda: api.uploads == 2, "the API to accept the upload")
        time.sleep(0.3)  # the child now waits on the lock to record the ID
        kill_9(child)
    check_consistent(db)
    assert media_ids(db) == [recorded]  # what was recorded before is intact
    assert run_cli("upload", str(new), env=cli_env).stdout.split("\t")[1] == "uploaded"
    assert api.uploads == 3  # the killed upload left one orphan ID at the API (see Guarantees)


def test_kill_9_during_a_refresh_record(cli_env: dict[str, str], api: FakeGraphAPI,
                                        make_file: Callable[..., Path]) -> None:
    path, db = make_file("aging.pdf", PDF), cli_env["MEDIA_REGISTRY_DB"]
    old_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    age_ids(db, days_left=2)
    api.fail(delay=0.5, method="POST")
    child = spawn("refresh", env=cli_env)
    wait_for(lambda: api.count("POST") == 2, "the refresh upload")
    with write_lock(db):
        wait_for(lambda: api.uploads == 2, "the API to accept it")
        time.sleep(0.3)
        kill_9(child)
    check_consistent(db)
    assert media_ids(db) == [old_id]
    assert run_cli("upload", str(path), env=cli_env).stdout.startswith(old_id)  # still 2 days
    refreshed = run_cli("refresh", env=cli_env)
    assert refreshed.stdout.startswith(f"refreshed {old_id} -> ")


def test_kill_9_during_a_remote_delete(cli_env: dict[str, str], api: FakeGraphAPI,
                                       make_file: Callable[..., Path]) -> None:
    path, db = make_file("withdrawn.pdf", PDF), cli_env["MEDIA_REGISTRY_DB"]
    media_id = run_cli("upload", str(path), env=cli_env).stdout.split("\t")[0]
    api.fail(delay=30, method="DELETE")
    child = spawn("delete", str(path), env=cli_env)
    wait_for(lambda: api.count("DELETE") == 1, "the DELETE to reach the API")
    kill_9(child)
    check_consistent(db)
    assert media_ids(db, "deleting") == [media_id]  # owed, never served
    assert run_cli("purge", env=cli_env).stdout == f"deleted   {media_id}\n"
    assert not api.live(media_id) and media_ids(db, "deleting") == []
    again = run_cli("upload", str(path), env=cli_env).stdout.split("\t")
    assert again[0] != media_id and again[1] == "uploaded"


def test_kill_9_during_a_download_leaves_no_partial_file(
    cli_env: dict[str, str], api: FakeGraphAPI, tmp_path: Path
) -> None:
    data = sample_media(PDF, size=200_000, salt="inbound")
    media_id = api.add_media(data, PDF)
    out = tmp_path / "inbox"
    api.fail(path="/download/", truncate=50_000, stall=30)
    child = spawn("download", media_id, "--out", str(out), env=cli_env)
    wait_for(lambda: any(out.glob(".partial-*")) if out.exists() else False, "the transfer to start")
    kill_9(child)
    assert [p.name.startswith(".partial-") for p in out.iterdir()] == [True]  # only the temporary
    check_consistent(cli_env["MEDIA_REGISTRY_DB"])
    result = run_cli("download", media_id, "--out", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    (final,) = out.iterdir()  # the orphaned temporary file was swept
    assert final.read_bytes() == data and not final.name.startswith(".")


# -- races --------------------------------------------------------------------------------


def test_32_threads_and_8_processes_on_one_new_file(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path, db = make_file("launch.png"), cli_env["MEDIA_REGISTRY_DB"]
    run_cli("init", env=cli_env)
    api.fail(delay=1.0, method="POST")
    processes = [subprocess.Popen([str(CLI), "upload", str(path)], env=cli_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
    results: list[str] = []
    with MediaRegistry(db=db, token=api.token, phone_number_id=api.phone_number_id,
                       api_base=api.base_url) as registry:
        threads = [threading.Thread(target=lambda: results.append(registry.get_or_upload(path)))
                   for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    ids = set(results) | {out.split("\t")[0] for out in outputs}
    assert len(results) == 32 and len(ids) == 1
    assert api.uploads == 1 and api.count("POST") == 1
    check_consistent(db)


def test_200_files_from_4_processes_make_200_uploads(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    paths = [str(make_file(f"batch/{i:03}.pdf", PDF)) for i in range(200)]
    run_cli("init", env=cli_env)
    orders = [random.Random(seed).sample(paths, len(paths)) for seed in range(4)]
    processes = [subprocess.Popen([str(CLI), "upload", *order], env=cli_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for order in orders]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err for _, err in outputs]
    per_path = {}
    for out, _ in outputs:
        for line in out.splitlines():
            media_id, _, path = line.split("\t")
            assert per_path.setdefault(path, media_id) == media_id
    assert len(per_path) == 200 and api.uploads == 200
    assert sorted(media_ids(cli_env["MEDIA_REGISTRY_DB"])) == sorted(per_path.values())
    check_consistent(cli_env["MEDIA_REGISTRY_DB"])


def test_refresh_racing_senders_hands_out_only_valid_ids(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    paths = [make_file(f"race-{i}.pdf", PDF) for i in range(6)]
    old = {registry.get_or_upload(p) for p in paths}
    age_ids(registry.settings.db, days_left=2)
    api.fail(delay=0.05, method="POST", times=6)
    served: list[str] = []
    done = threading.Event()

    def send() -> None:
        while not done.is_set():
            served.extend(registry.get_or_upload(p) for p in paths)

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    report = registry.refresh_expiring()
    done.set()
    for sender in senders:
        sender.join()
    new = {a.new_media_id for a in report.actions}
    assert report.count("refreshed") == 6 and len(new) == 6
    assert set(served) <= old | new and all(api.live(m) for m in served)
    assert {registry.get_or_upload(p) for p in paths} == new  # superseded IDs are never served
    check_consistent(registry.settings.db)


# -- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500}, {"status": 502}, {"status": 503},
        {"status": 429, "retry_after": "0"}, {"status": 429},
        {"reset": True}, {"status": 400, "code": 2, "transient": True},
        {"delay": 1.5},  # a timeout (the registry's timeout is 0.5 s here)
    ],
    ids=["500", "502", "503", "429-retry-after", "429", "reset", "is_transient", "timeout"],
)
def test_passing_faults_are_retried_and_leave_one_clean_record(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    fault: dict[str, object],
) -> None:
    registry = make_registry(timeout=0.5)
    api.fail(method="POST", **fault)
    outcome = registry.get_or_upload_with_status(make_file("flaky.png"))
    assert outcome.uploaded and api.live(outcome.media_id)
    assert media_ids(registry.settings.db) == [outcome.media_id]
    check_consistent(registry.settings.db)


@pytest.mark.parametrize(
    ("fault", "message"),
    [({"status": 200, "body": b"{not json"}, "not a JSON object"),
     ({"status": 200, "body": b'{"success": true}'}, "sent no media id"),
     ({"status": 503, "times": 10}, "HTTP 503.*try again later")],
    ids=["malformed-json", "no-id", "persistent-503"],
)
def test_lasting_faults_end_in_one_clear_error(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path],
    fault: dict[str, object], message: str,
) -> None:
    api.fail(method="POST", **fault)
    with pytest.raises(GraphAPIError, match=message):
        registry.get_or_upload(make_file("doomed.png"))
    assert media_ids(registry.settings.db) == []
    assert registry_db.count(registry.settings.db, "leases") == 0
    check_consistent(registry.settings.db)


# -- bad input ----------------------------------------------------------------------------


def test_a_symlink_loop(registry: MediaRegistry, api: FakeGraphAPI, tmp_path: Path) -> None:
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(SourceUnreadable, match="Too many levels of symbolic links"):
        registry.get_or_upload(tmp_path / "a")
    assert api.count() == 0


def test_a_fifo_is_not_a_regular_file(registry: MediaRegistry, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SourceUnreadable, match="is not a regular file"):
        registry.get_or_upload(tmp_path / "pipe")


def test_a_file_changed_during_its_upload_is_not_recorded(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("editing.pdf", PDF)
    api.fail(delay=0.5, method="POST")
    threading.Timer(0.2, lambda: path.write_bytes(sample_media(PDF, salt="edited"))).start()
    with pytest.raises(SourceChanged, match="changed while it was read"):
        registry.get_or_upload(path)
    assert media_ids(registry.settings.db) == []
    outcome = registry.get_or_upload_with_status(path)  # the new bytes, hashed afresh
    assert outcome.uploaded and api.media[outcome.media_id].data == path.read_bytes()


def test_an_unreadable_file(cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]) -> None:
    path = make_file("secret.png", PNG)
    path.chmod(0)
    result = subprocess.run(unprivileged(str(CLI), "upload", str(path)), env=cli_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{path}: cannot read the file (Permission denied)" in result.stderr
    assert api.count() == 0


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_registry(cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path],
                              tmp_path: Path, read_only: str) -> None:
    folder = tmp_path / "registry"
    folder.mkdir()
    env = {**cli_env, "MEDIA_REGISTRY_DB": str(folder / "registry.db")}
    run_cli("upload", str(make_file("before.png")), env=env)
    before = (folder / "registry.db").read_bytes()
    (folder / "registry.db").chmod(0o444)
    if read_only == "folder":
        folder.chmod(0o555)
    try:
        result = subprocess.run(unprivileged(str(CLI), "upload", str(make_file("after.png"))), env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        folder.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot be written" in result.stderr and "check the permissions" in result.stderr
    assert (folder / "registry.db").read_bytes() == before
