"""The speed targets in one run, each figure next to its floor measured in the same run.

    python benchmarks/speed.py           # full sizes: a million contents, 10 MB uploads (minutes)
    python benchmarks/speed.py --quick   # small sizes

Rows: the CLI's start-up (cached ``upload FILE``, ``ls`` on an empty registry) against
``python -c "import sqlite3"``; ``ls --json`` against the listing query stepped by Python's
sqlite3 (time and peak memory); the async registry's longest event-loop stall with 8 new
uploads against an idle loop's; ``GET /v1/media/{sha256}`` against a constant endpoint of the
same server, on SQLite and on PostgreSQL; ``serve`` on PostgreSQL with 16 new contents posted
at once while the API answers slowly. PostgreSQL is a throwaway local server (the test
extra) unless ``--url`` names one. Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from cli import BYTECODE_ENV, CLI, bench_startup
from postgres import fresh_database
from run import Row, bench_async_loop, fill, print_table
from service import interleaved, median_latency_us, wait_for_address

from media_registry import MediaRegistry
from media_registry.store import open_store
from media_registry.testing import FakeGraphAPI, sample_media

PNG = "image/png"
SERVICE = str(Path(__file__).with_name("service.py"))
# Peak RSS and wall time of a command run as the only child of a fresh Python process.
PROBE = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
         "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
         "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
# The floor of a listing: the same query, its rows stepped and written by Python's sqlite3.
STEP = ("import sqlite3, sys; con = sqlite3.connect(sys.argv[1]); "
        "sys.stdout.writelines(f'{row}\\n' for row in con.execute(sys.argv[2], {'sha256': None, 'before': None}))")


def timed_rss(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one run of ``command``."""
    out = subprocess.run([sys.executable, "-c", PROBE, *command], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def bench_ls(folder: Path, size: int) -> list[Row]:
    """``ls --json`` over ``size`` contents, against its query alone."""
    db = folder / "ls.db"
    open_store(db).close()
    fill(db, size, "1")
    store = open_store(db, create=False)
    query = store.listing_sql()
    store.close()
    env = {**BYTECODE_ENV, "WHATSAPP_PHONE_NUMBER_ID": "1"}
    ours, ours_mb = timed_rss([CLI, "--db", str(db), "ls", "--json"], env)
    floor, floor_mb = timed_rss([sys.executable, "-c", STEP, str(db), query], env)
    db.unlink()
    return [(f"`ls --json`, {size:,} contents", f"{ours:.2f} s, {ours_mb:.0f} MB peak",
             f"{floor:.2f} s, {floor_mb:.0f} MB (its query, stepped by sqlite3)", f"{ours / floor:.1f}x")]


@contextmanager
def serving(env: dict[str, str], folder: Path, name: str) -> Iterator[str]:
    """``serve`` (with the floor endpoints of benchmarks/service.py) on ``env``'s registry."""
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, SERVICE, "--serve"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        yield wait_for_address(server, log)
    finally:
        server.terminate()
        server.wait(timeout=60)


def bench_lookups(env: dict[str, str], folder: Path, name: str, lookups: int, rounds: int) -> list[Row]:
    """GET of a known sha256 against a constant endpoint of the same server."""
    banner = folder / f"{name}.png"
    banner.write_bytes(sample_media(PNG, size=20_000, salt=name))
    with MediaRegistry(db=env["MEDIA_REGISTRY_DB"], token=env["WHATSAPP_TOKEN"], api_base=env["WHATSAPP_API_BASE"],
                       phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"]) as registry:
        registry.get_or_upload(banner)
    sha256 = hashlib.sha256(banner.read_bytes()).hexdigest()
    with serving(env, folder, name) as base:
        ours, floor = interleaved(rounds, lambda: median_latency_us(f"{base}/v1/media/{sha256}", lookups),
                                  lambda: median_latency_us(f"{base}/floor/constant", lookups), higher=False)
    return [(f"`GET /v1/media/{{sha256}}` median latency, {name}", f"{ours:,.0f} µs",
             f"{floor:,.0f} µs (a constant endpoint)", f"{ours / floor:.2f}x")]


async def post_at_once(url: str, bodies: list[bytes]) -> list[int]:
    """Each body POSTed at the same moment; the statuses."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=len(bodies))) as client:
        answers = await asyncio.gather(*(client.post(url, content=body, headers={
            "Content-Type": "application/octet-stream"}) for body in bodies))
    return [answer.status_code for answer in answers]


def bench_new_contents(env: dict[str, str], api: FakeGraphAPI, folder: Path, count: int,
                       delay: float) -> list[Row]:
    """``count`` different new contents POSTed at once while each upload takes ``delay`` s."""
    bodies = [sample_media(PNG, size=20_000, salt=f"new-{i}") for i in range(count)]
    api.fail(delay=delay, method="POST", times=count)
    with serving(env, folder, "new-contents") as base:
        started = time.perf_counter()
        statuses = asyncio.run(post_at_once(f"{base}/v1/media", bodies))
        took = time.perf_counter() - started
    answered = statuses.count(200)
    return [(f"`serve` on PostgreSQL, {count} new contents at once, uploads taking {delay:g} s",
             f"{answered} of {count} answered 200 in {took:.1f} s",
             f"{count} requests ({', '.join(sorted({str(s) for s in statuses}))})", f"{answered / count:.0%}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; seconds, not minutes")
    parser.add_argument("--url", help="a PostgreSQL superuser URL (default: a throwaway local server)")
    options = parser.parse_args()
    quick = options.quick
    with ExitStack() as stack:
        api = stack.enter_context(FakeGraphAPI(phone_numbers=["1"]))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="media-registry-speed-")))
        env = {**BYTECODE_ENV, "WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
               "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id}
        rows = [row for row in bench_startup(api, folder, rounds=5 if quick else 31)
                if "--version" not in row[0] and "--help" not in row[0]]
        rows += bench_ls(folder, 3_000 if quick else 1_000_000)
        rows += bench_async_loop(folder, 8, 2_000_000 if quick else 10_000_000)[:1]
        lookups, rounds = (300, 1) if quick else (3_000, 3)
        rows += bench_lookups({**env, "MEDIA_REGISTRY_DB": str(folder / "service.db")}, folder, "SQLite",
                              lookups, rounds)
        admin_url = options.url or _throwaway_server(stack)
        pg_env = {**env, "MEDIA_REGISTRY_DB": fresh_database(admin_url)}
        rows += bench_lookups(pg_env, folder, "PostgreSQL", lookups, rounds)
        rows += bench_new_contents({**env, "MEDIA_REGISTRY_DB": fresh_database(admin_url)}, api, folder,
                                   16, 0.5 if quick else 2.0)
    print_table(rows, quick, "SQLite and PostgreSQL")


def _throwaway_server(stack: ExitStack) -> str:
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from pg_server import PostgresServer

    server = PostgresServer()
    stack.callback(server.remove)
    server.start()
    return server.url()


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    main()
