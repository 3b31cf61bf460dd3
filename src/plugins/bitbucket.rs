//! Bitbucket Cloud webhooks (SOURCES.md §4): `X-Hub-Signature: sha256=<hex>`
//! over the raw body, delivery id from `X-Request-UUID`; pushes to tracked
//! branches → commits, bug issues → failures, and, opt-in, a successful
//! commit status of a configured key → deploy.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::payload::{self, Reader};
use super::{
    DeployFields, Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions,
};
use crate::events::{App, Commit, CommitLink, CommitSha, Event, FailureChange};
use crate::signature::{HmacHeader, Secret, Verifier};

pub struct BitbucketCloud;

const EVENTS: &[&str] = &[
    "repo:push",
    "repo:commit_status_created",
    "repo:commit_status_updated",
    "issue:created",
    "issue:updated",
    "pullrequest:fulfilled",
];

const PROFILE: Profile = Profile {
    source: "bitbucket",
    options: &[
        "branches",
        "environments",
        "namespaces",
        "apps",
        "deploy_workflows",
    ],
    // `X-Event-Key` names the event, `X-Request-UUID` the delivery.
    naming: Naming {
        event: Place::Headers(&["x-event-key"]),
        events: EVENTS,
        delivery_id: Place::Headers(&["x-request-uuid"]),
    },
    // Bitbucket drops payloads over 256 KB; nothing larger is genuine.
    max_body_bytes: 256 * 1024,
};

