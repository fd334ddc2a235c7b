-- media-registry on PostgreSQL, migration "local cache and upload pacing".
--
-- Each process keeps the hits it served in memory (MEDIA_REGISTRY_LOCAL_CACHE_SIZE), kept true
-- by these triggers: every change that can make a served answer wrong notifies the channel
-- media_registry, in its own transaction, with the key it touched (never a value):
-- 's:<sha256>' when a content's media IDs change (a new one, superseded, invalidated, deleting,
-- dropped, expiry moved), 'p:<path>' when a path changes or goes ('*', everything, for a path too long
-- for a notification). PostgreSQL sends each distinct payload once per transaction.
CREATE FUNCTION media_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'paths' THEN
        PERFORM pg_notify('media_registry',
                          CASE WHEN octet_length(OLD.path) < 7000 THEN 'p:' || OLD.path ELSE '*' END);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('media_registry', 's:' || NEW.sha256);
    ELSE
        PERFORM pg_notify('media_registry', 's:' || OLD.sha256);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER media_changed AFTER INSERT OR UPDATE OF sha256, phone_number_id, state, expires_at OR DELETE ON media
    FOR EACH ROW EXECUTE FUNCTION media_registry_changed();
CREATE TRIGGER paths_changed AFTER UPDATE OR DELETE ON paths
    FOR EACH ROW EXECUTE FUNCTION media_registry_changed();

-- Upload pacing for the whole fleet (MEDIA_REGISTRY_UPLOADS_PER_SECOND per phone number): the
-- next free upload slot of each number on the server's clock, taken atomically by one upsert.
CREATE TABLE upload_pacing (
    phone_number_id text PRIMARY KEY,
    next_start      timestamptz NOT NULL
);
