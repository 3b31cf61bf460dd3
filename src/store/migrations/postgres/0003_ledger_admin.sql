-- The ledger as operators read and act on it (admin API, deliveries page);
-- see the SQLite migration of the same number for the meaning of each column.
ALTER TABLE deliveries ADD COLUMN headers TEXT;
ALTER TABLE deliveries ADD COLUMN instance TEXT;
ALTER TABLE deliveries ADD COLUMN apps TEXT NOT NULL DEFAULT '[]';
ALTER TABLE deliveries ADD COLUMN replay_of BIGINT;
ALTER TABLE deliveries ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
ALTER TABLE deliveries ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN next_attempt_ms BIGINT;
ALTER TABLE deliveries ADD COLUMN error TEXT;
CREATE INDEX deliveries_pending ON deliveries (next_attempt_ms) WHERE state IN ('queued', 'processing', 'errored');
CREATE INDEX deliveries_by_source ON deliveries (source, received_at_ms);
CREATE INDEX deliveries_errors ON deliveries (source, seq)
    WHERE outcome IN ('rejected', 'invalid') OR state = 'errored';
CREATE INDEX deliveries_by_replay ON deliveries (replay_of) WHERE replay_of IS NOT NULL;

-- One row, rewritten by every readiness probe: a real commit, so that a
-- database that cannot take writes fails /readyz as it fails deliveries.
CREATE TABLE probe (
    id  BIGINT PRIMARY KEY,
    at  BIGINT NOT NULL
);
