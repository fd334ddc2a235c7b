"""Shared fixtures: a FakeGraphAPI (from media-registry's pytest plugin), registries on every
backend (a real SQLite file in tmp_path, a fresh database on a real PostgreSQL server), sample
media files, and the CLI run as real processes (cli_forkserver.py)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import freezegun
import psycopg
import pytest

from cli_forkserver import ForkServer
from file_server import FileServer
from media_registry import MediaRegistry
from media_registry.testing import FakeGraphAPI, sample_media

from pg_server import PostgresServer, create_database, drop_database

PG_TABLES = ("contents", "media", "hosts", "paths", "leases", "events", "inbound", "url_sources", "inbound_items",
             "sent_messages")

pytest_plugins = ["s3_server"]  # the archive's S3 server fixtures

CLI = Path(sys.executable).with_name("media-registry")
# The PostgreSQL driver's pool keeps time in a thread of its own: a frozen clock must not stall it.
freezegun.configure(extend_ignore_list=["psycopg", "psycopg_pool"])
PNG = "image/png"
PDF = "application/pdf"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own WhatsApp or registry settings."""
    for name in list(os.environ):
        if name.startswith(("WHATSAPP_", "MEDIA_REGISTRY_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the whole run: ``TEST_POSTGRES_URL`` (a superuser's URL) if
    set, else a throwaway server started here and removed at the end."""
    if os.environ.get("TEST_POSTGRES_URL"):
        yield os.environ["TEST_POSTGRES_URL"]
        return
    server = PostgresServer()
    try:
        server.start()
        yield server.url()
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped after it)."""
    url = create_database(postgres_admin_url)
    yield url
    drop_database(postgres_admin_url, url)


@pytest.fixture(scope="session")
def restartable_postgres() -> Iterator[PostgresServer]:
    """A second throwaway PostgreSQL server for the whole run (initdb takes seconds), apart
    from ``postgres_admin_url``'s so that stopping it stops no other test's database."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_server(restartable_postgres: PostgresServer) -> PostgresServer:
    """A running PostgreSQL server that the test may stop and start; no other test uses it
    meanwhile, and each test makes its own database on it."""
    if not restartable_postgres.running():
        restartable_postgres.start()
    return restartable_postgres


@pytest.fixture
def api(fake_graph_api: FakeGraphAPI) -> FakeGraphAPI:
    """The local Graph API every test talks to."""
    return fake_graph_api


# Every registry test runs once per backend. A backend is a name here and a branch in
# ``registry_db_value`` that returns a fresh, empty registry location (MEDIA_REGISTRY_DB).
BACKENDS = ["sqlite", "postgres"]


# The modules whose single tests take longest (whole-tree type checks, benchmark scripts,
# fleets of processes) run first, so that no worker is left with one of them at the end.
LONGEST_FIRST = ("test_wheel.py", "test_docs_examples.py", "test_tooling.py", "test_benchmarks.py",
                 "test_fleet.py", "test_reliability.py", "test_pg_pools.py", "test_service_limits.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``sqlite_only`` checks something only SQLite has (its lock file beside
    the registry): it runs on SQLite alone, and PostgreSQL's counterpart lives elsewhere.
    The modules of ``LONGEST_FIRST`` are moved to the front, in its order."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and params.params.get("backend") == "postgres"
        (drop if on_postgres and item.get_closest_marker("sqlite_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items[:] = sorted(keep, key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the storage backend the test runs on."""
    return str(request.param)


@pytest.fixture
def registry_db_value(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh registry location on the test's backend: what MEDIA_REGISTRY_DB holds."""
    if backend == "sqlite":
        return str(tmp_path / "registry.db")
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture
def stored_bytes(backend: str, registry_db_value: str) -> Callable[[], bytes]:
    """Everything the test's registry holds, as bytes: the SQLite files (journal and WAL
    included), or every row of every PostgreSQL table as text."""

    def read() -> bytes:
        if backend == "sqlite":
            return b"".join(p.read_bytes() for p in Path(registry_db_value).parent.glob("registry.db*"))
        with psycopg.connect(registry_db_value) as con:
            return "\n".join(
                str(con.execute(f"SELECT string_agg(t::text, ' ') FROM {table} AS t").fetchone())
                for table in PG_TABLES
            ).encode()

    return read


@pytest.fixture
def make_registry(registry_db_value: str, api: FakeGraphAPI) -> Iterator[Callable[..., MediaRegistry]]:
    """Build registries on the test's backend pointed at the fake API; closed after."""
    made: list[MediaRegistry] = []

    def make(**overrides: Any) -> MediaRegistry:
        settings: dict[str, Any] = {
            "db": registry_db_value, "token": api.token,
            "phone_number_id": api.phone_number_id, "api_base": api.base_url,
            "retry_backoff": 0.01, "max_retries": 2,
        }
        registry = MediaRegistry(**{**settings, **overrides})
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(make_registry: Callable[..., MediaRegistry]) -> MediaRegistry:
    """A registry with the default settings, on the fake API."""
    return make_registry()


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    """Write sample media: ``make_file("a.png", PNG, salt="1")``."""

    def make(name: str, mime_type: str = PNG, **kwargs: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample_media(mime_type, salt=kwargs.pop("salt", name), **kwargs))
        return path

    return make


@pytest.fixture
def cli_env(registry_db_value: str, api: FakeGraphAPI) -> dict[str, str]:
    """Environment for CLI subprocesses: the fake API and a registry on the test's backend."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "MEDIA_REGISTRY_"))}
    env.update(
        WHATSAPP_TOKEN=api.token,
        WHATSAPP_PHONE_NUMBER_ID=api.phone_number_id,
        WHATSAPP_API_BASE=api.base_url,
        MEDIA_REGISTRY_DB=registry_db_value,
        MEDIA_REGISTRY_RETRY_BACKOFF="0.01",
        MEDIA_REGISTRY_MAX_RETRIES="1",
    )
    return env


_fork_server: list[ForkServer] = []
_fork_server_lock = threading.Lock()


def fork_server(env: dict[str, str]) -> ForkServer | None:
    """The suite's fork server (cli_forkserver.py), when a process with ``env`` can come from it."""
    with _fork_server_lock:  # tests run commands from threads of their own too
        if not _fork_server and hasattr(os, "pidfd_open"):
            _fork_server.append(ForkServer(CLI))
            atexit.register(_fork_server[0].close)
    return _fork_server[0] if _fork_server and _fork_server[0].serves(env) else None


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``media-registry`` console script as a real process: forked from a
    server that has imported it already (cli_forkserver.py), or started afresh when the
    environment changes how the interpreter starts."""
    server = fork_server(env)
    if server is not None:
        return server.run([str(CLI), *args], env=env, cwd=cwd, stdin=stdin, timeout=60)
    return subprocess.run(
        [str(CLI), *args],
        env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def settle(path: Path) -> None:
    """Let the clock leave the second in which ``path`` was last changed, so that the
    fingerprint recorded next is trusted (not "racily clean") and the next call is a hit."""
    changed = max(path.stat().st_mtime_ns, path.stat().st_ctime_ns) // 1_000_000_000
    while int(time.time()) <= changed:
        time.sleep(0.05)


def unprivileged(*command: str) -> list[str]:
    """The command as a process for which file permissions hold: root drops the capabilities
    that let it read and write regardless (setpriv, from util-linux)."""
    if os.geteuid() != 0:
        return list(command)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]


@pytest.fixture
def files() -> Iterator[FileServer]:
    """A local HTTP file server for URL sources (ETag, 304, redirects, slow and lying bodies)."""
    server = FileServer()
    yield server
    server.stop()
