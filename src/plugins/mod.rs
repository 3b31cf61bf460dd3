//! Source plugins: how a delivery from one kind of sender is recognised,
//! authenticated and mapped to events. A plugin never touches the store or
//! the metrics; the ingest path does that once for all sources.
//!
//! `pelorus` keeps its own endpoint and rules (Pelorus compatibility). Every
//! other source implements [`Plugin`] and is listed once in [`SOURCES`]; the
//! shared runner in `ingest` does the body cap, the media type, the
//! signature check on the raw bytes, the ledger, the metrics and the answer.

pub mod azure;
pub mod bitbucket;
pub mod cdevents;
pub mod declarative;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod jira;
pub mod opsgenie;
pub mod pagerduty;
pub mod payload;
pub mod pelorus;
pub mod standard;
pub mod timestamp;

use std::collections::BTreeMap;

use actix_web::http::header::HeaderMap;
use serde_json::Value;

use crate::events::{App, CommitSha, Deploy, Event, FieldError, Namespace};
use crate::ledger::{DeliveryId, Disposition};
use crate::signature::{Secret, Verifier};

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: &'static str,
    pub reason: FieldError,
}

/// Why a payload could not become an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// Not a JSON object; `message` is the parser's text, for the body only.
    Malformed { message: String },
    /// A JSON object whose fields failed validation, every failing field listed.
    Invalid(Vec<FieldProblem>),
}

/// What an authentic, well-formed delivery means.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapping {
    /// These events (one or more) are to be recorded.
    Events(Vec<Event>),
    /// No DORA meaning; the reason is a bounded code a person can act on.
    Ignored(&'static str),
}

impl Mapping {
    /// What the ledger records for this mapping: the events, or `ignored`
    /// with its reason (`no_events` for an empty list).
    pub fn into_disposition(self) -> Disposition {
        match self {
            Mapping::Events(events) if events.is_empty() => Disposition::Ignored {
                reason: "no_events",
            },
            Mapping::Events(events) => Disposition::Events(events),
            Mapping::Ignored(reason) => Disposition::Ignored { reason },
        }
    }
}

impl std::fmt::Debug for dyn Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.source())
    }
}

/// The options of one source instance (`[sources.<source>]` or
/// `[sources.<source>.<name>]`), validated. Each source reads the ones it
/// documents; `check` refuses the others.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// Branches whose pushes count; empty: the repository's default branch.
    pub branches: Vec<String>,
    /// Environments that are production (case-insensitive).
    pub environments: Vec<String>,
    /// Environment → namespace; unmapped environments are turned into a label.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Labels that make an issue an incident (case-insensitive).
    pub incident_labels: Vec<String>,
    /// Source key (repository, project, service) → application name.
    pub apps: BTreeMap<String, App>,
    /// Opt-in deploy signals: workflow files or names (GitHub `workflow_run`),
    /// pipeline or job names (GitLab), status contexts (Gitea), status keys
    /// (Bitbucket).
    pub deploy_workflows: Vec<String>,
    /// Issue types that are incidents (Jira), case-insensitive.
    pub issue_types: Vec<String>,
    /// Also accept GitHub's SHA-1 `X-Hub-Signature` (opt-in, GitHub only).
    pub legacy_sha1_signatures: bool,
    /// How deliveries are authenticated, where the operator chooses (CDEvents).
    pub auth: AuthScheme,
    /// The lowercase header carrying the HMAC under [`AuthScheme::Hmac`].
    pub signature_header: &'static str,
    /// Refs (branches or tags) whose deploys are rework, as the source
    /// reports them: exact names, or a prefix ending in `*` (`hotfix/*`).
    pub rework_refs: Vec<String>,
    /// Deployment tasks (GitHub `deployment.task`) that are rework.
    pub rework_tasks: Vec<String>,
}

/// The authentication schemes an operator can choose for a source whose
/// senders differ (CDEvents emitters): the closed set of `auth` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthScheme {
    /// `sha256=<hex HMAC-SHA256 of the raw body>` in `signature_header`.
    #[default]
    Hmac,
    /// `Authorization: Bearer <secret>` (or basic auth with it as password).
    Bearer,
    /// Standard Webhooks v1 under `whsec_` keys.
    StandardWebhooks,
}

impl AuthScheme {
    pub fn parse(value: &str) -> Option<AuthScheme> {
        [
            AuthScheme::Hmac,
            AuthScheme::Bearer,
            AuthScheme::StandardWebhooks,
        ]
        .into_iter()
        .find(|a| a.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Hmac => "hmac",
            AuthScheme::Bearer => "bearer",
            AuthScheme::StandardWebhooks => "standard-webhooks",
        }
    }
}

