//! The store: the single source of truth for deliveries and events, and the
//! only module that speaks SQL. Domain types go in (`Delivery`), outcomes and
//! committed effects come out (`Recorded`, `Effect`).
//!
//! One writer thread (`writer.rs`) owns the write connection; this module is
//! the handle the rest of the crate holds. Handlers queue deliveries to it; it takes everything queued, applies it in one transaction (group
//! commit), and only after `COMMIT` returns does it hand the effects to the
//! [`CommitSink`] (the metric view) and answer each handler. A delivery is
//! never acknowledged before its transaction has committed.
//!
//! When the database cannot be written (disk full, read-only, locked past the
//! busy timeout, not openable, not reachable) every queued delivery is
//! answered with [`StoreError::Unavailable`] and nothing is applied; the next
//! batch tries again, reopening the connection if needed, so the process
//! recovers by itself.
//!
//! Two backends share the outcome rules (`rules/`, over [`sql::Sql`]) and the
//! replay, retention, restore and poll-state statements: the
//! embedded SQLite file, and a PostgreSQL database that several replicas
//! share. With PostgreSQL every replica also follows the others' commits
//! (the change feed, `postgres.rs`) so that each one's view shows the same
//! numbers, and the work that must run once runs on the one replica that
//! holds the background lock ([`Store::background`]).

/// `(name, SQL)` of each migration file under `dir`, in order: the same
/// numbered steps for every backend, each in its own dialect.
macro_rules! migrations {
    ($dir:literal) => {
        migrations!(
            @files $dir,
            "0001_init",
            "0002_native_sources",
            "0003_ledger_admin",
            "0004_poll_state",
            "0005_replicas",
            "0006_links_by_image",
            "0007_rework",
            "0008_commit_index_partial",
        )
    };
    (@files $dir:literal, $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!($dir, $name, ".sql")))),*]
    };
}
use migrations;

mod checkpoint;
mod cursors;
pub mod deliveries;
pub mod history;
pub mod keys;
pub mod migrate;
pub mod postgres;
mod replay;
mod restore;
mod retention;
mod rules;
pub mod settings;
pub mod sql;
mod sqlite;
mod writer;

pub use cursors::PollCursor;
pub use postgres::PostgresConfig;
pub use replay::ReplayRefusal;
pub use retention::{Pruned, RetentionPolicy};
pub use settings::{postgres_config, InvalidSetting, RawStore, Synchronous};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use sql::DbError;
use writer::Writer;

use crate::events::{App, ImageSha, IssueNumber, Namespace};
use crate::ledger::{Delivery, Effect, Recorded, ShownCommit, State};

/// Most deliveries applied in one transaction.
const MAX_BATCH: usize = 1024;
/// How long a store fault is reported: a sender refused on one is asked to
/// wait this long (`Retry-After`), and the readiness probe fails this long
/// after a batch of deliveries was refused on one, unless a batch commits
/// first.
pub const FAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Deliveries that may wait for the writer before handlers wait to queue.
const QUEUE_DEPTH: usize = 8192;
/// Least time between two attempts to open an unopenable database.
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);
/// How often a replica tries to take the background lock, and its holder
/// checks the lock's connection: the failover time when a holder dies.
const LOCK_INTERVAL: Duration = Duration::from_secs(1);

/// Why the store could not do what was asked. Carries no payload data.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The database cannot be used now; `cause` (the error's source) says
    /// why: the database's own error, or what hookgauge found
    /// ([`Unusable`]). Shared, because one failed commit answers every
    /// delivery of its batch.
    Unavailable {
        kind: FaultKind,
        cause: Arc<dyn std::error::Error + Send + Sync>,
    },
    Closed,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable { kind, .. } => write!(f, "the store is unavailable ({kind})"),
            StoreError::Closed => f.write_str("the store has shut down"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Unavailable { cause, .. } => Some(&**cause),
            StoreError::Closed => None,
        }
    }
}

