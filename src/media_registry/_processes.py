"""Whether a process on this host still runs: how leases of a killed process are recognised
as abandoned."""

from __future__ import annotations

import os

PROC = os.path.isdir("/proc/self")


def alive(pid: int) -> bool:
    """True unless no process with this ID runs: never existed, exited, or was killed and not
    yet reaped by its parent (a zombie holds its ID but will never act again)."""
    try:
        os.kill(pid, 0)  # signal 0 probes without signalling
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return not _state(pid).startswith("Z")


def _state(pid: int) -> str:
    """The process state letters (``R``, ``S``, ``Z``...): from ``/proc/PID/stat`` on Linux,
    from ``ps`` elsewhere (macOS, BSD); empty when neither can tell."""
    if not PROC:
        return _ps_state(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (command) S ...": the command may hold spaces and parentheses.
            return stat.read().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _ps_state(pid: int) -> str:
    import subprocess  # only where there is no /proc: every command's start-up is spared it

    try:
        ps = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)],
                            capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return ps.stdout.strip()
