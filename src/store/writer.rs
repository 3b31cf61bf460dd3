//! The writer thread: the one owner of the store's write connection. It
//! takes commands from the [`Store`](super::Store) handle, commits
//! deliveries in batches (group commit: every delivery waiting when a
//! commit starts goes into it), answers each only after the commit, and
//! runs the replay, retention and poll-state writes between batches. It
//! opens (and reopens after faults) the database and restores the view.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::rules::{self, Committed};
use super::sql::{DbError, Sql};
use super::{
    checkpoint, cursors, postgres, replay, restore, retention, sqlite, Command, CommitSink,
    FaultKind, Location, PollCursor, Pruned, RestoreWindows, RetentionPolicy, StoreConfig,
    StoreError, Unusable, FAULT_RETRY_AFTER, MAX_BATCH, REOPEN_INTERVAL,
};
use crate::clock::now_seconds;
use crate::ledger::{Delivery, Recorded};

/// An open database of either backend.
pub(super) enum Backend {
    Sqlite(sqlite::Database),
    Postgres(Box<postgres::Database>),
}

impl Backend {
    fn open(
        config: &StoreConfig,
        cursor: &Arc<Mutex<postgres::FeedCursor>>,
        wal_restart: &Arc<checkpoint::WalRestart>,
    ) -> Result<Backend, DbError> {
        Ok(match &config.location {
            Location::Sqlite(path) => Backend::Sqlite(sqlite::Database::open(
                path,
                config,
                Arc::clone(wal_restart),
            )?),
            Location::Postgres(pg) => {
                Backend::Postgres(Box::new(postgres::Database::open(pg, Arc::clone(cursor))?))
            }
        })
    }

    fn transaction<T>(
        &mut self,
        f: impl FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match self {
            Backend::Sqlite(db) => db.transaction(f),
            Backend::Postgres(db) => db.transaction(f),
        }
    }

    /// One transaction of deliveries, whose effects the other replicas
    /// must see too (PostgreSQL: a change feed row, when there are any).
    fn publishing(
        &mut self,
        f: impl FnMut(&mut dyn Sql) -> Result<Vec<rules::Applied>, DbError>,
    ) -> Result<Committed, DbError> {
        match self {
            Backend::Sqlite(db) => {
                let applied = db.transaction(f)?;
                Ok(Committed {
                    effects: rules::effects(&applied),
                    applied,
                    seq: None,
                })
            }
            Backend::Postgres(db) => db.publishing(f),
        }
    }

    /// Hands what a commit changed to the view.
    fn applied(&mut self, committed: &Committed, sink: &dyn CommitSink) {
        match self {
            Backend::Sqlite(_) => sink.apply(&committed.effects),
            Backend::Postgres(db) => {
                if let Some(seq) = committed.seq {
                    db.apply_through(seq, &committed.effects, sink);
                }
            }
        }
    }

    fn restore(&mut self, windows: RestoreWindows, sink: &dyn CommitSink) -> Result<(), DbError> {
        let now = now_seconds();
        match self {
            Backend::Sqlite(db) => db.read(|sql| restore::restore(sql, now, windows, sink)),
            Backend::Postgres(db) => db.restore(
                |sql, buffer| restore::restore(sql, now, windows, buffer),
                sink,
            ),
        }
    }

    fn close(self) {
        match self {
            Backend::Sqlite(db) => db.close(),
            Backend::Postgres(db) => db.close(),
        }
    }
}

pub(super) struct Writer {
    config: StoreConfig,
    sink: Arc<dyn CommitSink>,
    /// Tells the helper threads (checkpoints, lock, feed) to stop; joined
    /// before the final close.
    stop_helpers: Arc<AtomicBool>,
    helpers: Vec<std::thread::JoinHandle<()>>,
    cursor: Arc<Mutex<postgres::FeedCursor>>,
    /// Shared with the SQLite checkpoint thread.
    wal_restart: Arc<checkpoint::WalRestart>,
    db: Option<Backend>,
    restored: bool,
    /// Unauthenticated ledger rows, counted at open (SQLite, whose only
    /// writer this is); `None`: the database counts them (PostgreSQL).
    unauthenticated_rows: Option<u64>,
    /// Rows up to this seq have had their bodies pruned (retention).
    body_watermark: i64,
    last_open_attempt: Option<Instant>,
    last_open_error: Option<StoreError>,
    /// The fault of the last batch of deliveries, when it failed on one
    /// and no batch has committed since.
    batch_fault: Option<(Instant, StoreError)>,
}

