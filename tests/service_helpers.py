"""A real ``media-registry serve`` (uvicorn) in a subprocess, for the service's tests."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from cli_forkserver import Forked

from conftest import CLI, fork_server, wait_for

LISTENING = re.compile(r"serving on http://([\d.]+):(\d+)")


@dataclass
class Server:
    """A running service: its process, its log and the URL it answers on."""

    process: subprocess.Popen[bytes] | Forked
    log: Path
    url: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def start_server(env: dict[str, str], log: Path, *flags: str, connect_host: str = "127.0.0.1") -> Server:
    """Start ``serve --port 0`` and wait until uvicorn says where it listens."""
    command = [str(CLI), "serve", "--port", "0", *flags]
    forks = fork_server(env)
    with open(log, "wb") as out:
        process: subprocess.Popen[bytes] | Forked
        if forks is not None:  # a real process, forked from one that imported the service once
            process = forks.start(command, env, out.fileno())
        else:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, log)

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {server.text()}")
        return LISTENING.search(server.text()) is not None

    wait_for(listening, "the service to listen")
    port = LISTENING.search(server.text()).group(2)  # type: ignore[union-attr]
    server.url = f"http://{connect_host}:{port}"
    return server


def start_metrics_daemon(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``daemon --metrics-port`` on a free loopback port, its output in ``log``; returns once
    its first refresh pass is done (the caller stops it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "wb") as out:
        daemon = subprocess.Popen([str(CLI), "daemon", "--metrics-port", str(port)], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "refresh done" in log.read_text(), "the first refresh pass")
    except BaseException:
        daemon.kill()
        daemon.wait()
        raise
    return daemon, port
