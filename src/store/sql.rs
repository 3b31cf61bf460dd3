//! One SQL surface over both backends, so that the outcome rules, the
//! restore queries and the ledger reads are written once.
//!
//! Statements are written in the dialect the two share (`?N` parameters,
//! `ON CONFLICT`, `RETURNING`, `CAST`), with SQLite's `INDEXED BY` hints
//! allowed: for PostgreSQL the parameters become `$N` and the hints go (its
//! planner takes none). Values cross as the few types both map the same
//! way: `i64` for every integer column, `bool` only for expressions, text,
//! and bytes. What differs (a JSON array test, case-insensitive `LIKE`, row
//! locks) is asked of [`Dialect`].

use std::collections::HashMap;

use super::FaultKind;

/// Which database a statement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `column` (a JSON array of strings) holds the value of the next parameter.
    pub fn json_array_has(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("EXISTS (SELECT 1 FROM json_each({column}) WHERE value = ?)"),
            Dialect::Postgres => format!(
                "EXISTS (SELECT 1 FROM json_array_elements_text({column}::json) AS a(value) WHERE a.value = ?)"
            ),
        }
    }

    /// `LIKE` that ignores ASCII case, as SQLite's does.
    pub fn like(self) -> &'static str {
        match self {
            Dialect::Sqlite => "LIKE",
            Dialect::Postgres => "ILIKE",
        }
    }

    /// `LIMIT` for "no limit", before an `OFFSET`.
    pub fn no_limit(self) -> &'static str {
        match self {
            Dialect::Sqlite => "-1",
            Dialect::Postgres => "ALL",
        }
    }

    /// Appended to a `SELECT` whose rows the transaction goes on to update:
    /// other writers of those rows wait for its commit. SQLite has one
    /// writer, so nothing is needed there.
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

/// A value that binds the same way on both backends.
pub trait Param: Sync {
    fn sqlite(&self) -> &dyn rusqlite::ToSql;
    fn postgres(&self) -> &(dyn postgres::types::ToSql + Sync);
}

macro_rules! params_of {
    ($($t:ty),* $(,)?) => {$(
        impl Param for $t {
            fn sqlite(&self) -> &dyn rusqlite::ToSql {
                self
            }
            fn postgres(&self) -> &(dyn postgres::types::ToSql + Sync) {
                self
            }
        }
    )*};
}

params_of!(
    i64,
    Option<i64>,
    bool,
    &str,
    String,
    Option<&str>,
    Option<String>,
    &[u8],
    Option<&[u8]>,
);

/// A column type read the same way on both backends.
pub trait Column: Sized {
    fn sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self>;
    fn postgres(row: &postgres::Row, index: usize) -> Result<Self, postgres::Error>;
}

macro_rules! columns_of {
    ($($t:ty),* $(,)?) => {$(
        impl Column for $t {
            fn sqlite(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Self> {
                row.get(index)
            }
            fn postgres(row: &postgres::Row, index: usize) -> Result<Self, postgres::Error> {
                row.try_get(index)
            }
        }
    )*};
}

columns_of!(
    i64,
    Option<i64>,
    bool,
    f64,
    String,
    Option<String>,
    Vec<u8>,
    Option<Vec<u8>>,
);

/// One result row.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    pub fn get<T: Column>(&self, index: usize) -> Result<T, DbError> {
        match self {
            Row::Sqlite(row) => T::sqlite(row, index).map_err(DbError::Sqlite),
            Row::Postgres(row) => T::postgres(row, index).map_err(DbError::Postgres),
        }
    }
}

/// A database error: a fault of the database (it cannot be written now) or
/// a statement that failed on its own (a bug, a broken invariant).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// Nothing failed in the database, but the work cannot go on.
    #[error("{0}")]
    Broken(String),
}

