//! PagerDuty v3 webhook subscriptions (SOURCES.md §11):
//! `X-PagerDuty-Signature` lists `v1=<hex>` HMACs, one per active secret;
//! delivery id from `X-Webhook-Id`. `incident.triggered` → failure created,
//! `incident.resolved` → failure resolved; the app is the service id (or
//! its configured rename).
//!
//! Maps headers and payload only; never touches the store or the metrics.

use super::payload::Reader;
use super::{Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions};
use crate::events::FailureChange;
use crate::signature::{Secret, Verifier};

pub struct PagerDuty;

const EVENTS: &[&str] = &[
    "incident.triggered",
    "incident.resolved",
    "incident.reopened",
    "incident.acknowledged",
    "pagey.ping",
];

const PROFILE: Profile = Profile {
    source: "pagerduty",
    options: &["apps"],
    // The body's `event.event_type` names the event, `X-Webhook-Id` the delivery.
    naming: Naming {
        event: Place::Body("event.event_type"),
        events: EVENTS,
        delivery_id: Place::Headers(&["x-webhook-id"]),
    },
    // PagerDuty drops payloads over 256 KB.
    max_body_bytes: 256 * 1024,
};

impl Plugin for PagerDuty {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(Verifier::HmacHexList {
            header: "x-pagerduty-signature",
            prefix: "v1=",
            secrets,
        })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        let change = match incoming.event {
            "incident.triggered" => FailureChange::Created,
            "incident.resolved" => FailureChange::Resolved,
            "pagey.ping" => return Ok(Mapping::Ignored("ping")),
            _ => return Ok(Mapping::Ignored("event_not_used")),
        };
        let mut r = Reader::new(payload);
        let app = r.parsed("event.data.service.id", |id| options.app(id));
        let number = r.issue_number("event.data.id");
        let time = match change {
            FailureChange::Created => r.time_first(&["event.data.created_at", "event.occurred_at"]),
            FailureChange::Resolved => r.time("event.occurred_at"),
        };
        r.finish_failure(app, number, change, time)
    }
}
