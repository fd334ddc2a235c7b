"""AsyncMediaRegistry and several phone numbers on one registry."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from media_registry import AsyncMediaRegistry, MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

import registry_db
from conftest import CLI, PDF, PNG, run_cli, settle

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
                # noon: well inside refresh_before however long the uploads took on the ticking clock
                clock.move_to(datetime(2026, 5, 28, 12, tzinfo=timezone.utc))
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
    api.add_phone_number(OTHER)
    path = make_file("menu.pdf", PDF)
    first = registry.get_or_upload(path)
    second = registry.get_or_upload(path, phone_number_id=OTHER)
    assert first != second and api.uploads == 2
    assert {api.media[first].phone_number_id, api.media[second].phone_number_id} == {
        api.phone_number_id, OTHER}
    listing = run_cli("ls", env=cli_env).stdout.splitlines()[1:]
    assert [line.split()[0] for line in listing] == sorted([api.phone_number_id, OTHER])
    stats = registry.stats()["by_phone_number"]
    assert stats == {api.phone_number_id: {"live_ids": 1, "expiring_ids": 0, "expired_ids": 0},
                     OTHER: {"live_ids": 1, "expiring_ids": 0, "expired_ids": 0}}
    with freeze_time(datetime.now(timezone.utc) + timedelta(days=28)):
        report = registry.refresh_expiring()
    assert sorted(a.phone_number_id for a in report.actions) == sorted([api.phone_number_id, OTHER])


def test_a_no_storage_number_has_its_own_ttl(
    make_registry: Callable[..., MediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path]
) -> None:
    api.add_phone_number(OTHER)
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


class ThreadsOfCalls:
    """Stands in for a registry's store: every call goes through, and the thread that made
    it is recorded; ``entered(name)`` is set once a call of that name starts."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: list[tuple[str, int]] = []
        self._entered: dict[str, threading.Event] = {}

    def entered(self, name: str) -> threading.Event:
        return self._entered.setdefault(name, threading.Event())

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, threading.get_ident()))
            self.entered(name).set()
            return attribute(*args, **kwargs)

        return call

    def on(self, thread: int) -> set[str]:
        return {name for name, ident in self.calls if ident == thread}


FILE_EVENTS = {"open", "os.rename", "os.mkdir", "os.remove"}
_watched: list[tuple[str, list[tuple[str, int]]]] = []


def _file_events(event: str, args: tuple[Any, ...]) -> None:
    if _watched and event in FILE_EVENTS and isinstance(args[0], str | Path):
        for folder, seen in _watched:
            if str(args[0]).startswith(folder):
                seen.append((event, threading.get_ident()))


sys.addaudithook(_file_events)  # the interpreter's own audit events: open, rename, mkdir, remove


@contextmanager
def file_events_under(folder: Path) -> Iterator[list[tuple[str, int]]]:
    """(event, thread) of every file creation, rename, mkdir and removal under ``folder``."""
    seen: list[tuple[str, int]] = []
    _watched.append((str(folder), seen))
    try:
        yield seen
    finally:
        _watched.remove((str(folder), seen))


def test_no_store_or_file_call_runs_on_the_event_loop(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    tmp_path: Path, backend: str,
) -> None:
    kept, gone = make_file("kept.png"), make_file("gone.pdf", PDF)
    inbound = api.add_media(sample_media("image/jpeg"), "image/jpeg")
    later = [timedelta()]

    async def main() -> tuple[ThreadsOfCalls, list[tuple[str, int]], int]:
        async with async_registry(clock=lambda: datetime.now(timezone.utc) + later[0]) as registry:
            store = registry.store
            calls = registry.store = ThreadsOfCalls(store)  # type: ignore[assignment]
            with file_events_under(tmp_path / "in") as files:
                assert (await registry.get_or_upload_with_status(kept)).uploaded  # upload
                await registry.get_or_upload(gone)
                await registry.get_or_upload(kept)  # the cache hit: lookup_path on the loop
                later[0] = timedelta(days=28)
                refreshed = await registry.refresh_expiring()  # refresh
                assert refreshed.count("refreshed") == 2
                gone.unlink()
                assert (await registry.purge()).count("vanished") == 1  # purge
                assert (await registry.delete(kept)).count("deleted") == 2  # delete
                assert (await registry.download(inbound, tmp_path / "in")).fetched  # download
            registry.store = store
            return calls, files, threading.get_ident()

    calls, files, loop_thread = asyncio.run(main())
    made = {name for name, _ in calls.calls}
    assert {"take_lease", "record_upload", "mark_deleted", "forget_media", "record_inbound"} <= made
    # The cache hit's one query runs on the loop with SQLite, in a thread with PostgreSQL.
    assert calls.on(loop_thread) == ({"lookup_path"} if backend == "sqlite" else set())
    assert {"open", "os.rename"} <= {event for event, _ in files}  # mkstemp, then the rename
    assert [event for event, thread in files if thread == loop_thread] == []


