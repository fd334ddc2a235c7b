"""What the fake Graph API holds and received, and the faults it can be told to inject."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass
class Fault:
    """A scripted failure for the next ``times`` requests that match ``method`` and ``path``.

    ``status`` answers with a Graph error envelope (``code``, ``subcode``, ``transient``,
    ``retry_after``); ``reset`` drops the connection; ``delay`` stalls before either (or
    before the normal answer when neither is set), and ``until`` holds the request until that
    ``threading.Event`` is set (60 s at most: a race's other side runs meanwhile, however slow);
    ``body`` replaces the answer's body;
    ``headers`` are added to the answer (e.g. ``Location`` with ``status=302``);
    ``advance`` moves the fake's clock by that many seconds first (e.g. past a URL's life);
    ``truncate`` sends only that many bytes of a download but announces them all, then
    stalls ``stall`` seconds before hanging up; ``corrupt`` flips a byte of a download;
    ``break_at`` ends an upload session's transfer once the session holds that many bytes of
    the file (the connection is reset; ``GET /upload:...`` then gives that offset); with
    ``until``, the transfer is held there until the event is set, then reset.
    """

    status: int | None = None
    code: int | None = None
    subcode: int | None = None
    message: str = "An unexpected error has occurred. Please retry your request later."
    transient: bool = False
    retry_after: str | None = None
    reset: bool = False
    delay: float = 0.0
    until: threading.Event | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    advance: float = 0.0
    truncate: int | None = None
    stall: float = 0.0
    corrupt: bool = False
    break_at: int | None = None
    times: int = 1
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (self.method in (None, method)) and (self.path is None or self.path in path)


@dataclass
class StoredMedia:
    """A media object the fake holds."""

    data: bytes
    mime_type: str
    phone_number_id: str
    uploaded_at: datetime
    ttl: timedelta | None = None  # from the upload's ttl_minutes (No-Storage numbers)
    deleted: bool = False


@dataclass(frozen=True)
class Received:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    at: float = field(default_factory=time.monotonic, repr=False, compare=False)  # when it arrived

    @property
    def authorized(self) -> bool:
        """Whether the request carried an Authorization header."""
        return "authorization" in self.headers
