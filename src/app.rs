//! Wires the service together: the store and its writer thread, the metric
//! view, both listeners and their servers, the view's eviction timer, and an
//! orderly shutdown (stop accepting, finish in-flight requests, close the store).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{ServerHandle, Service};
use actix_web::{web, App as ActixApp, HttpServer};
use anyhow::Context;
use futures_util::FutureExt;

use crate::admin::{worker, AdminState};
use crate::config::Settings;
use crate::ingest::{self, IngestState};
use crate::metrics::view::{View, Windows};
use crate::metrics::Metrics;
use crate::plugins::pelorus;
use crate::store::deliveries::Ledger;
use crate::store::{Store, StoreConfig};

/// The longest the request line and headers may take to arrive.
pub const INGEST_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the event-interval gauges are recomputed from the store.
const EVENT_INTERVALS_REFRESH: Duration = Duration::from_secs(60);

/// How often gauge series that left their window are dropped from memory.
const EVICT_INTERVAL: Duration = Duration::from_secs(30);

/// A started service: both listeners bound and serving.
pub struct RunningApp {
    pub ingest_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    ingest: ServerHandle,
    metrics: ServerHandle,
    servers: tokio::task::JoinHandle<()>,
    store: Store,
    evictor: tokio::task::JoinHandle<()>,
    /// The redelivery worker and retention.
    background: Vec<tokio::task::JoinHandle<()>>,
    shutdown_timeout: Duration,
}

