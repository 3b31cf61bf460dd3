//! The embedded SQLite backend: opening the file in WAL mode, its schema
//! migrations and its transactions. The rules applied inside them are
//! shared with PostgreSQL (`rules/`); the checkpoints are `checkpoint.rs`'s.
//!
//! Runs only on the store's writer thread (one writer: SQLite's own lock).

use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};

use super::checkpoint::{self, WalRestart};
use super::sql::{DbError, Lite, Sql};
use super::StoreConfig;
use super::Synchronous;

/// Embedded migrations, applied in order; `PRAGMA user_version` records how
/// many have run.
pub(super) const MIGRATIONS: &[(&str, &str)] = super::migrations!("migrations/");

pub struct Database {
    conn: Connection,
    restart: Arc<WalRestart>,
}

impl Database {
    pub fn open(
        path: &std::path::Path,
        config: &StoreConfig,
        restart: Arc<WalRestart>,
    ) -> rusqlite::Result<Database> {
        if let Some(dir) = path.parent() {
            // A missing directory is created; failing that, open() reports it.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open_with_flags(
            path,
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
        // database, not the writer: see WalRestart. SQLite's auto-checkpoint
        // stays as a net, at four times the restart size, which the WAL
        // reaches only if that thread cannot work (it could not open the
        // file, say). The page cache keeps hot index pages.
        let net = 4 * checkpoint::WAL_RESTART_FRAMES;
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = OFF; \
             PRAGMA wal_autocheckpoint = {net}; PRAGMA cache_size = -8192; \
             PRAGMA temp_store = MEMORY;"
        ))?;
        migrate(&conn)?;
        Ok(Database { conn, restart })
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`: the write lock
    /// is taken first, so a busy database fails before any work is done).
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.restart.finish(&self.conn);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&mut Lite(&tx))?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` outside a transaction (the writer is the only writer, so
    /// its reads see one state).
    pub fn read<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        f(&mut Lite(&self.conn))
    }

    /// Checkpoints the WAL and closes the connection.
    pub fn close(self) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        if let Err((_, error)) = self.conn.close() {
            tracing::warn!(error = %error, "Store did not close cleanly");
        }
    }
}

pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
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
    for (index, (_, sql)) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
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
