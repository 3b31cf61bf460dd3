//! Metrics served on the metrics port: the DORA counters and histograms and
//! hookgauge's self-metrics (one `prometheus::Registry` per app, no globals),
//! plus the Pelorus gauges kept by [`view::View`].
//!
//! Only `view` changes the DORA series, and only from what the store
//! committed. Labels come from closed sets or from validated event fields.

pub mod reviews;
pub mod view;

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
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
    pub deployments: IntCounterVec,
    pub failures: IntCounterVec,
    pub failures_resolved: IntCounterVec,
    pub lead_time: HistogramVec,
    pub time_to_restore: HistogramVec,
    /// Deploys decided rework (DORA's fifth key), and those decisions
    /// withdrawn by a later fact; the rework deploys are their difference.
    pub rework_deployments: IntCounterVec,
    pub rework_withdrawn: IntCounterVec,
    /// Deploys a failure was tied to (the linked change failure rate), and
    /// those ties withdrawn by a later fact.
    pub failed_deployments: IntCounterVec,
    pub failed_withdrawn: IntCounterVec,
    pub failed_deployment_recovery: HistogramVec,
    pub deliveries: IntCounterVec,
    pub request_duration: HistogramVec,
    pub store_commit_duration: Histogram,
    pub store_errors: IntCounterVec,
    pub last_deploy: GaugeVec,
    pub open_failures: IntGaugeVec,
    pub oldest_open_failure: GaugeVec,
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
    /// Mean time between consecutive events, by application and kind
    /// (`Ledger::event_intervals`), refreshed every minute.
    pub event_interval: GaugeVec,
    pub event_interval_events: IntGaugeVec,
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

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec =
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(vec.clone()))
                .expect("metric registered once");
            vec
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let vec = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric definition");
            registry
                .register(Box::new(vec.clone()))
                .expect("metric registered once");
            vec
        };
        let deployments = counter(
            "hookgauge_deployments_total",
            "Successful deployments recorded, by application and namespace.",
            &["app", "namespace"],
        );
        let failures = counter(
            "hookgauge_failures_total",
            "Production failures recorded as created, by application.",
            &["app"],
        );
        let failures_resolved = counter(
            "hookgauge_failures_resolved_total",
            "Production failures recorded as resolved, by application.",
            &["app"],
        );
        let lead_time = histogram(
            "hookgauge_lead_time_seconds",
            "Time from a commit to its first deployment, observed once per commit.",
            &["app"],
            SPAN_BUCKETS.to_vec(),
        );
        let time_to_restore = histogram(
            "hookgauge_time_to_restore_seconds",
            "Time from a failure's creation to its resolution, observed once per failure.",
            &["app"],
            SPAN_BUCKETS.to_vec(),
        );
        let rework_deployments = counter(
            "hookgauge_rework_deployments_total",
            "Deployments decided rework (unplanned, made while a failure of the application was \
             open, or reported so by their source), by application and namespace; subtract \
             hookgauge_rework_deployments_withdrawn_total for the rework deployments.",
            &["app", "namespace"],
        );
        let rework_withdrawn = counter(
            "hookgauge_rework_deployments_withdrawn_total",
            "Rework decisions withdrawn because a later fact (a resolution arriving late) showed \
             no failure open at the deployment, by application and namespace.",
            &["app", "namespace"],
        );
        let failed_deployments = counter(
            "hookgauge_failed_deployments_total",
            "Deployments a production failure was tied to (created within the link window after \
             the deployment, no deployment in between), by application and namespace.",
            &["app", "namespace"],
        );
        let failed_withdrawn = counter(
            "hookgauge_failed_deployments_withdrawn_total",
            "Ties of a failure to a deployment withdrawn by a later fact (a deployment in between, \
             a newer creation time), by application and namespace.",
            &["app", "namespace"],
        );
        let failed_deployment_recovery = histogram(
            "hookgauge_failed_deployment_recovery_seconds",
            "Time from the creation to the resolution of a failure tied to a deployment, observed \
             once per failure.",
            &["app"],
            SPAN_BUCKETS.to_vec(),
        );
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
        let store_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "hookgauge_store_commit_duration_seconds",
                "Time to apply and commit one batch of deliveries to the store.",
            )
            .buckets(exponential_buckets(0.000_1, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(store_commit_duration.clone()))
            .expect("metric registered once");
        let store_errors = counter(
            "hookgauge_store_errors_total",
            "Store operations that failed, by kind of fault; deliveries in them were answered 503.",
            &["kind"],
        );
        for kind in FaultKind::ALL {
            store_errors.with_label_values(&[kind.as_str()]);
        }
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let vec =
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(vec.clone()))
                .expect("metric registered once");
            vec
        };
        let last_deploy = gauge(
            "hookgauge_last_deploy_timestamp_seconds",
            "Time of the latest deployment recorded, by application and namespace.",
            &["app", "namespace"],
        );
        let oldest_open_failure = gauge(
            "hookgauge_oldest_open_failure_timestamp_seconds",
            "Creation time of the oldest unresolved production failure, by application.",
            &["app"],
        );
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry
                .register(Box::new(vec.clone()))
                .expect("metric registered once");
            vec
        };
        let open_failures = int_gauge_vec(
            "hookgauge_open_failures",
            "Production failures created and not yet resolved, by application.",
            &["app"],
        );
        let build_info = int_gauge_vec(
            "hookgauge_build_info",
            "Always 1; labelled with the running version.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
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
        let follow_lag = Gauge::new(
            "hookgauge_store_follow_lag_seconds",
            "Shared store: how long after its commit on another replica the last change applied \
             reached this replica's metric view.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(follow_lag.clone()))
            .expect("metric registered once");
        let store_last_prune = Gauge::new(
            "hookgauge_store_last_prune_timestamp_seconds",
            "When retention last completed a run.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(store_last_prune.clone()))
            .expect("metric registered once");
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
        let event_interval = gauge(
            "hookgauge_event_interval_seconds",
            "Mean time between consecutive events over the last 7 days or the last 500 events, \
             whichever holds fewer, by application (repo) and event type.",
            &["repo", "type"],
        );
        let event_interval_events = int_gauge_vec(
            "hookgauge_event_interval_events",
            "Events the mean interval of hookgauge_event_interval_seconds is taken over.",
            &["repo", "type"],
        );
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
        let review_waits = reviews::ReviewWaits::new();
        registry
            .register(Box::new(review_waits.clone()))
            .expect("metric registered once");
        Metrics {
            registry,
            deployments,
            failures,
            failures_resolved,
            lead_time,
            time_to_restore,
            rework_deployments,
            rework_withdrawn,
            failed_deployments,
            failed_withdrawn,
            failed_deployment_recovery,
            deliveries,
            request_duration,
            store_commit_duration,
            store_errors,
            last_deploy,
            open_failures,
            oldest_open_failure,
            store_rows,
            store_body_bytes,
            store_last_prune,
            store_pruned,
            deliveries_pending,
            redeliveries,
            background_active,
            follow_lag,
            event_interval,
            event_interval_events,
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
