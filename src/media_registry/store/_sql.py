"""The Store's SQL, written once for every backend: ``:named`` parameters, ``ON CONFLICT``,
``RETURNING``; ``{word}`` is the dialect's (:attr:`~media_registry.store.backend.Backend.dialect`)."""

_CURRENT_ID = ("SELECT m.media_id FROM media AS m WHERE m.sha256 = {sha} AND m.phone_number_id = :phone "
               "AND m.state = 'current' AND m.expires_at > :until")
LOOKUP = ("SELECT p.sha256, (" + _CURRENT_ID.replace("{sha}", "p.sha256") + "), p.seen_at FROM paths AS p "
          "WHERE p.path = :path AND p.size_bytes = :size AND p.mtime_ns = :mtime AND p.ctime_ns = :ctime "
          "AND p.inode = :inode AND p.device = :device{and_p_here}")
URL_HIT = ("SELECT m.media_id FROM url_sources AS u JOIN media AS m USING (sha256) WHERE u.url = :url "
           "AND u.checked_at > :after AND m.phone_number_id = :phone AND m.state = 'current' AND m.expires_at > :until")
CURRENT = _CURRENT_ID.replace("{sha}", ":sha256")
SERVE = ("SELECT c.deleted_at IS NOT NULL, (" + _CURRENT_ID.replace("{sha}", "c.sha256") + ") "
         "FROM contents AS c WHERE c.sha256 = :sha256")

NEW_CONTENT = ("INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at) "
               "VALUES (:sha256, :mime, :size, :at) ON CONFLICT (sha256) DO UPDATE SET deleted_at = NULL")
_FINGERPRINT = ("size_bytes = :size, mtime_ns = :mtime, ctime_ns = :ctime, inode = :inode, device = :device, "
                "seen_at = :at")
REMEMBER_PATH = (
    "INSERT INTO paths ({host_col}path, sha256, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at) "
    "VALUES ({host_val}:path, :sha256, :size, :mtime, :ctime, :inode, :device, :at) "
    "ON CONFLICT ({host_col}path) DO UPDATE SET sha256 = :sha256, " + _FINGERPRINT)
REFRESH_PATH = ("UPDATE paths SET " + _FINGERPRINT + " WHERE {here}path = :path AND sha256 = :sha256")
# Content sent as bytes, a stream or a URL (remember_content) since it was last deleted: an
# event says so, and such content never vanishes with a file of the same bytes.
SENT_DETAIL = "without a file: never purged as vanished"
_SENT_WITHOUT_A_FILE = """EXISTS (
    SELECT 1 FROM events AS s WHERE s.sha256 = :sha256 AND s.action = 'sent' AND NOT EXISTS (
        SELECT 1 FROM events AS d WHERE d.sha256 = :sha256 AND d.action = 'delete' AND d.at > s.at))"""
SENT = ("INSERT INTO events (at, action, sha256, detail{host_cols}) SELECT :at, 'sent', :sha256, :detail{host_vals} "
        "WHERE NOT " + _SENT_WITHOUT_A_FILE)
LOG = ("INSERT INTO events (at, action, sha256, media_id, phone_number_id, path, detail{host_cols}) "
       "VALUES (:at, :action, :sha256, :media_id, :phone_number_id, :path, :detail{host_vals})")
NO_FIELDS = dict.fromkeys(("sha256", "media_id", "phone_number_id", "path", "detail"))

TAKE_LEASE = """INSERT INTO leases (sha256, phone_number_id, owner, expires_at{host_cols})
    SELECT :sha256, :phone, :owner, :expires{host_vals}
    WHERE EXISTS (SELECT 1 FROM contents WHERE sha256 = :sha256 AND deleted_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = :sha256 AND phone_number_id = :phone
                      AND state = 'current' AND expires_at > :until)
    ON CONFLICT (sha256, phone_number_id) DO UPDATE SET
        owner = excluded.owner, expires_at = excluded.expires_at{host_set}
    RETURNING 1"""
