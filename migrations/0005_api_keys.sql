-- API keys as data, and a tenant for every scan.
--
-- A key is `pl_<random>`; only the SHA-256 of the whole key is stored, with a short public prefix
-- to tell keys apart in lists. Rows are never deleted: a revoked key keeps its row (revoked_at), so
-- the audit trail and the scans it made still name it, and "no key has ever existed" (the open,
-- single-tenant mode) cannot come back by revoking keys.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    tenant        text NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    role          text NOT NULL CHECK (role IN ('admin', 'member')),
    prefix        text NOT NULL,
    secret_sha256 bytea NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Every API process caches keys for a few seconds; a change tells them all to drop the cache at
-- once (the payload is the key id, never the secret or its hash).
CREATE FUNCTION api_keys_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pagelens_api_keys', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_insert AFTER INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify_change();
CREATE TRIGGER api_keys_notify_revoke AFTER UPDATE ON api_keys
    FOR EACH ROW WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.role <> OLD.role
                       OR NEW.tenant <> OLD.tenant)
    EXECUTE FUNCTION api_keys_notify_change();

-- Whose a scan is. Scans made before keys were data belong to the one tenant there was.
ALTER TABLE scans ADD COLUMN tenant text NOT NULL DEFAULT 'default';

-- An Idempotency-Key is unique per tenant: two tenants may pick the same one.
DROP INDEX scans_idempotency_key;
CREATE UNIQUE INDEX scans_idempotency_key ON scans (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- A tenant's list, newest first, with keyset pagination on (created_at, id).
CREATE INDEX scans_tenant_created ON scans (tenant, created_at DESC, id DESC);
-- The cap on open scans counts per tenant now.
DROP INDEX scans_open_by_key;
CREATE INDEX scans_open_by_tenant ON scans (tenant) WHERE status IN ('QUEUED', 'RUNNING', 'TEASER_READY');

-- Change events name the scan's tenant, so the API delivers them only to that tenant's streams.
CREATE OR REPLACE FUNCTION scans_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pagelens_scan_events',
                      json_build_object('id', NEW.id, 'version', NEW.version, 'tenant', NEW.tenant)::text);
    RETURN NULL;
END
$$;
