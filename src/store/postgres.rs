//! The shared PostgreSQL backend, for several replicas behind one load
//! balancer: connecting (pool for reads, statement timeouts), its schema
//! migrations, the classification of its errors, the change feed that keeps
//! every replica's metric view current, and the advisory lock that lets one
//! replica at a time run the background work.
//!
//! The change feed: a transaction that changes what the view shows also
//! inserts one `changes` row with its effects (JSON), after taking a
//! transaction-level advisory lock. Rows therefore get their `seq` in
//! commit order: a replica that has seen `seq` N has seen every committed
//! change before it. Each replica applies every row past its cursor once
//! (its own too: the writer applies its own rows from memory right after
//! its commit, under the same cursor), woken by `NOTIFY` and at least
//! every [`FOLLOW_INTERVAL`] without it.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::rules::{Applied, Committed};
use super::sql::{DbError, Pg, Sql, Statements};
use super::{CommitSink, FaultKind};
use crate::ledger::Effect;

/// Embedded migrations, the same steps as SQLite's in PostgreSQL's dialect
/// (a test checks each list is every file of its folder);
/// `hookgauge_schema` records how many have run.
pub(super) const MIGRATIONS: &[(&str, &str)] = super::migrations!("migrations/postgres/");

/// Advisory lock keys (one namespace per purpose, fixed for the product).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_0001;
const FEED_LOCK: i64 = 0x686f_6f6b_0002;
pub const BACKGROUND_LOCK: i64 = 0x686f_6f6b_0003;

/// Channel the change feed notifies on.
const FEED_CHANNEL: &str = "hookgauge_changes";
/// One statement: the feed lock, taken last and held to the commit (feed
/// rows get their seq in commit order, since the row is made only once the
/// lock is held), the row, and the notification the followers get at the
/// commit, which carries the row's seq.
static FEED_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH taken AS (SELECT pg_advisory_xact_lock(?2)), \
              made AS (INSERT INTO changes (at_ms, effects) \
                SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT), ?1 FROM taken \
                RETURNING seq) \
         SELECT seq, pg_notify('{FEED_CHANNEL}', CAST(seq AS text)) FROM made"
    )
});
/// Longest a replica's view waits for a notification before reading the
/// feed anyway (a lost notification, a reconnect).
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);
/// Feed rows read at once.
const FOLLOW_BATCH: i64 = 1000;
/// How often the follower looks for tables that grew past their statistics.
const ANALYZE_CHECK: Duration = Duration::from_secs(1);
/// The tables the write path looks rows up in, through their indexes.
const LOOKED_UP: &[&str] = &[
    "deliveries",
    "deploys",
    "commits",
    "links",
    "failures",
    "observations",
];
/// How long feed rows are kept: a replica cut off from the database for
/// longer rebuilds its view at restart.
pub const FEED_RETENTION: Duration = Duration::from_secs(3600);
/// Feed rows one retention step deletes at most (a busy store adds one per
/// commit, hundreds a second).
const FEED_PRUNE_LIMIT: i64 = 50_000;

/// How to reach the database. `Debug` never shows the password.
#[derive(Clone)]
pub struct PostgresConfig {
    pub config: postgres::Config,
    pub pool_size: u32,
    pub statement_timeout: Duration,
    /// TLS, with the server's certificate verified (`sslmode=require`);
    /// `None`: a plain connection.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("database", &self.describe())
            .field("tls", &self.tls.is_some())
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl PostgresConfig {
    /// `postgres://user@host:port/dbname`, never with the password.
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_default();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}@{host}:{port}/{}{}",
            self.config.get_user().unwrap_or(""),
            self.config.get_dbname().unwrap_or(""),
            if self.tls.is_some() {
                "?sslmode=require"
            } else {
                ""
            }
        )
    }

    /// A new connection, with the statement timeout set. The server also
    /// ends a transaction left idle for as long (a replica frozen or cut off
    /// mid-commit must not hold its locks), and probes the connection so
    /// that it notices a vanished client within about 20 s rather than the
    /// system's two hours.
    pub fn connect(&self) -> Result<Client, DbError> {
        let mut client = match &self.tls {
            Some(tls) => self
                .config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                    (**tls).clone(),
                ))?,
            None => self.config.connect(NoTls)?,
        };
        let ms = self.statement_timeout.as_millis();
        client.batch_execute(&format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
             SET idle_in_transaction_session_timeout = {ms}; \
             SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 3; \
             SET tcp_keepalives_count = 3; SET tcp_user_timeout = 15000"
        ))?;
        Ok(client)
    }

    /// The same database without statement timeouts (the export reads
    /// whole histories).
    pub fn without_timeouts(&self) -> PostgresConfig {
        PostgresConfig {
            statement_timeout: Duration::ZERO,
            ..self.clone()
        }
    }

    /// A pool of read connections (admin API, poller state, export).
    pub fn pool(&self) -> r2d2::Pool<Manager> {
        r2d2::Pool::builder()
            .max_size(self.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(self.statement_timeout.max(Duration::from_secs(1)))
            .build_unchecked(Manager(self.clone()))
    }
}

