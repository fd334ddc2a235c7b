"""FakeGraphAPI: a real local HTTP server that behaves like the Graph API's media endpoints.

It serves upload, get, delete and 5-minute download URLs that need the token, answers with
Graph's error envelopes, lets media IDs expire after 30 days on its own adjustable clock,
injects faults, and counts what it received. Use it as a context manager::

    with FakeGraphAPI() as api:
        reg = MediaRegistry(db="t.db", token=api.token, phone_number_id=api.phone_number_id,
                            api_base=api.base_url)

or through the ``fake_graph_api`` pytest fixture that media-registry registers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import itertools
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..content.media_types import KIND_BY_MIME
from ..errors import UnsupportedMedia

UPLOAD_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<phone>\d+)/media$")
MEDIA_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<media_id>[^/]+)$")
DOWNLOAD_PATH = re.compile(r"^/download/(?P<media_id>\d+)/(?P<nonce>\w+)$")
MESSAGES_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<phone>\d+)/messages$")
MEDIA_MESSAGE_TYPES = ("image", "audio", "video", "document", "sticker")


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
    stalls ``stall`` seconds before hanging up; ``corrupt`` flips a byte of a download.
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


class FakeGraphAPI:
    """A threaded local Graph API on a random loopback port.

    ``sha256_encoding`` ("hex" or "base64") and ``file_size_as_string`` pick between the
    shapes seen in Meta's spec and in real responses; ``delete_answer`` is ``"success"``
    (the spec) or ``"deleted"`` (the seed page). ``download_origin`` (settable) makes the
    download URLs point at another server, as a hostile or broken API might. ``port`` 0 picks a
    free one. Uploads go only
    to the phone numbers it knows (``phone_number_id``, ``phone_numbers`` and those added with
    :meth:`add_phone_number`); any other is answered as Meta does, with code 100, subcode 33.
    """

    def __init__(
        self,
        *,
        token: str = "fake-token-for-tests",
        phone_number_id: str = "106540352242922",
        version: str = "v21.0",
        ttl: timedelta = timedelta(days=30),
        url_lifetime: timedelta = timedelta(minutes=5),
        sha256_encoding: str = "hex",
        file_size_as_string: bool = False,
        delete_answer: str = "success",
        host: str = "127.0.0.1",
        phone_numbers: Iterable[str] = (),
        port: int = 0,
    ) -> None:
        self.token = token
        self.phone_number_id = phone_number_id
        self.phone_numbers = {phone_number_id, *phone_numbers}
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
        self._server = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self._host}:{self._server.server_port}"

    @property
    def base_url(self) -> str:
        """The API base to configure (``WHATSAPP_API_BASE``), e.g. ``http://127.0.0.1:PORT/v21.0``."""
        return f"{self.origin}/{self.version}"

    def start(self) -> FakeGraphAPI:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
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


