-- Which API key created a scan, as a short digest of the key (never the key itself), so the API can
-- cap how many scans one key has open at a time. NULL when the API runs without keys.
ALTER TABLE scans ADD COLUMN api_key_id text;
-- The cap counts a key's open scans on every create: only open rows are indexed.
CREATE INDEX scans_open_by_key ON scans (api_key_id)
    WHERE api_key_id IS NOT NULL AND status IN ('QUEUED', 'RUNNING', 'TEASER_READY');
