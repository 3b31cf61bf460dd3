//! Command-line interface: `serve` (the default), `check-config`, `send`,
//! `export` and `migrate-store`.
//! Parsing only; `main` dispatches and `send` lives in its own module.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  Run on the embedded store in ./data, listening on loopback:
    hookgauge
  Run with a configuration file, metrics on all interfaces:
    hookgauge serve --config hookgauge.toml --metrics-addr 0.0.0.0:9464
  Check a configuration and print it with secrets redacted:
    hookgauge check-config --config hookgauge.toml
  Backfill Prometheus with the last 30 days of stored history:
    hookgauge export --from 30d -o history.om && \\
      promtool tsdb create-blocks-from openmetrics history.om /prometheus/data
  Move an embedded store's history into PostgreSQL (stop hookgauge first):
    hookgauge migrate-store --from sqlite://./data/hookgauge.db \\
      --to postgres://hookgauge@db.example.com:5432/hookgauge --password-file pg.secret
  Report a deployment from a CI job:
    HOOKGAUGE_SECRET=... hookgauge send --url https://hookgauge.example.com \\
      deploytime --app shop --namespace shop-prod --image-sha sha256:<64 hex>
  The same as a Standard Webhooks message (the secret is whsec_...):
    HOOKGAUGE_SECRET=whsec_... hookgauge send --standard-webhooks \\
      --url https://hookgauge.example.com deploytime --app shop ...
  The same as a CDEvent (service.deployed) to /hooks/cdevents:
    HOOKGAUGE_SECRET=... hookgauge send --cdevents \\
      --url https://hookgauge.example.com deploytime --app shop ...

Every configuration key can also be set as HOOKGAUGE__SECTION__KEY, e.g.
HOOKGAUGE__SERVER__INGEST_ADDR=0.0.0.0:8080.";

