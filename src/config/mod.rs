//! Configuration: compiled-in defaults, then an optional TOML file, then
//! `HOOKGAUGE__SECTION__KEY` environment variables, then command-line flags,
//! deserialised into `RawConfig` (as written) and checked into `Settings`
//! (validated, secrets loaded from their files).
//!
//! Every error names the key it is about. Secrets are read here and nowhere
//! else, and `Settings` prints them redacted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod sources;

pub use self::sources::{
    PelorusSettings, RawPelorus, RawSourceOptions, RawSources, SourceInstance,
};
use crate::plugins::{self, Plugin, SourceOptions};
use crate::signature::{read_secrets_file, Secret};
use crate::store::settings::postgres_store;
pub use crate::store::{RawStore, Synchronous};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "HOOKGAUGE";

/// The configuration as written in the file and the environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub retention: RawRetention,
    #[serde(default)]
    pub sources: RawSources,
    #[serde(default)]
    pub poll: crate::poll::RawPoll,
}

/// `[admin]`: who may use the admin API and the deliveries page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Keys accepted as `Authorization: Bearer <key>`; without any, the
    /// admin API answers loopback clients only.
    #[serde(deserialize_with = "string_list")]
    pub api_keys: Vec<String>,
    /// File with one key per line.
    pub api_keys_file: Option<PathBuf>,
}

/// `[retention]`: how long the ledger keeps what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    /// Days raw bodies are kept (redelivery needs them).
    pub body_days: u32,
    /// Days ledger rows (metadata) are kept.
    pub ledger_days: u32,
    /// Days events are kept; 0 keeps them for ever (they are the history).
    pub events_days: u32,
    /// Total size of kept bodies; the oldest go first beyond it (0: no cap).
    pub max_body_bytes_total: u64,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            body_days: 7,
            ledger_days: 90,
            events_days: 0,
            max_body_bytes_total: 1024 * 1024 * 1024,
            interval: Duration::from_secs(60),
        }
    }
}

/// `[server]`: listeners and the data directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Public listener for webhooks, `/healthz` and `/readyz`.
    pub ingest_addr: String,
    /// Internal listener for `/metrics`.
    pub metrics_addr: String,
    /// Directory of the embedded store (`hookgauge.db`).
    pub data_dir: PathBuf,
    /// Allow a non-loopback ingest listener while an enabled source has no secret.
    pub allow_unsigned: bool,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Directory of declarative plugin files (`*.toml`) to load besides the
    /// shipped ones.
    pub plugins_dir: Option<PathBuf>,
    /// Open ingest connections served at once; more wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            ingest_addr: "127.0.0.1:8080".into(),
            metrics_addr: "127.0.0.1:9464".into(),
            data_dir: PathBuf::from("./data"),
            allow_unsigned: false,
            shutdown_timeout: Duration::from_secs(30),
            plugins_dir: None,
            max_connections: 8192,
        }
    }
}