impl DbError {
    /// `Some` when the database cannot be written now (`Other`: a statement
    /// failed on its own); `None` for [`DbError::Broken`].
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            DbError::Sqlite(error) => sqlite_fault_kind(error),
            DbError::Postgres(error) => Some(postgres_fault_kind(error)),
            DbError::Broken(_) => None,
        }
    }

    /// A fault that a later attempt may not hit: the delivery is answered
    /// 503 rather than failed on its own.
    pub fn is_fault(&self) -> bool {
        self.fault_kind().is_some_and(|k| k != FaultKind::Other)
    }
}

/// The server's message, with its detail, rather than "db error".
fn postgres_message(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        },
        None => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            message
        }
    }
}

/// Runs statements on one connection or transaction of either backend.
pub trait Sql {
    fn dialect(&self) -> Dialect;
    /// Rows changed.
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<usize, DbError>;
    /// Calls `each` on every row, in order.
    fn each(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError>;
}

impl dyn Sql + '_ {
    /// Every row, mapped.
    pub fn rows<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        map: impl Fn(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut out = Vec::new();
        self.each(sql, params, &mut |row| {
            out.push(map(row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    pub fn row<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        map: impl Fn(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut out = None;
        self.each(sql, params, &mut |row| {
            if out.is_none() {
                out = Some(map(row)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first column of the first row (a query that always answers one).
    pub fn value<T: Column>(&mut self, sql: &str, params: &[&dyn Param]) -> Result<T, DbError> {
        self.row(sql, params, |r| r.get(0))?
            .ok_or_else(|| DbError::Broken(format!("no row from: {sql}")))
    }

    pub fn exists(&mut self, sql: &str, params: &[&dyn Param]) -> Result<bool, DbError> {
        Ok(self.row(sql, params, |_| Ok(()))?.is_some())
    }
}

/// A SQLite connection (or transaction: it derefs to one); statements are
/// prepared once per connection.
pub struct Lite<'c>(pub &'c rusqlite::Connection);

impl Sql for Lite<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<usize, DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(&*lite_params(params))?)
    }

    fn each(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(&*lite_params(params))?;
        while let Some(row) = rows.next()? {
            each(&Row::Sqlite(row))?;
        }
        Ok(())
    }
}

fn lite_params<'p>(params: &'p [&'p dyn Param]) -> Vec<&'p dyn rusqlite::ToSql> {
    params.iter().map(|p| p.sqlite()).collect()
}

fn pg_params<'p>(params: &'p [&'p dyn Param]) -> Vec<&'p (dyn postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p.postgres()).collect()
}

/// Prepared statements of one PostgreSQL connection, by their shared-dialect text.
pub type Statements = HashMap<String, postgres::Statement>;

/// A PostgreSQL client or transaction. With `statements`, each statement is
/// prepared once per connection (the write path); without, every call
/// parses its statement again (reads: rare, and from pooled connections).
pub struct Pg<'a, C: postgres::GenericClient> {
    pub client: &'a mut C,
    pub statements: Option<&'a mut Statements>,
}

impl<C: postgres::GenericClient> Pg<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        let text = to_postgres(sql);
        match self.statements.as_deref_mut() {
            Some(cache) => {
                if let Some(statement) = cache.get(sql) {
                    return Ok(statement.clone());
                }
                let statement = self.client.prepare(&text)?;
                cache.insert(sql.to_owned(), statement.clone());
                Ok(statement)
            }
            None => Ok(self.client.prepare(&text)?),
        }
    }
}

impl<C: postgres::GenericClient> Sql for Pg<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<usize, DbError> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, &pg_params(params))? as usize)
    }

    fn each(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        use postgres::fallible_iterator::FallibleIterator;
        let statement = self.statement(sql)?;
        // Row by row as they arrive: a restore reads whole tables.
        let mut rows = self.client.query_raw(&statement, pg_params(params))?;
        while let Some(row) = rows.next()? {
            each(&Row::Postgres(&row))?;
        }
        Ok(())
    }
}

