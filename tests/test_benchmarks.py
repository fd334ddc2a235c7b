"""The benchmark script keeps working (quick mode). Its numbers are reported, never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "run.py"


def test_the_benchmarks_run_and_print_every_row() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    measures = [row.split(" | ")[0].lstrip("| ") for row in rows[1:]]
    for expected in ("cache hit, 1,000 contents", "cold hashing", "peak RSS, CLI upload",
                     "peak RSS, CLI download", "refresh", "per send", "cache hits/s",
                     "async: longest event-loop stall"):
        assert any(m.startswith(expected) for m in measures), (expected, measures)
    assert all(len(row.split(" | ")) == 4 for row in rows)


def test_the_cli_benchmarks_run_and_print_every_row() -> None:
    script = SCRIPT.with_name("cli.py")
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    measures = [row.split(" | ")[0].lstrip("| ") for row in rows[1:]]
    for expected in ("CLI start-up: cached `upload FILE`", "CLI start-up: `--version`", "CLI start-up: `--help`",
                     "CLI start-up: `ls`, empty registry", "CLI start-up: `show FILE`",
                     "CLI start-up: `stats`, empty registry", "`ls --json`, 300 contents",
                     "`ls --json`, 3,000 contents"):
        assert expected in measures, (expected, measures)
    assert all(len(row.split(" | ")) == 4 for row in rows)


def test_the_service_benchmarks_run_and_print_both_rows() -> None:
    script = SCRIPT.with_name("service.py")
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0].lstrip("| ").split(",")[0] for row in rows[1:]] == [
        "cached 200 KB uploads", "GET /v1/media/{sha256} median latency (µs; floor: a constant)"]
    assert all(row.split(" | ")[3].rstrip(" |").endswith(("x throughput", "x latency")) for row in rows[1:])


def test_the_postgresql_benchmarks_run_and_print_every_row() -> None:
    script = SCRIPT.with_name("postgres.py")
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measures = [line.split(" | ")[0].lstrip("| ") for line in result.stdout.splitlines() if line.startswith("| P")]
    for expected in ("PostgreSQL cache hit, 1,000 contents", "PostgreSQL cache hits/s, 8 processes",
                     "PostgreSQL cold upload"):
        assert any(m.startswith(expected) for m in measures), (expected, measures)


def test_the_webhook_benchmarks_run_and_print_both_rows() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT.with_name("webhooks.py")), "--quick"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0].lstrip("| ").split(",")[0] for row in rows[1:]] == [
        "POST /v1/webhooks/whatsapp", "archive"]
    assert all(row.split(" | ")[3].rstrip(" |").endswith("x throughput") for row in rows[1:])


def test_the_header_handle_benchmarks_run_and_print_every_row() -> None:
    script = SCRIPT.with_name("handles.py")
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows[1:]] == [
        "header handle upload, 5 MB PDF (time)", "header handle upload, 5 MB PDF (RSS growth)",
        "cached header handle", "cached header handle vs cached media ID"]
    assert all(len(row.split(" | ")) == 4 for row in rows)
