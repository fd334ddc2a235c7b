"""Data shapes: what the registry hands back, and what the Graph API sends."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InputError
from .setting_checks import PHONE_NUMBER_ID


class MediaEvent(BaseModel):
    """One line of a content's history (upload, refresh, delete, purge, download)."""

    at: datetime
    action: str
    media_id: str | None = None
    phone_number_id: str | None = None
    path: str | None = None
    detail: str | None = None


class MediaRecord(BaseModel):
    """A content known to the registry, with its current media ID for one phone number."""

    model_config = ConfigDict(frozen=True)

    sha256: str
    mime_type: str
    size_bytes: int
    phone_number_id: str | None = None
    media_id: str | None = None
    uploaded_at: datetime | None = None
    expires_at: datetime | None = None
    deleted_at: datetime | None = None
    # current (has a media ID for this number), deleted (forgotten; its remote DELETE done or
    # owed), unsent (known content without a current ID, e.g. its upload failed)
    state: str = "current"
    paths: tuple[str, ...] = ()
    history: tuple[MediaEvent, ...] = ()


class LifecycleAction(BaseModel):
    """One thing refresh, delete or purge did (or, in a dry run, would do).

    ``action`` is one of: refreshed, deleted, pending (remote delete owed, retried by purge),
    vanished (all sources gone), unreadable (a source file there but unreadable: content
    kept), expired (row dropped), failed, skipped.
    """

    action: str
    sha256: str
    phone_number_id: str | None = None
    media_id: str | None = None
    new_media_id: str | None = None
    detail: str | None = None

    def describe(self) -> str:
        """One line for people: ``refreshed 1234 -> 5678``, ``pending 1234 (why)``."""
        line = f"{self.action:9} {self.media_id or self.sha256[:12]}"
        if self.new_media_id:
            line += f" -> {self.new_media_id}"
        return f"{line} ({self.detail})" if self.detail else line


class Report(BaseModel):
    """What a refresh, delete or purge did."""

    dry_run: bool = False
    actions: list[LifecycleAction] = []

    def count(self, action: str) -> int:
        """How many actions of one kind the report holds."""
        return sum(1 for a in self.actions if a.action == action)


class InboundMedia(BaseModel):
    """A media item a customer sent, as a webhook describes it."""

    media_id: str
    kind: str
    mime_type: str | None = None
    sha256: str | None = None  # hex, whatever encoding the webhook used
    caption: str | None = None
    filename: str | None = None
    animated: bool | None = None
    voice: bool | None = None
    sender: str | None = None
    message_id: str | None = None
    phone_number_id: str | None = None
    timestamp: int | None = None  # when the message was sent (Unix time): its ID lives 7 days from then
    url: str | None = None  # a download URL, when Meta includes one (it lives minutes)


class DownloadedMedia(BaseModel):
    """Inbound media written to disk, verified against the API's size and sha256."""

    media_id: str
    sha256: str
    mime_type: str
    size_bytes: int
    path: Path
    fetched: bool  # False when the same content was already on disk


class MediaMetadata(BaseModel):
    """The Graph API's answer to ``GET /{media_id}``."""

    model_config = ConfigDict(extra="ignore")

    id: str
    url: str
    mime_type: str
    sha256: str
    # The spec types it as a string, real responses send an integer: pydantic takes both.
    file_size: int = Field(ge=0)
    messaging_product: str = "whatsapp"

    @field_validator("sha256")
    @classmethod
    def _normalise_sha256(cls, value: str) -> str:
        return sha256_hex(value)


def graph_id(value: object, what: str) -> str:
    """``value`` if it is a Graph API ID (digits), else InputError: IDs go into request paths,
    where ``../`` or ``?`` would reach another endpoint."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        shown = "a URL" if "://" in str(value) else repr(str(value)[:80])  # a URL may carry a signature
        raise InputError(f"{shown} is not a {what} (digits only); check the value given")
    return value


def phone_number_id(value: object) -> str:
    """``value`` if it is a phone number ID (1 to 32 digits, as the service's paths take), else
    InputError: it goes into request paths too."""
    if not isinstance(value, str) or not PHONE_NUMBER_ID.fullmatch(value):
        shown = "a URL" if "://" in str(value) else repr(str(value)[:80])
        raise InputError(f"{shown} is not a phone number ID (1 to 32 digits); check the value given")
    return value


def sha256_hex(digest: str) -> str:
    """A sha256 given as hex or base64 (Meta uses both), as lower-case hex.

    Raises ValueError when it is neither.
    """
    text = digest.strip()
    if len(text) == 64:
        try:
            bytes.fromhex(text)
            return text.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"not a sha256 in hex or base64: {digest!r}")
    return raw.hex()
