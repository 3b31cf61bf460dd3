//! Requests to a provider's REST API: conditional GETs, rate-limit headers
//! and refusals read per provider (POLLING.md §1.3, §2, §3), and the gate
//! that repositories polled with one token share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::clock::Clock;
use super::error::{Failure, PollError, Refusal};
use super::settings::{PollTarget, Provider, TokenSource};
use crate::metrics::Metrics;
use crate::signature::Secret;
use crate::store::PollCursor;

/// Pages of one list read in one poll at most (100 items each).
pub(super) const MAX_PAGES: usize = 10;
/// GitHub's pinned API version (POLLING.md §1).
const GITHUB_API_VERSION: &str = "2022-11-28";
/// Time allowed for one answer (POLLING.md §6 step 4).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Below this share of the quota left, no request is sent until the reset.
const RESERVE_SHARE: f64 = 0.05;
/// At most this many requests per second per token (POLLING.md §1.2).
const MIN_SPACING: Duration = Duration::from_millis(100);
/// A paid request that would have to wait longer than this for its turn
/// in the budget is refused locally instead (the gate is not held that long).
const MAX_BUDGET_WAIT: Duration = Duration::from_secs(60);
/// Paid requests may run this share of the allowance (at least 10) ahead
/// of an even spread over the window.
const BURST_SHARE: f64 = 0.02;
/// The weight of a repository whose event rate is unknown: one event a day.
const DEFAULT_MEAN: Duration = Duration::from_secs(86_400);

/// One conditional GET's answer.
pub enum Fetched {
    NotModified,
    Changed {
        body: Bytes,
        etag: Option<String>,
        last_modified: Option<String>,
        /// The `rel="next"` URL of the `Link` header, verbatim.
        next: Option<String>,
    },
}

/// A JSON list as [`Api::list_all`] read it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    /// The items of every page read, in order.
    pub items: Vec<Value>,
    /// Where each page read ends in `items`.
    pub page_ends: Vec<usize>,
    /// The first page left unread (`max_pages`), when pages were.
    pub next: Option<String>,
}

impl Listing {
    /// Adds the next page.
    fn push(&mut self, page: Vec<Value>) {
        self.items.extend(page);
        self.page_ends.push(self.items.len());
    }
}

impl FromIterator<Vec<Value>> for Listing {
    fn from_iter<I: IntoIterator<Item = Vec<Value>>>(pages: I) -> Listing {
        let mut list = Listing::default();
        for page in pages {
            list.push(page);
        }
        list
    }
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(link: &str) -> Option<String> {
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

/// One repository's part of its token's budget.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Paid requests in the current window.
    paid: u64,
    /// `1 / g`, g the mean time between its events (seconds).
    weight: f64,
}

/// What the repositories polled with one token share.
struct GateState {
    quota: Quota,
    /// The window this service's paid requests are counted in: the
    /// provider's (its reset) or, without one, an hour of its own.
    window_start: i64,
    window_end: i64,
    paid: u64,
    shares: BTreeMap<String, Share>,
    /// When the last request was sent (epoch ms, the pollers' clock).
    last_sent: Option<i64>,
    /// The token's hourly quota when the provider does not say.
    configured: Option<u64>,
    /// `f` of POLLING.md §6 step 8.
    max_share: f64,
    /// The length of the provider's quota window (seconds): an hour on
    /// GitHub, a minute on GitLab (its `RateLimit-Limit` is per minute).
    period: i64,
    /// Whether the window is the provider's (ending at its reset) rather
    /// than an hour of this service's own.
    aligned: bool,
    /// Nothing is sent on this token before this time (epoch seconds, the
    /// pollers' clock): a limit one repository met holds them all.
    blocked_until: i64,
}

impl GateState {
    /// Starts a new window once the current one has passed, or as soon as
    /// the provider tells its own: the window then ends at its reset and
    /// lasts its period, so that the provider's quota is counted over the
    /// time it is for (not from this service's first request on).
    fn roll(&mut self, now: i64) {
        let provider_window = self
            .quota
            .reset
            .filter(|reset| *reset > now && *reset <= now + self.period);
        if now < self.window_end && (self.aligned || provider_window.is_none()) {
            return;
        }
        (self.window_start, self.window_end, self.aligned) = match provider_window {
            Some(reset) => (reset - self.period, reset, true),
            None => (now, now + 3600, false),
        };
        if self.quota.reset.is_some_and(|reset| reset <= now) {
            // What the provider said held until its reset: the next answer
            // tells the new window (a minute's quota is no hour's).
            self.quota = Quota::default();
        }
        self.paid = 0;
        for share in self.shares.values_mut() {
            share.paid = 0;
        }
    }

