"""One host of the local-cache tests: a process with its own PostgreSQL store and memory
(``python cache_host.py URL HOST_ID BUSY_TIMEOUT``), answering one command per line on stdin with one line.

    hit PATH              "<media ID or None> <memory|db>" (where the answer came from), or "error"
    wait KEY [SECONDS [AFTER]]
                          the monotonic time a notification of KEY arrived (after AFTER) once
                          one has (within SECONDS, 30 by default), or "None"
    size                  how many answers memory holds
    remember PATH SHA256  the path holds that content
    supersede SHA256 ID   a new current ID for the content (the one before is superseded)
    invalidate ID         Meta refused that ID
    delete SHA256         the content is deleted

Paths are fingerprints with fixed stat fields: no file is needed. Times are ``time.monotonic``,
one clock for every process of the machine.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime, timedelta, timezone

from media_registry.content.hashing import Fingerprint
from media_registry.errors import RegistryError
from media_registry.store import NewMedia, Store, new_owner, open_store

PHONE = "106540352242922"
PNG = "image/png"


def fingerprint(path: str) -> Fingerprint:
    return Fingerprint(path, 10, 1, 1, 1, 1)


def main(url: str, host: str, busy_timeout: str) -> None:
    store = open_store(url, host_id=host, local_cache=1000, busy_timeout=float(busy_timeout))
    memory = store.backend.memory
    assert memory is not None
    seen: dict[str, list[float]] = {}
    notice = memory.notice

    def noticed(key: str) -> None:
        notice(key)
        seen.setdefault(key, []).append(time.monotonic())

    memory.notice = noticed  # type: ignore[method-assign]
    for line in sys.stdin:
        command, *args = line.split()
        try:
            answer = run(store, seen, command, args)
        except RegistryError as exc:
            answer = f"error {exc}".replace("\n", " ")
        print(answer, flush=True)
    store.close()


def run(store: Store, seen: dict[str, list[float]], command: str, args: list[str]) -> str:
    now = datetime.now(timezone.utc)
    memory = store.backend.memory
    assert memory is not None
    if command == "hit":
        fp = fingerprint(args[0])
        valid_until = now + timedelta(days=1)
        entry = memory.entries.get((PHONE, fp))
        cached = memory.serving() and entry is not None and entry[0] > valid_until
        hit = store.lookup_path(fp, PHONE, valid_until)
        return f"{hit and hit.media_id} {'memory' if cached else 'db'}"
    if command == "wait":
        deadline = time.monotonic() + (float(args[1]) if args[1:] else 30)
        after = float(args[2]) if args[2:] else -math.inf
        while time.monotonic() < deadline:
            if arrivals := [at for at in seen.get(args[0], ()) if at > after]:
                return repr(arrivals[0])
            time.sleep(0.001)
        return "None"
    if command == "size":
        return str(len(memory.entries))
    if command == "remember":
        store.remember_path(fingerprint(args[0]), args[1], PNG, now - timedelta(minutes=1))
    elif command == "supersede":
        owner = new_owner()
        status = store.take_lease(args[0], PHONE, owner, now, now + timedelta(days=40), timedelta(minutes=1)).status
        if status.value != "acquired":
            return status.value
        media = NewMedia(args[1], args[0], PHONE, PNG, 10, now, now + timedelta(days=30), None, "upload")
        return store.record_upload(media, owner).value
    elif command == "invalidate":
        store.invalidate_media(args[0], now, "refused")
    elif command == "delete":
        store.mark_deleted(args[0], now, "deleted")
    return "ok"


if __name__ == "__main__":
    main(*sys.argv[1:4])
