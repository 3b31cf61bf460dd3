-- Pull mode: what each poller stream last saw (validators and watermark),
-- written in the same transaction as the ledger rows of the facts the
-- poll produced, so that a restart resumes where the last committed poll
-- ended.
CREATE TABLE poll_state (
    stream        TEXT    PRIMARY KEY,
    etag          TEXT,
    last_modified TEXT,
    watermark     TEXT,
    updated_ms    INTEGER NOT NULL
) WITHOUT ROWID;
