-- The fifth DORA key and the linked change failure rate: what the store
-- decided about each deploy, re-decided in the transaction of every fact
-- that can change it (see docs/five-keys.md).
--   rework_reported: the source said the deploy is rework (a rollback, a
--                    hotfix ref, a flag), whatever the failures say;
--   rework:          the current decision (1: rework);
--   rework_marked:   how often it was decided rework; rework_marked - rework
--                    is how often that decision was withdrawn (a late
--                    resolution showed the failure was over by then);
--   failed, failed_marked: the same for "a failure was tied to this deploy".
-- The counters hookgauge_rework_deployments_total and
-- hookgauge_failed_deployments_total are SUM(rework_marked) and
-- SUM(failed_marked); their _withdrawn_total the differences.
ALTER TABLE deploys ADD COLUMN rework_reported BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deploys ADD COLUMN rework BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deploys ADD COLUMN rework_marked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deploys ADD COLUMN failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deploys ADD COLUMN failed_marked BIGINT NOT NULL DEFAULT 0;
-- Re-deciding the deploys of one application in a span of time.
CREATE INDEX deploys_by_app_time ON deploys (app, time);
-- The failures of one application created in a span of time.
CREATE INDEX failures_by_created ON failures (app, created);

-- Deploys stored before: decided once here by the same rules (with the
-- default failure link window of 24 hours).
UPDATE deploys SET rework = 1, rework_marked = 1 WHERE EXISTS (
    SELECT 1 FROM failures AS f WHERE f.app = deploys.app AND f.created IS NOT NULL
    AND f.created <= deploys.time
    AND (f.resolved IS NULL OR f.resolved < f.created OR f.resolved >= deploys.time));
UPDATE deploys SET failed = 1, failed_marked = 1 WHERE EXISTS (
    SELECT 1 FROM failures AS f WHERE f.app = deploys.app
    AND f.created > deploys.time AND f.created <= deploys.time + 86400
    AND NOT EXISTS (SELECT 1 FROM deploys AS later WHERE later.app = deploys.app
        AND later.time > deploys.time AND later.time < f.created));
