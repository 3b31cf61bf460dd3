//! The `hookgauge` binary: parses the command line, runs the chosen
//! subcommand from the library, prints the error chain once and picks the
//! exit code (0 ok, 1 failure, 2 configuration or usage error, 3 undelivered).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use hookgauge::cli::{Cli, Command, ExportArgs, MigrateStoreArgs, ServeArgs};
use hookgauge::config::{Overrides, Settings};
use hookgauge::send::SendResult;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::CheckConfig(args)) => check_config(args.config.as_deref()),
        Some(Command::Export(args)) => match export(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(1, &error),
        },
        Some(Command::MigrateStore(args)) => match migrate_store(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(1, &error),
        },
        Some(Command::Send(args)) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    return fail(
                        1,
                        &anyhow::Error::new(error).context("cannot start a runtime"),
                    )
                }
            };
            match runtime.block_on(hookgauge::send::run(args)) {
                Ok(SendResult::Delivered) => ExitCode::SUCCESS,
                Ok(SendResult::Refused) => ExitCode::from(1),
                Ok(SendResult::Undelivered) => ExitCode::from(3),
                Err(error) => fail(2, &error),
            }
        }
    }
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("hookgauge: error: {error:#}");
    ExitCode::from(code)
}

fn load_settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ingest_addr: args.ingest_addr.clone(),
        metrics_addr: args.metrics_addr.clone(),
    };
    Ok(Settings::load(args.config.config.as_deref(), &overrides)?)
}

fn serve(args: ServeArgs) -> ExitCode {
    let settings = match load_settings(&args) {
        Ok(settings) => settings,
        Err(error) => return fail(2, &error),
    };
    hookgauge::telemetry::init(settings.log.format, &settings.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime");
    let result = runtime.and_then(|runtime| {
        runtime.block_on(async {
            let app = hookgauge::app::start(&settings).await?;
            app.run_until_signalled().await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "hookgauge stopped");
            fail(1, &error)
        }
    }
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    use hookgauge::clock::now_seconds;
    use hookgauge::export::{export, parse_time};
    use hookgauge::store::history::{History, HistoryFilter};
    use std::io::Write;

    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..Overrides::default()
    };
    let settings = Settings::load(args.config.config.as_deref(), &overrides)?;
    let now = now_seconds();
    let from = parse_time(&args.from, now).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let to = match &args.to {
        Some(to) => parse_time(to, now).map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        None => now,
    };
    anyhow::ensure!(from <= to, "--from ({from}) is after --to ({to})");
    let history = History::open(&settings.store_location())?;
    let filter = HistoryFilter {
        from,
        to,
        app: args.app.clone(),
    };
    let summary = match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let summary = export(&history, &filter, &mut out)?;
            out.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
            summary
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let summary = export(&history, &filter, &mut out)?;
            out.flush().context("cannot write to standard output")?;
            summary
        }
    };
    eprintln!(
        "hookgauge export: {} deploys, {} commits, {} failure events, {} samples",
        summary.deploys, summary.commits, summary.failure_events, summary.samples
    );
    Ok(())
}

fn migrate_store(args: MigrateStoreArgs) -> anyhow::Result<()> {
    use hookgauge::store::{migrate, Location, RestoreWindows, StoreConfig};
    use hookgauge::store::{postgres_config, RawStore};

    let from = std::path::PathBuf::from(args.from.strip_prefix("sqlite://").unwrap_or(&args.from));
    let raw = RawStore {
        password_file: args.password_file.clone(),
        ca_file: args.ca_file.clone(),
        ..RawStore::default()
    };
    let to = postgres_config("--to", &args.to, &raw)?;
    let store = StoreConfig {
        location: Location::Sqlite(from.clone()),
        synchronous: raw.synchronous,
        busy_timeout: raw.busy_timeout,
        max_body_bytes: raw.max_body_bytes,
        max_unauthenticated_rows: raw.max_unauthenticated_rows,
        windows: RestoreWindows {
            commit_window: std::time::Duration::ZERO,
            exposure_window: std::time::Duration::ZERO,
        },
        failure_link_window: std::time::Duration::from_secs(24 * 3600),
    };
    eprintln!(
        "hookgauge migrate-store: {} -> {}",
        from.display(),
        to.describe()
    );
    let copied = migrate::sqlite_to_postgres(&from, &store, &to, |table, rows| {
        eprintln!("  {table}: {rows} rows");
    })?;
    let total: u64 = copied.tables.iter().map(|(_, rows)| rows).sum();
    eprintln!("hookgauge migrate-store: {total} rows copied; point [store] url at the database");
    Ok(())
}

fn check_config(file: Option<&std::path::Path>) -> ExitCode {
    match Settings::load(file, &Overrides::default()) {
        Ok(settings) => {
            print!("{}", settings.to_redacted_toml());
            for repo in &settings.poll {
                println!("# {}", repo.describe());
            }
            for source in settings.unsigned_sources() {
                eprintln!(
                    "warning: source `{source}` accepts unsigned deliveries; set sources.{source}.secrets \
                     or sources.{source}.secrets_file"
                );
            }
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(error) => fail(2, &anyhow::Error::new(error)),
    }
}