impl Writer {
    pub(super) fn new(
        config: StoreConfig,
        sink: Arc<dyn CommitSink>,
        stop_helpers: Arc<AtomicBool>,
        helpers: Vec<std::thread::JoinHandle<()>>,
        cursor: Arc<Mutex<postgres::FeedCursor>>,
        wal_restart: Arc<checkpoint::WalRestart>,
    ) -> Self {
        Writer {
            config,
            sink,
            stop_helpers,
            helpers,
            cursor,
            wal_restart,
            db: None,
            restored: false,
            unauthenticated_rows: None,
            body_watermark: 0,
            last_open_attempt: None,
            last_open_error: None,
            batch_fault: None,
        }
    }

    /// Opens (and migrates) the database if it is not open; restores the view
    /// on the first success. Attempts are spaced by [`REOPEN_INTERVAL`].
    pub(super) fn ensure_open(&mut self) -> Result<&mut Backend, StoreError> {
        if self.db.is_none() {
            let recently = self
                .last_open_attempt
                .is_some_and(|at| at.elapsed() < REOPEN_INTERVAL);
            if recently {
                return Err(self.last_open_error.clone().unwrap_or_else(|| {
                    StoreError::unavailable(FaultKind::Open, Unusable::NotOpen)
                }));
            }
            self.last_open_attempt = Some(Instant::now());
            match Backend::open(&self.config, &self.cursor, &self.wal_restart) {
                Ok(mut db) => {
                    if !self.restored {
                        db.restore(self.config.windows, &*self.sink)
                            .map_err(|e| self.open_failed(e))?;
                        self.restored = true;
                        self.follow_feed();
                    }
                    if let Backend::Sqlite(_) = db {
                        let counted: i64 = db
                            .transaction(|tx| {
                                tx.value(
                                    "SELECT COUNT(*) FROM deliveries WHERE authenticated = 0",
                                    &[],
                                )
                            })
                            .map_err(|e| self.open_failed(e))?;
                        self.unauthenticated_rows = Some(counted as u64);
                    }
                    if self.last_open_error.take().is_some() {
                        tracing::info!(store = %self.config.location.describe(), "Store reopened");
                    }
                    self.db = Some(db);
                }
                Err(e) => return Err(self.open_failed(e)),
            }
        }
        Ok(self.db.as_mut().expect("opened above"))
    }

    /// Shared store: starts following the other replicas' commits, from
    /// the cursor the restore left (never before it: what the feed holds
    /// before the restore's snapshot is in the restored view already).
    fn follow_feed(&mut self) {
        let Location::Postgres(pg) = &self.config.location else {
            return;
        };
        let (pg, cursor, sink, stop) = (
            pg.as_ref().clone(),
            Arc::clone(&self.cursor),
            Arc::clone(&self.sink),
            Arc::clone(&self.stop_helpers),
        );
        self.helpers.push(
            std::thread::Builder::new()
                .name("hookgauge-follow".into())
                .spawn(move || postgres::follow(pg, cursor, sink, stop))
                .expect("the change feed thread can be spawned"),
        );
    }

