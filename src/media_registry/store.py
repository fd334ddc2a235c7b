"""The Store contract: every operation the registry asks of its database, and one factory.

The registry only ever holds a :class:`Store`; it never sees SQL, a driver's objects or a
dialect's time format. Times go in and out as timezone-aware UTC datetimes, rows as the
NamedTuples below, paths as tuples. Each backend is one module implementing the contract:

- SQLite (:mod:`media_registry.sqlitestore`), the embedded default, a file path;
- PostgreSQL (``media_registry.pgstore``, the ``postgres`` extra), a ``postgresql://`` URL.

The rules the registry relies on are enforced by each backend's schema as well (at most
one current ID per content and phone number, states from a fixed set, foreign keys), so
correctness never depends on how a backend serializes writers. The guarantees each
operation must give (atomicity, isolation) are written in its docstring.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from importlib import import_module
from typing import NamedTuple, Protocol

from ._processes import alive
from .dburl import PostgresURL, is_postgres_url
from .defaults import BUSY_TIMEOUT as BUSY_TIMEOUT_SECONDS
from .defaults import HOST_ID as HOST
from .errors import ConfigError
from .hashing import Fingerprint

# -- rows --------------------------------------------------------------------------------


class PathHit(NamedTuple):
    """An unchanged path's content, its current media ID (if valid long enough), and when
    its fingerprint was recorded (the racily-clean rule needs it)."""

    sha256: str
    media_id: str | None
    recorded_at: datetime


class SourcePath(NamedTuple):
    """A recorded source file of a content: the fingerprint last seen, and when."""

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
    """What a URL source served when last fetched: the URL in key form (no signature, no
    user:password), the content, the validators for a conditional GET, and when it was checked."""

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


class ContentRef(NamedTuple):
    """A content named by its sha256, with its MIME type."""

    sha256: str
    mime_type: str


class ContentRow(NamedTuple):
    """One content and phone number with the current media ID (if any) and the paths.

    A content without any current ID appears once, with ``phone_number_id`` None.
    """

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
    """Counts for health checks, plus facts only the backend knows (``backend``: e.g. the
    database's location with any password hidden, its size on disk, its journal mode)."""

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


# -- the contract ------------------------------------------------------------------------


class Store(Protocol):
    """Every operation the registry needs from its database.

    Unless said otherwise, a writing operation is one atomic transaction: all of it or none
    of it is visible to others, and it never spans a network call. Reads see committed
    data only. Errors are :class:`~media_registry.errors.RegistryError` subclasses whose
    message names the database (never a password) and what to do.
    """

    location: str  # the database for people: a file path, or a URL without its password

    # -- sending (the hot path) -----------------------------------------------------------

    def lookup_path(self, fp: Fingerprint, phone_number_id: str, valid_until: datetime) -> PathHit | None:
        """The content recorded at a path whose fingerprint matches ``fp`` in every field,
        with its current media ID if that expires after ``valid_until``. One indexed read:
        this is every cache hit."""
        ...

    def remember_path(self, fp: Fingerprint, sha256: str, mime_type: str, recorded_at: datetime) -> None:
        """An explicit send: ``fp.path`` holds ``sha256`` (the content row is created if new,
        and a deletion mark is cleared: the user sends it again). Atomic."""
        ...

    def refresh_fingerprint(self, fp: Fingerprint, sha256: str, recorded_at: datetime) -> None:
        """Re-record the fingerprint of a path already known to hold ``sha256`` (touched, or
        hashed again under the racily-clean rule). Never revives a deleted content: a path
        that no longer points at ``sha256`` is left alone."""
        ...

    # -- single flight (dogpile's get_mutex, per content and phone number) ---------------

    def take_lease(
        self, sha256: str, phone_number_id: str, owner: str, now: datetime, valid_until: datetime,
        lease_for: timedelta,
    ) -> LeaseOutcome:
        """Atomically: SERVE a current ID valid past ``valid_until`` if there is one; else
        DELETED if the content is deleted or unknown; else take the lease (ACQUIRED) if it is
        free (absent, expired, or its holder died); else WAIT. At most one owner holds a lease
        at a time across every process (and host) sharing the database."""
        ...

    def renew_lease(self, sha256: str, phone_number_id: str, owner: str, expires_at: datetime) -> None:
        """Keep the lease alive until ``expires_at`` if ``owner`` still holds it."""
        ...

    def release_lease(self, sha256: str, phone_number_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` still holds it (idempotent)."""
        ...

    def record_upload(self, media: NewMedia, owner: str) -> Recorded:
        """Atomically record a media ID just issued, log it and release ``owner``'s lease.

        Deletion wins: if the content was deleted after this owner took its lease (the
        delete revoked the lease) or is gone, the ID is recorded as owing a remote DELETE
        ('deleting') and CONTENT_DELETED is returned. If the claim passed to another uploader
        (PostgreSQL: a server restart ended the session holding it), the ID owes a remote
        DELETE too and CLAIM_LOST is returned. Otherwise it becomes the current ID
        and the previous current one is superseded (the one-current-ID invariant holds at
        every commit), and a deletion mark is cleared. Recording the same media ID twice
        records it once."""
        ...

    # -- lifecycle -----------------------------------------------------------------------

    def expiring_media(self, before: Cutoffs) -> list[MediaRow]:
        """Current media IDs expiring at or before their number's cutoff whose content is not
        deleted, soonest first."""
        ...

    def source_paths(self, sha256: str) -> list[SourcePath]:
        """The recorded source files of a content (this host's, for a shared database),
        most recently seen first."""
        ...

    def sourced_contents(self) -> list[ContentRef]:
        """Contents not deleted that have at least one recorded source path (this host's)."""
        ...

    def forget_vanished(self, sha256: str, paths: list[str], now: datetime) -> bool:
        """Atomically forget these source paths of a content (this host's: they vanished) and,
        when no path of a live host (seen within the host retention) is left and no URL serves
        it, mark it deleted as :meth:`mark_deleted` does. True when it was deleted."""
        ...

    def mark_deleted(self, sha256: str, now: datetime, reason: str) -> None:
        """Atomically: mark the content deleted, every media ID of it as owing a remote
        DELETE, forget its paths, revoke its upload leases (an upload in flight then records
        nothing as current) and log it."""
        ...

    def pending_deletes(self, sha256: str | None = None) -> list[MediaRow]:
        """Media IDs owing a remote DELETE (of one content, or all)."""
        ...

    def claim_deletes(self, sha256: str | None, claim_for: timedelta) -> list[MediaRow]:
        """The owed DELETEs (of one content, or all) this process is to send now. A database
        shared by many hosts hands each to one claimer at a time (for ``claim_for``, or until
        the ID is forgotten), so each DELETE is sent once fleet-wide."""
        ...

    def forget_media(self, media_id: str, now: datetime, action: str, detail: str | None = None) -> None:
        """Atomically drop a media row (deleted remotely, or expired) and log why; a deleted
        content goes with its last media row (its events stay). Unknown IDs are ignored."""
        ...

    def expired_media(self, now: datetime) -> list[MediaRow]:
        """Media rows whose ID expired at or before ``now``, whatever their state."""
        ...

    # -- sources beyond paths ------------------------------------------------------------

    def remember_content(self, sha256: str, mime_type: str, size_bytes: int, recorded_at: datetime) -> None:
        """An explicit send of content that has no path (bytes, a stream, a URL): the content
        row is created if new and a deletion mark is cleared. Atomic."""
        ...

    def current_media_id(self, sha256: str, phone_number_id: str, valid_until: datetime) -> str | None:
        """The content's current media ID for that number, if it expires after ``valid_until``."""
        ...

    def url_hit(self, url: str, phone_number_id: str, valid_until: datetime,
                checked_after: datetime) -> str | None:
        """The current media ID of what ``url`` (key form) served, if the URL was checked
        after ``checked_after`` and the ID expires after ``valid_until``. One indexed read:
        this is every URL cache hit."""
        ...

    def url_source(self, url: str) -> UrlSource | None:
        """What ``url`` (key form) served when last fetched, if ever. Mappings are shared by
        every host of a fleet."""
        ...

    def url_sources(self, sha256: str) -> list[UrlSource]:
        """The URLs known to serve a content, most recently checked first."""
        ...

    def remember_url(self, source: UrlSource) -> None:
        """Record (or replace) what a URL served, with its validators. Atomic."""
        ...

    def touch_url(self, url: str, checked_at: datetime) -> None:
        """The URL still serves what it served (HTTP 304): trust it again from ``checked_at``."""
        ...

    def forget_url(self, url: str, now: datetime, reason: str) -> None:
        """Drop a URL's mapping and log why; the content and its IDs stay. Atomic."""
        ...

    def invalidate_media(self, media_id: str, now: datetime, reason: str) -> bool:
        """Mark a media ID 'invalidated' (Meta refused it at send time): never served or
        refreshed again, dropped once expired; an ID owing a remote DELETE keeps owing it.
        Logs why. False if the ID is unknown. Atomic."""
        ...

    # -- inbound media -------------------------------------------------------------------

    def record_inbound(self, row: InboundRow, detail: str | None = None) -> None:
        """Record a verified download (replacing an earlier one of the same ID) and log it."""
        ...

    # -- reading for people --------------------------------------------------------------

    def resolve(self, target: str) -> str | None:
        """The sha256 that a path (made absolute; this host's), a media ID or a sha256 names,
        tried in that order, if the registry knows it."""
        ...

    def sha256s_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` sha256s of known contents that start with ``prefix`` (lower-case
        hex), in order (one indexed range read)."""
        ...

    def content_rows(
        self, *, sha256: str | None = None, expiring_before: datetime | None = None
    ) -> Iterator[ContentRow]:
        """Every content (or one) per phone number, streamed in constant memory with a plan
        linear in the registry's size, ordered by phone number, first seen, sha256.
        ``expiring_before`` keeps only current IDs expiring before it. The iterator reads
        one consistent snapshot; close it (or exhaust it) promptly."""
        ...

    def events(self, sha256: str) -> list[EventRow]:
        """The history of one content, oldest first."""
        ...

    def stats(self, now: datetime, expiring_before: Cutoffs) -> StoreStats:
        """Counts of contents, paths and media IDs by state, per phone number (expiring: live
        and at or before its number's cutoff, as :meth:`expiring_media`), and the backend's
        own facts."""
        ...

    def close(self) -> None:
        """Release every connection; the store is not used afterwards."""
        ...


# -- the factory -------------------------------------------------------------------------


def open_store(
    db: str | os.PathLike[str] | PostgresURL, *, create: bool = True,
    busy_timeout: float = BUSY_TIMEOUT_SECONDS, host_id: str | None = None,
    pool_size: int | None = None, host_retention: timedelta | None = None,
) -> Store:
    """The store that ``MEDIA_REGISTRY_DB`` names: a ``postgresql://`` URL means PostgreSQL,
    anything else is an SQLite file path.

    ``create=False`` (read-only commands) never creates a registry: a missing one, or a
    database that is not a media-registry registry, is refused untouched. Either mode
    upgrades an older registry of ours in place. ``host_id`` names this machine in a fleet
    (PostgreSQL only; default its hostname); ``pool_size`` bounds PostgreSQL's connection
    pool; ``host_retention`` is how long an unseen host keeps its paths there.
    """
    if isinstance(db, PostgresURL) or is_postgres_url(db):
        try:
            pgstore = import_module("media_registry.pgstore")
        except ModuleNotFoundError as exc:
            if exc.name not in ("media_registry.pgstore", "psycopg", "psycopg_pool"):
                raise
            raise ConfigError(
                "MEDIA_REGISTRY_DB is a PostgreSQL URL, which needs the postgres extra: "
                "pip install 'media-registry[postgres]'"
            ) from None
        store: Store = pgstore.PostgresStore(
            db, create=create, busy_timeout=busy_timeout, host_id=host_id or HOST,
            pool_size=pool_size, **({"host_retention": host_retention} if host_retention else {}),
        )
        return store
    from .sqlitestore import SQLiteStore

    return SQLiteStore(os.fspath(db), create=create, busy_timeout=busy_timeout)


# -- lease owners ------------------------------------------------------------------------

def new_owner() -> str:
    """A lease owner name unique to this host, process, thread and call:
    ``host:pid:thread:nonce``."""
    return f"{HOST}:{os.getpid()}:{threading.get_ident()}:{os.urandom(4).hex()}"


def owner_alive(owner: str) -> bool:
    """False only when the owner ran on this host in a process that has since died."""
    host, pid, *_ = owner.split(":")
    if host != HOST or not pid.isdigit():
        return True  # another host: only the lease expiry can tell
    return alive(int(pid))
