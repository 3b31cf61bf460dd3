//! The outcome rules, the retention steps and the restore queries, written
//! once over [`Sql`] for both backends and run inside the transaction the
//! backend opened.
//!
//! Dedupe and ordering are decided by the database, so that they hold when
//! several replicas write one PostgreSQL store at once: facts are inserted
//! with `ON CONFLICT DO NOTHING` against their identity (a second writer of
//! the same fact waits for the first one's commit, then inserts nothing),
//! and a failure's row is locked before its newer end is kept.

use std::collections::HashSet;

use super::sql::{DbError, Sql};
use super::{CommitSink, RestoreWindows, Restored};
use crate::clock::now_seconds;
use crate::events::{
    App, Commit, CommitLink, CommitSha, Deploy, Event, Failure, FailureChange, ImageSha,
    IssueNumber, Link, Namespace,
};
use crate::ledger::{Delivery, Disposition, Effect, Outcome, Recorded, State};

/// Why a ledger row cannot be redelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    NotFound,
    /// Its sender was never authenticated: there is nothing to trust.
    NotAuthenticated,
    /// Its body was not kept, or has been pruned.
    NoBody,
    /// It is itself a redelivery still queued or being processed.
    NotFinished,
}

impl ReplayRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayRefusal::NotFound => "not_found",
            ReplayRefusal::NotAuthenticated => "not_authenticated",
            ReplayRefusal::NoBody => "body_not_kept",
            ReplayRefusal::NotFinished => "not_finished",
        }
    }
}

/// How long ledger rows, bodies and events are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub body_days: u32,
    pub ledger_days: u32,
    /// 0: events are kept for ever.
    pub events_days: u32,
    /// 0: no cap on the bodies' total size.
    pub max_body_bytes_total: u64,
}

/// What one retention step removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub bodies: usize,
    pub rows: usize,
    pub events: usize,
    /// A limit was reached: another step has more to do.
    pub more: bool,
}

/// What one poller stream last saw: the response validators of its stable
/// URL and how far it has read (`watermark`: a server id or timestamp).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollCursor {
    pub stream: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub watermark: Option<String>,
}

/// What recording one delivery produced: its outcome and committed effects.
pub type Applied = (Recorded, Vec<Effect>);

/// What a committed transaction of deliveries applied: each one's outcome
/// and effects, all the effects in order, and its change feed row (shared
/// store, when there were effects).
pub struct Committed {
    pub applied: Vec<Applied>,
    pub effects: Vec<Effect>,
    pub seq: Option<i64>,
}

/// The effects of `applied`, in order.
pub fn effects(applied: &[Applied]) -> Vec<Effect> {
    applied
        .iter()
        .flat_map(|(_, effects)| effects.iter().cloned())
        .collect()
}

pub const LEAD_TIME: &str = "lead_time";
pub const TIME_TO_RESTORE: &str = "time_to_restore";
/// Recovery time of a failure tied to a deployment (DORA's failed
/// deployment recovery time).
pub const FAILED_DEPLOYMENT_RECOVERY: &str = "failed_deployment_recovery";