    /// The quota of the window: from the provider, else configured
    /// (hourly, scaled to the window).
    fn limit(&self) -> Option<f64> {
        self.quota.limit.map(|l| l as f64).or_else(|| {
            let seconds = (self.window_end - self.window_start).max(1) as f64;
            self.configured.map(|c| c as f64 * seconds / 3600.0)
        })
    }

    /// `A = f × L` for the window.
    fn allowance(&self) -> Option<f64> {
        self.limit().map(|l| (l * self.max_share).max(1.0))
    }

    /// `repo`'s part of `A`: half split equally, half by event rate, so that
    /// together they never pass `A` and quiet repositories still get polled.
    fn repo_allowance(&self, repo: &str) -> Option<f64> {
        let a = self.allowance()?;
        let n = self.shares.len().max(1) as f64;
        let total: f64 = self.shares.values().map(|s| s.weight).sum();
        let weight = self.shares.get(repo).map_or(0.0, |s| s.weight);
        let by_rate = if total > 0.0 { weight / total } else { 1.0 / n };
        Some((a / (2.0 * n) + a / 2.0 * by_rate).max(1.0))
    }
}

/// The gate of one token on one API: one request in flight (POLLING.md
/// §1.2), the quota as the last answer to any of its repositories gave it,
/// and the budget: this service spends at most `max_quota_share` of each
/// window's quota, split across the repositories, and stops at 5 % left.
pub struct TokenGate {
    state: tokio::sync::Mutex<GateState>,
}

impl TokenGate {
    fn new(configured: Option<u64>, max_share: f64, period: Duration) -> TokenGate {
        TokenGate {
            state: tokio::sync::Mutex::new(GateState {
                quota: Quota::default(),
                window_start: 0,
                window_end: 0,
                paid: 0,
                shares: BTreeMap::new(),
                last_sent: None,
                configured,
                max_share,
                period: period.as_secs().max(1) as i64,
                aligned: false,
                blocked_until: 0,
            }),
        }
    }

    /// Weighs `repo` by `mean`, the mean time between its events.
    pub async fn set_weight(&self, repo: &str, mean: Duration) {
        let mut state = self.state.lock().await;
        if let Some(share) = state.shares.get_mut(repo) {
            share.weight = 1.0 / mean.as_secs_f64().max(1.0);
        }
    }

    /// `repo`'s budget per hour, when the quota is known.
    pub async fn allowance(&self, repo: &str) -> Option<f64> {
        let state = self.state.lock().await;
        let seconds = (state.window_end - state.window_start).max(1) as f64;
        state
            .repo_allowance(repo)
            .map(|a| a * 3600.0 / seconds.min(3600.0))
    }
}

/// One gate per target, the same gate for targets that share an API and a
/// token.
pub fn token_gates(targets: &[PollTarget]) -> Vec<Arc<TokenGate>> {
    let same_token = |a: &PollTarget, b: &PollTarget| {
        a.api_url == b.api_url && a.token.expose() == b.token.expose()
    };
    let mut gates: Vec<Arc<TokenGate>> = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        let shared = targets[..i]
            .iter()
            .position(|earlier| same_token(earlier, target));
        let gate = match shared {
            Some(j) => Arc::clone(&gates[j]),
            None => Arc::new(TokenGate::new(
                target.quota_per_hour,
                target.max_quota_share,
                target.provider.quota_period(),
            )),
        };
        gate.state
            .try_lock()
            .expect("a new gate is not locked")
            .shares
            .insert(
                target.repo.clone(),
                Share {
                    paid: 0,
                    weight: 1.0 / DEFAULT_MEAN.as_secs_f64(),
                },
            );
        gates.push(gate);
    }
    gates
}

