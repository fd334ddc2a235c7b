"""Benchmarks of the sources beyond local files: URLs, bytes and unseekable streams.

Each figure sits next to its floor measured in the same run: a path hit, one conditional GET
over loopback, ``hashlib.sha256`` over the same bytes, and a 10 KB stream upload.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

PNG = "image/png"
PDF = "application/pdf"
Row = tuple[str, str, str, str]
PerCall = Callable[[Callable[[], object], int], float]


class _QuietFiles(SimpleHTTPRequestHandler):
    """Serves a folder with Last-Modified and 304s (the standard library's file server)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a CDN would

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet."""


@contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """An http:// loopback server for ``folder``; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def bench_url_hits(api: FakeGraphAPI, folder: Path, calls: int, per_call: PerCall) -> list[Row]:
    served = folder / "served"
    served.mkdir()
    card = served / "card.png"
    card.write_bytes(sample_media(PNG, salt="url bench"))
    settings = {"token": api.token, "phone_number_id": api.phone_number_id, "api_base": api.base_url}
    with file_server(served) as base, httpx.Client() as client:
        url = f"{base}/card.png"
        with MediaRegistry(db=folder / "url.db", **settings) as registry:
            registry.get_or_upload(url)
            registry.get_or_upload(card)
            url_us = per_call(lambda: registry.get_or_upload(url), calls)
            path_us = per_call(lambda: registry.get_or_upload(card), calls)
        since = client.get(url).headers["Last-Modified"]

        def conditional_get() -> None:
            assert client.get(url, headers={"If-Modified-Since": since}).status_code == 304

        with MediaRegistry(db=folder / "url.db", url_revalidate=0, **settings) as registry:
            # Alternate the two, so that neither gets a quieter machine than the other.
            stale_us = get_us = float("inf")
            for _ in range(3):
                stale_us = min(stale_us, per_call(lambda: registry.get_or_upload(url), calls // 20))
                get_us = min(get_us, per_call(conditional_get, calls // 20))
    return [("URL hit within MEDIA_REGISTRY_URL_REVALIDATE", f"{url_us:.1f} µs",
             f"{path_us:.1f} µs (path hit)", f"{url_us / path_us:.2f}x"),
            ("URL hit after the window (conditional GET, 304)", f"{stale_us:.0f} µs",
             f"{get_us:.0f} µs (one loopback conditional GET)", f"{stale_us / get_us:.2f}x")]


def bench_bytes(api: FakeGraphAPI, folder: Path, size: int, per_call: PerCall) -> list[Row]:
    data = sample_media(PDF, size=size, salt="bytes bench")
    with MediaRegistry(db=folder / "bytes.db", token=api.token, phone_number_id=api.phone_number_id,
                       api_base=api.base_url) as registry:
        registry.get_or_upload(data)
        ours_s = per_call(lambda: registry.get_or_upload(data), 5) / 1e6
    floor_s = per_call(lambda: hashlib.sha256(data).digest(), 5) / 1e6
    mb = size / 1e6
    return [(f"bytes source hit, {mb:.0f} MB", f"{mb / ours_s:.0f} MB/s",
             f"{mb / floor_s:.0f} MB/s (hashlib.sha256(data))", f"{floor_s / ours_s:.2f}x")]


def bench_stream_memory(api: FakeGraphAPI, folder: Path, size: int) -> list[Row]:
    cli = str(Path(sys.executable).with_name("media-registry"))
    env = {**os.environ, "WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
           "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "MEDIA_REGISTRY_DB": str(folder / "stream.db")}
    peaks = {}
    for label, bytes_ in (("small", 10_000), ("big", size)):
        source = folder / f"stream-{label}.pdf"
        source.write_bytes(sample_media(PDF, size=bytes_, salt=f"stream {label}"))
        peaks[label] = _peak_rss_of_pipe(source, [cli, "upload", "-"], env)
    return [(f"peak RSS, CLI upload - of a {size / 1e6:.0f} MB pipe (unseekable)", f"{peaks['big']:.1f} MB",
             f"{peaks['small']:.1f} MB (10 KB pipe)", f"{peaks['big'] - peaks['small']:+.1f} MB")]


def _peak_rss_of_pipe(source: Path, command: list[str], env: dict[str, str]) -> float:
    """Peak RSS of ``command`` reading ``source`` through a pipe, from a fresh Python parent."""
    probe = ("import resource, subprocess, sys; "
             "feed = subprocess.Popen(['cat', sys.argv[1]], stdout=subprocess.PIPE); "
             "subprocess.run(sys.argv[2:], stdin=feed.stdout, check=True, stdout=subprocess.DEVNULL); "
             "feed.wait(); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, str(source), *command], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # KiB on Linux


def bench_sources(api: FakeGraphAPI, folder: Path, quick: bool, per_call: PerCall) -> list[Row]:
    """Every sources row, in quick mode with small sizes."""
    return [
        *bench_url_hits(api, folder, 400 if quick else 4_000, per_call),
        *bench_bytes(api, folder, 10_000_000, per_call),
        *bench_stream_memory(api, folder, 5_000_000 if quick else 90_000_000),
    ]