/// Queues a redelivery of ledger row `original`: a new row, linked to it,
/// with its body, headers and instance, in state `queued`.
pub fn enqueue_replay(
    tx: &mut dyn Sql,
    original: i64,
    now_ms: i64,
) -> Result<Result<i64, ReplayRefusal>, DbError> {
    let found: Option<(bool, bool, String)> = tx.row(
        &format!(
            "SELECT authenticated <> 0, body IS NOT NULL, state FROM deliveries WHERE seq = ?1{}",
            tx.dialect().for_update()
        ),
        &[&original],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let refusal = match found {
        None => Some(ReplayRefusal::NotFound),
        Some((false, _, _)) => Some(ReplayRefusal::NotAuthenticated),
        Some((_, false, _)) => Some(ReplayRefusal::NoBody),
        Some((_, _, state)) if state != "done" => Some(ReplayRefusal::NotFinished),
        Some(_) => None,
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    let row: i64 = tx.value(
        "INSERT INTO deliveries (delivery_id, source, event, received_at_ms, outcome, reason, detail, \
         event_keys, superseded_by, authenticated, body, headers, instance, apps, replay_of, state, \
         attempts, next_attempt_ms) \
         SELECT delivery_id, source, event, CAST(?2 AS BIGINT), '', NULL, 'queued for redelivery', '[]', \
         NULL, authenticated, body, headers, instance, '[]', seq, 'queued', 0, CAST(?2 AS BIGINT) \
         FROM deliveries WHERE seq = ?1 RETURNING seq",
        &[&original, &now_ms],
    )?;
    Ok(Ok(row))
}

/// Moves a queued row to `processing`, or to `errored` with the error and
/// the time of the next attempt (`None`: no more attempts). With `claim`,
/// only while the row has that many attempts made (compare and set: of two
/// workers that read the row, one moves it). True when the row changed.
pub fn mark(
    tx: &mut dyn Sql,
    row: i64,
    state: State,
    error: Option<&str>,
    next_attempt_ms: Option<i64>,
    claim: Option<i64>,
) -> Result<bool, DbError> {
    // An attempt counts when it starts: one that never finishes (a crash, a
    // panic) still uses one up.
    let attempted = i64::from(state == State::Processing);
    let changed = tx.execute(
        "UPDATE deliveries SET state = ?2, error = ?3, next_attempt_ms = ?4, \
         attempts = attempts + ?5 WHERE seq = ?1 AND state <> 'done' \
         AND (CAST(?6 AS BIGINT) IS NULL OR attempts = ?6)",
        &[
            &row,
            &state.as_str(),
            &error,
            &next_attempt_ms,
            &attempted,
            &claim,
        ],
    )?;
    Ok(changed == 1)
}

/// One bounded step of retention: at most `batch` bodies dropped and `batch`
/// rows deleted per kind. Each step seeks to its cutoff through an index and
/// touches only what it removes; `body_excess` (bytes of bodies beyond the
/// total cap, measured by the caller on a read connection) drops the oldest
/// bodies too. `watermark`: rows up to it have no body left to drop; moved
/// on by the step.
pub fn prune(
    tx: &mut dyn Sql,
    policy: &RetentionPolicy,
    now_ms: i64,
    batch: u32,
    body_excess: u64,
    watermark: &mut i64,
) -> Result<Pruned, DbError> {
    let day_ms = 86_400_000i64;
    let limit = i64::from(batch);
    // The newest row older than a cutoff, found with one seek.
    let last_before = |tx: &mut dyn Sql, cutoff: i64| -> Result<i64, DbError> {
        Ok(tx
            .row(
                "SELECT seq FROM deliveries INDEXED BY deliveries_by_received_at \
                 WHERE received_at_ms < ?1 ORDER BY received_at_ms DESC LIMIT 1",
                &[&cutoff],
                |r| r.get::<i64>(0),
            )?
            .unwrap_or(0))
    };
    // Bodies of finished rows (not of redeliveries still to run), from the
    // watermark up: rows below it have none left to drop, so no index on
    // bodies is needed (one would cost every insert).
    let body_seq = last_before(tx, now_ms - policy.body_days as i64 * day_ms)?;
    let candidates: Vec<(i64, bool, bool)> = tx.rows(
        "SELECT seq, body IS NOT NULL, next_attempt_ms IS NOT NULL FROM deliveries \
         WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        &[&*watermark, &body_seq, &limit],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let scanned_all = candidates.len() >= batch as usize;
    let mut reached = *watermark;
    let mut held = false;
    let mut bodies = 0;
    const DROP_BODY: &str = "UPDATE deliveries SET body = NULL WHERE seq = ?1";
    for (seq, has_body, pending) in candidates {
        if pending {
            // Kept until it is done; the watermark waits for it.
            held = true;
            continue;
        }
        if has_body {
            tx.execute(DROP_BODY, &[&seq])?;
            bodies += 1;
        }
        if !held {
            reached = seq;
        }
    }
    if body_excess > 0 && bodies < batch as usize {
        let oldest: Vec<(i64, i64)> = tx.rows(
            "SELECT seq, CAST(length(body) AS BIGINT) FROM deliveries WHERE seq > ?1 \
             AND body IS NOT NULL AND next_attempt_ms IS NULL ORDER BY seq LIMIT ?2",
            &[&reached, &limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut excess = body_excess;
        for (seq, len) in oldest {
            if excess == 0 {
                break;
            }
            tx.execute(DROP_BODY, &[&seq])?;
            excess = excess.saturating_sub(len as u64);
            bodies += 1;
        }
    }
    let rows_seq = last_before(tx, now_ms - policy.ledger_days as i64 * day_ms)?;
    let rows = tx.execute(
        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries \
         WHERE seq <= ?1 AND next_attempt_ms IS NULL ORDER BY seq LIMIT ?2)",
        &[&rows_seq, &limit],
    )?;
    let mut events = 0;
    if policy.events_days > 0 {
        let cutoff = now_ms / 1000 - policy.events_days as i64 * 86_400;
        for table in ["commits", "deploys"] {
            // Both tables are keyed by their identity; their time index
            // bounds the step (rows sharing the last second go too).
            events += tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE time IN (SELECT time FROM {table} WHERE time < ?1 \
                     ORDER BY time LIMIT ?2)"
                ),
                &[&cutoff, &limit],
            )?;
        }
        // Failures go once resolved before the cutoff; open ones stay.
        events += tx.execute(
            "DELETE FROM failures WHERE (app, issue_number) IN (SELECT app, issue_number FROM failures \
             WHERE resolved IS NOT NULL AND resolved < ?1 AND coalesce(created, 0) < ?1 LIMIT ?2)",
            &[&cutoff, &limit],
        )?;
    }
    *watermark = reached;
    let limit = batch as usize;
    Ok(Pruned {
        bodies,
        rows,
        events,
        more: scanned_all || rows >= limit || events >= limit,
    })
}

/// A one-row write: fails when a delivery's commit would (the write lock
/// is held elsewhere, the database is read-only, the disk is full). A
/// rolled-back transaction writes nothing and could not tell a full disk.
pub fn probe(tx: &mut dyn Sql) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        &[&now_seconds()],
    )?;
    Ok(())
}

/// Saves the state of poller streams and drops that of `forget`.
pub fn save_cursors(
    tx: &mut dyn Sql,
    cursors: &[PollCursor],
    forget: &[String],
    now_ms: i64,
) -> Result<(), DbError> {
    for cursor in cursors {
        tx.execute(
            "INSERT INTO poll_state (stream, etag, last_modified, watermark, updated_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (stream) DO UPDATE SET \
             etag = excluded.etag, last_modified = excluded.last_modified, \
             watermark = excluded.watermark, updated_ms = excluded.updated_ms",
            &[
                &cursor.stream,
                &cursor.etag,
                &cursor.last_modified,
                &cursor.watermark,
                &now_ms,
            ],
        )?;
    }
    for stream in forget {
        tx.execute("DELETE FROM poll_state WHERE stream = ?1", &[stream])?;
    }
    Ok(())
}

/// Drops the oldest unauthenticated rows beyond `keep`: `excess` of them
/// when the caller counts them itself, else every one past the newest `keep`.
pub fn cap_unauthenticated(
    tx: &mut dyn Sql,
    excess: Option<u64>,
    keep: u64,
) -> Result<usize, DbError> {
    match excess {
        Some(0) => Ok(0),
        Some(excess) => tx.execute(
            "DELETE FROM deliveries WHERE seq IN \
             (SELECT seq FROM deliveries WHERE authenticated = 0 ORDER BY seq LIMIT ?1)",
            &[&(excess as i64)],
        ),
        None => tx.execute(
            &format!(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries \
                 WHERE authenticated = 0 ORDER BY seq DESC LIMIT {} OFFSET ?1)",
                tx.dialect().no_limit()
            ),
            &[&(keep as i64)],
        ),
    }
}

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
            items.push(Restored::Commit {
                app,
                commit,
                image_sha: ImageSha::parse(&r.get::<String>(2)?).ok(),
                namespace: Namespace::parse(&r.get::<String>(3)?).ok(),
                commit_link: CommitLink::parse(&r.get::<String>(4)?).ok(),
                time: r.get(5)?,
            });
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

/// A failure is open from its creation until a resolution at or after it.
fn open_since(created: Option<i64>, resolved: Option<i64>) -> Option<i64> {
    created.filter(|c| resolved.is_none_or(|r| r < *c))
}

/// What applying one event did.
enum EventResult {
    New(Vec<Effect>),
    Duplicate,
    Outdated { superseded_by: String },
}

