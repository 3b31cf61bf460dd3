//! The store: the single source of truth for deliveries and events, and the
//! only module that speaks SQL. Domain types go in (`Delivery`), outcomes and
//! committed effects come out (`Recorded`, `Effect`).
//!
//! One writer thread owns the SQLite connection. Handlers queue deliveries to
//! it; it takes everything queued, applies it in one transaction (group
//! commit), and only after `COMMIT` returns does it hand the effects to the
//! [`CommitSink`] (the metric view) and answer each handler. A delivery is
//! never acknowledged before its transaction has committed.
//!
//! When the database cannot be written (disk full, read-only, locked past the
//! busy timeout, not openable) every queued delivery is answered with
//! [`StoreError::Unavailable`] and nothing is applied; the next batch tries
//! again, reopening the connection if needed, so the process recovers by itself.

pub mod deliveries;
pub mod history;
mod sqlite;

pub use sqlite::{now_seconds, PollCursor, Pruned, ReplayRefusal, RetentionPolicy};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::Synchronous;
use crate::events::{App, CommitLink, CommitSha, ImageSha, IssueNumber, Namespace};
use crate::ledger::{Delivery, Effect, Recorded, State};

/// Most deliveries applied in one transaction.
const MAX_BATCH: usize = 1024;
/// Deliveries that may wait for the writer before handlers wait to queue.
const QUEUE_DEPTH: usize = 8192;
/// Least time between two attempts to open an unopenable database.
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);
/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Why the store could not do what was asked. Carries no payload data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable ({kind}): {message}")]
    Unavailable { kind: FaultKind, message: String },
    #[error("the store has shut down")]
    Closed,
}

impl StoreError {
    pub fn kind(&self) -> FaultKind {
        match self {
            StoreError::Unavailable { kind, .. } => *kind,
            StoreError::Closed => FaultKind::Closed,
        }
    }
}

/// Class of store fault; a closed set used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Busy,
    Full,
    ReadOnly,
    Io,
    Open,
    Closed,
    Other,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Busy,
        FaultKind::Full,
        FaultKind::ReadOnly,
        FaultKind::Io,
        FaultKind::Open,
        FaultKind::Closed,
        FaultKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Busy => "busy",
            FaultKind::Full => "full",
            FaultKind::ReadOnly => "read_only",
            FaultKind::Io => "io",
            FaultKind::Open => "open",
            FaultKind::Closed => "closed",
            FaultKind::Other => "other",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored fact the view is rebuilt from at start-up.
#[derive(Debug, Clone)]
pub enum Restored {
    Commit {
        app: App,
        commit: CommitSha,
        image_sha: Option<ImageSha>,
        namespace: Option<Namespace>,
        commit_link: Option<CommitLink>,
        time: i64,
    },
    /// The newest deploy of one `deploy_timestamp` series.
    Deploy {
        app: App,
        namespace: Namespace,
        image_sha: ImageSha,
        time: i64,
    },
    Failure {
        app: App,
        issue_number: IssueNumber,
        created: Option<i64>,
        resolved: Option<i64>,
    },
    /// How many deploys of an app into a namespace, and the latest one's time.
    DeployCount {
        app: App,
        namespace: Namespace,
        count: u64,
        last: i64,
    },
    /// A failure created and not resolved since.
    OpenFailure {
        app: App,
        issue_number: IssueNumber,
        created: i64,
    },
    FailureCounts {
        app: App,
        created: u64,
        resolved: u64,
    },
    LeadTime {
        app: App,
        seconds: f64,
    },
    TimeToRestore {
        app: App,
        seconds: f64,
    },
}

/// Which stored facts the view needs at start-up: everything that counts,
/// but only the gauge series young enough to be exposed.
#[derive(Debug, Clone, Copy)]
pub struct RestoreWindows {
    pub commit_window: Duration,
    pub exposure_window: Duration,
}

/// Receives what the store committed: the metric view.
pub trait CommitSink: Send + Sync + 'static {
    /// Called on the first successful open, in one or more parts, with every
    /// stored fact the view needs.
    fn restore(&self, items: &mut dyn Iterator<Item = Restored>);
    /// Called after each successful commit with what it changed.
    fn apply(&self, effects: &[Effect]);
    /// Called after each commit attempt.
    fn commit_finished(&self, duration: Duration, result: Result<(), FaultKind>);
}

/// Everything the store needs to run.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_unauthenticated_rows: u64,
    pub windows: RestoreWindows,
}

