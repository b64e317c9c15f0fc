-- A replayed scan (POST .../retry) keeps its attempt count, which fences stale workers, and gets a
-- fresh retry budget counted from here.
ALTER TABLE scans ADD COLUMN retry_base integer NOT NULL DEFAULT 0;
