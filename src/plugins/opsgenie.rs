//! Opsgenie outgoing Webhook integration (SOURCES.md §12): no signature; a
//! bearer token in a custom header, or basic auth in the URL whose password
//! is the secret. Delivery id is the content hash. An alert created with an
//! incident tag → failure created; the same alert closed → resolved.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::payload::{self, Reader};
use super::timestamp;
use super::{Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions};
use crate::events::FailureChange;
use crate::signature::{Secret, Verifier};

pub struct Opsgenie;

const EVENTS: &[&str] = &["Create", "Close", "Acknowledge", "AddNote", "Delete"];

const PROFILE: Profile = Profile {
    source: "opsgenie",
    options: &["incident_labels", "apps"],
    // The body's `action` names the event; no delivery id is sent.
    naming: Naming {
        event: Place::Body("action"),
        events: EVENTS,
        delivery_id: Place::Nowhere,
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

/// Tags of the form `app:<name>` name the application outright.
const APP_TAG: &str = "app:";

impl Plugin for Opsgenie {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(Verifier::Bearer { secrets })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (payload, options) = (incoming.payload, incoming.options);
        let change = match incoming.event {
            "Create" => FailureChange::Created,
            "Close" => FailureChange::Resolved,
            _ => return Ok(Mapping::Ignored("event_not_used")),
        };
        let tags: Vec<&str> = payload::items(payload, "alert.tags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // Both ends need the tag: a close of an untagged alert must not
        // count as a restored failure.
        if !tags.iter().any(|t| options.is_incident_label(t)) {
            return Ok(Mapping::Ignored("alert_not_an_incident"));
        }
        let mut r = Reader::new(payload);
        let app = match tags.iter().find_map(|t| t.strip_prefix(APP_TAG)) {
            Some(name) => options.app(name).map_err(|e| r.fail("alert.tags", e)).ok(),
            None => r.parsed("alert.entity", |entity| options.app(entity)),
        };
        let number = r.issue_number("alert.alertId");
        // `createdAt` is epoch milliseconds and `updatedAt` nanoseconds, as
        // every published sample shows (13 and 19 digits, the same instant
        // range): the close is timed by the alert's own update.
        let time = match change {
            FailureChange::Created => r.time("alert.createdAt"),
            FailureChange::Resolved => {
                let updated = payload::at(payload, "alert.updatedAt").unwrap_or(&Value::Null);
                timestamp::from_epoch_nanos(updated)
                    .map_err(|e| r.fail("alert.updatedAt", e))
                    .ok()
            }
        };
        r.finish_failure(app, number, change, time)
    }
}
