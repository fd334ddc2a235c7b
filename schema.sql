-- media-registry schema, as the named migrations in src/media_registry/store/migrations.py
-- leave it (their names and times are in the `migrations` table; PRAGMA user_version counts
-- them). A new registry is made from this file; an older one is upgraded step by step.
-- Times are UTC ISO-8601 text ("2026-11-25T06:18:52Z"), so they sort and compare as text.

-- Which named schema changes this registry has had, and when.
CREATE TABLE IF NOT EXISTS migrations (
    name       TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL
);

-- One row per distinct content (the bytes), keyed by their sha256 in hex.
CREATE TABLE IF NOT EXISTS contents (
    sha256        TEXT PRIMARY KEY,
    mime_type     TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    first_seen_at TEXT NOT NULL,
    -- Set by delete: refresh never uploads this content again; an explicit upload clears it.
    deleted_at    TEXT
);

-- Media IDs issued by the Graph API, per content and phone number.
-- state: 'current' (served while expires_at is far enough away),
--        'superseded' (replaced by a refresh, kept until it expires, never served),
--        'deleting' (remote DELETE still owed; purge retries it),
--        'invalidated' (Meta refused it at send time; never served, dropped once expired).
-- claimed_by/claimed_until: the host sending an owed DELETE now (each is sent once).
CREATE TABLE IF NOT EXISTS media (
    media_id        TEXT PRIMARY KEY,
    sha256          TEXT NOT NULL REFERENCES contents (sha256),
    phone_number_id TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'current'
                    CHECK (state IN ('current', 'superseded', 'deleting', 'invalidated')),
    uploaded_at     TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    claimed_by      TEXT,
    claimed_until   TEXT
);
CREATE INDEX IF NOT EXISTS media_by_content
    ON media (sha256, phone_number_id, state, expires_at);
CREATE INDEX IF NOT EXISTS media_by_expiry ON media (state, expires_at);
-- The registry's central rule, enforced by the data: at most one current ID per content and
-- phone number, whatever the writers' timing.
CREATE UNIQUE INDEX IF NOT EXISTS media_one_current
    ON media (sha256, phone_number_id) WHERE state = 'current';

-- Source files pointing at contents. The fingerprint (size, mtime, ctime, inode, device) lets
-- a cache hit skip hashing: one stat and one indexed query. seen_at is when it was recorded:
-- a fingerprint whose mtime or ctime falls in or after that second is "racily clean" and
-- not trusted (the bytes are hashed again).
CREATE TABLE IF NOT EXISTS paths (
    path       TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL REFERENCES contents (sha256),
    size_bytes INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    inode      INTEGER NOT NULL,
    seen_at    TEXT NOT NULL,
    ctime_ns   INTEGER NOT NULL DEFAULT 0,
    device     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS paths_by_content ON paths (sha256);

-- URL sources: what a URL served last, for conditional GETs. ``url`` is the key form: no
-- user:password, fragment or ignored query parameters (signatures are never stored);
-- refetchable is 0 when something was left out, so refresh cannot fetch it again.
CREATE TABLE IF NOT EXISTS url_sources (
    url           TEXT PRIMARY KEY,
    sha256        TEXT NOT NULL REFERENCES contents (sha256),
    etag          TEXT,
    last_modified TEXT,
    checked_at    TEXT NOT NULL,
    refetchable   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS url_sources_by_content ON url_sources (sha256);

-- Single flight: whoever holds the lease for (sha256, phone_number_id) uploads; others wait.
-- owner is "host:pid:thread:nonce"; a lease past expires_at, or whose process is gone, is free.
-- A delete removes the content's leases: the upload in flight then records nothing current.
CREATE TABLE IF NOT EXISTS leases (
    sha256          TEXT NOT NULL,
    phone_number_id TEXT NOT NULL,
    owner           TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    PRIMARY KEY (sha256, phone_number_id)
);

-- What happened, for people reading the registry: upload, refresh, delete, purge, download.
CREATE TABLE IF NOT EXISTS events (
    id              INTEGER PRIMARY KEY,
    at              TEXT NOT NULL,
    action          TEXT NOT NULL,
    sha256          TEXT,
    media_id        TEXT,
    phone_number_id TEXT,
    path            TEXT,
    detail          TEXT
);
CREATE INDEX IF NOT EXISTS events_by_content ON events (sha256);

-- Media customers sent, downloaded and verified.
CREATE TABLE IF NOT EXISTS inbound (
    media_id        TEXT PRIMARY KEY,
    sha256          TEXT NOT NULL,
    mime_type       TEXT NOT NULL,
    size_bytes      INTEGER NOT NULL,
    path            TEXT NOT NULL,
    downloaded_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inbound_by_content ON inbound (sha256);

-- Inbound media that webhooks announced, kept until each is archived (or known lost).
-- state: 'pending' (not tried yet), 'failed' (the last try failed: retried after
-- next_attempt_at), 'archived' (stored at location), 'lost' (Meta no longer knows the ID:
-- reason says why). claimed_by/claimed_until: the worker archiving it now.
CREATE TABLE IF NOT EXISTS inbound_items (
    media_id        TEXT PRIMARY KEY,
    phone_number_id TEXT,
    mime_type       TEXT,
    sha256          TEXT,
    url             TEXT,
    message_id      TEXT,
    received_at     TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'failed', 'archived', 'lost')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    reason          TEXT,
    location        TEXT,
    claimed_by      TEXT,
    claimed_until   TEXT,
    archived_at     TEXT
);
CREATE INDEX IF NOT EXISTS inbound_items_due ON inbound_items (state, next_attempt_at);

-- Messages sent with a media ID (send_with_media), so that a failed status can name the ID.
CREATE TABLE IF NOT EXISTS sent_messages (
    message_id      TEXT PRIMARY KEY,
    media_id        TEXT NOT NULL,
    phone_number_id TEXT NOT NULL,
    sent_at         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_messages_by_time ON sent_messages (sent_at);
-- (the end of the inbox's tables)

-- Template header handles (Meta's Resumable Upload API), per content and app. Meta documents no
-- lifetime: one is served until expires_at (MEDIA_REGISTRY_HANDLE_TTL after it was made) or
-- until invalidated (both NULL then). claimed_by/claimed_until: who is making it now; session:
-- its upload session, which a later claimer resumes. A file's first upload is claimed under
-- 'file:' and its fingerprint's digest (its sha256 is computed while it is sent).
CREATE TABLE IF NOT EXISTS header_handles (
    sha256        TEXT NOT NULL,
    app_id        TEXT NOT NULL,
    handle        TEXT,
    created_at    TEXT,
    expires_at    TEXT,
    claimed_by    TEXT,
    claimed_until TEXT,
    size_bytes    INTEGER,
    session       TEXT,
    PRIMARY KEY (sha256, app_id)
);
CREATE INDEX IF NOT EXISTS header_handles_by_handle ON header_handles (handle);
-- (the end of the header handles' table)

-- Media IDs that are current and not yet expired, with their content.
CREATE VIEW IF NOT EXISTS live_media AS
SELECT m.media_id, m.phone_number_id, m.sha256, c.mime_type, c.size_bytes,
       m.uploaded_at, m.expires_at
FROM media AS m JOIN contents AS c USING (sha256)
WHERE m.state = 'current' AND m.expires_at > strftime('%Y-%m-%dT%H:%M:%SZ', 'now');

-- Live media IDs that expire within three days (the default refresh window).
CREATE VIEW IF NOT EXISTS expiring_soon AS
SELECT * FROM live_media
WHERE expires_at <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '+3 days')
ORDER BY expires_at;
