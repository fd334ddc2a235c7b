"""Files on disk at the edges: download temporaries shared across PID namespaces, what is
already at a download's destination, the daemon's lock file, a full disk, a bad ``--out``."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PDF, run_cli, unprivileged

# A download written by another process through the library's own VerifiedFile: half the
# bytes, then it waits for a line on stdin before writing the rest and renaming into place.
HALF_WRITTEN = textwrap.dedent("""
    import hashlib, sys
    from pathlib import Path
    from media_registry.content.blobs import VerifiedFile
    data = bytes(range(256)) * 400
    destination = Path(sys.argv[1]) / "theirs.bin"
    with VerifiedFile(destination, len(data), hashlib.sha256(data).hexdigest()) as file:
        file.write(data[:50_000])
        print("writing", flush=True)
        sys.stdin.readline()
        file.write(data[50_000:])
    print("done", flush=True)
""")

# A temporary named as a downloader in another PID namespace names it (a PID that does not
# exist here), locked by its live writer as VerifiedFile locks its own.
FOREIGN_TEMPORARY = textwrap.dedent("""
    import fcntl, sys
    with open(sys.argv[1], "wb") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(b"in flight")
        file.flush()
        print("writing", flush=True)
        sys.stdin.readline()
""")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def start_writer(script: str, *args: str) -> subprocess.Popen[str]:
    writer = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    return writer


def finish(writer: subprocess.Popen[str]) -> str:
    out, _ = writer.communicate("go on\n", timeout=60)
    return out


# -- item 5: temporaries of live downloads are never swept -------------------------------


def test_a_download_in_another_pid_namespace_does_not_sweep_a_live_temporary(
    cli_env: dict[str, str], api: FakeGraphAPI, inbox: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to run a download in another PID namespace")
    writer = start_writer(HALF_WRITTEN, str(inbox))
    try:
        (temporary,) = inbox.glob(".partial-*")
        media_id = api.add_media(sample_media(PDF, salt="ours"), PDF)
        # Our download runs where the writer's PID does not exist (as in another container).
        ours = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", str(CLI), "download",
                               media_id, "--out", str(inbox)],
                              env=cli_env, capture_output=True, text=True, timeout=60)
        assert ours.returncode == 0, ours.stderr
        assert temporary.exists()  # the other download's file was left alone
    finally:
        out = finish(writer)
    assert writer.returncode == 0 and out == "done\n"
    assert (inbox / "theirs.bin").read_bytes() == bytes(range(256)) * 400


def test_a_locked_temporary_is_kept_whatever_pid_its_name_carries(
    registry: MediaRegistry, api: FakeGraphAPI, inbox: Path
) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path("/proc").is_dir() else 99_999
    foreign = inbox / f".partial-{pid_max + 1}-abc123"  # no such process on this host
    writer = start_writer(FOREIGN_TEMPORARY, str(foreign))
    try:
        registry.download(api.add_media(sample_media(PDF), PDF), inbox)
        assert foreign.read_bytes() == b"in flight"
    finally:
        finish(writer)


def test_a_temporary_left_unlocked_by_a_killed_download_is_swept(
    registry: MediaRegistry, api: FakeGraphAPI, inbox: Path
) -> None:
    writer = start_writer(HALF_WRITTEN, str(inbox))
    writer.send_signal(signal.SIGKILL)  # the kernel releases its lock
    writer.wait(timeout=30)
    assert len(list(inbox.glob(".partial-*"))) == 1
    result = registry.download(api.add_media(sample_media(PDF), PDF), inbox)
    assert sorted(inbox.iterdir()) == [result.path]


# -- item 6: what is at the destination is verified, never followed ----------------------


def inbound_path(registry: MediaRegistry, media_id: str) -> str:
    return str(registry_db.query(registry.settings.db, "SELECT path FROM inbound WHERE media_id = ?", media_id)[0][0])


@pytest.mark.parametrize("planted", ["the same bytes", "other bytes of the same size"])
def test_a_symlink_at_the_destination_is_replaced_and_its_target_untouched(
    registry: MediaRegistry, api: FakeGraphAPI, inbox: Path, tmp_path: Path, planted: str
) -> None:
    data = sample_media(PDF, size=4000, salt="invoice")
    target = tmp_path / "elsewhere.pdf"
    target.write_bytes(data if planted == "the same bytes" else bytes(len(data)))
    before = target.read_bytes()
    destination = inbox / f"{hashlib.sha256(data).hexdigest()}.pdf"
    destination.symlink_to(target)
    media_id = api.add_media(data, PDF)
    result = registry.download(media_id, inbox)
    assert result.fetched and result.path == destination
    assert not destination.is_symlink() and destination.read_bytes() == data
    assert target.read_bytes() == before
    assert inbound_path(registry, media_id) == str(destination.resolve())


def test_other_bytes_of_the_same_size_at_the_destination_are_replaced(
    registry: MediaRegistry, api: FakeGraphAPI, inbox: Path
) -> None:
    data = sample_media(PDF, size=4000, salt="contract")
    destination = inbox / f"{hashlib.sha256(data).hexdigest()}.pdf"
    destination.write_bytes(b"x" * len(data))
    result = registry.download(api.add_media(data, PDF), inbox)
    assert result.fetched and destination.read_bytes() == data
    assert sorted(inbox.iterdir()) == [destination]


def test_a_folder_at_the_destination_is_one_clear_error(
    cli_env: dict[str, str], api: FakeGraphAPI, inbox: Path
) -> None:
    data = sample_media(PDF, salt="blocked")
    destination = inbox / f"{hashlib.sha256(data).hexdigest()}.pdf"
    destination.mkdir()
    result = run_cli("download", api.add_media(data, PDF), "--out", str(inbox), env=cli_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"media-registry: error: {destination}: cannot be replaced (Is a directory); "
                             "move it away and download again\n")
    assert sorted(inbox.iterdir()) == [destination]


# -- item 7: the daemon's lock never follows a symlink nor truncates a stranger's file ---


@pytest.mark.sqlite_only  # the lock file beside an SQLite registry
@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_the_daemon_refuses_a_lock_path_it_did_not_create(
    cli_env: dict[str, str], tmp_path: Path, planted: str
) -> None:
    run_cli("init", env=cli_env)
    lock = Path(cli_env["MEDIA_REGISTRY_DB"] + ".daemon-lock")
    precious = tmp_path / "precious.txt"
    precious.write_text("a year of notes\n")
    if planted == "symlink":
        lock.symlink_to(precious)
    else:
        lock.write_text("a year of notes\n")
    result = run_cli("daemon", env=cli_env)
    what = {"symlink": "is a symlink, not a daemon lock",
            "file": "holds something other than a daemon lock"}[planted]
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"media-registry: error: {lock}: {what}; remove it, then start the "
                             "daemon again\n")
    assert precious.read_text() == "a year of notes\n"
    assert lock.is_symlink() == (planted == "symlink") and lock.read_text() == "a year of notes\n"


# -- item 9: a full disk and an unusable --out -------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KB tmpfs, unmounted after the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_during_a_download_is_one_clear_line(
    cli_env: dict[str, str], api: FakeGraphAPI, small_disk: Path
) -> None:
    media_id = api.add_media(sample_media(PDF, size=300_000, salt="big"), PDF)
    result = run_cli("download", media_id, "--out", str(small_disk), env=cli_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"media-registry: error: {small_disk}: cannot write the download (No space "
                             "left on device); free some space there, or download to another folder; "
                             "nothing was kept\n")
    assert list(small_disk.iterdir()) == []


def test_out_that_is_a_file_is_one_clear_line(cli_env: dict[str, str], api: FakeGraphAPI,
                                              tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep me\n")
    result = run_cli("download", api.add_media(sample_media(PDF), PDF), "--out", str(out), env=cli_env)
    assert result.returncode == 1
    assert result.stderr == f"media-registry: error: {out}: not a folder; name a folder for the downloads\n"
    assert out.read_text() == "keep me\n"


def test_out_that_is_read_only_is_one_clear_line(cli_env: dict[str, str], api: FakeGraphAPI,
                                                 inbox: Path) -> None:
    inbox.chmod(0o555)
    media_id = api.add_media(sample_media(PDF), PDF)
    result = subprocess.run(unprivileged(str(CLI), "download", media_id, "--out", str(inbox)),
                            env=cli_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == (f"media-registry: error: {inbox}: cannot write the download (Permission "
                             "denied); choose a folder you can write to, or download to another "
                             "folder; nothing was kept\n")
    assert list(inbox.iterdir()) == []
