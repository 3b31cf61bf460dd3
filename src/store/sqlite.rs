//! The embedded SQLite backend: schema migrations, the outcome rules applied
//! inside one transaction per batch, and the queries the view is rebuilt from.
//!
//! Runs only on the store's writer thread. Dedupe and ordering rules are
//! decided here, inside the transaction, never by callers.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::{CommitSink, FaultKind, RestoreWindows, Restored, StoreConfig};
use crate::config::Synchronous;
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

/// Embedded migrations, applied in order; `PRAGMA user_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_native_sources.sql"),
    include_str!("migrations/0003_ledger_admin.sql"),
    include_str!("migrations/0004_poll_state.sql"),
];

/// WAL size (in pages) at which the writer completes a checkpoint itself.
const WAL_RESTART_PAGES: u32 = 16_384;

const LEAD_TIME: &str = "lead_time";
const TIME_TO_RESTORE: &str = "time_to_restore";

pub fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Classifies errors that mean "the database cannot be written now".
pub fn fault_kind(error: &rusqlite::Error) -> Option<FaultKind> {
    let rusqlite::Error::SqliteFailure(failure, _) = error else {
        return None;
    };
    Some(match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => FaultKind::Busy,
        ErrorCode::DiskFull => FaultKind::Full,
        ErrorCode::ReadOnly => FaultKind::ReadOnly,
        ErrorCode::SystemIoFailure => FaultKind::Io,
        ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::NotADatabase => {
            FaultKind::Open
        }
        _ => FaultKind::Other,
    })
}

pub struct Database {
    conn: Connection,
    unauthenticated_rows: u64,
    /// Rows up to this seq have had their bodies pruned (retention).
    body_watermark: i64,
}