@pytest.mark.sqlite_only  # counts the leases in the SQLite file
@pytest.mark.timeout(90)
def test_a_task_cancelled_while_waiting_for_the_lease_leaves_no_lease(
    async_registry: Callable[..., AsyncMediaRegistry], make_file: Callable[..., Path], registry_db_value: str,
) -> None:
    path = make_file("offer.png")
    settle(path)  # a trusted fingerprint: the next upload's first write is the lease
    later = [timedelta()]

    async def main() -> tuple[ThreadsOfCalls, int]:
        clock = lambda: datetime.now(timezone.utc) + later[0]  # noqa: E731
        async with async_registry(clock=clock, lease_seconds=3600, busy_timeout=60) as sender:
            await sender.get_or_upload(path)
            # Forty days on, that ID has expired and the path is known: the first write of the
            # next upload is taking the lease.
            later[0] = timedelta(days=40)
            calls = sender.store = ThreadsOfCalls(sender.store)  # type: ignore[assignment]
            with registry_db.write_lock_in_another_process(sender.settings.db) as release:
                upload = asyncio.create_task(sender.get_or_upload(path))
                await asyncio.to_thread(calls.entered("take_lease").wait)
                upload.cancel()  # as a timeout (asyncio.wait_for, asyncio.timeout) would
                with pytest.raises(asyncio.CancelledError):
                    await upload
                release()
            # A leaked lease (held by this live process) would make this wait an hour.
            assert (await sender.get_or_upload_with_status(path)).uploaded
            await asyncio.to_thread(calls.entered("release_lease").wait)
            return calls, threading.get_ident()

    calls, loop_thread = asyncio.run(main())
    assert leases(registry_db_value) == 0
    assert "release_lease" in {name for name, _ in calls.calls} - calls.on(loop_thread)


@pytest.mark.sqlite_only  # counts the leases in the SQLite file
@pytest.mark.timeout(90)
def test_a_cancelled_upload_releases_its_lease_off_the_loop_while_another_process_writes(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    registry_db_value: str,
) -> None:
    path = make_file("big-offer.png")
    api.fail(delay=2, method="POST")

    async def main() -> tuple[ThreadsOfCalls, int]:
        async with async_registry(busy_timeout=20) as sender:
            calls = sender.store = ThreadsOfCalls(sender.store)  # type: ignore[assignment]
            task = asyncio.create_task(sender.get_or_upload(path))
            while api.count("POST") == 0:
                await asyncio.sleep(0.01)
            with registry_db.write_lock_in_another_process(sender.settings.db) as release:
                task.cancel()
                await asyncio.to_thread(calls.entered("release_lease").wait)  # the loop is free
                release()
                with pytest.raises(asyncio.CancelledError):
                    await task
            return calls, threading.get_ident()

    calls, loop_thread = asyncio.run(main())
    assert "release_lease" not in calls.on(loop_thread)
    assert leases(registry_db_value) == 0


# The reads a cache hit makes: on the loop with SQLite (one short query), as documented.
HIT_READS = {"lookup_path", "url_hit", "content_rows"}


def test_no_verb_or_read_does_store_or_file_work_on_the_event_loop(
    async_registry: Callable[..., AsyncMediaRegistry], api: FakeGraphAPI, make_file: Callable[..., Path],
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spools))  # temporary files land where watched
    path = make_file("watched.png")
    inbound = api.add_media(sample_media("image/jpeg", salt="hook"), "image/jpeg")
    hook = {"entry": [{"changes": [{"value": {
        "metadata": {"phone_number_id": api.phone_number_id},
        "messages": [{"from": "1", "id": "wamid.A", "type": "image",
                      "image": {"id": inbound, "mime_type": "image/jpeg"}}]}}]}]}

    async def send(media_id: str) -> str:
        return f"sent {media_id}"

    async def main() -> tuple[ThreadsOfCalls, list[tuple[str, int]], int]:
        async with async_registry() as registry:
            calls = registry.store = ThreadsOfCalls(registry.store)  # type: ignore[assignment]
            with open(path, "rb") as stream, file_events_under(tmp_path) as files:
                from_bytes = await registry.get_or_upload_with_status(sample_media(PNG, salt="bytes"))
                assert from_bytes.uploaded and from_bytes.sha256 is not None
                assert await registry.get_or_upload(stream) == await registry.get_or_upload(path)
                assert await registry.send_with_media(io.BytesIO(sample_media(PDF)), send) == (
                    f"sent {await registry.get_or_upload(sample_media(PDF))}")
                await registry.invalidate(from_bytes.media_id)
                assert [d.fetched for d in await registry.download_webhook(hook, tmp_path / "in")] == [True]
                assert (await registry.alookup(path)) is not None
                assert len(await registry.arecords()) == 3
                assert (await registry.astats())["contents"] == 3
                assert await registry.aoverdue() == []
                assert await registry.avalid_record(from_bytes.sha256) is None  # invalidated
            return calls, files, threading.get_ident()

    calls, files, loop_thread = asyncio.run(main())
    made = {name for name, _ in calls.calls}
    assert {"remember_content", "take_lease", "record_upload", "invalidate_media", "record_inbound",
            "events", "stats", "expiring_media"} <= made
    assert calls.on(loop_thread) <= (HIT_READS if backend == "sqlite" else set())
    assert {"open", "os.rename", "os.remove"} <= {event for event, _ in files}  # spools, download
    assert [event for event, thread in files if thread == loop_thread] == []