/// What hookgauge found that makes the store unusable, when the database
/// itself reported nothing (or reported it while opening).
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("no store at {}", .0.display())]
    NoStore(PathBuf),
    #[error("no database connection")]
    NoConnection(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot open {location}")]
    CannotOpen {
        location: String,
        #[source]
        cause: DbError,
    },
    #[error("the store is not open")]
    NotOpen,
    #[error("delivery {0} could not be applied")]
    NotApplied(String),
}

impl StoreError {
    /// Unavailable as `kind`, because of `cause`.
    pub fn unavailable(
        kind: FaultKind,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Unavailable {
            kind,
            cause: Arc::new(cause),
        }
    }
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
    Commit(ShownCommit),
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
    /// How many deploys of an app into a namespace, and the latest one's
    /// time; how often they were decided rework or tied to a failure, and
    /// how often such a decision was withdrawn.
    DeployCount {
        app: App,
        namespace: Namespace,
        count: u64,
        last: i64,
        rework: u64,
        rework_withdrawn: u64,
        failed: u64,
        failed_withdrawn: u64,
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
    FailedDeploymentRecovery {
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
    /// Called after applying a change another replica committed (shared
    /// store only), with how long ago it was committed.
    fn followed(&self, _lag: Duration) {}
}

/// Where the store is.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by every replica.
    Postgres(Box<PostgresConfig>),
}

impl Location {
    /// For logs and messages: the file, or the database without password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(config) => config.describe(),
        }
    }
}

