"""The fake Graph API's HTTP side: a threaded server and the handler that answers as Graph does."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import re
import secrets
import socket
import struct
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qs

from ..content.media_types import KIND_BY_MIME
from .connections import Server
from .multipart import parse_multipart
from .records import Fault, Received, StoredMedia
from .resumable import Sessions, opening, read_into

UPLOAD_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<phone>\d+)/media$")
MEDIA_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<media_id>[^/]+)$")
DOWNLOAD_PATH = re.compile(r"^/download/(?P<media_id>\d+)/(?P<nonce>\w+)$")
MESSAGES_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<phone>\d+)/messages$")
APP_UPLOADS_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<app>\d+)/uploads$")
SESSION_PATH = re.compile(r"^/(?P<version>v[\d.]+)/(?P<session>upload:[A-Za-z0-9_=-]+)$")
# The fake's own control endpoint, on the origin outside any API version: kill a media ID.
KILL_PATH = re.compile(r"^/_fake/media/(?P<media_id>[^/]+)/kill$")
MEDIA_MESSAGE_TYPES = ("image", "audio", "video", "document", "sticker")


class Fake(Protocol):
    """What the handler asks of the fake Graph API it answers for (its state and clock)."""

    token: str
    app_id: str
    sessions: Sessions
    delete_answer: str
    download_origin: str | None
    sha256_encoding: str
    file_size_as_string: bool
    ttl_by_phone_number: dict[str, timedelta]
    _server: Server

    @property
    def origin(self) -> str: ...
    def now(self) -> datetime: ...
    def advance(self, **delta: float) -> None: ...
    def _store(self, media: StoredMedia, upload: bool = False) -> str: ...
    def _receive(self, request: Received) -> None: ...
    def kill_media(self, media_id: str) -> None: ...
    def _usable(self, media_id: str, phone_number_id: str) -> bool: ...
    def _record_message(self, message: dict[str, Any]) -> None: ...
    def _knows_phone_number(self, phone_number_id: str) -> bool: ...
    def _take_live(self, media_id: str, delete: bool) -> StoredMedia | None: ...
    def _issue_url(self) -> str: ...
    def _downloadable(self, media_id: str, nonce: str) -> StoredMedia | None: ...
    def _next_fault(self, method: str, path: str) -> Fault | None: ...


def handler_for(api: Fake) -> type[BaseHTTPRequestHandler]:
    """The request handler class that answers for ``api``."""
    class Handler(_GraphHandler):
        fake = api

    return Handler


class _GraphHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _fault: Fault | None = None
    # Headers and body go out in separate writes; with Nagle on, delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    fake: Fake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Silence the default stderr log."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, on the fake's clock (advanced, it looks like a skewed one)."""
        return email.utils.format_datetime(self.fake.now(), usegmt=True)

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
        if method == "POST" and (match := KILL_PATH.match(path)):
            self._kill(match["media_id"])
            return
        self.fake._receive(Received(method, path, {k.lower(): v for k, v in self.headers.items()}))
        fault = self.fake._next_fault(method, path)
        self._fault = fault
        if fault is not None and fault.advance:
            self.fake.advance(seconds=fault.advance)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.until is not None and fault.break_at is None:
            fault.until.wait(60)
        if fault is not None and fault.reset:
            self._reset()
            return
        streamed = method == "POST" and SESSION_PATH.match(path) is not None and (
            fault is None or (fault.body is None and not fault.status))
        body = b"" if streamed else self._read_body()
        if fault is not None and fault.body is not None:
            self._send(fault.status or 200, fault.body, "application/json")
            return
        if fault is not None and fault.status:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._error(fault.status, fault.code or 1, fault.message, fault.subcode,
                        transient=fault.transient, headers={**extra, **fault.headers})
            return
        if not self._authorized(path):
            return
        if match := SESSION_PATH.match(path):
            self._session(method, match["session"])
        elif method == "POST" and (match := APP_UPLOADS_PATH.match(path)):
            self._open_session(match["app"])
        elif method == "POST" and (match := UPLOAD_PATH.match(path)):
            self._upload(match["phone"], body)
        elif method in ("GET", "DELETE") and (match := MEDIA_PATH.match(path)):
            self._media(method, match["media_id"])
        elif method == "GET" and (match := DOWNLOAD_PATH.match(path)):
            self._download(match["media_id"], match["nonce"])
        elif method == "POST" and (match := MESSAGES_PATH.match(path)):
            self._message(match["phone"], body)
        else:
            self._error(400, 100, f"Unknown path components: {path}", None)

    def _authorized(self, path: str) -> bool:
        # An upload session takes the token as Meta documents it there: "OAuth <token>".
        session = SESSION_PATH.match(path) is not None
        if self.headers.get("Authorization") == f"{'OAuth' if session else 'Bearer'} {self.fake.token}":
            return True
        self.close_connection = session  # a transfer's body is left unread
        self._error(401, 190, "Invalid OAuth access token - Cannot parse access token",
                    None, kind="OAuthException")
        return False

    # -- endpoints ----------------------------------------------------------------------

    def _upload(self, phone: str, body: bytes) -> None:
        if not self.fake._knows_phone_number(phone):
            self._unknown_object("POST", phone)
            return
        fields = parse_multipart(self.headers.get("Content-Type", ""), body)
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
        ttl = self.fake.ttl_by_phone_number.get(phone)  # a No-Storage number's, unless asked
        if "ttl_minutes" in fields:
            minutes = fields["ttl_minutes"][0].decode()
            if not minutes.isdigit() or not 60 <= int(minutes) <= 43200:
                self._error(400, 100, "Param ttl_minutes must be an integer between 60 and 43200.", None)
                return
            ttl = timedelta(minutes=int(minutes))
        media_id = self.fake._store(StoredMedia(data, declared, phone, self.fake.now(), ttl), upload=True)
        self._json(200, {"id": media_id})

    def _kill(self, media_id: str) -> None:
        """``POST /_fake/media/ID/kill``: the ID dies as Meta's do early (no token needed)."""
        self._read_body()
        try:
            self.fake.kill_media(media_id)
        except ValueError as exc:
            self._json(404, {"error": str(exc)})
            return
        self._json(200, {"killed": media_id})

    def _unknown_object(self, method: str, object_id: str) -> None:
        """Meta's answer for an ID it does not know (a media ID, or a phone number ID)."""
        self._error(400, 100, f"Unsupported {method.lower()} request. Object with ID "
                    f"'{object_id}' does not exist, cannot be loaded due to missing "
                    "permissions, or does not support this operation. Please read the Graph "
                    "API documentation at https://developers.facebook.com/docs/graph-api", 33,
                    kind="GraphMethodException")

    def _open_session(self, app_id: str) -> None:
        if app_id != self.fake.app_id:
            self._unknown_object("POST", app_id)
            return
        session, complaint = opening(parse_qs(self.path.partition("?")[2]))
        if session is None:
            self._error(400, 100, complaint, None)
            return
        session.app_id = app_id
        self._json(200, {"id": self.fake.sessions.open(session)})

    def _session(self, method: str, session_id: str) -> None:
        """GET: the offset to resume from; POST: bytes from ``file_offset`` on, read as they
        arrive (a fault's ``break_at`` hangs up at that offset of the file)."""
        session = self.fake.sessions.get(session_id)
        if session is None or method not in ("GET", "POST"):
            self.close_connection = True
            self._unknown_object(method, session_id)
            return
        if method == "GET":
            self._json(200, {"id": session_id, "file_offset": session.received})
            return
        offset = self.headers.get("file_offset", "")
        length = int(self.headers.get("Content-Length") or 0)
        if offset != str(session.received) or session.received + length > session.file_length:
            self.close_connection = True  # the body is left unread
            self._error(400, 100, f"Invalid file_offset {offset!r}: this upload session has "
                        f"{session.received} bytes; resume from there (GET the session)", None)
            return
        stop_at = None if self._fault is None else self._fault.break_at
        if not read_into(self.fake.sessions, session, self.rfile, length, stop_at):
            if self._fault is not None and self._fault.until is not None:
                self._fault.until.wait(60)  # held at the break: a test kills its client meanwhile
            self._reset()
            return
        if session.received < session.file_length:
            self._json(200, {"id": session_id, "file_offset": session.received})
            return
        self._json(200, {"h": self.fake.sessions.finish(session)})

    def _object(self, object_id: str) -> bool:
        """GET of a phone number or of the app: its fields, as Meta answers them."""
        if object_id == self.fake.app_id:
            self._json(200, {"id": object_id, "name": "media-registry local app"})
            return True
        if self.fake._knows_phone_number(object_id):
            self._json(200, {"verified_name": "Media Registry Local", "display_phone_number": "+1 555-0100",
                             "quality_rating": "GREEN", "code_verification_status": "VERIFIED",
                             "platform_type": "CLOUD_API", "id": object_id})
            return True
        return False

    def _media(self, method: str, media_id: str) -> None:
        if method == "GET" and self._object(media_id):
            return
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
        if self.close_connection:  # a body left unread: the client must not reuse the connection
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST: a connection reset.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
