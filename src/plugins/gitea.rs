//! Gitea and Forgejo webhooks (SOURCES.md §3): HMAC-SHA256 hex in
//! `X-Forgejo-Signature`, else `X-Gitea-Signature`, else
//! `X-Hub-Signature-256`; pushes → commits, incident issues → failures, and,
//! opt-in, a successful commit status of a configured context → deploy.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use actix_web::http::header::HeaderMap;
use serde_json::Value;

use super::github::{branch_push, forge_issue};
use super::payload;
use super::{DeployFields, Mapping, Naming, PayloadError, Place, Plugin, SourceOptions};
use crate::signature::{HmacHeader, Secret, Verifier};

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

/// The Forgejo, Gitea or Gogs headers name the event and the delivery.
const NAMING: Naming = Naming {
    event: Place::Headers(&["x-forgejo-event", "x-gitea-event", "x-gogs-event"]),
    events: EVENTS,
    delivery_id: Place::Headers(&["x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery"]),
};

impl Plugin for Gitea {
    fn source(&self) -> &'static str {
        "gitea"
    }

    fn naming(&self) -> &'static Naming {
        &NAMING
    }

    fn options(&self) -> &'static [&'static str] {
        super::FORGE_OPTIONS
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(Verifier::Hmac {
            headers: vec![
                HmacHeader::sha256_hex("x-forgejo-signature", ""),
                HmacHeader::sha256_hex("x-gitea-signature", ""),
                HmacHeader::sha256_hex("x-hub-signature-256", "sha256="),
            ],
            secrets,
        })
    }

    fn map(
        &self,
        headers: &HeaderMap,
        payload: &Value,
        options: &SourceOptions,
    ) -> Result<Mapping, PayloadError> {
        match self.event(headers, Some(payload)) {
            "push" => push(payload, options),
            "issues" => forge_issue(payload, options),
            "status" => status(payload, options),
            _ => Ok(Mapping::Ignored("event_not_used")),
        }
    }
}

fn push(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    branch_push(
        payload,
        options,
        &["repository.default_branch"],
        &["repository.full_name"],
    )
}

fn status(payload: &Value, options: &SourceOptions) -> Result<Mapping, PayloadError> {
    let context = payload::text(payload, "context").unwrap_or_default();
    super::status_deploy(
        payload,
        options,
        &[context],
        payload::text(payload, "state") == Some("success"),
        DeployFields {
            app: &["repository.full_name"],
            commit: &["sha"],
            time: "updated_at",
        },
    )
}
