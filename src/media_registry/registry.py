"""MediaRegistry and AsyncMediaRegistry: what senders use. The rules live once, in
:mod:`media_registry.rules`, as flows yielding typed effects, composed over one shared
:class:`~media_registry.rules.context.Context` (``sending``, ``sourcing``, ``lifecycle``,
``inbound``, ``webhooks``, ``archiving``, ``reading``, ``handles``); each registry only drives
them: :class:`MediaRegistry` inline (:func:`~media_registry.rules.effects.drive`),
:class:`AsyncMediaRegistry` awaiting, blocking effects in threads (``adrive``)."""
from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Generic, TypeVar

import httpx
from typing_extensions import Self, Unpack

from .config import Settings
from .graph.client import AsyncGraphClient, GraphClient
from .graph.fetch import AsyncSourceFetcher, SourceFetcher
from .models import DownloadedMedia, LifecycleAction, MediaRecord, Report
from .rules.archiving import Archiving
from .rules.context import Context, PathArg, SettingsArgs, fetcher_options, graph_options, open_context
from .rules.effects import Clock, adrive, drive, utc_now
from .rules.handles import REFUSED_HANDLE, Handles
from .rules.inbound import Inbound
from .rules.lifecycle import Lifecycle, OnAction, add
from .rules.reading import Reading
from .rules.sending import Outcome, Sending
from .rules.sources import REFUSED, Source, Sourcing
from .rules.webhook import OnFailedSend, Webhooks
from .store import MediaRow, Store
from .webhooks import OnInvalid, WebhookReport

__all__ = ["AsyncMediaRegistry", "MediaRegistry", "Outcome"]

T = TypeVar("T")
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _Registry(Generic[TransportT]):
    """What both registries share: the context, the rules composed over it, and the reads.
    ``TransportT`` is the kind of HTTP transport the registry's clients take."""

    def __init__(
        self,
        db: PathArg | None = None,
        *,
        token: str | None = None,
        phone_number_id: str | None = None,
        settings: Settings | None = None,
        transport: TransportT | None = None,
        source_transport: TransportT | None = None,
        clock: Clock = utc_now,
        create: bool = True,
        **overrides: Unpack[SettingsArgs],
    ) -> None:
        given = {"db": db, "token": token, "phone_number_id": phone_number_id, **overrides}
        self.ctx: Context = open_context(settings, given, clock, create)
        # The URL fetcher has no token: a URL's host never sees it (source_transport: the guard).
        key = self._connect(transport, source_transport)
        self.sending = Sending(self.ctx)
        self.sourcing = Sourcing(self.ctx, self.sending, key)
        self.lifecycle = Lifecycle(self.ctx, self.sending, self.sourcing)
        self.inbound = Inbound(self.ctx)
        self.reading = Reading(self.ctx, self.sourcing)
        self.webhooks, self.archiving = Webhooks(self.ctx), Archiving(self.ctx, self.inbound)
        self.handles = Handles(self.ctx, self.sourcing)

    def _connect(self, transport: TransportT | None, source_transport: TransportT | None) -> Callable[[str], str]:
        """Make the Graph client and the URL fetcher; return the fetcher's key form."""
        raise NotImplementedError

    @classmethod
    def from_env(cls, db: PathArg | None = None, *, token: str | None = None,
                 phone_number_id: str | None = None, create: bool = True,
                 source_transport: TransportT | None = None, **overrides: Unpack[SettingsArgs]) -> Self:
        """A registry configured from the environment; keyword arguments override it."""
        return cls(db, token=token, phone_number_id=phone_number_id, create=create,
                   source_transport=source_transport, **overrides)

    @property
    def settings(self) -> Settings:
        """The registry's settings, validated once."""
        return self.ctx.settings

    @property
    def store(self) -> Store:
        """The registry's store."""
        return self.ctx.store

    @store.setter
    def store(self, store: Store) -> None:
        self.ctx.store = store

    def stop(self) -> None:
        """Ask a running refresh to finish its current uploads and start no new ones."""
        self.ctx.stopping.set()

    def resolve(self, target: str | os.PathLike[str]) -> str | None:
        """See :meth:`Sourcing.resolve <media_registry.rules.sources.Sourcing.resolve>`."""
        return self.sourcing.resolve(target)

    def lookup(self, target: str | os.PathLike[str], *, phone_number_id: str | None = None) -> MediaRecord | None:
        """See :meth:`Reading.lookup <media_registry.rules.reading.Reading.lookup>`."""
        return self.reading.lookup(target, phone_number_id=phone_number_id)

    def records(self, *, expiring_within: timedelta | None = None) -> Iterator[MediaRecord]:
        """See :meth:`Reading.records <media_registry.rules.reading.Reading.records>`."""
        return self.reading.records(expiring_within=expiring_within)

    def valid_record(self, sha256: str, *, phone_number_id: str | None = None) -> MediaRecord | None:
        """See :meth:`Reading.valid_record <media_registry.rules.reading.Reading.valid_record>`."""
        return self.reading.valid_record(sha256, phone_number_id=phone_number_id)

    def stats(self) -> dict[str, Any]:
        """See :meth:`Reading.stats <media_registry.rules.reading.Reading.stats>`."""
        return self.reading.stats()

    def overdue(self) -> list[str]:
        """See :meth:`Lifecycle.overdue <media_registry.rules.lifecycle.Lifecycle.overdue>`."""
        return self.lifecycle.overdue()


