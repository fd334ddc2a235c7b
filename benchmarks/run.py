"""media-registry benchmarks: every figure next to its floor, measured in the same run.

    python benchmarks/run.py           # the full table (a few minutes)
    python benchmarks/run.py --quick   # small sizes, seconds; the test suite runs this mode

Prints a Markdown table. Nothing here is a pass/fail threshold: the ratios are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from bench_sources import bench_sources

from media_registry import AsyncMediaRegistry, MediaRegistry
from media_registry.content.hashing import sha256_file
from media_registry.testing import FakeGraphAPI, sample_media

PDF = "application/pdf"
Row = tuple[str, str, str, str]


def per_call(function: Callable[[], object], calls: int) -> float:
    """Best of three runs of ``calls`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def fill(db: Path, contents: int, phone: str) -> None:
    """Bulk-insert ``contents`` registered contents, each with a path and a live ID."""
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    expires = (now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with sqlite3.connect(db) as con:
        for start in range(0, contents, 100_000):
            batch = range(start, min(contents, start + 100_000))
            shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in batch]
            con.executemany("INSERT INTO contents VALUES (?, ?, 1000, ?, NULL)",
                            ((sha, PDF, stamp) for sha in shas))
            con.executemany("INSERT INTO paths (path, sha256, size_bytes, mtime_ns, inode, seen_at) "
                            "VALUES (?, ?, 1000, 1, ?, ?)",
                            ((f"/srv/media/{i}.pdf", sha, i, stamp) for i, sha in zip(batch, shas)))
            con.executemany("INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at) "
                            "VALUES (?, ?, ?, 'current', ?, ?)",
                            ((str(10**15 + i), sha, phone, stamp, expires) for i, sha in zip(batch, shas)))
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a long-lived registry would be


def bench_cache_hit(api: FakeGraphAPI, folder: Path, sizes: list[int], calls: int) -> list[Row]:
    rows = []
    path = folder / "brochure.pdf"
    absolute = str(path.resolve())
    for size in sizes:
        db = folder / f"hit-{size}.db"
        settings = {"db": db, "token": api.token, "phone_number_id": api.phone_number_id,
                    "api_base": api.base_url}
        MediaRegistry(**settings).close()  # creates the schema
        fill(db, size, api.phone_number_id)
        with MediaRegistry(**settings) as registry:
            registry.get_or_upload(path)
            con = sqlite3.connect(db)

            def floor() -> None:
                os.stat(absolute)
                con.execute("SELECT sha256 FROM paths WHERE path = ?", (absolute,)).fetchone()

            # Alternate the two, so that neither gets a warmer cache than the other.
            hit_us = floor_us = float("inf")
            for _ in range(3):
                hit_us = min(hit_us, per_call(lambda: registry.get_or_upload(path), calls))
                floor_us = min(floor_us, per_call(floor, calls))
            con.close()
        rows.append((f"cache hit, {size:,} contents", f"{hit_us:.1f} µs",
                     f"{floor_us:.1f} µs (stat + 1 query)", f"{hit_us / floor_us:.2f}x"))
    return rows


def bench_hashing(folder: Path, size: int) -> list[Row]:
    big = folder / "big.pdf"
    big.write_bytes(sample_media(PDF, size=size, salt="big"))

    def ours() -> None:
        with open(big, "rb") as file:
            sha256_file(file)

    def floor() -> None:
        with open(big, "rb") as file:
            if hasattr(hashlib, "file_digest"):  # Python 3.11+
                hashlib.file_digest(file, "sha256")
            else:
                digest = hashlib.sha256()
                while block := file.read(1 << 20):
                    digest.update(block)

    ours_s, floor_s = per_call(ours, 1) / 1e6, per_call(floor, 1) / 1e6
    mb = size / 1e6
    return [(f"cold hashing, {mb:.0f} MB", f"{mb / ours_s:.0f} MB/s",
             f"{mb / floor_s:.0f} MB/s (hashlib{'.file_digest' if hasattr(hashlib, 'file_digest') else '.sha256'})",
             f"{floor_s / ours_s:.2f}x")]


def peak_rss_mb(command: list[str], env: dict[str, str]) -> float:
    """Peak RSS of ``command`` run as the only child of a fresh Python process."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def bench_memory(api: FakeGraphAPI, folder: Path, size: int) -> list[Row]:
    cli = str(Path(sys.executable).with_name("media-registry"))
    env = {**os.environ, "WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
           "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "MEDIA_REGISTRY_DB": str(folder / "m.db")}
    small = folder / "small.pdf"
    small.write_bytes(sample_media(PDF, size=10_000, salt="small"))
    big = folder / "upload-big.pdf"
    big.write_bytes(sample_media(PDF, size=size, salt="upload-big"))
    rows = []
    for verb, small_args, big_args in (
        ("upload", [str(small)], [str(big)]),
        ("download", [api.add_media(small.read_bytes(), PDF), "--out", str(folder / "in")],
         [api.add_media(big.read_bytes(), PDF), "--out", str(folder / "in")]),
    ):
        small_mb = peak_rss_mb([cli, verb, *small_args], env)
        big_mb = peak_rss_mb([cli, verb, *big_args], env)
        rows.append((f"peak RSS, CLI {verb} of {size / 1e6:.0f} MB", f"{big_mb:.1f} MB",
                     f"{small_mb:.1f} MB (10 KB {verb})", f"{big_mb - small_mb:+.1f} MB"))
    return rows


def bench_refresh(folder: Path, count: int, latency: float, concurrency: int) -> list[Row]:
    timings = {}
    with FakeGraphAPI() as api:
        for workers in (1, concurrency):
            db = folder / f"refresh-{workers}.db"
            with MediaRegistry(db=db, token=api.token, phone_number_id=api.phone_number_id,
                               api_base=api.base_url, refresh_concurrency=workers,
                               # concurrency is measured here, not the pacing that guards Meta's limit
                               uploads_per_second=10_000) as registry:
                for i in range(count):
                    path = folder / "refresh" / f"{workers}-{i}.pdf"
                    path.parent.mkdir(exist_ok=True)
                    path.write_bytes(sample_media(PDF, salt=f"{workers}-{i}"))
                    registry.get_or_upload(path)
                with sqlite3.connect(db) as con:
                    soon = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
                    con.execute("UPDATE media SET expires_at = ?", (soon,))
                fault = api.fail(delay=latency, method="POST", times=10**9)
                started = time.perf_counter()
                report = registry.refresh_expiring()
                timings[workers] = time.perf_counter() - started
                api._faults.remove(fault)
                assert report.count("refreshed") == count, report
    return [(f"refresh {count:,} IDs, {latency * 1000:.0f} ms per upload, {concurrency} at a time",
             f"{timings[concurrency]:.2f} s", f"{timings[1]:.2f} s (sequential)",
             f"{timings[1] / timings[concurrency]:.1f}x faster")]


def bench_per_send(api: FakeGraphAPI, folder: Path, sends: int, latency: float) -> list[Row]:
    path = folder / "per-send.pdf"
    path.write_bytes(sample_media(PDF, size=200_000, salt="per-send"))
    fault = api.fail(delay=latency, method="POST", times=10**9) if latency else None
    with httpx.Client(headers={"Authorization": f"Bearer {api.token}"}) as client:
        def upload_every_time() -> None:
            with open(path, "rb") as file:
                client.post(f"{api.base_url}/{api.phone_number_id}/media",
                            data={"messaging_product": "whatsapp", "type": PDF},
                            files={"file": ("per-send.pdf", file, PDF)}).raise_for_status()

        upload_us = per_call(upload_every_time, sends)
    if fault:
        api._faults.remove(fault)
    with MediaRegistry(db=folder / "per-send.db", token=api.token, api_base=api.base_url,
                       phone_number_id=api.phone_number_id) as registry:
        registry.get_or_upload(path)
        hit_us = per_call(lambda: registry.get_or_upload(path), sends * 100)
    where = f"API answering in {latency * 1000:.0f} ms" if latency else "local API, no latency"
    return [(f"per send, 200 KB PDF: registry hit vs httpx upload each time ({where})",
             f"{hit_us:.1f} µs", f"{upload_us:.0f} µs (upload per send)", f"{upload_us / hit_us:.0f}x cheaper")]


class _ToLocalAPI(httpx.HTTPTransport):
    """Sends requests meant for graph.facebook.com to the local FakeGraphAPI instead."""

    def __init__(self, origin: str) -> None:
        super().__init__()
        self._origin = httpx.URL(origin)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(
            scheme=self._origin.scheme, host=self._origin.host, port=self._origin.port)
        return super().handle_request(request)


def bench_pywa(api: FakeGraphAPI, folder: Path, sends: int) -> list[Row]:
    """pywa's upload_media per send (the `bench` extra), against a registry hit."""
    try:
        from pywa import WhatsApp
    except ImportError:
        return [("per send: pywa upload_media vs registry hit", "-", "pywa not installed "
                 "(pip install '.[bench]')", "-")]
    path = folder / "per-send.pdf"
    session = httpx.Client(transport=_ToLocalAPI(api.origin))
    wa = WhatsApp(phone_id=api.phone_number_id, token=api.token, session=session)
    upload_us = per_call(lambda: wa.upload_media(media=path, mime_type=PDF), sends)
    with MediaRegistry(db=folder / "pywa.db", token=api.token, api_base=api.base_url,
                       phone_number_id=api.phone_number_id) as registry:
        registry.get_or_upload(path)
        hit_us = per_call(lambda: registry.get_or_upload(path), sends * 100)
    session.close()
    return [("per send, 200 KB PDF: registry hit vs pywa upload_media each time (local API)",
             f"{hit_us:.1f} µs", f"{upload_us:.0f} µs (pywa upload per send)",
             f"{upload_us / hit_us:.0f}x cheaper")]


SERVE_FAKE_API = """
import sys, time
from media_registry.testing import FakeGraphAPI
with FakeGraphAPI(phone_numbers=["1"]) as api:
    print(api.base_url, api.token, flush=True)
    sys.stdin.read()
"""


def bench_async_loop(folder: Path, files: int, size: int) -> list[Row]:
    """The longest event-loop stall while AsyncMediaRegistry uploads new files (hashing and
    SQLite writes offloaded) and serves hits (inline), against an idle loop's. The local API
    runs in another process, so that its parsing does not compete for this one's GIL."""
    server = subprocess.Popen([sys.executable, "-c", SERVE_FAKE_API], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    base_url, token = server.stdout.readline().split()
    try:
        return _async_loop_rows(base_url, token, folder, files, size)
    finally:
        server.communicate("")


def _async_loop_rows(base_url: str, token: str, folder: Path, files: int, size: int) -> list[Row]:
    paths = []
    for i in range(files):
        path = folder / "async" / f"{i}.pdf"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(sample_media(PDF, size=size, salt=f"async-{i}"))
        paths.append(path)

    async def longest_stall(work: Callable[[], Awaitable[object]] | None) -> float:
        stalls: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                stalls.append(time.perf_counter() - started - 0.001)

        running = asyncio.create_task(ticker())
        if work is None:
            await asyncio.sleep(0.5)
        else:
            await work()
        done.set()
        await running
        return max(stalls) * 1000

    async def main() -> tuple[float, float, float]:
        async with AsyncMediaRegistry(db=folder / "async.db", token=token, api_base=base_url,
                                      phone_number_id="1") as registry:
            # The first request of a process imports httpx's async backend (~50 ms, once):
            # warm up, then measure the steady state.
            warm = folder / "async" / "warm-up.pdf"
            warm.write_bytes(sample_media(PDF, salt="warm-up"))
            await registry.get_or_upload(warm)
            idle = await longest_stall(None)
            misses = await longest_stall(lambda: asyncio.gather(*map(registry.get_or_upload, paths)))

            async def hits() -> None:
                for _ in range(200):
                    for path in paths:
                        await registry.get_or_upload(path)
                        await asyncio.sleep(0)  # as a server does between requests

            return idle, misses, await longest_stall(hits)

    idle, misses, hits = asyncio.run(main())
    return [(f"async: longest event-loop stall, {files} new {size / 1e6:.0f} MB uploads at once",
             f"{misses:.1f} ms", f"{idle:.1f} ms (idle loop)", f"+{misses - idle:.1f} ms"),
            (f"async: longest event-loop stall, {200 * files:,} cache hits",
             f"{hits:.1f} ms", f"{idle:.1f} ms (idle loop)", f"+{hits - idle:.1f} ms")]


def _hits_in_process(db: str, path: str, seconds: float) -> int:
    with MediaRegistry(db=db, phone_number_id="1") as registry:
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            registry.get_or_upload(path)
            done += 1
    return done


def bench_contention(api: FakeGraphAPI, folder: Path, seconds: float) -> list[Row]:
    db = folder / "contention.db"
    path = folder / "contention.pdf"
    path.write_bytes(sample_media(PDF, salt="contention"))
    with MediaRegistry(db=db, token=api.token, phone_number_id="1", api_base=api.base_url) as registry:
        registry.get_or_upload(path)
    rates = {}
    for processes in (1, 8):
        with ProcessPoolExecutor(processes) as pool:
            counts = list(pool.map(_hits_in_process, [str(db)] * processes, [str(path)] * processes,
                                   [seconds] * processes))
        rates[processes] = sum(counts) / seconds
    return [(f"cache hits/s, 8 processes on one registry ({os.cpu_count()} cores)",
             f"{rates[8]:,.0f}/s", f"{rates[1]:,.0f}/s (1 process)", f"{rates[8] / rates[1]:.2f}x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; seconds, not minutes")
    quick = parser.parse_args().quick
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="media-registry-bench-") as tmp, \
            FakeGraphAPI(phone_numbers=["1"]) as api:
        folder = Path(tmp)
        (folder / "brochure.pdf").write_bytes(sample_media(PDF, size=48_000, salt="brochure"))
        sizes = [1_000, 10_000] if quick else [1_000, 100_000, 1_000_000]
        rows += bench_cache_hit(api, folder, sizes, calls=2_000 if quick else 20_000)
        big = 5_000_000 if quick else 90_000_000
        rows += bench_hashing(folder, big)
        rows += bench_memory(api, folder, big)
        rows += bench_refresh(folder, 20 if quick else 1_000, 0.05, concurrency=16)
        rows += bench_per_send(api, folder, 20 if quick else 200, latency=0)
        rows += bench_per_send(api, folder, 5 if quick else 20, latency=0.15)
        rows += bench_pywa(api, folder, 20 if quick else 200)
        rows += bench_contention(api, folder, 0.5 if quick else 3.0)
        rows += bench_async_loop(folder, 4 if quick else 8, 2_000_000 if quick else 10_000_000)
        rows += bench_sources(api, folder, quick, per_call)
    print_table(rows, quick)


def print_table(rows: list[Row], quick: bool, database: str = f"SQLite {sqlite3.sqlite_version}") -> None:
    """The machine, then the rows as a Markdown table."""
    print(f"media-registry benchmarks on {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {database}"
          f"{' (quick mode)' if quick else ''}\n")
    print("| measure | media-registry | floor / peer | ratio |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
