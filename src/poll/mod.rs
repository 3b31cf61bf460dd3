//! Pull mode (POLLING.md): reads deployments, commits of the tracked
//! branches, incident issues and open pull requests' reviews through the
//! providers' REST APIs, for repositories whose webhooks cannot reach this
//! service, and writes what it finds through the same ledger as webhooks.
//!
//! An API object is mapped by the source plugin's own webhook rules (the
//! objects are the webhooks' objects, or are put in their shape), so a fact
//! seen by both a webhook and a poll is one fact. Every request is
//! conditional on the validators stored for its URL where the provider
//! honours them; validators and watermarks are written in the same
//! transaction as the facts they produced (`Store::record_polled`).
//!
//! Each repository runs its streams on their own schedule ([`run`]): a
//! stream that changed is polled again after a quarter of its mean time
//! between events, one that did not 1.5× later each time, within the
//! configured bounds. Repositories polled with one token share its gate
//! ([`api::TokenGate`]): one request in flight, the provider's quota and
//! this service's share of it.

mod api;
mod forge;
mod gitea;
mod github;
mod gitlab;
mod reviews;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use api::{token_gates, TokenGate};
pub use gitea::GiteaPoller;
pub use github::GithubPoller;
pub use gitlab::GitlabPoller;

use crate::ledger::{Delivery, DeliveryId, Disposition};
use crate::metrics::Metrics;
use crate::plugins::{gitea::Gitea, github::GitHub, gitlab::GitLab, Plugin, SourceOptions};
use crate::signature::Secret;
use crate::store::deliveries::{IntervalWindow, Ledger};
use crate::store::{PollCursor, Store, StoreError};

/// Pages of one list read in one poll at most (100 items each).
const MAX_PAGES: usize = 10;
/// How far back the first poll of incidents and commits reads.
const BOOTSTRAP_SECONDS: i64 = 30 * 86_400;
/// Re-read margin below a timestamp watermark (POLLING.md §6 step 6).
const OVERLAP_SECONDS: i64 = 120;
/// After a change, the next poll comes after this share of the mean time
/// between the stream's events (POLLING.md §6 step 7: about four polls per
/// expected event).
const ALPHA: f64 = 0.25;
/// The first interval of a stream with fewer than two events to go by.
const QUIET_START: Duration = Duration::from_secs(5 * 60);
/// The longest a review stream waits, whatever `max_interval` says.
const REVIEW_MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest a failing repository waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Failures (or refusals) in a row after which a repository is degraded:
/// retried at its longest interval only.
const DEGRADED_AFTER: u32 = 5;

/// A provider whose API can be polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    Github,
    Gitlab,
    Gitea,
}

impl Provider {
    /// Its name in configuration (`[[poll.<name>]]`) and source keys.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }

    /// The plugin whose webhook rules map what is read.
    fn plugin(self) -> &'static dyn Plugin {
        match self {
            Provider::Github => &GitHub,
            Provider::Gitlab => &GitLab,
            Provider::Gitea => &Gitea,
        }
    }

    fn default_api_url(self) -> Option<&'static str> {
        match self {
            Provider::Github => Some("https://api.github.com"),
            Provider::Gitlab => Some("https://gitlab.com/api/v4"),
            Provider::Gitea => None,
        }
    }

    /// Whether a 304 costs no quota, so that polling often is nearly free.
    fn free_not_modified(self) -> bool {
        self == Provider::Github
    }

    /// The window the provider's rate-limit headers count in: GitHub's
    /// quota is hourly, GitLab's `RateLimit-Limit` per minute (POLLING.md
    /// §1.1, §2).
    fn quota_period(self) -> Duration {
        match self {
            Provider::Gitlab => Duration::from_secs(60),
            Provider::Github | Provider::Gitea => Duration::from_secs(3600),
        }
    }

    /// The streams a poller of this provider reads.
    pub fn streams(self) -> &'static [Stream] {
        match self {
            Provider::Github | Provider::Gitlab => &[
                Stream::Deployments,
                Stream::Incidents,
                Stream::Commits,
                Stream::PullRequests,
            ],
            // No deployments API (POLLING.md §3).
            Provider::Gitea => &[Stream::Incidents, Stream::Commits, Stream::PullRequests],
        }
    }
}

/// One kind of fact a poller reads, scheduled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Deployments,
    Incidents,
    Commits,
    PullRequests,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Deployments => "deployments",
            Stream::Incidents => "incidents",
            Stream::Commits => "commits",
            Stream::PullRequests => "pull_requests",
        }
    }

    /// The event kind whose mean interval schedules the stream.
    pub fn event_kind(self) -> Option<&'static str> {
        match self {
            Stream::Deployments => Some("deploy"),
            Stream::Incidents => Some("failure_created"),
            Stream::Commits => Some("commit"),
            Stream::PullRequests => None,
        }
    }

    /// What the stream reads from `provider`, for `check-config`.
    fn describe(self, provider: Provider) -> &'static str {
        match (self, provider) {
            (Stream::Deployments, Provider::Gitlab) => "successful deployments",
            (Stream::Deployments, _) => "deployments and their statuses",
            (Stream::Incidents, _) => "incident issues",
            (Stream::Commits, _) => "commits",
            (Stream::PullRequests, Provider::Gitlab) => "open merge requests' reviews",
            (Stream::PullRequests, _) => "open pull requests' reviews",
        }
    }
}

