"""The command line as shell scripts and other languages use it: one process per call.

    python benchmarks/cli.py           # start-up ratios, then ls --json at 10k, 100k, 1M contents
    python benchmarks/cli.py --quick   # fewer runs and small registries; the test suite runs it

Each start-up figure is the median wall time of real ``media-registry`` processes, as a ratio
to ``python -c "import sqlite3"`` (the floor: an interpreter that can open a registry) timed
in the same rounds, interleaved so that both see the same machine load. Our modules are
byte-compiled first, as ``pip install`` leaves them (the floor's stdlib modules are too).
Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import PDF, Row, fill, print_table

import media_registry
from media_registry.store import open_store
from media_registry.testing import FakeGraphAPI, sample_media

CLI = str(Path(sys.executable).with_name("media-registry"))
FLOOR = [sys.executable, "-c", "import sqlite3"]
BYTECODE_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def wall(command: list[str], env: dict[str, str], timeout: float | None = None) -> float:
    """Seconds for one run of ``command``, its output discarded; it must succeed."""
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   timeout=timeout)
    return time.perf_counter() - started


def bench_startup(api: FakeGraphAPI, folder: Path, rounds: int) -> list[Row]:
    compileall.compile_dir(Path(media_registry.__file__).parent, quiet=1)
    env = {**BYTECODE_ENV, "WHATSAPP_TOKEN": api.token, "WHATSAPP_API_BASE": api.base_url,
           "WHATSAPP_PHONE_NUMBER_ID": api.phone_number_id, "MEDIA_REGISTRY_DB": str(folder / "cli.db")}
    brochure = folder / "brochure.pdf"
    brochure.write_bytes(sample_media(PDF, size=48_000, salt="cli"))
    time.sleep(1)  # a fingerprint recorded in the file's own second is not trusted (racily clean)
    subprocess.run([CLI, "upload", str(brochure)], env=env, check=True, capture_output=True)
    empty = {**env, "MEDIA_REGISTRY_DB": str(folder / "empty.db")}
    subprocess.run([CLI, "init"], env=empty, check=True, capture_output=True)
    commands = {
        "CLI start-up: cached `upload FILE`": ([CLI, "upload", str(brochure)], env),
        "CLI start-up: `--version`": ([CLI, "--version"], env),
        "CLI start-up: `--help`": ([CLI, "--help"], env),
        "CLI start-up: `ls`, empty registry": ([CLI, "ls"], empty),
        "CLI start-up: `show FILE`": ([CLI, "show", str(brochure)], env),
        "CLI start-up: `stats`, empty registry": ([CLI, "stats"], empty),
    }
    times: dict[str, list[float]] = {name: [] for name in ["floor", *commands]}
    for _ in range(rounds):
        times["floor"].append(wall(FLOOR, env))
        for name, (command, command_env) in commands.items():
            times[name].append(wall(command, command_env))
    floor = statistics.median(times["floor"])
    rows = []
    for name in commands:
        median = statistics.median(times[name])
        rows.append((name, f"{median * 1000:.0f} ms", f"{floor * 1000:.0f} ms (python -c 'import sqlite3')",
                     f"{median / floor:.1f}x"))
    return rows


def bench_ls(folder: Path, sizes: list[int], timeout: float) -> list[Row]:
    """``ls --json`` on synthetic registries (written straight into the schema), once each."""
    env = {**BYTECODE_ENV, "WHATSAPP_PHONE_NUMBER_ID": "1"}
    rows: list[Row] = []
    seconds: list[float] = []
    for size in sizes:
        db = folder / f"ls-{size}.db"
        open_store(db).close()  # the schema
        fill(db, size, "1")
        try:
            seconds.append(wall([CLI, "--db", str(db), "ls", "--json"], env, timeout))
        except subprocess.TimeoutExpired:
            rows.append((f"`ls --json`, {size:,} contents", f"> {timeout:.0f} s (stopped)", "-", "-"))
            break  # the larger ones would only take longer
        finally:
            db.unlink()
        ratio = f"{seconds[-1] / seconds[0]:.1f}x for {size // sizes[0]}x the contents" if len(seconds) > 1 else "-"
        rows.append((f"`ls --json`, {size:,} contents", f"{seconds[-1]:.2f} s",
                     f"{seconds[0]:.2f} s ({sizes[0]:,} contents)", ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, small registries")
    quick = parser.parse_args().quick
    with tempfile.TemporaryDirectory(prefix="media-registry-bench-cli-") as tmp, FakeGraphAPI() as api:
        folder = Path(tmp)
        rows = bench_startup(api, folder, rounds=5 if quick else 31)
        rows += bench_ls(folder, [300, 3_000] if quick else [10_000, 100_000, 1_000_000],
                         timeout=60 if quick else 300)
    print_table(rows, quick)


if __name__ == "__main__":
    main()