class MediaRegistry(_Registry[httpx.BaseTransport]):
    """Media IDs that are valid now, uploading each content only once.

    Build it from the environment with :meth:`from_env`, or pass settings as arguments
    (``db``, ``token``, ``phone_number_id``, ``api_base``, ``ttl``, ``min_validity``, ...,
    the names of :class:`~media_registry.config.Settings`). Thread-safe; use one per process.
    ``transport`` swaps the HTTP transport (an ``httpx.BaseTransport``, for tests); ``clock`` the
    time source; ``create=False`` never creates a registry (read-only use; one is upgraded).
    """

    graph: GraphClient
    sources: SourceFetcher

    def _connect(self, transport: httpx.BaseTransport | None,
                 source_transport: httpx.BaseTransport | None) -> Callable[[str], str]:
        self.graph = GraphClient(transport=transport, clock=self.ctx.clock, **graph_options(self.settings))
        self.sources = SourceFetcher(transport=source_transport, **fetcher_options(self.settings))
        return self.sources.key

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry's database connections and HTTP connection pools."""
        self.graph.close()
        self.sources.close()
        self.store.close()

    def get_or_upload(self, source: Source, *, phone_number_id: str | None = None,
                      mime_type: str | None = None) -> str:
        """A media ID for the source's content that stays valid for at least ``min_validity``.

        ``source`` is a path (str or PathLike), bytes-like content, a binary file object
        (read once, in blocks), or a URL string starting with ``https://`` (``http://`` only
        to this machine). Served from the registry when possible (an unchanged file costs one
        ``stat`` and one query; a URL checked within ``url_revalidate`` makes no request);
        otherwise the content is sniffed, checked against WhatsApp's limits, hashed and
        uploaded once, however many threads and processes ask at the same moment. The same
        bytes named as a file, as bytes or by a URL share one media ID.
        """
        found = self.sourcing.media_id(source, phone_number_id, mime_type)
        return found if isinstance(found, str) else drive(found, self).media_id

    def get_or_upload_with_status(self, source: Source, *, phone_number_id: str | None = None,
                                  mime_type: str | None = None) -> Outcome:
        """:meth:`get_or_upload`, with whether it uploaded and what it learned (an ``Outcome``)."""
        found = self.sourcing.lookup(source, phone_number_id, mime_type)
        return found if isinstance(found, Outcome) else drive(found, self)

    def invalidate(self, media_id: str, *, reason: str = REFUSED) -> None:
        """Never serve ``media_id`` again (Meta refused it at send time: it died early); the
        next :meth:`get_or_upload` of its content uploads anew. The event log records why."""
        drive(self.sourcing.invalidate_flow(media_id, reason), self)

    def send_with_media(self, source: Source, send: Callable[[str], T], *,
                        phone_number_id: str | None = None) -> T:
        """``send(media_id)`` with the source's media ID, and what it returns.

        When Meta refuses the ID as no longer valid (Graph error code 100, "... is not a
        valid whatsapp business account media attachment ID", raised or returned as an
        ``httpx.Response``; see :func:`~media_registry.media_id_refused`), the ID is
        invalidated, the content uploaded again and ``send`` called once more. An ID uploaded
        moments ago that is refused too (or a content repaired on this number within
        ``repair_window``) means ``send`` posts from another number: ConfigError, and nothing
        more is invalidated. Any other error reaches the caller untouched (a file object: read once).
        """
        result: T = drive(self.sourcing.send_with_media_flow(source, send, phone_number_id), self)
        return result

    def get_header_handle(self, source: Source, *, app_id: str | None = None) -> str:
        """A template header handle for a PDF, JPEG, PNG or MP4, made once per content and app."""
        app, hit = self.handles.hit(source, app_id)
        return hit or drive(self.handles.handle_flow(source, app), self)

    def invalidate_handle(self, handle: str, *, reason: str = REFUSED_HANDLE) -> None:
        """Never serve ``handle`` again (Meta refused it); the next request makes a new one."""
        drive(self.handles.invalidate_flow(handle, reason), self)

    def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Upload again every current ID with less than ``refresh_before`` left whose content
        still sits in a known source file; the new ID is recorded (and served) before the old
        one is retired. Content whose sources all vanished is skipped: purge deletes it.
        Runs ``refresh_concurrency`` uploads at a time; stops early after :meth:`stop`.
        ``on_action`` is called with each action as it completes (progress, logs).
        """
        report = Report(dry_run=dry_run)
        with ThreadPoolExecutor(max_workers=self.settings.refresh_concurrency) as pool:
            flows = (self.lifecycle.refresh_one(row, dry_run) for row in self.lifecycle.expiring_rows())
            for action in pool.map(functools.partial(drive, env=self), flows):
                add(report, action, on_action)
        return report

    def delete(self, target: str | os.PathLike[str]) -> Report:
        """Forget a content (named by path, sha256 or media ID): its IDs are no longer served
        or refreshed, and each is DELETEd remotely now; any the API could not delete stay
        marked, and :meth:`purge` retries them."""
        return drive(self.lifecycle.delete_flow(target), self)

    def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Clean up: contents whose source files all vanished are deleted (remotely too);
        rows of expired IDs are dropped; remote DELETEs still owed are retried.
        ``on_action`` is called with each action as it completes."""
        return drive(self.lifecycle.purge_flow(dry_run, on_action), self)

    def download(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None = None, *,
        phone_number_id: str | None = None,
    ) -> DownloadedMedia:
        """Fetch inbound media: fresh metadata, then the bytes, streamed into a temporary file
        while hashing, checked against the API's size and sha256, and renamed into place as
        ``<sha256>.<ext>`` in ``dest_dir`` (default: ``blob_dir``). Content already on disk (its
        bytes checked, never through a symlink) is not fetched again. An expired URL or a bad
        transfer is retried with backoff (fresh metadata each time), then ends in one clear
        error with no partial file left.
        """
        return drive(self.inbound.download_flow(media_id, dest_dir, phone_number_id), self)

    def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None, *,
        on_invalid: OnInvalid | None = None,
    ) -> list[DownloadedMedia]:
        """Download every media item a webhook payload carries (see
        :func:`~media_registry.webhooks.media_in_webhook`, which says what ``on_invalid``
        gets for an item of the wrong shape; the others are downloaded all the same); a
        webhook's own sha256 must agree with what was fetched."""
        return drive(self.inbound.download_webhook_flow(payload, dest_dir, on_invalid), self)

    def handle_webhook(self, payload: Any, *, on_invalid: OnInvalid | None = None,
                       on_failed_send: OnFailedSend | None = None) -> WebhookReport:
        """See :meth:`~media_registry.rules.webhook.Webhooks.handle_flow`; the worker archives later."""
        return drive(self.webhooks.handle_flow(payload, on_invalid, on_failed_send), self)

    def archive_pending(self, *, on_action: OnAction | None = None) -> Report:
        """See :meth:`Archiving.run_pass <media_registry.rules.archiving.Archiving.run_pass>`."""
        return self.archiving.run_pass(functools.partial(drive, env=self), on_action)