/// PostgreSQL: takes a transaction-level advisory lock for each
/// application `deliveries` write facts of, in one order. Facts of one
/// application read each other (a commit looks for its deploys, a deploy
/// for its commits and links, pushes number their commits), so two
/// replicas writing facts of one application take turns; different
/// applications proceed in parallel. SQLite has one writer already.
pub fn lock_apps<'d>(
    tx: &mut dyn Sql,
    deliveries: impl IntoIterator<Item = &'d Delivery>,
) -> Result<(), DbError> {
    if tx.dialect() != super::sql::Dialect::Postgres {
        return Ok(());
    }
    let mut apps: Vec<&str> = deliveries
        .into_iter()
        .filter_map(|d| match &d.disposition {
            Disposition::Events(events) => Some(events.iter().map(|e| e.app().as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    apps.sort_unstable();
    apps.dedup();
    if apps.is_empty() {
        return Ok(());
    }
    // One statement (one round trip) for all of them, taken in the sorted
    // order of the array, as every writer does: no two wait on each other.
    let apps = serde_json::to_string(&apps)
        .map_err(|e| DbError::Broken(format!("application names cannot be encoded: {e}")))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('hookgauge app ' || a, 0)) \
         FROM json_array_elements_text(CAST(CAST(?1 AS TEXT) AS json)) WITH ORDINALITY AS t(a, n) ORDER BY n",
        &[&apps],
    )?;
    Ok(())
}

/// Applies `deliveries` in order in the transaction `tx` and writes their
/// ledger rows; the caller commits. On an error other than a database
/// fault, `failed` names a delivery it came from.
///
/// The statements a batch sends do not grow with its size where they need
/// not (each is a round trip on PostgreSQL): the application locks are one
/// statement, "was this delivery recorded before" is one read for the
/// whole batch (answered from memory for deliveries of the batch itself),
/// and the ledger rows are inserted together at the end, several per
/// statement. The facts are applied one event at a time, as before.
pub fn record_all(
    tx: &mut dyn Sql,
    deliveries: &[&Delivery],
    max_body_bytes: usize,
    link_window: i64,
    failed: &mut Option<usize>,
) -> Result<Vec<Applied>, DbError> {
    let not_fault = |error: DbError, index: usize, failed: &mut Option<usize>| {
        if !error.is_fault() {
            tracing::error!(error = %error, delivery_id = %deliveries[index].id, "Delivery could not be applied");
            *failed = Some(index);
        }
        error
    };
    lock_apps(tx, deliveries.iter().copied())?;
    let mut recording = Recording {
        seen: recorded_before(tx, deliveries)?,
        rows: Vec::with_capacity(deliveries.len()),
        current: 0,
    };
    let mut results = Vec::with_capacity(deliveries.len());
    for (index, delivery) in deliveries.iter().enumerate() {
        recording.current = index;
        let result = record_one(tx, delivery, max_body_bytes, link_window, &mut recording)
            .map_err(|e| not_fault(e, index, failed))?;
        results.push(result);
    }
    insert_ledger_rows(tx, &recording.rows)
        .map_err(|(error, index)| not_fault(error, index, failed))?;
    Ok(results)
}

/// What one [`record_all`] knows as it goes.
struct Recording<'d> {
    /// (source, delivery id) of every delivery recorded with events, before
    /// this batch or in it; `None` on SQLite, which is asked each time (a
    /// statement there is a function call, not a round trip).
    seen: Option<HashSet<(String, String)>>,
    /// Ledger rows to insert at the end, in order.
    rows: Vec<LedgerRow<'d>>,
    /// The index in the batch of the delivery being recorded.
    current: usize,
}

impl Recording<'_> {
    fn seen(&self, tx: &mut dyn Sql, delivery: &Delivery) -> Result<bool, DbError> {
        match &self.seen {
            Some(seen) => Ok(seen.contains(&(delivery.source.to_owned(), delivery.id.to_string()))),
            None => delivery_seen(tx, delivery),
        }
    }

    /// `delivery`'s row now says it was recorded (accepted, duplicate or
    /// outdated): the same delivery later in the batch is a duplicate.
    fn recorded(&mut self, delivery: &Delivery) {
        if let Some(seen) = self.seen.as_mut() {
            seen.insert((delivery.source.to_owned(), delivery.id.to_string()));
        }
    }
}

/// A new ledger row, inserted by [`insert_ledger_rows`].
struct LedgerRow<'d> {
    /// Its delivery's index in the batch.
    index: usize,
    delivery: &'d Delivery,
    outcome: &'static str,
    reason: Option<&'static str>,
    detail: String,
    keys: String,
    superseded_by: Option<String>,
    body: Option<&'d [u8]>,
    apps: String,
}

/// PostgreSQL: the deliveries of the batch that were recorded before, in
/// one read. SQLite: `None` (asked per delivery).
fn recorded_before(
    tx: &mut dyn Sql,
    deliveries: &[&Delivery],
) -> Result<Option<HashSet<(String, String)>>, DbError> {
    if tx.dialect() != super::sql::Dialect::Postgres {
        return Ok(None);
    }
    let pairs: Vec<(&str, &str)> = deliveries
        .iter()
        .filter(|d| matches!(d.disposition, Disposition::Events(_)))
        .map(|d| (d.source, d.id.as_str()))
        .collect();
    let mut seen = HashSet::new();
    if pairs.is_empty() {
        return Ok(Some(seen));
    }
    let pairs = serde_json::to_string(&pairs)
        .map_err(|e| DbError::Broken(format!("delivery ids cannot be encoded: {e}")))?;
    tx.each(
        "SELECT DISTINCT d.source, d.delivery_id FROM json_array_elements(CAST(CAST(?1 AS TEXT) AS json)) AS p \
         JOIN deliveries AS d ON d.source = p.value->>0 AND d.delivery_id = p.value->>1 \
         WHERE d.outcome IN ('accepted', 'duplicate', 'outdated')",
        &[&pairs],
        &mut |r| {
            seen.insert((r.get(0)?, r.get(1)?));
            Ok(())
        },
    )?;
    Ok(Some(seen))
}

/// Columns of a new ledger row, and the insert statements of 1, 2, 4 …
/// [`LEDGER_CHUNK`] rows.
const LEDGER_COLUMNS: &str =
    "delivery_id, source, event, received_at_ms, outcome, reason, detail, \
     event_keys, superseded_by, authenticated, body, headers, instance, apps";