/// `[metrics]`: how long Pelorus gauges stay exposed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// `commit_timestamp` is exposed while the commit is younger than this.
    #[serde(with = "humantime_serde")]
    pub commit_window: Duration,
    /// `deploy_timestamp` and the failure gauges are exposed while the event is
    /// younger than this. Prometheus drops samples older than about an hour
    /// unless its out-of-order window is raised; keep the two in step.
    #[serde(with = "humantime_serde")]
    pub exposure_window: Duration,
    /// A failure created this long after a deploy of its application (with
    /// no deploy in between) is tied to that deploy: it counts in the linked
    /// change failure rate and its recovery in the failed deployment
    /// recovery time. Replicas sharing a store must agree on it.
    #[serde(with = "humantime_serde")]
    pub failure_link_window: Duration,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            commit_window: Duration::from_secs(90 * 24 * 3600),
            exposure_window: Duration::from_secs(30 * 60),
            failure_link_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[log]`: log format and level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hookgauge=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A list written as a TOML array or, from the environment, as one
/// comma-separated string; numbers and booleans are taken as their text.
fn string_list<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    let scalar = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match serde_json::Value::deserialize(de)? {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| {
                scalar(item).ok_or_else(|| serde::de::Error::custom("expected a list of strings"))
            })
            .collect(),
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()),
        other => scalar(&other)
            .map(|one| vec![one])
            .ok_or_else(|| serde::de::Error::custom("expected a list of strings")),
    }
}

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[source] ::config::ConfigError),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl From<crate::store::InvalidSetting> for ConfigError {
    fn from(invalid: crate::store::InvalidSetting) -> Self {
        ConfigError::Invalid {
            key: invalid.key,
            reason: invalid.reason,
        }
    }
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Values given on the command line; they override file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub ingest_addr: Option<String>,
    pub metrics_addr: Option<String>,
}

/// Validated settings the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub allow_unsigned: bool,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    pub store: StoreSettings,
    pub metrics: MetricsSettings,
    pub log: RawLog,
    pub pelorus: PelorusSettings,
    pub admin: AdminSettings,
    pub retention: RetentionSettings,
    /// Where the user's plugin files were loaded from, if anywhere.
    pub plugins_dir: Option<PathBuf>,
    /// Every source this process knows: built-in, then declarative.
    pub plugins: Vec<&'static dyn Plugin>,
    /// Native source instances, enabled or not.
    pub sources: Vec<SourceInstance>,
    /// Repositories read through provider APIs (`[[poll.<provider>]]`).
    pub poll: Vec<crate::poll::PollTarget>,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub api_keys: Vec<Secret>,
}

#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub policy: crate::store::RetentionPolicy,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The PostgreSQL store, when one is configured (else the embedded file).
    pub postgres: Option<crate::store::PostgresConfig>,
    /// `[store] password_file` and `ca_file`, shown by `check-config`.
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_unauthenticated_rows: u64,
    pub max_unauthenticated_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub commit_window: Duration,
    pub exposure_window: Duration,
    pub failure_link_window: Duration,
}

impl Settings {
    /// Loads defaults, the optional file, the environment and the overrides.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        Self::load_from(file, overrides, std::env::vars())
    }

    /// As [`Settings::load`], reading the environment from `env` (tests).
    pub fn load_from(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env_map: ::config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let mut builder = ::config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            builder =
                builder.add_source(::config::File::from(path).format(::config::FileFormat::Toml));
        }
        builder = builder.add_source(
            ::config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("sources.pelorus.secrets")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        let set = |b: ::config::ConfigBuilder<_>, key: &str, value: &Option<String>| match value {
            Some(v) => b.set_override(key, v.clone()),
            None => Ok(b),
        };
        let data_dir = overrides
            .data_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        builder = set(builder, "server.data_dir", &data_dir).map_err(ConfigError::Load)?;
        builder = set(builder, "server.ingest_addr", &overrides.ingest_addr)
            .map_err(ConfigError::Load)?;
        builder = set(builder, "server.metrics_addr", &overrides.metrics_addr)
            .map_err(ConfigError::Load)?;
        let raw: RawConfig = builder
            .build()
            .map_err(ConfigError::Load)?
            .try_deserialize()
            .map_err(ConfigError::Load)?;
        Settings::from_raw(raw)
    }

    /// Checks a `RawConfig` and reads the secret files it names.
    pub fn from_raw(raw: RawConfig) -> Result<Settings, ConfigError> {
        let ingest_addr = parse_addr("server.ingest_addr", &raw.server.ingest_addr)?;
        let metrics_addr = parse_addr("server.metrics_addr", &raw.server.metrics_addr)?;
        if ingest_addr == metrics_addr && ingest_addr.port() != 0 {
            return Err(ConfigError::invalid(
                "server.metrics_addr",
                "must differ from server.ingest_addr: metrics must not be served on the public port",
            ));
        }
        if raw.server.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("server.data_dir", "must not be empty"));
        }
        if raw.server.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1: no connection could be served",
            ));
        }
        positive("metrics.exposure_window", raw.metrics.exposure_window)?;
        positive(
            "metrics.failure_link_window",
            raw.metrics.failure_link_window,
        )?;
        positive("metrics.commit_window", raw.metrics.commit_window)?;
        if raw.store.max_unauthenticated_rows == 0 {
            return Err(ConfigError::invalid(
                "store.max_unauthenticated_rows",
                "must be at least 1",
            ));
        }
        if raw.log.level.trim().is_empty() {
            return Err(ConfigError::invalid("log.level", "must not be empty"));
        }
        let plugins = plugins::all(raw.server.plugins_dir.as_deref())
            .map_err(|e| ConfigError::invalid("server.plugins_dir", format!("plugin file {e}")))?;
        if raw.retention.ledger_days == 0 || raw.retention.body_days == 0 {
            return Err(ConfigError::invalid(
                "retention",
                "body_days and ledger_days must be at least 1",
            ));
        }
        if raw.retention.body_days > raw.retention.ledger_days {
            return Err(ConfigError::invalid(
                "retention.body_days",
                "must not exceed retention.ledger_days: a body is kept in its ledger row",
            ));
        }
        positive("retention.interval", raw.retention.interval)?;
        let admin = AdminSettings {
            api_keys: load_keys(
                "admin",
                "api_keys",
                &raw.admin.api_keys,
                raw.admin.api_keys_file.as_deref(),
            )?,
        };
        let retention = RetentionSettings {
            policy: crate::store::RetentionPolicy {
                body_days: raw.retention.body_days,
                ledger_days: raw.retention.ledger_days,
                events_days: raw.retention.events_days,
                max_body_bytes_total: raw.retention.max_body_bytes_total,
            },
            interval: raw.retention.interval,
        };
        let pelorus = PelorusSettings {
            enabled: raw.sources.pelorus.enabled,
            secrets: load_secrets(
                "sources.pelorus",
                &raw.sources.pelorus.secrets,
                raw.sources.pelorus.secrets_file.as_deref(),
            )?,
            lenient_signatures: raw.sources.pelorus.lenient_signatures,
        };
        let poll_raw = raw.poll.clone();
        let mut settings = Settings {
            ingest_addr,
            metrics_addr,
            data_dir: raw.server.data_dir,
            allow_unsigned: raw.server.allow_unsigned,
            shutdown_timeout: raw.server.shutdown_timeout,
            max_connections: raw.server.max_connections,
            store: StoreSettings {
                postgres: postgres_store(&raw.store)?,
                password_file: raw.store.password_file.clone(),
                ca_file: raw.store.ca_file.clone(),
                synchronous: raw.store.synchronous,
                busy_timeout: raw.store.busy_timeout,
                max_body_bytes: raw.store.max_body_bytes,
                max_unauthenticated_rows: raw.store.max_unauthenticated_rows,
                max_unauthenticated_per_second: raw.store.max_unauthenticated_per_second,
            },
            metrics: MetricsSettings {
                commit_window: raw.metrics.commit_window,
                exposure_window: raw.metrics.exposure_window,
                failure_link_window: raw.metrics.failure_link_window,
            },
            log: raw.log,
            pelorus,
            admin,
            retention,
            sources: sources::native_sources(&raw.sources.native, &plugins)?,
            poll: Vec::new(),
            plugins,
            plugins_dir: raw.server.plugins_dir,
        };
        let env = |name: &str| std::env::var(name).ok();
        for (provider, index, entry) in poll_raw.entries() {
            let instances: Vec<(String, SourceOptions)> = settings
                .sources
                .iter()
                .filter(|i| i.plugin.source() == provider.name())
                .map(|i| (i.key(), i.options.clone()))
                .collect();
            let target = crate::poll::PollTarget::from_raw(
                provider,
                entry,
                index,
                poll_raw.max_quota_share,
                &instances,
                &env,
            )
            .map_err(|(key, reason)| ConfigError::invalid(&key, reason))?;
            settings.poll.push(target);
        }
        settings.check_public_bind()?;
        Ok(settings)
    }

    /// Enabled sources that accept deliveries without any secret.
    pub fn unsigned_sources(&self) -> Vec<String> {
        let mut unsigned = Vec::new();
        if self.pelorus.enabled && self.pelorus.secrets.is_empty() {
            unsigned.push("pelorus".to_owned());
        }
        unsigned.extend(
            self.sources
                .iter()
                .filter(|s| s.enabled && s.verifier.is_open())
                .map(SourceInstance::key),
        );
        unsigned
    }

    /// Refuses a non-loopback ingest listener while a source is unsigned.
    fn check_public_bind(&self) -> Result<(), ConfigError> {
        if self.ingest_addr.ip().is_loopback() || self.allow_unsigned {
            return Ok(());
        }
        match self.unsigned_sources().first() {
            Some(source) => Err(ConfigError::invalid(
                &format!("sources.{source}.secrets"),
                format!(
                    "source `{source}` is enabled without a secret while server.ingest_addr ({}) is not a \
                     loopback address; set sources.{source}.secrets or sources.{source}.secrets_file, \
                     disable the source, or set server.allow_unsigned = true",
                    self.ingest_addr
                ),
            )),
            None => Ok(()),
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let secrets = |s: &[Secret]| -> String {
            let items: Vec<String> = s.iter().map(|s| format!("\"{s}\"")).collect();
            format!("[{}]", items.join(", "))
        };
        let toml_str = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = format!(
            "[server]\n\
             ingest_addr = {ingest}\n\
             metrics_addr = {metrics}\n\
             data_dir = {data_dir}\n\
             allow_unsigned = {allow_unsigned}\n\
             shutdown_timeout = \"{shutdown}\"\n\
             max_connections = {max_connections}\n\
             {plugins_dir}\
             \n\
             [store]\n\
             {postgres}\
             synchronous = \"{sync}\"\n\
             busy_timeout = \"{busy}\"\n\
             max_body_bytes = {max_body}\n\
             max_unauthenticated_rows = {max_unauth}\n\
             max_unauthenticated_per_second = {max_unauth_rate}\n\
             \n\
             [metrics]\n\
             commit_window = \"{commit_window}\"\n\
             exposure_window = \"{exposure_window}\"\n\
             failure_link_window = \"{failure_link_window}\"\n\
             \n\
             [log]\n\
             format = \"{log_format}\"\n\
             level = {log_level}\n\
             \n\
             [admin]\n\
             api_keys = {admin_keys}\n\
             \n\
             [retention]\n\
             body_days = {r_body}\n\
             ledger_days = {r_ledger}\n\
             events_days = {r_events}\n\
             max_body_bytes_total = {r_total}\n\
             interval = \"{r_interval}\"\n\
             \n\
             [sources.pelorus]\n\
             enabled = {p_enabled}\n\
             secrets = {p_secrets}\n\
             lenient_signatures = {p_lenient}\n",
            ingest = toml_str(&self.ingest_addr.to_string()),
            metrics = toml_str(&self.metrics_addr.to_string()),
            data_dir = toml_str(&self.data_dir.to_string_lossy()),
            allow_unsigned = self.allow_unsigned,
            shutdown = duration_text(self.shutdown_timeout),
            max_connections = self.max_connections,
            plugins_dir = match &self.plugins_dir {
                Some(dir) => format!("plugins_dir = {}\n", toml_str(&dir.to_string_lossy())),
                None => String::new(),
            },
            postgres = match &self.store.postgres {
                Some(pg) => format!(
                    "url = {}\n{}pool_size = {}\nstatement_timeout = \"{}\"\n",
                    toml_str(&pg.describe()),
                    [
                        ("password_file", &self.store.password_file),
                        ("ca_file", &self.store.ca_file)
                    ]
                    .iter()
                    .filter_map(|(key, file)| {
                        let file = file.as_ref()?;
                        Some(format!("{key} = {}\n", toml_str(&file.to_string_lossy())))
                    })
                    .collect::<String>(),
                    pg.pool_size,
                    duration_text(pg.statement_timeout),
                ),
                None => String::new(),
            },
            sync = self.store.synchronous.as_str(),
            busy = duration_text(self.store.busy_timeout),
            max_body = self.store.max_body_bytes,
            max_unauth = self.store.max_unauthenticated_rows,
            max_unauth_rate = self.store.max_unauthenticated_per_second,
            commit_window = duration_text(self.metrics.commit_window),
            exposure_window = duration_text(self.metrics.exposure_window),
            failure_link_window = duration_text(self.metrics.failure_link_window),
            log_format = match self.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            log_level = toml_str(&self.log.level),
            admin_keys = secrets(&self.admin.api_keys),
            r_body = self.retention.policy.body_days,
            r_ledger = self.retention.policy.ledger_days,
            r_events = self.retention.policy.events_days,
            r_total = self.retention.policy.max_body_bytes_total,
            r_interval = duration_text(self.retention.interval),
            p_enabled = self.pelorus.enabled,
            p_secrets = secrets(&self.pelorus.secrets),
            p_lenient = self.pelorus.lenient_signatures,
        );
        for instance in &self.sources {
            out.push_str(&instance.to_redacted_toml());
        }
        out
    }

    /// Path of the embedded SQLite store.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("hookgauge.db")
    }

    /// Where the store is: the configured PostgreSQL database, else the
    /// embedded file.
    pub fn store_location(&self) -> crate::store::Location {
        match &self.store.postgres {
            Some(pg) => crate::store::Location::Postgres(Box::new(pg.clone())),
            None => crate::store::Location::Sqlite(self.database_path()),
        }
    }
}

/// A duration as `check-config` prints it: in the largest whole unit
/// (`90d`, `2h`, `30m`, `45s`), which the configuration reads back.
fn duration_text(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 || seconds == 0 {
        return humantime::format_duration(duration).to_string();
    }
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Refuses a zero `duration` at `key`.
fn positive(key: &str, duration: Duration) -> Result<(), ConfigError> {
    if duration.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("`{value}` is not a socket address such as 127.0.0.1:8080 or [::]:8080"),
        )
    })
}

/// Secrets from the inline list and from `secrets_file` (one per line; blank
/// lines and surrounding whitespace ignored).
fn load_secrets(
    section: &str,
    inline: &[String],
    file: Option<&Path>,
) -> Result<Vec<Secret>, ConfigError> {
    load_keys(section, "secrets", inline, file)
}

/// Secrets from `<section>.<name>` and `<section>.<name>_file`.
fn load_keys(
    section: &str,
    name: &str,
    inline: &[String],
    file: Option<&Path>,
) -> Result<Vec<Secret>, ConfigError> {
    let mut secrets = Vec::new();
    for (i, value) in inline.iter().enumerate() {
        if value.trim().is_empty() {
            return Err(ConfigError::invalid(
                &format!("{section}.{name}[{i}]"),
                "an empty secret would accept any signature made without a key",
            ));
        }
        secrets.push(Secret::new(value.as_bytes()));
    }
    if let Some(path) = file {
        let key = format!("{section}.{name}_file");
        let text = read_secrets_file(path).map_err(|e| ConfigError::invalid(&key, e))?;
        let before = secrets.len();
        secrets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Secret::new(l.as_bytes())),
        );
        if secrets.len() == before {
            return Err(ConfigError::invalid(
                &key,
                format!("{} holds no secret", path.display()),
            ));
        }
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_whole_unit_and_read_back() {
        for (duration, text) in [
            (Duration::from_secs(90 * 86_400), "90d"),
            (Duration::from_secs(2 * 3_600), "2h"),
            (Duration::from_secs(30 * 60), "30m"),
            (Duration::from_secs(45), "45s"),
            (Duration::from_millis(1_500), "1s 500ms"),
        ] {
            assert_eq!(duration_text(duration), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), duration);
        }
    }

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookgauge.toml");
        std::fs::write(&path, toml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_from(Some(&path), &Overrides::default(), env)
    }

    #[test]
    fn a_postgres_store_never_shows_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "pw-from-file\n").unwrap();
        let inline = load(
            "[store]\nurl = \"postgres://hg:pw-inline@db.example:6432/hookgauge\"\n",
            &[],
        )
        .unwrap();
        let pg = inline.store.postgres.as_ref().unwrap();
        assert_eq!(pg.describe(), "postgres://hg@db.example:6432/hookgauge");
        assert_eq!(pg.config.get_password(), Some(&b"pw-inline"[..]));
        assert!(!inline.to_redacted_toml().contains("pw-inline"));
        assert!(!format!("{pg:?}").contains("pw-inline"));

        let from_file = load(
            &format!(
                "[store]\nurl = \"postgres://hg@db.example/hookgauge\"\npassword_file = {:?}\n",
                file.to_str().unwrap()
            ),
            &[],
        )
        .unwrap();
        let pg = from_file.store.postgres.as_ref().unwrap();
        assert_eq!(pg.config.get_password(), Some(&b"pw-from-file"[..]));
        assert!(!from_file.to_redacted_toml().contains("pw-from-file"));

        for (toml, key) in [
            ("url = \"mysql://hg:pw-bad@db/x\"", "store.url"),
            ("url = \"postgres://hg:pw-bad@db:port/x\"", "store.url"),
            ("url = \"postgres://hg:pw-bad@db\"", "store.url"),
            ("password_file = \"/nonexistent\"", "store.password_file"),
        ] {
            let error = load(&format!("[store]\n{toml}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(key), "{error}");
            assert!(!error.contains("pw-bad"), "{error}");
        }
        assert!(load("", &[]).unwrap().store.postgres.is_none());

        // TLS only when asked for, and then verified.
        let plain = inline.store.postgres.as_ref().unwrap();
        assert!(plain.tls.is_none());
        let required = load(
            "[store]\nurl = \"postgres://hg@db.example/hookgauge?sslmode=require\"\n",
            &[],
        )
        .unwrap();
        let pg = required.store.postgres.as_ref().unwrap();
        assert!(pg.tls.is_some());
        assert_eq!(
            pg.describe(),
            "postgres://hg@db.example:5432/hookgauge?sslmode=require"
        );
        let error = load(
            "[store]\nurl = \"postgres://hg@db.example/hookgauge\"\nca_file = \"/nonexistent/ca.crt\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("store.ca_file"), "{error}");
        let not_pem = dir.path().join("not-a-ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let error = load(
            &format!(
                "[store]\nurl = \"postgres://hg@db.example/hookgauge\"\nca_file = {:?}\n",
                not_pem.to_str().unwrap()
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("store.ca_file") && error.contains("no PEM"),
            "{error}"
        );
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let settings = load("", &[]).unwrap();
        assert_eq!(settings.ingest_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.unsigned_sources(), vec!["pelorus"]);
    }

    #[test]
    fn environment_overrides_the_file() {
        let settings = load(
            "[server]\ningest_addr = \"127.0.0.1:1\"\n",
            &[
                ("HOOKGAUGE__SERVER__INGEST_ADDR", "127.0.0.1:2"),
                ("HOOKGAUGE__SOURCES__PELORUS__SECRETS", "one,two"),
            ],
        )
        .unwrap();
        assert_eq!(settings.ingest_addr.port(), 2);
        assert_eq!(settings.pelorus.secrets.len(), 2);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load("[server]\ningest_adr = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("ingest_adr"), "{err}");
    }

    #[test]
    fn bad_address_names_its_key() {
        let err = load("[server]\nmetrics_addr = \"localhost\"\n", &[]).unwrap_err();
        assert!(err.to_string().starts_with("server.metrics_addr:"), "{err}");
    }

    #[test]
    fn public_bind_without_secret_is_refused() {
        let err = load("[server]\ningest_addr = \"0.0.0.0:8080\"\n", &[]).unwrap_err();
        assert!(
            err.to_string().starts_with("sources.pelorus.secrets:"),
            "{err}"
        );
        assert!(load(
            "[server]\ningest_addr = \"0.0.0.0:8080\"\nallow_unsigned = true\n",
            &[]
        )
        .is_ok());
        assert!(load(
            "[server]\ningest_addr = \"0.0.0.0:8080\"\n[sources.pelorus]\nsecrets = [\"s\"]\n",
            &[]
        )
        .is_ok());
    }

    #[test]
    fn secrets_file_is_read_line_by_line_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let secret_path = dir.path().join("secret");
        std::fs::write(&secret_path, "first-secret\n\n second-secret \n").unwrap();
        let toml = format!(
            "[sources.pelorus]\nsecrets_file = {}\n",
            serde_json::to_string(&secret_path).unwrap()
        );
        let settings = load(&toml, &[]).unwrap();
        assert_eq!(settings.pelorus.secrets.len(), 2);
        assert_eq!(settings.pelorus.secrets[1].expose(), b"second-secret");
        let printed = format!("{} {:?}", settings.to_redacted_toml(), settings);
        assert!(!printed.contains("first-secret") && !printed.contains("second-secret"));
    }

    #[test]
    fn redacted_toml_loads_back() {
        let settings = load("[metrics]\nexposure_window = \"2h\"\n", &[]).unwrap();
        let again = load(&settings.to_redacted_toml(), &[]).unwrap();
        assert_eq!(again.metrics.exposure_window, Duration::from_secs(7200));
    }

    #[test]
    fn zero_windows_and_bad_source_tables_name_their_key() {
        for (toml, expected) in [
            (
                "[metrics]\ncommit_window = \"0s\"\n",
                "metrics.commit_window: must be greater than zero",
            ),
            (
                "[retention]\ninterval = \"0s\"\n",
                "retention.interval: must be greater than zero",
            ),
            (
                "[sources.github.namespaces]\nprod = \"-\"\n",
                "sources.github.namespaces.prod: not an RFC 1123 label (invalid_format)",
            ),
            (
                "[sources.github.acme.apps]\n\"acme/shop\" = \"\"\n",
                "sources.github.acme.apps.acme/shop: not a valid application name (empty)",
            ),
        ] {
            assert_eq!(load(toml, &[]).unwrap_err().to_string(), expected);
        }
    }
}