/// The shared dialect as PostgreSQL reads it: `?N` and `?` become `$N`
/// (outside string literals) and `INDEXED BY <index>` hints are dropped.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 0u32;
    let mut in_string = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            in_string = c != '\'';
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                out.push(c);
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    next += 1;
                    digits = next.to_string();
                }
                out.push('$');
                out.push_str(&digits);
            }
            _ => out.push(c),
        }
    }
    strip_index_hints(&out)
}

fn strip_index_hints(sql: &str) -> String {
    const HINT: &str = "INDEXED BY ";
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(HINT) {
        out.push_str(&rest[..at]);
        let after = &rest[at + HINT.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        rest = after[end..].strip_prefix(' ').unwrap_or(&after[end..]);
    }
    out.push_str(rest);
    out
}

/// Classifies errors that mean "the database cannot be written now".
fn sqlite_fault_kind(error: &rusqlite::Error) -> Option<FaultKind> {
    let rusqlite::Error::SqliteFailure(failure, _) = error else {
        return None;
    };
    Some(match failure.code {
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => FaultKind::Busy,
        rusqlite::ErrorCode::DiskFull => FaultKind::Full,
        rusqlite::ErrorCode::ReadOnly => FaultKind::ReadOnly,
        rusqlite::ErrorCode::SystemIoFailure => FaultKind::Io,
        rusqlite::ErrorCode::CannotOpen
        | rusqlite::ErrorCode::PermissionDenied
        | rusqlite::ErrorCode::NotADatabase => FaultKind::Open,
        _ => FaultKind::Other,
    })
}

/// Classifies a PostgreSQL error as a store fault.
fn postgres_fault_kind(error: &postgres::Error) -> FaultKind {
    if error.is_closed() {
        return FaultKind::Io;
    }
    let Some(code) = error.code() else {
        // No answer from the server: the connection failed or broke; else
        // the client refused a value (a bug: it fails on its own).
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            if cause.is::<std::io::Error>() {
                return FaultKind::Io;
            }
            source = cause.source();
        }
        return FaultKind::Other;
    };
    let class = &code.code()[..2];
    match code {
        c if *c == postgres::error::SqlState::DISK_FULL => FaultKind::Full,
        c if *c == postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION => FaultKind::ReadOnly,
        c if *c == postgres::error::SqlState::QUERY_CANCELED
            || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            || *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *c == postgres::error::SqlState::LOCK_NOT_AVAILABLE =>
        {
            FaultKind::Busy
        }
        c if *c == postgres::error::SqlState::ADMIN_SHUTDOWN
            || *c == postgres::error::SqlState::CRASH_SHUTDOWN
            || *c == postgres::error::SqlState::CANNOT_CONNECT_NOW =>
        {
            FaultKind::Io
        }
        _ => match class {
            "08" => FaultKind::Io,
            "53" => FaultKind::Busy,
            "28" | "3D" => FaultKind::Open,
            "58" => FaultKind::Io,
            _ => FaultKind::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_and_bare_parameters_become_dollar_parameters() {
        assert_eq!(
            to_postgres("SELECT 1 FROM t WHERE a = ?2 AND b = ?1 AND c = '?3'"),
            "SELECT 1 FROM t WHERE a = $2 AND b = $1 AND c = '?3'"
        );
        assert_eq!(
            to_postgres("SELECT 1 WHERE a = ? AND b LIKE ? ESCAPE '\\' AND c = ?"),
            "SELECT 1 WHERE a = $1 AND b LIKE $2 ESCAPE '\\' AND c = $3"
        );
    }

    #[test]
    fn index_hints_are_dropped() {
        assert_eq!(
            to_postgres("SELECT seq FROM deliveries INDEXED BY deliveries_by_source WHERE x = ?1"),
            "SELECT seq FROM deliveries WHERE x = $1"
        );
        assert_eq!(
            to_postgres("FROM commits AS c INDEXED BY commits_by_pushed_seq\n WHERE"),
            "FROM commits AS c \n WHERE"
        );
    }
}
