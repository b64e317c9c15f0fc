-- The scans table is the source of truth for every scan: the API commits a row before it enqueues
-- anything, and workers claim rows with a lease and an attempt fence.
CREATE TABLE scans (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('url', 'document')),
    url              text,
    title            text,
    document         text,
    options          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'QUEUED'
                     CHECK (status IN ('QUEUED', 'RUNNING', 'TEASER_READY', 'FULL_READY', 'FAILED', 'CANCELLED')),
    stage            text CHECK (stage IN ('CRAWL', 'PARSE', 'ANALYZE', 'GENERATE')),
    progress         smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    error            jsonb,
    trace_id         text,
    attempts         integer NOT NULL DEFAULT 0,
    lease_until      timestamptz,
    idempotency_key  text,
    request_hash     text,
    teaser           jsonb,
    report           jsonb,
    timings          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CHECK ((kind = 'url') = (url IS NOT NULL))
);

CREATE UNIQUE INDEX scans_idempotency_key ON scans (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Listing newest first, optionally by status, with keyset pagination on (created_at, id).
CREATE INDEX scans_created ON scans (created_at DESC, id DESC);
CREATE INDEX scans_status_created ON scans (status, created_at DESC, id DESC);
