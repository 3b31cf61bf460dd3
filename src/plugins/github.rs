//! GitHub webhooks (SOURCES.md §1): `X-Hub-Signature-256`, delivery id from
//! `X-GitHub-Delivery`; pushes to tracked branches → commits, successful
//! `deployment_status` (or, opt-in, a deploy workflow's `workflow_run`) →
//! deploys, incident-labelled issues → failures, container packages → links.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::payload::{self, Reader};
use super::{
    DeployFields, Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions,
};
use crate::events::{App, Commit, CommitLink, CommitSha, Deploy, Event, FailureChange, ImageSha};
use crate::signature::{HmacAlgorithm, HmacHeader, MacEncoding, Secret, Verifier};

pub struct GitHub;

const EVENTS: &[&str] = &[
    "ping",
    "push",
    "deployment",
    "deployment_status",
    "workflow_run",
    "issues",
    "registry_package",
    "package",
];

const OPTIONS: [&str; 9] =
    super::forge_options_and(["legacy_sha1_signatures", "rework_refs", "rework_tasks"]);

const PROFILE: Profile = Profile {
    source: "github",
    options: &OPTIONS,
    // `X-GitHub-Event` names the event, `X-GitHub-Delivery` the delivery.
    naming: Naming {
        event: Place::Headers(&["x-github-event"]),
        events: EVENTS,
        delivery_id: Place::Headers(&["x-github-delivery"]),
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

/// All-zero SHA GitHub and GitLab send for a deleted or created ref.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

impl Plugin for GitHub {
    fn profile(&self) -> Profile {
        PROFILE
    }

    /// `X-Hub-Signature-256`; the SHA-1 `X-Hub-Signature` only when
    /// `legacy_sha1_signatures` is set (GitHub Enterprise Server before 3.x),
    /// and only when the SHA-256 header is absent.
    fn verifier(&self, secrets: Vec<Secret>, options: &SourceOptions) -> Result<Verifier, String> {
        let mut headers = vec![HmacHeader::sha256_hex("x-hub-signature-256", "sha256=")];
        if options.legacy_sha1_signatures {
            headers.push(HmacHeader {
                name: "x-hub-signature",
                prefix: "sha1=",
                algorithm: HmacAlgorithm::Sha1,
                encoding: MacEncoding::Hex,
            });
        }
        Ok(Verifier::Hmac { headers, secrets })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        match incoming.event {
            "ping" => Ok(Mapping::Ignored("ping")),
            "push" => push(payload, options),
            "deployment" => Ok(Mapping::Ignored("deployment_created_awaiting_status")),
            "deployment_status" if !options.deploy_workflows.is_empty() => {
                Ok(Mapping::Ignored("deploys_come_from_workflow_runs"))
            }
            "deployment_status" => deployment_status(payload, options),
            "workflow_run" => workflow_run(payload, options),
            "issues" => forge_issue(payload, options),
            "registry_package" | "package" => package(payload, options),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

fn app_of(r: &mut Reader<'_>, options: &SourceOptions) -> Option<App> {
    r.parsed("repository.full_name", |key| options.app(key))
}

/// Where the facts of each `commits[]` item of a push are.
pub struct PushFields {
    pub id: &'static str,
    /// The commit time: the first of these the item has.
    pub times: &'static [&'static str],
    pub url: &'static str,
}

/// Commit events for the `commits[]` of a push, oldest first, reporting
/// problems under `commits[].<field>`.
pub fn pushed_commits<'a>(
    r: &mut Reader<'a>,
    commits: &'a [Value],
    app: &App,
    fields: PushFields,
) -> Vec<Event> {
    let mut events = Vec::with_capacity(commits.len());
    for item in commits {
        let commit = r
            .text_in(item, leaf(fields.id), fields.id)
            .and_then(|id| CommitSha::parse(id).map_err(|e| r.fail(fields.id, e)).ok());
        let time_field = fields
            .times
            .iter()
            .copied()
            .find(|t| payload::at(item, leaf(t)).is_some())
            .unwrap_or(fields.times[0]);
        let time = r.time_in(item, leaf(time_field), time_field);
        let link = payload::text(item, leaf(fields.url)).and_then(|u| CommitLink::parse(u).ok());
        if let (Some(commit), Some(time)) = (commit, time) {
            events.push(Event::Commit(Commit {
                app: app.clone(),
                commit,
                image_sha: None,
                namespace: None,
                commit_link: link,
                time,
                pushed: true,
            }));
        }
    }
    // Branch order is oldest first; senders differ, commit times do not.
    events.sort_by_key(|e| e.time());
    events
}

/// The path inside an item of a `commits[].author.date`-style field name.
fn leaf(field: &'static str) -> &'static str {
    field.rsplit_once("[].").map_or(field, |(_, inside)| inside)
}

fn push(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    branch_push(
        payload,
        options,
        &["repository.default_branch", "repository.master_branch"],
        &["repository.full_name"],
    )
}

/// A push in the GitHub shape (GitHub, GitLab, Gitea): `ref`, `after`,
/// `commits[]` with `id`, `timestamp` and `url`. Commits of a tracked branch
/// become commit events; deleted branches, tags and other branches are
/// ignored.
pub fn branch_push(
    payload: &Value,
    options: &SourceOptions,
    default_branch_paths: &[&str],
    app_paths: &[&'static str],
) -> Result<Mapping, PayloadError> {
    let git_ref = payload::text(payload, "ref").unwrap_or_default();
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return Ok(Mapping::Ignored("not_a_branch_push"));
    };
    let deleted = payload::at(payload, "deleted").and_then(Value::as_bool) == Some(true)
        || payload::text(payload, "after") == Some(ZERO_SHA);
    if deleted {
        return Ok(Mapping::Ignored("branch_deleted"));
    }
    let default_branch = default_branch_paths
        .iter()
        .find_map(|path| payload::text(payload, path));
    if !options.is_tracked_branch(branch, default_branch) {
        return Ok(Mapping::Ignored("branch_not_tracked"));
    }
    let commits = payload::items(payload, "commits");
    if commits.is_empty() {
        return Ok(Mapping::Ignored("push_without_commits"));
    }
    let mut r = Reader::new(payload);
    let app = r.parsed_first(app_paths, |key| options.app(key));
    let events = match &app {
        Some(app) => pushed_commits(
            &mut r,
            commits,
            app,
            PushFields {
                id: "commits[].id",
                times: &["commits[].timestamp"],
                url: "commits[].url",
            },
        ),
        None => Vec::new(),
    };
    r.finish(Some(events)).map(Mapping::Events)
}

/// A digest named in a deployment's free-form payload, if valid.
fn payload_digest(payload: &Value) -> Option<ImageSha> {
    [
        "deployment.payload.image_sha",
        "deployment.payload.image_digest",
    ]
    .iter()
    .find_map(|path| payload::text(payload, path))
    .and_then(|d| ImageSha::parse(d).ok())
}

/// The source says this deploy restores production: the deployment's
/// payload flags it (`"rework": true`), or its task or ref is one the
/// instance lists as rework (`rework_tasks`, `rework_refs`).
fn reported_rework(payload: &Value, options: &SourceOptions) -> bool {
    payload::at(payload, "deployment.payload.rework") == Some(&Value::Bool(true))
        || options.is_rework_task(payload::text(payload, "deployment.task").unwrap_or_default())
        || options.is_rework_ref(payload::text(payload, "deployment.ref").unwrap_or_default())
}

fn deployment_status(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    if payload::text(payload, "deployment_status.state") != Some("success") {
        return Ok(Mapping::Ignored("deployment_not_successful"));
    }
    let environment = payload::text(payload, "deployment_status.environment")
        .or_else(|| payload::text(payload, "deployment.environment"))
        .unwrap_or_default();
    if !options.is_production(environment) {
        return Ok(Mapping::Ignored("environment_not_production"));
    }
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let namespace = r.parsed_first(
        &["deployment_status.environment", "deployment.environment"],
        |e| options.namespace(e),
    );
    let commit = r.parsed("deployment.sha", CommitSha::parse);
    let time = r.time("deployment_status.created_at");
    let deploy = (|| {
        Some(Event::Deploy(Deploy {
            app: app?,
            namespace: namespace?,
            image_sha: payload_digest(payload),
            commit: Some(commit?),
            environment: Some(environment.into()),
            rework: reported_rework(payload, options),
            time: time?,
        }))
    })();
    r.finish_event(deploy)
}

fn workflow_run(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    if options.deploy_workflows.is_empty() {
        return Ok(Mapping::Ignored("workflow_runs_not_configured_as_deploys"));
    }
    let path = payload::text(payload, "workflow_run.path").unwrap_or_default();
    let name = payload::text(payload, "workflow_run.name").unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    if !options.is_deploy_workflow(&[path, name, file]) {
        return Ok(Mapping::Ignored("workflow_not_a_deploy"));
    }
    let completed = payload::text(payload, "action") == Some("completed")
        && payload::text(payload, "workflow_run.conclusion") == Some("success");
    if !completed {
        return Ok(Mapping::Ignored("workflow_run_not_successful"));
    }
    // A workflow names no environment: the first production one stands for it.
    super::commit_deploy(
        payload,
        options,
        DeployFields {
            app: &["repository.full_name"],
            commit: &["workflow_run.head_sha"],
            time: "workflow_run.updated_at",
        },
        None,
    )
}

/// An issue event in the GitHub shape (GitHub, Gitea/Forgejo): opened with
/// an incident label, or given one (`labeled`, Gitea's `label_updated`) →
/// failure created; closed with one → resolved.
pub fn forge_issue(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let action = payload::text(payload, "action").unwrap_or_default();
    let labelled = payload::at(payload, "issue.labels")
        .and_then(Value::as_array)
        .is_some_and(|labels| {
            labels.iter().any(|l| {
                payload::text(l, "name").is_some_and(|name| options.is_incident_label(name))
            })
        });
    let change = match action {
        "opened" | "label_updated" if labelled => FailureChange::Created,
        "labeled"
            if payload::text(payload, "label.name")
                .is_some_and(|name| options.is_incident_label(name)) =>
        {
            FailureChange::Created
        }
        "closed" if labelled => FailureChange::Resolved,
        "opened" | "labeled" | "label_updated" | "closed" => {
            return Ok(Mapping::Ignored("issue_not_an_incident"))
        }
        _ => return Ok(Mapping::Ignored("issue_action_not_used")),
    };
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let number = r.issue_number("issue.number");
    let time = match change {
        FailureChange::Created => r.time("issue.created_at"),
        FailureChange::Resolved => r.time("issue.closed_at"),
    };
    r.finish_failure(app, number, change, time)
}

fn package(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    if payload::text(payload, "action") != Some("published") {
        return Ok(Mapping::Ignored("package_action_not_used"));
    }
    let root = ["registry_package", "package"]
        .iter()
        .find_map(|key| payload::at(payload, key))
        .unwrap_or(&Value::Null);
    let kind = payload::text(root, "package_type").unwrap_or_default();
    if !(kind.eq_ignore_ascii_case("container") || kind.eq_ignore_ascii_case("docker")) {
        return Ok(Mapping::Ignored("not_a_container_package"));
    }
    let digest = [
        "package_version.container_metadata.tag.digest",
        "package_version.name",
    ]
    .iter()
    .filter_map(|path| payload::text(root, path))
    .find_map(|d| ImageSha::parse(d).ok());
    let revision = payload::at(root, "package_version.container_metadata.labels.all_labels")
        .and_then(|labels| labels.get("org.opencontainers.image.revision"))
        .and_then(Value::as_str)
        .and_then(|c| CommitSha::parse(c).ok());
    let (Some(image_sha), Some(commit)) = (digest, revision) else {
        return Ok(Mapping::Ignored("package_without_digest_and_revision"));
    };
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let time = r.time_first(&[
        "registry_package.package_version.updated_at",
        "package.package_version.updated_at",
        "registry_package.updated_at",
        "package.updated_at",
    ]);
    r.finish_link(app, commit, image_sha, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploys_are_rework_by_payload_flag_task_or_ref_pattern() {
        let options = SourceOptions {
            rework_refs: vec!["hotfix/*".into(), "rollback".into()],
            rework_tasks: vec!["deploy:hotfix".into()],
            ..GitHub.defaults()
        };
        let payload = |deployment: Value| serde_json::json!({ "deployment": deployment });
        let cases = [
            (serde_json::json!({"ref": "main", "task": "deploy"}), false),
            (serde_json::json!({"ref": "hotfix/login"}), true),
            (serde_json::json!({"ref": "refs/heads/hotfix/login"}), true),
            (serde_json::json!({"ref": "hotfixes"}), false),
            (serde_json::json!({"ref": "rollback"}), true),
            (serde_json::json!({"ref": "rollback-2"}), false),
            (serde_json::json!({"task": "deploy:hotfix"}), true),
            (serde_json::json!({"payload": {"rework": true}}), true),
            (serde_json::json!({"payload": {"rework": "yes"}}), false),
        ];
        for (deployment, rework) in cases {
            assert_eq!(
                reported_rework(&payload(deployment.clone()), &options),
                rework,
                "{deployment}"
            );
        }
        assert!(!reported_rework(
            &payload(serde_json::json!({"ref": "hotfix/x"})),
            &GitHub.defaults()
        ));
    }
}
