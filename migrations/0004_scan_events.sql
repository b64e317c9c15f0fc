-- Live progress (GET /api/v1/scan-jobs/{scanId}/events). Every change a client can see bumps the
-- scan's `version` and notifies the API processes, whoever made it (worker stages, API cancel and
-- retry, the sweeper), so no writer has to remember to publish and none can forget.
ALTER TABLE scans ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- BEFORE UPDATE: the version moves only when status, stage, progress, error or attempts change
-- (timings-only writes are not news), and only here: a writer cannot set it by hand.
CREATE FUNCTION scans_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.status, NEW.stage, NEW.progress, NEW.error, NEW.attempts)
       IS DISTINCT FROM (OLD.status, OLD.stage, OLD.progress, OLD.error, OLD.attempts) THEN
        NEW.version := OLD.version + 1;
    ELSE
        NEW.version := OLD.version;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER scans_bump_version BEFORE UPDATE ON scans
    FOR EACH ROW EXECUTE FUNCTION scans_bump_version();

-- AFTER UPDATE: a small payload (id and version, never user data), delivered when the writer
-- commits. Listeners read the row itself, so the payload stays far below NOTIFY's 8000-byte limit.
CREATE FUNCTION scans_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pagelens_scan_events', json_build_object('id', NEW.id, 'version', NEW.version)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER scans_notify_change AFTER UPDATE ON scans
    FOR EACH ROW WHEN (NEW.version <> OLD.version) EXECUTE FUNCTION scans_notify_change();