const LEDGER_WIDTH: usize = 14;
const LEDGER_CHUNK: usize = 64;

fn ledger_insert(rows: usize) -> &'static str {
    static STATEMENTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        (0..=LEDGER_CHUNK.trailing_zeros())
            .map(|power| {
                let values: Vec<String> = (0..1usize << power)
                    .map(|row| {
                        let params: Vec<String> = (1..=LEDGER_WIDTH)
                            .map(|column| format!("?{}", row * LEDGER_WIDTH + column))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO deliveries ({LEDGER_COLUMNS}) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    });
    &statements[rows.trailing_zeros() as usize]
}

/// Inserts `rows` in order, in as few statements as their number allows
/// (the largest power of two that fits, again and again). On an error, the
/// index (in the batch) of the first row of the statement that failed.
fn insert_ledger_rows(tx: &mut dyn Sql, rows: &[LedgerRow<'_>]) -> Result<(), (DbError, usize)> {
    let mut done = 0;
    while done < rows.len() {
        let left = rows.len() - done;
        let take = if left >= LEDGER_CHUNK {
            LEDGER_CHUNK
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        let chunk = &rows[done..done + take];
        let authenticated: Vec<i64> = chunk
            .iter()
            .map(|r| i64::from(r.delivery.authenticated))
            .collect();
        let ids: Vec<&str> = chunk.iter().map(|r| r.delivery.id.as_str()).collect();
        let mut params: Vec<&dyn super::sql::Param> = Vec::with_capacity(take * LEDGER_WIDTH);
        for ((row, authenticated), id) in chunk.iter().zip(&authenticated).zip(&ids) {
            let d = row.delivery;
            params.extend_from_slice(&[
                id,
                &d.source,
                &d.event,
                &d.received_at_ms,
                &row.outcome,
                &row.reason,
                &row.detail,
                &row.keys,
                &row.superseded_by,
                authenticated,
                &row.body,
                &d.headers,
                &d.instance,
                &row.apps,
            ]);
        }
        tx.execute(ledger_insert(take), &params)
            .map_err(|error| (error, rows[done].index))?;
        done += take;
    }
    Ok(())
}

/// Applies one delivery; its ledger row is updated now (a queued
/// redelivery finishing) or left in `recording` to insert.
fn record_one<'d>(
    tx: &mut dyn Sql,
    delivery: &'d Delivery,
    max_body_bytes: usize,
    link_window: i64,
    recording: &mut Recording<'d>,
) -> Result<Applied, DbError> {
    let (outcome, reason, detail, keys, superseded_by, effects, keep_body) = match &delivery
        .disposition
    {
        Disposition::Rejected { reason } => (
            Outcome::Rejected,
            Some(*reason),
            "authentication failed".to_owned(),
            Vec::new(),
            None,
            Vec::new(),
            false,
        ),
        Disposition::Invalid { reason } => (
            Outcome::Invalid,
            Some(*reason),
            "the delivery failed validation".to_owned(),
            Vec::new(),
            None,
            Vec::new(),
            delivery.authenticated,
        ),
        Disposition::Ignored { reason } => (
            Outcome::Ignored,
            Some(*reason),
            format!("ignored: {reason}"),
            Vec::new(),
            None,
            Vec::new(),
            true,
        ),
        Disposition::Events(events) => {
            let keys: Vec<String> = events.iter().map(Event::identity).collect();
            if recording.seen(tx, delivery)? {
                (
                    Outcome::Duplicate,
                    Some("delivery_seen"),
                    format!("delivery {} was already recorded", delivery.id),
                    keys,
                    None,
                    Vec::new(),
                    false,
                )
            } else {
                let mut effects = Vec::new();
                let mut any_new = false;
                let mut superseded = None;
                for event in events {
                    match apply_event(tx, event, delivery.id.as_str(), link_window)? {
                        EventResult::New(mut e) => {
                            any_new = true;
                            effects.append(&mut e);
                        }
                        EventResult::Duplicate => {}
                        EventResult::Outdated { superseded_by } => superseded = Some(superseded_by),
                    }
                }
                if any_new {
                    let detail = match events.as_slice() {
                        [one] => format!("{} recorded", event_noun(one)),
                        many => format!("{} events recorded", many.len()),
                    };
                    (Outcome::Accepted, None, detail, keys, None, effects, true)
                } else if let Some(by) = superseded {
                    (
                        Outcome::Outdated,
                        Some("newer_update_stored"),
                        format!("a newer update is already stored (delivery {by})"),
                        keys,
                        Some(by),
                        Vec::new(),
                        false,
                    )
                } else {
                    (
                        Outcome::Duplicate,
                        Some("event_stored"),
                        "an identical event is already stored".to_owned(),
                        keys,
                        None,
                        Vec::new(),
                        false,
                    )
                }
            }
        }
    };
    let body = delivery
        .body
        .as_ref()
        .filter(|b| keep_body && b.len() <= max_body_bytes)
        .map(|b| b.as_ref());
    let apps = match &delivery.disposition {
        Disposition::Events(events) => {
            let mut apps: Vec<&str> = events.iter().map(|e| e.app().as_str()).collect();
            apps.sort_unstable();
            apps.dedup();
            serde_json::to_string(&apps).unwrap_or_else(|_| "[]".into())
        }
        _ => "[]".to_owned(),
    };
    let keys = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into());
    if matches!(
        outcome,
        Outcome::Accepted | Outcome::Duplicate | Outcome::Outdated
    ) {
        recording.recorded(delivery);
    }
    if let Some(row) = delivery.queued_row {
        // A redelivery finishing: its queued row takes the outcome.
        let updated = tx.execute(
            "UPDATE deliveries SET event = ?2, outcome = ?3, reason = ?4, detail = ?5, event_keys = ?6, \
             superseded_by = ?7, apps = ?8, state = 'done', error = NULL, next_attempt_ms = NULL \
             WHERE seq = ?1 AND state = 'processing'",
            &[
                &row,
                &delivery.event,
                &outcome.as_str(),
                &reason,
                &detail,
                &keys,
                &superseded_by,
                &apps,
            ],
        )?;
        if updated != 1 {
            // The row went (retention) or was finished elsewhere: nothing of
            // this delivery may commit without its ledger row.
            return Err(DbError::Broken(format!(
                "the queued ledger row {row} of delivery {} is gone or finished",
                delivery.id
            )));
        }
    } else {
        recording.rows.push(LedgerRow {
            index: recording.current,
            delivery,
            outcome: outcome.as_str(),
            reason,
            detail: detail.clone(),
            keys,
            superseded_by: superseded_by.clone(),
            body,
            apps,
        });
    }
    Ok((
        Recorded {
            outcome,
            detail,
            superseded_by,
        },
        effects,
    ))
}

fn event_noun(event: &Event) -> &'static str {
    match event {
        Event::Commit(_) => "commit",
        Event::Deploy(_) => "deploy",
        Event::Link(_) => "commit-to-image link",
        Event::Failure(f) => match f.change {
            FailureChange::Created => "failure creation",
            FailureChange::Resolved => "failure resolution",
        },
    }
}