impl SourceOptions {
    /// The application a source key (repository full name, project path,
    /// service id) belongs to: the configured rename, else the key itself.
    pub fn app(&self, key: &str) -> Result<App, FieldError> {
        match self.apps.get(key) {
            Some(app) => Ok(app.clone()),
            None => App::parse(key),
        }
    }

    pub fn is_production(&self, environment: &str) -> bool {
        self.environments
            .iter()
            .any(|e| e.eq_ignore_ascii_case(environment))
    }

    /// The namespace of an environment: the configured one, else the
    /// environment's name as an RFC 1123 label (lowercase, other characters
    /// as `-`, trimmed to 63).
    pub fn namespace(&self, environment: &str) -> Result<Namespace, FieldError> {
        if let Some(namespace) = self.namespaces.get(environment) {
            return Ok(namespace.clone());
        }
        let mut label: String = environment
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .collect();
        label.truncate(Namespace::MAX_LEN);
        Namespace::parse(label.trim_matches('-'))
    }

    pub fn is_incident_label(&self, label: &str) -> bool {
        self.incident_labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case(label))
    }

    pub fn is_tracked_branch(&self, branch: &str, default_branch: Option<&str>) -> bool {
        if self.branches.is_empty() {
            default_branch == Some(branch)
        } else {
            self.branches.iter().any(|b| b == branch)
        }
    }

    /// A deploy of `reference` (a branch or tag, `refs/heads/` or
    /// `refs/tags/` optional) is rework: it matches one of `rework_refs`.
    pub fn is_rework_ref(&self, reference: &str) -> bool {
        let name = reference
            .strip_prefix("refs/heads/")
            .or_else(|| reference.strip_prefix("refs/tags/"))
            .unwrap_or(reference);
        !name.is_empty()
            && self
                .rework_refs
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pattern,
                })
    }

    /// A deployment task (GitHub `deployment.task`) that is rework.
    pub fn is_rework_task(&self, task: &str) -> bool {
        !task.is_empty() && self.rework_tasks.iter().any(|t| t == task)
    }

    pub fn is_deploy_workflow(&self, candidates: &[&str]) -> bool {
        self.deploy_workflows
            .iter()
            .any(|w| candidates.iter().any(|c| !c.is_empty() && c == w))
    }
}

/// Where a source's deliveries name their event and carry their id.
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    /// Where the event is named.
    pub event: Place,
    /// The events this source tells apart; any other is `other`.
    pub events: &'static [&'static str],
    /// Where the delivery id is; without one the runner derives an id from
    /// the body.
    pub delivery_id: Place,
}

impl Naming {
    /// Neither is named in one place: the plugin reads both its own way.
    pub const NOWHERE: Naming = Naming {
        event: Place::Nowhere,
        events: &[],
        delivery_id: Place::Nowhere,
    };
}

/// Where a delivery carries a value.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    /// The first of these headers present (with a usable value).
    Headers(&'static [&'static str]),
    /// The text field at this path of the body (`None` before the body is
    /// parsed).
    Body(&'static str),
    /// In no place a `Naming` can say: the plugin's own method reads it
    /// (or, for a delivery id, the sender sends none).
    Nowhere,
}

/// What a source is, in one place: its name, the options it reads, where
/// its deliveries name their event and carry their id, and its body cap.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name in paths (`/hooks/<source>`), configuration and labels.
    pub source: &'static str,
    /// The option keys this source reads, besides `enabled`, `secrets` and
    /// `secrets_file`.
    pub options: &'static [&'static str],
    /// Where deliveries name their event and carry their id, read by
    /// [`Plugin::event`] and [`Plugin::delivery_id`]. A plugin that reads
    /// either its own way overrides that method instead.
    pub naming: Naming,
    /// Largest body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Profile {
    /// The body cap unless a source says otherwise: the largest body any
    /// provider sends (GitHub).
    pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
}

/// A parsed delivery as [`Plugin::map`] reads it: the event label it was
/// given, its headers and body, and the instance's options.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub event: &'static str,
    pub headers: &'a HeaderMap,
    pub payload: &'a Value,
    pub options: &'a SourceOptions,
}

/// A native source. Implementations are unit structs listed in [`SOURCES`].
pub trait Plugin: Sync {
    /// What this source is: its name, options, naming and body cap.
    fn profile(&self) -> Profile;

