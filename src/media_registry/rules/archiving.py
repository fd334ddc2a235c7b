"""The archive worker's rules: each claimed inbound item fetched whole and verified (size
and sha256 against the API's, and against the webhook's own sha256), stored in the archive
(:mod:`media_registry.content.archives`), and marked done; a failure of any kind (API,
network, storage) is retried with backoff; an ID Meta no longer knows ends as lost."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from ..content.archives import S3Archive, VerifiedSpool, open_archive
from ..errors import IntegrityError, MediaNotFound, MediaRegistryError
from ..models import DownloadedMedia, LifecycleAction, Report
from ..store import new_owner
from ..store.inbox import InboxItem
from .context import Context
from .effects import Blocking, DownloadTo, Flow, GetMedia, ask
from .inbound import Inbound
from .lifecycle import OnAction, add
from .webhook import Webhooks, inbox

CLAIM_BATCH = 32  # items a pass claims at a time
CLAIM_FOR = timedelta(minutes=10)  # a worker that died on another host frees its items after this
MAX_BACKOFF = 3600.0


class Archiving:
    """The archive worker's flows over the registry's context and its downloads."""

    def __init__(self, ctx: Context, inbound: Inbound) -> None:
        self.ctx = ctx
        self.inbound = inbound
        settings = ctx.settings
        self.archive = open_archive(settings.archive, settings.blob_dir, endpoint_url=settings.s3_endpoint_url,
                                    checksum=settings.s3_checksum, timeout=settings.timeout)

    def run_pass(self, run: Callable[[Flow[LifecycleAction]], LifecycleAction],
                 on_action: OnAction | None) -> Report:
        """Archive every inbound item due now, ``refresh_concurrency`` at a time (each flow
        driven by ``run``), then forget sent messages past ``sent_retention``. ``on_action``
        is told of each item as it ends."""
        report, owner, start = Report(), new_owner(), self.ctx.clock()
        with ThreadPoolExecutor(max_workers=self.ctx.settings.refresh_concurrency) as pool:
            while items := self._claim(owner, start):
                for action in pool.map(run, (self.archive_flow(item, owner) for item in items)):
                    add(report, action, on_action)
        Webhooks(self.ctx).prune_sent()
        return report

    async def arun_pass(self, run: Callable[[Flow[LifecycleAction]], Awaitable[LifecycleAction]],
                        on_action: OnAction | None) -> Report:
        """:meth:`run_pass` on an event loop, ``refresh_concurrency`` tasks at a time."""
        report, owner, start = Report(), new_owner(), self.ctx.clock()
        limit = asyncio.Semaphore(self.ctx.settings.refresh_concurrency)

        async def archive(item: InboxItem) -> LifecycleAction:
            async with limit:
                return await run(self.archive_flow(item, owner))

        while items := await asyncio.to_thread(self._claim, owner, start):
            for action in await asyncio.gather(*(archive(item) for item in items)):
                add(report, action, on_action)
        await asyncio.to_thread(Webhooks(self.ctx).prune_sent)
        return report

    def _claim(self, owner: str, due: datetime) -> list[InboxItem]:
        """Claim a batch of items due by ``due`` (the pass's start: an item that fails is due
        again a second later at the soonest, so in the next pass)."""
        return inbox(self.ctx.store).claim(owner, self.ctx.clock(), due, CLAIM_FOR, CLAIM_BATCH)

    def archive_flow(self, item: InboxItem, owner: str) -> Flow[LifecycleAction]:
        """Archive one claimed item: ``archived``, ``failed`` (retried later) or ``lost``."""
        store = inbox(self.ctx.store)
        now = self.ctx.clock()
        action = functools.partial(LifecycleAction, sha256=item.sha256 or "", media_id=item.media_id,
                                   phone_number_id=item.phone_number_id)
        try:
            if item.expires_at <= now:
                raise MediaNotFound(f"media {item.media_id}: its 7 days ran out before it was archived")
            result, location = yield from self._store(item)
        except (MediaNotFound, IntegrityError) as exc:
            if isinstance(exc, IntegrityError) and "webhook" not in str(exc):
                return (yield from self._failed(item, owner, str(exc), action))
            yield from ask(Blocking(functools.partial(store.failed, item, owner, str(exc), now, None)))
            return action(action="lost", detail=str(exc))
        except (MediaRegistryError, OSError, httpx.HTTPError) as exc:
            return (yield from self._failed(item, owner, str(exc) or type(exc).__name__, action))
        done = yield from ask(Blocking(functools.partial(store.archived, item, result.sha256, location,
                                                         self.ctx.clock())))
        return action(action="archived" if done else "skipped", sha256=result.sha256, detail=location)

    def _failed(self, item: InboxItem, owner: str, reason: str,
                action: functools.partial[LifecycleAction]) -> Flow[LifecycleAction]:
        """Record a failed try, retried after a jittered backoff that doubles each time."""
        cap = min(MAX_BACKOFF, self.ctx.settings.retry_backoff * 60 * 2 ** item.attempts)
        now = self.ctx.clock()
        retry_at = now + timedelta(seconds=max(1.0, random.uniform(cap / 2, cap)))
        yield from ask(Blocking(functools.partial(inbox(self.ctx.store).failed, item, owner, reason, now, retry_at)))
        return action(action="failed", detail=reason)

    def _store(self, item: InboxItem) -> Flow[tuple[DownloadedMedia, str]]:
        """Fetch the item into the archive folder, or through a spool into the bucket; its
        location."""
        if not isinstance(self.archive, S3Archive):
            result = yield from self._fetch(item, self.archive)
            return result, str(result.path)
        try:
            metadata = yield from ask(GetMedia(item.media_id, item.phone_number_id))
        except MediaNotFound as exc:
            raise MediaNotFound(f"media {item.media_id}: the Graph API no longer knows it (code {exc.code}); "
                                "inbound media IDs live 7 days") from None
        mime_type = metadata.mime_type.split(";")[0].strip()
        _check_webhook_sha256(item, metadata.sha256)
        spool = yield from ask(Blocking(functools.partial(VerifiedSpool, metadata.file_size, metadata.sha256),
                                        undo=VerifiedSpool.close))
        try:
            yield from ask(DownloadTo(metadata.url, spool))
            yield from ask(Blocking(spool.finish))
            tags = {"media-id": item.media_id, "phone-number-id": item.phone_number_id or "",
                    "mime-type": mime_type, "received-at": _iso(item.received_at)}
            location = yield from ask(Blocking(functools.partial(
                self.archive.put, spool.file, metadata.sha256, mime_type, tags)))
        finally:
            yield from ask(Blocking(spool.close))
        return DownloadedMedia(media_id=item.media_id, sha256=metadata.sha256, mime_type=mime_type,
                               size_bytes=metadata.file_size, path=Path(location), fetched=True), location

    def _fetch(self, item: InboxItem, folder: Path) -> Flow[DownloadedMedia]:
        """The verified download into a folder, checked against the webhook's own sha256 too."""
        result = yield from self.inbound.download_flow(item.media_id, folder, item.phone_number_id)
        _check_webhook_sha256(item, result.sha256)
        return result


def _check_webhook_sha256(item: InboxItem, sha256: str) -> None:
    if item.sha256 and item.sha256 != sha256:
        raise IntegrityError(f"media {item.media_id}: the webhook's sha256 differs from the API's; "
                             "not archived, check the webhook's source")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
