//! `[store]` as written (`RawStore`, `Synchronous`) and the PostgreSQL
//! connection it describes: the URL checked, the password and CA files read,
//! TLS built. The configuration loader calls these and names the keys; the
//! store owns what its settings mean.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PostgresConfig;
use crate::signature::read_secrets_file;

/// A `[store]` setting that cannot be used: its key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidSetting {
    pub key: String,
    pub reason: String,
}

impl InvalidSetting {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        InvalidSetting {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// `[store]`: durability and ledger limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// `normal`: an acknowledged delivery survives a process crash.
    /// `full`: it also survives power loss (fsync on every group commit).
    pub synchronous: Synchronous,
    /// How long a commit waits for a lock held by another process before the
    /// delivery is answered 503.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Largest raw body kept in a ledger row, in bytes; larger bodies are not kept.
    pub max_body_bytes: usize,
    /// Most ledger rows kept for unauthenticated requests; the oldest go first.
    pub max_unauthenticated_rows: u64,
    /// Ledger rows written for unauthenticated requests per second; the rest
    /// are answered and counted only.
    pub max_unauthenticated_per_second: u32,
    /// A PostgreSQL URL (`postgres://user@host:5432/db`): the store several
    /// replicas share. Absent: the embedded SQLite file in `server.data_dir`.
    pub url: Option<String>,
    /// The URL read from a file instead (a Kubernetes Secret).
    pub url_file: Option<PathBuf>,
    /// The database password, read from a file, for a URL without one.
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) the PostgreSQL server's certificate may chain
    /// to besides the public roots; implies `sslmode=require`.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL connections for reads (admin API, poller state, export).
    pub pool_size: u32,
    /// Longest a PostgreSQL statement may run before it fails (503).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Longest the connection to PostgreSQL may take to open.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(2),
            max_body_bytes: 1024 * 1024,
            max_unauthenticated_rows: 10_000,
            max_unauthenticated_per_second: 50,
            url: None,
            url_file: None,
            password_file: None,
            ca_file: None,
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// SQLite `synchronous` setting, as a durability promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    Full,
}

impl Synchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        }
    }
}

/// `[store] url` or `url_file`, with `password_file`, as a connection
/// configuration. Errors never repeat the URL: it may hold a password.
pub fn postgres_store(raw: &RawStore) -> Result<Option<PostgresConfig>, InvalidSetting> {
    let url = match (&raw.url, &raw.url_file) {
        (Some(_), Some(_)) => {
            return Err(InvalidSetting::new(
                "store.url_file",
                "set store.url or store.url_file, not both",
            ))
        }
        (Some(url), None) => ("store.url", url.trim().to_owned()),
        (None, Some(path)) => (
            "store.url_file",
            read_secrets_file(path)
                .map_err(|e| InvalidSetting::new("store.url_file", e))?
                .trim()
                .to_owned(),
        ),
        (None, None) => {
            if raw.password_file.is_some() {
                return Err(InvalidSetting::new(
                    "store.password_file",
                    "is for a PostgreSQL store: set store.url or store.url_file too",
                ));
            }
            return Ok(None);
        }
    };
    let (key, url) = url;
    postgres_config(key, &url, raw).map(Some)
}

/// A PostgreSQL URL with `[store]`'s password file and timeouts as a
/// connection configuration; `key` names the setting in errors.
pub fn postgres_config(
    key: &str,
    url: &str,
    raw: &RawStore,
) -> Result<PostgresConfig, InvalidSetting> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(InvalidSetting::new(
            key,
            "must be a PostgreSQL URL (postgres://user@host:5432/database); \
             leave it out for the embedded SQLite store in server.data_dir",
        ));
    }
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
        InvalidSetting::new(key, format!("is not a valid PostgreSQL URL: {e}"))
    })?;
    if config.get_dbname().is_none() {
        return Err(InvalidSetting::new(
            key,
            "names no database (postgres://user@host:5432/database)",
        ));
    }
    if config.get_user().is_none() {
        return Err(InvalidSetting::new(
            key,
            "names no user (postgres://user@host:5432/database)",
        ));
    }
    if let Some(path) = &raw.password_file {
        let password =
            read_secrets_file(path).map_err(|e| InvalidSetting::new("store.password_file", e))?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(InvalidSetting::new("store.password_file", "is empty"));
        }
        config.password(password);
    }
    if raw.pool_size == 0 {
        return Err(InvalidSetting::new("store.pool_size", "must be at least 1"));
    }
    if raw.statement_timeout.is_zero() {
        return Err(InvalidSetting::new(
            "store.statement_timeout",
            "must be greater than zero",
        ));
    }
    if raw.connect_timeout.is_zero() {
        return Err(InvalidSetting::new(
            "store.connect_timeout",
            "must be greater than zero",
        ));
    }
    // `require`: encrypted and verified (libpq's verify-full). `prefer`, the
    // default, and `disable` connect in the clear: a server's self-signed
    // certificate must not stop a connection nobody asked to encrypt.
    if raw.ca_file.is_some() {
        config.ssl_mode(postgres::config::SslMode::Require);
    }
    let tls = match config.get_ssl_mode() {
        postgres::config::SslMode::Require => Some(std::sync::Arc::new(
            super::postgres::tls_config(raw.ca_file.as_deref())
                .map_err(|e| InvalidSetting::new("store.ca_file", e))?,
        )),
        _ => None,
    };
    config
        .connect_timeout(raw.connect_timeout)
        .application_name("hookgauge")
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(raw.connect_timeout.max(Duration::from_secs(10)));
    Ok(PostgresConfig {
        config,
        pool_size: raw.pool_size,
        statement_timeout: raw.statement_timeout,
        tls,
    })
}