#[derive(Debug, Parser)]
#[command(
    name = "hookgauge",
    version,
    about = "Measures the four DORA keys from the webhooks your delivery pipeline already emits.",
    long_about = "Measures the four DORA keys from the webhooks your delivery pipeline already emits.\n\n\
        hookgauge receives signed webhooks on its ingest port, keeps every delivery in a durable ledger \
        (embedded SQLite by default) and serves Pelorus-compatible gauges plus gap-tolerant counters and \
        histograms for Prometheus on its metrics port.",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options for `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default).
    Serve(ServeArgs),
    /// Validate the configuration and print it with secrets redacted.
    ///
    /// Exits 0 when the configuration is valid, 2 naming the bad key otherwise.
    CheckConfig(ConfigArgs),
    /// Build, sign and send one Pelorus event, e.g. from a CI job after a deploy.
    ///
    /// Retries with backoff on connection errors and 5xx answers. Exits 0 when the
    /// event was accepted or was already recorded (duplicate), 1 when the server
    /// refused it, 3 when it could not be delivered.
    ///
    /// The connection and signing options (--url, --secret, --secret-file,
    /// --standard-webhooks, --cdevents, --retries, --timeout) go before or after the event:
    /// `send --url URL deploytime …` and `send deploytime --url URL …` are the same.
    Send(SendArgs),
    /// Write the stored history as OpenMetrics, for backfilling Prometheus.
    ///
    /// The output is what scrapes would have produced at the time of each event
    /// (Pelorus gauges, counters, histograms) and is accepted by
    /// `promtool tsdb create-blocks-from openmetrics FILE DIR`. Runs beside a
    /// serving hookgauge: it only reads the store.
    Export(ExportArgs),
    /// Copy an embedded SQLite store into an empty PostgreSQL database.
    ///
    /// Copies every delivery, fact, observation and poller state row in one
    /// transaction, then checks the row counts; the target must hold no
    /// store yet. Stop the hookgauge that writes the SQLite file first, then
    /// start the replicas with `[store] url` pointing at the database.
    /// Exits 0 when the copy is complete, 1 otherwise (the target is then
    /// left empty).
    MigrateStore(MigrateStoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MigrateStoreArgs {
    /// The SQLite store: `sqlite://PATH` or a path to hookgauge.db.
    #[arg(long, value_name = "SQLITE")]
    pub from: String,
    /// The PostgreSQL database: postgres://user@host:5432/database.
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKGAUGE_MIGRATE_TO",
        hide_env_values = true
    )]
    pub to: String,
    /// File holding the database password, for a URL without one.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) the server's certificate may chain to; implies
    /// sslmode=require.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE", env = "HOOKGAUGE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Directory of the embedded store [default: ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Public listener for webhooks [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub ingest_addr: Option<String>,
    /// Internal listener for /metrics [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Directory of the embedded store [default: from the configuration, ./data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start of the history: epoch seconds, an RFC 3339 time, or a duration ago (30d).
    #[arg(long, value_name = "TIME", default_value = "0")]
    pub from: String,
    /// End of the history, in the same forms as --from [default: now].
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Export only this application.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// File to write [default: standard output].
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Base URL of the ingest port, or the full webhook URL.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "HOOKGAUGE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Shared secret to sign with (prefer --secret-file or HOOKGAUGE_SECRET).
    #[arg(
        long,
        global = true,
        value_name = "SECRET",
        env = "HOOKGAUGE_SECRET",
        hide_env_values = true,
        conflicts_with = "secret_file"
    )]
    pub secret: Option<String>,
    /// File holding the shared secret (first non-empty line).
    #[arg(long, global = true, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Send as a Standard Webhooks message (`{"type", "timestamp", "data"}`,
    /// signed with a `whsec_` secret) to `/hooks/standard-webhooks`.
    #[arg(long, global = true)]
    pub standard_webhooks: bool,
    /// Send as a CDEvent (spec 0.5, CloudEvents binary mode) to
    /// `/hooks/cdevents`, signed like a Pelorus delivery: committime as
    /// `artifact.packaged`, deploytime as `service.deployed`, failure as
    /// `incident.detected` / `incident.resolved`.
    #[arg(long, global = true, conflicts_with = "standard_webhooks")]
    pub cdevents: bool,
    /// Retries after the first attempt, on connection errors and 5xx answers.
    #[arg(long, global = true, value_name = "N", default_value_t = 5)]
    pub retries: usize,
    /// Time limit for each attempt, e.g. 10s.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub event: SendEvent,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SendEvent {
    /// A commit was built into an image.
    Committime {
        #[arg(long)]
        app: String,
        /// Commit SHA, 7 or 40 hex digits.
        #[arg(long)]
        commit: String,
        /// Image digest, sha256:<64 hex>.
        #[arg(long)]
        image_sha: String,
        #[arg(long)]
        namespace: String,
        /// Link to the commit in a web UI.
        #[arg(long)]
        commit_link: Option<String>,
        /// Commit time in epoch seconds [default: now].
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// An image was deployed.
    Deploytime {
        #[arg(long)]
        app: String,
        /// Image digest, sha256:<64 hex>.
        #[arg(long)]
        image_sha: String,
        #[arg(long)]
        namespace: String,
        /// Commit deployed, if known (joins lead time by commit).
        #[arg(long)]
        commit: Option<String>,
        /// Deploy time in epoch seconds [default: now].
        #[arg(long)]
        timestamp: Option<i64>,
    },
    /// A production failure was created or resolved.
    Failure {
        #[arg(long)]
        app: String,
        /// Failure (incident, issue) id.
        #[arg(long)]
        failure_id: String,
        #[arg(long, value_enum)]
        event: FailureEventArg,
        /// Event time in epoch seconds [default: now].
        #[arg(long)]
        timestamp: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailureEventArg {
    Created,
    Resolved,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_serve_with_flags() {
        let cli = Cli::try_parse_from(["hookgauge", "--data-dir", "/tmp/x"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.data_dir, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn send_options_go_before_or_after_the_event() {
        let parse = |args: &[&str]| {
            let Some(Command::Send(send)) = Cli::try_parse_from(args).unwrap().command else {
                panic!("a send command");
            };
            (send.url, send.retries, send.timeout, send.standard_webhooks)
        };
        let event = [
            "deploytime",
            "--app",
            "a",
            "--image-sha",
            "s",
            "--namespace",
            "n",
        ];
        let options = [
            "--url",
            "http://h:1",
            "--retries",
            "2",
            "--timeout",
            "3s",
            "--standard-webhooks",
        ];
        let before = parse(&[&["hookgauge", "send"][..], &options, &event].concat());
        let after = parse(&[&["hookgauge", "send"][..], &event, &options].concat());
        let expected = ("http://h:1".to_owned(), 2, Duration::from_secs(3), true);
        assert_eq!(before, expected);
        assert_eq!(after, expected);
    }
}