impl Database {
    pub fn open(config: &StoreConfig) -> rusqlite::Result<Database> {
        if let Some(dir) = config.path.parent() {
            // A missing directory is created; failing that, open() reports it.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open_with_flags(
            &config.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(config.busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some(format!("cannot switch to WAL journal (got {mode})")),
            ));
        }
        let synchronous = match config.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        // The checkpoint thread (`Checkpointer`) copies WAL frames into the
        // database in the background. It cannot finish while the writer keeps
        // appending, so the WAL would never restart and would grow without
        // bound; the writer's own checkpoint at WAL_RESTART_PAGES finds
        // little left to copy, completes, and lets the next transaction
        // reuse the WAL from its start. The page cache keeps hot index pages.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF; \
             PRAGMA wal_autocheckpoint = {WAL_RESTART_PAGES}; PRAGMA cache_size = -8192; \
             PRAGMA temp_store = MEMORY;"
        ))?;
        migrate(&conn)?;
        let unauthenticated_rows: i64 = conn.query_row(
            "SELECT COUNT(*) FROM deliveries WHERE authenticated = 0",
            [],
            |r| r.get(0),
        )?;
        Ok(Database {
            conn,
            unauthenticated_rows: unauthenticated_rows as u64,
            body_watermark: 0,
        })
    }

    /// Queues a redelivery of ledger row `original`: a new row, linked to
    /// it, with its body, headers and instance, in state `queued`.
    pub fn enqueue_replay(
        &mut self,
        original: i64,
        now_ms: i64,
    ) -> rusqlite::Result<Result<i64, ReplayRefusal>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<(bool, bool, String)> = tx
            .query_row(
                "SELECT authenticated, body IS NOT NULL, state FROM deliveries WHERE seq = ?1",
                params![original],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
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
        tx.execute(
            "INSERT INTO deliveries (delivery_id, source, event, received_at_ms, outcome, reason, detail, \
             event_keys, superseded_by, authenticated, body, headers, instance, apps, replay_of, state, \
             attempts, next_attempt_ms) \
             SELECT delivery_id, source, event, ?2, '', NULL, 'queued for redelivery', '[]', NULL, \
             authenticated, body, headers, instance, '[]', seq, 'queued', 0, ?2 \
             FROM deliveries WHERE seq = ?1",
            params![original, now_ms],
        )?;
        let row = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Ok(row))
    }

    /// Moves a queued row to `processing`, or to `errored` with the error
    /// and the time of the next attempt (`None`: no more attempts).
    pub fn mark(
        &mut self,
        row: i64,
        state: State,
        error: Option<&str>,
        next_attempt_ms: Option<i64>,
    ) -> rusqlite::Result<()> {
        // An attempt counts when it starts: one that never finishes (a crash,
        // a panic) still uses one up.
        let attempted = i64::from(state == State::Processing);
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = ?2, error = ?3, next_attempt_ms = ?4, \
                 attempts = attempts + ?5 WHERE seq = ?1 AND state <> 'done'",
            )?
            .execute(params![
                row,
                state.as_str(),
                error,
                next_attempt_ms,
                attempted
            ])?;
        Ok(())
    }

    /// One bounded step of retention: at most `batch` bodies dropped and
    /// `batch` rows deleted per kind, in one short transaction. Each step
    /// seeks to its cutoff through an index and touches only what it
    /// removes; `body_excess` (bytes of bodies beyond the total cap, measured
    /// by the caller on a read connection) drops the oldest bodies too.
    pub fn prune(
        &mut self,
        policy: &RetentionPolicy,
        now_ms: i64,
        batch: u32,
        body_excess: u64,
    ) -> rusqlite::Result<Pruned> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let day_ms = 86_400_000i64;
        // The newest row older than a cutoff, found with one seek.
        let last_before = |cutoff: i64| -> rusqlite::Result<i64> {
            tx.query_row(
                "SELECT seq FROM deliveries INDEXED BY deliveries_by_received_at \
                 WHERE received_at_ms < ?1 ORDER BY received_at_ms DESC LIMIT 1",
                params![cutoff],
                |r| r.get(0),
            )
            .optional()
            .map(|seq| seq.unwrap_or(0))
        };
        // Bodies of finished rows (not of redeliveries still to run), from
        // the watermark up: rows below it have none left to drop, so no
        // index on bodies is needed (one would cost every insert).
        let body_seq = last_before(now_ms - policy.body_days as i64 * day_ms)?;
        let candidates: Vec<(i64, bool, bool)> = tx
            .prepare_cached(
                "SELECT seq, body IS NOT NULL, next_attempt_ms IS NOT NULL FROM deliveries \
                 WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            )?
            .query_map(params![self.body_watermark, body_seq, batch], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let scanned_all = candidates.len() >= batch as usize;
        let mut watermark = self.body_watermark;
        let mut held = false;
        let mut bodies = 0;
        let mut drop_body =
            tx.prepare_cached("UPDATE deliveries SET body = NULL WHERE seq = ?1")?;
        for (seq, has_body, pending) in candidates {
            if pending {
                // Kept until it is done; the watermark waits for it.
                held = true;
                continue;
            }
            if has_body {
                drop_body.execute(params![seq])?;
                bodies += 1;
            }
            if !held {
                watermark = seq;
            }
        }
        if body_excess > 0 && bodies < batch as usize {
            let oldest: Vec<(i64, i64)> = tx
                .prepare_cached(
                    "SELECT seq, length(body) FROM deliveries WHERE seq > ?1 AND body IS NOT NULL \
                     AND next_attempt_ms IS NULL ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![watermark, batch], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut excess = body_excess;
            for (seq, len) in oldest {
                if excess == 0 {
                    break;
                }
                drop_body.execute(params![seq])?;
                excess = excess.saturating_sub(len as u64);
                bodies += 1;
            }
        }
        let rows_seq = last_before(now_ms - policy.ledger_days as i64 * day_ms)?;
        let rows = tx
            .prepare_cached(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries \
                 WHERE seq <= ?1 AND next_attempt_ms IS NULL ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![rows_seq, batch])?;
        let mut events = 0;
        if policy.events_days > 0 {
            let cutoff = now_ms / 1000 - policy.events_days as i64 * 86_400;
            for table in ["commits", "deploys"] {
                // Both tables are keyed without rowid; their time index
                // bounds the step (rows sharing the last second go too).
                events += tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE time IN (SELECT time FROM {table} WHERE time < ?1 \
                         ORDER BY time LIMIT ?2)"
                    ),
                    params![cutoff, batch],
                )?;
            }
            // Failures go once resolved before the cutoff; open ones stay.
            events += tx.execute(
                "DELETE FROM failures WHERE (app, issue_number) IN (SELECT app, issue_number FROM failures \
                 WHERE resolved IS NOT NULL AND resolved < ?1 AND coalesce(created, 0) < ?1 LIMIT ?2)",
                params![cutoff, batch],
            )?;
        }
        drop(drop_body);
        tx.commit()?;
        self.body_watermark = watermark;
        let limit = batch as usize;
        Ok(Pruned {
            bodies,
            rows,
            events,
            more: scanned_all || rows >= limit || events >= limit,
        })
    }

    /// Commits a one-row write: fails when a delivery's commit would (the
    /// write lock is held elsewhere, the file is read-only, the disk is
    /// full). A rolled-back transaction writes nothing and could not tell a
    /// full disk.
    pub fn probe(&mut self) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?1)")?
            .execute(params![now_seconds()])?;
        Ok(())
    }

    /// Checkpoints the WAL and closes the connection.
    pub fn close(self) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        if let Err((_, error)) = self.conn.close() {
            tracing::warn!(error = %error, "Store did not close cleanly");
        }
    }

    /// Applies a batch in one transaction (group commit). A delivery that
    /// fails for a reason other than a database fault (a bug, a constraint)
    /// must not take the others down: the batch is then rolled back and
    /// replayed one transaction per delivery, so that only that one fails.
    /// (Savepoints per delivery would isolate it too, but each costs a
    /// statement journal on every delivery of every batch.) A fault (busy,
    /// full, read-only, I/O) fails the whole batch.
    pub fn record_batch(
        &mut self,
        deliveries: &[&Delivery],
        max_body_bytes: usize,
        max_unauthenticated_rows: u64,
    ) -> rusqlite::Result<Vec<rusqlite::Result<Applied>>> {
        match self.record_in_one_transaction(
            deliveries,
            max_body_bytes,
            max_unauthenticated_rows,
        )? {
            Ok(results) => Ok(results.into_iter().map(Ok).collect()),
            Err(failed) => {
                tracing::error!(
                    delivery_id = %deliveries[failed].id,
                    "A delivery could not be applied; replaying its batch one delivery at a time"
                );
                let mut results = Vec::with_capacity(deliveries.len());
                for delivery in deliveries {
                    match self.record_in_one_transaction(
                        &[delivery],
                        max_body_bytes,
                        max_unauthenticated_rows,
                    )? {
                        Ok(mut one) => results.push(Ok(one.remove(0))),
                        Err(_) => results.push(Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                            Some(format!("delivery {} could not be applied", delivery.id)),
                        ))),
                    }
                }
                Ok(results)
            }
        }
    }

    /// The facts of one poll and the stream state that produced them (and
    /// the streams it let go, `forget`), in one transaction: both commit or neither does, so a crash before the
    /// commit only repeats the fetch. A delivery that cannot be applied
    /// fails the whole poll (its state is not advanced).
    pub fn record_polled(
        &mut self,
        deliveries: &[&Delivery],
        cursors: &[PollCursor],
        forget: &[String],
        max_body_bytes: usize,
        now_ms: i64,
    ) -> rusqlite::Result<Vec<Applied>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            results.push(record_one(&tx, delivery, max_body_bytes)?);
        }
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO poll_state (stream, etag, last_modified, watermark, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (stream) DO UPDATE SET \
                 etag = excluded.etag, last_modified = excluded.last_modified, \
                 watermark = excluded.watermark, updated_ms = excluded.updated_ms",
            )?;
            for cursor in cursors {
                upsert.execute(params![
                    cursor.stream,
                    cursor.etag,
                    cursor.last_modified,
                    cursor.watermark,
                    now_ms
                ])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM poll_state WHERE stream = ?1")?;
            for stream in forget {
                delete.execute(params![stream])?;
            }
        }
        tx.commit()?;
        Ok(results)
    }

    /// One transaction for `deliveries`: `Ok(Err(index))` (rolled back) when
    /// delivery `index` failed for a reason other than a database fault.
    fn record_in_one_transaction(
        &mut self,
        deliveries: &[&Delivery],
        max_body_bytes: usize,
        max_unauthenticated_rows: u64,
    ) -> rusqlite::Result<Result<Vec<Applied>, usize>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(deliveries.len());
        let mut added_unauthenticated = 0u64;
        for (index, delivery) in deliveries.iter().enumerate() {
            match record_one(&tx, delivery, max_body_bytes) {
                Ok(result) => {
                    added_unauthenticated += u64::from(!delivery.authenticated);
                    results.push(result);
                }
                Err(error) if fault_kind(&error).is_some_and(|k| k != FaultKind::Other) => {
                    return Err(error)
                }
                Err(error) => {
                    tracing::error!(error = %error, delivery_id = %delivery.id, "Delivery could not be applied");
                    drop(tx);
                    return Ok(Err(index));
                }
            }
        }
        let total = self.unauthenticated_rows + added_unauthenticated;
        let excess = total.saturating_sub(max_unauthenticated_rows);
        if excess > 0 {
            tx.execute(
                "DELETE FROM deliveries WHERE seq IN \
                 (SELECT seq FROM deliveries WHERE authenticated = 0 ORDER BY seq LIMIT ?1)",
                params![excess as i64],
            )?;
        }
        tx.commit()?;
        self.unauthenticated_rows = total - excess;
        Ok(Ok(results))
    }

    /// Streams every fact the view needs to `sink`.
    pub fn restore(
        &mut self,
        now: i64,
        windows: RestoreWindows,
        sink: &dyn CommitSink,
    ) -> rusqlite::Result<()> {
        let commit_since = now - windows.commit_window.as_secs() as i64;
        let exposure_since = now - windows.exposure_window.as_secs() as i64;
        let conn = &self.conn;
        let mut items: Vec<Restored> = Vec::new();

        // Each row found through `commits_by_time` costs a seek into the
        // table's primary key; when the window holds much of the history, a
        // sequential scan of the table (`+time` keeps the planner off the
        // index) reads the same rows three times faster.
        let oldest: Option<i64> =
            conn.query_row("SELECT MIN(time) FROM commits", [], |r| r.get(0))?;
        let scan = oldest.is_some_and(|oldest| commit_since - oldest < (now - oldest) * 3 / 4);
        let mut stmt = conn.prepare(if scan {
            "SELECT app, commit_sha, image_sha, namespace, commit_link, time FROM commits WHERE +time >= ?1"
        } else {
            "SELECT app, commit_sha, image_sha, namespace, commit_link, time FROM commits WHERE time >= ?1"
        })?;
        let rows = stmt.query_map([commit_since], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        for row in rows {
            let (app, commit, image_sha, namespace, link, time) = row?;
            let (Ok(app), Ok(commit)) = (App::parse(&app), CommitSha::parse(&commit)) else {
                continue;
            };
            items.push(Restored::Commit {
                app,
                commit,
                image_sha: ImageSha::parse(&image_sha).ok(),
                namespace: Namespace::parse(&namespace).ok(),
                commit_link: CommitLink::parse(&link).ok(),
                time,
            });
        }

        let mut stmt = conn.prepare(
            // Without the hint the planner scans every deploy to save a sort
            // of the few inside the exposure window.
            "SELECT app, namespace, image_sha, MAX(time) FROM deploys INDEXED BY deploys_by_time \
             WHERE time >= ?1 GROUP BY app, namespace, image_sha",
        )?;
        let rows = stmt.query_map([exposure_since], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (app, namespace, image_sha, time) = row?;
            if let (Ok(app), Ok(namespace), Ok(image_sha)) = (
                App::parse(&app),
                Namespace::parse(&namespace),
                ImageSha::parse(&image_sha),
            ) {
                items.push(Restored::Deploy {
                    app,
                    namespace,
                    image_sha,
                    time,
                });
            }
        }

        let mut stmt = conn.prepare(
            "SELECT app, issue_number, created, resolved FROM failures WHERE created >= ?1 OR resolved >= ?1",
        )?;
        let rows = stmt.query_map([exposure_since], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        for row in rows {
            let (app, issue, created, resolved) = row?;
            if let (Ok(app), Ok(issue_number)) = (App::parse(&app), IssueNumber::parse(&issue)) {
                items.push(Restored::Failure {
                    app,
                    issue_number,
                    created,
                    resolved,
                });
            }
        }

        let mut stmt = conn.prepare(
            "SELECT app, namespace, COUNT(*), MAX(time) FROM deploys GROUP BY app, namespace",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (app, namespace, count, last) = row?;
            if let (Ok(app), Ok(namespace)) = (App::parse(&app), Namespace::parse(&namespace)) {
                items.push(Restored::DeployCount {
                    app,
                    namespace,
                    count: count as u64,
                    last,
                });
            }
        }

        let mut stmt = conn.prepare(
            "SELECT app, issue_number, created FROM failures \
             WHERE created IS NOT NULL AND (resolved IS NULL OR resolved < created)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (app, issue, created) = row?;
            if let (Ok(app), Ok(issue_number)) = (App::parse(&app), IssueNumber::parse(&issue)) {
                items.push(Restored::OpenFailure {
                    app,
                    issue_number,
                    created,
                });
            }
        }

        let mut stmt =
            conn.prepare("SELECT app, COUNT(created), COUNT(resolved) FROM failures GROUP BY app")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (app, created, resolved) = row?;
            if let Ok(app) = App::parse(&app) {
                items.push(Restored::FailureCounts {
                    app,
                    created: created as u64,
                    resolved: resolved as u64,
                });
            }
        }
        sink.restore(&mut items.drain(..));

        // Observations can be many: stream them rather than collect them.
        let mut stmt = conn.prepare("SELECT kind, app, seconds FROM observations")?;
        let mut rows = stmt.query([])?;
        let mut observations = std::iter::from_fn(|| loop {
            let row = rows.next().ok().flatten()?;
            let (Ok(kind), Ok(app), Ok(seconds)) = (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, i64>(2),
            ) else {
                continue;
            };
            let Ok(app) = App::parse(&app) else { continue };
            let seconds = seconds as f64;
            match kind.as_str() {
                LEAD_TIME => return Some(Restored::LeadTime { app, seconds }),
                TIME_TO_RESTORE => return Some(Restored::TimeToRestore { app, seconds }),
                _ => continue,
            }
        });
        sink.restore(&mut observations);
        Ok(())
    }
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied as usize > MIGRATIONS.len() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "the database schema is version {applied}, newer than this binary knows ({}); \
                 run a newer hookgauge",
                MIGRATIONS.len()
            )),
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK;");
        })?;
        tracing::info!(version, "Store schema migrated");
    }
    Ok(())
}

