-- Deploys reported by forges name a commit and often no image: image_sha is
-- '' until a commit→digest link resolves it. The identity becomes
-- app + image + namespace + time + commit.
CREATE TABLE deploys_v2 (
    app          TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    time         BIGINT  NOT NULL,
    image_sha    TEXT    NOT NULL,
    commit_sha   TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    PRIMARY KEY (app, image_sha, namespace, time, commit_sha)
);
INSERT INTO deploys_v2 (app, namespace, time, image_sha, commit_sha, environment, delivery_id)
    SELECT app, namespace, time, image_sha, commit_sha, environment, delivery_id FROM deploys;
DROP TABLE deploys;
ALTER TABLE deploys_v2 RENAME TO deploys;
ALTER INDEX deploys_v2_pkey RENAME TO deploys_pkey;
CREATE INDEX deploys_by_commit ON deploys (app, commit_sha, time);
CREATE INDEX deploys_by_time ON deploys (time);

-- Branch order of commits reported by pushes to a tracked branch: a deploy of
-- one of them also ships the pushed commits before it.
ALTER TABLE commits ADD COLUMN pushed_seq BIGINT;
CREATE INDEX commits_by_pushed_seq ON commits (app, pushed_seq) WHERE pushed_seq IS NOT NULL;

-- Commit → image digest links (registry packages, build pipelines, Pelorus
-- committime), used to give commit-only deploys their image.
CREATE TABLE links (
    app          TEXT    NOT NULL,
    commit_sha   TEXT    NOT NULL,
    image_sha    TEXT    NOT NULL,
    time         BIGINT  NOT NULL,
    delivery_id  TEXT    NOT NULL,
    PRIMARY KEY (app, commit_sha, image_sha)
);
INSERT INTO links (app, commit_sha, image_sha, time, delivery_id)
    SELECT app, commit_sha, image_sha, time, delivery_id FROM commits WHERE image_sha <> ''
    ON CONFLICT DO NOTHING;
