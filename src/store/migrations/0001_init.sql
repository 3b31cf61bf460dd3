-- Delivery ledger: one row per delivery, whatever its outcome.
CREATE TABLE deliveries (
    seq            INTEGER PRIMARY KEY,
    delivery_id    TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    event          TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    reason         TEXT,
    detail         TEXT    NOT NULL,
    event_keys     TEXT    NOT NULL DEFAULT '[]',
    superseded_by  TEXT,
    authenticated  INTEGER NOT NULL,
    body           BLOB
);
CREATE INDEX deliveries_by_delivery_id ON deliveries (source, delivery_id);
CREATE INDEX deliveries_by_received_at ON deliveries (received_at_ms);
CREATE INDEX deliveries_unauthenticated ON deliveries (seq) WHERE authenticated = 0;

-- Commits, one per app + commit + image digest ('' when unknown).
CREATE TABLE commits (
    app          TEXT    NOT NULL,
    commit_sha   TEXT    NOT NULL,
    image_sha    TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    commit_link  TEXT    NOT NULL,
    time         INTEGER NOT NULL,
    delivery_id  TEXT    NOT NULL,
    PRIMARY KEY (app, commit_sha, image_sha)
) WITHOUT ROWID;
CREATE INDEX commits_by_image ON commits (app, image_sha);
CREATE INDEX commits_by_time ON commits (time);

-- Deployments, one per app + namespace + image digest + time. The key also
-- serves the lookup of an image's deploys (app, image_sha).
CREATE TABLE deploys (
    app          TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    image_sha    TEXT    NOT NULL,
    time         INTEGER NOT NULL,
    commit_sha   TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    PRIMARY KEY (app, image_sha, namespace, time)
) WITHOUT ROWID;
CREATE INDEX deploys_by_commit ON deploys (app, commit_sha, time);
CREATE INDEX deploys_by_time ON deploys (time);

-- Failures: the newest created and resolved times reported for each.
CREATE TABLE failures (
    app                TEXT NOT NULL,
    issue_number       TEXT NOT NULL,
    created            INTEGER,
    created_delivery   TEXT,
    resolved           INTEGER,
    resolved_delivery  TEXT,
    PRIMARY KEY (app, issue_number)
) WITHOUT ROWID;

-- Histogram observations, once per commit (lead time) or failure (time to
-- restore), so that the histograms can be rebuilt exactly at start-up.
CREATE TABLE observations (
    kind     TEXT    NOT NULL,
    app      TEXT    NOT NULL,
    subject  TEXT    NOT NULL,
    seconds  INTEGER NOT NULL,
    PRIMARY KEY (kind, app, subject)
) WITHOUT ROWID;