/// The same delivery recorded before. Two replicas taking one delivery at
/// once may both find none: its events then meet each other's rows and the
/// second is recorded as a duplicate of the first.
fn delivery_seen(tx: &mut dyn Sql, delivery: &Delivery) -> Result<bool, DbError> {
    tx.exists(
        "SELECT 1 FROM deliveries WHERE source = ?1 AND delivery_id = ?2 \
         AND outcome IN ('accepted', 'duplicate', 'outdated') LIMIT 1",
        &[&delivery.source, &delivery.id.as_str()],
    )
}

fn apply_event(
    tx: &mut dyn Sql,
    event: &Event,
    delivery_id: &str,
    link_window: i64,
) -> Result<EventResult, DbError> {
    match event {
        Event::Commit(commit) => apply_commit(tx, commit, delivery_id),
        Event::Deploy(deploy) => apply_deploy(tx, deploy, delivery_id, link_window),
        Event::Failure(failure) => apply_failure(tx, failure, delivery_id, link_window),
        Event::Link(link) => apply_link(tx, link, delivery_id),
    }
}

fn image_text(image_sha: Option<&ImageSha>) -> String {
    image_sha.map(ToString::to_string).unwrap_or_default()
}

/// Records a lead-time observation for `commit` unless one exists; returns
/// the effect when it is new. Negative spans (clock skew) are not observed.
fn observe_once(
    tx: &mut dyn Sql,
    kind: &str,
    app: &App,
    subject: &str,
    seconds: i64,
) -> Result<Option<Effect>, DbError> {
    if seconds < 0 {
        return Ok(None);
    }
    let inserted = tx.execute(
        "INSERT INTO observations (kind, app, subject, seconds) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        &[&kind, &app.as_str(), &subject, &seconds],
    )?;
    if inserted == 0 {
        return Ok(None);
    }
    let app = app.clone();
    let seconds = seconds as f64;
    Ok(Some(match kind {
        LEAD_TIME => Effect::LeadTime { app, seconds },
        FAILED_DEPLOYMENT_RECOVERY => Effect::FailedDeploymentRecovery { app, seconds },
        _ => Effect::TimeToRestore { app, seconds },
    }))
}

fn apply_commit(
    tx: &mut dyn Sql,
    commit: &Commit,
    delivery_id: &str,
) -> Result<EventResult, DbError> {
    let app = commit.app.as_str();
    let image = image_text(commit.image_sha.as_ref());
    let inserted = tx.execute(
        "INSERT INTO commits (app, commit_sha, image_sha, namespace, commit_link, time, delivery_id, pushed_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?8 THEN \
           (SELECT COALESCE(MAX(pushed_seq), 0) + 1 FROM commits WHERE app = ?1 AND pushed_seq IS NOT NULL) END) \
         ON CONFLICT DO NOTHING",
        &[
            &app,
            &commit.commit.as_str(),
            &image,
            &commit
                .namespace
                .as_ref()
                .map(Namespace::as_str)
                .unwrap_or(""),
            &commit
                .commit_link
                .as_ref()
                .map(CommitLink::as_str)
                .unwrap_or(""),
            &commit.time.seconds(),
            &delivery_id,
            &commit.pushed,
        ],
    )?;
    if inserted == 0 {
        return Ok(EventResult::Duplicate);
    }
    let mut effects = vec![Effect::Commit {
        app: commit.app.clone(),
        commit: commit.commit.clone(),
        image_sha: commit.image_sha,
        namespace: commit.namespace.clone(),
        commit_link: commit.commit_link.clone(),
        time: commit.time.seconds(),
    }];
    // A commit that names its image is also a commit→digest link.
    if let Some(image_sha) = commit.image_sha {
        let link = Link {
            app: commit.app.clone(),
            commit: commit.commit.clone(),
            image_sha,
            time: commit.time,
        };
        if let EventResult::New(mut more) = apply_link(tx, &link, delivery_id)? {
            effects.append(&mut more);
        }
    }
    // A deploy may have arrived first: its earliest time joins this commit,
    // whether it names the commit, its image or an image linked to it.
    let deployed: Option<i64> = tx.value(
        "SELECT MIN(time) FROM (\
           SELECT time FROM deploys WHERE app = ?1 AND image_sha = ?2 AND ?2 <> '' \
           UNION ALL SELECT time FROM deploys WHERE app = ?1 AND commit_sha = ?3 \
           UNION ALL SELECT d.time FROM links AS l JOIN deploys AS d \
             ON d.app = l.app AND d.image_sha = l.image_sha \
             WHERE l.app = ?1 AND l.commit_sha = ?3) AS deployed",
        &[&app, &image, &commit.commit.as_str()],
    )?;
    if let Some(deployed) = deployed {
        let span = deployed - commit.time.seconds();
        effects.extend(observe_once(
            tx,
            LEAD_TIME,
            &commit.app,
            commit.commit.as_str(),
            span,
        )?);
        if commit.pushed {
            // The deploy also shipped the commits pushed before this one.
            effects.extend(observe_shipped(tx, &commit.app, &commit.commit, deployed)?);
        }
    }
    Ok(EventResult::New(effects))
}

