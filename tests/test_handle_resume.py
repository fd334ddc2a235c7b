"""A header handle's broken upload resumed by a later call against the local Graph API: after
a process is killed mid-transfer (kill -9), after a call that gave up, and started over when
Meta no longer knows the session; a new file hashed as it is sent, across a break resumed in
the same call (sync and async registries). The local API counts the bytes it received."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from media_registry import APIUnreachable, AsyncMediaRegistry, MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

from conftest import CLI, PDF, PNG, wait_for


def transfers(api: FakeGraphAPI) -> list[str]:
    """The ``file_offset`` of each transfer the local API received, in order."""
    return [r.headers["file_offset"] for r in api.received if r.method == "POST" and "/upload:" in r.path]


@pytest.mark.sqlite_only  # one real process killed is enough; the store's rules run on both below
def test_a_process_killed_mid_transfer_is_resumed_by_the_next_call(
    cli_env: dict[str, str], make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, tmp_path: Path
) -> None:
    path = tmp_path / "catalogue.pdf"
    path.write_bytes(sample_media(PDF, size=3_000_000, salt="killed"))
    size, broken_at = path.stat().st_size, path.stat().st_size * 40 // 100
    held = threading.Event()
    api.fail(method="POST", path="/upload:", break_at=broken_at, until=held)
    first = subprocess.Popen([str(CLI), "handle", str(path)], env={**cli_env, "WHATSAPP_APP_ID": api.app_id},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: api.transfer_bytes == broken_at, "40% of the file at the local API")
    finally:
        first.kill()  # SIGKILL: no cleanup runs; its claim and its session stay in the registry
        first.wait(30)
        held.set()
    later = datetime.now(timezone.utc) + timedelta(minutes=2)  # past the dead process's lease
    registry = make_registry(app_id=api.app_id, clock=lambda: later)
    handle = registry.get_header_handle(path)
    assert transfers(api) == ["0", str(broken_at)] and api.transfer_bytes == size  # only the rest
    assert api.sessions.count() == 1
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert api.sessions.handles[handle] == sha256  # hashed as sent, the first 40% read back
    assert registry.get_header_handle(path.read_bytes()) == handle and api.sessions.count() == 1


@pytest.mark.parametrize("forgotten", [False, True], ids=["resumed", "meta-forgot-it"])
def test_a_call_that_gave_up_is_resumed_by_the_next_or_started_over(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, forgotten: bool
) -> None:
    registry = make_registry(app_id=api.app_id, max_retries=0)
    data = sample_media(PNG, size=400_000, salt="gave up")
    api.break_transfer_at(100_000)
    with pytest.raises(APIUnreachable):
        registry.get_header_handle(data)
    if forgotten:
        api.sessions.clear()  # Meta no longer knows the session (and the local API forgets its counts)
    handle = registry.get_header_handle(data)
    assert transfers(api) == ["0", "0" if forgotten else "100000"] and api.transfer_bytes == len(data)
    assert api.sessions.count() == 1 and api.sessions.handles[handle] == hashlib.sha256(data).hexdigest()


def test_the_async_registry_hashes_a_new_file_as_it_sends_it(registry_db_value: str, api: FakeGraphAPI,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "menu.pdf"
    path.write_bytes(sample_media(PDF, size=600_000, salt="async file"))
    api.break_transfer_at(250_000)  # resumed in the same call: the blocks sent again are hashed once

    async def main() -> tuple[str, str]:
        async with AsyncMediaRegistry(db=registry_db_value, token=api.token, api_base=api.base_url,
                                      app_id=api.app_id, retry_backoff=0.01) as registry:
            return await registry.get_header_handle(path), await registry.get_header_handle(path.read_bytes())

    made, by_bytes = asyncio.run(main())
    assert made == by_bytes and api.sessions.count() == 1 and api.transfer_bytes == path.stat().st_size
    assert api.sessions.handles[made] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_file_is_hashed_once_across_a_break_resumed_in_the_same_call(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, tmp_path: Path
) -> None:
    path = tmp_path / "brochure.pdf"
    path.write_bytes(sample_media(PDF, size=1_500_000, salt="sync file"))
    registry = make_registry(app_id=api.app_id)
    api.break_transfer_at(700_000)  # inside a block: the block broken off is hashed from the file's bytes
    made = registry.get_header_handle(path)
    assert transfers(api) == ["0", "700000"] and api.transfer_bytes == path.stat().st_size
    assert registry.get_header_handle(path.read_bytes()) == made and api.sessions.count() == 1
    assert api.sessions.handles[made] == hashlib.sha256(path.read_bytes()).hexdigest()
