"""The fingerprint never serves the wrong file: ctime and device are in it, and git's
"racily clean" rule applies (a fingerprint recorded in the same second as the file's mtime or
ctime is not trusted: the bytes are hashed again)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from media_registry import MediaRegistry
from media_registry.content.hashing import fingerprint
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import PDF, settle


def rewrite_same_size(path: Path, salt: str) -> bytes:
    """Other bytes of the same size, written in place (same inode), mtime put back."""
    before = path.stat()
    data = sample_media(PDF, size=before.st_size, salt=salt)
    assert len(data) == before.st_size and data != path.read_bytes()
    with open(path, "r+b") as file:
        file.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return data


def served_bytes(api: FakeGraphAPI, media_id: str) -> bytes:
    return api.media[media_id].data


def test_a_fingerprint_recorded_in_the_files_second_is_hashed_again(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    # As a filesystem with 1 s timestamps would show it: the rewrite leaves every stat field
    # as recorded, and only the time of recording tells that the fingerprint was racy.
    path = make_file("invoice.pdf", PDF, size=4000)
    registry.get_or_upload(path)
    new_bytes = rewrite_same_size(path, salt="second customer")
    mtime = datetime.fromtimestamp(path.stat().st_mtime_ns // 1_000_000_000, timezone.utc)
    registry_db.set_fingerprint(registry.settings.db, fingerprint(path), recorded_at=mtime)
    assert served_bytes(api, registry.get_or_upload(path)) == new_bytes
    # Hashed again and recorded now: once that second is over, the next call is a hit.
    settle(path)
    uploads = api.uploads
    assert served_bytes(api, registry.get_or_upload(path)) == new_bytes
    assert api.uploads == uploads


def test_a_fingerprint_recorded_later_is_trusted_without_hashing(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    # The same set-up recorded two seconds after the change: the fast path trusts it and
    # does not read the file (which is what makes a hit one stat and one query).
    path = make_file("brochure.pdf", PDF, size=4000)
    first = registry.get_or_upload(path)
    rewrite_same_size(path, salt="unnoticed")
    changed = max(path.stat().st_mtime_ns, path.stat().st_ctime_ns) // 1_000_000_000
    later = datetime.fromtimestamp(changed + 2, timezone.utc)
    registry_db.set_fingerprint(registry.settings.db, fingerprint(path), recorded_at=later)
    assert registry.get_or_upload(path) == first


def test_a_rewrite_that_restores_mtime_is_caught_by_ctime(
    registry: MediaRegistry, api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("menu.pdf", PDF, size=4000)
    settle(path)  # so that the fingerprint is trusted when recorded
    registry.get_or_upload(path)
    new_bytes = rewrite_same_size(path, salt="restored mtime")
    assert served_bytes(api, registry.get_or_upload(path)) == new_bytes


# -- a real filesystem with 1-second timestamps --------------------------------------------


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    """An ext4 image with 128-byte inodes (1 s timestamps), loop-mounted; unmounted after."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 (apt-get install e2fsprogs) to loop-mount ext4")
    image, mount_point = tmp_path / "coarse.img", tmp_path / "coarse"
    mount_point.mkdir()
    with open(image, "wb") as file:
        file.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True
    ).returncode == 0
    if not mounted:
        pytest.skip(f"cannot loop-mount an ext4 image here ({made.stderr.strip() or 'mount refused'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_same_second_rewrites_on_a_coarse_filesystem_never_serve_the_old_id(
    coarse_fs: Path, registry: MediaRegistry, api: FakeGraphAPI
) -> None:
    path = coarse_fs / "invoice.pdf"
    for attempt in range(5):  # each attempt must fit in one wall-clock second
        start = int(time.time())
        while int(time.time()) == start:  # begin right after a second boundary
            time.sleep(0.005)
        first = sample_media(PDF, size=4000, salt=f"customer A {attempt}")
        path.write_bytes(first)
        written = path.stat()
        assert written.st_mtime_ns % 1_000_000_000 == 0  # the filesystem is coarse indeed
        assert served_bytes(api, registry.get_or_upload(path)) == first
        second = sample_media(PDF, size=4000, salt=f"customer B {attempt}")
        with open(path, "r+b") as file:  # in place: same inode, same size
            file.write(second)
        rewritten = path.stat()
        assert served_bytes(api, registry.get_or_upload(path)) == second
        if (rewritten.st_mtime_ns, rewritten.st_ctime_ns) == (written.st_mtime_ns, written.st_ctime_ns):
            return  # the stat could not tell the two apart: only the racily-clean rule did
    pytest.fail("could not fit the rewrite into one second in five attempts")