_LEASE = "WHERE sha256 = :sha256 AND phone_number_id = :phone"
RENEW = f"UPDATE leases SET expires_at = :expires {_LEASE} AND owner = :owner"
RELEASE = f"DELETE FROM leases {_LEASE} AND owner = :owner"
LEASED = f"SELECT 1 FROM leases {_LEASE}"
GONE_CONTENT = ("INSERT INTO contents (sha256, mime_type, size_bytes, first_seen_at, deleted_at) "
                "VALUES (:sha256, :mime, :size, :at, :at) ON CONFLICT (sha256) DO NOTHING")
IS_DELETED = "SELECT deleted_at IS NOT NULL FROM contents WHERE sha256 = :sha256{for_update}"
SUPERSEDE = f"UPDATE media SET state = 'superseded' {_LEASE} AND state = 'current'"
NEW_MEDIA = ("INSERT INTO media (media_id, sha256, phone_number_id, state, uploaded_at, expires_at) "
             "VALUES (:media_id, :sha256, :phone, :state, :at, :expires)")

_MEDIA_COLUMNS = "m.media_id, m.sha256, m.phone_number_id, m.state, c.mime_type, m.uploaded_at, m.expires_at"
MEDIA = f"SELECT {_MEDIA_COLUMNS} FROM media AS m JOIN contents AS c USING (sha256) WHERE "
# "Expiring", shared by refresh and stats: a current ID at or before its number's cutoff
# (:cutoffs, a JSON object, for numbers with their own; :before, the widest, for the others).
_EXPIRING = "m.state = 'current' AND m.expires_at <= :before AND m.expires_at <= coalesce({cutoff}, :before)"
EXPIRING_MEDIA = (MEDIA + _EXPIRING + " AND c.deleted_at IS NULL"
                  " AND (EXISTS (SELECT 1 FROM paths AS p WHERE {p_here}p.sha256 = m.sha256)"
                  " OR NOT EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = m.sha256)) ORDER BY m.expires_at")
SOURCE_PATHS = ("SELECT path, size_bytes, mtime_ns, ctime_ns, inode, device, seen_at FROM paths "
                "WHERE {here}sha256 = :sha256 ORDER BY seen_at DESC")
SOURCED = ("SELECT c.sha256 FROM contents AS c WHERE c.deleted_at IS NULL "
           "AND EXISTS (SELECT 1 FROM paths AS p WHERE {p_here}p.sha256 = c.sha256) ORDER BY c.sha256")
LIVE_CONTENT = "SELECT 1 FROM contents WHERE sha256 = :sha256 AND deleted_at IS NULL{for_update}"
FORGET_PATH = "DELETE FROM paths WHERE {here}path = :path AND sha256 = :sha256"
STILL_SOURCED = ("SELECT EXISTS (SELECT 1 FROM paths AS p WHERE p.sha256 = :sha256 AND {live_path})"
                 " OR EXISTS (SELECT 1 FROM url_sources WHERE sha256 = :sha256) OR " + _SENT_WITHOUT_A_FILE)
MARK_DELETED = ("UPDATE contents SET deleted_at = :now WHERE sha256 = :sha256",
                "UPDATE media SET state = 'deleting' WHERE sha256 = :sha256",
                *(f"DELETE FROM {table} WHERE sha256 = :sha256" for table in ("paths", "url_sources", "leases")))
_ONE_OR_ALL = "(CAST(:sha256 AS TEXT) IS NULL OR {m}sha256 = :sha256)"
PENDING = (MEDIA + "m.state = 'deleting' AND " + _ONE_OR_ALL.replace("{m}", "m.")
           + " ORDER BY m.sha256, m.media_id")
# Each owed DELETE is claimed by one host at a time; rows another claimer holds are skipped.
CLAIM_DELETES = """UPDATE media SET claimed_by = :host, claimed_until = {claim_until}
    WHERE media_id IN (SELECT media_id FROM media WHERE state = 'deleting'
        AND """ + _ONE_OR_ALL.replace("{m}", "") + """
        AND (claimed_until IS NULL OR claimed_until < {db_now} OR claimed_by = :host){skip_locked})
    RETURNING media_id, sha256, phone_number_id, state,
        (SELECT c.mime_type FROM contents AS c WHERE c.sha256 = media.sha256), uploaded_at, expires_at"""
