-- Pull mode: what each poller stream last saw (validators and watermark),
-- written in the same transaction as the ledger rows of the facts the poll
-- produced.
CREATE TABLE poll_state (
    stream        TEXT    PRIMARY KEY,
    etag          TEXT,
    last_modified TEXT,
    watermark     TEXT,
    updated_ms    BIGINT  NOT NULL
);