class AsyncMediaRegistry(_Registry[httpx.AsyncBaseTransport]):
    """:class:`MediaRegistry` for asyncio senders, with the same verbs as coroutines.

    Cache hits run inline (in a thread on PostgreSQL); everything else that may block runs in
    threads; HTTP goes through ``httpx.AsyncClient``. Single flight holds across tasks, threads
    and processes; a cancelled task leaves no upload lease behind. Arguments as for
    :class:`MediaRegistry` (``transport``: an ``httpx.AsyncBaseTransport``). The reads have
    awaitable forms in a thread (:meth:`alookup`, :meth:`arecords`, :meth:`astats`, ...).
    """

    graph: AsyncGraphClient
    sources: AsyncSourceFetcher

    def _connect(self, transport: httpx.AsyncBaseTransport | None,
                 source_transport: httpx.AsyncBaseTransport | None) -> Callable[[str], str]:
        self.graph = AsyncGraphClient(transport=transport, clock=self.ctx.clock, **graph_options(self.settings))
        self.sources = AsyncSourceFetcher(transport=source_transport, **fetcher_options(self.settings))
        # Hashing threads contend with the event loop for the GIL: one at a time.
        self.hash_slot = asyncio.Semaphore(1)
        return self.sources.key

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pools and the database connections."""
        await self.graph.aclose()
        await self.sources.aclose()
        await asyncio.to_thread(self.store.close)

    async def _hit(self, read: Callable[[], T]) -> T:
        """A cache hit's read: inline on SQLite, in a thread on PostgreSQL (a round trip)."""
        return await asyncio.to_thread(read) if self.ctx.in_postgres else read()

    async def get_or_upload(self, source: Source, *, phone_number_id: str | None = None,
                            mime_type: str | None = None) -> str:
        """See :meth:`MediaRegistry.get_or_upload`."""
        media_id = self.sourcing.media_id  # on PostgreSQL a hit is a round trip: it leaves the loop too
        found = (await asyncio.to_thread(media_id, source, phone_number_id, mime_type) if self.ctx.in_postgres
                 else media_id(source, phone_number_id, mime_type))
        return found if isinstance(found, str) else (await adrive(found, self)).media_id

    async def get_or_upload_with_status(self, source: Source, *, phone_number_id: str | None = None,
                                        mime_type: str | None = None) -> Outcome:
        """See :meth:`MediaRegistry.get_or_upload_with_status`."""
        if self.ctx.in_postgres:  # a hit is a round trip to a server: it leaves the loop too
            found = await asyncio.to_thread(self.sourcing.lookup, source, phone_number_id, mime_type)
        else:
            found = self.sourcing.lookup(source, phone_number_id, mime_type)
        return found if isinstance(found, Outcome) else await adrive(found, self)

    async def invalidate(self, media_id: str, *, reason: str = REFUSED) -> None:
        """See :meth:`MediaRegistry.invalidate`."""
        await adrive(self.sourcing.invalidate_flow(media_id, reason), self)

    async def send_with_media(self, source: Source, send: Callable[[str], Awaitable[T] | T], *,
                              phone_number_id: str | None = None) -> T:
        """See :meth:`MediaRegistry.send_with_media`; ``send`` may be a coroutine function."""
        result: T = await adrive(self.sourcing.send_with_media_flow(source, send, phone_number_id), self)
        return result

    async def get_header_handle(self, source: Source, *, app_id: str | None = None) -> str:
        """See :meth:`MediaRegistry.get_header_handle`."""
        app, hit = await self._hit(functools.partial(self.handles.hit, source, app_id))
        return hit if hit is not None else await adrive(self.handles.handle_flow(source, app), self)

    async def invalidate_handle(self, handle: str, *, reason: str = REFUSED_HANDLE) -> None:
        """See :meth:`MediaRegistry.invalidate_handle`."""
        await adrive(self.handles.invalidate_flow(handle, reason), self)

    async def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """See :meth:`MediaRegistry.refresh_expiring`; ``refresh_concurrency`` tasks at a time."""
        limit = asyncio.Semaphore(self.settings.refresh_concurrency)

        async def refresh(row: MediaRow) -> LifecycleAction:
            async with limit:
                return await adrive(self.lifecycle.refresh_one(row, dry_run), self)

        rows = await asyncio.to_thread(self.lifecycle.expiring_rows)
        report = Report(dry_run=dry_run)
        for action in await asyncio.gather(*(refresh(row) for row in rows)):
            add(report, action, on_action)
        return report

    async def delete(self, target: str | os.PathLike[str]) -> Report:
        """See :meth:`MediaRegistry.delete`."""
        return await adrive(self.lifecycle.delete_flow(target), self)

    async def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """See :meth:`MediaRegistry.purge`."""
        return await adrive(self.lifecycle.purge_flow(dry_run, on_action), self)

    async def download(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None = None, *,
        phone_number_id: str | None = None,
    ) -> DownloadedMedia:
        """See :meth:`MediaRegistry.download`."""
        return await adrive(self.inbound.download_flow(media_id, dest_dir, phone_number_id), self)

    async def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None, *,
        on_invalid: OnInvalid | None = None,
    ) -> list[DownloadedMedia]:
        """See :meth:`MediaRegistry.download_webhook`."""
        return await adrive(self.inbound.download_webhook_flow(payload, dest_dir, on_invalid), self)

    async def handle_webhook(self, payload: Any, *, on_invalid: OnInvalid | None = None,
                             on_failed_send: OnFailedSend | None = None) -> WebhookReport:
        """See :meth:`MediaRegistry.handle_webhook`."""
        return await adrive(self.webhooks.handle_flow(payload, on_invalid, on_failed_send), self)

    async def alookup(self, target: str | os.PathLike[str], *,
                      phone_number_id: str | None = None) -> MediaRecord | None:
        """:meth:`~MediaRegistry.lookup`, in a thread."""
        return await asyncio.to_thread(self.reading.lookup, target, phone_number_id=phone_number_id)

    async def arecords(self, *, expiring_within: timedelta | None = None) -> list[MediaRecord]:
        """:meth:`~MediaRegistry.records`, read whole in a thread."""
        return await asyncio.to_thread(lambda: list(self.reading.records(expiring_within=expiring_within)))

    async def avalid_record(self, sha256: str, *, phone_number_id: str | None = None) -> MediaRecord | None:
        """:meth:`~MediaRegistry.valid_record`: a cache hit (inline on SQLite)."""
        return await self._hit(functools.partial(self.reading.valid_record, sha256, phone_number_id=phone_number_id))

    async def astats(self) -> dict[str, Any]:
        """:meth:`~MediaRegistry.stats`, in a thread."""
        return await asyncio.to_thread(self.reading.stats)

    async def aoverdue(self) -> list[str]:
        """:meth:`~MediaRegistry.overdue` (it reads source files), in a thread."""
        return await asyncio.to_thread(self.lifecycle.overdue)