/// What recording one delivery produced: its outcome and committed effects.
pub type Applied = (Recorded, Vec<Effect>);

/// A failure is open from its creation until a resolution at or after it.
fn open_since(created: Option<i64>, resolved: Option<i64>) -> Option<i64> {
    created.filter(|c| resolved.is_none_or(|r| r < *c))
}

/// Copies committed WAL frames into the database file from its own
/// connection, so that the writer never does it (nor its fsync) while
/// deliveries wait for their commit. PASSIVE: never blocks the writer.
pub struct Checkpointer {
    path: std::path::PathBuf,
    busy_timeout: std::time::Duration,
    conn: Option<Connection>,
}

impl Checkpointer {
    pub fn new(path: std::path::PathBuf, busy_timeout: std::time::Duration) -> Self {
        Checkpointer {
            path,
            busy_timeout,
            conn: None,
        }
    }

    pub fn run(&mut self) {
        if self.conn.is_none() {
            // The writer creates the file; until then there is nothing to do.
            if !self.path.exists() {
                return;
            }
            match Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| conn.busy_timeout(self.busy_timeout).map(|_| conn))
            {
                Ok(conn) => self.conn = Some(conn),
                Err(error) => {
                    tracing::debug!(error = %error, "Checkpointer cannot open the store yet");
                    return;
                }
            }
        }
        let Some(conn) = &self.conn else { return };
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %error, "Checkpoint failed; reopening");
            self.conn = None;
        }
    }
}

