"""SQLite's cache hits from memory: a repeated hit reads only the file's change counter, and a
change committed by anyone (another connection, another thread, this registry itself) is
never answered from memory afterwards."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from media_registry import MediaRegistry
from media_registry.content.hashing import fingerprint
from media_registry.store import Store, open_store
from media_registry.testing.store import StoreConformance

from conftest import run_cli, settle

pytestmark = pytest.mark.sqlite_only


def _served(make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path],
            **settings: object) -> tuple[MediaRegistry, Path, str]:
    """A registry that uploaded a file and has its trusted fingerprint's answer in memory."""
    registry = make_registry(**settings)
    path = make_file("flyer.png")
    first = registry.get_or_upload(path)
    settle(path)
    assert registry.get_or_upload(path) == first  # hashed again (racily clean): recorded anew
    assert registry.get_or_upload(path) == first  # the trusted answer, read and kept
    return registry, path, first


def test_a_repeated_hit_reads_only_the_change_counter(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    registry, path, first = _served(make_registry, make_file)
    statements: list[str] = []
    registry.store.backend._local.con.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    assert registry.get_or_upload(path) == first
    assert statements == ["PRAGMA data_version"]


def test_without_memory_every_hit_reads_the_path(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    registry, path, first = _served(make_registry, make_file, local_cache_size=0)
    statements: list[str] = []
    registry.store.backend._local.con.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    assert registry.get_or_upload(path) == first
    assert len(statements) == 1 and "FROM paths" in statements[0]


@pytest.mark.parametrize("change", ["superseded", "invalidated", "deleting"])
def test_a_change_by_another_connection_is_never_answered_from_memory(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path], change: str
) -> None:
    registry, path, first = _served(make_registry, make_file)
    with sqlite3.connect(registry.store.backend.path) as other:  # type: ignore[attr-defined]
        other.execute("UPDATE media SET state = ? WHERE media_id = ?", (change, first))
    assert registry.get_or_upload(path) != first


def test_a_change_by_another_thread_or_this_registry_is_never_answered_from_memory(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    registry, path, first = _served(make_registry, make_file)
    worker = threading.Thread(target=registry.invalidate, args=(first,))  # its own connection
    worker.start()
    worker.join()
    second = registry.get_or_upload(path)
    assert second != first
    registry.get_or_upload(path)  # from memory again
    registry.store.backend.write(lambda tx: tx.execute(  # on this thread's connection: its own write
        "UPDATE media SET state = 'invalidated' WHERE media_id = ?", (second,)))
    assert registry.get_or_upload(path) not in (first, second)


def test_a_hit_read_inside_a_write_that_rolls_back_is_not_kept(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    registry, path, first = _served(make_registry, make_file)

    def rolled_back(tx: sqlite3.Connection) -> None:
        tx.execute("UPDATE media SET media_id = 'rolled-back' WHERE media_id = ?", (first,))
        assert registry.get_or_upload(path) == "rolled-back"  # this connection reads its own write
        raise LookupError("any error rolls the write back")

    with pytest.raises(LookupError):
        registry.store.backend.write(rolled_back)  # type: ignore[arg-type]
    assert registry.get_or_upload(path) == first


@pytest.mark.parametrize("command", ["invalidate", "delete"])
def test_a_change_by_another_process_is_never_answered_from_memory(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path], cli_env: dict[str, str],
    command: str,
) -> None:
    registry, path, first = _served(make_registry, make_file)
    result = run_cli(command, first if command == "invalidate" else str(path), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert registry.get_or_upload(path) != first


def test_a_forked_child_never_answers_from_the_memory_it_inherited(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    registry, path, first = _served(make_registry, make_file)
    go, wait = os.pipe()
    child = os.fork()
    if child == 0:  # the parent's answer is in the memory this child inherited
        os.read(go, 1)
        hit = registry.store.lookup_path(fingerprint(path), registry.settings.phone_number_id or "",
                                         datetime.now(timezone.utc))
        os._exit(0 if hit is not None and hit.media_id is None else 1)
    registry.invalidate(first)
    os.write(wait, b"x")
    assert os.waitpid(child, 0)[1] == 0


def test_memory_never_serves_an_id_within_min_validity_of_its_expiry(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    now = [datetime.now(timezone.utc)]
    registry, path, first = _served(make_registry, make_file, clock=lambda: now[0])
    expires_at = next(record.expires_at for record in registry.records())
    assert expires_at is not None
    now[0] = expires_at - registry.settings.min_validity - timedelta(seconds=1)
    assert registry.get_or_upload(path) == first
    now[0] += timedelta(seconds=1)
    assert registry.get_or_upload(path) != first


class TestStoreContractWithMemory(StoreConformance):
    """The Store's contract holds with SQLite's memory on, one answer kept (each fill empties it)."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        opened = open_store(tmp_path / "registry.db", local_cache=1)
        yield opened
        opened.close()


def test_a_fill_read_before_a_commit_another_thread_noticed_is_not_kept(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path]
) -> None:
    """Thread A reads a path's answer; thread B invalidates it; thread C notices B's commit
    (memory emptied) before A keeps what it read: C, whose counters are now current, must not
    be served A's dead answer."""
    registry, path, first = _served(make_registry, make_file)
    other = make_file("other.png")
    registry.get_or_upload(other)
    settle(other)
    backend = registry.store.backend
    with sqlite3.connect(backend.path) as elsewhere:  # type: ignore[attr-defined]  # this thread's next hit reads
        elsewhere.execute("UPDATE media SET expires_at = expires_at")
    marked, noticing, noticed, asking = (threading.Event() for _ in range(4))
    served: list[str] = []

    def thread_c() -> None:
        registry.get_or_upload(other)  # C's counters, read before B's change
        marked.set()
        noticing.wait()
        registry.get_or_upload(other)  # C notices B's commit
        noticed.set()
        asking.wait()
        served.append(registry.get_or_upload(path))

    read_one, raced = backend.read_one, list[str]()

    def read_then_race(sql: str, params: Any) -> Any:
        row = read_one(sql, params)
        if "FROM paths" in sql and not raced:
            raced.append(sql)
            thread_b = threading.Thread(target=registry.invalidate, args=(first,))
            thread_b.start()
            thread_b.join()
            noticing.set()
            noticed.wait()
        return row

    c = threading.Thread(target=thread_c)
    c.start()
    marked.wait()
    backend.read_one = read_then_race  # type: ignore[method-assign]
    registry.get_or_upload(path)  # thread A: its read predates B's commit
    backend.read_one = read_one  # type: ignore[method-assign]
    asking.set()
    c.join()
    assert raced and served and served[0] != first
