//! The restore: every fact the metric view needs, read at start-up (and
//! on PostgreSQL from one consistent snapshot) and handed to the sink.

use super::rules::{FAILED_DEPLOYMENT_RECOVERY, LEAD_TIME, TIME_TO_RESTORE};
use super::sql::{DbError, Sql};
use super::{CommitSink, RestoreWindows, Restored};
use crate::events::{App, CommitLink, CommitSha, ImageSha, IssueNumber, Namespace};
use crate::ledger::ShownCommit;

/// Streams every fact the view needs to `sink`.
pub fn restore(
    tx: &mut dyn Sql,
    now: i64,
    windows: RestoreWindows,
    sink: &dyn CommitSink,
) -> Result<(), DbError> {
    let commit_since = now - windows.commit_window.as_secs() as i64;
    let exposure_since = now - windows.exposure_window.as_secs() as i64;
    let mut items: Vec<Restored> = Vec::new();

    // Each row found through `commits_by_time` costs a seek into the table's
    // primary key; when the window holds much of the history, a sequential
    // scan of the table (`+time` keeps the planner off the index) reads the
    // same rows three times faster.
    let oldest: Option<i64> = tx.value("SELECT MIN(time) FROM commits", &[])?;
    let scan = oldest.is_some_and(|oldest| commit_since - oldest < (now - oldest) * 3 / 4);
    tx.each(
        if scan {
            "SELECT app, commit_sha, image_sha, namespace, commit_link, time FROM commits WHERE +time >= ?1"
        } else {
            "SELECT app, commit_sha, image_sha, namespace, commit_link, time FROM commits WHERE time >= ?1"
        },
        &[&commit_since],
        &mut |r| {
            let (app, commit): (String, String) = (r.get(0)?, r.get(1)?);
            let (Ok(app), Ok(commit)) = (App::parse(&app), CommitSha::parse(&commit)) else {
                return Ok(());
            };
            items.push(Restored::Commit(ShownCommit {
                app,
                commit,
                image_sha: ImageSha::parse(&r.get::<String>(2)?).ok(),
                namespace: Namespace::parse(&r.get::<String>(3)?).ok(),
                commit_link: CommitLink::parse(&r.get::<String>(4)?).ok(),
                time: r.get(5)?,
            }));
            Ok(())
        },
    )?;

    tx.each(
        // Without the hint SQLite's planner scans every deploy to save a
        // sort of the few inside the exposure window.
        "SELECT app, namespace, image_sha, MAX(time) FROM deploys INDEXED BY deploys_by_time \
         WHERE time >= ?1 GROUP BY app, namespace, image_sha",
        &[&exposure_since],
        &mut |r| {
            if let (Ok(app), Ok(namespace), Ok(image_sha)) = (
                App::parse(&r.get::<String>(0)?),
                Namespace::parse(&r.get::<String>(1)?),
                ImageSha::parse(&r.get::<String>(2)?),
            ) {
                items.push(Restored::Deploy {
                    app,
                    namespace,
                    image_sha,
                    time: r.get(3)?,
                });
            }
            Ok(())
        },
    )?;

    tx.each(
        "SELECT app, issue_number, created, resolved FROM failures WHERE created >= ?1 OR resolved >= ?1",
        &[&exposure_since],
        &mut |r| {
            if let (Ok(app), Ok(issue_number)) = (
                App::parse(&r.get::<String>(0)?),
                IssueNumber::parse(&r.get::<String>(1)?),
            ) {
                items.push(Restored::Failure {
                    app,
                    issue_number,
                    created: r.get(2)?,
                    resolved: r.get(3)?,
                });
            }
            Ok(())
        },
    )?;

    tx.each(
        "SELECT app, namespace, COUNT(*), MAX(time), CAST(SUM(rework_marked) AS BIGINT), \
         CAST(SUM(rework_marked - rework) AS BIGINT), CAST(SUM(failed_marked) AS BIGINT), \
         CAST(SUM(failed_marked - failed) AS BIGINT) FROM deploys GROUP BY app, namespace",
        &[],
        &mut |r| {
            if let (Ok(app), Ok(namespace)) = (
                App::parse(&r.get::<String>(0)?),
                Namespace::parse(&r.get::<String>(1)?),
            ) {
                let count =
                    |i: usize| -> Result<u64, DbError> { Ok(r.get::<i64>(i)?.max(0) as u64) };
                items.push(Restored::DeployCount {
                    app,
                    namespace,
                    count: count(2)?,
                    last: r.get(3)?,
                    rework: count(4)?,
                    rework_withdrawn: count(5)?,
                    failed: count(6)?,
                    failed_withdrawn: count(7)?,
                });
            }
            Ok(())
        },
    )?;

    tx.each(
        "SELECT app, issue_number, created FROM failures \
         WHERE created IS NOT NULL AND (resolved IS NULL OR resolved < created)",
        &[],
        &mut |r| {
            if let (Ok(app), Ok(issue_number)) = (
                App::parse(&r.get::<String>(0)?),
                IssueNumber::parse(&r.get::<String>(1)?),
            ) {
                items.push(Restored::OpenFailure {
                    app,
                    issue_number,
                    created: r.get(2)?,
                });
            }
            Ok(())
        },
    )?;

    tx.each(
        "SELECT app, COUNT(created), COUNT(resolved) FROM failures GROUP BY app",
        &[],
        &mut |r| {
            if let Ok(app) = App::parse(&r.get::<String>(0)?) {
                items.push(Restored::FailureCounts {
                    app,
                    created: r.get::<i64>(1)? as u64,
                    resolved: r.get::<i64>(2)? as u64,
                });
            }
            Ok(())
        },
    )?;
    sink.restore(&mut items.drain(..));

    // Observations can be many: handed over in parts rather than all at once.
    const PART: usize = 8192;
    let mut part = Vec::with_capacity(PART);
    tx.each(
        "SELECT kind, app, seconds FROM observations",
        &[],
        &mut |r| {
            let (kind, app, seconds): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let Ok(app) = App::parse(&app) else {
                return Ok(());
            };
            let seconds = seconds as f64;
            match kind.as_str() {
                LEAD_TIME => part.push(Restored::LeadTime { app, seconds }),
                TIME_TO_RESTORE => part.push(Restored::TimeToRestore { app, seconds }),
                FAILED_DEPLOYMENT_RECOVERY => {
                    part.push(Restored::FailedDeploymentRecovery { app, seconds })
                }
                _ => {}
            }
            if part.len() >= PART {
                sink.restore(&mut part.drain(..));
            }
            Ok(())
        },
    )?;
    sink.restore(&mut part.drain(..));
    Ok(())
}