/// What applying one event did.
enum EventResult {
    New(Vec<Effect>),
    Duplicate,
    Outdated { superseded_by: String },
}

fn record_one(
    tx: &Connection,
    delivery: &Delivery,
    max_body_bytes: usize,
) -> rusqlite::Result<Applied> {
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
            if delivery_seen(tx, delivery)? {
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
                    match apply_event(tx, event, delivery.id.as_str())? {
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
    if let Some(row) = delivery.queued_row {
        // A redelivery finishing: its queued row takes the outcome.
        let updated = tx
            .prepare_cached(
                "UPDATE deliveries SET event = ?2, outcome = ?3, reason = ?4, detail = ?5, event_keys = ?6, \
                 superseded_by = ?7, apps = ?8, state = 'done', error = NULL, next_attempt_ms = NULL \
                 WHERE seq = ?1 AND state = 'processing'",
            )?
            .execute(params![
            row,
            delivery.event,
            outcome.as_str(),
            reason,
            detail,
            keys,
            superseded_by,
            apps,
        ])?;
        if updated != 1 {
            // The row went (retention) or was finished elsewhere: nothing of
            // this delivery may commit without its ledger row.
            return Err(rusqlite::Error::QueryReturnedNoRows);
        }
    } else {
        let mut insert = tx.prepare_cached(
            "INSERT INTO deliveries (delivery_id, source, event, received_at_ms, outcome, reason, detail, \
             event_keys, superseded_by, authenticated, body, headers, instance, apps) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        insert.execute(params![
            delivery.id.as_str(),
            delivery.source,
            delivery.event,
            delivery.received_at_ms,
            outcome.as_str(),
            reason,
            detail,
            keys,
            superseded_by,
            delivery.authenticated,
            body,
            delivery.headers,
            delivery.instance,
            apps,
        ])?;
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

fn delivery_seen(tx: &Connection, delivery: &Delivery) -> rusqlite::Result<bool> {
    let mut stmt = tx.prepare_cached(
        "SELECT 1 FROM deliveries WHERE source = ?1 AND delivery_id = ?2 \
         AND outcome IN ('accepted', 'duplicate', 'outdated') LIMIT 1",
    )?;
    stmt.exists(params![delivery.source, delivery.id.as_str()])
}

fn apply_event(tx: &Connection, event: &Event, delivery_id: &str) -> rusqlite::Result<EventResult> {
    match event {
        Event::Commit(commit) => apply_commit(tx, commit, delivery_id),
        Event::Deploy(deploy) => apply_deploy(tx, deploy, delivery_id),
        Event::Failure(failure) => apply_failure(tx, failure, delivery_id),
        Event::Link(link) => apply_link(tx, link, delivery_id),
    }
}

fn image_text(image_sha: Option<&ImageSha>) -> String {
    image_sha.map(ToString::to_string).unwrap_or_default()
}

/// Records a lead-time observation for `commit` unless one exists; returns
/// the effect when it is new. Negative spans (clock skew) are not observed.
fn observe_once(
    tx: &Connection,
    kind: &str,
    app: &App,
    subject: &str,
    seconds: i64,
) -> rusqlite::Result<Option<Effect>> {
    if seconds < 0 {
        return Ok(None);
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO observations (kind, app, subject, seconds) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?;
    if stmt.execute(params![kind, app.as_str(), subject, seconds])? == 0 {
        return Ok(None);
    }
    let app = app.clone();
    let seconds = seconds as f64;
    Ok(Some(if kind == LEAD_TIME {
        Effect::LeadTime { app, seconds }
    } else {
        Effect::TimeToRestore { app, seconds }
    }))
}

fn apply_commit(
    tx: &Connection,
    commit: &Commit,
    delivery_id: &str,
) -> rusqlite::Result<EventResult> {
    let app = commit.app.as_str();
    let image = image_text(commit.image_sha.as_ref());
    let mut insert = tx.prepare_cached(
        "INSERT INTO commits (app, commit_sha, image_sha, namespace, commit_link, time, delivery_id, pushed_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?8 THEN \
           (SELECT COALESCE(MAX(pushed_seq), 0) + 1 FROM commits WHERE app = ?1 AND pushed_seq IS NOT NULL) END) \
         ON CONFLICT DO NOTHING",
    )?;
    let inserted = insert.execute(params![
        app,
        commit.commit.as_str(),
        image,
        commit
            .namespace
            .as_ref()
            .map(Namespace::as_str)
            .unwrap_or(""),
        commit
            .commit_link
            .as_ref()
            .map(CommitLink::as_str)
            .unwrap_or(""),
        commit.time.seconds(),
        delivery_id,
        commit.pushed,
    ])?;
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
    // A deploy may have arrived first: its earliest time joins this commit.
    let mut first_deploy = tx.prepare_cached(
        "SELECT MIN(time) FROM (\
           SELECT time FROM deploys WHERE app = ?1 AND image_sha = ?2 AND ?2 <> '' \
           UNION ALL SELECT time FROM deploys WHERE app = ?1 AND commit_sha = ?3)",
    )?;
    let deployed: Option<i64> = first_deploy
        .query_row(params![app, image, commit.commit.as_str()], |r| r.get(0))
        .optional()?
        .flatten();
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
    tx: &Connection,
    app: &App,
    commit: &CommitSha,
    deployed: i64,
) -> rusqlite::Result<Vec<Effect>> {
    let mut position = tx.prepare_cached(
        "SELECT MIN(pushed_seq) FROM commits WHERE app = ?1 AND commit_sha = ?2 AND pushed_seq IS NOT NULL",
    )?;
    let Some(seq): Option<i64> = position
        .query_row(params![app.as_str(), commit.as_str()], |r| r.get(0))
        .optional()?
        .flatten()
    else {
        return Ok(Vec::new());
    };
    let mut previous = tx.prepare_cached(
        "SELECT c.pushed_seq FROM commits AS c INDEXED BY commits_by_pushed_seq \
         WHERE c.app = ?1 AND c.pushed_seq IS NOT NULL AND c.pushed_seq < ?2 AND EXISTS (\
           SELECT 1 FROM deploys d WHERE d.app = c.app AND d.commit_sha = c.commit_sha) \
         ORDER BY c.pushed_seq DESC LIMIT 1",
    )?;
    let since: i64 = previous
        .query_row(params![app.as_str(), seq], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let mut shipped = tx.prepare_cached(
        "SELECT commit_sha, MIN(time) FROM commits INDEXED BY commits_by_pushed_seq \
         WHERE app = ?1 AND pushed_seq IS NOT NULL AND pushed_seq > ?2 AND pushed_seq <= ?3 \
         GROUP BY commit_sha",
    )?;
    let commits: Vec<(String, i64)> = shipped
        .query_map(params![app.as_str(), since, seq], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    observe_lead_times(tx, app, commits, deployed)
}

/// A lead-time observation from a deploy at `deployed` for each (commit,
/// commit time) that has none yet.
fn observe_lead_times(
    tx: &Connection,
    app: &App,
    commits: Vec<(String, i64)>,
    deployed: i64,
) -> rusqlite::Result<Vec<Effect>> {
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

/// Every commit built into `image` (`''`: none) or named `commit` that has
/// no lead time yet gets one from a deploy at `deployed`.
fn observe_deployed(
    tx: &Connection,
    app: &App,
    image: &str,
    commit: &str,
    deployed: i64,
) -> rusqlite::Result<Vec<Effect>> {
    let mut joined = tx.prepare_cached(
        "SELECT commit_sha, MIN(time) FROM (\
           SELECT commit_sha, time FROM commits INDEXED BY commits_by_image WHERE app = ?1 AND image_sha = ?2 AND ?2 <> '' \
           UNION ALL SELECT commit_sha, time FROM commits WHERE app = ?1 AND commit_sha = ?3) \
         GROUP BY commit_sha",
    )?;
    let commits: Vec<(String, i64)> = joined
        .query_map(params![app.as_str(), image, commit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    observe_lead_times(tx, app, commits, deployed)
}

fn apply_deploy(
    tx: &Connection,
    deploy: &Deploy,
    delivery_id: &str,
) -> rusqlite::Result<EventResult> {
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
    // and the same image or the same commit.
    let mut seen = tx.prepare_cached(
        "SELECT 1 FROM deploys WHERE ?4 <> '' AND app = ?1 AND image_sha = ?4 AND namespace = ?2 AND time = ?3 \
         UNION ALL SELECT 1 FROM deploys INDEXED BY deploys_by_commit \
           WHERE ?5 <> '' AND app = ?1 AND commit_sha = ?5 AND time = ?3 AND namespace = ?2 \
         LIMIT 1",
    )?;
    if seen.exists(params![app, deploy.namespace.as_str(), time, image, commit])? {
        return Ok(EventResult::Duplicate);
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO deploys (app, namespace, time, image_sha, commit_sha, environment, delivery_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
    )?;
    let inserted = insert.execute(params![
        app,
        deploy.namespace.as_str(),
        time,
        image,
        commit,
        deploy.environment.as_deref().unwrap_or(""),
        delivery_id,
    ])?;
    if inserted == 0 {
        return Ok(EventResult::Duplicate);
    }
    let mut effects = vec![Effect::Deploy {
        app: deploy.app.clone(),
        namespace: deploy.namespace.clone(),
        image_sha,
        time,
    }];
    // Every commit built into this image (or named by the deploy) that has no
    // lead time yet gets one: this is its first deployment we know of.
    effects.extend(observe_deployed(tx, &deploy.app, &image, commit, time)?);
    if let Some(commit) = &deploy.commit {
        effects.extend(observe_shipped(tx, &deploy.app, commit, time)?);
    }
    Ok(EventResult::New(effects))
}

/// The image most recently linked to `commit` of `app`, if any.
fn latest_link(
    tx: &Connection,
    app: &App,
    commit: &CommitSha,
) -> rusqlite::Result<Option<ImageSha>> {
    let mut stmt = tx.prepare_cached(
        "SELECT image_sha FROM links WHERE app = ?1 AND commit_sha = ?2 ORDER BY time DESC, image_sha LIMIT 1",
    )?;
    let image: Option<String> = stmt
        .query_row(params![app.as_str(), commit.as_str()], |r| r.get(0))
        .optional()?;
    Ok(image.and_then(|i| ImageSha::parse(&i).ok()))
}

/// Records a commit→digest link and gives its image to the deploys of that
/// commit that were stored without one.
fn apply_link(tx: &Connection, link: &Link, delivery_id: &str) -> rusqlite::Result<EventResult> {
    let app = link.app.as_str();
    let image = link.image_sha.to_string();
    let mut insert = tx.prepare_cached(
        "INSERT INTO links (app, commit_sha, image_sha, time, delivery_id) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT DO NOTHING",
    )?;
    if insert.execute(params![
        app,
        link.commit.as_str(),
        image,
        link.time.seconds(),
        delivery_id
    ])? == 0
    {
        return Ok(EventResult::Duplicate);
    }
    let mut resolve = tx.prepare_cached(
        "UPDATE deploys SET image_sha = ?3 WHERE app = ?1 AND commit_sha = ?2 AND image_sha = '' \
         RETURNING namespace, time",
    )?;
    let resolved: Vec<(String, i64)> = resolve
        .query_map(params![app, link.commit.as_str(), image], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
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
    Ok(EventResult::New(effects))
}

fn apply_failure(
    tx: &Connection,
    failure: &Failure,
    delivery_id: &str,
) -> rusqlite::Result<EventResult> {
    let app = failure.app.as_str();
    let issue = failure.issue_number.as_str();
    let time = failure.time.seconds();
    let mut select = tx.prepare_cached(
        "SELECT created, created_delivery, resolved, resolved_delivery FROM failures \
         WHERE app = ?1 AND issue_number = ?2",
    )?;
    type Ends = (Option<i64>, Option<String>, Option<i64>, Option<String>);
    let stored: Option<Ends> = select
        .query_row(params![app, issue], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let (created, created_by, resolved, resolved_by) = stored.clone().unwrap_or_default();
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
    let sql = match (stored.is_some(), failure.change) {
        (false, FailureChange::Created) => {
            "INSERT INTO failures (app, issue_number, created, created_delivery) VALUES (?1, ?2, ?3, ?4)"
        }
        (false, FailureChange::Resolved) => {
            "INSERT INTO failures (app, issue_number, resolved, resolved_delivery) VALUES (?1, ?2, ?3, ?4)"
        }
        (true, FailureChange::Created) => {
            "UPDATE failures SET created = ?3, created_delivery = ?4 WHERE app = ?1 AND issue_number = ?2"
        }
        (true, FailureChange::Resolved) => {
            "UPDATE failures SET resolved = ?3, resolved_delivery = ?4 WHERE app = ?1 AND issue_number = ?2"
        }
    };
    tx.prepare_cached(sql)?
        .execute(params![app, issue, time, delivery_id])?;
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
    }
    Ok(EventResult::New(effects))
}
