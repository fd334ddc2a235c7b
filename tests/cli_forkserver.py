"""A fork server for the suite's ``media-registry`` processes: it imports the CLI's modules
once, then forks a real process per command, which runs exactly what the console script
runs (``sys.exit(main())``) with the command's arguments, environment, folder and standard
streams. Each command is still a process of its own (its own pid, exit status, signals,
memory and interpreter exit); only the interpreter's start-up and the imports are shared.

:class:`ForkServer` starts the server (``python cli_forkserver.py SCRIPT FD``, FD its
listening socket) and runs commands through it; the server ends when its standard input closes.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Settings the interpreter reads as it starts: a command given other values than the
# server started with runs as a process of its own from the start.
STARTUP = ("PYTHON", "LC_", "LANG")


class ForkServer:
    """The server, and commands run through it as :func:`subprocess.run` runs them."""

    def __init__(self, script: Path) -> None:
        self.folder = tempfile.mkdtemp(prefix="media-registry-cli-")
        self.address = os.path.join(self.folder, "socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind(self.address)
            listener.listen(64)
            self.startup = startup_settings(os.environ)
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(script), str(listener.fileno())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(listener.fileno(),))

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a command with this environment starts as the server did."""
        return startup_settings(env) == self.startup and self.process.poll() is None

    def run(self, args: Sequence[str], env: dict[str, str], cwd: Path | None, stdin: str | None,
            timeout: float) -> subprocess.CompletedProcess[str]:
        """Run the command in a process forked by the server; as ``subprocess.run`` with
        ``capture_output=True, text=True``."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if stdin is not None else (0, -1)
        conn, pid = self._fork(args, env, cwd, [in_r, out_w, err_w])
        for fd in (out_w, err_w, *([in_r] if in_w >= 0 else [])):
            os.close(fd)
        with conn:
            out: list[bytes] = []
            err: list[bytes] = []
            threads = [threading.Thread(target=_drain, args=(out_r, out)),
                       threading.Thread(target=_drain, args=(err_r, err))]
            if in_w >= 0:
                threads.append(threading.Thread(target=_feed, args=(in_w, (stdin or "").encode())))
            for thread in threads:
                thread.start()
            conn.settimeout(timeout)
            try:
                status = int(conn.recv(64))
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                conn.settimeout(None)
                conn.recv(64)
                for thread in threads:
                    thread.join()
                raise subprocess.TimeoutExpired(args, timeout, b"".join(out), b"".join(err)) from None
            for thread in threads:
                thread.join()
        return subprocess.CompletedProcess(list(args), status, _text(b"".join(out)), _text(b"".join(err)))

    def start(self, args: Sequence[str], env: dict[str, str], output: int) -> Forked:
        """Start a long-running command (``serve``) in a forked process, its standard output and
        error on ``output``; as ``subprocess.Popen`` with ``stdin=DEVNULL``."""
        with open(os.devnull, "rb") as nothing:
            return Forked(*self._fork(args, env, None, [nothing.fileno(), output, output]))

    def _fork(self, args: Sequence[str], env: dict[str, str], cwd: Path | None,
              fds: list[int]) -> tuple[socket.socket, int]:
        """Ask the server for a process running ``args`` with ``fds`` as its standard streams:
        the connection its exit status will come on, and its pid."""
        # Without a folder, the caller's, as subprocess gives it (not the server's).
        request = json.dumps({"args": list(args), "env": env, "cwd": str(cwd or os.getcwd())})
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.address)
        socket.send_fds(conn, [request.encode()], fds)
        return conn, int(conn.recv(64))

    def close(self) -> None:
        """Stop the server."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


class Forked:
    """A process the server forked, watched as ``subprocess.Popen`` watches its child: the
    server sends its exit status on the connection when it ends."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._ended(0)

    def wait(self, timeout: float | None = None) -> int:
        status = self._ended(timeout)
        if status is None:
            raise subprocess.TimeoutExpired("serve", timeout or 0)
        return status

    def _ended(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self.conn.settimeout(timeout)
            try:
                self.returncode = int(self.conn.recv(64))
            except (TimeoutError, BlockingIOError):
                return None
            self.conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def startup_settings(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(STARTUP)}


def _drain(fd: int, chunks: list[bytes]) -> None:
    with open(fd, "rb", buffering=0) as stream:
        while chunk := stream.read(1 << 16):
            chunks.append(chunk)


def _feed(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass  # as subprocess.run: a command that does not read all its input is no error
    finally:
        os.close(fd)


def _text(data: bytes) -> str:
    """Output as ``subprocess.run(text=True)`` decodes it (universal newlines)."""
    import locale

    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def serve(listener: socket.socket) -> dict[str, Any]:
    """Answer requests until standard input closes (then exit); in a forked child, return
    that child's request."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin, selectors.EVENT_READ, "parent")
    waiting: dict[int, socket.socket] = {}  # pidfd -> the connection its exit status goes to
    while True:
        for key, _ in selector.select():
            if key.data == "parent":
                raise SystemExit(0)
            if key.data == "accept":
                conn, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                request = json.loads(message)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for other in waiting.values():
                        other.close()
                    for pidfd in waiting:
                        os.close(pidfd)
                    conn.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                        if fd > 2:
                            os.close(fd)
                    return dict(request)
                for fd in fds:
                    if fd > 2:
                        os.close(fd)
                conn.sendall(b"%d\n" % pid)
                pidfd = os.pidfd_open(pid)
                waiting[pidfd] = conn
                selector.register(pidfd, selectors.EVENT_READ, "exited")
            else:
                pidfd = key.fd
                selector.unregister(pidfd)
                ended = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
                assert ended is not None
                # As Popen.returncode: the exit status, or minus the signal that ended it.
                status = ended.si_status if ended.si_code == os.CLD_EXITED else -ended.si_status
                os.close(pidfd)
                conn = waiting.pop(pidfd)
                conn.sendall(b"%d\n" % status)
                conn.close()


def preload() -> None:
    """Import what the commands import, as each process would."""
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # as cli.main does
    import media_registry.app.cli  # noqa: F401
    import media_registry.app.commands  # noqa: F401
    import media_registry.app.service  # noqa: F401
    import media_registry.registry  # noqa: F401
    import media_registry.store.postgres  # noqa: F401


if __name__ == "__main__":
    script = sys.argv[1]
    sys.path[0] = os.path.dirname(script)  # as for the console script
    preload()
    # What the imports made is never collected: the collector of each forked process leaves
    # it alone, so its pages stay shared instead of being copied (a third of a command's cost).
    gc.freeze()
    job = serve(socket.socket(fileno=int(sys.argv[2])))
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    sys.argv = job["args"]  # the console script first, as the kernel gives it
    from media_registry.app.cli import main

    sys.exit(main())
