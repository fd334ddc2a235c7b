"""Who holds an upload lease: ``host:pid:thread:nonce``, and whether it may still be alive."""

from __future__ import annotations

import _thread  # threading's get_ident, without threading: the cache hit imports this module
import os

from ..defaults import HOST_ID

HOST = HOST_ID  # this machine, in the lease owners it names


def new_owner() -> str:
    """A lease owner name unique to this host, process, thread and call."""
    return f"{HOST}:{os.getpid()}:{_thread.get_ident()}:{os.urandom(4).hex()}"


def owner_alive(owner: str) -> bool:
    """False only when the owner ran on this host in a process that has since died."""
    host, pid, *_ = owner.split(":")
    if host != HOST or not pid.isdigit():
        return True  # another host: only the lease expiry can tell
    from .._processes import alive  # here: a cache hit takes no lease

    return alive(int(pid))
