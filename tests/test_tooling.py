"""The checks that keep the code honest run with the suite, so CI runs them: mypy in strict
mode (its settings in pyproject.toml) and ruff; and the package ships its type hints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import media_registry

ROOT = Path(__file__).parent.parent


def run_from_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_mypy_strict_finds_nothing() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+
    assert re.search(r'(?m)^\[tool\.mypy\]\nstrict = true\nfiles = \["src/media_registry"\]$', pyproject)
    result = run_from_root("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = run_from_root("ruff", "check", "src", "tests", "benchmarks", "docs")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_installed_package_is_marked_typed() -> None:
    assert (Path(media_registry.__file__).parent / "py.typed").is_file()
