"""`media-registry serve` benchmarks: each figure next to its floor, served by the same
uvicorn process in the same run.

    python benchmarks/service.py           # the full table (about a minute)
    python benchmarks/service.py --quick   # fewer requests; the test suite runs this mode

The floors are bare ASGI endpoints mounted beside the service: one reads the body and
sha256-hashes it, one returns a constant. Prints a Markdown table; nothing here is a
pass/fail threshold. Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

PNG = "image/png"
BODY_BYTES = 200_000
CLIENTS = 16
Row = tuple[str, str, str, str]


# -- the server process -------------------------------------------------------------------

# A floor endpoint: given the request's scope and receive channel, the JSON body it answers.
Floor = Callable[[dict[str, Any], Any], Awaitable[bytes]]


async def read_body(receive: Any, into: Callable[[bytes], object]) -> None:
    """Hand each chunk of the request's body to ``into`` as it arrives."""
    while True:
        message = await receive()
        into(message.get("body", b""))
        if not message.get("more_body"):
            return


async def hash_floor(_scope: dict[str, Any], receive: Any) -> bytes:
    """Read the body and sha256-hash it."""
    digest = hashlib.sha256()
    await read_body(receive, digest.update)
    return b'{"sha256": "%s"}' % digest.hexdigest().encode()


async def constant_floor(_scope: dict[str, Any], _receive: Any) -> bytes:
    """A constant."""
    return b'{"media_id": "1"}'


FLOORS: dict[str, Floor] = {"/floor/hash": hash_floor, "/floor/constant": constant_floor}


def serve_with_floors(floors: dict[str, Floor] = FLOORS) -> None:
    """Run what ``serve`` runs (configured from the environment), with bare ASGI floor endpoints
    beside it in the same uvicorn process: ``floors`` maps a path to its endpoint."""
    import uvicorn

    from media_registry import AsyncMediaRegistry
    from media_registry.app.metrics import Monitor
    from media_registry.app.service import Options, serving

    registry = AsyncMediaRegistry.from_env()
    service = serving(registry, Monitor(registry), Options())

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        floor = floors.get(scope["path"]) if scope["type"] == "http" else None
        if floor is None:
            await service(scope, receive, send)
            return
        body = await floor(scope, receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=0, log_level="info", access_log=False)


# -- the client side ----------------------------------------------------------------------


async def requests_per_second(url: str, body: bytes, total: int) -> float:
    """POST ``body`` ``total`` times from ``CLIENTS`` concurrent clients; requests per second."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        remaining = iter(range(total))

        async def worker() -> None:
            for _ in remaining:
                answer = await client.post(url, content=body,
                                           headers={"Content-Type": "application/octet-stream"})
                answer.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return total / (time.perf_counter() - started)


def median_latency_us(url: str, calls: int) -> float:
    """Median latency of ``calls`` sequential GETs on one keep-alive connection, in µs."""
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(calls):
            started = time.perf_counter()
            client.get(url).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def interleaved(rounds: int, ours: Any, floor: Any, higher: bool = True) -> tuple[float, float]:
    """The best of ``rounds`` of each measure, taken in turns so that load from elsewhere on
    the machine weighs on both alike."""
    pairs = [(ours(), floor()) for _ in range(rounds)]
    pick = max if higher else min
    return pick(p[0] for p in pairs), pick(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests; seconds, not a minute")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_with_floors()
        return
    uploads, lookups, rounds = (200, 300, 1) if args.quick else (2_000, 3_000, 3)
    with tempfile.TemporaryDirectory(prefix="media-registry-bench-") as tmp, FakeGraphAPI() as api:
        folder = Path(tmp)
        banner = folder / "banner.png"
        banner.write_bytes(sample_media(PNG, size=BODY_BYTES, salt="bench"))
        env = {**os.environ, "WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
               "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id,
               "MEDIA_REGISTRY_DB": str(folder / "registry.db")}
        with MediaRegistry.from_env(db=env["MEDIA_REGISTRY_DB"], token=api.token,
                                    api_base=api.base_url, phone_number_id=api.phone_number_id) as reg:
            reg.get_or_upload(banner)  # the content is known: every POST below is a cache hit
        rows = measure(env, folder, banner.read_bytes(), uploads, lookups, rounds)
    print(f"media-registry serve benchmarks on {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}{' (quick mode)' if args.quick else ''}\n")
    print("| measure | media-registry | floor | ratio |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def measure(env: dict[str, str], folder: Path, body: bytes, uploads: int, lookups: int,
            rounds: int) -> list[Row]:
    log = folder / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, __file__, "--serve"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        base = wait_for_address(server, log)
        sha256 = hashlib.sha256(body).hexdigest()
        ours_rps, floor_rps = interleaved(
            rounds, lambda: asyncio.run(requests_per_second(f"{base}/v1/media", body, uploads)),
            lambda: asyncio.run(requests_per_second(f"{base}/floor/hash", body, uploads)))
        ours_us, floor_us = interleaved(
            rounds, lambda: median_latency_us(f"{base}/v1/media/{sha256}", lookups),
            lambda: median_latency_us(f"{base}/floor/constant", lookups), higher=False)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return [
        (f"cached {BODY_BYTES // 1000} KB uploads, {CLIENTS} clients (req/s; floor: read + sha256)",
         f"{ours_rps:,.0f}", f"{floor_rps:,.0f}", f"{ours_rps / floor_rps:.2f}x throughput"),
        ("GET /v1/media/{sha256} median latency (µs; floor: a constant)",
         f"{ours_us:,.0f}", f"{floor_us:,.0f}", f"{ours_us / floor_us:.2f}x latency"),
    ]


def wait_for_address(server: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", log.read_text())
        if found:
            return found.group(1)
        if server.poll() is not None:
            sys.exit(f"the benchmark server exited: {log.read_text()}")
        time.sleep(0.05)
    sys.exit("the benchmark server did not start")


if __name__ == "__main__":
    main()
