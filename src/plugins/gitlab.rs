//! GitLab project, group and system hooks (SOURCES.md §2): `X-Gitlab-Token`
//! compared in constant time, or, when a `whsec_` signing token is
//! configured, the Standard Webhooks signature (and the token is ignored).
//! Pushes → commits, successful production deployments → deploys, incident
//! issues and work items → failures; pipelines and jobs are opt-in deploys.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use actix_web::http::header::HeaderMap;
use serde_json::Value;

use super::github::branch_push;
use super::payload::{self, Reader};
use super::{
    known_event, DeployFields, Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile,
    SourceOptions,
};
use crate::events::{App, CommitSha, Deploy, Event, FailureChange, FieldError};
use crate::signature::{self, Secret, Verifier};

pub struct GitLab;

/// Where project, group and system hooks name the project.
const APP_PATHS: &[&str] = &["project.path_with_namespace", "project_path_with_namespace"];

/// `object_kind` (or a system hook's `event_name`) values this source reads.
const KINDS: &[&str] = &[
    "push",
    "tag_push",
    "issue",
    "work_item",
    "merge_request",
    "pipeline",
    "build",
    "deployment",
    "release",
    "note",
];

const OPTIONS: [&str; 7] = super::forge_options_and(["rework_refs"]);

const PROFILE: Profile = Profile {
    source: "gitlab",
    options: &OPTIONS,
    // Only the delivery id: `event` below reads the kind its own way. The
    // Standard Webhooks id, else GitLab's own event UUID, names the delivery.
    naming: Naming {
        delivery_id: Place::Headers(&["idempotency-key", "webhook-id", "x-gitlab-event-uuid"]),
        ..Naming::NOWHERE
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

impl Plugin for GitLab {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        let signing: Vec<&Secret> = secrets
            .iter()
            .filter(|s| s.expose().starts_with(b"whsec_"))
            .collect();
        if signing.is_empty() {
            return Ok(Verifier::Token {
                header: "x-gitlab-token",
                secrets,
            });
        }
        let keys = signing
            .into_iter()
            .map(|s| {
                signature::standard_webhooks_key(s).ok_or_else(|| {
                    "a whsec_ signing token must be whsec_ followed by base64".to_owned()
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier::StandardWebhooks { keys })
    }

    fn event(&self, headers: &HeaderMap, payload: Option<&Value>) -> &'static str {
        let from_body = payload.and_then(|p| {
            payload::text(p, "object_kind").or_else(|| payload::text(p, "event_name"))
        });
        if let Some(kind) = from_body {
            return known_event(Some(kind), KINDS);
        }
        match super::header(headers, "x-gitlab-event") {
            Some("Push Hook") => "push",
            Some("Tag Push Hook") => "tag_push",
            Some("Issue Hook" | "Confidential Issue Hook") => "issue",
            Some("Merge Request Hook") => "merge_request",
            Some("Pipeline Hook") => "pipeline",
            Some("Job Hook") => "build",
            Some("Deployment Hook") => "deployment",
            Some("Release Hook") => "release",
            Some("Note Hook" | "Confidential Note Hook") => "note",
            _ => "other",
        }
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        match incoming.event {
            "push" => push(payload, options),
            "deployment" => deployment(payload, options),
            "issue" | "work_item" => issue(payload, options),
            "pipeline" => pipeline(payload, options),
            "build" => job(payload, options),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

fn app_of(r: &mut Reader<'_>, options: &SourceOptions) -> Option<App> {
    r.parsed_first(APP_PATHS, |key| options.app(key))
}

fn push(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    branch_push(payload, options, &["project.default_branch"], APP_PATHS)
}

fn is_production(options: &SourceOptions, environment: &str, tier: Option<&str>) -> bool {
    options.is_production(environment) || tier == Some("production")
}

/// The 40-hex commit at the end of a `…/-/commit/<sha>` URL.
fn commit_from_url(url: &str) -> Result<CommitSha, FieldError> {
    let sha = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    match CommitSha::parse(sha) {
        Ok(commit) if sha.len() == 40 => Ok(commit),
        Ok(_) | Err(_) => Err(FieldError::InvalidFormat),
    }
}

fn deployment(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    if payload::text(payload, "status") != Some("success") {
        return Ok(Mapping::Ignored("deployment_not_successful"));
    }
    let environment = payload::text(payload, "environment").unwrap_or_default();
    let tier = payload::text(payload, "environment_tier");
    if !is_production(options, environment, tier) {
        return Ok(Mapping::Ignored("environment_not_production"));
    }
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let namespace = r.parsed("environment", |e| options.namespace(e));
    let commit = r.parsed("commit_url", commit_from_url);
    let time = r.time("status_changed_at");
    let deploy = (|| {
        Some(Event::Deploy(Deploy {
            app: app?,
            namespace: namespace?,
            image_sha: None,
            commit: Some(commit?),
            environment: Some(environment.into()),
            rework: options.is_rework_ref(payload::text(payload, "ref").unwrap_or_default()),
            time: time?,
        }))
    })();
    r.finish_event(deploy)
}

fn issue(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let incident_type = payload::text(payload, "object_attributes.type")
        .is_some_and(|t| t.eq_ignore_ascii_case("incident"))
        || payload::text(payload, "object_attributes.issue_type") == Some("incident");
    let titles = |path: &str| -> Vec<&str> {
        payload::at(payload, path)
            .and_then(Value::as_array)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|l| payload::text(l, "title"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let labelled = titles("labels")
        .iter()
        .any(|t| options.is_incident_label(t));
    let label_added = {
        let current = titles("changes.labels.current");
        let previous = titles("changes.labels.previous");
        current
            .iter()
            .any(|t| options.is_incident_label(t) && !previous.contains(t))
    };
    let incident = incident_type || labelled;
    let action = payload::text(payload, "object_attributes.action").unwrap_or_default();
    let change = match action {
        "open" if incident => FailureChange::Created,
        "update" if label_added => FailureChange::Created,
        "close" if incident => FailureChange::Resolved,
        "open" | "close" => return Ok(Mapping::Ignored("issue_not_an_incident")),
        _ => return Ok(Mapping::Ignored("issue_action_not_used")),
    };
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let number = r.issue_number("object_attributes.iid");
    let time = match change {
        FailureChange::Created => r.time("object_attributes.created_at"),
        FailureChange::Resolved => r.time_first(&[
            "object_attributes.closed_at",
            "object_attributes.updated_at",
        ]),
    };
    r.finish_failure(app, number, change, time)
}

fn pipeline(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let name = payload::text(payload, "object_attributes.name").unwrap_or_default();
    let git_ref = payload::text(payload, "object_attributes.ref").unwrap_or_default();
    if options.deploy_workflows.is_empty() || !options.is_deploy_workflow(&[name, git_ref]) {
        return Ok(Mapping::Ignored("pipeline_not_a_deploy"));
    }
    if payload::text(payload, "object_attributes.status") != Some("success") {
        return Ok(Mapping::Ignored("pipeline_not_successful"));
    }
    let environment = payload::at(payload, "builds")
        .and_then(Value::as_array)
        .and_then(|builds| {
            builds
                .iter()
                .find_map(|b| payload::text(b, "environment.name"))
        });
    if let Some(environment) = environment {
        if !options.is_production(environment) {
            return Ok(Mapping::Ignored("environment_not_production"));
        }
    }
    let fields = DeployFields {
        app: APP_PATHS,
        commit: &["object_attributes.sha"],
        time: "object_attributes.finished_at",
    };
    super::commit_deploy(payload, options, fields, environment)
}

fn job(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let name = payload::text(payload, "build_name").unwrap_or_default();
    if options.deploy_workflows.is_empty() || !options.is_deploy_workflow(&[name]) {
        return Ok(Mapping::Ignored("job_not_a_deploy"));
    }
    if payload::text(payload, "build_status") != Some("success") {
        return Ok(Mapping::Ignored("job_not_successful"));
    }
    let environment = payload::text(payload, "environment.name");
    let tier = payload::text(payload, "environment.deployment_tier");
    if let Some(environment) = environment {
        if !is_production(options, environment, tier) {
            return Ok(Mapping::Ignored("environment_not_production"));
        }
    }
    let fields = DeployFields {
        app: APP_PATHS,
        commit: &["sha"],
        time: "build_finished_at",
    };
    super::commit_deploy(payload, options, fields, environment)
}
