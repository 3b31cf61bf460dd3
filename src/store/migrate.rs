//! `hookgauge migrate-store`: copies an embedded SQLite store into an empty
//! PostgreSQL database, so that a team that outgrew one replica keeps its
//! history. Every table that holds history is copied row for row (the
//! ledger with its seq, so that admin links stay valid), in one PostgreSQL
//! transaction: a failed copy leaves the target empty. The change feed and
//! the readiness probe row are not history and start empty.

use std::path::Path;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::sql::DbError;
use super::{postgres as pg, sqlite, PostgresConfig, StoreConfig};

/// Tables copied, in this order, and the columns each has in both schemas.
const TABLES: &[(&str, &str)] = &[
    (
        "deliveries",
        "seq, delivery_id, source, event, received_at_ms, outcome, reason, detail, event_keys, \
         superseded_by, authenticated, body, headers, instance, apps, replay_of, state, attempts, \
         next_attempt_ms, error",
    ),
    (
        "commits",
        "app, commit_sha, image_sha, namespace, commit_link, time, delivery_id, pushed_seq",
    ),
    (
        "deploys",
        "app, namespace, time, image_sha, commit_sha, environment, delivery_id, \
         rework_reported, rework, rework_marked, failed, failed_marked",
    ),
    (
        "failures",
        "app, issue_number, created, created_delivery, resolved, resolved_delivery",
    ),
    ("observations", "kind, app, subject, seconds"),
    ("links", "app, commit_sha, image_sha, time, delivery_id"),
    (
        "poll_state",
        "stream, etag, last_modified, watermark, updated_ms",
    ),
];

/// Rows per insert statement.
const ROWS_PER_INSERT: usize = 100;

/// How many rows of each table were copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
}

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("no SQLite store at {0}")]
    NoSource(String),
    #[error("the PostgreSQL database already holds a hookgauge store ({0} ledger rows); migrate into an empty database")]
    TargetNotEmpty(i64),
    #[error("{table}: {copied} rows copied but {expected} in the SQLite store")]
    Mismatch {
        table: &'static str,
        copied: i64,
        expected: i64,
    },
    #[error(transparent)]
    Database(#[from] DbError),
}

/// One SQLite value, bound as the PostgreSQL column's type.
#[derive(Debug)]
enum Value {
    Null,
    Integer(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty)
            || <String as ToSql>::accepts(ty)
            || <Vec<u8> as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

/// Copies the SQLite store at `from` (brought to the current schema first,
/// as `serve` would) into the empty PostgreSQL database `to` (migrated to
/// the same schema), then checks that every table holds as many rows as
/// the source. `progress` is told each table as it is done.
pub fn sqlite_to_postgres(
    from: &Path,
    store: &StoreConfig,
    to: &PostgresConfig,
    mut progress: impl FnMut(&str, u64),
) -> Result<Copied, MigrateError> {
    if !from.exists() {
        return Err(MigrateError::NoSource(from.display().to_string()));
    }
    // Opening migrates both schemas to this binary's version.
    let mut source =
        sqlite::Database::open(from, store, Default::default()).map_err(DbError::from)?;
    let mut target = to.connect()?;
    pg::migrate(&mut target)?;
    let held: i64 = target
        .query_one("SELECT COUNT(*) FROM deliveries", &[])
        .map_err(DbError::from)?
        .get(0);
    let facts: i64 = target
        .query_one(
            "SELECT (SELECT COUNT(*) FROM commits) + (SELECT COUNT(*) FROM deploys) \
             + (SELECT COUNT(*) FROM failures)",
            &[],
        )
        .map_err(DbError::from)?
        .get(0);
    if held > 0 || facts > 0 {
        return Err(MigrateError::TargetNotEmpty(held));
    }
    let mut tx = target.transaction().map_err(DbError::from)?;
    // A large history takes longer than one statement is allowed at serve time.
    tx.batch_execute(
        "SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0",
    )
    .map_err(DbError::from)?;
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        let count = source.read(|sql| {
            let mut batch: Vec<Vec<Value>> = Vec::with_capacity(ROWS_PER_INSERT);
            let mut count = 0u64;
            let width = columns.split(',').count();
            let mut flush = |batch: &mut Vec<Vec<Value>>| -> Result<(), DbError> {
                if batch.is_empty() {
                    return Ok(());
                }
                let rows: Vec<String> = (0..batch.len())
                    .map(|r| {
                        let cells: Vec<String> =
                            (1..=width).map(|c| format!("${}", r * width + c)).collect();
                        format!("({})", cells.join(", "))
                    })
                    .collect();
                let statement =
                    format!("INSERT INTO {table} ({columns}) VALUES {}", rows.join(", "));
                let params: Vec<&(dyn ToSql + Sync)> = batch
                    .iter()
                    .flatten()
                    .map(|v| v as &(dyn ToSql + Sync))
                    .collect();
                tx.execute(&statement, &params)?;
                batch.clear();
                Ok(())
            };
            sql.each(&format!("SELECT {columns} FROM {table}"), &[], &mut |row| {
                let super::sql::Row::Sqlite(row) = row else {
                    return Err(DbError::Broken("the source is not SQLite".into()));
                };
                let values = (0..width)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => Value::Null,
                            rusqlite::types::ValueRef::Integer(v) => Value::Integer(v),
                            rusqlite::types::ValueRef::Real(v) => Value::Integer(v as i64),
                            rusqlite::types::ValueRef::Text(v) => {
                                Value::Text(String::from_utf8_lossy(v).into_owned())
                            }
                            rusqlite::types::ValueRef::Blob(v) => Value::Blob(v.to_vec()),
                        })
                    })
                    .collect::<Result<Vec<_>, rusqlite::Error>>()?;
                batch.push(values);
                count += 1;
                if batch.len() >= ROWS_PER_INSERT {
                    flush(&mut batch)?;
                }
                Ok(())
            })?;
            flush(&mut batch)?;
            Ok(count)
        })?;
        let expected: i64 =
            source.read(|sql| sql.value(&format!("SELECT COUNT(*) FROM {table}"), &[]))?;
        let landed: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .map_err(DbError::from)?
            .get(0);
        if landed != expected || count as i64 != expected {
            return Err(MigrateError::Mismatch {
                table,
                copied: landed,
                expected,
            });
        }
        progress(table, count);
        copied.push((*table, count));
    }
    // New ledger rows continue after the copied ones.
    tx.execute(
        "SELECT setval(pg_get_serial_sequence('deliveries', 'seq'), \
         COALESCE((SELECT MAX(seq) FROM deliveries), 0) + 1, false)",
        &[],
    )
    .map_err(DbError::from)?;
    tx.commit().map_err(DbError::from)?;
    source.close();
    Ok(Copied { tables: copied })
}
