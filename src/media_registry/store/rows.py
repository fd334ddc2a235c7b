"""The rows the Store contract speaks in: times as aware UTC datetimes, paths as tuples."""

from __future__ import annotations

import enum
from datetime import datetime

from .._tuples import NamedTuple
from ..content.hashing import Fingerprint

__all__ = [
    "ContentRow", "Cutoffs", "EventRow", "InboundRow", "LeaseOutcome", "LeaseStatus", "MediaRow",
    "NewMedia", "PathHit", "PhoneStats", "Recorded", "SourcePath", "StoreStats", "TableCopy", "UrlSource",
]


class PathHit(NamedTuple):
    """An unchanged path's content, its current media ID (if valid long enough), and when it was recorded."""
    sha256: str
    media_id: str | None
    recorded_at: datetime


class SourcePath(NamedTuple):
    """A recorded source file of a content."""
    fingerprint: Fingerprint
    recorded_at: datetime


class LeaseStatus(enum.Enum):
    """What asking for the upload lease of (content, phone number) found."""
    SERVE = "serve"  # a valid ID exists (it is in ``LeaseOutcome.media_id``): no upload
    ACQUIRED = "acquired"  # the caller holds the lease: upload, then record_upload
    WAIT = "wait"  # a live owner holds it: poll again
    DELETED = "deleted"  # the content is deleted (or gone): upload nothing


class LeaseOutcome(NamedTuple):
    """Result of :meth:`Store.take_lease`."""
    status: LeaseStatus
    media_id: str | None = None


class NewMedia(NamedTuple):
    """A media ID the API just issued, to be recorded by :meth:`Store.record_upload`."""
    media_id: str
    sha256: str
    phone_number_id: str
    mime_type: str
    size_bytes: int
    uploaded_at: datetime
    expires_at: datetime
    path: str | None = None  # the source it was read from, for the event log
    action: str = "upload"  # or "refresh"


class Recorded(enum.Enum):
    """What :meth:`Store.record_upload` did."""
    CURRENT = "current"  # recorded as the content's current ID (any previous one superseded)
    CONTENT_DELETED = "content deleted"  # deleted meanwhile: recorded as owing a remote DELETE
    CLAIM_LOST = "claim lost"  # another uploader took the claim over: owes a DELETE, ask again


class MediaRow(NamedTuple):
    """One media ID with its content's MIME type."""
    media_id: str
    sha256: str
    phone_number_id: str
    state: str  # 'current', 'superseded', 'deleting' or 'invalidated'
    mime_type: str
    uploaded_at: datetime
    expires_at: datetime


class UrlSource(NamedTuple):
    """What a URL (key form: no signature, no user:password) served when last fetched."""
    url: str
    sha256: str
    etag: str | None
    last_modified: str | None
    checked_at: datetime
    refetchable: bool  # False when the key left out part of the URL (a signature)


class Cutoffs(NamedTuple):
    """Where a window ahead of now ends, per phone number: ``default`` for most numbers,
    ``by_phone`` for numbers with their own (shorter, so narrower) windows. "Expiring" is a
    current ID whose expiry is at or before its number's cutoff (refresh and stats agree)."""
    default: datetime
    by_phone: tuple[tuple[str, datetime], ...] = ()


class ContentRow(NamedTuple):
    """One content and phone number with its current ID (a content without any: once, number None)."""

    sha256: str
    mime_type: str
    size_bytes: int
    first_seen_at: datetime
    deleted_at: datetime | None
    phone_number_id: str | None
    media_id: str | None
    uploaded_at: datetime | None
    expires_at: datetime | None
    paths: tuple[str, ...]


class EventRow(NamedTuple):
    """One line of a content's history."""
    at: datetime
    action: str
    media_id: str | None
    phone_number_id: str | None
    path: str | None
    detail: str | None


class InboundRow(NamedTuple):
    """Inbound media downloaded and verified."""
    media_id: str
    sha256: str
    mime_type: str
    size_bytes: int
    path: str
    downloaded_at: datetime


class PhoneStats(NamedTuple):
    """Live, expiring and expired (not yet purged) media IDs of one phone number."""
    live_ids: int
    expiring_ids: int
    expired_ids: int


class StoreStats(NamedTuple):
    """Counts for health checks, and the backend's own facts (location without password, size...)."""
    contents: int
    deleted_contents: int
    paths: int
    live_ids: int
    expiring_ids: int
    expired_ids: int
    superseded_ids: int
    pending_deletes: int
    uploads: int
    leases: int
    by_phone_number: dict[str, PhoneStats]
    backend: dict[str, str | int]


class TableCopy(NamedTuple):
    """One table of a migration: the SQLite registry's rows, and what became of them in PostgreSQL."""
    table: str
    source_rows: int
    copied: int
    updated: int
    unchanged: int