enum Command {
    Record {
        delivery: Delivery,
        reply: oneshot::Sender<Result<Recorded, StoreError>>,
    },
    Probe {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Enqueue {
        original: i64,
        now_ms: i64,
        reply: oneshot::Sender<Result<Result<i64, ReplayRefusal>, StoreError>>,
    },
    Mark {
        row: i64,
        state: State,
        error: Option<String>,
        next_attempt_ms: Option<i64>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Prune {
        policy: RetentionPolicy,
        now_ms: i64,
        batch: u32,
        body_excess: u64,
        reply: oneshot::Sender<Result<Pruned, StoreError>>,
    },
    Polled {
        deliveries: Vec<Delivery>,
        cursors: Vec<PollCursor>,
        forget: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Recorded>, StoreError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the store's writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    commands: mpsc::Sender<Command>,
}

impl Store {
    /// Starts the writer thread and makes a first attempt to open the
    /// database. Returns the handle and that attempt's result: a store that
    /// cannot be opened yet still runs and keeps trying.
    pub fn start(
        config: StoreConfig,
        sink: Arc<dyn CommitSink>,
    ) -> (Store, Result<(), StoreError>) {
        let (commands, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (first_open, first_open_result) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let checkpointer = {
            let stop = Arc::clone(&stop);
            let mut checkpointer =
                sqlite::Checkpointer::new(config.path.clone(), config.busy_timeout);
            std::thread::Builder::new()
                .name("hookgauge-checkpoint".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(CHECKPOINT_INTERVAL);
                        checkpointer.run();
                    }
                })
                .expect("the store checkpoint thread can be spawned")
        };
        std::thread::Builder::new()
            .name("hookgauge-store".into())
            .spawn(move || {
                let mut writer = Writer::new(config, sink, stop, checkpointer);
                let _ = first_open.send(writer.ensure_open().map(|_| ()));
                writer.run(receiver);
            })
            .expect("the store writer thread can be spawned");
        let result = first_open_result.recv().unwrap_or(Err(StoreError::Closed));
        (Store { commands }, result)
    }

    /// Records one delivery; returns once its transaction has committed.
    #[tracing::instrument(skip_all, fields(source = delivery.source, delivery_id = %delivery.id))]
    pub async fn record(&self, delivery: Delivery) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Record { delivery, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records the facts of one poll together with the stream state that
    /// produced them, and drops the state of the streams in `forget`, in
    /// one transaction (see `PollCursor`).
    pub async fn record_polled(
        &self,
        deliveries: Vec<Delivery>,
        cursors: Vec<PollCursor>,
        forget: Vec<String>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Polled {
                deliveries,
                cursors,
                forget,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Checks that the store can take a write lock right now.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Probe { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a redelivery of ledger row `original`; the new row's seq.
    pub async fn enqueue_replay(
        &self,
        original: i64,
        now_ms: i64,
    ) -> Result<Result<i64, ReplayRefusal>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Enqueue {
            original,
            now_ms,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Sets the processing state of a queued row.
    pub async fn mark(
        &self,
        row: i64,
        state: State,
        error: Option<String>,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Mark {
            row,
            state,
            error,
            next_attempt_ms,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// One bounded retention step (see [`RetentionPolicy`]); it queues
    /// behind deliveries like any write, so ingest is never held long.
    pub async fn prune(
        &self,
        policy: RetentionPolicy,
        now_ms: i64,
        batch: u32,
        body_excess: u64,
    ) -> Result<Pruned, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Prune {
            policy,
            now_ms,
            batch,
            body_excess,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Finishes the queued work, checkpoints and closes the database.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
    }
}

struct Writer {
    config: StoreConfig,
    sink: Arc<dyn CommitSink>,
    /// Tells the checkpoint thread to stop; joined before the final close.
    stop_checkpoints: Arc<AtomicBool>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
    db: Option<sqlite::Database>,
    restored: bool,
    last_open_attempt: Option<Instant>,
    last_open_error: Option<(FaultKind, String)>,
}

impl Writer {
    fn new(
        config: StoreConfig,
        sink: Arc<dyn CommitSink>,
        stop_checkpoints: Arc<AtomicBool>,
        checkpointer: std::thread::JoinHandle<()>,
    ) -> Self {
        Writer {
            config,
            sink,
            stop_checkpoints,
            checkpointer: Some(checkpointer),
            db: None,
            restored: false,
            last_open_attempt: None,
            last_open_error: None,
        }
    }

    /// Opens (and migrates) the database if it is not open; restores the view
    /// on the first success. Attempts are spaced by [`REOPEN_INTERVAL`].
    fn ensure_open(&mut self) -> Result<&mut sqlite::Database, StoreError> {
        if self.db.is_none() {
            let recently = self
                .last_open_attempt
                .is_some_and(|at| at.elapsed() < REOPEN_INTERVAL);
            if recently {
                let (kind, message) = self
                    .last_open_error
                    .clone()
                    .unwrap_or((FaultKind::Open, "not open".into()));
                return Err(StoreError::Unavailable { kind, message });
            }
            self.last_open_attempt = Some(Instant::now());
            match sqlite::Database::open(&self.config) {
                Ok(mut db) => {
                    if !self.restored {
                        let now = sqlite::now_seconds();
                        db.restore(now, self.config.windows, &*self.sink)
                            .map_err(|e| self.open_failed(e))?;
                        self.restored = true;
                    }
                    if self.last_open_error.take().is_some() {
                        tracing::info!(path = %self.config.path.display(), "Store reopened");
                    }
                    self.db = Some(db);
                }
                Err(e) => return Err(self.open_failed(e)),
            }
        }
        Ok(self.db.as_mut().expect("opened above"))
    }

    fn open_failed(&mut self, error: rusqlite::Error) -> StoreError {
        let kind = sqlite::fault_kind(&error).unwrap_or(FaultKind::Open);
        let message = format!("cannot open {}: {error}", self.config.path.display());
        if self.last_open_error.as_ref().map(|(_, m)| m) != Some(&message) {
            tracing::error!(error = %message, "Store unavailable");
        }
        self.last_open_error = Some((kind, message.clone()));
        StoreError::Unavailable { kind, message }
    }

    fn run(&mut self, mut receiver: mpsc::Receiver<Command>) {
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
                        let result = self.write(|db| db.enqueue_replay(original, now_ms));
                        let _ = reply.send(result);
                    }
                    Command::Mark {
                        row,
                        state,
                        error,
                        next_attempt_ms,
                        reply,
                    } => {
                        let result =
                            self.write(|db| db.mark(row, state, error.as_deref(), next_attempt_ms));
                        let _ = reply.send(result);
                    }
                    Command::Prune {
                        policy,
                        now_ms,
                        batch,
                        body_excess,
                        reply,
                    } => {
                        let result = self.write(|db| db.prune(&policy, now_ms, batch, body_excess));
                        let _ = reply.send(result);
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
                let result = self.ensure_open().and_then(|db| db.probe().map_err(fault));
                if let Err(StoreError::Unavailable { kind, .. }) = &result {
                    self.forget_connection_after(*kind);
                }
                let _ = reply.send(result);
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
                self.stop_checkpoints.store(true, Ordering::Release);
                if let Some(checkpointer) = self.checkpointer.take() {
                    let _ = checkpointer.join();
                }
                if let Some(db) = self.db.take() {
                    db.close();
                }
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Runs one write outside the batch path, reopening as needed.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut sqlite::Database) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let result = self.ensure_open().and_then(|db| f(db).map_err(fault));
        if let Err(StoreError::Unavailable { kind, .. }) = &result {
            self.forget_connection_after(*kind);
        }
        result
    }

    /// One poll's facts and state in one transaction; the view is updated
    /// only after the commit, like a batch of deliveries.
    fn commit_polled(
        &mut self,
        deliveries: &[Delivery],
        cursors: &[PollCursor],
        forget: &[String],
    ) -> Result<Vec<Recorded>, StoreError> {
        let started = Instant::now();
        let max_body = self.config.max_body_bytes;
        let now_ms = sqlite::now_seconds() * 1000;
        let result = self.write(|db| {
            let refs: Vec<&Delivery> = deliveries.iter().collect();
            db.record_polled(&refs, cursors, forget, max_body, now_ms)
        });
        self.sink.commit_finished(
            started.elapsed(),
            result.as_ref().map(|_| ()).map_err(StoreError::kind),
        );
        let (recorded, effects): (Vec<Recorded>, Vec<Vec<Effect>>) = result?.into_iter().unzip();
        self.sink.apply(&effects.concat());
        Ok(recorded)
    }

    fn commit_batch(&mut self, records: &mut Batch) {
        let started = Instant::now();
        let max_unauthenticated = self.config.max_unauthenticated_rows;
        let max_body = self.config.max_body_bytes;
        let result = self.ensure_open().and_then(|db| {
            let deliveries: Vec<&Delivery> = records.iter().map(|(d, _)| d).collect();
            db.record_batch(&deliveries, max_body, max_unauthenticated)
                .map_err(fault)
        });
        match result {
            Ok(results) => {
                self.sink.commit_finished(started.elapsed(), Ok(()));
                let effects: Vec<Effect> = results
                    .iter()
                    .flatten()
                    .flat_map(|(_, effects)| effects.iter().cloned())
                    .collect();
                self.sink.apply(&effects);
                for ((_, reply), result) in records.drain(..).zip(results) {
                    let _ = reply.send(result.map(|(recorded, _)| recorded).map_err(fault));
                }
            }
            Err(error) => {
                let kind = error.kind();
                self.sink.commit_finished(started.elapsed(), Err(kind));
                tracing::error!(error = %error, deliveries = records.len(), "Commit failed; answering 503");
                self.forget_connection_after(kind);
                let message = error.to_string();
                for (_, reply) in records.drain(..) {
                    let _ = reply.send(Err(StoreError::Unavailable {
                        kind,
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    /// Drops the connection after faults that a fresh connection may clear
    /// (a file that became writable again, a replaced file).
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
        // However the writer ends, the checkpoint thread ends with it.
        self.stop_checkpoints.store(true, Ordering::Release);
    }
}

fn fault(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable {
        kind: sqlite::fault_kind(&error).unwrap_or(FaultKind::Other),
        message: error.to_string(),
    }
}