    /// Name in paths (`/hooks/<source>`), configuration and labels.
    fn source(&self) -> &'static str {
        self.profile().source
    }

    /// Option defaults, applied before the configured values.
    fn defaults(&self) -> SourceOptions {
        SourceOptions {
            environments: vec!["production".into()],
            incident_labels: vec!["incident".into()],
            ..SourceOptions::default()
        }
    }

    /// How deliveries are authenticated under the configured secrets (at
    /// least one; without any, the instance is open and loopback-only).
    fn verifier(&self, secrets: Vec<Secret>, options: &SourceOptions) -> Result<Verifier, String>;

    /// The event label, from a closed set: from the headers, or from the
    /// payload once it is parsed (`None` before authentication).
    fn event(&self, headers: &HeaderMap, payload: Option<&Value>) -> &'static str {
        let naming = self.profile().naming;
        match naming.event {
            Place::Headers(names) => known_event(first_header(headers, names), naming.events),
            Place::Body(path) => body_event(payload, path, naming.events),
            Place::Nowhere => "other",
        }
    }

    /// The event label of a parsed delivery and what it means, under the
    /// instance's options: [`Plugin::event`] and [`Plugin::map`], unless a
    /// plugin decides both at once (declarative rules).
    fn classify(
        &self,
        headers: &HeaderMap,
        payload: &Value,
        options: &SourceOptions,
    ) -> (&'static str, Result<Mapping, PayloadError>) {
        let event = self.event(headers, Some(payload));
        let incoming = Incoming {
            event,
            headers,
            payload,
            options,
        };
        (event, self.map(&incoming))
    }

    /// True when the request carries several deliveries (a CloudEvents
    /// batch): the body is a JSON array whose items the runner maps, records
    /// and answers one by one, each as a body of its own under `headers`.
    fn batch(&self, _headers: &HeaderMap) -> bool {
        false
    }

    /// The sender's id of this delivery, if it has one (else the runner
    /// derives one from the body).
    fn delivery_id(&self, headers: &HeaderMap, payload: &Value) -> Option<DeliveryId> {
        match self.profile().naming.delivery_id {
            Place::Headers(names) => header_delivery_id(headers, names),
            Place::Body(path) => payload::text(payload, path).and_then(DeliveryId::from_header),
            Place::Nowhere => None,
        }
    }

    /// What the delivery means.
    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError>;
}

/// Every built-in native source, in documentation order. Declarative
/// sources ([`declarative`]) follow them in [`Settings::plugins`].
///
/// [`Settings::plugins`]: crate::config::Settings::plugins
pub const SOURCES: &[&dyn Plugin] = &[
    &github::GitHub,
    &gitlab::GitLab,
    &gitea::Gitea,
    &bitbucket::BitbucketCloud,
    &bitbucket::BitbucketDataCenter,
    &azure::AzureDevOps,
    &jira::Jira,
    &pagerduty::PagerDuty,
    &opsgenie::Opsgenie,
    &standard::StandardWebhooks,
    &cdevents::CdEvents,
];

/// The built-in plugins followed by the declarative ones: every source
/// this process serves. A bad plugin file is an error naming it.
pub fn all(
    plugins_dir: Option<&std::path::Path>,
) -> Result<Vec<&'static dyn Plugin>, declarative::PluginFileError> {
    let mut all: Vec<&'static dyn Plugin> = SOURCES.to_vec();
    all.extend(declarative::load(plugins_dir)?);
    Ok(all)
}

/// The options the forges (GitHub, GitLab, Gitea) read.
pub const FORGE_OPTIONS: [&str; 6] = [
    "branches",
    "environments",
    "namespaces",
    "incident_labels",
    "apps",
    "deploy_workflows",
];