/// TLS for `sslmode=require`: the server's certificate must chain to a
/// public root (webpki-roots) or to one of `extra_roots` (a private CA, PEM)
/// and name the host connected to.
pub fn tls_config(extra_roots: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_roots {
        let mut added = 0;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        {
            let cert =
                cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// Makes the pool's connections as [`PostgresConfig::connect`] does.
#[derive(Debug)]
pub struct Manager(PostgresConfig);

/// A pooled connection. The synchronous client blocks on its own runtime to
/// close, which must not happen on a thread that drives async tasks (the
/// pool can be dropped there, with the server's state): such a close moves
/// to a thread of its own.
pub struct Pooled(Option<Client>);

impl std::ops::Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("hookgauge-pg-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = DbError;

    fn connect(&self) -> Result<Pooled, DbError> {
        self.0.connect().map(|c| Pooled(Some(c)))
    }

    fn is_valid(&self, conn: &mut Pooled) -> Result<(), DbError> {
        conn.simple_query("")?;
        Ok(())
    }

    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.is_closed()
    }
}

/// Times a transaction the server aborted (deadlock, serialization) runs again.
const RETRIES: u32 = 5;

/// The server aborted the transaction to let another one through: running
/// it again is expected to succeed.
fn retryable(error: &postgres::Error) -> bool {
    error.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    })
}

/// Where this replica's view is in the change feed; shared by the writer
/// (after its commits) and the follower thread.
#[derive(Debug, Default)]
pub struct FeedCursor {
    seq: i64,
    /// Retention deleted feed rows this view had not applied: its numbers
    /// are behind until the process restarts and rebuilds them.
    stale: bool,
}

impl FeedCursor {
    pub fn stale(&self) -> bool {
        self.stale
    }
}

/// The writer's connection.
pub struct Database {
    client: Client,
    statements: Statements,
    cursor: Arc<Mutex<FeedCursor>>,
}

impl Database {
    /// Connects and migrates. The cursor is shared with the follower.
    pub fn open(
        config: &PostgresConfig,
        cursor: Arc<Mutex<FeedCursor>>,
    ) -> Result<Database, DbError> {
        let mut client = config.connect()?;
        migrate(&mut client)?;
        // This connection's statements look rows up by their keys, through
        // their indexes: one generic plan serves every execution. Left to
        // choose, PostgreSQL plans a deploy's decision read again on every
        // execution (a custom plan: 65 µs a deploy, twice its execution).
        // An ANALYZE of a table drops the cached plans that use it, so the
        // plans still follow the tables as they grow. No JIT: where the
        // planner expects many rows (every deploy of one application at
        // one second), it would compile the decision read's expressions on
        // every execution, 40-70 ms each, for a read that takes 0.1 ms.
        client.batch_execute("SET plan_cache_mode = force_generic_plan; SET jit = off")?;
        Ok(Database {
            client,
            statements: Statements::new(),
            cursor,
        })
    }

