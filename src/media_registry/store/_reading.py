"""The shared rules of sources beyond paths, inbound media and reading for people."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from datetime import datetime

from ._port import _CURRENT, _NEW_CONTENT, _URLS, SENT_DETAIL, SENT_WITHOUT_A_FILE, Port, Tx
from .rows import ContentRow, Cutoffs, EventRow, InboundRow, PhoneStats, StoreStats, UrlSource


class Reading(Port):
    """Sources beyond paths, inbound media and reading for people, over the port."""

    # -- sources beyond paths ----------------------------------------------------------------

    def remember_content(self, sha256: str, mime_type: str, size_bytes: int, recorded_at: datetime) -> None:
        """See :meth:`Store.remember_content`; logged once per delete, as never vanishing."""
        params = self._scope(sha256=sha256, mime=mime_type, size=size_bytes, at=self._when(recorded_at),
                             detail=SENT_DETAIL)

        def work(tx: Tx) -> None:
            tx.execute(_NEW_CONTENT, params)
            tx.execute(self._sql("INSERT INTO events (at, action, sha256, detail{host_cols}) "
                                 "SELECT :at, 'sent', :sha256, :detail{host_vals} WHERE NOT ") + SENT_WITHOUT_A_FILE,
                       params)

        self._write(work)

    def current_media_id(self, sha256: str, phone_number_id: str, valid_until: datetime) -> str | None:
        """See :meth:`Store.current_media_id`."""
        row = self._read_one(_CURRENT, {"sha256": sha256, "phone": phone_number_id,
                                        "until": self._when(valid_until)})
        return None if row is None else str(row[0])

    @functools.cached_property
    def _url_hit(self) -> str:
        return self._positional(
            "SELECT m.media_id FROM url_sources AS u JOIN media AS m USING (sha256) "
            "WHERE u.url = :url AND u.checked_at > :after AND m.phone_number_id = :phone "
            "AND m.state = 'current' AND m.expires_at > :until")

    def url_hit(self, url: str, phone_number_id: str, valid_until: datetime,
                checked_after: datetime) -> str | None:
        """See :meth:`Store.url_hit`: one indexed read, every URL cache hit."""
        row = self._read_one(self._url_hit, (url, self._when(checked_after), phone_number_id,
                                             self._when(valid_until)))
        return None if row is None else str(row[0])

    def url_source(self, url: str) -> UrlSource | None:
        """See :meth:`Store.url_source`."""
        row = self._read_one(_URLS + "WHERE url = :url", {"url": url})
        return None if row is None else self._url_source(row)

    def url_sources(self, sha256: str) -> list[UrlSource]:
        """See :meth:`Store.url_sources`."""
        return [self._url_source(row) for row in self._read(
            _URLS + "WHERE sha256 = :sha256 ORDER BY checked_at DESC", {"sha256": sha256})]

    def remember_url(self, source: UrlSource) -> None:
        """See :meth:`Store.remember_url`."""
        self._write(lambda tx: tx.execute(
            """INSERT INTO url_sources (url, sha256, etag, last_modified, checked_at, refetchable)
               VALUES (:url, :sha256, :etag, :last_modified, :checked_at, :refetchable)
               ON CONFLICT (url) DO UPDATE SET sha256 = excluded.sha256, etag = excluded.etag,
                   last_modified = excluded.last_modified, checked_at = excluded.checked_at,
                   refetchable = excluded.refetchable""",
            {**source._asdict(), "checked_at": self._when(source.checked_at)}))

    def touch_url(self, url: str, checked_at: datetime) -> None:
        """See :meth:`Store.touch_url`."""
        self._write(lambda tx: tx.execute("UPDATE url_sources SET checked_at = :at WHERE url = :url",
                                          {"at": self._when(checked_at), "url": url}))

    def forget_url(self, url: str, now: datetime, reason: str) -> None:
        """See :meth:`Store.forget_url`."""

        def work(tx: Tx) -> None:
            row = tx.execute("DELETE FROM url_sources WHERE url = :url RETURNING sha256", {"url": url}).fetchone()
            if row is not None:
                self._log(tx, now, "forget url", sha256=row[0], path=url, detail=reason)

        self._write(work)

    def invalidate_media(self, media_id: str, now: datetime, reason: str) -> bool:
        """See :meth:`Store.invalidate_media`."""

        def work(tx: Tx) -> bool:
            row = tx.execute("UPDATE media SET state = CASE WHEN state = 'deleting' THEN state "
                             "ELSE 'invalidated' END WHERE media_id = :media_id RETURNING sha256, phone_number_id",
                             {"media_id": media_id}).fetchone()
            if row is None:
                return False
            self._log(tx, now, "invalidate", sha256=row[0], media_id=media_id, phone_number_id=row[1],
                      detail=reason)
            return True

        return self._write(work)

    # -- inbound media ----------------------------------------------------------------------

    def record_inbound(self, row: InboundRow, detail: str | None = None) -> None:
        """See :meth:`Store.record_inbound`."""

        def work(tx: Tx) -> None:
            tx.execute(
                """INSERT INTO inbound (media_id, sha256, mime_type, size_bytes, path, downloaded_at)
                   VALUES (:media_id, :sha256, :mime_type, :size_bytes, :path, :downloaded_at)
                   ON CONFLICT (media_id) DO UPDATE SET sha256 = excluded.sha256,
                       mime_type = excluded.mime_type, size_bytes = excluded.size_bytes,
                       path = excluded.path, downloaded_at = excluded.downloaded_at""",
                {**row._asdict(), "downloaded_at": self._when(row.downloaded_at)})
            self._log(tx, row.downloaded_at, "download", sha256=row.sha256, media_id=row.media_id,
                      path=row.path, detail=detail)

        self._write(work)

    # -- reading for people ------------------------------------------------------------------

    def resolve(self, target: str) -> str | None:
        """See :meth:`Store.resolve`."""
        row = self._read_one(self._sql(
            "SELECT coalesce((SELECT sha256 FROM paths WHERE {here}path = :path),"
            " (SELECT sha256 FROM media WHERE media_id = :target LIMIT 1),"
            " (SELECT sha256 FROM contents WHERE sha256 = lower(:target)))"),
            self._scope(path=os.path.abspath(target), target=target))
        return None if row is None or row[0] is None else str(row[0])

    def sha256s_starting_with(self, prefix: str, limit: int) -> list[str]:
        """See :meth:`Store.sha256s_starting_with`; "g" sorts after every hex digit."""
        return [row[0] for row in self._read(
            "SELECT sha256 FROM contents WHERE sha256 >= :prefix AND sha256 < :end ORDER BY sha256 LIMIT :limit",
            {"prefix": prefix, "end": prefix + "g", "limit": limit})]

    def content_rows(
        self, *, sha256: str | None = None, expiring_before: datetime | None = None
    ) -> Iterator[ContentRow]:
        """See :meth:`Store.content_rows`: contents drive the plan, each looks up its current
        IDs (the one-current-ID index) and its paths: linear in the registry's size."""
        sql = self.listing_sql(one=sha256 is not None, expiring=expiring_before is not None)
        t = self._time
        params = self._scope(sha256=sha256, before=None if expiring_before is None else self._when(expiring_before))
        for row in self._stream(sql, params):
            yield ContentRow(row[0], row[1], row[2], t(row[3]), row[4] and t(row[4]), row[5], row[6],
                             row[7] and t(row[7]), row[8] and t(row[8]), self._paths(row[9]))

    @classmethod
    def listing_sql(cls, *, one: bool = False, expiring: bool = False) -> str:
        """The statement of :meth:`content_rows`: of one content (``:sha256``), of current
        IDs expiring before ``:before`` only."""
        return cls._sql(
            """SELECT c.sha256, c.mime_type, c.size_bytes, c.first_seen_at, c.deleted_at,
                      m.phone_number_id, m.media_id, m.uploaded_at, m.expires_at, {path_list}
               FROM contents AS c {join} media AS m ON m.sha256 = c.sha256 AND m.state = 'current' {until}
               {one} ORDER BY m.phone_number_id, c.first_seen_at, c.sha256""".replace(
                "{join}", "JOIN" if expiring else "LEFT JOIN").replace(
                "{until}", "AND m.expires_at < :before" if expiring else "").replace(
                "{one}", "WHERE c.sha256 = :sha256" if one else ""))

    def events(self, sha256: str) -> list[EventRow]:
        """See :meth:`Store.events`."""
        return [EventRow(self._time(row[0]), *row[1:]) for row in self._read(
            "SELECT at, action, media_id, phone_number_id, path, detail FROM events "
            "WHERE sha256 = :sha256 ORDER BY id", {"sha256": sha256})]

    def stats(self, now: datetime, expiring_before: Cutoffs) -> StoreStats:
        """See :meth:`Store.stats`. ``leases`` counts the uploads in flight: unexpired leases."""
        params = self._scope(now=self._when(now), **self._cutoffs(expiring_before))
        counts = self._read(self._sql(
            """SELECT
                 (SELECT count(*) FROM contents),
                 (SELECT count(*) FROM contents WHERE deleted_at IS NOT NULL),
                 (SELECT count(*) FROM paths WHERE {here}TRUE),
                 (SELECT count(*) FROM media WHERE state = 'current' AND expires_at > :now),
                 (SELECT count(*) FROM media AS m WHERE m.expires_at > :now AND {expiring}),
                 (SELECT count(*) FROM media WHERE expires_at <= :now),
                 (SELECT count(*) FROM media WHERE state = 'superseded'),
                 (SELECT count(*) FROM media WHERE state = 'deleting'),
                 (SELECT count(*) FROM events WHERE action IN ('upload', 'refresh')),
                 (SELECT count(*) FROM leases WHERE expires_at > :now)"""), params)[0]
        phones = self._read(self._sql(
            "SELECT phone_number_id, count(*) FILTER (WHERE state = 'current' AND expires_at > :now), "
            "count(*) FILTER (WHERE m.expires_at > :now AND {expiring}), "
            "count(*) FILTER (WHERE expires_at <= :now) FROM media AS m GROUP BY phone_number_id ORDER BY 1"),
            params)
        by_phone = {phone: PhoneStats(*numbers) for phone, *numbers in phones}
        return StoreStats._make((*counts, by_phone, self._facts()))
