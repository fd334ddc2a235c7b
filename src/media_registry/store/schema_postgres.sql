-- media-registry schema for PostgreSQL, migration "create registry": the same tables and views
-- as the SQLite schema (schema.sql), in PostgreSQL's own types: times are timestamptz (UTC),
-- sizes and stat fields bigint. Later changes are further named migrations in store/migrations.py;
-- the `migrations` table records which ones this database has had, and when.

CREATE TABLE migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per distinct content (the bytes), keyed by their sha256 in hex.
CREATE TABLE contents (
    sha256        text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    mime_type     text NOT NULL,
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    first_seen_at timestamptz NOT NULL,
    -- Set by delete: refresh never uploads this content again; an explicit upload clears it.
    deleted_at    timestamptz
);

-- Media IDs issued by the Graph API, per content and phone number.
-- state: 'current' (served while expires_at is far enough away),
--        'superseded' (replaced by a refresh, kept until it expires, never served),
--        'deleting' (remote DELETE still owed; purge retries it).
-- claimed_by/claimed_until: the host sending an owed DELETE right now (taken with
-- FOR UPDATE SKIP LOCKED, so each DELETE is sent once fleet-wide).
CREATE TABLE media (
    media_id        text PRIMARY KEY,
    sha256          text NOT NULL REFERENCES contents (sha256),
    phone_number_id text NOT NULL,
    state           text NOT NULL DEFAULT 'current'
                    CHECK (state IN ('current', 'superseded', 'deleting')),
    uploaded_at     timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    claimed_by      text,
    claimed_until   timestamptz
);
CREATE INDEX media_by_content ON media (sha256, phone_number_id, state, expires_at);
CREATE INDEX media_by_expiry ON media (state, expires_at);
-- The registry's central rule, enforced by the data: at most one current ID per content and
-- phone number, however many hosts write at once.
CREATE UNIQUE INDEX media_one_current ON media (sha256, phone_number_id) WHERE state = 'current';

-- The hosts of the fleet (MEDIA_REGISTRY_HOST_ID) and when each was last heard from; purge
-- drops a host unseen for MEDIA_REGISTRY_HOST_RETENTION, and its paths with it.
CREATE TABLE hosts (
    host_id       text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);

-- Source files pointing at contents, per host: a path names a file on one host only. The
-- fingerprint (size, mtime, ctime, inode, device) lets a cache hit skip hashing: one stat
-- and one indexed query. seen_at is when it was recorded (the racily-clean rule needs it).
CREATE TABLE paths (
    host_id    text NOT NULL REFERENCES hosts (host_id) ON DELETE CASCADE,
    path       text NOT NULL,
    sha256     text NOT NULL REFERENCES contents (sha256),
    size_bytes bigint NOT NULL,
    mtime_ns   bigint NOT NULL,
    ctime_ns   bigint NOT NULL,
    inode      bigint NOT NULL,
    device     bigint NOT NULL,
    seen_at    timestamptz NOT NULL,
    PRIMARY KEY (host_id, path)
);
CREATE INDEX paths_by_content ON paths (sha256);

-- Single flight: the uploader of (sha256, phone_number_id) holds a session-level advisory
-- lock, which PostgreSQL frees the moment its session ends (a killed process, a lost host).
-- This row names the holder for people and lets a delete revoke the upload in flight.
CREATE TABLE leases (
    sha256          text NOT NULL,
    phone_number_id text NOT NULL,
    owner           text NOT NULL,
    host_id         text NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (sha256, phone_number_id)
);

-- What happened, for people reading the registry: upload, refresh, delete, purge, download.
CREATE TABLE events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL,
    action          text NOT NULL,
    sha256          text,
    media_id        text,
    phone_number_id text,
    path            text,
    detail          text,
    host_id         text
);
CREATE INDEX events_by_content ON events (sha256);

-- Media customers sent, downloaded and verified.
CREATE TABLE inbound (
    media_id      text PRIMARY KEY,
    sha256        text NOT NULL,
    mime_type     text NOT NULL,
    size_bytes    bigint NOT NULL,
    path          text NOT NULL,
    downloaded_at timestamptz NOT NULL
);
CREATE INDEX inbound_by_content ON inbound (sha256);

-- Inbound media that webhooks announced, kept until each is archived (or known lost).
-- state: 'pending' (not tried yet), 'failed' (the last try failed: retried after
-- next_attempt_at), 'archived' (stored at location), 'lost' (Meta no longer knows the ID:
-- reason says why). claimed_by/claimed_until: the worker archiving it now.
CREATE TABLE IF NOT EXISTS inbound_items (
    media_id        text PRIMARY KEY,
    phone_number_id text,
    mime_type       text,
    sha256          text,
    url             text,
    message_id      text,
    received_at     timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'failed', 'archived', 'lost')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    reason          text,
    location        text,
    claimed_by      text,
    claimed_until   timestamptz,
    archived_at     timestamptz
);
CREATE INDEX IF NOT EXISTS inbound_items_due ON inbound_items (state, next_attempt_at);

-- Messages sent with a media ID (send_with_media), so that a failed status can name the ID.
CREATE TABLE IF NOT EXISTS sent_messages (
    message_id      text PRIMARY KEY,
    media_id        text NOT NULL,
    phone_number_id text NOT NULL,
    sent_at         timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_messages_by_time ON sent_messages (sent_at);
-- (the end of the inbox's tables)

-- Template header handles (Meta's Resumable Upload API), per content and app. Meta documents no
-- lifetime: one is served until expires_at (MEDIA_REGISTRY_HANDLE_TTL after it was made) or
-- until invalidated (both NULL then). claimed_by/claimed_until: who is making it now; session:
-- its upload session, which a later claimer resumes. A file's first upload is claimed under
-- 'file:' and its fingerprint's digest (its sha256 is computed while it is sent).
CREATE TABLE IF NOT EXISTS header_handles (
    sha256        text NOT NULL,
    app_id        text NOT NULL,
    handle        text,
    created_at    timestamptz,
    expires_at    timestamptz,
    claimed_by    text,
    claimed_until timestamptz,
    size_bytes    bigint,
    session       text,
    PRIMARY KEY (sha256, app_id)
);
CREATE INDEX IF NOT EXISTS header_handles_by_handle ON header_handles (handle);
-- (the end of the header handles' table)

-- Media IDs that are current and not yet expired, with their content.
CREATE VIEW live_media AS
SELECT m.media_id, m.phone_number_id, m.sha256, c.mime_type, c.size_bytes,
       m.uploaded_at, m.expires_at
FROM media AS m JOIN contents AS c USING (sha256)
WHERE m.state = 'current' AND m.expires_at > now();

-- Live media IDs that expire within three days (the default refresh window).
CREATE VIEW expiring_soon AS
SELECT * FROM live_media
WHERE expires_at <= now() + interval '3 days'
ORDER BY expires_at;