    /// Runs `f` in one transaction. Replicas writing the same facts at once
    /// can deadlock (each batch holds a row the other's next insert waits
    /// for) or, rarely, fail to serialize: the server aborts one of them,
    /// and it runs again, at most [`RETRIES`] more times.
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut retries = 0;
        loop {
            match self.attempt(&mut f) {
                Err(DbError::Postgres(error)) if retryable(&error) && retries < RETRIES => {
                    retries += 1;
                    tracing::debug!(error = %error, retries, "Transaction aborted by the server; running it again");
                    // Apart in time, so that the two do not meet again.
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos());
                    let jitter = u64::from(nanos % 20) + 5 * u64::from(retries);
                    std::thread::sleep(Duration::from_millis(jitter));
                }
                other => return other,
            }
        }
    }

    fn attempt<T>(
        &mut self,
        f: &mut impl FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let Database {
            client, statements, ..
        } = self;
        let mut tx = client.transaction()?;
        let out = f(&mut Pg {
            client: &mut tx,
            statements: Some(statements),
        })?;
        tx.commit()?;
        Ok(out)
    }

    /// As [`Database::transaction`], for deliveries: their effects (when
    /// there are any) are added to the change feed in the same transaction.
    /// Returns them with the feed row's seq.
    pub fn publishing(
        &mut self,
        mut f: impl FnMut(&mut dyn Sql) -> Result<Vec<Applied>, DbError>,
    ) -> Result<Committed, DbError> {
        self.transaction(|tx| {
            let applied = f(tx)?;
            let effects = super::rules::effects(&applied);
            if effects.is_empty() {
                return Ok(Committed {
                    applied,
                    effects,
                    seq: None,
                });
            }
            let json = serde_json::to_string(&effects)
                .map_err(|e| DbError::Broken(format!("effects cannot be encoded: {e}")))?;
            let seq: i64 = tx.value(&FEED_INSERT, &[&json, &FEED_LOCK])?;
            Ok(Committed {
                applied,
                effects,
                seq: Some(seq),
            })
        })
    }

    /// After a commit that published `seq`: applies the feed rows before it
    /// that this view has not seen, then `effects` (the row itself), unless
    /// the follower got there first. The feed is read before the cursor is
    /// locked, so that a slow read never holds up the follower or acks.
    pub fn apply_through(&mut self, seq: i64, effects: &[Effect], sink: &dyn CommitSink) {
        let from = self.cursor.lock().unwrap_or_else(|e| e.into_inner()).seq;
        if from >= seq {
            return;
        }
        let read = if from < seq - 1 {
            let mut sql = Pg {
                client: &mut self.client,
                statements: Some(&mut self.statements),
            };
            match read_feed(&mut sql, from, seq - 1) {
                Ok(read) => Some(read),
                Err(error) => {
                    // The follower reads them (and this one) on its next round.
                    tracing::warn!(error = %error, "Change feed not read after a commit");
                    return;
                }
            }
        } else {
            None
        };
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(read) = read {
            let complete = read.complete;
            apply_read(read, &mut cursor, sink);
            if !complete {
                return;
            }
        }
        if cursor.seq < seq {
            // Everything before `seq` is applied (seqs between that no row
            // holds were rolled back).
            sink.apply(effects);
            cursor.seq = seq;
        }
    }

    /// Restores the view from one consistent snapshot, with the feed cursor
    /// of that snapshot: later rows are the feed's to apply. `f` hands what
    /// it reads to a buffer; the sink gets it only once the whole read
    /// succeeded, so a failed attempt never counts anything twice.
    pub fn restore(
        &mut self,
        f: impl FnOnce(&mut dyn Sql, &dyn CommitSink) -> Result<(), DbError>,
        sink: &dyn CommitSink,
    ) -> Result<(), DbError> {
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        // The restore reads everything: no statement timeout for it.
        tx.batch_execute("SET LOCAL statement_timeout = 0")?;
        let mut sql = Pg {
            client: &mut tx,
            statements: None,
        };
        // Everything up to here is in the snapshot, pruned feed rows included.
        let seq: i64 = (&mut sql as &mut dyn Sql).value(
            "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM changes), 0), (SELECT through FROM changes_pruned))",
            &[],
        )?;
        let buffer = Buffer::default();
        f(&mut sql, &buffer)?;
        tx.commit()?;
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let items = buffer.0.into_inner().unwrap_or_else(|e| e.into_inner());
        sink.restore(&mut items.into_iter());
        cursor.seq = seq;
        Ok(())
    }

    pub fn close(self) {
        let _ = self.client.close();
    }
}

