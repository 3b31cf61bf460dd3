//! Metrics served on the metrics port: hookgauge's self-metrics (one
//! `prometheus::Registry` per process, no globals), and the DORA series kept
//! by [`view::View`]: the Pelorus gauges and the counters, histograms and
//! gauges of each application ([`apps::AppSeries`]).
//!
//! Only `view` changes the DORA series, and only from what the store
//! committed. Labels come from closed sets or from validated event fields.

pub mod apps;
mod name;
pub mod reviews;
pub mod view;

use prometheus::{
    core::Collector, exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts,
    HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::ledger::Outcome;
use crate::store::FaultKind;

/// Buckets for lead time and time to restore: one minute to four weeks.
pub const SPAN_BUCKETS: &[f64] = &[
    60.0,
    300.0,
    900.0,
    1_800.0,
    3_600.0,
    7_200.0,
    14_400.0,
    28_800.0,
    86_400.0,
    172_800.0,
    345_600.0,
    604_800.0,
    1_209_600.0,
    2_419_200.0,
];

/// Every series hookgauge registers.
pub struct Metrics {
    pub registry: Registry,
    pub deliveries: IntCounterVec,
    pub request_duration: HistogramVec,
    pub store_commit_duration: Histogram,
    pub store_errors: IntCounterVec,
    pub store_rows: IntGauge,
    pub store_body_bytes: IntGauge,
    pub store_last_prune: Gauge,
    pub store_pruned: IntCounterVec,
    pub deliveries_pending: IntGauge,
    pub redeliveries: IntCounterVec,
    /// 1 while this process runs the work that must run once (retention,
    /// pollers, redeliveries): always with the embedded store, on one
    /// replica at a time with PostgreSQL.
    pub background_active: IntGauge,
    /// Shared store: how long after its commit on another replica the last
    /// change reached this replica's view.
    pub follow_lag: Gauge,
    /// Pollers: requests by repository, endpoint and HTTP status (or
    /// `error`), the quota left and its reset, the last complete poll.
    pub poll_requests: IntCounterVec,
    pub poll_quota_remaining: GaugeVec,
    pub poll_quota_reset: GaugeVec,
    pub poll_last_success: GaugeVec,
    /// 1 while a repository is degraded (five failures or refusals in a
    /// row: polled at its longest interval only), and the current wait
    /// caused by failures or rate limits.
    pub poll_degraded: IntGaugeVec,
    pub poll_backoff: GaugeVec,
    /// Pull requests waiting for review, by repository (pollers).
    pub review_waits: reviews::ReviewWaits,
}

/// `metric`, registered with `registry`: each metric is made and
/// registered once.
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            registered(
                &registry,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .expect("valid metric definition"),
            )
        };
        let deliveries = counter(
            "hookgauge_deliveries_total",
            "Webhook deliveries received, by source, event and outcome.",
            &["source", "event", "outcome"],
        );
        let request_duration = histogram(
            "hookgauge_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and status code.",
            &["route", "status"],
            exponential_buckets(0.000_25, 2.0, 16).expect("valid buckets"),
        );
        let store_commit_duration = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "hookgauge_store_commit_duration_seconds",
                    "Time to apply and commit one batch of deliveries to the store.",
                )
                .buckets(exponential_buckets(0.000_1, 2.0, 16).expect("valid buckets")),
            )
            .expect("valid metric definition"),
        );
        let store_errors = counter(
            "hookgauge_store_errors_total",
            "Store operations that failed, by kind of fault; deliveries in them were answered 503.",
            &["kind"],
        );
        for kind in FaultKind::ALL {
            store_errors.with_label_values(&[kind.as_str()]);
        }
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        let build_info = int_gauge_vec(
            "hookgauge_build_info",
            "Always 1; labelled with the running version.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let int_gauge = |name: &str, help: &str| {
            registered(
                &registry,
                IntGauge::new(name, help).expect("valid metric definition"),
            )
        };
        let store_rows = int_gauge(
            "hookgauge_store_ledger_rows",
            "Rows in the delivery ledger, as of the last retention run.",
        );
        let store_body_bytes = int_gauge(
            "hookgauge_store_body_bytes",
            "Bytes of raw bodies kept in the ledger, as of the last retention run.",
        );
        let deliveries_pending = int_gauge(
            "hookgauge_store_pending_redeliveries",
            "Redeliveries queued, processing or waiting to be retried.",
        );
        let background_active = int_gauge(
            "hookgauge_background_active",
            "1 while this process runs retention, the pollers and redeliveries (with a shared \
             PostgreSQL store, one replica at a time holds them); 0 otherwise.",
        );
        let follow_lag = registered(&registry, Gauge::new(
            "hookgauge_store_follow_lag_seconds",
            "Shared store: how long after its commit on another replica the last change applied \
             reached this replica's metric view.",
        )
        .expect("valid metric definition"));
        let store_last_prune = registered(
            &registry,
            Gauge::new(
                "hookgauge_store_last_prune_timestamp_seconds",
                "When retention last completed a run.",
            )
            .expect("valid metric definition"),
        );
        let store_pruned = counter(
            "hookgauge_store_pruned_total",
            "What retention removed: bodies dropped, ledger rows and events deleted.",
            &["what"],
        );
        for what in ["bodies", "rows", "events"] {
            store_pruned.with_label_values(&[what]);
        }
        let redeliveries = counter(
            "hookgauge_redeliveries_total",
            "Redelivery attempts, by result (done, or errored and retried later).",
            &["result"],
        );
        for result in ["done", "errored"] {
            redeliveries.with_label_values(&[result]);
        }
        let poll_requests = counter(
            "hookgauge_poll_requests_total",
            "Poller requests to provider APIs, by repository, endpoint and HTTP status (304: not modified).",
            &["repo", "endpoint", "status"],
        );
        let poll_quota_remaining = gauge(
            "hookgauge_poll_rate_limit_remaining",
            "Requests left in the provider's rate-limit window, as its last answer said, by repository.",
            &["repo"],
        );
        let poll_quota_reset = gauge(
            "hookgauge_poll_rate_limit_reset_timestamp_seconds",
            "When the provider's rate-limit window resets (local clock), by repository.",
            &["repo"],
        );
        let poll_last_success = gauge(
            "hookgauge_poll_last_success_timestamp_seconds",
            "When a poll of the repository last completed.",
            &["repo"],
        );
        let poll_degraded = int_gauge_vec(
            "hookgauge_poll_degraded",
            "1 while the repository's polls failed or were refused five times in a row: it is polled \
             at its longest interval only.",
            &["repo"],
        );
        let poll_backoff = gauge(
            "hookgauge_poll_backoff_seconds",
            "The wait before the repository's next poll caused by failures or rate limits; 0 when none.",
            &["repo"],
        );
        let review_waits = registered(&registry, reviews::ReviewWaits::new());
        Metrics {
            registry,
            deliveries,
            request_duration,
            store_commit_duration,
            store_errors,
            store_rows,
            store_body_bytes,
            store_last_prune,
            store_pruned,
            deliveries_pending,
            redeliveries,
            background_active,
            follow_lag,
            poll_requests,
            poll_quota_remaining,
            poll_quota_reset,
            poll_last_success,
            poll_degraded,
            poll_backoff,
            review_waits,
        }
    }

    /// Creates the delivery series of a source at zero, so that rates exist
    /// before the first delivery of each kind.
    pub fn declare_source(&self, source: &str, events: &[&str]) {
        for event in events {
            for outcome in Outcome::ALL {
                self.deliveries
                    .with_label_values(&[source, event, outcome.as_str()]);
            }
        }
    }

    /// Counts one delivery.
    pub fn count_delivery(&self, source: &str, event: &str, outcome: Outcome) {
        self.deliveries
            .with_label_values(&[source, event, outcome.as_str()])
            .inc();
    }

    /// The registry's series in the text exposition format.
    pub fn encode_registry(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = prometheus::TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %error, "Could not encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
