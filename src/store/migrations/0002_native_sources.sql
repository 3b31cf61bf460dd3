-- Deploys reported by forges name a commit and often no image: image_sha is
-- '' until a commit→digest link resolves it. The identity becomes
-- app + image + namespace + time + commit. A second report of the same deploy
-- (same time, and the same image or the same commit) is found through the key
-- (by image) or deploys_by_commit; both lead with a column that is nearly
-- unique, so the probe stays one seek however many deploys share a second.
CREATE TABLE deploys_v2 (
    app          TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    time         INTEGER NOT NULL,
    image_sha    TEXT    NOT NULL,
    commit_sha   TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    PRIMARY KEY (app, image_sha, namespace, time, commit_sha)
) WITHOUT ROWID;
INSERT INTO deploys_v2 (app, namespace, time, image_sha, commit_sha, environment, delivery_id)
    SELECT app, namespace, time, image_sha, commit_sha, environment, delivery_id FROM deploys;
DROP TABLE deploys;
ALTER TABLE deploys_v2 RENAME TO deploys;
CREATE INDEX deploys_by_commit ON deploys (app, commit_sha, time);
CREATE INDEX deploys_by_time ON deploys (time);

-- Branch order of commits reported by pushes to a tracked branch: a deploy of
-- one of them also ships the pushed commits before it.
ALTER TABLE commits ADD COLUMN pushed_seq INTEGER;
CREATE INDEX commits_by_pushed_seq ON commits (app, pushed_seq) WHERE pushed_seq IS NOT NULL;

-- Commit → image digest links (registry packages, build pipelines, Pelorus
-- committime), used to give commit-only deploys their image.
CREATE TABLE links (
    app          TEXT    NOT NULL,
    commit_sha   TEXT    NOT NULL,
    image_sha    TEXT    NOT NULL,
    time         INTEGER NOT NULL,
    delivery_id  TEXT    NOT NULL,
    PRIMARY KEY (app, commit_sha, image_sha)
) WITHOUT ROWID;
INSERT OR IGNORE INTO links (app, commit_sha, image_sha, time, delivery_id)
    SELECT app, commit_sha, image_sha, time, delivery_id FROM commits WHERE image_sha <> '';
