"""AsyncMediaRegistry and several phone numbers on one registry."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from media_registry import AsyncMediaRegistry, MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PDF, PNG, run_cli

OTHER = "222333444"


@pytest.fixture
def async_registry(registry_db_value: str, api: FakeGraphAPI) -> Callable[..., AsyncMediaRegistry]:
    def make(**overrides: Any) -> AsyncMediaRegistry:
        settings = {"db": registry_db_value, "token": api.token, "api_base": api.base_url,
                    "phone_number_id": api.phone_number_id, "retry_backoff": 0.01, "max_retries": 2}
        return AsyncMediaRegistry(**{**settings, **overrides})

    return make


def leases(db: Path | str) -> int:
    return registry_db.count(db, "leases")


def test_fifty_tasks_on_one_new_file_make_one_upload(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("flyer.png")
    api.fail(delay=0.3, method="POST")

    async def main() -> list[str]:
        async with async_registry() as registry:
            return await asyncio.gather(*(registry.get_or_upload(path) for _ in range(50)))

    ids = asyncio.run(main())
    assert len(ids) == 50 and len(set(ids)) == 1 and api.uploads == 1 and api.count("POST") == 1


def test_the_async_verbs_match_the_sync_ones(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    tmp_path: Path,
) -> None:
    kept, gone = make_file("kept.pdf", PDF), make_file("gone.pdf", PDF)
    inbound = api.add_media(sample_media("image/jpeg"), "image/jpeg")

    async def main() -> None:
        with freeze_time(datetime(2026, 5, 1, tzinfo=timezone.utc), tick=True) as clock:
            async with async_registry() as registry:
                status = await registry.get_or_upload_with_status(kept)
                assert status.uploaded
                assert await registry.get_or_upload(kept) == status.media_id
                gone_id = await registry.get_or_upload(gone)
                assert registry.lookup(kept).media_id == status.media_id
                gone.unlink()
                clock.move_to(datetime(2026, 5, 28, tzinfo=timezone.utc))
                refreshed = await registry.refresh_expiring()
                assert {a.action for a in refreshed.actions} == {"refreshed", "skipped"}
                purged = await registry.purge()
                assert [a.action for a in purged.actions] == ["vanished", "deleted"]
                assert not api.live(gone_id)
                deleted = await registry.delete(kept)
                assert deleted.count("deleted") == 2  # the refreshed ID and the superseded one
                downloaded = await registry.download(inbound, tmp_path / "in")
                assert downloaded.path.read_bytes() == sample_media("image/jpeg")

    asyncio.run(main())


def test_a_task_cancelled_mid_upload_leaves_no_stuck_lease(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("big-offer.png")
    api.fail(delay=2, method="POST")

    async def main() -> None:
        async with async_registry() as registry:
            task = asyncio.create_task(registry.get_or_upload(path))
            while api.count("POST") == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert leases(registry.settings.db) == 0
            assert (await registry.get_or_upload_with_status(path)).uploaded

    asyncio.run(main())


def test_the_event_loop_keeps_running_while_a_big_file_is_hashed(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, tmp_path: Path
) -> None:
    path = tmp_path / "big.pdf"
    path.write_bytes(sample_media(PDF, size=60_000_000, salt="big"))
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(ticker(stop))
        async with async_registry() as registry:
            await registry.get_or_upload(path)
        stop.set()
        await running

    asyncio.run(main())
    assert ticks > 5  # hashing 60 MB in a thread left the loop free to tick


def test_two_numbers_get_two_ids(registry: MediaRegistry, api: FakeGraphAPI,
                                 make_file: Callable[..., Path], cli_env: dict[str, str]) -> None:
    path = make_file("menu.pdf", PDF)
    first = registry.get_or_upload(path)
    second = registry.get_or_upload(path, phone_number_id=OTHER)
    assert first != second and api.uploads == 2
    assert {api.media[first].phone_number_id, api.media[second].phone_number_id} == {
        api.phone_number_id, OTHER}
    listing = run_cli("ls", env=cli_env).stdout.splitlines()[1:]
    assert [line.split()[0] for line in listing] == sorted([api.phone_number_id, OTHER])
    stats = registry.stats()["by_phone_number"]
    assert stats == {api.phone_number_id: {"live_ids": 1, "expiring_ids": 0},
                     OTHER: {"live_ids": 1, "expiring_ids": 0}}
    with freeze_time(datetime.now(timezone.utc) + timedelta(days=28)):
        report = registry.refresh_expiring()
    assert sorted(a.phone_number_id for a in report.actions) == sorted([api.phone_number_id, OTHER])


def test_a_no_storage_number_has_its_own_ttl(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("voice.png", PNG)
    start = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
    with freeze_time(start) as clock:
        registry = make_registry(ttl_by_phone_number={OTHER: "PT1H"})
        short = registry.get_or_upload(path, phone_number_id=OTHER)
        normal = registry.get_or_upload(path)
        assert api.media[short].ttl == timedelta(hours=1) and api.media[normal].ttl is None
        record = next(r for r in registry.records() if r.phone_number_id == OTHER)
        assert record.expires_at - record.uploaded_at == timedelta(hours=1)

        clock.move_to(start + timedelta(minutes=50))  # 10 minutes left, above its 2-minute floor
        assert registry.get_or_upload(path, phone_number_id=OTHER) == short
        refreshed = registry.refresh_expiring()  # within its 6-minute window? not yet
        assert refreshed.actions == []
        clock.move_to(start + timedelta(minutes=55))
        refreshed = registry.refresh_expiring()
        assert [(a.action, a.media_id) for a in refreshed.actions] == [("refreshed", short)]
        clock.move_to(start + timedelta(minutes=59))
        assert registry.get_or_upload(path) == normal  # the 30-day number is untouched


def test_per_number_ttls_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER", f'{{"{OTHER}": "3600", "555": "PT2H"}}')
    with MediaRegistry.from_env(db=tmp_path / "r.db") as registry:
        assert registry.settings.ttl_by_phone_number == {OTHER: timedelta(hours=1), "555": timedelta(hours=2)}


def test_bad_per_number_ttls_are_refused(make_registry: Callable[..., MediaRegistry]) -> None:
    from media_registry import ConfigError

    with pytest.raises(ConfigError, match="MEDIA_REGISTRY_TTL_BY_PHONE_NUMBER.*60 to 43200"):
        make_registry(ttl_by_phone_number={OTHER: "PT30M"})


ASYNC_UPLOADER = """
import asyncio, sys
from media_registry import AsyncMediaRegistry

async def main():
    async with AsyncMediaRegistry.from_env() as registry:
        outcome = await registry.get_or_upload_with_status(sys.argv[1])
        print(f"{outcome.media_id}\\t{'uploaded' if outcome.uploaded else 'cached'}")

asyncio.run(main())
"""


def test_sync_processes_and_an_async_process_make_one_upload(
    cli_env: dict[str, str], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    path = make_file("shared.pdf", PDF)
    run_cli("init", env=cli_env)
    api.fail(delay=0.5, method="POST")
    commands = [[str(CLI), "upload", str(path)]] * 3 + [[sys.executable, "-c", ASYNC_UPLOADER, str(path)]] * 2
    processes = [subprocess.Popen(c, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0] * 5, outputs
    ids = {out.split("\t")[0] for out, _ in outputs}
    assert len(ids) == 1 and api.uploads == 1
    assert sum("uploaded" in out for out, _ in outputs) == 1
