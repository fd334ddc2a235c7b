"""Template header handle benchmarks: each figure next to its floor, measured in the same run.

    python benchmarks/handles.py           # a 90 MB PDF (documents go up to 100 MB)
    python benchmarks/handles.py --quick   # a 5 MB PDF; the test suite runs this mode

The upload is ``get_header_handle`` on a new registry (sniff, open the session, stream the
bytes, hashed as they go) against a plain ``httpx`` POST of the same file to the same local
endpoint (the session opened the same way); each runs in a fresh process, the two alternated,
against the local Graph API in a process of its own; the best time of each is kept, and its
RSS growth is the peak over the RSS before the call. The
cached handle is set against the SQLite floor: one ``stat`` and one query. Prints a Markdown
table; nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import per_call, print_table

from media_registry import MediaRegistry
from media_registry.testing import sample_media

CLI = Path(sys.executable).with_name("media-registry")
PDF, PNG = "application/pdf", "image/png"
Row = tuple[str, str, str, str]
# One upload in a fresh process: prints its seconds and its RSS growth in bytes.
CHILD = r"""
import os, sys, time
import httpx
from media_registry import MediaRegistry

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

mode, path, db = sys.argv[1:4]
env = os.environ
if mode == "ours":
    registry = MediaRegistry(db=db, token=env["WHATSAPP_TOKEN"], api_base=env["WHATSAPP_API_BASE"],
                             app_id=env["WHATSAPP_APP_ID"])
    before = rss("VmRSS")
    started = time.perf_counter()
    registry.get_header_handle(path)
else:
    http = httpx.Client(headers={"Authorization": "Bearer " + env["WHATSAPP_TOKEN"]}, timeout=600)
    before = rss("VmRSS")
    started = time.perf_counter()
    base = env["WHATSAPP_API_BASE"]
    session = http.post(f"{base}/{env['WHATSAPP_APP_ID']}/uploads", params={
        "file_name": os.path.basename(path), "file_length": os.path.getsize(path),
        "file_type": "application/pdf"}).json()["id"]
    with open(path, "rb") as file:
        answer = http.post(f"{base}/{session}", content=file, headers={
            "Authorization": "OAuth " + env["WHATSAPP_TOKEN"], "file_offset": "0"})
    assert "h" in answer.json(), answer.text
print(time.perf_counter() - started, rss("VmHWM") - before)
"""


def start_api() -> tuple[subprocess.Popen[str], dict[str, str]]:
    """``media-registry fake-api`` in a process of its own, and the settings it prints."""
    process = subprocess.Popen([str(CLI), "fake-api"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    settings = {}
    while len(settings) < 4:
        name, _, value = process.stdout.readline().removeprefix("export ").strip().partition("=")
        settings[name] = shlex.split(value)[0]
    return process, settings


def one_upload(mode: str, path: Path, folder: Path, env: dict[str, str], run: int) -> tuple[float, int]:
    db = folder / f"{mode}-{run}.db"
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(db)], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def bench_upload(folder: Path, env: dict[str, str], size: int, runs: int) -> list[Row]:
    path = folder / "catalogue.pdf"
    path.write_bytes(sample_media(PDF, size=size, salt="catalogue"))
    ours, plain = [], []
    for run in range(runs):  # alternated: a load that comes and goes weighs on both alike
        ours.append(one_upload("ours", path, folder, env, run))
        plain.append(one_upload("plain", path, folder, env, run))
    ours_s, plain_s = min(t for t, _ in ours), min(t for t, _ in plain)
    ours_rss, plain_rss = max(r for _, r in ours) / 1e6, max(r for _, r in plain) / 1e6
    mb = size / 1e6
    return [(f"header handle upload, {mb:.0f} MB PDF (time)", f"{ours_s:.2f} s ({mb / ours_s:.0f} MB/s)",
             f"{plain_s:.2f} s (plain httpx POST)", f"{plain_s / ours_s:.2f}x"),
            (f"header handle upload, {mb:.0f} MB PDF (RSS growth)", f"{ours_rss:.1f} MB",
             f"{plain_rss:.1f} MB (plain httpx POST)", f"+{ours_rss - plain_rss:.1f} MB")]


def bench_cached(folder: Path, env: dict[str, str], calls: int) -> list[Row]:
    path = folder / "header.png"
    path.write_bytes(sample_media(PNG, salt="header"))
    db = folder / "cached.db"
    with MediaRegistry(db=str(db), token=env["WHATSAPP_TOKEN"], api_base=env["WHATSAPP_API_BASE"],
                       app_id=env["WHATSAPP_APP_ID"], phone_number_id=env["WHATSAPP_PHONE_NUMBER_ID"]) as registry:
        registry.get_header_handle(path)
        registry.get_or_upload(path)
        time.sleep(1.1)  # out of the racily-clean second: the next calls trust the fingerprint
        registry.get_header_handle(path)
        registry.get_or_upload(path)
        con = sqlite3.connect(db)

        def floor() -> None:
            os.stat(path)
            con.execute("SELECT handle FROM header_handles WHERE sha256 = ? AND app_id = ?",
                        ("0" * 64, env["WHATSAPP_APP_ID"])).fetchone()

        hit_us = per_call(lambda: registry.get_header_handle(path), calls)
        floor_us = per_call(floor, calls)
        media_us = per_call(lambda: registry.get_or_upload(path), calls)
        con.close()
    return [("cached header handle", f"{hit_us:.1f} µs", f"{floor_us:.1f} µs (stat + 1 query)",
             f"{hit_us / floor_us:.2f}x"),
            ("cached header handle vs cached media ID", f"{hit_us:.1f} µs",
             f"{media_us:.1f} µs (get_or_upload's cache hit)", f"{hit_us / media_us:.2f}x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 5 MB PDF; seconds, not minutes")
    quick = parser.parse_args().quick
    process, env = start_api()
    try:
        with tempfile.TemporaryDirectory(prefix="media-registry-bench-") as tmp:
            folder = Path(tmp)
            rows = bench_upload(folder, env, 5_000_000 if quick else 90_000_000, 1 if quick else 5)
            rows += bench_cached(folder, env, 300 if quick else 20_000)
    finally:
        process.terminate()
        process.wait()
    print_table(rows, quick)


if __name__ == "__main__":
    main()