/// Collects what a restore reads, for the sink once it all succeeded.
#[derive(Default)]
struct Buffer(Mutex<Vec<super::Restored>>);

impl CommitSink for Buffer {
    fn restore(&self, items: &mut dyn Iterator<Item = super::Restored>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(items);
    }
    fn apply(&self, _effects: &[Effect]) {}
    fn commit_finished(&self, _duration: Duration, _result: Result<(), FaultKind>) {}
}

/// A change feed row: its seq, its effects, and its age when read.
struct FeedRow {
    seq: i64,
    effects: Vec<Effect>,
    age_ms: i64,
}

/// One read of the feed: the rows after a cursor, how far retention has
/// deleted rows (same statement, same snapshot), and whether the rows end
/// where asked (not cut at [`FOLLOW_BATCH`]).
struct FeedRead {
    rows: Vec<FeedRow>,
    pruned: i64,
    complete: bool,
}

fn read_feed(sql: &mut dyn Sql, after: i64, through: i64) -> Result<FeedRead, DbError> {
    let mut pruned = 0;
    let mut rows = Vec::new();
    sql.each(
        "SELECT p.through, c.seq, c.effects, c.age FROM changes_pruned AS p LEFT JOIN LATERAL (\
           SELECT seq, effects, CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) - at_ms AS age \
           FROM changes WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3) AS c ON true",
        &[&after, &through, &FOLLOW_BATCH],
        &mut |r| {
            pruned = r.get(0)?;
            let Some(seq) = r.get::<Option<i64>>(1)? else {
                return Ok(());
            };
            rows.push(FeedRow {
                seq,
                effects: decode_effects(seq, &r.get::<String>(2)?),
                age_ms: r.get(3)?,
            });
            Ok(())
        },
    )?;
    let complete = (rows.len() as i64) < FOLLOW_BATCH;
    Ok(FeedRead {
        rows,
        pruned,
        complete,
    })
}

/// The effects of one feed row; one that this binary cannot read (written
/// by a newer one, during a rolling upgrade) is skipped alone, and said.
fn decode_effects(seq: i64, text: &str) -> Vec<Effect> {
    let values: Vec<serde_json::Value> = serde_json::from_str(text).unwrap_or_else(|error| {
        tracing::error!(seq, error = %error, "A change feed row cannot be read; skipped");
        Vec::new()
    });
    values
        .into_iter()
        .filter_map(|value| {
            serde_json::from_value(value)
                .inspect_err(|error| {
                    tracing::error!(seq, error = %error, "An effect in the change feed cannot be read; skipped");
                })
                .ok()
        })
        .collect()
}

fn apply_read(read: FeedRead, cursor: &mut FeedCursor, sink: &dyn CommitSink) {
    if read.pruned > cursor.seq && !cursor.stale {
        tracing::error!(
            view = cursor.seq,
            pruned = read.pruned,
            "This replica was cut off from the store for longer than the change feed is kept: \
             its metrics miss changes; /healthz fails until a restart rebuilds them"
        );
        cursor.stale = true;
    }
    for row in read.rows {
        if row.seq <= cursor.seq {
            continue;
        }
        sink.apply(&row.effects);
        sink.followed(Duration::from_millis(row.age_ms.max(0) as u64));
        cursor.seq = row.seq;
    }
}