/// Builds everything from `settings` and starts serving. Must run inside a
/// Tokio runtime. A store that cannot be opened yet does not stop start-up:
/// ingest answers 503 and `/readyz` fails until it can be written.
pub async fn start(settings: &Settings) -> anyhow::Result<RunningApp> {
    let metrics = Arc::new(Metrics::new());
    metrics.declare_source(pelorus::SOURCE, pelorus::EVENT_LABELS);
    let windows = Windows {
        commit: settings.metrics.commit_window,
        exposure: settings.metrics.exposure_window,
    };
    let view = Arc::new(View::new(Arc::clone(&metrics), windows));

    let store_config = StoreConfig {
        location: settings.store_location(),
        synchronous: settings.store.synchronous,
        busy_timeout: settings.store.busy_timeout,
        max_body_bytes: settings.store.max_body_bytes,
        max_unauthenticated_rows: settings.store.max_unauthenticated_rows,
        windows: windows.into(),
        failure_link_window: settings.metrics.failure_link_window,
    };
    let started = Instant::now();
    let sink = Arc::clone(&view);
    let (store, opened) = tokio::task::spawn_blocking(move || Store::start(store_config, sink))
        .await
        .context("store start-up panicked")?;
    match opened {
        Ok(()) => {
            let (commits, deploys, failures) = view.series_held();
            tracing::info!(
                store = %settings.store_location().describe(),
                synchronous = settings.store.synchronous.as_str(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                commits, deploys, failures,
                "Store opened and metric view rebuilt"
            );
        }
        Err(error) => tracing::error!(
            error = &error as &dyn std::error::Error,
            "Store unavailable at start-up; ingest answers 503 and /readyz fails until it can be written"
        ),
    }

    let ledger = Ledger::new(&settings.store_location());
    let mut interval_gauges = worker::IntervalGauges::new(ledger.clone(), Arc::clone(&view));
    interval_gauges.refresh().await;

    for source in settings.unsigned_sources() {
        tracing::warn!(
            source,
            ingest_addr = %settings.ingest_addr,
            "SOURCE ACCEPTS UNSIGNED DELIVERIES: anyone who can reach the ingest port can write events. \
             Set [sources.{source}] secrets or secrets_file."
        );
    }

    let ingest_listener = TcpListener::bind(settings.ingest_addr)
        .with_context(|| format!("cannot bind server.ingest_addr {}", settings.ingest_addr))?;
    let metrics_listener = TcpListener::bind(settings.metrics_addr)
        .with_context(|| format!("cannot bind server.metrics_addr {}", settings.metrics_addr))?;
    let ingest_addr = ingest_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let ingest_state = web::Data::new(IngestState {
        store: store.clone(),
        metrics: Arc::clone(&metrics),
        pelorus: settings.pelorus.clone(),
        plugins: settings.plugins.clone(),
        unauthenticated_rows: ingest::RateLimit::new(settings.store.max_unauthenticated_per_second),
        sources: settings.sources.clone(),
    });
    let replay_state = ingest_state.clone();
    let request_metrics = Arc::clone(&metrics);
    let shutdown_secs = settings.shutdown_timeout.as_secs();
    // `server.max_connections` is for the whole port; actix-web counts per
    // worker, and a worker at its limit takes no more from the backlog.
    // Rounded down, so the port never serves more than configured.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(settings.max_connections);
    let per_worker = settings.max_connections / workers;
    let ingest_server = HttpServer::new(move || {
        let timer = Arc::clone(&request_metrics);
        ActixApp::new()
            .app_data(ingest_state.clone())
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                let timer = Arc::clone(&timer);
                srv.call(req).map(move |res| {
                    if let Ok(res) = &res {
                        timer
                            .request_duration
                            .with_label_values(&[&route, res.status().as_str()])
                            .observe(started.elapsed().as_secs_f64());
                    }
                    res
                })
            })
            .configure(ingest::configure)
            .default_service(web::to(ingest::not_found))
    })
    .disable_signals()
    .shutdown_timeout(shutdown_secs)
    // Headers must arrive within 5 s (a slow-loris client is cut off) and
    // a connection is dropped 1 s after a response it does not read.
    .client_request_timeout(INGEST_HEADER_TIMEOUT)
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(Duration::from_secs(75))
    .workers(workers)
    .max_connections(per_worker)
    .listen(ingest_listener)
    .with_context(|| format!("cannot listen on {ingest_addr}"))?
    .run();

    let worker_wake = Arc::new(tokio::sync::Notify::new());
    let admin_state = web::Data::new(AdminState {
        api_keys: settings.admin.api_keys.clone(),
        source_names: std::iter::once(pelorus::SOURCE)
            .chain(settings.plugins.iter().map(|p| p.source()))
            .map(str::to_owned)
            .collect(),
        ledger: ledger.clone(),
        store: store.clone(),
        worker_wake: Arc::clone(&worker_wake),
    });
    let gates = crate::poll::token_gates(&settings.poll);
    for target in &settings.poll {
        tracing::info!(provider = target.provider.name(), repo = %target.repo, api_url = %target.api_url, "Polling");
    }
    // The work that must run once: here while this process holds the
    // store's background lock (always, with the embedded store).
    let once = {
        let (poll, store, ledger, metrics) = (
            settings.poll.clone(),
            store.clone(),
            ledger.clone(),
            Arc::clone(&metrics),
        );
        let (retention, wake) = (settings.retention.clone(), Arc::clone(&worker_wake));
        let ingest = replay_state.into_inner();
        move || {
            let targets = poll.len().max(1) as u32;
            let mut tasks: Vec<_> = poll
                .iter()
                .zip(gates.iter().cloned())
                .enumerate()
                .map(|(i, (target, gate))| {
                    // First polls spread over one interval (POLLING.md §6 step 1).
                    let start = target.interval / targets * i as u32;
                    let (store, ledger, metrics) =
                        (store.clone(), ledger.clone(), Arc::clone(&metrics));
                    macro_rules! poll_with {
                        ($poller:ty) => {
                            tokio::spawn(crate::poll::run(
                                <$poller>::new(target.clone(), gate, store, ledger, metrics),
                                start,
                            ))
                        };
                    }
                    match target.provider {
                        crate::poll::Provider::Github => poll_with!(crate::poll::GithubPoller),
                        crate::poll::Provider::Gitlab => poll_with!(crate::poll::GitlabPoller),
                        crate::poll::Provider::Gitea => poll_with!(crate::poll::GiteaPoller),
                    }
                })
                .collect();
            tasks.push(tokio::spawn(worker::redeliveries(
                ledger.clone(),
                store.clone(),
                Arc::clone(&ingest),
                Arc::clone(&metrics),
                Arc::clone(&wake),
            )));
            tasks.push(tokio::spawn(worker::retention(
                ledger.clone(),
                store.clone(),
                Arc::clone(&metrics),
                retention.clone(),
            )));
            tasks
        }
    };
    let background = vec![
        tokio::spawn(while_held(store.background(), Arc::clone(&metrics), once)),
        tokio::spawn(interval_gauges.run(EVENT_INTERVALS_REFRESH)),
    ];
    let view_data = web::Data::new(Arc::clone(&view));
    let metrics_server = HttpServer::new(move || {
        ActixApp::new()
            .app_data(view_data.clone())
            .app_data(admin_state.clone())
            .configure(crate::admin::configure)
            .default_service(web::to(ingest::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(shutdown_secs)
    .listen(metrics_listener)
    .with_context(|| format!("cannot listen on {metrics_addr}"))?
    .run();

    let ingest = ingest_server.handle();
    let metrics_handle = metrics_server.handle();
    let servers = tokio::spawn(async move {
        let (a, b) = tokio::join!(ingest_server, metrics_server);
        for result in [a, b] {
            if let Err(error) = result {
                tracing::error!(error = %error, "Server stopped with an error");
            }
        }
    });
    let evict_view = Arc::clone(&view);
    let evictor = tokio::spawn(async move {
        let mut interval = tokio::time::interval(EVICT_INTERVAL);
        loop {
            interval.tick().await;
            evict_view.evict_expired();
        }
    });

    tracing::info!(%ingest_addr, %metrics_addr, version = env!("CARGO_PKG_VERSION"), "hookgauge listening");
    Ok(RunningApp {
        ingest_addr,
        metrics_addr,
        ingest,
        metrics: metrics_handle,
        servers,
        store,
        evictor,
        background,
        shutdown_timeout: settings.shutdown_timeout,
    })
}

/// Runs the tasks `start` makes while `held` is true: started when it
/// becomes true, aborted when it becomes false (another replica then takes
/// them over where the store says they were) or when this task ends.
async fn while_held(
    mut held: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    start: impl Fn() -> Vec<tokio::task::JoinHandle<()>>,
) {
    struct Running(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for Running {
        fn drop(&mut self) {
            for task in &self.0 {
                task.abort();
            }
        }
    }
    loop {
        if held.wait_for(|held| *held).await.is_err() {
            return;
        }
        metrics.background_active.set(1);
        let running = Running(start());
        let closed = held.wait_for(|held| !*held).await.is_err();
        drop(running);
        metrics.background_active.set(0);
        if closed {
            return;
        }
        tracing::warn!("Background work stopped here: another replica may take it over");
    }
}

impl RunningApp {
    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signalled(self) -> anyhow::Result<()> {
        wait_for_signal().await?;
        tracing::info!(timeout = ?self.shutdown_timeout, "Shutting down: finishing in-flight requests");
        self.shutdown().await;
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (within the shutdown
    /// timeout), then commits what is queued and closes the store.
    pub async fn shutdown(self) {
        self.evictor.abort();
        for task in &self.background {
            task.abort();
        }
        tokio::join!(self.ingest.stop(true), self.metrics.stop(true));
        let _ = self.servers.await;
        self.store.shutdown().await;
        tracing::info!("Store closed; bye");
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
