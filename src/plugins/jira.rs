//! Jira Cloud admin webhooks (SOURCES.md §10): `X-Hub-Signature:
//! sha256=<hex>` over the raw body, delivery id from
//! `X-Atlassian-Webhook-Identifier`. An incident issue created → failure
//! created; its resolution set → failure resolved.
//!
//! Maps headers and payload only; never touches the store or the metrics.

use serde_json::Value;

use super::payload::{self, Reader};
use super::{Incoming, Mapping, Naming, PayloadError, Place, Plugin, Profile, SourceOptions};
use crate::events::{App, FailureChange};
use crate::signature::{HmacHeader, Secret, Verifier};

pub struct Jira;

const EVENTS: &[&str] = &[
    "jira:issue_created",
    "jira:issue_updated",
    "jira:issue_deleted",
];

const PROFILE: Profile = Profile {
    source: "jira",
    options: &["incident_labels", "issue_types", "apps"],
    // The body's `webhookEvent` names the event, `X-Atlassian-Webhook-Identifier` the delivery.
    naming: Naming {
        event: Place::Body("webhookEvent"),
        events: EVENTS,
        delivery_id: Place::Headers(&["x-atlassian-webhook-identifier"]),
    },
    max_body_bytes: Profile::MAX_BODY_BYTES,
};

/// Labels of the form `app:<name>` name the application outright.
const APP_LABEL: &str = "app:";

impl Plugin for Jira {
    fn profile(&self) -> Profile {
        PROFILE
    }

    fn defaults(&self) -> SourceOptions {
        SourceOptions {
            incident_labels: vec!["incident".into()],
            issue_types: vec!["Incident".into(), "Bug".into()],
            ..SourceOptions::default()
        }
    }

    fn verifier(&self, secrets: Vec<Secret>, _options: &SourceOptions) -> Result<Verifier, String> {
        Ok(Verifier::Hmac {
            headers: vec![HmacHeader::sha256_hex("x-hub-signature", "sha256=")],
            secrets,
        })
    }

    fn map(&self, incoming: &Incoming<'_>) -> Result<Mapping, PayloadError> {
        let (event, payload, options) = (incoming.event, incoming.payload, incoming.options);
        if !matches!(event, "jira:issue_created" | "jira:issue_updated") {
            return Ok(Mapping::Ignored("event_not_used"));
        }
        let labels: Vec<&str> = payload::items(payload, "issue.fields.labels")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let typed = payload::text(payload, "issue.fields.issuetype.name").is_some_and(|t| {
            options
                .issue_types
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(t))
        });
        if !typed && !labels.iter().any(|l| options.is_incident_label(l)) {
            return Ok(Mapping::Ignored("issue_not_an_incident"));
        }
        let change = if event == "jira:issue_created" {
            FailureChange::Created
        } else {
            match resolution_change(payload) {
                Some(true) => FailureChange::Resolved,
                Some(false) => return Ok(Mapping::Ignored("resolution_cleared")),
                None => return Ok(Mapping::Ignored("issue_change_not_used")),
            }
        };
        let mut r = Reader::new(payload);
        let app = app_of(&mut r, payload, &labels, options);
        let number = r.issue_number("issue.key");
        let time = match change {
            FailureChange::Created => r.time("issue.fields.created"),
            // The body's own timestamp (epoch ms) when the field is not sent.
            FailureChange::Resolved => r.time_first(&["issue.fields.resolutiondate", "timestamp"]),
        };
        r.finish_failure(app, number, change, time)
    }
}

/// Whether an update sets the resolution (`Some(true)`), clears it
/// (`Some(false)`), or leaves it alone (`None`). A status moved into the
/// done category counts as resolving, for workflows without resolutions.
fn resolution_change(payload: &Value) -> Option<bool> {
    let items = payload::items(payload, "changelog.items");
    let set =
        |item: &Value| payload::at(item, "to").is_some() || payload::at(item, "toString").is_some();
    if let Some(item) = items
        .iter()
        .find(|i| payload::text(i, "field") == Some("resolution"))
    {
        return Some(set(item));
    }
    let done = payload::text(payload, "issue.fields.status.statusCategory.key") == Some("done");
    items
        .iter()
        .any(|i| payload::text(i, "field") == Some("status") && done)
        .then_some(true)
}

/// The application: an `app:<name>` label, else the first component with a
/// configured rename, else the project key (or its rename).
fn app_of(
    r: &mut Reader<'_>,
    payload: &Value,
    labels: &[&str],
    options: &SourceOptions,
) -> Option<App> {
    if let Some(name) = labels.iter().find_map(|l| l.strip_prefix(APP_LABEL)) {
        return options
            .app(name)
            .map_err(|e| r.fail("issue.fields.labels", e))
            .ok();
    }
    let component = payload::at(payload, "issue.fields.components")
        .and_then(Value::as_array)
        .and_then(|components| {
            components
                .iter()
                .filter_map(|c| payload::text(c, "name"))
                .find_map(|name| options.apps.get(name).cloned())
        });
    if component.is_some() {
        return component;
    }
    r.parsed("issue.fields.project.key", |key| options.app(key))
}
