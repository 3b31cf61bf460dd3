//! The decisions the facts make about deploys: rework (a failure was open
//! at its time, or its source said so), failed (a failure followed within
//! the link window with no deploy between), and the recoveries tied to a
//! deploy. They are functions of the stored facts alone.

use std::sync::OnceLock;

use super::facts::observe_each;
use super::{statement, FAILED_DEPLOYMENT_RECOVERY};
use crate::events::{App, Namespace};
use crate::ledger::Effect;
use crate::store::sql::{DbError, Row, Sql};

/// Decides again whether each deploy of `app` between `from` and `to`
/// (inclusive) is rework and whether a failure is tied to it, from the
/// facts stored now, and records and reports every decision that changed.
/// The decisions are functions of the stored facts alone, so whatever
/// order the facts arrive in, the last transaction leaves the same answer:
///
/// - rework: the source reported it so, or a failure of the app was open at
///   the deploy's time (created at or before it, and not resolved, resolved
///   at or after it, or resolved before a newer creation);
/// - failed: a failure of the app was created after the deploy, within
///   `link_window` seconds, with no other deploy of the app in between.
pub(super) fn redecide(
    tx: &mut dyn Sql,
    app: &App,
    from: i64,
    to: i64,
    link_window: i64,
) -> Result<Vec<Effect>, DbError> {
    static SQL: OnceLock<String> = OnceLock::new();
    let decisions = tx.rows(
        statement(&SQL, || {
            format!(
                "SELECT d.namespace, d.image_sha, d.time, d.rework, d.failed, {}, {} \
                 FROM deploys AS d INDEXED BY deploys_by_app_time \
                 WHERE d.app = ?1 AND d.time >= ?2 AND d.time <= ?3",
                rework_now(),
                failed_now("?4")
            )
        }),
        &[&app.as_str(), &from, &to, &link_window],
        |r| Decision::read(r, 0),
    )?;
    apply_decisions(tx, app, decisions)
}

/// A deploy `d` is rework when the source reported it so or a failure of
/// its app was open at its time.
pub(super) fn rework_now() -> &'static str {
    "(d.rework_reported <> 0 OR EXISTS (SELECT 1 FROM failures AS f \
       WHERE f.app = d.app AND f.created IS NOT NULL AND f.created <= d.time \
       AND (f.resolved IS NULL OR f.resolved < f.created OR f.resolved >= d.time)))"
}

/// A deploy `d` failed when a failure of its app was created after it,
/// within `window` (a parameter) seconds, with no other deploy in between.
pub(super) fn failed_now(window: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM failures AS f INDEXED BY failures_by_created \
           WHERE f.app = d.app AND f.created > d.time AND f.created <= d.time + {window} \
           AND NOT EXISTS (SELECT 1 FROM deploys AS later INDEXED BY deploys_by_app_time \
             WHERE later.app = d.app AND later.time > d.time AND later.time < f.created))"
    )
}

/// A failure `f`, resolved, is tied to a deploy when one of its app's
/// deploys lies in the `window` (a parameter) seconds before its creation.
pub(super) fn linked_recovery(window: &str) -> String {
    format!(
        "f.resolved IS NOT NULL AND f.resolved >= f.created \
         AND EXISTS (SELECT 1 FROM deploys AS d INDEXED BY deploys_by_app_time WHERE d.app = f.app \
           AND d.time < f.created AND d.time >= f.created - {window})"
    )
}

/// A deploy's stored decisions and what the stored facts decide now.
pub(super) struct Decision {
    pub(super) namespace: String,
    pub(super) image: String,
    pub(super) time: i64,
    pub(super) rework: bool,
    pub(super) failed: bool,
    pub(super) rework_now: bool,
    pub(super) failed_now: bool,
}

impl Decision {
    /// Reads the columns `first..first + 7` of `row`: namespace, image,
    /// time, the stored rework and failed, then what is decided now.
    pub(super) fn read(row: &Row<'_>, first: usize) -> Result<Decision, DbError> {
        Ok(Decision {
            namespace: row.get(first)?,
            image: row.get(first + 1)?,
            time: row.get(first + 2)?,
            rework: row.get::<i64>(first + 3)? != 0,
            failed: row.get::<i64>(first + 4)? != 0,
            rework_now: row.get(first + 5)?,
            failed_now: row.get(first + 6)?,
        })
    }
}

/// Records and reports every decision of `decisions` (deploys of `app`)
/// that changed.
pub(super) fn apply_decisions(
    tx: &mut dyn Sql,
    app: &App,
    decisions: Vec<Decision>,
) -> Result<Vec<Effect>, DbError> {
    let mut effects = Vec::new();
    for d in decisions {
        let (was_rework, was_failed) = (d.rework, d.failed);
        let (rework_now, failed_now) = (d.rework_now, d.failed_now);
        if was_rework == rework_now && was_failed == failed_now {
            continue;
        }
        tx.execute(
            "UPDATE deploys SET rework = ?5, failed = ?6, \
             rework_marked = rework_marked + ?7, failed_marked = failed_marked + ?8 \
             WHERE app = ?1 AND namespace = ?2 AND image_sha = ?3 AND time = ?4",
            &[
                &app.as_str(),
                &d.namespace,
                &d.image,
                &d.time,
                &i64::from(rework_now),
                &i64::from(failed_now),
                &i64::from(rework_now && !was_rework),
                &i64::from(failed_now && !was_failed),
            ],
        )?;
        let Ok(namespace) = Namespace::parse(&d.namespace) else {
            continue;
        };
        if was_rework != rework_now {
            effects.push(Effect::Rework {
                app: app.clone(),
                namespace: namespace.clone(),
                rework: rework_now,
            });
        }
        if was_failed != failed_now {
            effects.push(Effect::DeployFailed {
                app: app.clone(),
                namespace,
                failed: failed_now,
            });
        }
    }
    Ok(effects)
}

/// A recovery-time observation for each failure of `app` created after
/// `after` and up to `until` that is resolved and tied to a deploy (one of
/// the app's deploys lies in the `link_window` seconds before its
/// creation), once per failure.
pub(super) fn observe_linked_recoveries(
    tx: &mut dyn Sql,
    app: &App,
    after: i64,
    until: i64,
    link_window: i64,
) -> Result<Vec<Effect>, DbError> {
    static SQL: OnceLock<String> = OnceLock::new();
    let linked: Vec<(String, i64)> = tx.rows(
        statement(&SQL, || {
            format!(
                "SELECT f.issue_number, f.resolved - f.created FROM failures AS f INDEXED BY failures_by_created \
                 WHERE f.app = ?1 AND f.created > ?2 AND f.created <= ?3 AND {}",
                linked_recovery("?4")
            )
        }),
        &[&app.as_str(), &after, &until, &link_window],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    observe_recoveries(tx, app, linked)
}

/// A recovery-time observation for each (failure, seconds) that has none.
pub(super) fn observe_recoveries(
    tx: &mut dyn Sql,
    app: &App,
    linked: Vec<(String, i64)>,
) -> Result<Vec<Effect>, DbError> {
    observe_each(tx, FAILED_DEPLOYMENT_RECOVERY, app, linked)
}
