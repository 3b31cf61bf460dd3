//! Gitea and Forgejo webhooks (SOURCES.md §3): HMAC-SHA256 hex in
//! `X-Forgejo-Signature`, else `X-Gitea-Signature`, else
//! `X-Hub-Signature-256`; pushes → commits, incident issues → failures, and,
//! opt-in, a successful commit status of a configured context → deploy.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use actix_web::http::header::HeaderMap;
use serde_json::Value;

use super::github::{branch_push, known_event};
use super::payload::{self, Reader};
use super::{FieldProblem, Mapping, PayloadError, Plugin, SourceOptions};
use crate::events::{App, CommitSha, Deploy, Event, Failure, FailureChange};
use crate::ledger::DeliveryId;
use crate::signature::{Secret, Verifier};

pub struct Gitea;

const EVENTS: &[&str] = &[
    "push",
    "issues",
    "status",
    "pull_request",
    "release",
    "create",
    "delete",
    "workflow_run",
];

impl Plugin for Gitea {
    fn source(&self) -> &'static str {
        "gitea"
    }

    fn options(&self) -> &'static [&'static str] {
        &[
            "branches",
            "environments",
            "namespaces",
            "incident_labels",
            "apps",
            "deploy_workflows",
        ]
    }

    fn verifier(&self, secrets: Vec<Secret>) -> Result<Verifier, String> {
        Ok(if secrets.is_empty() {
            Verifier::Open
        } else {
            Verifier::HmacHex {
                headers: &[
                    ("x-forgejo-signature", ""),
                    ("x-gitea-signature", ""),
                    ("x-hub-signature-256", "sha256="),
                ],
                secrets,
            }
        })
    }

    fn event(&self, headers: &HeaderMap, _payload: Option<&Value>) -> &'static str {
        let value = ["x-forgejo-event", "x-gitea-event", "x-gogs-event"]
            .iter()
            .find_map(|name| super::header(headers, name));
        known_event(value, EVENTS)
    }

    fn delivery_id(&self, headers: &HeaderMap, _payload: &Value) -> Option<DeliveryId> {
        super::header_delivery_id(
            headers,
            &["x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery"],
        )
    }

    fn map(
        &self,
        headers: &HeaderMap,
        payload: &Value,
        options: &SourceOptions,
    ) -> Result<Mapping, PayloadError> {
        match self.event(headers, Some(payload)) {
            "push" => push(payload, options),
            "issues" => issue(payload, options),
            "status" => status(payload, options),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

fn app_of(r: &mut Reader<'_>, options: &SourceOptions) -> Option<App> {
    r.parsed("repository.full_name", |key| options.app(key))
}

fn push(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    branch_push(
        payload,
        options,
        &["repository.default_branch"],
        &["repository.full_name"],
    )
}

fn issue(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let labelled = payload::at(payload, "issue.labels")
        .and_then(Value::as_array)
        .is_some_and(|labels| {
            labels.iter().any(|l| {
                payload::text(l, "name").is_some_and(|name| options.is_incident_label(name))
            })
        });
    let action = payload::text(payload, "action").unwrap_or_default();
    let change = match action {
        "opened" | "label_updated" if labelled => FailureChange::Created,
        "closed" if labelled => FailureChange::Resolved,
        "opened" | "label_updated" | "closed" => {
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
    let failure = (|| {
        Some(Event::Failure(Failure {
            app: app?,
            issue_number: number?,
            change,
            time: time?,
        }))
    })();
    r.finish(failure).map(|e| Mapping::Events(vec![e]))
}

fn status(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let context = payload::text(payload, "context").unwrap_or_default();
    if options.deploy_workflows.is_empty() || !options.is_deploy_workflow(&[context]) {
        return Ok(Mapping::Ignored("status_not_a_deploy"));
    }
    if payload::text(payload, "state") != Some("success") {
        return Ok(Mapping::Ignored("status_not_successful"));
    }
    let environment = options
        .environments
        .first()
        .map(String::as_str)
        .unwrap_or("production");
    let namespace = options.namespace(environment).map_err(|reason| {
        PayloadError::Invalid(vec![FieldProblem {
            field: "environments",
            reason,
        }])
    })?;
    let mut r = Reader::new(payload);
    let app = app_of(&mut r, options);
    let commit = r.parsed("sha", CommitSha::parse);
    let time = r.time("updated_at");
    let deploy = (|| {
        Some(Event::Deploy(Deploy {
            app: app?,
            namespace,
            image_sha: None,
            commit: Some(commit?),
            environment: Some(environment.into()),
            time: time?,
        }))
    })();
    r.finish(deploy).map(|e| Mapping::Events(vec![e]))
}