/// [`FORGE_OPTIONS`] followed by `more`: the options of a forge that reads
/// a few of its own. `N`, the length of the whole list, is the type of the
/// constant it builds.
pub const fn forge_options_and<const M: usize, const N: usize>(
    more: [&'static str; M],
) -> [&'static str; N] {
    assert!(N == FORGE_OPTIONS.len() + M);
    let mut all = [""; N];
    let mut i = 0;
    while i < N {
        all[i] = if i < FORGE_OPTIONS.len() {
            FORGE_OPTIONS[i]
        } else {
            more[i - FORGE_OPTIONS.len()]
        };
        i += 1;
    }
    all
}

/// The event named by the body field at `path` (one of `known`, else
/// `other`); `unknown` before the body is parsed.
pub fn body_event(payload: Option<&Value>, path: &str, known: &[&'static str]) -> &'static str {
    match payload {
        Some(p) => known_event(payload::text(p, path), known),
        None => "unknown",
    }
}

/// Every list option a source can read; Azure DevOps and declarative
/// plugins take them all.
pub const LIST_OPTIONS: &[&str] = &[
    "branches",
    "environments",
    "namespaces",
    "incident_labels",
    "issue_types",
    "apps",
    "deploy_workflows",
];

/// An event name if it is one of `known`, else `other`: labels stay bounded.
pub fn known_event(value: Option<&str>, known: &[&'static str]) -> &'static str {
    value
        .and_then(|v| known.iter().copied().find(|k| *k == v))
        .unwrap_or("other")
}

/// Where an opt-in deploy signal (a workflow run, a pipeline, a job, a
/// commit status) keeps the facts of its deploy.
pub struct DeployFields {
    /// The source key of the application, first present wins.
    pub app: &'static [&'static str],
    /// The commit, as a SHA or a URL ending in one; first present wins.
    pub commit: &'static [&'static str],
    pub time: &'static str,
}

/// The deploy an opt-in signal reports. Such signals rarely name an
/// environment; without one, the first production environment stands for it.
pub fn commit_deploy(
    payload: &Value,
    options: &SourceOptions,
    fields: DeployFields,
    environment: Option<&str>,
) -> Result<Mapping, PayloadError> {
    let mut r = payload::Reader::new(payload);
    let commit = r.parsed_first(fields.commit, commit_in);
    deploy_event(r, options, fields.app, &[fields.time], commit, environment)
}

/// The deploy a commit status reports when it is an opt-in deploy signal:
/// one of `names` (its context or key) is a configured deploy workflow and
/// the status is `successful`; else the reason it is ignored.
pub fn status_deploy(
    payload: &Value,
    options: &SourceOptions,
    names: &[&str],
    successful: bool,
    fields: DeployFields,
) -> Result<Mapping, PayloadError> {
    if !options.is_deploy_workflow(names) {
        return Ok(Mapping::Ignored("status_not_a_deploy"));
    }
    if !successful {
        return Ok(Mapping::Ignored("status_not_successful"));
    }
    commit_deploy(payload, options, fields, None)
}

/// The commit SHA a value ends in: a SHA, a URL or a `ref:sha` pair.
pub fn commit_in(value: &str) -> Result<CommitSha, FieldError> {
    CommitSha::parse(
        value
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or_default(),
    )
}

/// The deploy read with `r`: the app from the first of `app` present, the
/// time from the first of `time`, the namespace of `environment` (else of
/// the first production environment). Every problem `r` collected, before
/// or here, is reported.
pub fn deploy_event(
    mut r: payload::Reader<'_>,
    options: &SourceOptions,
    app: &[&'static str],
    time: &[&'static str],
    commit: Option<CommitSha>,
    environment: Option<&str>,
) -> Result<Mapping, PayloadError> {
    let environment = environment
        .or_else(|| options.environments.first().map(String::as_str))
        .unwrap_or("production");
    let app = r.parsed_first(app, |key| options.app(key));
    let time = r.time_first(time);
    let namespace = options
        .namespace(environment)
        .map_err(|reason| r.fail("environment", reason))
        .ok();
    let deploy = (|| {
        Some(Event::Deploy(Deploy {
            app: app?,
            namespace: namespace?,
            image_sha: None,
            commit,
            environment: Some(environment.into()),
            rework: false,
            time: time?,
        }))
    })();
    r.finish_event(deploy)
}

/// A header's value as text, when present and readable.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first of the headers `names` present and readable.
fn first_header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| header(headers, name))
}

/// A delivery id from the first of `names` present and usable.
pub fn header_delivery_id(headers: &HeaderMap, names: &[&str]) -> Option<DeliveryId> {
    names
        .iter()
        .filter_map(|name| header(headers, name))
        .find_map(DeliveryId::from_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_become_rfc1123_namespaces() {
        let options = SourceOptions::default();
        assert_eq!(
            options.namespace("Production EU").unwrap().as_str(),
            "production-eu"
        );
        assert_eq!(options.namespace("_prod_").unwrap().as_str(), "prod");
        assert_eq!(
            options.namespace(&"x".repeat(80)).unwrap().as_str().len(),
            63
        );
        assert!(options.namespace("***").is_err());
    }

    #[test]
    fn source_names_are_unique() {
        let mut names: Vec<_> = SOURCES.iter().map(|p| p.source()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SOURCES.len());
        assert!(!names.contains(&pelorus::SOURCE));
    }
}
