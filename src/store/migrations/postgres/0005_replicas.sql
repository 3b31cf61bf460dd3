-- Several replicas write this database at once.
--
-- A deploy is the same deploy when it has the same app, namespace and time
-- and the same image or the same commit. One writer checks that before its
-- insert; two replicas storing the same deploy at the same moment meet
-- these indexes instead, and the second insert does nothing.
CREATE UNIQUE INDEX deploys_same_image ON deploys (app, namespace, time, image_sha) WHERE image_sha <> '';
CREATE UNIQUE INDEX deploys_same_commit ON deploys (app, namespace, time, commit_sha) WHERE commit_sha <> '';

-- The change feed: the effects of each commit that changed what the metric
-- view shows, in commit order (seq is taken under a transaction-level
-- advisory lock), read by every replica to keep its view current.
CREATE TABLE changes (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    effects  TEXT   NOT NULL
);
CREATE INDEX changes_by_at ON changes (at_ms);
-- The newest seq retention has deleted: a replica whose view is older
-- than that missed changes and must rebuild it (it reports so on /healthz).
CREATE TABLE changes_pruned (
    through  BIGINT NOT NULL
);
INSERT INTO changes_pruned (through) VALUES (0);
