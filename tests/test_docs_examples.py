"""Every example of README.md and of the site's pages runs as written: each page's Python blocks
(Sybil) and shell sessions (``doc_examples``), in order, against a local Graph API of the page's
own; a session prints what it shows. The blocks that cannot run here say so where they stand,
and are listed below."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

from doc_examples import PAGES, ROOT, SHOWN_DATABASES, Terminal, blocks, commands, make_files, terminal_env

from pg_server import create_database, drop_database

# Each block that is not run (its page, the start of its first line), and why: the reason is
# printed above it on its page.
NOT_RUN = {
    ('README.md', "python3 -m venv .venv && .venv/bin/pip install '.[serve]' &&"):
        "installs from a checkout; the suite's wheel test installs and runs the demo",
    ('README.md', "python3 -m venv .venv && .venv/bin/pip install '.[test]' && "):
        'this is the test suite itself',
    ('fleets.md', 'sudo apt-get install -y postgresql'):
        "needs root and Debian's apt-get",
    ('fleets.md', ".venv/bin/pip install '.[postgres]'        # psycopg 3 and i"):
        'needs the PostgreSQL server and databases of the steps above',
    ('fleets.md', 'services:'):
        'needs a container engine',
    ('fleets.md', '$ psql "$MEDIA_REGISTRY_DB" -c "SELECT action, media_id, pat'):
        'psql sizes its columns to the paths of the machine it ran on',
    ('getting-started.md', "python3 -m venv .venv && .venv/bin/pip install '.[serve]' &&"):
        "installs from a checkout; the suite's wheel test installs and runs the demo",
    ('getting-started.md', "python3 -m venv .venv && .venv/bin/pip install '.[test]' && "):
        'this is the test suite itself',
    ('operations.md', '$ faketime -f +84d media-registry daemon'):
        'it runs until stopped; tests/test_daemon.py runs the daemon and stops it with SIGTERM',
    ('operations.md', '[Unit]'):
        'needs systemd',
    ('operations.md', 'FROM python:3.12-slim'):
        'needs a container engine',
    ('operations.md', 'docker run -d --name media-registry -e WHATSAPP_TOKEN -e WHA'):
        'needs a container engine',
    ('operations.md', 'scrape_configs:'):
        "a Prometheus server's configuration",
    ('python-guide.md', 'pip install .                     # from this checkout (the '):
        "needs a Meta system user's token",
    ('python-guide.md', 'import boto3'):
        'needs an S3 bucket and AWS credentials',
    ('service.md', "pip install '.[serve]'                  # from a checkout: F"):
        'installs from a checkout; the sessions below run `serve`',
}


@pytest.mark.sqlite_only  # the examples, not the backend, are under test
@pytest.mark.timeout(600)  # a page runs many commands, each a process
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_example_of_the_page_runs_as_written(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    make_files(folder)
    terminal = Terminal(folder, terminal_env(folder))
    for shown in SHOWN_DATABASES:  # a database of the suite's PostgreSQL server stands in for each
        if shown in page.read_text():
            admin = request.getfixturevalue("postgres_admin_url")
            terminal.use_postgres(shown, url := create_database(admin))
            request.addfinalizer(functools.partial(drop_database, admin, url))
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
    found = {(block.page.name, block.body.splitlines()[0][:60]): block.not_run
             for page in PAGES for block in blocks(page) if block.not_run}
    assert found == NOT_RUN


def test_the_parser_reads_markers_prompts_and_here_documents(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Text.\n\n*not run: needs systemd*\n\n```sh\nsystemctl start x\n```\n\n"
                    "<!-- before: touch a -->\n\n  ```console\n  $ ls\n  a\n  app-1$ cat > b <<END\n"
                    "  one\n  END\n  $ echo done\n  done\n  ```\n")
    first, second = blocks(page)
    assert (first.not_run, first.is_session, first.before) == ("needs systemd", False, None)
    assert (second.not_run, second.is_session, second.before) == (None, True, "touch a")
    assert list(commands(second.body)) == [("", "ls", "a\n"), ("app-1", "cat > b <<END\none\nEND", ""),
                                           ("", "echo done", "done\n")]


def test_every_console_block_is_a_session() -> None:
    """A ``console`` block shows commands at a prompt, so it is run and its output compared."""
    for page in PAGES:
        for block in blocks(page):
            if block.lang == "console":
                assert block.is_session, block.where


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
