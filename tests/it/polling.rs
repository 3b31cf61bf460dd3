//! What the poller tests of every provider share: bounded waits, the
//! requests a fake received, the gauges and counters they read, the app
//! polling `acme/shop` with a token read from a file, and the [`Rig`] that
//! steps pollers on a simulated clock instead.

use std::sync::Arc;
use std::time::Duration;

use hookgauge::config::RawConfig;
use hookgauge::metrics::view::View;
use hookgauge::metrics::Metrics;
use hookgauge::poll::{
    budget_floor, token_gates, Clock, Outcome, PollError, PollTarget, Poller, Provider, RawTarget,
    Schedule, Stream, TokenGate,
};
use hookgauge::store::deliveries::Ledger;
use hookgauge::store::Store;
use wiremock::{MockServer, Request};

use crate::embedded::EmbeddedStore;
pub use crate::harness::eventually;
use crate::harness::{spawn_app_with, Scrape, TestApp, SECRET};
use crate::sources::{post, provider_headers};

/// The requests `server` received whose path ends with `suffix`.
pub async fn requests_to(server: &MockServer, suffix: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path().ends_with(suffix))
        .collect()
}

/// Epoch seconds as RFC 3339 UTC text.
pub fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `hookgauge_pull_request_review_wait_seconds` of `acme/shop` by number.
pub async fn review_waits(app: &TestApp) -> Vec<(String, f64)> {
    waits_of(&app.scrape().await)
}

/// `hookgauge_pull_request_review_wait_seconds` of `acme/shop` by number.
pub fn waits_of(scrape: &Scrape) -> Vec<(String, f64)> {
    scrape
        .find(
            "hookgauge_pull_request_review_wait_seconds",
            &[("repo", "acme/shop")],
        )
        .iter()
        .map(|s| (s.labels["number"].clone(), s.value))
        .collect()
}

/// `hookgauge_pull_requests_awaiting_review` of `acme/shop`.
pub async fn awaiting_review(app: &TestApp) -> f64 {
    awaiting_of(&app.scrape().await)
}

/// `hookgauge_pull_requests_awaiting_review` of `acme/shop`.
pub fn awaiting_of(scrape: &Scrape) -> f64 {
    scrape.value_or_zero(
        "hookgauge_pull_requests_awaiting_review",
        &[("repo", "acme/shop")],
    )
}

