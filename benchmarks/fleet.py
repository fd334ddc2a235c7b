"""A fleet on one PostgreSQL registry: a hit from a process's memory, how soon a change on one
host stops another serving it, and upload pacing across hosts. Run by ``postgres.py``;
every figure next to its floor, measured in the same run."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from media_registry import MediaRegistry
from media_registry.store import NewMedia, new_owner, open_store
from media_registry.testing import FakeGraphAPI, sample_media

sys.path.insert(0, str(Path(__file__).parent))
from run import Row, per_call  # noqa: E402

PDF = "application/pdf"
HOST = "bench-host"
PHONE = "106540352242922"  # the test hosts' number (cache_host.py)
TESTS = Path(__file__).parent.parent / "tests"


def bench_memory_hit(api: FakeGraphAPI, folder: Path, url: str, calls: int) -> list[Row]:
    """A repeated PostgreSQL hit (from memory) against the SQLite floor: ``os.stat`` and one
    indexed query on an SQLite registry holding the same file."""
    path = folder / "memory.pdf"
    path.write_bytes(sample_media(PDF, salt="memory"))
    absolute = str(path.resolve())
    sqlite_db = folder / "floor.db"
    with MediaRegistry(db=sqlite_db, token=api.token, phone_number_id=api.phone_number_id,
                       api_base=api.base_url) as registry:
        registry.get_or_upload(path)
    con = sqlite3.connect(sqlite_db)

    def floor() -> None:
        os.stat(absolute)
        con.execute("SELECT sha256 FROM paths WHERE path = ?", (absolute,)).fetchone()

    with MediaRegistry(db=url, token=api.token, phone_number_id=api.phone_number_id, api_base=api.base_url,
                       host_id=HOST) as registry:
        registry.get_or_upload(path)
        for _ in range(20):  # the listener starts with the second fill and proves itself alive
            registry.get_or_upload(path)
            time.sleep(0.005)
        hit_us = floor_us = float("inf")
        for _ in range(3):
            hit_us = min(hit_us, per_call(lambda: registry.get_or_upload(path), calls))
            floor_us = min(floor_us, per_call(floor, calls))
    con.close()
    return [("PostgreSQL cache hit from memory (local cache) vs the SQLite floor", f"{hit_us:.1f} µs",
             f"{floor_us:.1f} µs (stat + 1 SQLite query)", f"{hit_us / floor_us:.2f}x")]


def _listen_floor(url: str, rounds: int) -> list[float]:
    """A bare NOTIFY from one connection to a LISTEN on another: seconds per round."""
    delays: list[float] = []
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as sender:
        listener.execute("LISTEN bench_floor")
        for i in range(rounds):
            started = time.monotonic()
            sender.execute("SELECT pg_notify('bench_floor', %s)", (str(i),))
            for _ in listener.notifies(timeout=5, stop_after=1):
                delays.append(time.monotonic() - started)
    return delays


def bench_invalidation_delay(url: str, rounds: int) -> list[Row]:
    """Process A invalidates an ID that process B serves from memory: how long from A's call
    until B's listener drops it (``time.monotonic`` is one clock for the machine's processes)."""
    b = subprocess.Popen([sys.executable, str(TESTS / "cache_host.py"), url, "bench-b", "10"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert b.stdin is not None and b.stdout is not None

    def ask(*command: str) -> str:
        b.stdin.write(" ".join(command) + "\n")  # type: ignore[union-attr]
        b.stdin.flush()  # type: ignore[union-attr]
        return b.stdout.readline().strip()  # type: ignore[union-attr]

    a = open_store(url, host_id="bench-a")
    now, delays = datetime.now(timezone.utc), []
    for i in range(rounds):
        sha256, path = f"{i:064x}", f"/srv/delay/{i}.pdf"
        ask("remember", path, sha256)
        owner = new_owner()
        a.take_lease(sha256, PHONE, owner, now, now + timedelta(days=1), timedelta(minutes=1))
        a.record_upload(NewMedia(f"bench-{i}", sha256, PHONE, PDF, 1, now, now + timedelta(days=30)), owner)
        while not ask("hit", path).endswith(" memory"):
            time.sleep(0.005)
        started = time.monotonic()
        a.invalidate_media(f"bench-{i}", now, "bench")
        delays.append(float(ask("wait", f"s:{sha256}", "30", repr(started))) - started)
    a.close()
    b.stdin.close()
    b.wait()
    floor = _listen_floor(url, rounds)
    return [(f"PostgreSQL invalidation delay across two processes, p50 / p99 ({rounds} changes)",
             f"{_ms(delays, 50)} / {_ms(delays, 99)} ms", f"{_ms(floor, 50)} / {_ms(floor, 99)} ms (bare NOTIFY)",
             f"{_percentile(delays, 99) / _percentile(floor, 99):.2f}x")]


def _percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if p < 100 else max(values)


def _ms(values: list[float], p: int) -> str:
    return f"{_percentile(values, p) * 1000:.2f}"


def _paced_uploads(url: str, api: tuple[str, str, str], host: str, rate: float, batch: list[str],
                   ready: Any) -> None:
    token, phone, base = api
    with MediaRegistry(db=url, token=token, phone_number_id=phone, api_base=base, host_id=host,
                       uploads_per_second=rate) as registry:
        ready.wait()  # every process set up: start-up times stay out of the measure
        for path in batch:
            registry.get_or_upload(path)


def bench_pacing(url: str, api: FakeGraphAPI, folder: Path, hosts: int, processes: int, files: int,
                 rate: float) -> list[Row]:
    """``hosts`` x ``processes`` upload ``files`` new files in all at ``rate``/s: how long the
    local API saw them take, against the setting's ``(files - 1) / rate``."""
    count = hosts * processes
    batches: list[list[str]] = [[] for _ in range(count)]
    for i in range(files):
        path = folder / f"paced-{i}.pdf"
        path.write_bytes(sample_media(PDF, salt=f"paced-{i}"))
        batches[i % count].append(str(path))
    MediaRegistry(db=url, phone_number_id=api.phone_number_id).close()  # the schema, once
    context = multiprocessing.get_context("fork")
    ready = context.Barrier(count)
    before = len(api.received)
    workers = [context.Process(target=_paced_uploads, args=(url, (api.token, api.phone_number_id, api.base_url),
                                                             f"bench-{i % hosts}", rate, batch, ready))
               for i, batch in enumerate(batches)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * count
    arrivals = sorted(r.at for r in api.received[before:] if r.method == "POST" and r.path.endswith("/media"))
    took, expected = arrivals[-1] - arrivals[0], (files - 1) / rate
    return [(f"PostgreSQL upload pacing: {hosts} hosts x {processes} processes, {files} new files at {rate:g}/s",
             f"{took:.2f} s", f"{expected:.2f} s (the setting)", f"{took / expected:.2f}x")]