/// `[[poll.<provider>]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// `owner/name` (GitLab: the project's full path, or its numeric id).
    pub repo: String,
    /// File holding the token (a mounted Secret).
    pub token_file: Option<std::path::PathBuf>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// REST base URL: `https://api.github.com` or `https://HOST/api/v3`;
    /// `https://gitlab.com/api/v4` or a self-managed instance's;
    /// `https://HOST/api/v1` for Gitea and Forgejo (required).
    pub api_url: Option<String>,
    /// The source instance (`github`, `gitlab.name`, …) whose options
    /// (environments, namespaces, apps, branches) map what is read.
    pub source: Option<String>,
    /// The repository's default branch, when it should not be read from the
    /// API (the source's `branches`, when set, are polled instead).
    pub branch: Option<String>,
    /// The shortest time between two polls of a stream …
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// … and the longest.
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    /// The token's hourly quota when the provider does not send it in
    /// headers (GitLab without rate-limit headers, a limiting proxy in
    /// front of Gitea).
    pub quota_per_hour: Option<u64>,
    /// How far back the first polls read (`2026-01-01` or an RFC 3339
    /// time); without it, 30 days.
    pub backfill_since: Option<String>,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30 * 60)
}

/// `[poll]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPoll {
    /// The share of a token's quota the pollers may spend (POLLING.md §6
    /// step 8): a personal token's quota is shared with its owner's other
    /// tools.
    pub max_quota_share: f64,
    pub github: Vec<RawTarget>,
    pub gitlab: Vec<RawTarget>,
    pub gitea: Vec<RawTarget>,
}

impl Default for RawPoll {
    fn default() -> Self {
        RawPoll {
            max_quota_share: 0.5,
            github: Vec::new(),
            gitlab: Vec::new(),
            gitea: Vec::new(),
        }
    }
}

impl RawPoll {
    /// Every entry with its provider and index.
    pub fn entries(&self) -> impl Iterator<Item = (Provider, usize, &RawTarget)> {
        [
            (Provider::Github, &self.github),
            (Provider::Gitlab, &self.gitlab),
            (Provider::Gitea, &self.gitea),
        ]
        .into_iter()
        .flat_map(|(provider, entries)| {
            entries
                .iter()
                .enumerate()
                .map(move |(i, e)| (provider, i, e))
        })
    }
}

/// One polled repository or project, validated.
#[derive(Clone)]
pub struct PollTarget {
    pub provider: Provider,
    pub repo: String,
    pub api_url: String,
    pub token: Secret,
    /// Where the token came from, read again after a 401 (a rotated Secret).
    pub token_source: TokenSource,
    /// The source instance key (`github` or `github.name`) and its options.
    pub source: String,
    pub branch: Option<String>,
    pub options: SourceOptions,
    pub interval: Duration,
    pub max_interval: Duration,
    pub quota_per_hour: Option<u64>,
    pub max_quota_share: f64,
    /// Epoch seconds.
    pub backfill_since: Option<i64>,
}

/// Where a poller's token is read from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    File(std::path::PathBuf),
    Env(String),
}

impl TokenSource {
    /// The token, one word; `env` looks environment variables up.
    fn read(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let token = match self {
            TokenSource::File(path) => crate::signature::read_secrets_file(path)?,
            TokenSource::Env(name) => {
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?
            }
        };
        let token = token.trim().to_owned();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err("the token is empty or not one word".into());
        }
        Ok(token)
    }
}

impl std::fmt::Debug for PollTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollTarget")
            .field("provider", &self.provider)
            .field("repo", &self.repo)
            .field("api_url", &self.api_url)
            .field("token", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

/// A past date (`2026-01-31`, midnight UTC) or RFC 3339 time as epoch
/// seconds.
fn parse_since(text: &str) -> Option<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp())
        })?;
    (at < now_seconds()).then_some(at)
}

/// Whether `name` is a usable branch name (git's rules, in short).
fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '/'])
        && !name.ends_with(['/', '.'])
        && !name.contains("..")
        && !name.contains("//")
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"~^:?*[\\".contains(&b))
}