/// Keeps a replica's view current with what the other replicas commit:
/// its own connection, `LISTEN`, and a read of the feed on every
/// notification and at least every [`FOLLOW_INTERVAL`]. Runs until `stop`.
pub fn follow(
    config: PostgresConfig,
    cursor: Arc<Mutex<FeedCursor>>,
    sink: Arc<dyn CommitSink>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut client: Option<Client> = None;
    let mut last_error: Option<String> = None;
    let mut analyze = Some(std::time::Instant::now());
    // Whether the feed may hold rows this view has not applied.
    let mut behind = true;
    // The feed read, prepared once per connection.
    let mut statements = Statements::new();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        if client.is_none() {
            match config.connect().and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
                    .map(|_| c)
                    .map_err(DbError::from)
            }) {
                Ok(c) => {
                    if last_error.take().is_some() {
                        tracing::info!("Change feed followed again");
                    }
                    client = Some(c);
                    statements.clear();
                }
                Err(error) => {
                    let message = error.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(error = %message, "Change feed cannot be followed; retrying");
                    }
                    last_error = Some(message);
                    std::thread::sleep(FOLLOW_INTERVAL);
                    continue;
                }
            }
        }
        let conn = client.as_mut().expect("connected above");
        if analyze.is_some_and(|last| last.elapsed() >= ANALYZE_CHECK) {
            analyze = match analyze_grown(conn) {
                Ok(()) => Some(std::time::Instant::now()),
                Err(error) if error.fault_kind().is_none() => {
                    tracing::warn!(
                        error = %error,
                        "Tables cannot be analyzed by this role; their statistics are left to autovacuum"
                    );
                    None
                }
                Err(_) => Some(std::time::Instant::now()),
            };
        }
        let read = if behind {
            catch_up(conn, &mut statements, &cursor, &*sink)
        } else {
            Ok(())
        };
        match read.and_then(|()| wait_for_news(conn, &cursor)) {
            Ok(news) => behind = news,
            Err(error) => {
                tracing::warn!(error = %error, "Change feed connection lost; reconnecting");
                client = None;
                behind = true;
            }
        }
    }
}

/// Waits for a notification (or [`FOLLOW_INTERVAL`]), then drops the rest:
/// one read of the feed answers them all. False when every notification
/// names a row this view has applied already: the rows this replica's own
/// writer committed, which it applies right after its commit, so that the
/// follower reads the feed only for the other replicas' changes. A
/// notification without a seq (from an older binary) or the interval
/// passing without one asks for a read.
fn wait_for_news(client: &mut Client, cursor: &Mutex<FeedCursor>) -> Result<bool, DbError> {
    let mut notifications = client.notifications();
    let Some(first) = notifications.timeout_iter(FOLLOW_INTERVAL).next()? else {
        return Ok(true);
    };
    let mut newest = notified_seq(&first);
    while let Some(next) = notifications.iter().next()? {
        newest = newest.zip(notified_seq(&next)).map(|(a, b)| a.max(b));
    }
    let applied = cursor.lock().unwrap_or_else(|e| e.into_inner()).seq;
    Ok(newest.is_none_or(|seq| seq > applied))
}

/// The feed row a notification announces.
fn notified_seq(notification: &postgres::Notification) -> Option<i64> {
    notification.payload().parse().ok()
}

/// Analyzes each table of [`LOOKED_UP`] that changed by more rows than
/// it held at its last analyze (500 when it never had one). A database
/// starts empty: until autovacuum's first analyze, up to a minute later
/// (its naptime), the planner takes the tables for empty and the write
/// path's prepared statements keep plans that scan them whole. This
/// analyzes each table as it doubles (a handful of times while it grows);
/// at its size, autovacuum keeps it analyzed.
fn analyze_grown(client: &mut Client) -> Result<(), DbError> {
    let grown = client.query(
        "SELECT s.relname, s.n_mod_since_analyze FROM pg_stat_user_tables AS s \
         JOIN pg_class AS c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() AND s.relname = ANY($1) \
         AND s.n_mod_since_analyze > GREATEST(500, c.reltuples)",
        &[&LOOKED_UP],
    )?;
    for row in grown {
        let table: String = row.get(0);
        // Only names of LOOKED_UP reach here.
        if let Some(name) = LOOKED_UP.iter().find(|t| **t == table) {
            let changed: i64 = row.get(1);
            client.batch_execute(&format!("ANALYZE {name}"))?;
            tracing::debug!(
                table = name,
                changed,
                "Analyzed a table that outgrew its statistics"
            );
        }
    }
    Ok(())
}

fn catch_up(
    client: &mut Client,
    statements: &mut Statements,
    cursor: &Mutex<FeedCursor>,
    sink: &dyn CommitSink,
) -> Result<(), DbError> {
    loop {
        let from = cursor.lock().unwrap_or_else(|e| e.into_inner()).seq;
        let mut sql = Pg {
            client: &mut *client,
            statements: Some(&mut *statements),
        };
        let read = read_feed(&mut sql, from, i64::MAX)?;
        let complete = read.complete;
        apply_read(
            read,
            &mut cursor.lock().unwrap_or_else(|e| e.into_inner()),
            sink,
        );
        if complete {
            return Ok(());
        }
    }
}