impl Plugin for BitbucketCloud {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(signed(secrets))
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        match incoming.event {
            "repo:push" => push(payload, options),
            "repo:commit_status_created" | "repo:commit_status_updated" => status(payload, options),
            "issue:created" | "issue:updated" => issue(payload, options),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

/// Cloud and Data Center both sign the raw body as `X-Hub-Signature: sha256=<hex>`.
fn signed(secrets: Vec<Secret>) -> Verifier {
    Verifier::Hmac {
        headers: vec![HmacHeader::sha256_hex("x-hub-signature", "sha256=")],
        secrets,
    }
}

fn app_of(r: &mut Reader<'_>, options: &SourceOptions) -> Option<App> {
    r.parsed("repository.full_name", |key| options.app(key))
}

fn push(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let changes = payload::items(payload, "push.changes");
    let main_branch = payload::text(payload, "repository.mainbranch.name");
    let tracked: Vec<&Value> = changes
        .iter()
        .filter(|c| payload::text(c, "new.type") == Some("branch"))
        .filter(|c| payload::at(c, "closed").and_then(Value::as_bool) != Some(true))
        .filter(|c| {
            payload::text(c, "new.name")
                .is_some_and(|name| options.is_tracked_branch(name, main_branch))
        })
        .collect();
    if tracked.is_empty() {
        return Ok(Mapping::Ignored("branch_not_tracked"));
    }
    let mut r = Reader::new(payload);
    let Some(app) = app_of(&mut r, options) else {
        return r.finish(None);
    };
    let mut events = Vec::new();
    for change in tracked {
        let tip = payload::text(change, "new.target.hash");
        let tip_time = payload::at(change, "new.target.date");
        for commit in payload::items(change, "commits") {
            let hash = r.text_in(commit, "hash", "push.changes[].commits[].hash");
            let Some(sha) = hash.and_then(|h| {
                CommitSha::parse(h)
                    .map_err(|e| r.fail("push.changes[].commits[].hash", e))
                    .ok()
            }) else {
                continue;
            };
            // Some payloads carry no commit date: the tip takes the push
            // target's date, the others are left to the poller.
            let time = match (payload::at(commit, "date"), tip_time) {
                (Some(date), _) => date,
                (None, Some(date)) if hash == tip => date,
                (None, _) => continue,
            };
            let Some(time) = r.time_of(time, "push.changes[].commits[].date") else {
                continue;
            };
            events.push(Event::Commit(Commit {
                app: app.clone(),
                commit: sha,
                image_sha: None,
                namespace: None,
                commit_link: payload::text(commit, "links.html.href")
                    .and_then(|u| CommitLink::parse(u).ok()),
                time,
                pushed: true,
            }));
        }
    }
    events.sort_by_key(|e| e.time());
    if events.is_empty() && !r.has_problems() {
        return Ok(Mapping::Ignored("push_without_dated_commits"));
    }
    r.finish(Some(events)).map(Mapping::Events)
}

fn status(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let key = payload::text(payload, "commit_status.key").unwrap_or_default();
    let name = payload::text(payload, "commit_status.name").unwrap_or_default();
    super::status_deploy(
        payload,
        options,
        &[key, name],
        payload::text(payload, "commit_status.state") == Some("SUCCESSFUL"),
        DeployFields {
            app: &["repository.full_name"],
            commit: &[
                "commit_status.commit.hash",
                "commit_status.links.commit.href",
            ],
            time: "commit_status.updated_on",
        },
    )
}

fn issue(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let kind = payload::text(payload, "issue.kind")
        .or_else(|| payload::text(payload, "issue.type"))
        .unwrap_or_default();
    if kind != "bug" {
        return Ok(Mapping::Ignored("issue_not_a_bug"));
    }
    let created = payload::at(payload, "changes").is_none();
    let resolved = matches!(
        payload::text(payload, "changes.status.new"),
        Some("resolved" | "closed")
    );
    let change = if created {
        FailureChange::Created
    } else if resolved {
        FailureChange::Resolved
    } else {
        return Ok(Mapping::Ignored("issue_change_not_used"));
    };
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let number = r.issue_number("issue.id");
    let time = match change {
        FailureChange::Created => r.time("issue.created_on"),
        FailureChange::Resolved => r.time("issue.updated_on"),
    };
    r.finish_failure(app, number, change, time)
}

/// Bitbucket Data Center / Server webhooks (SOURCES.md §5): signed like
/// Bitbucket Cloud, delivery id from `X-Request-Id`; a branch created or
/// moved on a tracked branch → a commit for its new tip.
pub struct BitbucketDataCenter;

const DATA_CENTER_EVENTS: &[&str] = &[
    "repo:refs_changed",
    "pr:merged",
    "pr:opened",
    "diagnostics:ping",
];

const DATA_CENTER_PROFILE: Profile = Profile {
    source: "bitbucket-datacenter",
    options: &["branches", "apps"],
    // `X-Event-Key` names the event, `X-Request-Id` the delivery.
    naming: Naming {
        event: Place::Headers(&["x-event-key"]),
        events: DATA_CENTER_EVENTS,
        delivery_id: Place::Headers(&["x-request-id"]),
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

impl Plugin for BitbucketDataCenter {
    fn profile(&self) -> Profile {
        DATA_CENTER_PROFILE
    }

    /// The payload does not name the default branch: `main` and `master`
    /// count unless `branches` says otherwise.
    fn defaults(&self) -> SourceOptions {
        SourceOptions {
            branches: vec!["main".into(), "master".into()],
            ..SourceOptions::default()
        }
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(signed(secrets))
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        match incoming.event {
            "repo:refs_changed" => refs_changed(payload, options),
            "diagnostics:ping" => Ok(Mapping::Ignored("ping")),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

/// Branch tips moved by a push. The payload carries no commit time: the
/// push's `date` stands for it, which makes the lead time of such a commit
/// a little short (the time between commit and push is not counted).
fn refs_changed(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let changes = payload::items(payload, "changes");
    let tracked: Vec<&Value> = changes
        .iter()
        .filter(|c| payload::text(c, "ref.type") == Some("BRANCH"))
        .filter(|c| matches!(payload::text(c, "type"), Some("ADD" | "UPDATE")))
        .filter(|c| {
            payload::text(c, "ref.displayId")
                .is_some_and(|name| options.is_tracked_branch(name, None))
        })
        .collect();
    if tracked.is_empty() {
        return Ok(Mapping::Ignored("branch_not_tracked"));
    }
    let mut r = Reader::new(payload);
    let project = r.text("repository.project.key");
    let slug = r.text("repository.slug");
    let app = match (project, slug) {
        (Some(project), Some(slug)) => options
            .app(&format!("{project}/{slug}"))
            .map_err(|e| r.fail("repository.slug", e))
            .ok(),
        _ => None,
    };
    let time = r.time("date");
    let mut events = Vec::new();
    for change in tracked {
        let sha = r
            .text_in(change, "toHash", "changes[].toHash")
            .and_then(|h| {
                CommitSha::parse(h)
                    .map_err(|e| r.fail("changes[].toHash", e))
                    .ok()
            });
        if let (Some(app), Some(commit), Some(time)) = (&app, sha, time) {
            events.push(Event::Commit(Commit {
                app: app.clone(),
                commit,
                image_sha: None,
                namespace: None,
                commit_link: None,
                time,
                pushed: true,
            }));
        }
    }
    r.finish(Some(events)).map(Mapping::Events)
}