    fn open_failed(&mut self, error: DbError) -> StoreError {
        let kind = match error.fault_kind() {
            Some(FaultKind::Other) | None => FaultKind::Open,
            Some(kind) => kind,
        };
        let message = error.to_string();
        let again = self.last_open_error.as_ref().is_some_and(|last| {
            std::error::Error::source(last)
                .and_then(std::error::Error::source)
                .is_some_and(|cause| cause.to_string() == message)
        });
        let error = StoreError::unavailable(
            kind,
            Unusable::CannotOpen {
                location: self.config.location.describe(),
                cause: error,
            },
        );
        if !again {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "Store unavailable"
            );
        }
        self.last_open_error = Some(error.clone());
        error
    }

    pub(super) fn run(&mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut records = Vec::with_capacity(MAX_BATCH);
        let mut probes = Vec::new();
        while let Some(first) = receiver.blocking_recv() {
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Record { delivery, reply } => records.push((delivery, reply)),
                    Command::Probe { reply } => probes.push(reply),
                    Command::Enqueue {
                        original,
                        now_ms,
                        reply,
                    } => {
                        let result = self.write(|tx| replay::enqueue_replay(tx, original, now_ms));
                        let _ = reply.send(result);
                    }
                    Command::Mark { mark, reply } => {
                        let _ = reply.send(self.write(|tx| replay::mark(tx, &mark)));
                    }
                    Command::Prune {
                        policy,
                        now_ms,
                        batch,
                        body_excess,
                        reply,
                    } => {
                        let _ = reply.send(self.prune(&policy, now_ms, batch, body_excess));
                    }
                    Command::Polled {
                        deliveries,
                        cursors,
                        forget,
                        reply,
                    } => {
                        let _ = reply.send(self.commit_polled(&deliveries, &cursors, &forget));
                    }
                    Command::Shutdown { reply } => shutdown = Some(reply),
                }
                if records.len() < MAX_BATCH && shutdown.is_none() {
                    next = receiver.try_recv().ok();
                }
            }
            if !records.is_empty() {
                self.commit_batch(&mut records);
            }
            for reply in probes.drain(..) {
                let _ = reply.send(self.probe());
            }
            if let Some(reply) = shutdown {
                receiver.close();
                while let Ok(command) = receiver.try_recv() {
                    if let Command::Record { delivery, reply } = command {
                        records.push((delivery, reply));
                    }
                }
                if !records.is_empty() {
                    self.commit_batch(&mut records);
                }
                self.stop_helpers.store(true, Ordering::Release);
                for helper in self.helpers.drain(..) {
                    let _ = helper.join();
                }
                if let Some(db) = self.db.take() {
                    db.close();
                }
                let _ = reply.send(());
                return;
            }
        }
    }

    /// The readiness probe: a one-row write. A store that just refused a
    /// batch of deliveries on a fault is not ready either, for
    /// [`FAULT_RETRY_AFTER`] unless a batch commits first, even when the probe's
    /// row fits where a delivery did not (a full disk leaves room for one
    /// small row in files SQLite already holds).
    fn probe(&mut self) -> Result<(), StoreError> {
        if let Some((at, error)) = &self.batch_fault {
            if at.elapsed() < FAULT_RETRY_AFTER {
                return Err(error.clone());
            }
            self.batch_fault = None;
        }
        self.write(probe)
    }

    /// Runs one transaction outside the batch path, reopening as needed.
    fn write<T>(
        &mut self,
        f: impl FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let result = self
            .ensure_open()
            .and_then(|db| db.transaction(f).map_err(fault));
        if let Err(StoreError::Unavailable { kind, .. }) = &result {
            self.forget_connection_after(*kind);
        }
        result
    }

    fn prune(
        &mut self,
        policy: &RetentionPolicy,
        now_ms: i64,
        batch: u32,
        body_excess: u64,
    ) -> Result<Pruned, StoreError> {
        let from = self.body_watermark;
        let shared = matches!(self.config.location, Location::Postgres(_));
        let (pruned, watermark) = self.write(|tx| {
            let mut watermark = from;
            let mut pruned =
                retention::prune(tx, policy, now_ms, batch, body_excess, &mut watermark)?;
            if shared {
                pruned.more |= postgres::prune_feed(tx, now_ms)?;
            }
            Ok((pruned, watermark))
        })?;
        self.body_watermark = watermark;
        Ok(pruned)
    }

    /// One poll's facts and state in one transaction: both commit or
    /// neither does, so a crash before the commit only repeats the fetch. A
    /// delivery that cannot be applied fails the whole poll (its state is
    /// not advanced). The view is updated only after the commit.
    fn commit_polled(
        &mut self,
        deliveries: &[Delivery],
        cursors: &[PollCursor],
        forget: &[String],
    ) -> Result<Vec<Recorded>, StoreError> {
        let started = Instant::now();
        let max_body = self.config.max_body_bytes;
        let link_window = self.config.failure_link_window.as_secs() as i64;
        let now_ms = now_seconds() * 1000;
        let result = self.ensure_open().and_then(|db| {
            db.publishing(|tx| {
                let deliveries: Vec<&Delivery> = deliveries.iter().collect();
                let results = rules::record_all(tx, &deliveries, max_body, link_window, &mut None)?;
                cursors::save_cursors(tx, cursors, forget, now_ms)?;
                Ok(results)
            })
            .map_err(fault)
        });
        self.sink.commit_finished(
            started.elapsed(),
            result.as_ref().map(|_| ()).map_err(StoreError::kind),
        );
        let committed = match result {
            Ok(committed) => committed,
            Err(error) => {
                self.forget_connection_after(error.kind());
                return Err(error);
            }
        };
        if let Some(db) = self.db.as_mut() {
            db.applied(&committed, &*self.sink);
        }
        Ok(committed
            .applied
            .into_iter()
            .map(|(recorded, _)| recorded)
            .collect())
    }

    /// Applies a batch in one transaction (group commit). A delivery that
    /// fails for a reason other than a database fault (a bug, a broken
    /// invariant) must not take the others down: the batch is then rolled
    /// back and replayed one transaction per delivery, so that only that one
    /// fails. (Savepoints per delivery would isolate it too, but each costs
    /// a statement journal on every delivery of every batch.) A fault (busy,
    /// full, read-only, I/O, unreachable) fails the whole batch.
    fn commit_batch(&mut self, records: &mut Batch) {
        let started = Instant::now();
        self.wal_restart.batch(records.len());
        let deliveries: Vec<&Delivery> = records.iter().map(|(d, _)| d).collect();
        let parts: Vec<Result<Committed, StoreError>> = match self
            .record_in_one_transaction(&deliveries)
        {
            Ok(Ok(done)) => vec![Ok(done)],
            Ok(Err(failed)) => {
                tracing::error!(
                    delivery_id = %deliveries[failed].id,
                    "A delivery could not be applied; replaying its batch one delivery at a time"
                );
                let mut each = Vec::with_capacity(deliveries.len());
                let mut fault_seen: Option<StoreError> = None;
                for delivery in &deliveries {
                    if let Some(fault) = &fault_seen {
                        each.push(Err(fault.clone()));
                        continue;
                    }
                    each.push(match self.record_in_one_transaction(&[delivery]) {
                        Ok(Ok(done)) => Ok(done),
                        Ok(Err(_)) => Err(StoreError::unavailable(
                            FaultKind::Other,
                            Unusable::NotApplied(delivery.id.to_string()),
                        )),
                        Err(error) => {
                            fault_seen = Some(error.clone());
                            Err(error)
                        }
                    });
                }
                if let Some(fault) = fault_seen {
                    self.forget_connection_after(fault.kind());
                    self.batch_fault = Some((Instant::now(), fault));
                }
                each
            }
            Err(error) => {
                let kind = error.kind();
                self.sink.commit_finished(started.elapsed(), Err(kind));
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    deliveries = records.len(),
                    "Commit failed; answering 503"
                );
                self.forget_connection_after(kind);
                for (_, reply) in records.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
                self.batch_fault = Some((Instant::now(), error));
                return;
            }
        };
        self.sink.commit_finished(started.elapsed(), Ok(()));
        if parts.iter().all(Result::is_ok) {
            self.batch_fault = None;
        }
        let mut outcomes = Vec::with_capacity(records.len());
        for part in parts {
            match part {
                Ok(committed) => {
                    if let Some(db) = self.db.as_mut() {
                        db.applied(&committed, &*self.sink);
                    }
                    outcomes.extend(
                        committed
                            .applied
                            .into_iter()
                            .map(|(recorded, _)| Ok(recorded)),
                    );
                }
                Err(error) => outcomes.push(Err(error)),
            }
        }
        for ((_, reply), outcome) in records.drain(..).zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }

    /// One transaction for `deliveries`: `Ok(Err(index))` (rolled back) when
    /// delivery `index` failed for a reason other than a database fault.
    fn record_in_one_transaction(
        &mut self,
        deliveries: &[&Delivery],
    ) -> Result<Result<Committed, usize>, StoreError> {
        let max_body = self.config.max_body_bytes;
        let link_window = self.config.failure_link_window.as_secs() as i64;
        let keep = self.config.max_unauthenticated_rows;
        let counted = self.unauthenticated_rows;
        let added: u64 = deliveries.iter().map(|d| u64::from(!d.authenticated)).sum();
        let mut failed = None;
        let db = self.ensure_open()?;
        let result = db.publishing(|tx| {
            let results = rules::record_all(tx, deliveries, max_body, link_window, &mut failed)?;
            if added > 0 {
                let excess = counted.map(|n| (n + added).saturating_sub(keep));
                retention::cap_unauthenticated(tx, excess, keep)?;
            }
            Ok(results)
        });
        match result {
            Ok(done) => {
                if let Some(n) = self.unauthenticated_rows.as_mut() {
                    *n = (*n + added).min(keep);
                }
                Ok(Ok(done))
            }
            Err(error) => match failed {
                Some(index) if !error.is_fault() => Ok(Err(index)),
                _ => Err(fault(error)),
            },
        }
    }

    /// Drops the connection after faults that a fresh connection may clear
    /// (a file that became writable again, a replaced file, a database
    /// server that restarted).
    fn forget_connection_after(&mut self, kind: FaultKind) {
        if matches!(kind, FaultKind::ReadOnly | FaultKind::Io | FaultKind::Open) {
            if let Some(db) = self.db.take() {
                db.close();
            }
        }
    }
}

type Batch = Vec<(Delivery, oneshot::Sender<Result<Recorded, StoreError>>)>;

impl Drop for Writer {
    fn drop(&mut self) {
        // However the writer ends, the helper threads end with it.
        self.stop_helpers.store(true, Ordering::Release);
    }
}

/// A one-row write: fails when a delivery's commit would (the write lock
/// is held elsewhere, the database is read-only, the disk is full). A
/// rolled-back transaction writes nothing and could not tell a full disk.
fn probe(tx: &mut dyn Sql) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        &[&now_seconds()],
    )?;
    Ok(())
}

fn fault(error: DbError) -> StoreError {
    StoreError::unavailable(error.fault_kind().unwrap_or(FaultKind::Other), error)
}
