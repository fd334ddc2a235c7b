"""Every example of README.md and of the site's pages runs as written: each page's Python blocks
(Sybil) and shell sessions (``doc_examples``), in order, against a local Graph API of the page's
own; a session prints what it shows. The blocks that cannot run here say so where they stand,
and are listed below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

from doc_examples import PAGES, ROOT, Terminal, blocks, make_files, terminal_env

# Each block that is not run, and why: the reason is printed above it on its page.
NOT_RUN = {
}


@pytest.mark.sqlite_only  # the examples, not the backend, are under test
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_example_of_the_page_runs_as_written(page: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    make_files(folder)
    terminal = Terminal(folder, terminal_env(folder))
    python = {example.line: example for example in Sybil([PythonCodeBlockParser()]).parse(page)}
    monkeypatch.chdir(folder)
    try:
        for block in blocks(page):
            if block.save_as:
                terminal.save(block.save_as, block.body)
            if block.not_run or not block.is_example:
                continue
            if block.lang == "python":
                monkeypatch.chdir(terminal.env["PWD"])
                _use_environment(terminal.env, monkeypatch)
                if terminal.api is None:  # a sender's example reads the local API from its exports
                    terminal.start_api()
                    _use_environment(terminal.env, monkeypatch)
                python[block.line].evaluate()
            elif block.is_session:
                printed, shown = terminal.run(block)
                assert printed == shown, f"{block.where} printed:\n{printed}"
            else:
                if terminal.api is None:
                    terminal.start_api()
                if block.before:
                    terminal.shell(block.before, check=True)
                terminal.shell(block.body, check=True)
    finally:
        terminal.close()


def test_the_blocks_not_run_are_the_ones_listed_and_say_why() -> None:
    found = {(block.page.name, block.line): block.not_run for page in PAGES for block in blocks(page)
             if block.not_run}
    assert found == NOT_RUN


def test_every_shell_block_is_a_session_or_says_why_it_is_not_run() -> None:
    """A block of commands with no output shown still runs (as a script), unless marked."""
    for page in PAGES:
        for block in blocks(page):
            if block.lang in ("console", "sh", "shell", "bash"):
                assert block.is_example, block.where


def test_the_readme_shows_the_test_command_ci_runs() -> None:
    command = "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m pytest"
    assert command in (ROOT / "README.md").read_text() and command in (ROOT / ".ci" / "run").read_text()
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def _use_environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's settings in this process's environment, for a Python block."""
    for name in list(os.environ):
        if name.startswith(("WHATSAPP_", "MEDIA_REGISTRY_")) and name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(("WHATSAPP_", "MEDIA_REGISTRY_")):
            monkeypatch.setenv(name, value)
