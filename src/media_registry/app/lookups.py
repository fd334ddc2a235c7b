"""``GET /v1/media/{sha256}``, the service's hot path: the registry's row written straight to
the JSON bytes of :class:`~.answers.MediaID`, and its hits answered before the framework.

A lookup in its plain form (the path, at most ``phone_number_id``, and the client token sent
as ``Bearer <token>`` when the service has one) whose answer is at hand is answered by
:func:`lookups_first` without routing or dependencies: on SQLite after its one indexed read,
inline like every SQLite hit; on PostgreSQL from the local cache's memory. Everything else (a
miss, a read that must wait for PostgreSQL, a failed read, any other shape, a wrong token)
goes on to the application, whose endpoint answers it as the OpenAPI document says: every
status but 200 is written once, there.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from datetime import datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import MediaRegistryError
from ..registry import AsyncMediaRegistry

PREFIX = "/v1/media/"
HEX = "0123456789abcdefABCDEF"
PHONE = b"phone_number_id="
# The bytes pydantic writes for MediaID: no spaces, non-ASCII as UTF-8.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def media_id_json(sha256: str, current: tuple[str, str, datetime]) -> bytes:
    """The body of a lookup's answer, byte for byte as :class:`~.answers.MediaID` serializes."""
    media_id, mime_type, expires_at = current
    stamp = expires_at.isoformat()
    if stamp.endswith("+00:00"):
        stamp = stamp[:-6] + "Z"
    return _encode({"media_id": media_id, "sha256": sha256.lower(), "mime_type": mime_type,
                    "expires_at": stamp}).encode()


class Lookups:
    """The registry's answers to lookups, as JSON bytes (None: not in the registry)."""

    def __init__(self, registry: AsyncMediaRegistry) -> None:
        self.reading, self.in_postgres = registry.reading, registry.ctx.in_postgres
        self.phone = registry.settings.phone_number_id

    def at_hand(self, sha256: str, phone_number_id: str) -> bytes | None:
        """The answer if it takes no waiting (SQLite's read; PostgreSQL's memory), else None."""
        reading = self.reading
        found = reading.remembered(sha256, phone_number_id) if self.in_postgres else reading.current(
            sha256, phone_number_id)
        return None if found is None else media_id_json(sha256, found)

    async def answer(self, sha256: str, phone_number_id: str | None) -> bytes | None:
        """The answer: :meth:`at_hand`, else on PostgreSQL read in a thread."""
        phone = self.reading.ctx.phone(phone_number_id)
        if (body := self.at_hand(sha256, phone)) is not None or not self.in_postgres:
            return body
        found = await asyncio.to_thread(self.reading.current, sha256, phone)
        return None if found is None else media_id_json(sha256, found)


def lookups_first(app: ASGIApp, lookups: Lookups, token: str | None) -> ASGIApp:
    """``app``, with the plain lookups whose answer is at hand answered before it."""
    expected = None if token is None else b"Bearer " + token.encode()

    def at_hand(scope: Scope) -> bytes | None:
        path: str = scope["path"]
        if len(path) != 74 or not path.startswith(PREFIX) or path[10:].strip(HEX) or scope.get("root_path"):
            return None
        query: bytes = scope["query_string"]
        if query.startswith(PHONE) and query[16:].isdigit() and len(query) <= 48:
            phone = query[16:].decode()
        elif query or not (phone := lookups.phone or ""):
            return None
        if expected is not None and not _bearer(scope, expected):
            return None
        try:
            return lookups.at_hand(path[10:], phone)
        except MediaRegistryError:  # answered by the application, as every error is
            return None

    async def lane(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and (body := at_hand(scope)) is not None:
            await send(_start(len(body)))
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return lane


def _bearer(scope: Scope, expected: bytes) -> bool:
    """The request's first Authorization header is exactly ``expected`` (compared in constant time)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hmac.compare_digest(value, expected)
    return False


def _start(length: int) -> Message:
    return {"type": "http.response.start", "status": 200,
            "headers": [(b"content-length", str(length).encode()), (b"content-type", b"application/json")]}
