"""The fake Graph API's Resumable Upload API: upload sessions of an app, the transfer of their
bytes (which may break at a given offset), and the offset to resume from.

``POST /{app_id}/uploads?file_name=&file_length=&file_type=`` opens a session
(``{"id": "upload:<session>"}``); ``POST /upload:<session>`` with ``Authorization: OAuth
<token>`` and ``file_offset`` sends bytes from that offset (``{"h": "<handle>"}`` once all
arrived); ``GET /upload:<session>`` says where to resume (``{"id": ..., "file_offset": N}``).
The bytes are hashed as they arrive, never kept: a 100 MB sample costs the fake no memory.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

# What Meta takes as a template header's sample.
HANDLE_TYPES = ("application/pdf", "image/jpeg", "image/png", "video/mp4")
_CHUNK = 1 << 20  # large reads: the fake is not what limits an upload


@dataclass
class Session:
    """One upload session: what it announced, what arrived, and its handle once complete."""

    app_id: str
    file_name: str
    file_length: int
    file_type: str
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    handle: str | None = None


class Sessions:
    """The fake's upload sessions, and how many bytes every transfer carried."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.bytes_received = 0
        self.handles: dict[str, str] = {}  # handle -> sha256 of the bytes it stands for

    def open(self, session: Session) -> str:
        """A new session's ID as Meta gives it (``upload:...?sig=...``)."""
        session_id = "upload:" + base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
        with self._lock:
            self._sessions[session_id] = session
        return f"{session_id}?sig={secrets.token_urlsafe(12)}"

    def get(self, session_id: str) -> Session | None:
        """The session, or None if the fake never opened it."""
        with self._lock:
            return self._sessions.get(session_id)

    def count(self) -> int:
        """How many sessions were opened."""
        with self._lock:
            return len(self._sessions)

    def take(self, session: Session, chunk: bytes) -> None:
        """Bytes that arrived for ``session``."""
        with self._lock:
            session.digest.update(chunk)
            session.received += len(chunk)
            self.bytes_received += len(chunk)

    def finish(self, session: Session) -> str:
        """The handle of a session whose bytes all arrived."""
        with self._lock:
            if session.handle is None:
                mime = base64.b64encode(session.file_type.encode()).decode()
                session.handle = f"4::{mime}:{secrets.token_urlsafe(24)}"
                self.handles[session.handle] = session.digest.hexdigest()
            return session.handle

    def clear(self) -> None:
        """Forget every session and count."""
        with self._lock:
            self._sessions.clear()
            self.handles.clear()
            self.bytes_received = 0


def opening(query: dict[str, list[str]]) -> tuple[Session | None, str]:
    """The session a ``POST /{app_id}/uploads`` asks for, or None and Meta's complaint."""
    name, length, kind = (query.get(key, [""])[0] for key in ("file_name", "file_length", "file_type"))
    if not name:
        return None, "The parameter file_name is required."
    if not length.isdigit() or int(length) == 0:
        return None, "The parameter file_length is required and must be a positive integer."
    if kind not in HANDLE_TYPES:
        return None, (f"Param file_type must be one of {{{', '.join(HANDLE_TYPES)}}}. "
                      f"Received '{kind}'.")
    return Session("", name, int(length), kind), ""


def read_into(sessions: Sessions, session: Session, rfile: Any, length: int, stop_at: int | None) -> bool:
    """Read ``length`` body bytes into ``session``, in chunks; with ``stop_at`` (an offset in
    the file), stop there instead. Whether the whole body was read."""
    left = length
    while left:
        want = min(_CHUNK, left)
        if stop_at is not None:
            want = min(want, stop_at - session.received)
            if want <= 0:
                return False
        chunk = rfile.read(want)
        if not chunk:
            return False
        sessions.take(session, chunk)
        left -= len(chunk)
    return True
