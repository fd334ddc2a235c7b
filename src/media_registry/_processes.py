"""Whether a process on this host still runs: how leases and temporary files of a killed
process are recognised as abandoned."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True unless no process with this ID exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
