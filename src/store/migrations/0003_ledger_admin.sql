-- The ledger as operators read and act on it (admin API, deliveries page):
-- the headers a delivery came with (credential values replaced by
-- "[redacted]"), the named instance it reached, the applications its events
-- name (a JSON array, for filtering), and the replay link and processing
-- state of redeliveries. `state` is 'done' for every row recorded in its
-- request; a redelivery is 'queued', then 'processing', then 'done' or
-- 'errored' (retried at next_attempt_ms while attempts remain).
ALTER TABLE deliveries ADD COLUMN headers TEXT;
ALTER TABLE deliveries ADD COLUMN instance TEXT;
ALTER TABLE deliveries ADD COLUMN apps TEXT NOT NULL DEFAULT '[]';
ALTER TABLE deliveries ADD COLUMN replay_of INTEGER;
ALTER TABLE deliveries ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
ALTER TABLE deliveries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN next_attempt_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN error TEXT;
CREATE INDEX deliveries_pending ON deliveries (next_attempt_ms) WHERE state IN ('queued', 'processing', 'errored');
CREATE INDEX deliveries_by_source ON deliveries (source, received_at_ms);
CREATE INDEX deliveries_errors ON deliveries (source, seq)
    WHERE outcome IN ('rejected', 'invalid') OR state = 'errored';

-- One row, rewritten by every readiness probe: a real commit, so that a full
-- disk fails /readyz as it fails deliveries.
CREATE TABLE probe (
    id  INTEGER PRIMARY KEY,
    at  INTEGER NOT NULL
);
