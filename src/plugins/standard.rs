//! The generic Standard Webhooks source (SOURCES.md §14): `webhook-id`,
//! `webhook-timestamp` (±5 minutes) and `webhook-signature` (`v1,<base64>`
//! HMAC-SHA256 over `id.timestamp.body` under the `whsec_` keys). The body is
//! `{"type", "timestamp", "data"}` with a Pelorus event as `data`; `type` is
//! the Pelorus event (`committime`, `deploytime`, `failure`) or one of
//! `commit`, `deploy`, `failure.created`, `failure.resolved`.
//! `hookgauge send --standard-webhooks` produces exactly this.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::payload;
use super::pelorus::{self, PelorusEvent};
use super::{
    FieldProblem, Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions,
};
use crate::events::FieldError;
use crate::signature::{self, Secret, Verifier};

pub struct StandardWebhooks;

const EVENTS: &[&str] = &[
    "committime",
    "deploytime",
    "failure",
    "commit",
    "deploy",
    "failure.created",
    "failure.resolved",
];

const PROFILE: Profile = Profile {
    source: "standard-webhooks",
    options: &[],
    // The body's `type` names the event, `webhook-id` the delivery.
    naming: Naming {
        event: Place::Body("type"),
        events: EVENTS,
        delivery_id: Place::Headers(&["webhook-id"]),
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

impl Plugin for StandardWebhooks {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        let keys = secrets
            .iter()
            .map(|s| {
                signature::standard_webhooks_key(s)
                    .ok_or_else(|| "each secret must be whsec_ followed by base64".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Verifier::StandardWebhooks { keys })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let payload = incoming.payload;
        let invalid = |field, reason| PayloadError::Invalid(vec![FieldProblem { field, reason }]);
        let (event, failure_event) = match incoming.event {
            "committime" | "commit" => (PelorusEvent::CommitTime, None),
            "deploytime" | "deploy" => (PelorusEvent::DeployTime, None),
            "failure" => (PelorusEvent::Failure, None),
            "failure.created" => (PelorusEvent::Failure, Some("created")),
            "failure.resolved" => (PelorusEvent::Failure, Some("resolved")),
            _ => {
                let reason = if payload::at(payload, "type").is_some() {
                    FieldError::InvalidFormat
                } else {
                    FieldError::Missing
                };
                return Err(invalid("type", reason));
            }
        };
        let Some(Value::Object(data)) = payload::at(payload, "data") else {
            return Err(invalid("data", FieldError::Missing));
        };
        let mut data = data.clone();
        if let Some(end) = failure_event {
            data.entry("failure_event").or_insert_with(|| end.into());
        }
        let bytes = serde_json::to_vec(&data).map_err(|e| PayloadError::Malformed {
            message: e.to_string(),
        })?;
        pelorus::parse_event(event, &bytes).map(|e| Mapping::Events(vec![e]))
    }
}