DROP_MEDIA = "DELETE FROM media WHERE media_id = :key RETURNING sha256, phone_number_id"
FORGET_URL = "DELETE FROM url_sources WHERE url = :key RETURNING sha256, NULL"
# A deleted content goes with its last media row; its events stay as history.
DROP_DELETED_CONTENT = ("DELETE FROM contents WHERE sha256 = :sha256 AND deleted_at IS NOT NULL "
                        "AND NOT EXISTS (SELECT 1 FROM media WHERE sha256 = :sha256)")
INVALIDATE = ("UPDATE media SET state = CASE WHEN state = 'deleting' THEN state ELSE 'invalidated' END "
              "WHERE media_id = :key RETURNING sha256, phone_number_id")


def _upsert(table: str, key: str, columns: str) -> str:
    names = columns.split(", ")
    return (f"INSERT INTO {table} ({key}, {columns}) VALUES (:{key}, {', '.join(':' + n for n in names)}) "
            f"ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in names))


URLS = "SELECT url, sha256, etag, last_modified, checked_at, refetchable FROM url_sources "
REMEMBER_URL = _upsert("url_sources", "url", "sha256, etag, last_modified, checked_at, refetchable")
INBOUND = _upsert("inbound", "media_id", "sha256, mime_type, size_bytes, path, downloaded_at")

RESOLVE = ("SELECT coalesce((SELECT sha256 FROM paths WHERE {here}path = :path),"
           " (SELECT sha256 FROM media WHERE media_id = :target LIMIT 1),"
           " (SELECT sha256 FROM contents WHERE sha256 = lower(:target)))")
PREFIX = "SELECT sha256 FROM contents WHERE sha256 >= :prefix AND sha256 < :end ORDER BY sha256 LIMIT :limit"
# Contents drive the plan, each looks up its current IDs (the one-current-ID index) and its
# paths: linear in the registry's size.
_LISTING = """SELECT c.sha256, c.mime_type, c.size_bytes, c.first_seen_at, c.deleted_at,
       m.phone_number_id, m.media_id, m.uploaded_at, m.expires_at, {path_list}
    FROM contents AS c {join} media AS m ON m.sha256 = c.sha256 AND m.state = 'current' {until}
    {one} ORDER BY m.phone_number_id, c.first_seen_at, c.sha256"""


def listing(*, one: bool, expiring: bool) -> str:
    """The listing of every content (or ``:sha256``'s), of current IDs expiring before ``:before`` only."""
    return _LISTING.replace("{join}", "JOIN" if expiring else "LEFT JOIN").replace(
        "{until}", "AND m.expires_at < :before" if expiring else "").replace("{one}", "WHERE c.sha256 = :sha256" * one)
EVENTS = ("SELECT at, action, media_id, phone_number_id, path, detail FROM events "
          "WHERE sha256 = :sha256 ORDER BY id")
COUNTS = """SELECT (SELECT count(*) FROM contents),
    (SELECT count(*) FROM contents WHERE deleted_at IS NOT NULL),
    (SELECT count(*) FROM paths WHERE {here}TRUE),
    (SELECT count(*) FROM media WHERE state = 'current' AND expires_at > :now),
    (SELECT count(*) FROM media AS m WHERE m.expires_at > :now AND """ + _EXPIRING + """),
    (SELECT count(*) FROM media WHERE expires_at <= :now),
    (SELECT count(*) FROM media WHERE state = 'superseded'),
    (SELECT count(*) FROM media WHERE state = 'deleting'),
    (SELECT count(*) FROM events WHERE action IN ('upload', 'refresh')),
    (SELECT count(*) FROM leases WHERE expires_at > :now)"""
BY_PHONE = ("SELECT phone_number_id, count(*) FILTER (WHERE state = 'current' AND expires_at > :now), "
            "count(*) FILTER (WHERE m.expires_at > :now AND " + _EXPIRING + "), "
            "count(*) FILTER (WHERE expires_at <= :now) FROM media AS m GROUP BY phone_number_id ORDER BY 1")
