"""SQLite's cache hits from memory: a repeated hit reads only the file's change counter, and a
change committed by anyone (another connection, another thread, this registry itself) is
never answered from memory afterwards."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from media_registry import MediaRegistry

from conftest import settle

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