/// Lead time for every pushed commit a deploy of `commit` at `deployed`
/// shipped: those pushed to the branch after the last commit an earlier
/// deploy named, up to and including `commit`, that have none yet.
fn observe_shipped(
    tx: &mut dyn Sql,
    app: &App,
    commit: &CommitSha,
    deployed: i64,
) -> Result<Vec<Effect>, DbError> {
    let position: Option<i64> = tx.value(
        "SELECT MIN(pushed_seq) FROM commits WHERE app = ?1 AND commit_sha = ?2 AND pushed_seq IS NOT NULL",
        &[&app.as_str(), &commit.as_str()],
    )?;
    let Some(seq) = position else {
        return Ok(Vec::new());
    };
    let since: i64 = tx
        .row(
            "SELECT c.pushed_seq FROM commits AS c INDEXED BY commits_by_pushed_seq \
             WHERE c.app = ?1 AND c.pushed_seq IS NOT NULL AND c.pushed_seq < ?2 AND EXISTS (\
               SELECT 1 FROM deploys d WHERE d.app = c.app AND d.commit_sha = c.commit_sha) \
             ORDER BY c.pushed_seq DESC LIMIT 1",
            &[&app.as_str(), &seq],
            |r| r.get(0),
        )?
        .unwrap_or(0);
    let commits: Vec<(String, i64)> = tx.rows(
        "SELECT commit_sha, MIN(time) FROM commits INDEXED BY commits_by_pushed_seq \
         WHERE app = ?1 AND pushed_seq IS NOT NULL AND pushed_seq > ?2 AND pushed_seq <= ?3 \
         GROUP BY commit_sha",
        &[&app.as_str(), &since, &seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    observe_lead_times(tx, app, commits, deployed)
}

/// A lead-time observation from a deploy at `deployed` for each (commit,
/// commit time) that has none yet.
fn observe_lead_times(
    tx: &mut dyn Sql,
    app: &App,
    commits: Vec<(String, i64)>,
    deployed: i64,
) -> Result<Vec<Effect>, DbError> {
    let mut effects = Vec::new();
    for (commit_sha, commit_time) in commits {
        effects.extend(observe_once(
            tx,
            LEAD_TIME,
            app,
            &commit_sha,
            deployed - commit_time,
        )?);
    }
    Ok(effects)
}

/// The commits (sha, time; a commit can be in more than one image) of app
/// `?1` built into image `?2` (`''`: none), linked to it, or named `?3`.
const BUILT: &str = "SELECT commit_sha, time FROM commits INDEXED BY commits_by_image \
       WHERE app = ?1 AND image_sha = ?2 AND ?2 <> '' \
     UNION ALL SELECT commit_sha, time FROM commits WHERE app = ?1 AND commit_sha = ?3 \
     UNION ALL SELECT c.commit_sha, c.time FROM links AS l JOIN commits AS c \
       ON c.app = l.app AND c.commit_sha = l.commit_sha \
       WHERE l.app = ?1 AND l.image_sha = ?2 AND ?2 <> ''";

/// Every commit built into `image` (`''`: none), linked to it, or named
/// `commit` that has no lead time yet gets one from a deploy at `deployed`.
fn observe_deployed(
    tx: &mut dyn Sql,
    app: &App,
    image: &str,
    commit: &str,
    deployed: i64,
) -> Result<Vec<Effect>, DbError> {
    let commits: Vec<(String, i64)> = tx.rows(
        &format!("SELECT commit_sha, MIN(time) FROM ({BUILT}) AS built GROUP BY commit_sha"),
        &[&app.as_str(), &image, &commit],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    observe_lead_times(tx, app, commits, deployed)
}

fn apply_deploy(
    tx: &mut dyn Sql,
    deploy: &Deploy,
    delivery_id: &str,
    link_window: i64,
) -> Result<EventResult, DbError> {
    let app = deploy.app.as_str();
    let commit = deploy.commit.as_ref().map(CommitSha::as_str).unwrap_or("");
    let time = deploy.time.seconds();
    // A deploy that names only its commit takes the newest image linked to it.
    let image_sha = match (deploy.image_sha, &deploy.commit) {
        (Some(image), _) => Some(image),
        (None, Some(commit)) => latest_link(tx, &deploy.app, commit)?,
        (None, None) => None,
    };
    let image = image_text(image_sha.as_ref());
    // The same deploy reported again, by this sender or another: same time,
    // and the same image or the same commit. (PostgreSQL also holds this as
    // two unique indexes, which the insert below meets when another replica
    // stores the same deploy at the same moment.)
    let seen = tx.dialect() != super::sql::Dialect::Postgres
        && tx.exists(
        "SELECT 1 FROM deploys WHERE ?4 <> '' AND app = ?1 AND image_sha = ?4 AND namespace = ?2 AND time = ?3 \
         UNION ALL SELECT 1 FROM deploys INDEXED BY deploys_by_commit \
           WHERE ?5 <> '' AND app = ?1 AND commit_sha = ?5 AND time = ?3 AND namespace = ?2 \
         LIMIT 1",
        &[&app, &deploy.namespace.as_str(), &time, &image, &commit],
    )?;
    if seen {
        return Ok(EventResult::Duplicate);
    }
    let inserted = tx.execute(
        "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id, \
         rework_reported) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        &[
            &app,
            &deploy.namespace.as_str(),
            &time,
            &image,
            &commit,
            // PostgreSQL text cannot hold NUL; no environment name needs one.
            &deploy.environment.as_deref().unwrap_or("").replace('\0', ""),
            &delivery_id,
            &i64::from(deploy.rework),
        ],
    )?;
    if inserted == 0 {
        return Ok(EventResult::Duplicate);
    }
    let mut effects = vec![Effect::Deploy {
        app: deploy.app.clone(),
        namespace: deploy.namespace.clone(),
        image_sha,
        time,
    }];
    let context = deploy_context(tx, &deploy.app, &image, commit, time, link_window)?;
    // Every commit built into this image (or named by the deploy) that has no
    // lead time yet gets one: this is its first deployment we know of.
    effects.extend(observe_lead_times(tx, &deploy.app, context.built, time)?);
    if let Some(commit) = &deploy.commit {
        effects.extend(observe_shipped(tx, &deploy.app, commit, time)?);
    }
    // This deploy is decided now; the one before it may have been tied to
    // failures that this one now stands between (it is the later deploy).
    effects.extend(apply_decisions(tx, &deploy.app, context.decisions)?);
    effects.extend(observe_recoveries(tx, &deploy.app, context.recoveries)?);
    Ok(EventResult::New(effects))
}

/// What a new deploy at `time` decides, read in one statement (one round
/// trip) rather than three: the commits [`observe_deployed`] reads, the
/// deploys [`redecide`] reads from `time - link_window` to `time`, and the
/// failures [`observe_linked_recoveries`] reads from `time` to `time +
/// link_window`. None of the writes that follow changes what the others
/// read (lead-time observations, the deploys' decisions, recovery
/// observations), so one snapshot answers all three as the three reads did.
struct DeployContext {
    built: Vec<(String, i64)>,
    decisions: Vec<Decision>,
    recoveries: Vec<(String, i64)>,
}

fn deploy_context(
    tx: &mut dyn Sql,
    app: &App,
    image: &str,
    commit: &str,
    time: i64,
    link_window: i64,
) -> Result<DeployContext, DbError> {
    let mut context = DeployContext {
        built: Vec::new(),
        decisions: Vec::new(),
        recoveries: Vec::new(),
    };
    tx.each(
        &format!(
            "SELECT CAST(0 AS BIGINT), commit_sha, '', MIN(time), 0, 0, 1 = 0, 1 = 0 FROM ({BUILT}) AS built \
             GROUP BY commit_sha \
             UNION ALL SELECT CAST(1 AS BIGINT), d.namespace, d.image_sha, d.time, d.rework, d.failed, \
               {}, {} \
             FROM deploys AS d INDEXED BY deploys_by_app_time \
             WHERE d.app = ?1 AND d.time >= ?5 AND d.time <= ?4 \
             UNION ALL SELECT CAST(2 AS BIGINT), f.issue_number, '', f.resolved - f.created, 0, 0, 1 = 0, 1 = 0 \
             FROM failures AS f INDEXED BY failures_by_created WHERE f.app = ?1 AND f.created > ?4 \
             AND f.created <= ?7 AND {}",
            rework_now(),
            failed_now("?6"),
            linked_recovery("?6")
        ),
        &[
            &app.as_str(),
            &image,
            &commit,
            &time,
            &(time - link_window),
            &link_window,
            &(time + link_window),
        ],
        &mut |r| {
            match r.get::<i64>(0)? {
                0 => context.built.push((r.get(1)?, r.get(3)?)),
                1 => context.decisions.push(Decision {
                    namespace: r.get(1)?,
                    image: r.get(2)?,
                    time: r.get(3)?,
                    rework: r.get::<i64>(4)? != 0,
                    failed: r.get::<i64>(5)? != 0,
                    rework_now: r.get(6)?,
                    failed_now: r.get(7)?,
                }),
                _ => context.recoveries.push((r.get(1)?, r.get(3)?)),
            }
            Ok(())
        },
    )?;
    Ok(context)
}

/// The image most recently linked to `commit` of `app`, if any.
fn latest_link(
    tx: &mut dyn Sql,
    app: &App,
    commit: &CommitSha,
) -> Result<Option<ImageSha>, DbError> {
    let image: Option<String> = tx.row(
        "SELECT image_sha FROM links WHERE app = ?1 AND commit_sha = ?2 ORDER BY time DESC, image_sha LIMIT 1",
        &[&app.as_str(), &commit.as_str()],
        |r| r.get(0),
    )?;
    Ok(image.and_then(|i| ImageSha::parse(&i).ok()))
}

/// Records a commit→digest link and gives its image to the deploys of that
/// commit that were stored without one (unless the same deploy is already
/// stored with that image: then it keeps none, and counts once).
fn apply_link(tx: &mut dyn Sql, link: &Link, delivery_id: &str) -> Result<EventResult, DbError> {
    let app = link.app.as_str();
    let image = link.image_sha.to_string();
    let inserted = tx.execute(
        "INSERT INTO links (app, commit_sha, image_sha, time, delivery_id) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT DO NOTHING",
        &[
            &app,
            &link.commit.as_str(),
            &image,
            &link.time.seconds(),
            &delivery_id,
        ],
    )?;
    if inserted == 0 {
        return Ok(EventResult::Duplicate);
    }
    let resolved: Vec<(String, i64)> = tx.rows(
        "UPDATE deploys SET image_sha = ?3 WHERE app = ?1 AND commit_sha = ?2 AND image_sha = '' \
         AND NOT EXISTS (SELECT 1 FROM deploys AS same WHERE same.app = deploys.app \
           AND same.image_sha = ?3 AND same.namespace = deploys.namespace AND same.time = deploys.time) \
         RETURNING namespace, time",
        &[&app, &link.commit.as_str(), &image],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut effects = Vec::new();
    for (namespace, time) in resolved {
        let Ok(namespace) = Namespace::parse(&namespace) else {
            continue;
        };
        effects.push(Effect::DeployImage {
            app: link.app.clone(),
            namespace,
            image_sha: link.image_sha,
            time,
        });
        effects.extend(observe_deployed(tx, &link.app, &image, "", time)?);
    }
    // The image may have been deployed before the link arrived (a deploy
    // naming only its digest): the commit was shipped by its first deploy.
    let deployed: Option<i64> = tx.value(
        "SELECT MIN(time) FROM deploys WHERE app = ?1 AND image_sha = ?2",
        &[&app, &image],
    )?;
    if let Some(deployed) = deployed {
        effects.extend(observe_deployed(
            tx,
            &link.app,
            "",
            link.commit.as_str(),
            deployed,
        )?);
    }
    Ok(EventResult::New(effects))
}

/// Keeps the newest created and resolved time of a failure. Its row is
/// made to exist first (a no-op when it does), then locked (PostgreSQL: two
/// replicas updating one failure at once take turns, the second sees the
/// first one's commit), then updated only when this change is newer.
fn apply_failure(
    tx: &mut dyn Sql,
    failure: &Failure,
    delivery_id: &str,
    link_window: i64,
) -> Result<EventResult, DbError> {
    let app = failure.app.as_str();
    let issue = failure.issue_number.as_str();
    let time = failure.time.seconds();
    tx.execute(
        "INSERT INTO failures (app, issue_number) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        &[&app, &issue],
    )?;
    type Ends = (Option<i64>, Option<String>, Option<i64>, Option<String>);
    let stored: Ends = tx
        .row(
            &format!(
                "SELECT created, created_delivery, resolved, resolved_delivery FROM failures \
                 WHERE app = ?1 AND issue_number = ?2{}",
                tx.dialect().for_update()
            ),
            &[&app, &issue],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
        .unwrap_or_default();
    let (created, created_by, resolved, resolved_by) = stored;
    let (current, current_by) = match failure.change {
        FailureChange::Created => (created, created_by),
        FailureChange::Resolved => (resolved, resolved_by),
    };
    match current {
        Some(existing) if existing == time => return Ok(EventResult::Duplicate),
        Some(existing) if existing > time => {
            return Ok(EventResult::Outdated {
                superseded_by: current_by.unwrap_or_default(),
            })
        }
        _ => {}
    }
    let first = current.is_none();
    tx.execute(
        match failure.change {
            FailureChange::Created => {
                "UPDATE failures SET created = ?3, created_delivery = ?4 WHERE app = ?1 AND issue_number = ?2"
            }
            FailureChange::Resolved => {
                "UPDATE failures SET resolved = ?3, resolved_delivery = ?4 WHERE app = ?1 AND issue_number = ?2"
            }
        },
        &[&app, &issue, &time, &delivery_id],
    )?;
    let (before_created, before_resolved) = (created, resolved);
    let (created, resolved) = match failure.change {
        FailureChange::Created => (Some(time), resolved),
        FailureChange::Resolved => (created, Some(time)),
    };
    let open_since = open_since(created, resolved);
    let mut effects = vec![match failure.change {
        FailureChange::Created => Effect::FailureCreated {
            app: failure.app.clone(),
            issue_number: failure.issue_number.clone(),
            time,
            first,
            open_since,
        },
        FailureChange::Resolved => Effect::FailureResolved {
            app: failure.app.clone(),
            issue_number: failure.issue_number.clone(),
            time,
            first,
            open_since,
        },
    }];
    if let (Some(created), Some(resolved)) = (created, resolved) {
        effects.extend(observe_once(
            tx,
            TIME_TO_RESTORE,
            &failure.app,
            issue,
            resolved - created,
        )?);
        effects.extend(observe_linked_recoveries(
            tx,
            &failure.app,
            created - 1,
            created,
            link_window,
        )?);
    }
    // The deploys whose decision this change can move: those inside the
    // failure's open span before or after it (rework), and those in the
    // link window before either creation time (failed).
    let spans = [(before_created, before_resolved), (created, resolved)];
    let mut from = i64::MAX;
    let mut to = i64::MIN;
    for (created, resolved) in spans {
        let Some(created) = created else { continue };
        from = from.min(created - link_window);
        to = to.max(match resolved {
            Some(resolved) if resolved >= created => resolved.max(created),
            _ => i64::MAX,
        });
    }
    if from <= to {
        effects.extend(redecide(tx, &failure.app, from, to, link_window)?);
    }
    Ok(EventResult::New(effects))
}

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
fn redecide(
    tx: &mut dyn Sql,
    app: &App,
    from: i64,
    to: i64,
    link_window: i64,
) -> Result<Vec<Effect>, DbError> {
    let decisions = tx.rows(
        &format!(
            "SELECT d.namespace, d.image_sha, d.time, d.rework, d.failed, {}, {} \
             FROM deploys AS d INDEXED BY deploys_by_app_time \
             WHERE d.app = ?1 AND d.time >= ?2 AND d.time <= ?3",
            rework_now(),
            failed_now("?4")
        ),
        &[&app.as_str(), &from, &to, &link_window],
        |r| {
            Ok(Decision {
                namespace: r.get(0)?,
                image: r.get(1)?,
                time: r.get(2)?,
                rework: r.get::<i64>(3)? != 0,
                failed: r.get::<i64>(4)? != 0,
                rework_now: r.get(5)?,
                failed_now: r.get(6)?,
            })
        },
    )?;
    apply_decisions(tx, app, decisions)
}

/// A deploy `d` is rework when the source reported it so or a failure of
/// its app was open at its time.
fn rework_now() -> &'static str {
    "(d.rework_reported <> 0 OR EXISTS (SELECT 1 FROM failures AS f \
       WHERE f.app = d.app AND f.created IS NOT NULL AND f.created <= d.time \
       AND (f.resolved IS NULL OR f.resolved < f.created OR f.resolved >= d.time)))"
}

/// A deploy `d` failed when a failure of its app was created after it,
/// within `window` (a parameter) seconds, with no other deploy in between.
fn failed_now(window: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM failures AS f INDEXED BY failures_by_created \
           WHERE f.app = d.app AND f.created > d.time AND f.created <= d.time + {window} \
           AND NOT EXISTS (SELECT 1 FROM deploys AS later INDEXED BY deploys_by_app_time \
             WHERE later.app = d.app AND later.time > d.time AND later.time < f.created))"
    )
}

/// A failure `f`, resolved, is tied to a deploy when one of its app's
/// deploys lies in the `window` (a parameter) seconds before its creation.
fn linked_recovery(window: &str) -> String {
    format!(
        "f.resolved IS NOT NULL AND f.resolved >= f.created \
         AND EXISTS (SELECT 1 FROM deploys AS d INDEXED BY deploys_by_app_time WHERE d.app = f.app \
           AND d.time < f.created AND d.time >= f.created - {window})"
    )
}

/// A deploy's stored decisions and what the stored facts decide now.
struct Decision {
    namespace: String,
    image: String,
    time: i64,
    rework: bool,
    failed: bool,
    rework_now: bool,
    failed_now: bool,
}

/// Records and reports every decision of `decisions` (deploys of `app`)
/// that changed.
fn apply_decisions(
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
fn observe_linked_recoveries(
    tx: &mut dyn Sql,
    app: &App,
    after: i64,
    until: i64,
    link_window: i64,
) -> Result<Vec<Effect>, DbError> {
    let linked: Vec<(String, i64)> = tx.rows(
        &format!(
            "SELECT f.issue_number, f.resolved - f.created FROM failures AS f INDEXED BY failures_by_created \
             WHERE f.app = ?1 AND f.created > ?2 AND f.created <= ?3 AND {}",
            linked_recovery("?4")
        ),
        &[&app.as_str(), &after, &until, &link_window],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    observe_recoveries(tx, app, linked)
}

/// A recovery-time observation for each (failure, seconds) that has none.
fn observe_recoveries(
    tx: &mut dyn Sql,
    app: &App,
    linked: Vec<(String, i64)>,
) -> Result<Vec<Effect>, DbError> {
    let mut effects = Vec::new();
    for (issue, seconds) in linked {
        effects.extend(observe_once(
            tx,
            FAILED_DEPLOYMENT_RECOVERY,
            app,
            &issue,
            seconds,
        )?);
    }
    Ok(effects)
}
