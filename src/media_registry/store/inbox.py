"""The inbox: inbound items that webhooks announced (the archive's queue) and the messages
sent with a media ID, over the same :class:`~media_registry.store.backend.Backend` primitives
as the :class:`~media_registry.store.Store` that holds it.

Recording an item twice records it once (Meta redelivers webhooks for days). A worker claims
due items for a while before it archives them: a claim of a process that died on this host
is taken over at once, any other once it runs out, so each item is archived by one worker
at a time across processes and hosts (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, as purge's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta

from .._tuples import NamedTuple
from .backend import Backend, Tx
from .owners import HOST, owner_alive

TYPE_CHECKING = False  # without `typing`: the command line's cache hit and read commands import this module
if TYPE_CHECKING:
    from typing import Any

STATES = ("pending", "failed", "archived", "lost")
WAITING = ("pending", "failed")  # not archived yet, and still to be tried


class NewItem(NamedTuple):
    """An inbound media item as a webhook announced it."""
    media_id: str
    phone_number_id: str | None
    mime_type: str | None
    sha256: str | None  # Meta's, in hex
    url: str | None
    message_id: str | None
    received_at: datetime
    expires_at: datetime


class InboxItem(NamedTuple):
    """An inbound item and where the archive is with it."""
    media_id: str
    phone_number_id: str | None
    mime_type: str | None
    sha256: str | None
    url: str | None
    message_id: str | None
    received_at: datetime
    expires_at: datetime
    state: str
    attempts: int
    reason: str | None
    location: str | None


class InboxCounts(NamedTuple):
    """The inbox for ``stats``, metrics and health: items by state, and of those waiting the
    oldest received and the soonest to expire (None when none waits)."""
    by_state: dict[str, int]
    oldest_waiting: datetime | None
    soonest_expiry: datetime | None


_COLUMNS = ("media_id, phone_number_id, mime_type, sha256, url, message_id, received_at, expires_at, state, "
            "attempts, reason, location")
_RECORD = ("INSERT INTO inbound_items (media_id, phone_number_id, mime_type, sha256, url, message_id, "
           "received_at, expires_at, next_attempt_at) VALUES (:media_id, :phone_number_id, :mime_type, "
           ":sha256, :url, :message_id, :received_at, :expires_at, :received_at) "
           "ON CONFLICT (media_id) DO NOTHING RETURNING 1")
_WAITING_SQL = "state IN ('pending', 'failed')"
_CANDIDATES = ("SELECT media_id, claimed_by, (claimed_until IS NULL OR claimed_until < {db_now}) "
               "FROM inbound_items WHERE " + _WAITING_SQL + " AND next_attempt_at <= :due "
               "AND (claimed_until IS NULL OR claimed_until < {db_now} OR claimed_by LIKE :mine) "
               "ORDER BY claimed_by IS NOT NULL, expires_at LIMIT :limit{skip_locked}")
_CLAIM = ("UPDATE inbound_items SET claimed_by = :owner, claimed_until = {claim_until} "
          f"WHERE media_id = :media_id RETURNING {_COLUMNS}")
_ARCHIVED = ("UPDATE inbound_items SET state = 'archived', location = :location, sha256 = :sha256, "
             "reason = NULL, archived_at = :now, claimed_by = NULL, claimed_until = NULL "
             "WHERE media_id = :media_id AND " + _WAITING_SQL + " RETURNING phone_number_id")
_FAILED = ("UPDATE inbound_items SET state = :state, attempts = attempts + 1, reason = :reason, "
           "next_attempt_at = :next, claimed_by = NULL, claimed_until = NULL "
           "WHERE media_id = :media_id AND claimed_by = :owner AND " + _WAITING_SQL)
_COUNTS = "SELECT state, count(*) FROM inbound_items GROUP BY state"
_WAITING_TIMES = ("SELECT min(received_at), min(expires_at) FROM inbound_items WHERE " + _WAITING_SQL)
_LOG = ("INSERT INTO events (at, action, sha256, media_id, phone_number_id, path, detail{host_cols}) "
        "VALUES (:at, :action, :sha256, :media_id, :phone_number_id, :path, :detail{host_vals})")
_SENT = ("INSERT INTO sent_messages (message_id, media_id, phone_number_id, sent_at) "
         "VALUES (:message_id, :media_id, :phone, :at) ON CONFLICT (message_id) DO NOTHING")


class Inbox:
    """The inbox's operations, each one atomic transaction (or one read)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._when, self._time = backend.when, backend.time
        self._sql: Callable[[str], str] = functools.cache(lambda template: template.format_map(backend.dialect))

    def record(self, items: list[NewItem]) -> list[bool]:
        """Record the items in one transaction; for each, whether it was new (an item
        recorded before, e.g. by a redelivered webhook, is left as it is)."""
        rows = [{**item._asdict(), "received_at": self._when(item.received_at),
                 "expires_at": self._when(item.expires_at)} for item in items]

        def work(tx: Tx) -> list[bool]:
            return [tx.execute(_RECORD, row).fetchone() is not None for row in rows]

        return self.backend.write(work) if rows else []

    def claim(self, owner: str, now: datetime, due: datetime, claim_for: timedelta, limit: int) -> list[InboxItem]:
        """Claim up to ``limit`` items due by ``due`` for ``owner``, soonest to expire first."""
        params = {**self.backend.scope, "owner": owner, "now": self._when(now), "due": self._when(due),
                  "claim_for": claim_for,
                  "claim_until": self._when(now + claim_for), "mine": f"{HOST}:%", "limit": limit}

        def work(tx: Tx) -> list[InboxItem]:
            candidates = tx.execute(self._sql(_CANDIDATES), params).fetchall()
            free = [media_id for media_id, holder, expired in candidates if expired or not owner_alive(holder)]
            return [self._item(tx.execute(self._sql(_CLAIM), {**params, "media_id": media_id}).fetchone())
                    for media_id in free]

        return self.backend.write(work)

    def archived(self, item: InboxItem, sha256: str, location: str, now: datetime) -> bool:
        """Mark an item archived at ``location`` and log it; False if it was archived already."""
        params = {"media_id": item.media_id, "sha256": sha256, "location": location, "now": self._when(now)}

        def work(tx: Tx) -> bool:
            if tx.execute(_ARCHIVED, params).fetchone() is None:
                return False
            self.log(tx, now, "archive", sha256=sha256, media_id=item.media_id,
                     phone_number_id=item.phone_number_id, path=location)
            return True

        return self.backend.write(work)

    def failed(self, item: InboxItem, owner: str, reason: str, now: datetime, retry_at: datetime | None) -> None:
        """Record a failed try: retried at ``retry_at``, or marked lost (None) and logged."""
        params = {"media_id": item.media_id, "owner": owner, "reason": reason,
                  "state": "failed" if retry_at is not None else "lost",
                  "next": self._when(retry_at or item.expires_at)}

        def work(tx: Tx) -> None:
            if tx.execute(_FAILED, params).rowcount and retry_at is None:
                self.log(tx, now, "lost", media_id=item.media_id,
                         phone_number_id=item.phone_number_id, detail=reason)

        self.backend.write(work)

    def items(self, states: tuple[str, ...] = STATES) -> list[InboxItem]:
        """The items in these states, oldest received first."""
        marks = ", ".join(f":s{index}" for index in range(len(states)))
        sql = f"SELECT {_COLUMNS} FROM inbound_items WHERE state IN ({marks}) ORDER BY received_at, media_id"
        return [self._item(row) for row in self.backend.read(
            sql, {f"s{index}": state for index, state in enumerate(states)})]

    def counts(self) -> InboxCounts:
        """Items by state, and the oldest received and soonest expiry of those waiting."""
        by_state = dict.fromkeys(STATES, 0) | {state: int(n) for state, n in self.backend.read(_COUNTS, {})}
        oldest, soonest = self.backend.read(_WAITING_TIMES, {})[0]
        return InboxCounts(by_state, oldest and self._time(oldest), soonest and self._time(soonest))

    def record_sent(self, message_id: str, media_id: str, phone_number_id: str, at: datetime) -> None:
        """Remember that ``message_id`` was sent with ``media_id`` from that number."""
        params = {"message_id": message_id, "media_id": media_id, "phone": phone_number_id, "at": self._when(at)}
        self.backend.write(lambda tx: tx.execute(_SENT, params))

    def sent(self, message_id: str) -> tuple[str, str] | None:
        """The media ID and phone number ID a recorded message was sent with."""
        row = self.backend.read_one("SELECT media_id, phone_number_id FROM sent_messages "
                                    "WHERE message_id = :message_id", {"message_id": message_id})
        return None if row is None else (str(row[0]), str(row[1]))

    def prune_sent(self, before: datetime) -> int:
        """Forget the messages sent before ``before``; how many."""
        params = {"before": self._when(before)}
        return int(self.backend.write(
            lambda tx: tx.execute("DELETE FROM sent_messages WHERE sent_at < :before", params).rowcount))

    def log(self, tx: Tx, at: datetime, action: str, **fields: str | None) -> None:
        """One line of the events table, in ``tx``."""
        blank = dict.fromkeys(("sha256", "media_id", "phone_number_id", "path", "detail"))
        tx.execute(self._sql(_LOG), {**blank, **fields, "at": self._when(at), "action": action,
                                     "host": self.backend.host_id})

    def _item(self, row: Any) -> InboxItem:
        return InboxItem._make((*row[:6], self._time(row[6]), self._time(row[7]), *row[8:]))
