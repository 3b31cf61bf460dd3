//! Pull mode (POLLING.md): reads GitHub deployments with their statuses,
//! and incident issues, through the REST API for repositories whose
//! webhooks cannot reach this service, and writes what it finds through
//! the same ledger as webhooks.
//!
//! A status or an issue is mapped by the GitHub plugin's own
//! `deployment_status` / `issues` rules (the API objects are the webhook's
//! objects), so a fact seen by both a webhook and a poll is one fact. Every request is conditional on the
//! validators stored for its URL; validators and watermarks are written in
//! the same transaction as the facts they produced (`Store::record_polled`).
//! Rate-limit headers are honoured: nothing is sent while a limit is known
//! to be exhausted, nor once 5 % of the quota is left, until the reset.

mod commits;
mod pulls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ledger::{Delivery, DeliveryId, Disposition};
use crate::metrics::Metrics;
use crate::plugins::{github::GitHub, Plugin, SourceOptions};
use crate::signature::Secret;
use crate::store::deliveries::Ledger;
use crate::store::{PollCursor, Store, StoreError};

/// API version every request pins (POLLING.md §1).
const API_VERSION: &str = "2022-11-28";
/// The media type of the REST API's JSON answers.
const GITHUB_JSON: &str = "application/vnd.github+json";
/// Deployments older than this are not followed for new statuses.
const STATUS_HORIZON_SECONDS: i64 = 24 * 3600;
/// Per request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Below this share of the quota left, no request is sent until the reset.
const RESERVE_SHARE: f64 = 0.05;
/// The longest a failing repository waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Pages of one list read in one poll at most (100 items each).
const MAX_PAGES: usize = 10;
/// How far back the first poll of incidents and commits reads.
const BOOTSTRAP_SECONDS: i64 = 30 * 86_400;
/// Re-read margin below a timestamp watermark (POLLING.md §6 step 6).
const OVERLAP_SECONDS: i64 = 120;

/// `[[poll.github]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithubPoll {
    /// `owner/name`.
    pub repo: String,
    /// File holding the token (a mounted Secret).
    pub token_file: Option<std::path::PathBuf>,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// REST base URL: `https://api.github.com`, or `https://HOST/api/v3`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The `[sources.github…]` instance whose options (environments,
    /// namespaces, apps) map what is read.
    #[serde(default = "default_source")]
    pub source: String,
    /// The repository's default branch, when it should not be read from the
    /// API (the source's `branches`, when set, are polled instead).
    pub branch: Option<String>,
    /// Time between polls while nothing changes grows from this …
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// … up to this.
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
}

fn default_api_url() -> String {
    "https://api.github.com".into()
}
fn default_source() -> String {
    "github".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30 * 60)
}

/// `[poll]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPoll {
    pub github: Vec<RawGithubPoll>,
}

