"""PostgreSQL's local cache across hosts: real processes (``cache_host.py``), each with its own
memory, on the suite's real PostgreSQL. Once a change is committed and its notification has
reached a host, that host never serves the dead answer again; a host whose listener is lost
empties its memory and fills it again from the database."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media_registry.store import Store, open_store
from media_registry.store._local import LocalCache
from media_registry.testing.store import StoreConformance

from conftest import wait_for
from pg_server import PostgresServer, create_database, drop_database

HOST_SCRIPT = Path(__file__).with_name("cache_host.py")
KILL_LISTENERS = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = 'media-registry listener' AND datname = current_database()")
_ids = itertools.count(1000)


class Host:
    """One process of the fleet, driven line by line."""

    def __init__(self, url: str, name: str, busy_timeout: float = 10) -> None:
        self.process = subprocess.Popen([sys.executable, str(HOST_SCRIPT), url, name, str(busy_timeout)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(command) + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def hits_until(self, path: str, last: str) -> list[str]:
        """Every answer to a hit of ``path`` until the answer is ``last``."""
        answers: list[str] = []

        def done() -> bool:
            answers.append(self("hit", path))
            return answers[-1] == last or (last == "memory" and answers[-1].endswith(" memory"))

        wait_for(done, f"the answer {last!r}")
        return answers

    def served_from_memory(self, path: str) -> str:
        """Ask until the answer comes from memory (the listener up, the answer filled): it."""
        return self.hits_until(path, "memory")[-1].split()[0]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def notify_marker(url: str) -> str:
    """A notification after every change committed so far: a host that has it has them all
    (PostgreSQL delivers notifications in commit order)."""
    marker = f"m:{uuid.uuid4().hex}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("SELECT pg_notify('media_registry', %s)", (marker,))
    return marker


def synced(url: str, *hosts: Host) -> None:
    marker = notify_marker(url)
    for host in hosts:
        assert host("wait", marker) != "None", "a notification never arrived"


@pytest.fixture(scope="module")
def fleet_db(postgres_admin_url: str) -> Iterator[str]:
    url = create_database(postgres_admin_url)
    yield url
    drop_database(postgres_admin_url, url)


@pytest.fixture(scope="module")
def hosts(fleet_db: str) -> Iterator[tuple[Host, Host]]:
    a, b = Host(fleet_db, "app-1"), Host(fleet_db, "app-2")
    yield a, b
    a.close()
    b.close()


def new_content(a: Host, b: Host) -> tuple[str, str, str]:
    """A content both hosts hold at a path of their own, with a current ID: (sha256, path, ID)."""
    sha256, media_id = uuid.uuid4().hex * 2, str(next(_ids))
    path = f"/srv/{sha256[:12]}.png"
    assert a("remember", path, sha256) == b("remember", path, sha256) == "ok"
    assert a("supersede", sha256, media_id) == "current"
    return sha256, path, media_id


@pytest.mark.parametrize("change", ["delete", "invalidate", "supersede"])
def test_a_change_on_one_host_stops_the_other_serving_from_memory(
    hosts: tuple[Host, Host], fleet_db: str, change: str
) -> None:
    a, b = hosts
    sha256, path, media_id = new_content(a, b)
    assert b.served_from_memory(path) == media_id
    newer = str(next(_ids))
    committed = time.monotonic()
    assert a(*{"delete": ("delete", sha256), "invalidate": ("invalidate", media_id),
               "supersede": ("supersede", sha256, newer)}[change]) in ("ok", "current")
    arrived = float(b("wait", f"s:{sha256}", "30", repr(committed)))
    answer = b("hit", path).split()[0]
    assert answer == {"delete": "None", "invalidate": "None", "supersede": newer}[change]
    if change == "supersede":  # memory fills again, with the living answer
        assert b.served_from_memory(path) == newer
    print(f"notification delay, {change}: {(arrived - committed) * 1000:.1f} ms")


def test_a_listener_killed_while_another_host_invalidates_serves_nothing_dead(
    hosts: tuple[Host, Host], fleet_db: str
) -> None:
    a, b = hosts
    sha256, path, media_id = new_content(a, b)
    assert b.served_from_memory(path) == media_id
    with psycopg.connect(fleet_db, autocommit=True) as con:
        assert con.execute(KILL_LISTENERS).fetchall()  # b's listener at least
    assert a("invalidate", media_id) == "ok"  # its notification is lost with the session
    answers: list[str] = []

    def listening_again() -> bool:
        answers.append(b("hit", path))
        return b("wait", notify_marker(fleet_db), "0.1") != "None"

    wait_for(listening_again, "the listener back")
    answers.append(b("hit", path))
    # Only memory may still answer the dead ID, and only until the listener notices its loss.
    fresh = next(i for i, answer in enumerate(answers) if not answer.startswith(media_id))
    assert answers[:fresh] == [f"{media_id} memory"] * fresh, answers
    assert answers[fresh:] == ["None db"] * (len(answers) - fresh), answers


def test_postgresql_restarted_empties_memory_then_fills_it_again(postgres_server: PostgresServer) -> None:
    url = create_database(postgres_server.url())
    a, b = Host(url, "app-1"), Host(url, "app-2", busy_timeout=0.5)  # b's hit fails fast while the server is away
    try:
        _, path, media_id = new_content(a, b)
        assert b.served_from_memory(path) == media_id and b("size") == "1"
        postgres_server.stop()
        try:
            wait_for(lambda: b("size") == "0", "memory emptied when the listener lost the server")
            assert b("hit", path).startswith("error")  # nothing served from memory meanwhile
        finally:
            postgres_server.start()
        assert b.served_from_memory(path) == media_id
    finally:
        a.close()
        b.close()


OPERATIONS = st.lists(st.tuples(st.sampled_from(["hit", "supersede", "invalidate", "delete", "restore"]),
                                st.sampled_from([0, 1])), min_size=1, max_size=10)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_no_host_ever_serves_a_dead_id_once_its_change_is_notified(
    hosts: tuple[Host, Host], fleet_db: str, operations: list[tuple[str, int]]
) -> None:
    sha256, path, current = new_content(*hosts)
    current_or_none: str | None = current
    deleted = False
    for operation, index in [*operations, ("hit", 0), ("hit", 1)]:
        host = hosts[index]
        if operation == "hit":
            for other in hosts:  # twice: the second answer may come from memory
                assert [other("hit", path).split()[0] for _ in range(2)] == [str(current_or_none)] * 2
            continue
        if operation == "supersede":
            newer = str(next(_ids))
            assert host("supersede", sha256, newer) == ("deleted" if deleted else "current")
            current_or_none = current_or_none if deleted else newer
        elif operation == "invalidate" and current_or_none is not None:
            assert host("invalidate", current_or_none) == "ok"
            current_or_none = None
        elif operation == "delete":
            assert host("delete", sha256) == "ok"
            current_or_none, deleted = None, True
        elif operation == "restore":
            assert all(each("remember", path, sha256) == "ok" for each in hosts)
            deleted = False
        synced(fleet_db, *hosts)


def test_memory_keeps_at_most_its_size_and_no_fill_that_raced_a_change() -> None:
    cache, far = LocalCache(2), datetime.now(timezone.utc) + timedelta(days=30)
    cache.proven(math.inf)  # the listener's proof of life, for the whole test

    def fill(key: int) -> None:
        cache.put(key, far, f"answer {key}", (f"s:{key}", "p:shared"), cache.notified)

    for key in range(3):
        fill(key)
    assert list(cache.entries) == [1, 2]  # the oldest fill went
    seen = cache.notified
    cache.notice("s:9")  # arrives while a fill of 3 is read
    cache.put(3, far, "answer 3", ("s:3",), seen)
    assert 3 not in cache.entries
    cache.changing("s:4")  # this process changes 4: no fill of it until its notification
    fill(4)
    assert 4 not in cache.entries
    cache.notice("s:4")
    fill(4)
    assert list(cache.entries) == [2, 4]
    cache.notice("p:shared")  # a key many entries carry
    assert not cache.entries and not cache.by_key
    fill(5)
    cache.lost()
    assert not cache.entries and not cache.serving()
    fill(6)
    assert not cache.entries  # nothing kept until the listener proves itself again


class TestStoreContractWithMemory(StoreConformance):
    """The Store's contract holds with PostgreSQL's local cache on, its listener up from the start."""

    @pytest.fixture
    def store(self, postgres_url: str) -> Iterator[Store]:
        opened = open_store(postgres_url, local_cache=1000)
        memory = opened.backend.memory
        assert memory is not None
        memory.listen()
        wait_for(memory.serving, "the listener's first proof of life")
        yield opened
        opened.close()
