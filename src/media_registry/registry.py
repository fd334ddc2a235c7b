"""MediaRegistry and AsyncMediaRegistry: what senders use.

The rules live once, as generator flows (see :mod:`media_registry._flows`) in mixins on a
shared core: sending (:mod:`._sending`), sources beyond paths (:mod:`._sourcing`), lifecycle
(:mod:`._lifecycle`), inbound media (:mod:`._inbound`) and reading (:mod:`._reading`).
Each registry here is only a driver for those flows: :class:`MediaRegistry` performs their
effects inline with the sync clients; :class:`AsyncMediaRegistry` awaits the async ones and
runs every blocking effect (hashing, SQLite writes that may wait for a lock, file creation
and renames) in a thread, off the event loop. Both step flows through the same :class:`~media_registry._flows.Run`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ._flows import Blocking, Effect, Fetch, Flow, Hashing, Run, Send, Sleep, in_thread
from ._inbound import Inbound
from ._lifecycle import Lifecycle, OnAction, add
from ._reading import Reading
from ._sending import Outcome
from ._sourcing import REFUSED, Source
from .dburl import PostgresURL
from .graph import AsyncGraphClient, GraphClient
from .models import DownloadedMedia, LifecycleAction, Report
from .sources import AsyncSourceFetcher, SourceFetcher
from .store import MediaRow
from .webhooks import OnInvalid

__all__ = ["AsyncMediaRegistry", "MediaRegistry", "Outcome"]

T = TypeVar("T")


class _Rules(Lifecycle, Inbound, Reading):
    """Every rule of the registry, for a driver to run."""


class MediaRegistry(_Rules):
    """Media IDs that are valid now, uploading each content only once.

    Build it from the environment with :meth:`from_env`, or pass settings as arguments
    (``db``, ``token``, ``phone_number_id``, ``api_base``, ``ttl``, ``min_validity``, ...,
    the names of :class:`~media_registry.config.Settings`). Thread-safe; use one per process.
    ``transport`` swaps the HTTP transport (an ``httpx.BaseTransport``, for tests); ``clock``
    swaps the time source; ``create=False`` refuses to create a registry that does not exist
    yet (for read-only use; an older registry is still upgraded).
    """

    _client = GraphClient
    _fetcher = SourceFetcher
    graph: GraphClient
    sources: SourceFetcher

    def __enter__(self) -> MediaRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the registry's database connections and HTTP connection pools."""
        self.graph.close()
        self.sources.close()
        self.store.close()

    def _drive(self, flow: Flow[T]) -> T:
        """Run a flow, performing its effects inline."""
        run = Run(flow)
        while (effect := run.next()) is not None:
            try:
                run.value = self._perform(effect)
            except BaseException as exc:  # handed to the flow, which decides
                run.error = exc
        return run.result

    def _perform(self, effect: Effect) -> object:
        if isinstance(effect, Sleep):
            time.sleep(effect.seconds)
            return None
        if isinstance(effect, Blocking):
            return effect.work()
        if isinstance(effect, Fetch):
            return effect.on(self.sources)
        if isinstance(effect, Send):
            return effect.send(effect.media_id)
        return effect.on(self.graph)

    def get_or_upload(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> str:
        """A media ID for the source's content that stays valid for at least ``min_validity``.

        ``source`` is a path (str or PathLike), bytes-like content, a binary file object
        (read once, in blocks), or a URL string starting with ``https://`` (``http://`` only
        to this machine). Served from the registry when possible (an unchanged file costs one
        ``stat`` and one query; a URL checked within ``url_revalidate`` makes no request);
        otherwise the content is sniffed, checked against WhatsApp's limits, hashed and
        uploaded once, however many threads and processes ask at the same moment. The same
        bytes named as a file, as bytes or by a URL share one media ID.
        """
        return self.get_or_upload_with_status(
            source, phone_number_id=phone_number_id, mime_type=mime_type).media_id

    def get_or_upload_with_status(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> Outcome:
        """Like :meth:`get_or_upload`, also telling whether this call uploaded the content."""
        found = self._lookup(source, phone_number_id, mime_type)
        return found if isinstance(found, Outcome) else self._drive(found)

    def invalidate(self, media_id: str, *, reason: str = REFUSED) -> None:
        """Never serve ``media_id`` again (Meta refused it at send time: it died early); the
        next :meth:`get_or_upload` of its content uploads anew. The event log records why."""
        self._drive(self._invalidate_flow(media_id, reason))

    def send_with_media(self, source: Source, send: Callable[[str], T], *,
                        phone_number_id: str | None = None) -> T:
        """``send(media_id)`` with the source's media ID, and what it returns.

        When Meta refuses the ID as no longer valid (Graph error code 100, "... is not a
        valid whatsapp business account media attachment ID", raised or returned as an
        ``httpx.Response``; see :func:`~media_registry.media_id_refused`), the ID is
        invalidated, the content uploaded again and ``send`` called once more. An ID uploaded
        moments ago that is refused too (or a content repaired on this number within
        ``repair_window``) means ``send`` posts from another number: ConfigError, and nothing
        more is invalidated. Any other error reaches the caller untouched. A file object is
        read once.
        """
        return self._drive(self._send_with_media_flow(source, send, phone_number_id))  # type: ignore[no-any-return]

    def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Upload again every current ID with less than ``refresh_before`` left whose content
        still sits in a known source file; the new ID is recorded (and served) before the old
        one is retired. Content whose sources all vanished is skipped: purge deletes it.
        Runs ``refresh_concurrency`` uploads at a time; stops early after :meth:`stop`.
        ``on_action`` is called with each action as it completes (progress, logs).
        """
        report = Report(dry_run=dry_run)
        with ThreadPoolExecutor(max_workers=self.settings.refresh_concurrency) as pool:
            flows = (self._refresh_one(row, dry_run) for row in self._expiring_rows())
            for action in pool.map(self._drive, flows):
                add(report, action, on_action)
        return report

    def delete(self, target: str | os.PathLike[str]) -> Report:
        """Forget a content (named by path, sha256 or media ID): its IDs are no longer served
        or refreshed, and each is DELETEd remotely now; any the API could not delete stay
        marked, and :meth:`purge` retries them."""
        return self._drive(self._delete_flow(target))

    def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """Clean up: contents whose source files all vanished are deleted (remotely too);
        rows of expired IDs are dropped; remote DELETEs still owed are retried.
        ``on_action`` is called with each action as it completes."""
        return self._drive(self._purge_flow(dry_run, on_action))

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
        return self._drive(self._download_flow(media_id, dest_dir, phone_number_id))

    def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None, *,
        on_invalid: OnInvalid | None = None,
    ) -> list[DownloadedMedia]:
        """Download every media item a webhook payload carries (see
        :func:`~media_registry.webhooks.media_in_webhook`, which says what ``on_invalid``
        gets for an item of the wrong shape; the others are downloaded all the same); a
        webhook's own sha256 must agree with what was fetched."""
        return self._drive(self._download_webhook_flow(payload, dest_dir, on_invalid))


class AsyncMediaRegistry(_Rules):
    """:class:`MediaRegistry` for asyncio senders, with the same verbs as coroutines.

    Cache hits run inline (one stat, one short query; in a thread on PostgreSQL, where the
    query crosses the network); everything else that may block
    (hashing, SQLite writes, creating and renaming downloaded files) runs in threads so the
    event loop never waits on a lock, a disk or a large file; HTTP goes through
    ``httpx.AsyncClient``. Single flight holds across tasks, threads and processes alike, and
    a cancelled task leaves no upload lease behind, even one its thread took after the
    cancellation. Arguments as for :class:`MediaRegistry` (``transport`` is an
    ``httpx.AsyncBaseTransport``).
    """

    _client = AsyncGraphClient
    _fetcher = AsyncSourceFetcher
    graph: AsyncGraphClient
    sources: AsyncSourceFetcher

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._one_hash_at_a_time = asyncio.Semaphore(1)
        # A PostgreSQL hit is a round trip to a server: it leaves the event loop too.
        self._hits_in_thread = isinstance(self.settings.db, PostgresURL)

    async def __aenter__(self) -> AsyncMediaRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pools and the database connections."""
        await self.graph.aclose()
        await self.sources.aclose()
        self.store.close()

    async def _drive(self, flow: Flow[T]) -> T:
        """Run a flow, awaiting its effects."""
        run = Run(flow)
        while (effect := run.next()) is not None:
            try:
                run.value = await self._perform(effect)
            except BaseException as exc:  # cancellation too: the flow releases its lease
                run.error = exc
        return run.result

    async def _perform(self, effect: Effect) -> object:
        if isinstance(effect, Sleep):
            await asyncio.sleep(effect.seconds)
            return None
        if isinstance(effect, Hashing):
            # Hashing threads contend with the event loop for the GIL: one at a time keeps the
            # loop responsive (8 new 10 MB files at once: 38 ms stalls become 8 ms).
            async with self._one_hash_at_a_time:
                return await in_thread(effect)
        if isinstance(effect, Blocking):
            return await in_thread(effect)
        if isinstance(effect, Fetch):
            return await effect.on(self.sources)
        if isinstance(effect, Send):
            result = effect.send(effect.media_id)
            return await result if inspect.isawaitable(result) else result
        return await effect.on(self.graph)

    async def get_or_upload(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> str:
        """See :meth:`MediaRegistry.get_or_upload`."""
        outcome = await self.get_or_upload_with_status(
            source, phone_number_id=phone_number_id, mime_type=mime_type
        )
        return outcome.media_id

    async def get_or_upload_with_status(
        self, source: Source, *, phone_number_id: str | None = None, mime_type: str | None = None,
    ) -> Outcome:
        """See :meth:`MediaRegistry.get_or_upload_with_status`."""
        if self._hits_in_thread:
            found = await asyncio.to_thread(self._lookup, source, phone_number_id, mime_type)
        else:
            found = self._lookup(source, phone_number_id, mime_type)
        return found if isinstance(found, Outcome) else await self._drive(found)

    async def invalidate(self, media_id: str, *, reason: str = REFUSED) -> None:
        """See :meth:`MediaRegistry.invalidate`."""
        await self._drive(self._invalidate_flow(media_id, reason))

    async def send_with_media(self, source: Source, send: Callable[[str], Awaitable[T] | T], *,
                              phone_number_id: str | None = None) -> T:
        """See :meth:`MediaRegistry.send_with_media`; ``send`` may be a coroutine function."""
        return await self._drive(self._send_with_media_flow(source, send, phone_number_id))

    async def refresh_expiring(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """See :meth:`MediaRegistry.refresh_expiring`; ``refresh_concurrency`` tasks at a time."""
        limit = asyncio.Semaphore(self.settings.refresh_concurrency)

        async def refresh(row: MediaRow) -> LifecycleAction:
            async with limit:
                return await self._drive(self._refresh_one(row, dry_run))

        rows = await asyncio.to_thread(self._expiring_rows)
        report = Report(dry_run=dry_run)
        for action in await asyncio.gather(*(refresh(row) for row in rows)):
            add(report, action, on_action)
        return report

    async def delete(self, target: str | os.PathLike[str]) -> Report:
        """See :meth:`MediaRegistry.delete`."""
        return await self._drive(self._delete_flow(target))

    async def purge(self, *, dry_run: bool = False, on_action: OnAction | None = None) -> Report:
        """See :meth:`MediaRegistry.purge`."""
        return await self._drive(self._purge_flow(dry_run, on_action))

    async def download(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None = None, *,
        phone_number_id: str | None = None,
    ) -> DownloadedMedia:
        """See :meth:`MediaRegistry.download`."""
        return await self._drive(self._download_flow(media_id, dest_dir, phone_number_id))

    async def download_webhook(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None = None, *,
        on_invalid: OnInvalid | None = None,
    ) -> list[DownloadedMedia]:
        """See :meth:`MediaRegistry.download_webhook`."""
        return await self._drive(self._download_webhook_flow(payload, dest_dir, on_invalid))