class _Server(ThreadingHTTPServer):
    """One daemon thread per connection; :meth:`close_connections` ends them all, and no
    request is answered once it has run."""

    daemon_threads = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stopped = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a new connection in a thread of its own, unless stopped."""
        with self._connections_lock:
            if self.stopped:
                self.shutdown_request(request)
                return
            self._connections.add(request)
        threading.Thread(target=self.process_request_thread, args=(request, client_address),
                         daemon=True, name="FakeGraphAPI-connection").start()

    def shutdown_request(self, request: Any) -> None:
        """Forget and close a connection whose thread has ended."""
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Stop answering, and hang up every open connection: a thread waiting for the next
        request of a kept-alive connection sees the end of it and returns."""
        with self._connections_lock:
            self.stopped = True
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (timeouts, resets under test, a stop) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler_for(api: FakeGraphAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(_GraphHandler):
        fake = api

    return Handler


class _GraphHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _fault: Fault | None = None
    # Headers and body go out in separate writes; with Nagle on, delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    fake: FakeGraphAPI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Silence the default stderr log."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # -- dispatch -----------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        if self.fake._server.stopped:  # a request on a connection kept alive past stop()
            self.close_connection = True
            return
        path = self.path.split("?")[0]
        self.fake._receive(Received(method, path, {k.lower(): v for k, v in self.headers.items()}))
        fault = self.fake._next_fault(method, path)
        self._fault = fault
        if fault is not None and fault.advance:
            self.fake.advance(seconds=fault.advance)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.until is not None:
            fault.until.wait(60)
        if fault is not None and fault.reset:
            self._reset()
            return
        body = self._read_body()
        if fault is not None and fault.body is not None:
            self._send(fault.status or 200, fault.body, "application/json")
            return
        if fault is not None and fault.status:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._error(fault.status, fault.code or 1, fault.message, fault.subcode,
                        transient=fault.transient, headers={**extra, **fault.headers})
            return
        if not self._authorized():
            return
        if method == "POST" and (match := UPLOAD_PATH.match(path)):
            self._upload(match["phone"], body)
        elif method in ("GET", "DELETE") and (match := MEDIA_PATH.match(path)):
            self._media(method, match["media_id"])
        elif method == "GET" and (match := DOWNLOAD_PATH.match(path)):
            self._download(match["media_id"], match["nonce"])
        elif method == "POST" and (match := MESSAGES_PATH.match(path)):
            self._message(match["phone"], body)
        else:
            self._error(400, 100, f"Unknown path components: {path}", None)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.fake.token}":
            return True
        self._error(401, 190, "Invalid OAuth access token - Cannot parse access token",
                    None, kind="OAuthException")
        return False

    # -- endpoints ----------------------------------------------------------------------

    def _upload(self, phone: str, body: bytes) -> None:
        if not self.fake._knows_phone_number(phone):
            self._unknown_object("POST", phone)
            return
        fields = _multipart(self.headers.get("Content-Type", ""), body)
        if fields.get("messaging_product", (b"",))[0] != b"whatsapp":
            self._error(400, 100, "The parameter messaging_product is required.", None)
            return
        if "file" not in fields or "type" not in fields:
            self._error(400, 100, "The parameter file is required.", None)
            return
        data, part_type = fields["file"]
        declared = fields["type"][0].decode()
        if declared not in KIND_BY_MIME or part_type != declared:
            self._error(400, 100, "Param file must be a file with one of the following types: "
                        f"{', '.join(sorted(KIND_BY_MIME))}. Received file of type '{part_type}'.", None)
            return
        ttl = None
        if "ttl_minutes" in fields:
            minutes = fields["ttl_minutes"][0].decode()
            if not minutes.isdigit() or not 60 <= int(minutes) <= 43200:
                self._error(400, 100, "Param ttl_minutes must be an integer between 60 and 43200.", None)
                return
            ttl = timedelta(minutes=int(minutes))
        media_id = self.fake._store(StoredMedia(data, declared, phone, self.fake.now(), ttl), upload=True)
        self._json(200, {"id": media_id})

    def _unknown_object(self, method: str, object_id: str) -> None:
        """Meta's answer for an ID it does not know (a media ID, or a phone number ID)."""
        self._error(400, 100, f"Unsupported {method.lower()} request. Object with ID "
                    f"'{object_id}' does not exist, cannot be loaded due to missing "
                    "permissions, or does not support this operation. Please read the Graph "
                    "API documentation at https://developers.facebook.com/docs/graph-api", 33,
                    kind="GraphMethodException")

    def _media(self, method: str, media_id: str) -> None:
        media = self.fake._take_live(media_id, delete=method == "DELETE")
        if media is None:
            self._unknown_object(method, media_id)
            return
        if method == "DELETE":
            self._json(200, {self.fake.delete_answer: True})
            return
        nonce = self.fake._issue_url()
        digest = hashlib.sha256(media.data).digest()
        size = len(media.data)
        self._json(200, {
            "messaging_product": "whatsapp",
            "url": f"{self.fake.download_origin or self.fake.origin}/download/{media_id}/{nonce}",
            "mime_type": media.mime_type,
            "sha256": digest.hex() if self.fake.sha256_encoding == "hex"
            else base64.b64encode(digest).decode(),
            "file_size": str(size) if self.fake.file_size_as_string else size,
            "id": media_id,
        })

    def _download(self, media_id: str, nonce: str) -> None:
        media = self.fake._downloadable(media_id, nonce)
        if media is None:
            self._send(404, b"URL expired or unknown", "text/plain")
            return
        data = media.data
        fault = self._fault
        if fault is not None and fault.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if fault is not None and fault.truncate is not None:
            self._send(200, data[: fault.truncate], media.mime_type, length=len(data))
            self.wfile.flush()
            time.sleep(fault.stall)
            self.close_connection = True
            return
        self._send(200, data, media.mime_type)

    def _message(self, phone: str, body: bytes) -> None:
        """A minimal ``POST /{phone_number_id}/messages``: checks the media ID of a media
        message (unknown, expired, deleted or killed IDs get Meta's code-100 refusal)."""
        if not self.fake._knows_phone_number(phone):
            self._unknown_object("POST", phone)
            return
        try:
            message = json.loads(body)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("messaging_product") != "whatsapp":
            self._error(400, 100, "The parameter messaging_product is required.", None)
            return
        if not message.get("to"):
            self._error(400, 100, "The parameter to is required.", None)
            return
        kind = message.get("type", "text")
        media = message.get(kind) if kind in MEDIA_MESSAGE_TYPES else None
        if kind in MEDIA_MESSAGE_TYPES and not (isinstance(media, dict) and (media.get("id") or media.get("link"))):
            self._error(400, 100, f"(#100) Param {kind} must contain id or link", None)
            return
        if media is not None and media.get("id") is not None and not self.fake._usable(str(media["id"]), phone):
            self._error(400, 100, f"(#100) Param {kind}['id'] is not a valid whatsapp business account "
                        "media attachment ID", None)
            return
        self.fake._record_message(message)
        to = str(message["to"])
        self._json(200, {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": re.sub(r"\D", "", to)}],
            "messages": [{"id": "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()}],
        })

    # -- wire helpers -------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _error(
        self, status: int, code: int, message: str, subcode: int | None, *,
        kind: str = "OAuthException", transient: bool = False, headers: dict[str, str] | None = None,
    ) -> None:
        error: dict[str, Any] = {"message": message, "type": kind, "code": code,
                                 "fbtrace_id": "A" + secrets.token_urlsafe(16)}
        if subcode is not None:
            error["error_subcode"] = subcode
        if transient:
            error["is_transient"] = True
        self._json(status, {"error": error}, headers)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST: a connection reset.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """Parse multipart/form-data into {name: (value, part content type)}."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in body.split(b"--" + match[1].encode())[1:-1]:
        head, _, value = part[2:].partition(b"\r\n\r\n")
        headers = head.decode("latin-1")
        name = re.search(r'name="([^"]*)"', headers)
        part_type = re.search(r"(?im)^content-type:\s*([^\r\n;]+)", headers)
        if name:
            fields[name[1]] = (value[:-2], part_type[1].strip() if part_type else None)
    return fields


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png() -> bytes:
    pixels = b"".join(b"\x00" + b"\x25\xd3\x66" * 4 for _ in range(4))  # 4x4, one green
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(pixels)) + _png_chunk(b"IEND", b""))


def _docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("word/document.xml", '<?xml version="1.0"?><document/>')
    return buffer.getvalue()


# The smallest heads that identify each type; enough for sniffing and for the fake API.
SAMPLE_HEADS: dict[str, Callable[[], bytes]] = {
    "image/png": _png,
    "image/jpeg": lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "image/webp": lambda: b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00",
    "audio/mpeg": lambda: b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "audio/ogg": lambda: b"OggS\x00\x02" + bytes(22) + b"OpusHead\x01\x01",
    "audio/amr": lambda: b"#!AMR\n\x3c\x48\xf5\x1f\x96\x66\x79\xe1",
    "audio/aac": lambda: b"\xff\xf1\x50\x80\x02\x1f\xfc",
    "audio/mp4": lambda: b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A isom",
    "video/mp4": lambda: b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "video/3gpp": lambda: b"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x003gp4",
    "application/pdf": lambda: b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "text/plain": lambda: b"Opening hours: Mon-Fri 9:00-18:00\n",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": _docx,
}


def sample_media(mime_type: str, *, size: int = 0, salt: str = "") -> bytes:
    """Bytes that media-registry (and the Graph API) recognise as ``mime_type``.

    ``salt`` makes distinct contents of one type; ``size`` pads the result to that many
    bytes (zeros, or spaces for text), e.g. to cross a size limit.
    """
    if mime_type not in SAMPLE_HEADS:
        raise UnsupportedMedia(
            f"sample_media: no sample for {mime_type!r}; pick one of {', '.join(sorted(SAMPLE_HEADS))}"
        )
    data = SAMPLE_HEADS[mime_type]()
    filler = b" " if mime_type == "text/plain" else b"\x00"
    if salt:
        data += (b"\n" if mime_type == "text/plain" else b"\x00") + salt.encode()
    return data + filler * max(0, size - len(data))