/// Waits (bounded) until the commit time of each of `shas` is recorded.
pub async fn eventually_recorded(app: &TestApp, shas: &[&str]) {
    eventually(&format!("the commits {shas:?}"), || async {
        for sha in shas {
            if commit_time(app, sha).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
}

/// The app polling `acme/shop` on `provider`'s API at `api_url` with
/// `token` from a file (kept alive by the returned directory), the entry
/// holding `extra` (TOML) too, after `configure`.
pub async fn app_polling(
    provider: &str,
    api_url: &str,
    token: &str,
    extra: &str,
    configure: impl FnOnce(&mut RawConfig),
) -> (tempfile::TempDir, TestApp) {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let entry = toml::from_str(&format!(
        "repo = \"acme/shop\"\ntoken_file = {:?}\napi_url = {api_url:?}\n{extra}",
        token_file.display().to_string(),
    ))
    .unwrap();
    let app = spawn_app_with(|raw| {
        configure(raw);
        match provider {
            "github" => raw.poll.github = vec![entry],
            "gitlab" => raw.poll.gitlab = vec![entry],
            "gitea" => raw.poll.gitea = vec![entry],
            other => panic!("no poller for {other}"),
        }
    })
    .await;
    (token_dir, app)
}

/// `payload` delivered as a signed `event` webhook of `source` with id
/// `id`: answered 200 as a duplicate, the poll having recorded it first.
pub async fn assert_webhook_is_duplicate(
    app: &TestApp,
    source: &str,
    event: &str,
    id: &str,
    payload: &serde_json::Value,
) {
    let body = serde_json::to_vec(payload).unwrap();
    let headers = provider_headers(source, event, id, &body, SECRET);
    let reply = post(app, &format!("/hooks/{source}"), &headers, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["outcome"], "duplicate", "{}", reply.text);
}

/// Waits (bounded) until `app` counted `n` answers `status` of its
/// requests to `endpoint` for `acme/shop`.
pub async fn eventually_answered(app: &TestApp, endpoint: &str, status: &str, n: f64) {
    eventually(&format!("{n} {endpoint} answered {status}"), || async {
        answered(&app.scrape().await, endpoint, status) == n
    })
    .await;
}

/// `hookgauge_poll_requests_total` of `acme/shop` to `endpoint` answered
/// `status`.
pub fn answered(scrape: &Scrape, endpoint: &str, status: &str) -> f64 {
    scrape.value_or_zero(
        "hookgauge_poll_requests_total",
        &[
            ("repo", "acme/shop"),
            ("endpoint", endpoint),
            ("status", status),
        ],
    )
}

/// Epoch seconds as an HTTP `Date`, for a fake whose clock is a rig's.
pub fn http_date(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc2822()
}

/// `hookgauge_deployments_total` of `acme/shop` to production, in `app`.
pub async fn deployments_total(app: &TestApp) -> f64 {
    deployments_of(&app.scrape().await)
}

/// Waits (bounded) until `app` counted `n` deployments of `acme/shop` to
/// production.
pub async fn eventually_deployed(app: &TestApp, n: f64) {
    eventually(&format!("{n} deployments"), || async {
        deployments_total(app).await == n
    })
    .await;
}

/// `hookgauge_deployments_total` of `acme/shop` to production.
pub fn deployments_of(scrape: &Scrape) -> f64 {
    scrape.value_or_zero(
        "hookgauge_deployments_total",
        &[("app", "acme/shop"), ("namespace", "production")],
    )
}

/// The commit time of `sha` in `acme/shop`, once recorded.
pub async fn commit_time(app: &TestApp, sha: &str) -> Option<f64> {
    app.scrape()
        .await
        .find("commit_timestamp", &[("app", "acme/shop"), ("commit", sha)])
        .first()
        .map(|s| s.value)
}

/// Three commit SHAs of `acme/shop`, in the order they reach the branch.
pub const BRANCH_COMMITS: (&str, &str, &str) = (
    "1111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222",
    "3333333333333333333333333333333333333333",
);

/// A poller's constructor, e.g. `GithubPoller::new`.
pub type NewPoller<P> = fn(PollTarget, Arc<TokenGate>, Store, Ledger, Arc<Metrics>) -> P;

/// Pollers stepped by a test instead of scheduled (POLLING.md §7): they
/// write into a real SQLite store and count in their own metrics, on a
/// simulated clock that only the poller's waits and the test move.
pub struct Rig {
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// What `/metrics` serves: the per-application series and the registry.
    view: Arc<View>,
    store: Store,
    ledger: Ledger,
    /// The clock's start (epoch ms): schedules count from it.
    epoch_ms: i64,
    _dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start() -> Rig {
        let EmbeddedStore {
            metrics,
            view,
            store,
            ledger,
            dir,
        } = EmbeddedStore::start();
        let clock = Clock::simulated(Clock::default().now_ms());
        Rig {
            epoch_ms: clock.now_ms(),
            clock,
            metrics,
            view,
            ledger,
            store,
            _dir: dir,
        }
    }

    /// `repo` on `provider`'s API at `api_url`, polled with `token`, the
    /// entry holding `extra` (TOML) too.
    pub fn target(
        provider: Provider,
        repo: &str,
        api_url: &str,
        token: &str,
        extra: &str,
    ) -> PollTarget {
        let raw: RawTarget = toml::from_str(&format!(
            "repo = {repo:?}\ntoken_env = \"TOKEN\"\napi_url = {api_url:?}\n{extra}"
        ))
        .unwrap();
        PollTarget::from_raw(provider, &raw, 0, 0.5, &[], &|_| Some(token.to_owned())).unwrap()
    }

    /// A poller of `target` (made by `new`, e.g. `GithubPoller::new`) on the
    /// rig's store, metrics and clock, every stream due now.
    pub fn poller<P: Poller>(
        &self,
        target: PollTarget,
        gate: Arc<TokenGate>,
        new: NewPoller<P>,
        with_clock: fn(P, Clock) -> P,
    ) -> Stepped<P> {
        let schedule = Schedule::new(&target, self.since_start(), |_| None);
        let poller = new(
            target,
            gate,
            self.store.clone(),
            self.ledger.clone(),
            Arc::clone(&self.metrics),
        );
        Stepped {
            poller: with_clock(poller, self.clock.clone()),
            schedule,
        }
    }

    /// A poller (made by `new`) of `acme/shop` on `provider`'s API at
    /// `api_url`, polled with `token` behind its own token gate.
    pub fn shop_poller<P: Poller>(
        &self,
        provider: Provider,
        api_url: &str,
        token: &str,
        new: NewPoller<P>,
        with_clock: fn(P, Clock) -> P,
    ) -> Stepped<P> {
        let target = Rig::target(provider, "acme/shop", api_url, token, "");
        let gate = token_gates(std::slice::from_ref(&target)).remove(0);
        self.poller(target, gate, new, with_clock)
    }

    /// The time since the clock's start, as schedules count it.
    pub fn since_start(&self) -> Duration {
        Duration::from_millis((self.clock.now_ms() - self.epoch_ms).max(0) as u64)
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.clock
            .advance_to(self.clock.now_ms() + d.as_millis() as i64);
    }

    /// The rig's metrics, as a scrape would show them.
    pub fn scrape(&self) -> Scrape {
        Scrape::parse(&String::from_utf8(self.view.render()).unwrap())
    }

    pub async fn shutdown(self) {
        self.store.shutdown().await;
    }
}

/// A stepped poller and the schedule `run` would keep for it.
pub struct Stepped<P> {
    pub poller: P,
    pub schedule: Schedule,
}

impl<P: Poller> Stepped<P> {
    /// Polls `stream` now, and records how it went in the schedule as
    /// `run` does.
    pub async fn poll(&mut self, rig: &Rig, stream: Stream) -> Result<bool, PollError> {
        let result = self.poller.poll_stream(stream).await;
        let hint = self.poller.take_poll_interval_hint();
        let floor = budget_floor(self.poller.target(), self.poller.gate()).await;
        let outcome = Outcome::of(&result, None, rig.clock.now_seconds());
        self.schedule
            .record(stream, rig.since_start(), outcome, hint, floor);
        result
    }

    /// Every stream once, in order, as [`Stepped::poll`] polls them.
    pub async fn poll_each(&mut self, rig: &Rig) -> Vec<Result<bool, PollError>> {
        let mut results = Vec::new();
        for stream in self.poller.target().provider.streams() {
            results.push(self.poll(rig, *stream).await);
        }
        results
    }

    /// The stream due next and how long after now.
    pub fn next(&self, rig: &Rig) -> (Stream, Duration) {
        let (stream, due) = self.schedule.next();
        (stream, due.saturating_sub(rig.since_start()))
    }

    /// Moves the clock to the next stream's due time and polls it.
    pub async fn step(&mut self, rig: &Rig) -> (Stream, Result<bool, PollError>) {
        let (stream, wait) = self.next(rig);
        rig.advance(wait);
        (stream, self.poll(rig, stream).await)
    }
}
