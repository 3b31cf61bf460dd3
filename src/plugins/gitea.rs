//! Gitea and Forgejo webhooks (SOURCES.md §3): HMAC-SHA256 hex in
//! `X-Forgejo-Signature`, else `X-Gitea-Signature`, else
//! `X-Hub-Signature-256`; pushes → commits, incident issues → failures, and,
//! opt-in, a successful commit status of a configured context → deploy.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::github::{branch_push, forge_issue};
use super::payload;
use super::{
    DeployFields, Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions,
};
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

const PROFILE: Profile = Profile {
    source: "gitea",
    options: &super::FORGE_OPTIONS,
    // The Forgejo, Gitea or Gogs headers name the event and the delivery.
    naming: Naming {
        event: Place::Headers(&["x-forgejo-event", "x-gitea-event", "x-gogs-event"]),
        events: EVENTS,
        delivery_id: Place::Headers(&["x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery"]),
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

impl Plugin for Gitea {
    fn profile(&self) -> Profile {
        PROFILE
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

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        match incoming.event {
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
