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
mod github;
mod gitlab;
mod reviews;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use api::{token_gates, TokenGate};
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
    fn event_kind(self) -> Option<&'static str> {
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
            TokenSource::File(path) => crate::config::read_secrets_file(path)?,
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
        if provider == Provider::Gitea {
            return Err((
                key("repo"),
                "only [[poll.github]] and [[poll.gitlab]] are polled in this build".into(),
            ));
        }
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
        let streams: Vec<&str> = self
            .provider
            .streams()
            .iter()
            .map(|s| s.describe(self.provider))
            .collect();
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

    /// The stream key of `name` for this repository.
    fn stream(&self, name: &str) -> String {
        format!(
            "{}|{}|{}|{name}",
            self.provider.name(),
            self.api_url,
            self.repo
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

    /// The application the repository's events count for.
    fn app(&self) -> Option<String> {
        self.options
            .app(&self.repo)
            .ok()
            .map(|a| a.as_str().to_owned())
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
}

impl Recorder {
    pub fn new(store: Store, ledger: Ledger, metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            store,
            ledger,
            metrics,
            stored: Default::default(),
            forget: Vec::new(),
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
    async fn mean_interval(&self, app: Option<String>, kind: &'static str) -> Option<Duration> {
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
struct Slot {
    stream: Stream,
    interval: Duration,
    due: tokio::time::Instant,
    /// The provider's last `X-Poll-Interval` for it.
    hint: Option<Duration>,
}

/// Polls `poller`'s streams until the task is aborted, the first after
/// `start` (spreading repositories over one interval, POLLING.md §6 step
/// 1). After a change a stream waits a quarter of its mean time between
/// events (5 min while fewer than two are known), after an unchanged poll
/// 1.5× its last wait, always within `[floor, max]` with ±10 % jitter,
/// where the floor is the configured interval, the provider's
/// `X-Poll-Interval` and, where every request is paid, the repository's
/// share of the budget. Rate limits hold every stream of the repository
/// until the reset; failures back off with full jitter and after
/// [`DEGRADED_AFTER`] in a row the repository is degraded.
pub async fn run<P: Poller>(mut poller: P, start: Duration) {
    let target = poller.target().clone();
    let repo = target.repo.as_str();
    let metrics = Arc::clone(&poller.recorder().metrics);
    let app = target.app();
    let now = tokio::time::Instant::now();
    let mut slots = Vec::new();
    for stream in target.provider.streams() {
        let mean = match stream.event_kind() {
            Some(kind) => poller.recorder().mean_interval(app.clone(), kind).await,
            None => None,
        };
        slots.push(Slot {
            stream: *stream,
            interval: mean.map_or(QUIET_START, |g| g.mul_f64(ALPHA)),
            due: now + start,
            hint: None,
        });
    }
    let mut failures = 0u32;
    let mut limited = 0u32;
    let degraded = metrics.poll_degraded.with_label_values(&[repo]);
    let backoff_gauge = metrics.poll_backoff.with_label_values(&[repo]);
    loop {
        let Some(slot) = slots.iter_mut().min_by_key(|s| s.due) else {
            return;
        };
        tokio::time::sleep_until(slot.due).await;
        let stream = slot.stream;
        let outcome = poller.poll_stream(stream).await;
        if let Some(hint) = poller.take_poll_interval_hint() {
            slot.hint = Some(hint);
        }
        let now = tokio::time::Instant::now();
        let max = match stream {
            Stream::PullRequests => target.max_interval.max(REVIEW_MAX_INTERVAL),
            _ => target.max_interval,
        };
        let floor = [
            target.interval,
            slot.hint.unwrap_or_default(),
            budget_floor(&target, poller.gate()).await,
        ]
        .into_iter()
        .max()
        .unwrap_or(target.interval)
        .min(max);
        match outcome {
            Ok(changed) => {
                failures = 0;
                limited = 0;
                degraded.set(0);
                backoff_gauge.set(0.0);
                metrics
                    .poll_last_success
                    .with_label_values(&[repo])
                    .set(now_seconds() as f64);
                let mean = match (changed, stream.event_kind()) {
                    (true, Some(kind)) => poller.recorder().mean_interval(app.clone(), kind).await,
                    _ => None,
                };
                if let Some(mean) = mean {
                    poller.gate().set_weight(repo, mean).await;
                }
                slot.interval = match (changed, mean) {
                    (true, Some(g)) => g.mul_f64(ALPHA),
                    (true, None) => target.interval,
                    (false, _) => slot.interval.mul_f64(1.5),
                }
                .clamp(floor, max);
                slot.due = now + jitter(slot.interval, 0.1);
            }
            Err(PollError::RateLimited { until }) => {
                // Until the reset; an answer that keeps refusing past it
                // backs off, and after five the repository is degraded.
                limited += 1;
                let floor = if limited > 1 {
                    backoff(limited).as_secs()
                } else {
                    1
                };
                let mut seconds = ((until - now_seconds()).max(0) as u64)
                    .max(floor)
                    .clamp(1, 65 * 60);
                if limited >= DEGRADED_AFTER {
                    degraded.set(1);
                    seconds = seconds.max(max.as_secs());
                }
                tracing::warn!(repo, seconds, "Rate limited: waiting for the reset");
                backoff_gauge.set(seconds as f64);
                let until = now + Duration::from_secs(seconds);
                for slot in &mut slots {
                    slot.due = slot.due.max(until);
                }
            }
            Err(PollError::Transient(error)) => {
                failures += 1;
                let mut wait = backoff(failures).mul_f64(rand_unit());
                if failures >= DEGRADED_AFTER {
                    degraded.set(1);
                    wait = wait.max(max);
                }
                tracing::warn!(
                    repo,
                    stream = stream.name(),
                    failures,
                    error,
                    "Poll failed; backing off"
                );
                backoff_gauge.set(wait.as_secs_f64());
                slot.due = now + wait;
            }
            Err(PollError::Refused(error) | PollError::Gone(error)) => {
                tracing::error!(
                    repo,
                    stream = stream.name(),
                    error,
                    "Poll refused; retrying at the longest interval"
                );
                slot.due = now + max;
            }
        }
    }
}

/// Where every request is paid, the shortest interval that keeps a
/// repository within its share of the budget: one request per stream per
/// interval (POLLING.md §6 step 8).
async fn budget_floor(target: &PollTarget, gate: &TokenGate) -> Duration {
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
    crate::store::now_seconds()
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

/// The `since` (or `updated_after`) watermark after a read from `since`
/// whose newest server timestamp was `newest`: that less the overlap
/// (POLLING.md §6 step 6), never behind `since`; `since` itself when
/// nothing was read.
fn next_since(since: &str, newest: Option<i64>) -> String {
    let current = server_time(&Value::from(since));
    match (newest, current) {
        (Some(newest), Some(current)) if newest - OVERLAP_SECONDS <= current => since.to_owned(),
        (Some(newest), _) => rfc3339(newest - OVERLAP_SECONDS),
        (None, _) => since.to_owned(),
    }
}

/// The newest `updated_at` (server epoch seconds) a read of `pages` may
/// move its watermark to, for a list sorted oldest update first and paged
/// by offset: the newest item's, unless an item (by `id`) showed up twice.
/// Then it was updated while the pages were read and moved to the end,
/// shifting the later pages by one, so that another item may have been
/// skipped: only the first page is then certain, and the next read goes
/// over the rest again (POLLING.md §7 scenario 13).
fn newest_update(pages: &[Vec<Value>]) -> Option<i64> {
    let newest = |items: &mut dyn Iterator<Item = &Value>| {
        items
            .filter_map(|item| server_time(&item["updated_at"]))
            .max()
    };
    let mut seen = std::collections::BTreeSet::new();
    let moved = pages
        .iter()
        .flatten()
        .filter_map(|item| item["id"].as_i64())
        .any(|id| !seen.insert(id));
    if moved {
        newest(&mut pages.iter().take(1).flatten())
    } else {
        newest(&mut pages.iter().flatten())
    }
}

/// The commits stream's watermark of one branch: the head last read and
/// its commit time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct HeadMark {
    sha: String,
    /// Server epoch seconds.
    at: i64,
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

    #[test]
    fn backoff_doubles_from_two_seconds_to_fifteen_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn a_read_moves_its_watermark_to_its_newest_update_unless_an_item_moved() {
        let item = |id: i64, at: &str| json!({"id": id, "updated_at": at});
        let pages = vec![
            vec![
                item(1, "2026-08-11T07:00:00Z"),
                item(2, "2026-08-11T08:00:00Z"),
            ],
            vec![item(3, "2026-08-11T09:00:00Z")],
        ];
        assert_eq!(
            newest_update(&pages),
            server_time(&json!("2026-08-11T09:00:00Z"))
        );
        // #1 was updated between the pages: it shows up again at the end,
        // and an item may have been skipped; only the first page counts.
        let mut moved = pages.clone();
        moved[1].push(item(1, "2026-08-11T10:00:00Z"));
        assert_eq!(
            newest_update(&moved),
            server_time(&json!("2026-08-11T08:00:00Z"))
        );
        assert_eq!(newest_update(&[]), None);
    }

    #[test]
    fn since_moves_forward_only_past_the_overlap() {
        let at = |t: &str| server_time(&json!(t));
        let since = "2026-08-11T07:00:00Z";
        assert_eq!(next_since(since, None), since);
        assert_eq!(next_since(since, at("2026-08-11T07:01:00Z")), since);
        assert_eq!(
            next_since(since, at("2026-08-11T09:00:00Z")),
            "2026-08-11T08:58:00Z"
        );
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
