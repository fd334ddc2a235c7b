"""Inbound media: downloads by media ID and from webhook payloads."""

from __future__ import annotations

import functools
import os
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from ..content import blobs
from ..errors import DownloadURLExpired, IntegrityError, MediaNotFound, MediaRegistryError
from ..models import DownloadedMedia, InboundMedia, MediaMetadata
from ..store import InboundRow
from ..webhooks import OnInvalid, media_in_webhook
from .context import Context
from .effects import Blocking, DownloadTo, Flow, GetMedia, Sleep, ask


class Inbound:
    """The rules of fetching inbound media whole and verified, into ``<sha256>.<ext>``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def download_flow(
        self, media_id: str, dest_dir: str | os.PathLike[str] | None, phone_number_id: str | None
    ) -> Flow[DownloadedMedia]:
        """Download with retries: an expired URL or a bad transfer starts over with fresh
        metadata after a jittered backoff, up to ``max_retries`` times."""
        settings = self.ctx.settings
        folder = Path(dest_dir) if dest_dir is not None else settings.blob_dir
        attempt = 0
        while True:
            attempt += 1
            try:
                return (yield from self._download_once(media_id, folder, phone_number_id))
            except (IntegrityError, DownloadURLExpired) as exc:
                if attempt > settings.max_retries:
                    if isinstance(exc, DownloadURLExpired):
                        raise DownloadURLExpired(
                            f"media {media_id}: every download URL had expired before it was "
                            "fetched; check the clock of this machine, then try again"
                        ) from None
                    raise
            cap = min(30.0, settings.retry_backoff * 2**attempt)
            yield from ask(Sleep(random.uniform(0, cap)))  # full jitter, as for API calls

    def _download_once(
        self, media_id: str, folder: Path, phone_number_id: str | None
    ) -> Flow[DownloadedMedia]:
        """Fresh metadata, then the bytes into a verified temporary file renamed into place
        (unless the content is already on disk), then the record. Creating, syncing and
        renaming the file are blocking effects: none of it runs on an event loop."""
        try:
            metadata = yield from ask(GetMedia(media_id, phone_number_id))
        except MediaNotFound as exc:
            raise MediaNotFound(
                f"media {media_id}: the Graph API does not know this media ID (code {exc.code}, "
                f"subcode {exc.subcode}); inbound media IDs live 7 days: ask the sender to send it again",
                status=exc.status, code=exc.code, subcode=exc.subcode, fbtrace_id=exc.fbtrace_id,
            ) from None
        mime_type = metadata.mime_type.split(";")[0].strip()
        destination = folder / blobs.file_name(metadata.sha256, mime_type)
        file = yield from ask(Blocking(
            functools.partial(_open_unless_on_disk, destination, metadata), undo=_discard
        ))
        if file is not None:
            try:
                yield from ask(DownloadTo(metadata.url, file))
            except BaseException as exc:
                yield from ask(Blocking(functools.partial(file.__exit__, type(exc), exc, exc.__traceback__)))
                raise
            yield from ask(Blocking(functools.partial(file.__exit__, None, None, None)))
        fetched = file is not None
        row = yield from ask(Blocking(functools.partial(
            _inbound_row, media_id, metadata, mime_type, destination, self.ctx.clock())))
        yield from ask(Blocking(functools.partial(
            self.ctx.store.record_inbound, row, None if fetched else "already on disk")))
        return DownloadedMedia(media_id=media_id, sha256=metadata.sha256, mime_type=mime_type,
                               size_bytes=metadata.file_size, path=destination, fetched=fetched)

    def download_webhook_flow(
        self, payload: dict[str, Any], dest_dir: str | os.PathLike[str] | None,
        on_invalid: OnInvalid | None,
    ) -> Flow[list[DownloadedMedia]]:
        """Download every media item of a webhook payload; its sha256 must match the API's.
        Items of the wrong shape, and items whose download fails, go to ``on_invalid`` (see
        media_in_webhook) and the others are still downloaded; without ``on_invalid`` the
        first failure is raised once the others are done."""
        downloaded = []
        first_failure: MediaRegistryError | None = None
        for item in media_in_webhook(payload, on_invalid):
            try:
                downloaded.append((yield from self._download_webhook_item(item, dest_dir)))
            except MediaRegistryError as exc:  # one item's failure never stops the others
                if on_invalid is not None:
                    on_invalid(str(exc))
                elif first_failure is None:
                    first_failure = exc
        if first_failure is not None:
            raise first_failure
        return downloaded

    def _download_webhook_item(
        self, item: InboundMedia, dest_dir: str | os.PathLike[str] | None
    ) -> Flow[DownloadedMedia]:
        """One webhook item, checked against the webhook's own sha256."""
        result = yield from self.download_flow(item.media_id, dest_dir, item.phone_number_id)
        if item.sha256 and item.sha256 != result.sha256:
            raise IntegrityError(
                f"media {item.media_id}: the webhook's sha256 differs from the API's; "
                f"kept {result.path} as the API describes it, check the webhook's source"
            )
        return result


def _inbound_row(media_id: str, metadata: MediaMetadata, mime_type: str, destination: Path,
                 now: datetime) -> InboundRow:
    """The record of a download (resolving the path touches the disk: off the loop)."""
    return InboundRow(media_id, metadata.sha256, mime_type, metadata.file_size,
                      str(destination.resolve()), now)


def _open_unless_on_disk(destination: Path, metadata: MediaMetadata) -> blobs.VerifiedFile | None:
    """An open temporary file for the content, or None if it is already on disk (its bytes
    checked, never through a symlink)."""
    if blobs.holds(destination, metadata.file_size, metadata.sha256):
        return None
    return blobs.VerifiedFile(destination, metadata.file_size, metadata.sha256).__enter__()


def _discard(file: blobs.VerifiedFile | None) -> None:
    """Close and remove the temporary file of a download abandoned before it started."""
    if file is not None:
        file.__exit__(BaseException, None, None)
