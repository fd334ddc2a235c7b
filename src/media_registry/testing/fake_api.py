"""FakeGraphAPI: a real local HTTP server that behaves like the Graph API's media endpoints.

It serves upload, get, delete and 5-minute download URLs that need the token, the Resumable
Upload API of template header handles (:mod:`.resumable`), the fields of its phone numbers and
app, and a ``Date`` header on its own clock; it answers any API version, and answers with
Graph's error envelopes, lets media IDs expire after 30 days on its own adjustable clock,
injects faults, and counts what it received. Use it as a context manager::

    with FakeGraphAPI() as api:
        reg = MediaRegistry(db="t.db", token=api.token, phone_number_id=api.phone_number_id,
                            api_base=api.base_url)

or through the ``fake_graph_api`` pytest fixture that media-registry registers.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .connections import Server
from .records import Fault, Received, StoredMedia
from .resumable import Sessions
from .server import handler_for


class FakeGraphAPI:
    """A threaded local Graph API on a random loopback port.

    ``sha256_encoding`` ("hex" or "base64") and ``file_size_as_string`` pick between the
    shapes seen in Meta's spec and in real responses; ``delete_answer`` is ``"success"``
    (the spec) or ``"deleted"`` (the seed page). ``download_origin`` (settable) makes the
    download URLs point at another server, as a hostile or broken API might. ``port`` 0 picks a
    free one. Uploads go only
    to the phone numbers it knows (``phone_number_id``, ``phone_numbers`` and those added with
    :meth:`add_phone_number`); any other is answered as Meta does, with code 100, subcode 33.
    ``ttl_by_phone_number`` makes numbers No-Storage: their media live that long unless the
    upload asks for its own ``ttl_minutes``. :meth:`kill_media` (or ``POST
    /_fake/media/ID/kill`` on :attr:`origin`) makes an ID die as Meta's sometimes do early.
    Upload sessions go only to ``app_id``; :attr:`sessions` counts them and the bytes they took.
    """

    def __init__(
        self,
        *,
        token: str = "fake-token-for-tests",
        phone_number_id: str = "106540352242922",
        app_id: str = "847021592371350",
        version: str = "v26.0",
        ttl: timedelta = timedelta(days=30),
        url_lifetime: timedelta = timedelta(minutes=5),
        sha256_encoding: str = "hex",
        file_size_as_string: bool = False,
        delete_answer: str = "success",
        host: str = "127.0.0.1",
        phone_numbers: Iterable[str] = (),
        ttl_by_phone_number: Mapping[str, timedelta] | None = None,
        port: int = 0,
    ) -> None:
        self.token = token
        self.phone_number_id = phone_number_id
        self.ttl_by_phone_number = dict(ttl_by_phone_number or {})
        self.phone_numbers = {phone_number_id, *phone_numbers, *self.ttl_by_phone_number}
        self.app_id = app_id
        self.sessions = Sessions()  # the Resumable Upload API's sessions (template header handles)
        self.version = version
        self.ttl = ttl
        self.url_lifetime = url_lifetime
        self.sha256_encoding = sha256_encoding
        self.file_size_as_string = file_size_as_string
        self.delete_answer = delete_answer
        self.download_origin: str | None = None
        self.media: dict[str, StoredMedia] = {}
        self.received: list[Received] = []
        self._urls: dict[str, datetime] = {}
        self._faults: list[Fault] = []
        self._sent: list[dict[str, Any]] = []
        self._offset = timedelta()
        self._uploads = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1_000_000_000_000_000 + secrets.randbelow(10**12))
        self._host = host
        self._server = Server((host, port), handler_for(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self._server.server_port}"

    @property
    def base_url(self) -> str:
        """The API base to configure (``WHATSAPP_API_BASE``), e.g. ``http://127.0.0.1:PORT/v26.0``."""
        return f"{self.origin}/{self.version}"

    def start(self) -> FakeGraphAPI:
        """Serve in a background thread."""
        # stop() waits for the loop's next poll, and a test suite stops one fake per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: no request is answered from now on, not even on a connection kept
        alive, and the connections are closed (their threads end). Returns at once, also when
        the fake was never started."""
        self._server.close_connections()
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeGraphAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the clock ----------------------------------------------------------------------

    def now(self) -> datetime:
        """The fake's time: the real (or frozen) UTC time plus what :meth:`advance` added."""
        return datetime.now(timezone.utc) + self._offset

    def reset(self) -> None:
        """Forget all media, requests and faults, and put the clock back to real time."""
        with self._lock:
            self.media.clear()
            self.received.clear()
            self._urls.clear()
            self._faults.clear()
            self._offset = timedelta()
            self._uploads = 0
        self.sessions.clear()

    def advance(self, **delta: float) -> None:
        """Move the fake's clock forward, e.g. ``advance(days=28)``."""
        with self._lock:
            self._offset += timedelta(**delta)

    # -- scripting and counting ---------------------------------------------------------

    def fail(self, **fault: Any) -> Fault:
        """Queue a :class:`Fault` (same keywords); faults apply in the order queued."""
        scripted = Fault(**fault)
        with self._lock:
            self._faults.append(scripted)
        return scripted

    def break_transfer_at(self, offset: int, times: int = 1) -> Fault:
        """Make the next ``times`` upload-session transfers hang up once the session holds
        ``offset`` bytes of the file (``GET /upload:...`` then says so, and a client resumes)."""
        return self.fail(method="POST", path="/upload:", break_at=offset, times=times)

    @property
    def upload_sessions(self) -> int:
        """How many upload sessions (template header handles) were opened."""
        return self.sessions.count()

    @property
    def transfer_bytes(self) -> int:
        """How many bytes every upload session's transfers carried, resumed ones included."""
        return self.sessions.bytes_received

    def add_phone_number(self, phone_number_id: str) -> None:
        """Make uploads to another phone number succeed (a second number of the account)."""
        with self._lock:
            self.phone_numbers.add(phone_number_id)

    def add_media(self, data: bytes, mime_type: str, phone_number_id: str | None = None) -> str:
        """Store media as if a customer had sent it; return its media ID (not an upload)."""
        return self._store(StoredMedia(data, mime_type, phone_number_id or self.phone_number_id,
                                       self.now()))

    def kill_media(self, media_id: str) -> None:
        """Make a media ID die before its time, as a re-registered number, a No-Storage TTL
        or a delete from another tool would: ``/messages`` then refuses it with Meta's
        code-100 error, and GET and DELETE no longer find it."""
        with self._lock:
            if media_id not in self.media:
                raise ValueError(f"the fake never issued media ID {media_id!r}")
            self.media[media_id].deleted = True

    def sent_messages(self) -> list[dict[str, Any]]:
        """The message requests ``/messages`` accepted, oldest first."""
        with self._lock:
            return list(self._sent)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched ``method`` and a ``path`` substring."""
        with self._lock:
            received = list(self.received)
        return sum(1 for r in received
                   if method in (None, r.method) and (path is None or path in r.path))

    @property
    def uploads(self) -> int:
        """How many uploads succeeded (media added with :meth:`add_media` are not uploads)."""
        with self._lock:
            return self._uploads

    def live(self, media_id: str) -> bool:
        """Whether a media ID exists, is not deleted and has not expired on the fake's clock."""
        with self._lock:
            return self._live(media_id) is not None

    def _live(self, media_id: str) -> StoredMedia | None:
        """The media if live; the caller holds the lock."""
        media = self.media.get(media_id)
        if media and not media.deleted and self.now() < media.uploaded_at + (media.ttl or self.ttl):
            return media
        return None

    # -- what the request handler does, under the lock ----------------------------------

    def _store(self, media: StoredMedia, upload: bool = False) -> str:
        with self._lock:
            media_id = str(next(self._ids))
            self.media[media_id] = media
            self._uploads += upload
        return media_id

    def _receive(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)

    def _usable(self, media_id: str, phone_number_id: str) -> bool:
        """Whether a message from that number may name ``media_id``: live, and its own."""
        with self._lock:
            media = self._live(media_id)
            return media is not None and media.phone_number_id == phone_number_id

    def _record_message(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._sent.append(message)

    def _knows_phone_number(self, phone_number_id: str) -> bool:
        with self._lock:
            return phone_number_id in self.phone_numbers

    def _take_live(self, media_id: str, delete: bool) -> StoredMedia | None:
        """The live media (marked deleted if ``delete``), or None."""
        with self._lock:
            media = self._live(media_id)
            if media is not None and delete:
                media.deleted = True
            return media

    def _issue_url(self) -> str:
        """A new download URL's nonce, valid for ``url_lifetime`` from now."""
        nonce = secrets.token_hex(8)
        with self._lock:
            self._urls[nonce] = self.now()
        return nonce

    def _downloadable(self, media_id: str, nonce: str) -> StoredMedia | None:
        with self._lock:
            issued = self._urls.get(nonce)
            media = self.media.get(media_id)
            if issued is None or media is None or self.now() > issued + self.url_lifetime:
                return None
            return media

    def _next_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None
