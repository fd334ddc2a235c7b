"""The checks that keep the code honest run with the suite, so CI runs them: mypy in strict
mode (its settings in pyproject.toml) and ruff; and the package ships its type hints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

import media_registry

ROOT = Path(__file__).parent.parent
# What the suite runs; the pre-commit hooks run the same (.pre-commit-config.yaml).
RUFF = ("ruff", "check", "src", "tests", "benchmarks", "docs")
MYPY = ("mypy",)


def run_from_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_mypy_strict_finds_nothing() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+
    assert re.search(r'(?m)^\[tool\.mypy\]\nstrict = true\nfiles = \["src/media_registry"\]$', pyproject)
    result = run_from_root(*MYPY)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing() -> None:
    result = run_from_root(*RUFF)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pre_commit_hooks_run_what_the_suite_runs() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert hooks["ruff"]["entry"] == "python -m " + " ".join(RUFF)
    assert hooks["mypy"]["entry"] == "python -m " + " ".join(MYPY)
    assert not any(hook["pass_filenames"] for hook in hooks.values())  # the whole tree, as here


def test_the_installed_package_is_marked_typed() -> None:
    assert (Path(media_registry.__file__).parent / "py.typed").is_file()