/// Drops feed rows older than [`FEED_RETENTION`] (a retention step);
/// true when there are more to drop.
pub fn prune_feed(sql: &mut dyn Sql, now_ms: i64) -> Result<bool, DbError> {
    let dropped: i64 = sql.value(
        "WITH gone AS (DELETE FROM changes WHERE seq IN \
           (SELECT seq FROM changes WHERE at_ms < ?1 ORDER BY seq LIMIT ?2) RETURNING seq) \
         UPDATE changes_pruned SET through = GREATEST(through, (SELECT COALESCE(MAX(seq), 0) FROM gone)) \
         RETURNING (SELECT COUNT(*) FROM gone)",
        &[
            &(now_ms - FEED_RETENTION.as_millis() as i64),
            &FEED_PRUNE_LIMIT,
        ],
    )?;
    Ok(dropped >= FEED_PRUNE_LIMIT)
}

/// Brings the schema to this binary's version.
pub(super) fn migrate(client: &mut Client) -> Result<(), DbError> {
    // Replicas starting together migrate one at a time (even the first
    // CREATE TABLE IF NOT EXISTS races with itself).
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = (|| -> Result<(), DbError> {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS hookgauge_schema (version BIGINT NOT NULL)",
        )?;
        let applied: Option<i64> = client
            .query_opt("SELECT MAX(version) FROM hookgauge_schema", &[])?
            .and_then(|r| r.get(0));
        let applied = applied.unwrap_or(0) as usize;
        if applied > MIGRATIONS.len() {
            return Err(DbError::Broken(format!(
                "the database schema is version {applied}, newer than this binary knows ({}); \
                 run a newer hookgauge",
                MIGRATIONS.len()
            )));
        }
        for (index, (_, sql)) in MIGRATIONS.iter().enumerate().skip(applied) {
            let version = (index + 1) as i64;
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("DELETE FROM hookgauge_schema", &[])?;
            tx.execute(
                "INSERT INTO hookgauge_schema (version) VALUES ($1)",
                &[&version],
            )?;
            tx.commit()?;
            tracing::info!(version, "Store schema migrated");
        }
        Ok(())
    })();
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

/// Holds the advisory lock that makes one replica at a time run the
/// background work (retention, pollers, redeliveries). Tries to take it
/// every `interval`; while held, checks its connection as often, and lets
/// go (reports `false`) the moment the connection fails. The lock is the
/// session's: when a holder dies its connection closes and the server
/// frees the lock, so another replica takes it on its next try.
pub fn hold_lock(
    config: PostgresConfig,
    key: i64,
    interval: Duration,
    held: tokio::sync::watch::Sender<bool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut client: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let holding = *held.borrow();
        let result = (|| -> Result<bool, DbError> {
            if client.is_none() {
                let mut conn = config.connect()?;
                // The server ends this session when it stays idle (its
                // client froze or was cut off), which frees the lock for
                // another replica; a live one is busy every `interval`.
                // PostgreSQL before 14 has no such setting: the TCP probes
                // set by `connect` then bound the wait.
                let idle = (interval * 5).as_millis();
                if let Err(error) =
                    conn.batch_execute(&format!("SET idle_session_timeout = {idle}"))
                {
                    tracing::debug!(error = %error, "No idle_session_timeout on this server");
                }
                client = Some(conn);
            }
            let conn = client.as_mut().expect("connected above");
            if holding {
                conn.simple_query("")?;
                Ok(true)
            } else {
                let row = conn.query_one("SELECT pg_try_advisory_lock($1)", &[&key])?;
                Ok(row.get::<_, bool>(0))
            }
        })();
        let now_holding = match result {
            Ok(now) => now,
            Err(error) => {
                if holding {
                    tracing::warn!(error = %error, "Lost the background-work lock's connection; stopping background work");
                }
                client = None;
                false
            }
        };
        if now_holding != holding {
            if now_holding {
                tracing::info!(
                    "This replica runs the background work (retention, pollers, redeliveries)"
                );
            }
            let _ = held.send(now_holding);
        }
        std::thread::sleep(interval);
    }
    if let Some(client) = client {
        let _ = client.close();
    }
}