/// Everything the store needs to run.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub location: Location,
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_unauthenticated_rows: u64,
    pub windows: RestoreWindows,
    /// A failure created this long after a deploy of its application (with
    /// no deploy in between) is tied to that deploy.
    pub failure_link_window: Duration,
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
        mark: replay::Mark,
        reply: oneshot::Sender<Result<bool, StoreError>>,
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
    background: watch::Receiver<bool>,
    cursor: Arc<Mutex<postgres::FeedCursor>>,
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
        let cursor = Arc::new(Mutex::new(postgres::FeedCursor::default()));
        let mut helpers = Vec::new();
        let mut always_held = None;
        let wal_restart = Arc::new(checkpoint::WalRestart::default());
        let background = match &config.location {
            Location::Sqlite(path) => {
                let stop = Arc::clone(&stop);
                let mut checkpointer = checkpoint::Checkpointer::new(
                    path.clone(),
                    config.busy_timeout,
                    Arc::clone(&wal_restart),
                );
                helpers.push(
                    std::thread::Builder::new()
                        .name("hookgauge-checkpoint".into())
                        .spawn(move || checkpointer.run_until(&stop))
                        .expect("the store checkpoint thread can be spawned"),
                );
                // One process owns the file: its background work always runs
                // (the sender lives as long as the writer).
                let (held, background) = watch::channel(true);
                always_held = Some(held);
                background
            }
            Location::Postgres(pg) => {
                let (held, background) = watch::channel(false);
                let (pg_lock, stop_lock) = (pg.as_ref().clone(), Arc::clone(&stop));
                helpers.push(
                    std::thread::Builder::new()
                        .name("hookgauge-lock".into())
                        .spawn(move || {
                            postgres::hold_lock(
                                pg_lock,
                                postgres::BACKGROUND_LOCK,
                                LOCK_INTERVAL,
                                held,
                                stop_lock,
                            )
                        })
                        .expect("the background lock thread can be spawned"),
                );
                background
            }
        };
        let stop_writer = Arc::clone(&stop);
        let view_cursor = Arc::clone(&cursor);
        std::thread::Builder::new()
            .name("hookgauge-store".into())
            .spawn(move || {
                let _always_held = always_held;
                let mut writer =
                    Writer::new(config, sink, stop_writer, helpers, cursor, wal_restart);
                let _ = first_open.send(writer.ensure_open().map(|_| ()));
                writer.run(receiver);
            })
            .expect("the store writer thread can be spawned");
        let result = first_open_result.recv().unwrap_or(Err(StoreError::Closed));
        (
            Store {
                commands,
                background,
                cursor: view_cursor,
            },
            result,
        )
    }

    /// Shared store: this replica's view missed changes that retention
    /// deleted from the change feed before it could apply them (it was
    /// cut off for longer than the feed is kept). A restart rebuilds it.
    pub fn view_stale(&self) -> bool {
        self.cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stale()
    }

    /// True while this process runs the work that must run once (retention,
    /// pollers, redeliveries): always with the embedded store; with
    /// PostgreSQL, while it holds the background lock.
    pub fn background(&self) -> watch::Receiver<bool> {
        self.background.clone()
    }

    /// Records one delivery; returns once its transaction has committed.
    #[tracing::instrument(skip_all, fields(source = delivery.source, delivery_id = %delivery.id))]
    pub async fn record(&self, delivery: Delivery) -> Result<Recorded, StoreError> {
        self.ask(|reply| Command::Record { delivery, reply }).await
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
        self.ask(|reply| Command::Polled {
            deliveries,
            cursors,
            forget,
            reply,
        })
        .await
    }

    /// Checks that the store can take a write lock right now.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.ask(|reply| Command::Probe { reply }).await
    }

    /// Queues a redelivery of ledger row `original`; the new row's seq.
    pub async fn enqueue_replay(
        &self,
        original: i64,
        now_ms: i64,
    ) -> Result<Result<i64, ReplayRefusal>, StoreError> {
        self.ask(|reply| Command::Enqueue {
            original,
            now_ms,
            reply,
        })
        .await
    }

    /// Sets the processing state of a queued row.
    pub async fn mark(
        &self,
        row: i64,
        state: State,
        error: Option<String>,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mark = replay::Mark {
            row,
            state,
            error,
            next_attempt_ms,
            claim: None,
        };
        self.ask(|reply| Command::Mark { mark, reply })
            .await
            .map(|_| ())
    }

    /// Claims a queued row for an attempt: moves it to `processing` only if
    /// it still has `attempts` attempts made, so that of two workers that
    /// read the same row one gets it. True when this one did.
    pub async fn claim(
        &self,
        row: i64,
        attempts: i64,
        retry_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let mark = replay::Mark {
            row,
            state: State::Processing,
            error: None,
            next_attempt_ms: Some(retry_at_ms),
            claim: Some(attempts),
        };
        self.ask(|reply| Command::Mark { mark, reply }).await
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
        self.ask(|reply| Command::Prune {
            policy,
            now_ms,
            batch,
            body_excess,
            reply,
        })
        .await
    }

    /// Sends the writer the command `command` builds around a reply channel
    /// and waits for the answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{FaultKind, StoreError, Unusable};

    #[test]
    fn an_unavailable_store_keeps_its_cause_as_the_source() {
        let error = StoreError::unavailable(FaultKind::Open, Unusable::NoStore("/x/h.db".into()));
        assert_eq!(error.to_string(), "the store is unavailable (open)");
        assert_eq!(error.kind(), FaultKind::Open);
        let cause = std::error::Error::source(&error).expect("a cause");
        assert_eq!(cause.to_string(), "no store at /x/h.db");
        assert!(cause.downcast_ref::<Unusable>().is_some());
        // A batch's replies share one cause.
        let copy = error.clone();
        assert!(std::ptr::eq(
            std::error::Error::source(&copy).unwrap(),
            cause
        ));
    }

    /// The migration files in `dir`, by name, in order.
    fn files(dir: &str) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/store")
            .join(dir);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".sql").map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn both_backends_have_the_same_migrations_and_embed_every_file() {
        let sqlite: Vec<&str> = super::sqlite::MIGRATIONS.iter().map(|(n, _)| *n).collect();
        let postgres: Vec<&str> = super::postgres::MIGRATIONS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(sqlite, postgres, "a migration added to one backend only");
        assert_eq!(
            files("migrations"),
            sqlite,
            "a SQLite migration file not embedded"
        );
        assert_eq!(
            files("migrations/postgres"),
            postgres,
            "a PostgreSQL migration file not embedded"
        );
    }
}
