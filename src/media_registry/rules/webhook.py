"""Webhooks: record inbound media for the archive, repair sends that failed for media
reasons, and remember which media ID each message was sent with."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from ..store import Store
from ..store.inbox import STATES, Inbox, InboxItem, NewItem
from ..webhooks import FailedStatus, OnInvalid, Repair, WebhookReport, count_statuses, failed_statuses, media_in_webhook
from .context import Context
from .effects import Blocking, Flow, ask

OnFailedSend = Callable[[str, str, str], Any]
"""Told of each failed send with a media error: ``(message_id, media_id, error)``."""

MEDIA_LIFETIME = timedelta(days=7)  # how long Meta keeps a webhook's media
REPAIRED = "failed send"  # how a repair's invalidation begins in the events table


def inbox(store: Store) -> Inbox:
    """The inbox over a store's backend."""
    return Inbox(store.backend)


class Webhooks:
    """The rules of a webhook payload: its media recorded for the archive worker, its
    failed statuses repaired."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def handle_flow(self, payload: Any, on_invalid: OnInvalid | None,
                    on_failed_send: OnFailedSend | None) -> Flow[WebhookReport]:
        """Record every well-formed media item once (a malformed one is reported, the others
        kept), then repair the sends its statuses say failed with a media error."""
        report = WebhookReport(statuses=count_statuses(payload))

        def invalid(line: str) -> None:
            report.invalid.append(line)
            if on_invalid is not None:
                on_invalid(line)

        now = self.ctx.clock()
        items = [_new_item(item, now) for item in media_in_webhook(payload, invalid)]
        store = inbox(self.ctx.store)
        fresh = yield from ask(Blocking(functools.partial(store.record, items)))
        for item, new in zip(items, fresh):
            (report.recorded if new else report.duplicates).append(item.media_id)
        for status in failed_statuses(payload, invalid):
            if status.code in self.ctx.settings.repair_codes:
                repair = yield from self._repair(status)
                if repair is not None:
                    report.repairs.append(repair)
                    if on_failed_send is not None:
                        on_failed_send(repair.message_id, repair.media_id, repair.error)
        return report

    def _repair(self, status: FailedStatus) -> Flow[Repair | None]:
        """Invalidate the media ID a failed message was sent with, at most once per content
        and number within ``sent_retention``; None for a message not sent by
        ``send_with_media`` or a status already handled (a redelivery)."""
        store = self.ctx.store
        sent = yield from ask(Blocking(functools.partial(inbox(store).sent, status.message_id)))
        if sent is None:
            return None
        media_id, phone = sent
        sha256 = yield from ask(Blocking(functools.partial(store.resolve, media_id)))
        events = [] if sha256 is None else (yield from ask(Blocking(functools.partial(store.events, sha256))))
        repairs = [event for event in events if event.action == "invalidate" and event.phone_number_id == phone
                   and (event.detail or "").startswith(REPAIRED)]
        if any(status.message_id in (event.detail or "") for event in repairs):
            return None
        now = self.ctx.clock()
        since = now - self.ctx.settings.sent_retention
        action = "reported" if any(event.at > since for event in repairs) or sha256 is None else "invalidated"
        if action == "invalidated":
            reason = f"{REPAIRED} {status.message_id}: code {status.code}"
            yield from ask(Blocking(functools.partial(store.invalidate_media, media_id, now, reason)))
        return Repair(message_id=status.message_id, media_id=media_id, phone_number_id=phone,
                      code=status.code or 0, action=action, error=status.error)

    def sent_flow(self, result: Any, media_id: str, phone: str) -> Flow[None]:
        """Remember the message ID a send's result carries (an httpx response, a dict of
        Meta's answer, pywa's result), if any."""
        message_id = message_id_of(result)
        if message_id is not None:
            yield from ask(Blocking(functools.partial(
                inbox(self.ctx.store).record_sent, message_id, media_id, phone, self.ctx.clock())))

    def inbox(self, states: tuple[str, ...] = STATES) -> list[InboxItem]:
        """The inbound items in these states (pending, failed, archived, lost), oldest first."""
        return inbox(self.ctx.store).items(states)

    def prune_sent(self) -> int:
        """Forget sent messages older than ``sent_retention``; how many."""
        return inbox(self.ctx.store).prune_sent(self.ctx.clock() - self.ctx.settings.sent_retention)


def message_id_of(result: Any) -> str | None:
    """The ``wamid`` of a send's result: ``messages[0].id`` of Meta's answer (an
    ``httpx.Response`` that succeeded, or its decoded dict), or a result's ``id`` (pywa)."""
    if isinstance(result, httpx.Response):
        if not result.is_success:
            return None
        try:
            result = result.json()
        except ValueError:
            return None
    if isinstance(result, dict):
        messages = result.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        result = first.get("id") if isinstance(first, dict) else None
    else:
        result = getattr(result, "id", None)
    return result if isinstance(result, str) and 0 < len(result) <= 512 else None


def _new_item(item: Any, now: datetime) -> NewItem:
    """The inbox's record of a webhook item: its ID lives 7 days from the message's time."""
    sent = datetime.fromtimestamp(item.timestamp, timezone.utc) if 0 < (item.timestamp or 0) < 2**33 else now
    return NewItem(item.media_id, item.phone_number_id, item.mime_type, item.sha256, item.url,
                   item.message_id, now, min(sent, now) + MEDIA_LIFETIME)