impl PollTarget {
    /// Checks one `[[poll.<provider>]]` entry; `index` names it in errors.
    /// `instances` are the configured source instances' keys and options.
    pub fn from_raw(
        provider: Provider,
        raw: &RawTarget,
        index: usize,
        max_quota_share: f64,
        instances: &[(String, SourceOptions)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PollTarget, (String, String)> {
        let name = provider.name();
        let key = |field: &str| format!("poll.{name}[{index}].{field}");
        let valid_part = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let parts: Vec<&str> = raw.repo.split('/').collect();
        let valid_repo = match provider {
            Provider::Gitlab => {
                (parts.len() >= 2 && parts.iter().all(|p| valid_part(p)))
                    || (!raw.repo.is_empty() && raw.repo.bytes().all(|b| b.is_ascii_digit()))
            }
            _ => parts.len() == 2 && parts.iter().all(|p| valid_part(p)),
        };
        if !valid_repo {
            let shape = match provider {
                Provider::Gitlab => "must be the project's full path (group/project) or its id",
                _ => "must be owner/name",
            };
            return Err((key("repo"), shape.into()));
        }
        if !(0.01..=1.0).contains(&max_quota_share) {
            return Err((
                "poll.max_quota_share".into(),
                "must be between 0.01 and 1".into(),
            ));
        }
        let api_url = raw
            .api_url
            .as_deref()
            .or(provider.default_api_url())
            .ok_or_else(|| {
                (
                    key("api_url"),
                    "is required: the instance's API, like https://HOST/api/v1".into(),
                )
            })?
            .trim_end_matches('/')
            .to_owned();
        let parsed = reqwest::Url::parse(&api_url)
            .map_err(|e| (key("api_url"), format!("not a URL: {e}")))?;
        let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if !(parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback)) {
            return Err((
                key("api_url"),
                "must be https (the token is sent with every request); http only on loopback"
                    .into(),
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some()
        {
            return Err((
                key("api_url"),
                "must not carry credentials or a query: the token goes in token_file or token_env"
                    .into(),
            ));
        }
        let (token_source, token_key) = match (&raw.token_file, &raw.token_env) {
            (Some(path), None) => (TokenSource::File(path.clone()), key("token_file")),
            (None, Some(name)) => (TokenSource::Env(name.clone()), key("token_env")),
            _ => {
                return Err((
                    key("token_file"),
                    "set exactly one of token_file and token_env: polls send a token (a 304 is free only with one)".into(),
                ))
            }
        };
        let token = token_source.read(env).map_err(|e| (token_key, e))?;
        if raw.interval < Duration::from_secs(60) || raw.max_interval < raw.interval {
            return Err((
                key("interval"),
                "must be at least 60s and at most max_interval".into(),
            ));
        }
        if raw.quota_per_hour == Some(0) {
            return Err((key("quota_per_hour"), "must be at least 1".into()));
        }
        let backfill_since = match &raw.backfill_since {
            None => None,
            Some(text) => Some(parse_since(text).ok_or_else(|| {
                (
                    key("backfill_since"),
                    "must be a past date (2026-01-31) or RFC 3339 time (2026-01-31T12:00:00Z)"
                        .into(),
                )
            })?),
        };
        if let Some(branch) = &raw.branch {
            if !valid_branch(branch) {
                return Err((key("branch"), "must be a branch name".into()));
            }
        }
        let source = raw.source.clone().unwrap_or_else(|| name.to_owned());
        let own = source == name
            || source
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with('.'));
        if !own {
            return Err((
                key("source"),
                format!("must name a {name} source instance ({name} or {name}.NAME)"),
            ));
        }
        let options = instances
            .iter()
            .find(|(k, _)| *k == source)
            .map(|(_, o)| o.clone())
            .or_else(|| (source == name).then(|| provider.plugin().defaults()))
            .ok_or_else(|| {
                (
                    key("source"),
                    format!("no [sources.{source}] is configured"),
                )
            })?;
        if let Some(bad) = options.branches.iter().find(|b| !valid_branch(b)) {
            return Err((
                key("source"),
                format!("[sources.{source}] branches: {bad:?} is not a branch name"),
            ));
        }
        if provider == Provider::Github && !options.deploy_workflows.is_empty() {
            return Err((
                key("source"),
                format!(
                    "[sources.{source}] counts workflow runs as deploys (deploy_workflows); polling reads \
                     deployments, which that source ignores: name a source without deploy_workflows"
                ),
            ));
        }
        Ok(PollTarget {
            provider,
            repo: raw.repo.clone(),
            api_url,
            token: Secret::new(token),
            token_source,
            source,
            branch: raw.branch.clone(),
            options,
            interval: raw.interval,
            max_interval: raw.max_interval,
            quota_per_hour: raw.quota_per_hour,
            max_quota_share,
            backfill_since,
        })
    }

    /// `check-config`'s line for this repository.
    pub fn describe(&self) -> String {
        let branches = if !self.options.branches.is_empty() {
            format!("branches {}", self.options.branches.join(", "))
        } else {
            match &self.branch {
                Some(branch) => format!("branch {branch}"),
                None => "the default branch".to_owned(),
            }
        };
        let mut streams: Vec<String> = self
            .provider
            .streams()
            .iter()
            .map(|s| s.describe(self.provider).to_owned())
            .collect();
        // Gitea's deploys are commit statuses, read with the commits.
        if self.provider == Provider::Gitea && !self.options.deploy_workflows.is_empty() {
            streams.push(format!(
                "deploys from commit statuses {}",
                self.options.deploy_workflows.join(", ")
            ));
        }
        format!(
            "poll {} {} at {}: {} of {branches}, mapped by [sources.{}], every {} to {}",
            self.provider.name(),
            self.repo,
            self.api_url,
            streams.join(", "),
            self.source,
            humantime::format_duration(self.interval),
            humantime::format_duration(self.max_interval)
        )
    }

    /// The branches configured to be tracked: the source's `branches`,
    /// else the entry's `branch`; `None` when the repository's default
    /// branch is to be asked for.
    fn configured_branches(&self) -> Option<Vec<String>> {
        if !self.options.branches.is_empty() {
            return Some(self.options.branches.clone());
        }
        self.branch.as_ref().map(|branch| vec![branch.clone()])
    }

    /// The stream key of `name` for this repository.
    fn stream(&self, name: &str) -> String {
        format!(
            "{}|{}|{}|{name}",
            self.provider.name(),
            self.api_url,
            self.repo
        )
    }

    /// Where first polls start reading history: `backfill_since`, else 30
    /// days before `now` (server epoch seconds).
    fn bootstrap_since(&self, now: i64) -> i64 {
        self.backfill_since.unwrap_or(now - BOOTSTRAP_SECONDS)
    }

    /// The application the repository's events count for.
    pub fn app(&self) -> Option<String> {
        self.options
            .app(&self.repo)
            .ok()
            .map(|a| a.as_str().to_owned())
    }
}

/// The pollers' clock for their requests' pacing and rate-limit
/// arithmetic: the system's, or a simulated one that a benchmark moves and
/// that sleeps by moving itself (POLLING.md §7: the fake shares a virtual
/// clock with the poller, no sleeps).
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<std::sync::atomic::AtomicI64>>);

impl Clock {
    /// A simulated clock at `epoch_ms` (milliseconds since the epoch).
    pub fn simulated(epoch_ms: i64) -> Clock {
        Clock(Some(Arc::new(std::sync::atomic::AtomicI64::new(epoch_ms))))
    }

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => crate::clock::now_ms(),
            Some(ms) => ms.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    pub fn now_seconds(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves a simulated clock forward to `epoch_ms` (never back).
    pub fn advance_to(&self, epoch_ms: i64) {
        if let Some(ms) = &self.0 {
            ms.fetch_max(epoch_ms, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn sleep(&self, d: Duration) {
        match &self.0 {
            None => tokio::time::sleep(d).await,
            Some(ms) => {
                ms.fetch_add(d.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// Why a poll did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Nothing may be sent before `until` (epoch seconds, local clock).
    #[error("rate limited until {until}")]
    RateLimited { until: i64 },
    /// Retry later with backoff.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The token, the repository or the permissions are wrong: retried at
    /// the longest interval only.
    #[error("{0}")]
    Refused(String),
    /// 404 or 410: the repository, or one object, is gone.
    #[error("{0}")]
    Gone(String),
}

/// What a poller keeps of the store: the stream states of its repository
/// as the current stream's poll began, and the streams to let go.
pub struct Recorder {
    store: Store,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    stored: std::collections::BTreeMap<String, PollCursor>,
    /// Streams let go in this poll (deployments no longer followed), their
    /// state deleted with the next commit.
    forget: Vec<String>,
    /// The stored review waits were published.
    waits_restored: bool,
}

impl Recorder {
    pub fn new(store: Store, ledger: Ledger, metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            store,
            ledger,
            metrics,
            stored: Default::default(),
            forget: Vec::new(),
            waits_restored: false,
        }
    }

    /// Once, after the first [`Recorder::load`]: publishes the review waits
    /// stored in the review stream `key`, so that they are exposed from the
    /// start, before (or without) a poll of that stream.
    fn restore_waits(&mut self, key: String, repo: &str) {
        if std::mem::replace(&mut self.waits_restored, true) {
            return;
        }
        let stored: Option<reviews::PullsMark> = self.stored.get(&key).and_then(mark_of);
        if let Some(mark) = stored {
            mark.publish(&self.metrics, repo, 0);
        }
    }

    /// Reads the stream states whose keys start with `prefix`.
    async fn load(&mut self, prefix: String) -> Result<(), PollError> {
        self.stored = self
            .ledger
            .poll_cursors(prefix)
            .await
            .map_err(|e| PollError::Transient(e.to_string()))?
            .into_iter()
            .map(|c| (c.stream.clone(), c))
            .collect();
        Ok(())
    }

    /// The stored state of `stream` as the poll began, or a fresh one.
    fn cursor(&self, stream: String) -> PollCursor {
        self.stored.get(&stream).cloned().unwrap_or(PollCursor {
            stream,
            ..PollCursor::default()
        })
    }

    /// Records what a stream read (taken from `deliveries` and `cursors`)
    /// with the streams to forget, in one transaction; `Ok(false)` when
    /// there was nothing.
    async fn commit(
        &mut self,
        source: &'static str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<bool, PollError> {
        if cursors.is_empty() && self.forget.is_empty() {
            deliveries.clear();
            return Ok(false);
        }
        let deliveries = std::mem::take(deliveries);
        let events: Vec<&'static str> = deliveries.iter().map(|d| d.event).collect();
        let recorded = self
            .store
            .record_polled(
                deliveries,
                std::mem::take(cursors),
                std::mem::take(&mut self.forget),
            )
            .await
            .map_err(|e: StoreError| PollError::Transient(e.to_string()))?;
        for (r, event) in recorded.iter().zip(events) {
            self.metrics.count_delivery(source, event, r.outcome);
        }
        tracing::debug!(source, stored = recorded.len(), "Poll recorded");
        Ok(true)
    }

    /// The mean time between `kind` events of `app` over the rolling
    /// window, from the store (webhook and polled events alike).
    pub async fn mean_interval(&self, app: Option<String>, kind: &'static str) -> Option<Duration> {
        let app = app?;
        let intervals = self
            .ledger
            .event_intervals(
                Some(app),
                Some(kind),
                IntervalWindow::DEFAULT,
                now_seconds(),
            )
            .await
            .ok()?;
        intervals
            .first()
            .and_then(|i| i.mean_interval_seconds)
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    }
}

/// `payload` as a webhook of `event` from `target`'s provider would be
/// recorded: mapped by its plugin with the target's source options, the
/// ledger row keeping the event header (`header`: so that it can be
/// redelivered). The delivery id is derived from `identity`: a fact read
/// again is a duplicate delivery.
fn mapped(
    target: &PollTarget,
    header: &'static str,
    event: &'static str,
    payload: &Value,
    identity: &[&[u8]],
) -> Delivery {
    let plugin = target.provider.plugin();
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(header),
        HeaderValue::from_static(event),
    );
    let (label, mapping) = plugin.classify(&headers, payload, &target.options);
    let disposition = match mapping {
        Ok(mapping) => mapping.into_disposition(),
        Err(_) => Disposition::Invalid {
            reason: "invalid_api_object",
        },
    };
    let mut parts: Vec<&[u8]> = vec![b"poll", target.api_url.as_bytes(), target.repo.as_bytes()];
    parts.extend_from_slice(identity);
    let prefix = format!("{}.", target.provider.name());
    Delivery {
        id: DeliveryId::derived(&parts),
        source: plugin.source(),
        event: label,
        received_at_ms: now_seconds() * 1000,
        authenticated: true,
        body: serde_json::to_vec(payload).ok().map(Bytes::from),
        disposition,
        headers: Some(json!({header: event, "x-hookgauge-poll": target.api_url}).to_string()),
        instance: target.source.strip_prefix(&prefix).map(str::to_owned),
        queued_row: None,
    }
}

/// A repository's poller: its streams, each polled on its own.
/// The [`Poller`] methods that a poller with the fields `target`
/// ([`PollTarget`]), `rec` ([`Recorder`]) and `api` (its `Api`) answers
/// from them, for its `impl Poller`.
macro_rules! poller_parts {
    () => {
        fn target(&self) -> &$crate::poll::PollTarget {
            &self.target
        }

        fn recorder(&self) -> &$crate::poll::Recorder {
            &self.rec
        }

        fn gate(&self) -> &std::sync::Arc<$crate::poll::TokenGate> {
            self.api.gate()
        }

        fn take_poll_interval_hint(&mut self) -> Option<std::time::Duration> {
            self.api.take_hint()
        }
    };
}
use poller_parts;

/// `new` and `with_clock` of a provider's poller: its own fields (their
/// values may read `$target` before it moves), then the parts every poller
/// has: the target, its API client and its recorder.
macro_rules! poller_new {
    ($poller:ident, $target:ident, { $($field:ident: $value:expr),* $(,)? }) => {
        impl $poller {
            pub fn new(
                $target: $crate::poll::PollTarget,
                gate: std::sync::Arc<$crate::poll::TokenGate>,
                store: $crate::store::Store,
                ledger: $crate::store::deliveries::Ledger,
                metrics: std::sync::Arc<$crate::metrics::Metrics>,
            ) -> Self {
                let api = $crate::poll::api::Api::new(&$target, gate, std::sync::Arc::clone(&metrics));
                $poller {
                    $($field: $value,)*
                    target: $target,
                    api,
                    rec: $crate::poll::Recorder::new(store, ledger, metrics),
                }
            }

            /// Paces and computes on `clock` rather than the system's (the
            /// benchmark's simulated day).
            pub fn with_clock(mut self, clock: $crate::poll::Clock) -> Self {
                self.api.set_clock(clock);
                self
            }
        }
    };
}
use poller_new;

pub trait Poller: Send {
    fn target(&self) -> &PollTarget;

    fn recorder(&self) -> &Recorder;

    fn gate(&self) -> &Arc<TokenGate>;

    /// Polls one stream and records what it read; `Ok(true)` when something
    /// changed.
    fn poll_stream(
        &mut self,
        stream: Stream,
    ) -> impl Future<Output = Result<bool, PollError>> + Send;

    /// The shortest wait the provider asked for before the next poll of
    /// what the last stream read (`X-Poll-Interval`), taken once.
    fn take_poll_interval_hint(&mut self) -> Option<Duration>;

    /// Every stream once, in order (tests and the benchmark step polls with
    /// it); the first error is returned after the other streams ran.
    fn poll_once(&mut self) -> impl Future<Output = Result<bool, PollError>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut changed = false;
            let mut first_error = None;
            for stream in self.target().provider.streams() {
                match self.poll_stream(*stream).await {
                    Ok(c) => changed |= c,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(changed),
            }
        }
    }
}

/// One stream's place in its repository's schedule.
#[derive(Debug, Clone)]
struct Slot {
    stream: Stream,
    interval: Duration,
    /// Since the schedule's start.
    due: Duration,
    /// The provider's last `X-Poll-Interval` for it.
    hint: Option<Duration>,
    /// Its last poll was refused.
    refused: bool,
}

/// How a stream's poll went, as the schedule needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Something changed; `mean` is the stream's mean time between events
    /// now, if known.
    Changed {
        mean: Option<Duration>,
    },
    Unchanged,
    /// Nothing may be sent for `wait`.
    RateLimited {
        wait: Duration,
    },
    Transient,
    /// A refusal that needs a person (permissions, a revoked token, a
    /// deleted repository).
    Refused,
}

impl Outcome {
    /// The outcome of a stream's poll at `now` (epoch seconds, the
    /// poller's clock), `mean` its stream's mean time between events after
    /// a change.
    pub fn of(result: &Result<bool, PollError>, mean: Option<Duration>, now: i64) -> Outcome {
        match result {
            Ok(true) => Outcome::Changed { mean },
            Ok(false) => Outcome::Unchanged,
            Err(PollError::RateLimited { until }) => Outcome::RateLimited {
                wait: Duration::from_secs((until - now).max(0) as u64),
            },
            Err(PollError::Transient(_)) => Outcome::Transient,
            Err(PollError::Refused(_) | PollError::Gone(_)) => Outcome::Refused,
        }
    }
}

/// When each stream of one repository is polled next (POLLING.md §6 steps
/// 7 and 9), on a clock of the caller's (durations since its start): the
/// service runs it on tokio's clock, the benchmark on a simulated one.
///
/// After a change a stream waits `α·g` (`g` its mean time between events;
/// 5 min while fewer than two are known), after an unchanged poll 1.5× its
/// last wait, always within `[floor, max]` with ±10 % jitter; the floor is
/// the configured interval, the provider's `X-Poll-Interval` for the stream
/// and the budget floor. A rate limit holds every stream until it passes
/// (repeats back off); transient failures back off with full jitter; after
/// [`DEGRADED_AFTER`] failures or limits in a row the repository is
/// degraded and polled at its longest interval until a poll succeeds. A
/// refused stream (permissions, a deleted repository) is retried at its
/// longest interval and keeps the repository degraded until it succeeds.
#[derive(Debug, Clone)]
pub struct Schedule {
    slots: Vec<Slot>,
    interval: Duration,
    max_interval: Duration,
    failures: u32,
    limited: u32,
    degraded: bool,
    backoff: Duration,
}

impl Schedule {
    /// Every stream of `target` due at `start`; `mean` gives a stream's
    /// mean time between events, if known.
    pub fn new(
        target: &PollTarget,
        start: Duration,
        mean: impl Fn(Stream) -> Option<Duration>,
    ) -> Schedule {
        let slots = target
            .provider
            .streams()
            .iter()
            .map(|stream| Slot {
                stream: *stream,
                interval: mean(*stream).map_or(QUIET_START, |g| g.mul_f64(ALPHA)),
                due: start,
                hint: None,
                refused: false,
            })
            .collect();
        Schedule {
            slots,
            interval: target.interval,
            max_interval: target.max_interval,
            failures: 0,
            limited: 0,
            degraded: false,
            backoff: Duration::ZERO,
        }
    }

    /// The stream due first, and when.
    pub fn next(&self) -> (Stream, Duration) {
        let slot = self
            .slots
            .iter()
            .min_by_key(|s| s.due)
            .expect("a provider has streams");
        (slot.stream, slot.due)
    }

    /// Whether the repository is degraded: failing or limited again and
    /// again, or a stream refused.
    pub fn degraded(&self) -> bool {
        self.degraded || self.slots.iter().any(|s| s.refused)
    }

    /// The wait the last failure or limit imposed; zero after a success.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The longest `stream` may wait.
    fn max(&self, stream: Stream) -> Duration {
        match stream {
            Stream::PullRequests => self.max_interval.max(REVIEW_MAX_INTERVAL),
            _ => self.max_interval,
        }
    }

    /// Records how `stream`'s poll at `now` went and schedules it (or, for
    /// a rate limit, every stream) again. `hint` is the provider's
    /// `X-Poll-Interval`, if the answers carried one; `budget_floor` the
    /// shortest interval the budget allows.
    pub fn record(
        &mut self,
        stream: Stream,
        now: Duration,
        outcome: Outcome,
        hint: Option<Duration>,
        budget_floor: Duration,
    ) {
        let max = self.max(stream);
        let interval = self.interval;
        let Some(slot) = self.slots.iter_mut().find(|s| s.stream == stream) else {
            return;
        };
        if hint.is_some() {
            slot.hint = hint;
        }
        let floor = interval
            .max(slot.hint.unwrap_or_default())
            .max(budget_floor)
            .min(max);
        match outcome {
            Outcome::Changed { .. } | Outcome::Unchanged => {
                self.failures = 0;
                self.limited = 0;
                self.degraded = false;
                self.backoff = Duration::ZERO;
                slot.refused = false;
                slot.interval = match outcome {
                    Outcome::Changed { mean: Some(g) } => g.mul_f64(ALPHA),
                    Outcome::Changed { mean: None } => interval,
                    _ => slot.interval.mul_f64(1.5),
                }
                .clamp(floor, max);
                slot.due = now + jitter(slot.interval, 0.1);
            }
            Outcome::RateLimited { wait } => {
                // Until the reset; an answer that keeps refusing past it
                // backs off.
                self.limited += 1;
                let least = if self.limited > 1 {
                    backoff(self.limited)
                } else {
                    Duration::from_secs(1)
                };
                let mut wait = wait
                    .max(least)
                    .clamp(Duration::from_secs(1), Duration::from_secs(65 * 60));
                if self.limited >= DEGRADED_AFTER {
                    self.degraded = true;
                    wait = wait.max(max);
                }
                self.backoff = wait;
                for slot in &mut self.slots {
                    slot.due = slot.due.max(now + wait);
                }
            }
            Outcome::Transient => {
                self.failures += 1;
                let mut wait = backoff(self.failures).mul_f64(rand_unit());
                if self.failures >= DEGRADED_AFTER {
                    self.degraded = true;
                    wait = wait.max(max);
                }
                self.backoff = wait;
                slot.due = now + wait;
            }
            Outcome::Refused => {
                slot.refused = true;
                slot.due = now + max;
            }
        }
    }
}

/// Polls `poller`'s streams on their [`Schedule`] until the task is
/// aborted, the first after `start` (spreading repositories over one
/// interval, POLLING.md §6 step 1).
pub async fn run<P: Poller>(mut poller: P, start: Duration) {
    let target = poller.target().clone();
    let repo = target.repo.as_str();
    let metrics = Arc::clone(&poller.recorder().metrics);
    let app = target.app();
    let mut means = std::collections::BTreeMap::new();
    for stream in target.provider.streams() {
        if let Some(kind) = stream.event_kind() {
            means.insert(
                *stream,
                poller.recorder().mean_interval(app.clone(), kind).await,
            );
        }
    }
    let mut schedule = Schedule::new(&target, start, |s| means.get(&s).copied().flatten());
    let epoch = tokio::time::Instant::now();
    let degraded = metrics.poll_degraded.with_label_values(&[repo]);
    let backoff_gauge = metrics.poll_backoff.with_label_values(&[repo]);
    loop {
        let (stream, due) = schedule.next();
        tokio::time::sleep_until(epoch + due).await;
        let result = poller.poll_stream(stream).await;
        let mean = match (&result, stream.event_kind()) {
            (Ok(true), Some(kind)) => poller.recorder().mean_interval(app.clone(), kind).await,
            _ => None,
        };
        if let Some(mean) = mean {
            poller.gate().set_weight(repo, mean).await;
        }
        match &result {
            Ok(_) => metrics
                .poll_last_success
                .with_label_values(&[repo])
                .set(now_seconds() as f64),
            Err(PollError::RateLimited { .. }) => {
                tracing::warn!(
                    repo,
                    stream = stream.name(),
                    "Rate limited: waiting for the reset"
                )
            }
            Err(PollError::Transient(error)) => {
                tracing::warn!(
                    repo,
                    stream = stream.name(),
                    error,
                    "Poll failed; backing off"
                )
            }
            Err(PollError::Refused(error) | PollError::Gone(error)) => {
                tracing::error!(
                    repo,
                    stream = stream.name(),
                    error,
                    "Poll refused; retrying at the longest interval"
                )
            }
        }
        let hint = poller.take_poll_interval_hint();
        let floor = budget_floor(&target, poller.gate()).await;
        schedule.record(
            stream,
            epoch.elapsed(),
            Outcome::of(&result, mean, now_seconds()),
            hint,
            floor,
        );
        degraded.set(i64::from(schedule.degraded()));
        backoff_gauge.set(schedule.backoff().as_secs_f64());
    }
}

/// Where every request is paid, the shortest interval that keeps a
/// repository within its share of the budget: one request per stream per
/// interval (POLLING.md §6 step 8).
pub async fn budget_floor(target: &PollTarget, gate: &TokenGate) -> Duration {
    if target.provider.free_not_modified() {
        return Duration::ZERO;
    }
    let streams = target.provider.streams().len() as f64;
    match gate.allowance(&target.repo).await {
        Some(per_hour) if per_hour > 0.0 => Duration::from_secs_f64(3600.0 * streams / per_hour),
        _ => Duration::ZERO,
    }
}

fn now_seconds() -> i64 {
    crate::clock::now_seconds()
}

/// An RFC 3339 timestamp of an API object as epoch seconds.
fn server_time(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
}

/// Epoch seconds as RFC 3339 UTC text, as `since` parameters take it.
fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The items of a list read oldest update first and paged by offset
/// that a watermark may move over: all of them, unless an item (by `id`)
/// showed up twice. It was then updated while the pages were read and
/// moved to the end, shifting the later pages by one, so that the item
/// after a later page boundary may have been skipped: only the pages up
/// to the one it was first read on are then certain (nothing on them is
/// newer than the skipped item), and the next read goes over the rest
/// again (POLLING.md §7 scenario 13).
fn settled(list: &api::Listing) -> &[Value] {
    let mut first = BTreeMap::new();
    let mut end = list.items.len();
    let mut page = 0;
    for (i, item) in list.items.iter().enumerate() {
        while list.page_ends.get(page).is_some_and(|e| *e <= i) {
            page += 1;
        }
        let Some(id) = item["id"].as_i64() else {
            continue;
        };
        match first.get(&id) {
            Some(&first_page) => {
                end = end.min(list.page_ends.get(first_page).copied().unwrap_or(end));
            }
            None => {
                first.insert(id, page);
            }
        }
    }
    &list.items[..end]
}

/// What a stream's cursor keeps in its watermark (JSON), when it keeps
/// one that reads as `T`.
fn mark_of<T: serde::de::DeserializeOwned>(cursor: &PollCursor) -> Option<T> {
    serde_json::from_str(cursor.watermark.as_deref()?).ok()
}

/// The commits stream's watermark of one branch: the head last read and
/// its commit time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct HeadMark {
    sha: String,
    /// Server epoch seconds.
    at: i64,
    /// The next page of a first listing that did not reach the start of
    /// the window (a `Link` URL, verbatim): later polls go on from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backfill: Option<String>,
}

/// The wait after the `attempt`-th failure in a row (1-based): 2 s
/// doubling, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << attempt.clamp(1, 16).saturating_sub(1))
        .min(MAX_BACKOFF)
}

/// `d` scaled by a random factor in `[1 - share, 1 + share]`.
fn jitter(d: Duration, share: f64) -> Duration {
    d.mul_f64(1.0 - share + 2.0 * share * rand_unit())
}

/// A number in `[0, 1)` from the clock's nanoseconds: enough to spread
/// polls and retries, not for anything secret.
fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (u64::from(nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    mixed as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PollTarget {
        let raw: RawTarget = toml::from_str(
            "repo = \"acme/shop\"\ntoken_env = \"T\"\ninterval = \"1m\"\nmax_interval = \"30m\"",
        )
        .unwrap();
        PollTarget::from_raw(Provider::Github, &raw, 0, 0.5, &[], &|_| {
            Some("t0ken".into())
        })
        .unwrap()
    }

    fn minutes(m: f64) -> Duration {
        Duration::from_secs_f64(m * 60.0)
    }

    /// The due time of `stream`'s next poll.
    fn due(schedule: &Schedule, stream: Stream) -> Duration {
        schedule
            .slots
            .iter()
            .find(|s| s.stream == stream)
            .unwrap()
            .due
    }

    fn within(d: Duration, center: Duration) -> bool {
        d >= center.mul_f64(0.9) && d <= center.mul_f64(1.1)
    }

    #[test]
    fn a_stream_waits_a_quarter_of_its_mean_after_a_change_and_longer_while_unchanged() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        assert_eq!(s.next().1, Duration::ZERO);
        let d = Stream::Deployments;
        s.record(
            d,
            Duration::ZERO,
            Outcome::Changed {
                mean: Some(minutes(60.0)),
            },
            None,
            Duration::ZERO,
        );
        assert!(within(due(&s, d), minutes(15.0)), "{:?}", due(&s, d));
        // Unchanged: 1.5× each time, to the maximum.
        let mut now = due(&s, d);
        for expected in [22.5, 30.0, 30.0] {
            s.record(d, now, Outcome::Unchanged, None, Duration::ZERO);
            assert!(within(due(&s, d) - now, minutes(expected)), "{expected}");
            now = due(&s, d);
        }
        // A busy stream is not polled more often than the configured interval.
        s.record(
            d,
            now,
            Outcome::Changed {
                mean: Some(minutes(1.0)),
            },
            None,
            Duration::ZERO,
        );
        assert!(within(due(&s, d) - now, minutes(1.0)));
        // The review stream may wait an hour.
        let p = Stream::PullRequests;
        for _ in 0..20 {
            s.record(p, now, Outcome::Unchanged, None, Duration::ZERO);
        }
        assert!(within(due(&s, p) - now, minutes(60.0)));
    }

    #[test]
    fn x_poll_interval_and_the_budget_raise_the_floor() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        let d = Stream::Deployments;
        s.record(
            d,
            Duration::ZERO,
            Outcome::Changed {
                mean: Some(minutes(2.0)),
            },
            Some(minutes(2.0)),
            Duration::ZERO,
        );
        assert!(due(&s, d) >= minutes(1.8));
        // The hint is kept until the provider sends another.
        s.record(
            d,
            Duration::ZERO,
            Outcome::Changed {
                mean: Some(minutes(2.0)),
            },
            None,
            Duration::ZERO,
        );
        assert!(due(&s, d) >= minutes(1.8));
        s.record(
            d,
            Duration::ZERO,
            Outcome::Changed {
                mean: Some(minutes(2.0)),
            },
            None,
            minutes(10.0),
        );
        assert!(due(&s, d) >= minutes(9.0));
    }

    #[test]
    fn limits_hold_every_stream_repeats_back_off_and_the_fifth_degrades() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        let now = minutes(10.0);
        s.record(
            Stream::Incidents,
            now,
            Outcome::RateLimited {
                wait: Duration::from_secs(30),
            },
            None,
            Duration::ZERO,
        );
        for stream in Provider::Github.streams() {
            assert!(
                due(&s, *stream) >= now + Duration::from_secs(30),
                "{stream:?}"
            );
        }
        assert_eq!(s.backoff(), Duration::from_secs(30));
        let mut waits = vec![s.backoff()];
        for _ in 0..4 {
            s.record(
                Stream::Incidents,
                now,
                Outcome::RateLimited {
                    wait: Duration::from_secs(30),
                },
                None,
                Duration::ZERO,
            );
            waits.push(s.backoff());
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(s.degraded());
        assert!(s.backoff() >= minutes(30.0));
        s.record(
            Stream::Incidents,
            now,
            Outcome::Unchanged,
            None,
            Duration::ZERO,
        );
        assert!(!s.degraded());
        assert_eq!(s.backoff(), Duration::ZERO);
    }

    #[test]
    fn failures_back_off_with_full_jitter_and_refusals_degrade_until_a_success() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        let c = Stream::Commits;
        for failures in 1..=4 {
            s.record(c, Duration::ZERO, Outcome::Transient, None, Duration::ZERO);
            assert!(due(&s, c) <= backoff(failures), "{failures}");
            assert!(!s.degraded());
        }
        s.record(c, Duration::ZERO, Outcome::Transient, None, Duration::ZERO);
        assert!(s.degraded());
        assert!(due(&s, c) >= minutes(30.0));
        s.record(c, Duration::ZERO, Outcome::Unchanged, None, Duration::ZERO);
        assert!(!s.degraded());

        s.record(
            Stream::Incidents,
            Duration::ZERO,
            Outcome::Refused,
            None,
            Duration::ZERO,
        );
        assert!(s.degraded());
        assert_eq!(due(&s, Stream::Incidents), minutes(30.0));
        // Another stream's success does not clear it; its own does.
        s.record(c, Duration::ZERO, Outcome::Unchanged, None, Duration::ZERO);
        assert!(s.degraded());
        s.record(
            Stream::Incidents,
            Duration::ZERO,
            Outcome::Unchanged,
            None,
            Duration::ZERO,
        );
        assert!(!s.degraded());
    }

    #[test]
    fn backoff_doubles_from_two_seconds_to_fifteen_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn backfill_dates_are_past_dates_or_times() {
        assert_eq!(parse_since("2026-01-31"), Some(1_769_817_600));
        assert_eq!(parse_since("2026-01-31T12:00:00Z"), Some(1_769_860_800));
        for bad in ["2999-01-01", "31/01/2026", "yesterday", ""] {
            assert_eq!(parse_since(bad), None, "{bad}");
        }
        let raw: RawTarget = toml::from_str(
            "repo = \"acme/shop\"\ntoken_env = \"T\"\nbackfill_since = \"2999-01-01\"",
        )
        .unwrap();
        let error = PollTarget::from_raw(Provider::Github, &raw, 0, 0.5, &[], &|_| {
            Some("t0ken".into())
        })
        .unwrap_err();
        assert_eq!(error.0, "poll.github[0].backfill_since");
    }

    #[test]
    fn a_watermark_moves_over_every_item_read_unless_one_moved_while_paging() {
        let item = |id: i64| json!({"id": id});
        let ids = |pages: &[Vec<Value>]| -> Vec<i64> {
            let list: api::Listing = pages.iter().cloned().collect();
            settled(&list)
                .iter()
                .filter_map(|i| i["id"].as_i64())
                .collect()
        };
        let pages = vec![
            vec![item(1), item(2)],
            vec![item(3), item(4)],
            vec![item(5)],
        ];
        assert_eq!(ids(&pages), [1, 2, 3, 4, 5]);
        // #3 was updated after its page was read: it shows up again at the
        // end, and the first item of the next page may have been skipped;
        // only the pages up to #3's first are certain.
        let mut moved = pages.clone();
        moved[2].push(item(3));
        assert_eq!(ids(&moved), [1, 2, 3, 4]);
        moved[2].push(item(1));
        assert_eq!(ids(&moved), [1, 2]);
        assert!(ids(&[]).is_empty());
    }

    #[test]
    fn a_gitlab_project_is_named_by_its_full_path_or_id_on_gitlab_com_by_default() {
        let env = |name: &str| (name == "GL_TOKEN").then(|| "glpat-example".to_owned());
        let target = |repo: &str| {
            let raw: RawTarget =
                toml::from_str(&format!("repo = {repo:?}\ntoken_env = \"GL_TOKEN\"")).unwrap();
            PollTarget::from_raw(Provider::Gitlab, &raw, 0, 0.5, &[], &env)
        };
        let nested = target("acme/platform/shop").unwrap();
        assert_eq!(nested.api_url, "https://gitlab.com/api/v4");
        assert_eq!(nested.source, "gitlab");
        let line = nested.describe();
        assert!(
            line.starts_with(
                "poll gitlab acme/platform/shop at https://gitlab.com/api/v4: successful deployments, \
                 incident issues, commits, open merge requests' reviews of the default branch"
            ),
            "{line}"
        );
        assert!(!line.contains("glpat"), "{line}");
        assert!(target("4711").is_ok());
        for bad in ["acme", "acme/../shop", "acme/shop?x"] {
            let (key, _) = target(bad).unwrap_err();
            assert_eq!(key, "poll.gitlab[0].repo", "{bad}");
        }
    }

    #[test]
    fn branch_names_follow_git_rules() {
        for good in ["main", "release/1.2", "feature_x-y"] {
            assert!(valid_branch(good), "{good}");
        }
        for bad in ["", "-x", "a..b", "a b", "a~1", "a:b", "x/", "a//b", "x."] {
            assert!(!valid_branch(bad), "{bad}");
        }
    }
}