/// A repository's view of its provider's API.
pub struct Api {
    provider: Provider,
    client: reqwest::Client,
    /// The configured API base: `rel="next"` links are followed only within it.
    api_url: String,
    repo: String,
    token: Secret,
    token_source: TokenSource,
    metrics: Arc<Metrics>,
    gate: Arc<TokenGate>,
    /// Server clock minus local clock, from the last `Date` header.
    skew: i64,
    /// The longest `X-Poll-Interval` seen since it was last taken.
    hint: Option<Duration>,
    clock: Clock,
    /// Where the request in flight was moved permanently (301), if it was,
    /// as the redirect policy saw it …
    moved: Arc<Mutex<Option<reqwest::Url>>>,
    /// … and the last answered request's: the URL asked for and where it
    /// moved.
    last_moved: Option<(String, reqwest::Url)>,
}

impl Api {
    pub fn new(target: &PollTarget, gate: Arc<TokenGate>, metrics: Arc<Metrics>) -> Api {
        let moved: Arc<Mutex<Option<reqwest::Url>>> = Arc::default();
        let seen = Arc::clone(&moved);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 3 {
                return attempt.error("too many redirects");
            }
            if attempt.status() == reqwest::StatusCode::MOVED_PERMANENTLY {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(attempt.url().clone());
            }
            attempt.follow()
        });
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("hookgauge/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .build()
            .expect("a TLS client can be built");
        Api {
            provider: target.provider,
            client,
            api_url: target.api_url.clone(),
            repo: target.repo.clone(),
            token: target.token.clone(),
            token_source: target.token_source.clone(),
            metrics,
            gate,
            skew: 0,
            hint: None,
            clock: Clock::default(),
            moved,
            last_moved: None,
        }
    }

    pub fn gate(&self) -> &Arc<TokenGate> {
        &self.gate
    }

    /// Paces and computes on `clock` rather than the system's.
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Now on the server's clock, as its last `Date` header told it.
    pub fn server_now(&self) -> i64 {
        self.clock.now_seconds() + self.skew
    }

    /// Server clock minus local clock.
    pub fn skew(&self) -> i64 {
        self.skew
    }

    /// The last request moved permanently (301) since the last call, and
    /// where to.
    pub fn take_moved(&mut self) -> Option<(String, reqwest::Url)> {
        self.last_moved.take()
    }

    /// The longest `X-Poll-Interval` since the last call.
    pub fn take_hint(&mut self) -> Option<Duration> {
        self.hint.take()
    }

    /// Page `page` of a JSON list: page 0 conditional on `cursor`'s
    /// validators, which `new_cursor` then takes from the answer. `None` on
    /// a 304; else the items and the `rel="next"` URL.
    pub async fn list_page(
        &mut self,
        url: &str,
        page: usize,
        cursor: &PollCursor,
        new_cursor: &mut PollCursor,
        endpoint: &'static str,
        accept: &str,
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
        } = self.get(url, &validators, endpoint, accept).await?
        else {
            return Ok(None);
        };
        if page == 0 {
            new_cursor.etag = etag;
            new_cursor.last_modified = last_modified;
        }
        let items: Vec<Value> =
            serde_json::from_slice(&body).map_err(|e| PollError::json(endpoint, e))?;
        Ok(Some((items, next)))
    }

    /// Every page of a JSON list from `first`, following `rel="next"` links
    /// verbatim (same origin only) for at most `max_pages`; page 1 is
    /// conditional on `cursor`, whose validators `new_cursor` then takes.
    /// `None` on a 304; else the items, where each page ended and the first
    /// page left unread.
    /// A short page is no end: a server may clamp the page size (Gitea's
    /// `MAX_RESPONSE_ITEMS`), only a missing `next` link ends the list.
    pub async fn list_all(
        &mut self,
        first: String,
        cursor: &PollCursor,
        new_cursor: &mut PollCursor,
        endpoint: &'static str,
        accept: &str,
        max_pages: usize,
    ) -> Result<Option<Listing>, PollError> {
        let mut next = Some(first);
        let mut all: Option<Listing> = None;
        while let Some(url) = next.take() {
            let page = all.as_ref().map_or(0, |list| list.page_ends.len());
            let Some((items, link)) = self
                .list_page(&url, page, cursor, new_cursor, endpoint, accept)
                .await?
            else {
                break;
            };
            let list = all.get_or_insert_with(Listing::default);
            list.push(items);
            let link = self.same_origin(link);
            if page + 1 < max_pages {
                next = link;
            } else {
                list.next = link;
            }
        }
        Ok(all)
    }

    /// [`Api::list_all`] with no validators (every page is a full read).
    pub async fn list_unconditional(
        &mut self,
        first: String,
        endpoint: &'static str,
        accept: &str,
        max_pages: usize,
    ) -> Result<Option<Listing>, PollError> {
        let none = PollCursor::default();
        let mut ignored = PollCursor::default();
        self.list_all(first, &none, &mut ignored, endpoint, accept, max_pages)
            .await
    }

    /// `link` when it points into the configured API (a `Link` elsewhere is
    /// not followed: the token would go with it). Gitea builds its links
    /// from its `ROOT_URL`: an `api_url` on another address (an internal
    /// one) reads first pages only, which is logged.
    pub fn same_origin(&self, link: Option<String>) -> Option<String> {
        let link = link?;
        let inside = link
            .strip_prefix(self.api_url.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']));
        if !inside {
            tracing::warn!(repo = %self.repo, api_url = %self.api_url, "A next page outside api_url is not followed; set api_url to the address the server's links use");
            return None;
        }
        Some(link)
    }

    /// A GET, conditional on `cursor`'s validators, within the token's
    /// budget; refusals classified per provider. Redirects are followed; a
    /// permanent one is reported by [`Api::take_moved`].
    pub async fn get(
        &mut self,
        url: &str,
        cursor: &PollCursor,
        endpoint: &'static str,
        accept: &str,
    ) -> Result<Fetched, PollError> {
        // Held until the answer is read: one request in flight per token,
        // and what another repository learnt of the quota counts here.
        let gate = Arc::clone(&self.gate);
        let mut state = gate.state.lock().await;
        let now = self.clock.now_seconds();
        state.roll(now);
        // Refused locally while a limit is known to hold (POLLING.md §1.3:
        // requests sent while limited can get an integration banned).
        if state.blocked_until > now {
            return Err(PollError::RateLimited {
                until: state.blocked_until,
            });
        }
        let quota = state.quota;
        if let (Some(limit), Some(remaining), Some(reset)) =
            (quota.limit, quota.remaining, quota.reset)
        {
            if reset > now && (remaining as f64) <= limit as f64 * RESERVE_SHARE {
                return Err(PollError::RateLimited { until: reset + 1 });
            }
        }
        let conditional = cursor.etag.is_some() || cursor.last_modified.is_some();
        let may_be_free = conditional && self.provider.free_not_modified();
        if let (Some(total), Some(mine)) = (state.allowance(), state.repo_allowance(&self.repo)) {
            let paid = state.shares.get(&self.repo).map_or(0, |s| s.paid);
            if state.paid as f64 >= total || paid as f64 >= mine {
                return Err(PollError::RateLimited {
                    until: state.window_end + 1,
                });
            }
            // Paid requests spread over the window: no more than a burst
            // ahead of an even pace (POLLING.md §6 step 8 (c)).
            if !may_be_free {
                let burst = (total * BURST_SHARE).max(10.0);
                let length = (state.window_end - state.window_start).max(1) as f64;
                let due = (state.paid as f64 + 1.0 - burst).max(0.0) / total * length;
                let turn_ms = state.window_start * 1000 + (due * 1000.0) as i64;
                let wait = Duration::from_millis((turn_ms - self.clock.now_ms()).max(0) as u64);
                if wait > MAX_BUDGET_WAIT {
                    return Err(PollError::RateLimited {
                        until: now + wait.as_secs() as i64 + 1,
                    });
                }
                self.clock.sleep(wait).await;
            }
        }
        if let Some(last) = state.last_sent {
            let turn = last + MIN_SPACING.as_millis() as i64;
            let wait = (turn - self.clock.now_ms()).max(0) as u64;
            self.clock.sleep(Duration::from_millis(wait)).await;
        }
        *self.moved.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let response = self.request(url, cursor, accept).send().await;
        state.last_sent = Some(self.clock.now_ms());
        let count = |code: &str| {
            self.metrics
                .poll_requests
                .with_label_values(&[&self.repo, endpoint, code])
                .inc();
        };
        let response = match response {
            Ok(r) => r,
            Err(error) => {
                count("error");
                // A timed-out request may still be charged (POLLING.md §1.2).
                state.paid += 1;
                // The error text may carry the URL, never the token.
                return Err(PollError::Transient(Failure::Request(error.without_url())));
            }
        };
        let status = response.status();
        count(status.as_str());
        // A 304 is free on GitHub only (POLLING.md §2: elsewhere it saves
        // bandwidth, not quota).
        if status != reqwest::StatusCode::NOT_MODIFIED || !self.provider.free_not_modified() {
            state.paid += 1;
            if let Some(share) = state.shares.get_mut(&self.repo) {
                share.paid += 1;
            }
        }
        self.read_headers(response.headers(), &mut state.quota);
        let mut quota = state.quota;
        drop(state);
        if let Some(to) = self.moved.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.last_moved = Some((url.to_owned(), to));
        }
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
                    .map_err(|e| PollError::Transient(Failure::Request(e.without_url())))?;
                Ok(Fetched::Changed {
                    body,
                    etag,
                    last_modified,
                    next,
                })
            }
            403 | 429 => {
                // At most the longest wait a reset can ask (65 min).
                let retry_after = header("retry-after")
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .map(|s| s.clamp(0, 65 * 60));
                let own_reset = match self.provider {
                    Provider::Github => true,
                    Provider::Gitlab => header("ratelimit-reset").is_some(),
                    Provider::Gitea => header("x-ratelimit-reset").is_some(),
                };
                if !own_reset {
                    // GitLab's order (POLLING.md §2) reads this answer's
                    // reset, not one an earlier answer gave.
                    quota.reset = None;
                }
                let body = response.text().await.unwrap_or_default();
                let refusal = self.refusal(status.as_u16(), retry_after, &body, quota, endpoint);
                if let PollError::RateLimited { until } = refusal {
                    let mut state = self.gate.state.lock().await;
                    state.blocked_until = state.blocked_until.max(until);
                }
                Err(refusal)
            }
            401 => {
                // A rotated Secret: read the token again and retry soon.
                match self.token_source.read(&|name| std::env::var(name).ok()) {
                    Ok(token) if token.as_bytes() != self.token.expose() => {
                        self.token = Secret::new(token);
                        Err(PollError::Transient(Failure::TokenChanged { endpoint }))
                    }
                    _ => Err(PollError::Refused(Refusal::Unauthorized { endpoint })),
                }
            }
            404 | 410 => Err(PollError::Gone { endpoint, status }),
            code if status.is_server_error() => Err(PollError::Transient(Failure::ServerError {
                endpoint,
                status: code,
            })),
            code => Err(PollError::Refused(Refusal::Status {
                endpoint,
                status: code,
            })),
        }
    }

    /// The request with the provider's authentication, media type and
    /// validators.
    fn request(&self, url: &str, cursor: &PollCursor, accept: &str) -> reqwest::RequestBuilder {
        let token = String::from_utf8_lossy(self.token.expose());
        let mut request = self.client.get(url).header("Accept", accept);
        request = match self.provider {
            Provider::Github => request
                .bearer_auth(token)
                .header("X-GitHub-Api-Version", GITHUB_API_VERSION),
            Provider::Gitlab => request.bearer_auth(token),
            Provider::Gitea => request.header("Authorization", format!("token {token}")),
        };
        if let Some(etag) = &cursor.etag {
            request = request.header("If-None-Match", etag);
        }
        if let Some(modified) = &cursor.last_modified {
            request = request.header("If-Modified-Since", modified);
        }
        request
    }

    /// What a 403 or 429 means (POLLING.md §1.3 for GitHub, §2 for GitLab;
    /// Gitea has no limit of its own, a proxy in front may).
    fn refusal(
        &self,
        status: u16,
        retry_after: Option<i64>,
        body: &str,
        quota: Quota,
        endpoint: &'static str,
    ) -> PollError {
        let now = self.clock.now_seconds();
        if let Some(seconds) = retry_after {
            // `now` is truncated to the second: one more keeps the whole
            // wait the server asked for.
            return PollError::RateLimited {
                until: now + seconds.max(1) + 1,
            };
        }
        let exhausted = quota.remaining == Some(0);
        match self.provider {
            Provider::Github => {
                let secondary = body.contains("secondary rate limit")
                    || body.contains("secondary-rate-limits")
                    || body.contains("abuse");
                if exhausted {
                    PollError::RateLimited {
                        until: quota.reset.unwrap_or(now + 60) + 1,
                    }
                } else if secondary || status == 429 {
                    PollError::RateLimited { until: now + 60 }
                } else {
                    PollError::Refused(Refusal::Forbidden {
                        endpoint,
                        why: "permission, SSO or a blocked token",
                    })
                }
            }
            Provider::Gitlab | Provider::Gitea if status == 429 => match quota.reset {
                Some(reset) if reset > now => PollError::RateLimited { until: reset + 1 },
                // Neither header: exponential backoff.
                _ => PollError::Transient(Failure::NoRetryTime { endpoint }),
            },
            Provider::Gitlab | Provider::Gitea => PollError::Refused(Refusal::Forbidden {
                endpoint,
                why: "permission, or an address block",
            }),
        }
    }

    /// Takes the quota from the rate-limit headers (`x-ratelimit-*`, or
    /// GitLab's `RateLimit-*`) and `X-Poll-Interval`; a reset is moved to
    /// the local clock with the server's `Date` (POLLING.md §6 step 11).
    fn read_headers(&mut self, headers: &reqwest::header::HeaderMap, quota: &mut Quota) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        self.skew = headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.timestamp() - self.clock.now_seconds())
            .unwrap_or(self.skew);
        let prefix = match self.provider {
            Provider::Gitlab => "ratelimit-",
            Provider::Github | Provider::Gitea => "x-ratelimit-",
        };
        if let Some(limit) = number(&format!("{prefix}limit")) {
            quota.limit = Some(limit.max(0) as u64);
        }
        if let Some(remaining) = number(&format!("{prefix}remaining")) {
            quota.remaining = Some(remaining.max(0) as u64);
            self.metrics
                .poll_quota_remaining
                .with_label_values(&[&self.repo])
                .set(remaining as f64);
        }
        if let Some(reset) = number(&format!("{prefix}reset")) {
            quota.reset = Some(reset - self.skew);
            self.metrics
                .poll_quota_reset
                .with_label_values(&[&self.repo])
                .set((reset - self.skew) as f64);
        }
        if let Some(seconds) = number("x-poll-interval").filter(|s| *s > 0) {
            let hint = Duration::from_secs(seconds as u64);
            self.hint = Some(self.hint.map_or(hint, |h| h.max(hint)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_limit_one_repository_met_holds_every_repository_of_the_token() {
        let raw: crate::poll::RawTarget = toml::from_str(
            "repo = \"acme/shop\"\ntoken_env = \"T\"\napi_url = \"http://127.0.0.1:9\"",
        )
        .unwrap();
        let target = PollTarget::from_raw(Provider::Github, &raw, 0, 0.5, &[], &|_| {
            Some("t0ken".into())
        })
        .unwrap();
        let other = PollTarget {
            repo: "acme/cart".into(),
            ..target.clone()
        };
        let gates = token_gates(&[target.clone(), other.clone()]);
        assert!(Arc::ptr_eq(&gates[0], &gates[1]));
        let metrics = Arc::new(Metrics::new());
        let until = Clock::default().now_seconds() + 30;
        gates[0].state.lock().await.blocked_until = until;
        // Refused before any connection (nothing listens on port 9).
        let mut api = Api::new(&other, Arc::clone(&gates[1]), metrics);
        match api
            .get(
                "http://127.0.0.1:9/repos/acme/cart/deployments",
                &PollCursor::default(),
                "deployments",
                "application/json",
            )
            .await
        {
            Err(PollError::RateLimited { until: u }) => assert_eq!(u, until),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("sent while the token was limited"),
        }
    }

    #[test]
    fn the_budget_is_split_so_that_together_repositories_never_pass_it() {
        let gate = TokenGate::new(None, 0.5, Duration::from_secs(3600));
        let mut state = gate.state.try_lock().unwrap();
        state.quota.limit = Some(5000);
        for i in 0..200 {
            // Ten busy repositories (an event every 10 minutes), the rest quiet.
            let weight = if i < 10 { 1.0 / 600.0 } else { 1.0 / 86_400.0 };
            state
                .shares
                .insert(format!("acme/r{i}"), Share { paid: 0, weight });
        }
        let total: f64 = (0..200)
            .map(|i| state.repo_allowance(&format!("acme/r{i}")).unwrap())
            .sum();
        assert!(total <= 2500.0 + 1e-6, "{total}");
        let quiet = state.repo_allowance("acme/r199").unwrap();
        let busy = state.repo_allowance("acme/r0").unwrap();
        assert!(
            quiet >= 2500.0 / 400.0,
            "a quiet repository keeps its equal part: {quiet}"
        );
        assert!(busy > 10.0 * quiet, "{busy} vs {quiet}");
    }

    #[test]
    fn the_window_is_the_providers_once_it_tells_its_reset() {
        let now = 1_800_000_000;
        let gate = TokenGate::new(None, 0.5, Duration::from_secs(60));
        let mut state = gate.state.try_lock().unwrap();
        // Nothing known yet: an hour of this service's own, no budget.
        state.roll(now);
        assert_eq!((state.window_start, state.window_end), (now, now + 3600));
        assert_eq!(state.allowance(), None);
        // GitLab's headers: 2,000 a minute, resetting in 40 s. The window
        // becomes that minute, counted afresh.
        state.quota = Quota {
            limit: Some(2000),
            remaining: Some(1990),
            reset: Some(now + 40),
        };
        state.paid = 7;
        state.roll(now + 1);
        assert_eq!((state.window_start, state.window_end), (now - 20, now + 40));
        assert_eq!(state.paid, 0);
        assert_eq!(state.allowance(), Some(1000.0));
        assert_eq!(state.repo_allowance("acme/shop"), Some(1000.0));
        // Within it nothing moves; past it, the next reset is waited for
        // in a window of its own.
        state.roll(now + 30);
        assert_eq!(state.window_end, now + 40);
        state.roll(now + 41);
        assert_eq!(
            (state.window_start, state.window_end),
            (now + 41, now + 41 + 3600)
        );
        assert_eq!(state.allowance(), None, "the minute's quota is no hour's");
    }

    #[test]
    fn an_hourly_quota_keeps_an_hour_long_window() {
        let now = 1_800_000_000;
        let gate = TokenGate::new(None, 0.5, Duration::from_secs(3600));
        let mut state = gate.state.try_lock().unwrap();
        state.quota = Quota {
            limit: Some(5000),
            remaining: Some(4000),
            reset: Some(now + 600),
        };
        state.roll(now);
        assert_eq!(
            (state.window_start, state.window_end),
            (now + 600 - 3600, now + 600)
        );
        assert_eq!(state.allowance(), Some(2500.0));
    }
}
