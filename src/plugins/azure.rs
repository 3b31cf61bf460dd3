//! Azure DevOps service hooks (SOURCES.md §6): no signature; the
//! subscription's basic-auth password (or a bearer token in a custom header)
//! is the secret. Event and delivery id come from the body (`eventType`,
//! `id`). Pushes to tracked branches → commits; opt-in deploys from builds,
//! pipeline runs, stages and release deployments; bugs and incident-tagged
//! work items → failures.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::github::{pushed_commits, PushFields};
use super::payload::{self, Reader};
use super::{Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions};
use crate::events::{CommitSha, FailureChange, FieldError};
use crate::signature::{Secret, Verifier};

pub struct AzureDevOps;

const EVENTS: &[&str] = &[
    "git.push",
    "git.pullrequest.merged",
    "build.complete",
    "ms.vss-pipelines.run-state-changed-event",
    "ms.vss-pipelines.stage-state-changed-event",
    "ms.vss-release.deployment-completed-event",
    "workitem.created",
    "workitem.updated",
];

const PROFILE: Profile = Profile {
    source: "azure-devops",
    options: super::LIST_OPTIONS,
    // The body names the event (`eventType`) and the delivery (`id`).
    naming: Naming {
        event: Place::Body("eventType"),
        events: EVENTS,
        delivery_id: Place::Body("id"),
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

/// `System.State` values that close a work item in the stock processes
/// (Basic, Agile, Scrum, CMMI).
const CLOSED_STATES: &[&str] = &["Closed", "Resolved", "Done"];

/// The account of the Fabrikam samples that the subscription wizard's
/// *Test* button sends (and the events reference shows): not real data.
const SAMPLE_ACCOUNT: &str = "f844ec47-a9db-4511-8281-8b63f4eaf94e";

impl Plugin for AzureDevOps {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn defaults(&self) -> SourceOptions {
        SourceOptions {
            environments: vec!["production".into()],
            incident_labels: vec!["incident".into()],
            issue_types: vec!["Bug".into()],
            ..SourceOptions::default()
        }
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(Verifier::Bearer { secrets })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        if payload::text(payload, "resourceContainers.account.id") == Some(SAMPLE_ACCOUNT) {
            return Ok(Mapping::Ignored("test_sample"));
        }
        match incoming.event {
            "git.push" => push(payload, options),
            "build.complete" => build(payload, options),
            "ms.vss-pipelines.run-state-changed-event" => run(payload, options),
            "ms.vss-pipelines.stage-state-changed-event" => stage(payload, options),
            "ms.vss-release.deployment-completed-event" => release(payload, options),
            "workitem.created" => work_item(payload, options, false),
            "workitem.updated" => work_item(payload, options, true),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

fn push(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let default_branch = payload::text(payload, "resource.repository.defaultBranch")
        .and_then(|b| b.strip_prefix("refs/heads/"));
    let tracked = payload::at(payload, "resource.refUpdates")
        .and_then(Value::as_array)
        .is_some_and(|updates| {
            updates.iter().any(|u| {
                payload::text(u, "name")
                    .and_then(|n| n.strip_prefix("refs/heads/"))
                    .is_some_and(|branch| options.is_tracked_branch(branch, default_branch))
                    && payload::text(u, "newObjectId") != Some(super::github::ZERO_SHA)
            })
        });
    if !tracked {
        return Ok(Mapping::Ignored("branch_not_tracked"));
    }
    let mut r = Reader::new(payload);
    let Some(app) = r.parsed("resource.repository.name", |key| options.app(key)) else {
        return r.finish(None);
    };
    let commits = payload::items(payload, "resource.commits");
    let events = pushed_commits(
        &mut r,
        commits,
        &app,
        PushFields {
            id: "resource.commits[].commitId",
            // Each commit's committer date, else its author date.
            times: &[
                "resource.commits[].committer.date",
                "resource.commits[].author.date",
            ],
            url: "resource.commits[].url",
        },
    );
    if events.is_empty() && !r.has_problems() {
        return Ok(Mapping::Ignored("push_without_commits"));
    }
    r.finish(Some(events)).map(Mapping::Events)
}

/// A deploy named by an opt-in signal, with the commit when the payload
/// has one.
fn deploy(
    payload: &Value,
    options: &SourceOptions,
    app: &[&'static str],
    commit: Option<&str>,
    time: &[&'static str],
    environment: Option<&str>,
) -> Result<Mapping, PayloadError> {
    let commit = commit.and_then(|c| super::commit_in(c).ok());
    super::deploy_event(
        Reader::new(payload),
        options,
        app,
        time,
        commit,
        environment,
    )
}

fn build(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let definition = payload::text(payload, "resource.definition.name").unwrap_or_default();
    if !options.is_deploy_workflow(&[definition]) {
        return Ok(Mapping::Ignored("build_not_a_deploy"));
    }
    // Newer payloads report `result`; the 1.0 resource put it in `status`.
    let result = payload::text(payload, "resource.result")
        .or_else(|| payload::text(payload, "resource.status"))
        .unwrap_or_default();
    if !result.eq_ignore_ascii_case("succeeded") {
        return Ok(Mapping::Ignored("build_not_successful"));
    }
    // `sourceVersion` is the commit on Git repositories; the 1.0 resource
    // gives `LG:<ref>:<sha>` in `sourceGetVersion`.
    let commit = payload::text(payload, "resource.sourceVersion")
        .filter(|v| CommitSha::parse(v).is_ok())
        .or_else(|| payload::text(payload, "resource.sourceGetVersion"));
    deploy(
        payload,
        options,
        &["resource.repository.name", "resource.definition.name"],
        commit,
        &["resource.finishTime"],
        None,
    )
}

fn succeeded(payload: &Value, state: &str, result: &str) -> bool {
    payload::text(payload, state).is_some_and(|s| s.eq_ignore_ascii_case("completed"))
        && payload::text(payload, result).is_some_and(|s| s.eq_ignore_ascii_case("succeeded"))
}

/// The commit a pipeline run built: its `self` repository's version.
fn run_commit(payload: &Value) -> Option<&str> {
    payload::text(payload, "resource.run.resources.repositories.self.version")
}

fn run(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let pipeline = payload::text(payload, "resource.pipeline.name")
        .or_else(|| payload::text(payload, "resource.run.pipeline.name"))
        .unwrap_or_default();
    if !options.is_deploy_workflow(&[pipeline]) {
        return Ok(Mapping::Ignored("pipeline_not_a_deploy"));
    }
    if !succeeded(payload, "resource.run.state", "resource.run.result") {
        return Ok(Mapping::Ignored("run_not_successful"));
    }
    deploy(
        payload,
        options,
        &["resource.pipeline.name", "resource.run.pipeline.name"],
        run_commit(payload),
        &["resource.run.finishedDate"],
        None,
    )
}

fn stage(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let stage = payload::text(payload, "resource.stage.name").unwrap_or_default();
    let display = payload::text(payload, "resource.stage.displayName").unwrap_or_default();
    if !options.is_deploy_workflow(&[stage, display]) {
        return Ok(Mapping::Ignored("stage_not_a_deploy"));
    }
    if !succeeded(payload, "resource.stage.state", "resource.stage.result") {
        return Ok(Mapping::Ignored("stage_not_successful"));
    }
    // The stage event carries no finish time of its own: the notification's
    // creation is when the stage completed.
    deploy(
        payload,
        options,
        &["resource.pipeline.name", "resource.run.pipeline.name"],
        run_commit(payload),
        &["createdDate", "resource.run.finishedDate"],
        None,
    )
}

fn release(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let definition = payload::text(
        payload,
        "resource.deployment.release.releaseDefinition.name",
    )
    .or_else(|| payload::text(payload, "resource.environment.releaseDefinition.name"))
    .unwrap_or_default();
    if !options.is_deploy_workflow(&[definition]) {
        return Ok(Mapping::Ignored("release_not_a_deploy"));
    }
    let status = payload::text(payload, "resource.environment.status")
        .or_else(|| payload::text(payload, "resource.deployment.status"))
        .unwrap_or_default();
    if !status.eq_ignore_ascii_case("succeeded") {
        return Ok(Mapping::Ignored("deployment_not_successful"));
    }
    let environment = payload::text(payload, "resource.environment.name")
        .or_else(|| payload::text(payload, "resource.deployment.environment.name"));
    if !environment.is_some_and(|e| options.is_production(e)) {
        return Ok(Mapping::Ignored("environment_not_production"));
    }
    deploy(
        payload,
        options,
        &[
            "resource.deployment.release.releaseDefinition.name",
            "resource.environment.releaseDefinition.name",
        ],
        None,
        &[
            "resource.deployment.completedOn",
            "resource.environment.modifiedOn",
            "createdDate",
        ],
        environment,
    )
}

/// A work item field: on updates, `resource.fields` holds the changes
/// (`{oldValue, newValue}`) and `resource.revision.fields` the current values.
fn changed<'a>(payload: &'a Value, name: &str) -> Option<&'a Value> {
    payload::at(payload, "resource.fields")
        .and_then(|f| f.get(name))
        .and_then(|c| c.get("newValue"))
        .filter(|v| !v.is_null())
}

fn work_item(
    payload: &Value,
    options: &SourceOptions,
    update: bool,
) -> Result<Mapping, PayloadError> {
    let fields_path = if update {
        "resource.revision.fields"
    } else {
        "resource.fields"
    };
    let fields = payload::at(payload, fields_path).unwrap_or(&Value::Null);
    let field = |name: &str| fields.get(name).and_then(Value::as_str);
    let is_type = field("System.WorkItemType").is_some_and(|t| {
        options
            .issue_types
            .iter()
            .any(|wanted| wanted.eq_ignore_ascii_case(t))
    });
    let tagged = field("System.Tags")
        .is_some_and(|tags| tags.split(';').any(|t| options.is_incident_label(t.trim())));
    if !is_type && !tagged {
        return Ok(Mapping::Ignored("work_item_not_an_incident"));
    }
    // Resolved, then Closed, are two updates: the resolved date stays the
    // same across them, so the second is a duplicate rather than a later
    // restore. Without one, the change into a closed state from an open one.
    let closed = |state: Option<&Value>| {
        state
            .and_then(Value::as_str)
            .is_some_and(|s| CLOSED_STATES.contains(&s))
    };
    let state_change = payload::at(payload, "resource.fields").and_then(|f| f.get("System.State"));
    let newly_closed =
        state_change.is_some_and(|c| closed(c.get("newValue")) && !closed(c.get("oldValue")));
    let resolved_date = fields
        .get("Microsoft.VSTS.Common.ResolvedDate")
        .filter(|v| !v.is_null());
    let closing = changed(payload, "Microsoft.VSTS.Common.ResolvedDate")
        .map(|date| resolved_date.unwrap_or(date))
        .or_else(|| {
            newly_closed
                .then(|| resolved_date.or_else(|| changed(payload, "System.ChangedDate")))
                .flatten()
        });
    let mut r = Reader::new(payload);
    let app = match field("System.TeamProject") {
        Some(project) => options
            .app(project)
            .map_err(|e| r.fail("System.TeamProject", e))
            .ok(),
        None => {
            r.fail("System.TeamProject", FieldError::Missing);
            None
        }
    };
    if !update {
        let number = r.issue_number("resource.id");
        let time = match fields.get("System.CreatedDate") {
            Some(created) => r.time_of(created, "System.CreatedDate"),
            None => {
                r.fail("System.CreatedDate", FieldError::Missing);
                None
            }
        };
        return r.finish_failure(app, number, FailureChange::Created, time);
    }
    let Some(closed_at) = closing else {
        return Ok(Mapping::Ignored("work_item_change_not_used"));
    };
    // `resource.id` of an update is the update's own id; the work item is
    // `workItemId`, or the revision's id.
    let number_path = match payload::at(payload, "resource.workItemId").and_then(Value::as_i64) {
        Some(id) if id > 0 => "resource.workItemId",
        _ => "resource.revision.id",
    };
    let number = r.issue_number(number_path);
    let time = r.time_of(closed_at, "System.ChangedDate");
    r.finish_failure(app, number, FailureChange::Resolved, time)
}
