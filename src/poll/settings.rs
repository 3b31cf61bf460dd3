//! The `[[poll.<provider>]]` settings: the providers that can be polled,
//! an entry as written (`RawTarget`, `RawPoll`) and as checked
//! (`PollTarget`, its token read from a file or the environment).
//!
//! Checks and reads configuration only; never sends a request.

use std::time::Duration;

use serde::Deserialize;

use super::schedule::Stream;
use crate::plugins::{gitea::Gitea, github::GitHub, gitlab::GitLab, Plugin, SourceOptions};
use crate::signature::Secret;

/// How far back the first poll of incidents and commits reads.
const BOOTSTRAP_SECONDS: i64 = 30 * 86_400;

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
    pub(in crate::poll) fn plugin(self) -> &'static dyn Plugin {
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
    pub(in crate::poll) fn free_not_modified(self) -> bool {
        self == Provider::Github
    }

    /// The window the provider's rate-limit headers count in: GitHub's
    /// quota is hourly, GitLab's `RateLimit-Limit` per minute (POLLING.md
    /// §1.1, §2).
    pub(in crate::poll) fn quota_period(self) -> Duration {
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
    pub(in crate::poll) fn read(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, String> {
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
    (at < crate::clock::now_seconds()).then_some(at)
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
    pub(in crate::poll) fn configured_branches(&self) -> Option<Vec<String>> {
        if !self.options.branches.is_empty() {
            return Some(self.options.branches.clone());
        }
        self.branch.as_ref().map(|branch| vec![branch.clone()])
    }

    /// The stream key of `name` for this repository.
    pub(in crate::poll) fn stream(&self, name: &str) -> String {
        format!(
            "{}|{}|{}|{name}",
            self.provider.name(),
            self.api_url,
            self.repo
        )
    }

    /// Where first polls start reading history: `backfill_since`, else 30
    /// days before `now` (server epoch seconds).
    pub(in crate::poll) fn bootstrap_since(&self, now: i64) -> i64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