/// One polled GitHub repository, validated.
#[derive(Clone)]
pub struct GithubRepo {
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

impl std::fmt::Debug for GithubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubRepo")
            .field("repo", &self.repo)
            .field("api_url", &self.api_url)
            .field("token", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

impl GithubRepo {
    /// Checks one `[[poll.github]]` entry; `index` names it in errors.
    /// `instances` are the configured `[sources.github…]` keys and options.
    pub fn from_raw(
        raw: &RawGithubPoll,
        index: usize,
        instances: &[(String, SourceOptions)],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GithubRepo, (String, String)> {
        let key = |field: &str| format!("poll.github[{index}].{field}");
        let parts: Vec<&str> = raw.repo.split('/').collect();
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if parts.len() != 2 || !parts.iter().all(|p| valid_part(p)) {
            return Err((key("repo"), "must be owner/name".into()));
        }
        let api_url = raw.api_url.trim_end_matches('/').to_owned();
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
        let source = raw.source.clone();
        let options = if source == "github" || source.starts_with("github.") {
            instances
                .iter()
                .find(|(k, _)| *k == source)
                .map(|(_, o)| o.clone())
                .or_else(|| (source == "github").then(|| GitHub.defaults()))
                .ok_or_else(|| {
                    (
                        key("source"),
                        format!("no [sources.{source}] is configured"),
                    )
                })?
        } else {
            return Err((key("source"), "must name a github source instance".into()));
        };
        if !options.deploy_workflows.is_empty() {
            return Err((
                key("source"),
                format!(
                    "[sources.{source}] counts workflow runs as deploys (deploy_workflows); polling reads \
                     deployments, which that source ignores: name a source without deploy_workflows"
                ),
            ));
        }
        if let Some(branch) = &raw.branch {
            let valid = !branch.is_empty()
                && branch.len() <= 255
                && !branch.starts_with(['-', '/'])
                && !branch.contains("..")
                && branch
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"~^:?*[\\".contains(&b));
            if !valid {
                return Err((key("branch"), "must be a branch name".into()));
            }
        }
        Ok(GithubRepo {
            repo: raw.repo.clone(),
            branch: raw.branch.clone(),
            api_url,
            token: Secret::new(token),
            token_source,
            source,
            options,
            interval: raw.interval,
            max_interval: raw.max_interval,
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
        format!(
            "poll github {} at {}: deployments and their statuses, incident issues, commits and \
             open pull requests' reviews of {branches}, mapped by [sources.{}], every {} to {}",
            self.repo,
            self.api_url,
            self.source,
            humantime::format_duration(self.interval),
            humantime::format_duration(self.max_interval)
        )
    }

    /// The stream key of `name` for this repository.
    fn stream(&self, name: &str) -> String {
        format!("github|{}|{}|{name}", self.api_url, self.repo)
    }
}

/// What the deployments stream keeps between polls (the cursor's
/// watermark, as JSON): the highest deployment id seen and the recent
/// deployments whose statuses are still followed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct DeploymentsMark {
    max_id: i64,
    /// id → created_at (epoch seconds) of deployments without a final status.
    open: BTreeMap<i64, i64>,
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
    /// 404 or 410: the repository, or one deployment, is gone.
    #[error("{0}")]
    Gone(String),
}

/// One conditional GET's answer.
enum Fetched {
    NotModified,
    Changed {
        body: Bytes,
        etag: Option<String>,
        last_modified: Option<String>,
        /// The `rel="next"` URL of the `Link` header, verbatim.
        next: Option<String>,
    },
}

/// The `rel="next"` target of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// The quota as the last response told it.
#[derive(Debug, Clone, Copy, Default)]
struct Quota {
    limit: Option<u64>,
    remaining: Option<u64>,
    /// Epoch seconds, local clock (converted with the server's `Date`).
    reset: Option<i64>,
}

/// What repositories polled with one token share: its rate-limit state as
/// the last answer to any of them gave it, and the right to send (one
/// request in flight per token, POLLING.md §1.2).
#[derive(Default)]
pub struct TokenGate {
    quota: tokio::sync::Mutex<Quota>,
}

/// One gate per repository, the same gate for repositories that share an
/// API and a token.
pub fn token_gates(repos: &[GithubRepo]) -> Vec<Arc<TokenGate>> {
    let same_token = |a: &GithubRepo, b: &GithubRepo| {
        a.api_url == b.api_url && a.token.expose() == b.token.expose()
    };
    let mut gates: Vec<Arc<TokenGate>> = Vec::with_capacity(repos.len());
    for (i, repo) in repos.iter().enumerate() {
        let shared = repos[..i]
            .iter()
            .position(|earlier| same_token(earlier, repo));
        gates.push(match shared {
            Some(j) => Arc::clone(&gates[j]),
            None => Arc::new(TokenGate::default()),
        });
    }
    gates
}

/// Polls one repository.
pub struct GithubPoller {
    repo: GithubRepo,
    client: reqwest::Client,
    store: Store,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    quota: Quota,
    gate: Arc<TokenGate>,
    /// Server clock minus local clock, from the last `Date` header.
    skew: i64,
    /// This repository's stream states, read once at the start of a poll.
    stored: BTreeMap<String, PollCursor>,
    /// Streams let go in this poll (deployments no longer followed), their
    /// state deleted with the next commit.
    forget: Vec<String>,
}

fn now_seconds() -> i64 {
    crate::store::now_seconds()
}

impl GithubPoller {
    pub fn new(
        repo: GithubRepo,
        gate: Arc<TokenGate>,
        store: Store,
        ledger: Ledger,
        metrics: Arc<Metrics>,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("hookgauge/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .expect("a TLS client can be built");
        GithubPoller {
            repo,
            client,
            store,
            ledger,
            metrics,
            quota: Quota::default(),
            gate,
            skew: 0,
            stored: BTreeMap::new(),
            forget: Vec::new(),
        }
    }

    /// Polls until the task is aborted: after a change at `interval`, then
    /// 1.5× longer per unchanged poll up to `max_interval`, ±10 % jitter;
    /// failures back off with full jitter.
    pub async fn run(mut self) {
        let mut wait = self.repo.interval;
        let mut failures = 0u32;
        let mut limited = 0u32;
        loop {
            let outcome = self.poll_once().await;
            if !matches!(outcome, Err(PollError::RateLimited { .. })) {
                limited = 0;
            }
            match outcome {
                Ok(changed) => {
                    failures = 0;
                    self.metrics
                        .poll_last_success
                        .with_label_values(&[&self.repo.repo])
                        .set(now_seconds() as f64);
                    wait = if changed {
                        self.repo.interval
                    } else {
                        wait.mul_f64(1.5).min(self.repo.max_interval)
                    };
                    tokio::time::sleep(jitter(wait, 0.1)).await;
                }
                Err(PollError::RateLimited { until }) => {
                    // Until the reset; an answer that keeps refusing past it
                    // backs off.
                    limited += 1;
                    let floor = if limited > 1 {
                        backoff(limited).as_secs()
                    } else {
                        1
                    };
                    let seconds = ((until - now_seconds()).max(0) as u64)
                        .max(floor)
                        .clamp(1, 65 * 60);
                    tracing::warn!(repo = %self.repo.repo, seconds, "GitHub rate limit: waiting for the reset");
                    tokio::time::sleep(Duration::from_secs(seconds)).await;
                }
                Err(PollError::Transient(error)) => {
                    failures += 1;
                    tracing::warn!(repo = %self.repo.repo, failures, error, "Poll failed; backing off");
                    // Full jitter.
                    tokio::time::sleep(backoff(failures).mul_f64(rand_unit())).await;
                }
                Err(PollError::Refused(error) | PollError::Gone(error)) => {
                    tracing::error!(repo = %self.repo.repo, error, "Poll refused; retrying at the longest interval");
                    tokio::time::sleep(self.repo.max_interval).await;
                }
            }
        }
    }

    /// One poll of every stream: deployments (and the statuses of recent,
    /// unfinished ones), incident issues, the commits of the tracked
    /// branches and the open pull requests' reviews. Each stream records
    /// its facts with its cursors in one transaction, so one that fails (a
    /// 404 on issues, say) neither loses nor holds the others. `Ok(true)`
    /// when something changed.
    pub async fn poll_once(&mut self) -> Result<bool, PollError> {
        self.stored = self
            .ledger
            .poll_cursors(self.repo.stream(""))
            .await
            .map_err(|e| PollError::Transient(e.to_string()))?
            .into_iter()
            .map(|c| (c.stream.clone(), c))
            .collect();
        let mut deliveries = Vec::new();
        let mut cursors = Vec::new();
        let mut first_error = None;
        let mut changed = false;
        let mut note = |result: Result<(), PollError>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        note(self.deployments(&mut deliveries, &mut cursors).await);
        changed |= self.commit(&mut deliveries, &mut cursors).await?;
        note(self.incidents(&mut deliveries, &mut cursors).await);
        changed |= self.commit(&mut deliveries, &mut cursors).await?;
        match self.branches(&mut cursors).await {
            Ok(branches) => {
                for branch in &branches {
                    note(self.commits(branch, &mut deliveries, &mut cursors).await);
                    changed |= self.commit(&mut deliveries, &mut cursors).await?;
                }
                note(self.pulls(&branches, &mut cursors).await);
                changed |= self.commit(&mut deliveries, &mut cursors).await?;
            }
            Err(e) => note(Err(e)),
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// The tracked branches: the source's `branches`, else the configured
    /// default branch, else the repository's, read (conditionally) from
    /// the API; its cursor joins `cursors` when it changed.
    async fn branches(&mut self, cursors: &mut Vec<PollCursor>) -> Result<Vec<String>, PollError> {
        if !self.repo.options.branches.is_empty() {
            return Ok(self.repo.options.branches.clone());
        }
        if let Some(branch) = &self.repo.branch {
            return Ok(vec![branch.clone()]);
        }
        let cursor = self.cursor(self.repo.stream("repository"));
        let url = format!("{}/repos/{}", self.repo.api_url, self.repo.repo);
        let default_branch = match self.get(&url, &cursor, "repository", GITHUB_JSON).await? {
            Fetched::NotModified => cursor.watermark.clone(),
            Fetched::Changed {
                body,
                etag,
                last_modified,
                ..
            } => {
                let repository: Value = serde_json::from_slice(&body)
                    .map_err(|e| PollError::Transient(format!("repository: {e}")))?;
                let branch = repository["default_branch"].as_str().map(str::to_owned);
                let new_cursor = PollCursor {
                    etag,
                    last_modified,
                    watermark: branch.clone(),
                    ..cursor.clone()
                };
                if new_cursor != cursor {
                    cursors.push(new_cursor);
                }
                branch
            }
        };
        default_branch
            .map(|b| vec![b])
            .ok_or_else(|| PollError::Transient("repository: no default_branch".into()))
    }

    /// Records what a stream read (taken from `deliveries` and `cursors`)
    /// in one transaction; `Ok(false)` when there was nothing.
    async fn commit(
        &mut self,
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
            self.metrics
                .count_delivery(GitHub.source(), event, r.outcome);
        }
        tracing::debug!(repo = %self.repo.repo, stored = recorded.len(), "Poll recorded");
        Ok(true)
    }

    /// The deployments stream: new deployments (newest first, by `Link`)
    /// and the statuses of those still followed.
    async fn deployments(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self.cursor(self.repo.stream("deployments"));
        let mut mark: DeploymentsMark = cursor
            .watermark
            .as_deref()
            .and_then(|w| serde_json::from_str(w).ok())
            .unwrap_or_default();
        let mut deployments: BTreeMap<i64, Value> = BTreeMap::new();
        let mut new_cursor = cursor.clone();
        let first = format!(
            "{}/repos/{}/deployments?per_page=100",
            self.repo.api_url, self.repo.repo
        );
        // Page 1 is conditional; newer-first pages are followed through
        // `rel="next"` until one reaches what was already seen or the
        // horizon (POLLING.md §6 step 6).
        let mut next = Some(first);
        let mut page = 0;
        let mut max_id = mark.max_id;
        while let Some(url) = next.take() {
            let Some((list, link_next)) = self
                .list_page(&url, page, &cursor, &mut new_cursor, "deployments")
                .await?
            else {
                break;
            };
            page += 1;
            let horizon = self.server_now() - STATUS_HORIZON_SECONDS;
            let mut reached_seen = list.is_empty();
            for deployment in list {
                let Some(id) = deployment["id"].as_i64() else {
                    continue;
                };
                // A time that does not parse is taken as now: followed, not lost.
                let created =
                    server_time(&deployment["created_at"]).unwrap_or_else(|| self.server_now());
                max_id = max_id.max(id);
                if id <= mark.max_id || created < horizon {
                    reached_seen = true;
                } else {
                    mark.open.insert(id, created);
                }
                deployments.insert(id, deployment);
            }
            if !reached_seen && page < MAX_PAGES {
                next = link_next.filter(|u| u.starts_with(&self.repo.api_url));
            }
        }
        mark.max_id = max_id;
        // Statuses of the deployments still followed, each conditional; one
        // that passed the horizon is read a last time, then let go.
        let horizon = self.server_now() - STATUS_HORIZON_SECONDS;
        let open: Vec<(i64, i64)> = mark.open.iter().map(|(id, c)| (*id, *c)).collect();
        // Whatever happens below, the statuses state of a deployment that
        // leaves `open` goes with it.
        let followed: Vec<i64> = open.iter().map(|(id, _)| *id).collect();
        for (id, created) in open {
            let statuses_cursor = self.cursor(self.repo.stream(&format!("statuses|{id}")));
            let url = format!(
                "{}/repos/{}/deployments/{id}/statuses?per_page=100",
                self.repo.api_url, self.repo.repo
            );
            let fetched = match self
                .get(&url, &statuses_cursor, "statuses", GITHUB_JSON)
                .await
            {
                Err(PollError::Gone(_)) => {
                    // Deleted since: nothing more to follow.
                    mark.open.remove(&id);
                    continue;
                }
                other => other?,
            };
            if created < horizon {
                mark.open.remove(&id);
            }
            let Fetched::Changed {
                body,
                etag,
                last_modified,
                ..
            } = fetched
            else {
                continue;
            };
            let statuses: Vec<Value> = serde_json::from_slice(&body)
                .map_err(|e| PollError::Transient(format!("statuses: {e}")))?;
            let deployment = match deployments.get(&id) {
                Some(d) => d.clone(),
                None => match self.deployment(id).await {
                    Err(PollError::Gone(_)) => {
                        mark.open.remove(&id);
                        continue;
                    }
                    other => other?,
                },
            };
            for status in &statuses {
                if let Some(delivery) = self.delivery(&deployment, status) {
                    deliveries.push(delivery);
                }
            }
            let finished = statuses.iter().any(|s| {
                matches!(
                    s["state"].as_str(),
                    Some("success" | "failure" | "error" | "inactive")
                )
            });
            if finished {
                mark.open.remove(&id);
            }
            cursors.push(PollCursor {
                etag,
                last_modified,
                ..statuses_cursor
            });
        }
        for id in followed
            .into_iter()
            .filter(|id| !mark.open.contains_key(id))
        {
            self.forget
                .push(self.repo.stream(&format!("statuses|{id}")));
        }
        new_cursor.watermark = Some(serde_json::to_string(&mark).unwrap_or_default());
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(())
    }

    /// The incidents stream, one per incident label: issues updated since
    /// the watermark (less an overlap: an issue updated while the pages
    /// were read is read again, and counted once), oldest update first.
    /// An issue yields its creation and, once closed, its resolution,
    /// mapped by the GitHub plugin's `issues` rules.
    async fn incidents(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        for label in self.repo.options.incident_labels.clone() {
            let cursor = self.cursor(self.repo.stream(&format!("incidents|{label}")));
            // The URL stays the same until new data is committed, so that
            // its ETag keeps answering 304.
            let since = cursor.watermark.clone().unwrap_or_else(|| {
                let start = self.server_now() - BOOTSTRAP_SECONDS;
                rfc3339(start)
            });
            let label_param: String = form_urlencoded::byte_serialize(label.as_bytes()).collect();
            let mut next = Some(format!(
                "{}/repos/{}/issues?state=all&labels={label_param}&sort=updated&direction=asc&per_page=100&since={since}",
                self.repo.api_url, self.repo.repo
            ));
            let mut new_cursor = cursor.clone();
            let mut newest: Option<i64> = None;
            let mut page = 0;
            while let Some(url) = next.take() {
                let Some((issues, link_next)) = self
                    .list_page(&url, page, &cursor, &mut new_cursor, "issues")
                    .await?
                else {
                    break;
                };
                page += 1;
                for issue in issues {
                    if issue.get("pull_request").is_some() {
                        continue;
                    }
                    if let Some(updated) = server_time(&issue["updated_at"]) {
                        newest = Some(newest.unwrap_or(i64::MIN).max(updated));
                    }
                    deliveries.extend(self.issue_deliveries(&issue));
                }
                if page < MAX_PAGES {
                    next = link_next.filter(|u| u.starts_with(&self.repo.api_url));
                }
            }
            if let Some(newest) = newest {
                // Server timestamps only (POLLING.md §6 step 11). A new
                // `since` is a new URL: its validators start afresh.
                let watermark = rfc3339(newest - OVERLAP_SECONDS);
                if Some(&watermark) != cursor.watermark.as_ref() {
                    new_cursor.watermark = Some(watermark);
                    new_cursor.etag = None;
                    new_cursor.last_modified = None;
                }
            } else if cursor.watermark.is_none() {
                new_cursor.watermark = Some(since);
            }
            if new_cursor != cursor {
                cursors.push(new_cursor);
            }
        }
        Ok(())
    }

    /// An incident issue's creation and, when closed, its resolution, as
    /// `issues` webhooks (`opened`, `closed`) would carry them.
    fn issue_deliveries(&self, issue: &Value) -> Vec<Delivery> {
        let number = issue["number"].as_i64().unwrap_or_default().to_string();
        let mut out = Vec::new();
        let closed = issue["state"].as_str() == Some("closed");
        for (action, at) in [("opened", "created_at"), ("closed", "closed_at")] {
            if action == "closed" && !closed {
                continue;
            }
            let when = issue[at].as_str().unwrap_or_default();
            let payload = json!({
                "action": action,
                "issue": issue,
                "repository": {"full_name": self.repo.repo},
            });
            out.push(self.mapped(
                "issues",
                &payload,
                &[
                    b"issue",
                    number.as_bytes(),
                    action.as_bytes(),
                    when.as_bytes(),
                ],
            ));
        }
        out
    }

    /// Page `page` of a JSON list: page 0 conditional on `cursor`'s
    /// validators, which `new_cursor` then takes from the answer. `None` on
    /// a 304; else the items and the `rel="next"` URL.
    async fn list_page(
        &mut self,
        url: &str,
        page: usize,
        cursor: &PollCursor,
        new_cursor: &mut PollCursor,
        endpoint: &'static str,
    ) -> Result<Option<(Vec<Value>, Option<String>)>, PollError> {
        let validators = if page == 0 {
            cursor.clone()
        } else {
            PollCursor::default()
        };
        let Fetched::Changed {
            body,
            etag,
            last_modified,
            next,
        } = self.get(url, &validators, endpoint, GITHUB_JSON).await?
        else {
            return Ok(None);
        };
        if page == 0 {
            new_cursor.etag = etag;
            new_cursor.last_modified = last_modified;
        }
        let items: Vec<Value> = serde_json::from_slice(&body)
            .map_err(|e| PollError::Transient(format!("{endpoint}: {e}")))?;
        Ok(Some((items, next)))
    }

    /// The stored state of `stream` as the poll began, or a fresh one.
    fn cursor(&self, stream: String) -> PollCursor {
        self.stored.get(&stream).cloned().unwrap_or(PollCursor {
            stream,
            ..PollCursor::default()
        })
    }

    /// Now on the server's clock, as its last `Date` header told it.
    fn server_now(&self) -> i64 {
        now_seconds() + self.skew
    }

    /// One deployment, for a status whose deployment left the first page.
    async fn deployment(&mut self, id: i64) -> Result<Value, PollError> {
        let url = format!(
            "{}/repos/{}/deployments/{id}",
            self.repo.api_url, self.repo.repo
        );
        match self
            .get(&url, &PollCursor::default(), "deployment", GITHUB_JSON)
            .await?
        {
            Fetched::Changed { body, .. } => serde_json::from_slice(&body)
                .map_err(|e| PollError::Transient(format!("deployment: {e}"))),
            Fetched::NotModified => Err(PollError::Transient("unexpected 304".into())),
        }
    }

    /// A status as the ledger records it: the payload a `deployment_status`
    /// webhook would carry, mapped by the GitHub plugin. `None` for a
    /// status that maps to nothing worth a ledger row (not a success).
    fn delivery(&self, deployment: &Value, status: &Value) -> Option<Delivery> {
        if status["state"].as_str() != Some("success") {
            return None;
        }
        let payload = json!({
            "action": "created",
            "deployment_status": status,
            "deployment": deployment,
            "repository": {"full_name": self.repo.repo},
        });
        let status_id = status["id"].as_i64().unwrap_or_default().to_string();
        Some(self.mapped(
            "deployment_status",
            &payload,
            &[b"status", status_id.as_bytes()],
        ))
    }

    /// `payload` as a webhook of `event` would be recorded: mapped by the
    /// GitHub plugin with this repository's source options, its ledger row
    /// keeping the event header (so that it can be redelivered). The
    /// delivery id is derived from `identity`: a fact read again is a
    /// duplicate delivery.
    fn mapped(&self, event: &'static str, payload: &Value, identity: &[&[u8]]) -> Delivery {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-github-event"),
            HeaderValue::from_static(event),
        );
        let (label, mapping) = GitHub.classify(&headers, payload, &self.repo.options);
        let disposition = match mapping {
            Ok(mapping) => mapping.into_disposition(),
            Err(_) => Disposition::Invalid {
                reason: "invalid_api_object",
            },
        };
        let mut parts: Vec<&[u8]> = vec![
            b"poll",
            self.repo.api_url.as_bytes(),
            self.repo.repo.as_bytes(),
        ];
        parts.extend_from_slice(identity);
        Delivery {
            id: DeliveryId::derived(&parts),
            source: GitHub.source(),
            event: label,
            received_at_ms: now_seconds() * 1000,
            authenticated: true,
            body: serde_json::to_vec(payload).ok().map(Bytes::from),
            disposition,
            headers: Some(
                json!({"x-github-event": event, "x-hookgauge-poll": self.repo.api_url}).to_string(),
            ),
            instance: self.repo.source.strip_prefix("github.").map(str::to_owned),
            queued_row: None,
        }
    }

    /// A conditional GET; refusals classified per POLLING.md §1.3.
    async fn get(
        &mut self,
        url: &str,
        cursor: &PollCursor,
        endpoint: &'static str,
        accept: &str,
    ) -> Result<Fetched, PollError> {
        // Held until the answer is read: one request in flight per token,
        // and what another repository learnt of the quota counts here.
        let gate = Arc::clone(&self.gate);
        let mut shared = gate.quota.lock().await;
        self.quota = *shared;
        let now = now_seconds();
        if let (Some(limit), Some(remaining), Some(reset)) =
            (self.quota.limit, self.quota.remaining, self.quota.reset)
        {
            if reset > now && (remaining as f64) <= limit as f64 * RESERVE_SHARE {
                return Err(PollError::RateLimited { until: reset + 1 });
            }
        }
        let mut request = self
            .client
            .get(url)
            .bearer_auth(String::from_utf8_lossy(self.repo.token.expose()))
            .header("Accept", accept)
            .header("X-GitHub-Api-Version", API_VERSION);
        if let Some(etag) = &cursor.etag {
            request = request.header("If-None-Match", etag);
        }
        if let Some(modified) = &cursor.last_modified {
            request = request.header("If-Modified-Since", modified);
        }
        let response = request.send().await;
        let status_label = |code: &str| {
            self.metrics
                .poll_requests
                .with_label_values(&[&self.repo.repo, endpoint, code])
                .inc();
        };
        let response = match response {
            Ok(r) => r,
            Err(error) => {
                status_label("error");
                // The error text may carry the URL, never the token.
                return Err(PollError::Transient(error.without_url().to_string()));
            }
        };
        let status = response.status();
        status_label(status.as_str());
        self.read_quota(response.headers());
        *shared = self.quota;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match status.as_u16() {
            304 => Ok(Fetched::NotModified),
            200 => {
                let etag = header("etag");
                let last_modified = header("last-modified");
                let next = header("link").as_deref().and_then(next_link);
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| PollError::Transient(e.without_url().to_string()))?;
                Ok(Fetched::Changed {
                    body,
                    etag,
                    last_modified,
                    next,
                })
            }
            403 | 429 => {
                let retry_after = header("retry-after").and_then(|v| v.trim().parse::<i64>().ok());
                let body = response.text().await.unwrap_or_default();
                let primary = self.quota.remaining == Some(0);
                let secondary = body.contains("secondary rate limit")
                    || body.contains("secondary-rate-limits")
                    || body.contains("abuse");
                if let Some(seconds) = retry_after {
                    Err(PollError::RateLimited {
                        until: now + seconds.max(1),
                    })
                } else if primary {
                    Err(PollError::RateLimited {
                        until: self.quota.reset.unwrap_or(now + 60) + 1,
                    })
                } else if secondary || status.as_u16() == 429 {
                    Err(PollError::RateLimited { until: now + 60 })
                } else {
                    Err(PollError::Refused(format!(
                        "{endpoint}: 403 (permission, SSO or a blocked token)"
                    )))
                }
            }
            401 => {
                // A rotated Secret: read the token again and retry soon.
                match self
                    .repo
                    .token_source
                    .read(&|name| std::env::var(name).ok())
                {
                    Ok(token) if token.as_bytes() != self.repo.token.expose() => {
                        self.repo.token = Secret::new(token);
                        Err(PollError::Transient(format!(
                            "{endpoint}: 401; the token changed and is used from now on"
                        )))
                    }
                    _ => Err(PollError::Refused(format!(
                        "{endpoint}: 401: the token is wrong or expired"
                    ))),
                }
            }
            404 | 410 => Err(PollError::Gone(format!(
                "{endpoint}: {status}: no such repository or deployment, or the token cannot see it"
            ))),
            code if status.is_server_error() => {
                Err(PollError::Transient(format!("{endpoint}: {code}")))
            }
            code => Err(PollError::Refused(format!("{endpoint}: unexpected {code}"))),
        }
    }

    /// Takes the quota from the `x-ratelimit-*` headers; the reset is moved
    /// to the local clock with the server's `Date` (POLLING.md §6 step 11).
    fn read_quota(&mut self, headers: &reqwest::header::HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let skew = headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.timestamp() - now_seconds())
            .unwrap_or(self.skew);
        self.skew = skew;
        if let Some(limit) = number("x-ratelimit-limit") {
            self.quota.limit = Some(limit.max(0) as u64);
        }
        if let Some(remaining) = number("x-ratelimit-remaining") {
            self.quota.remaining = Some(remaining.max(0) as u64);
            self.metrics
                .poll_quota_remaining
                .with_label_values(&[&self.repo.repo])
                .set(remaining as f64);
        }
        if let Some(reset) = number("x-ratelimit-reset") {
            self.quota.reset = Some(reset - skew);
            self.metrics
                .poll_quota_reset
                .with_label_values(&[&self.repo.repo])
                .set((reset - skew) as f64);
        }
    }
}

/// An RFC 3339 timestamp of an API object as epoch seconds.
fn server_time(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
}

/// Epoch seconds as the RFC 3339 UTC text GitHub's `since` takes.
fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
