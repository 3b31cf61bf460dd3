//! The Pelorus webhook format (SOURCES.md §13): header rules, payload parsing
//! and validation, and delivery ids derived from event identity.
//!
//! Turns headers and a raw body into an [`Event`] or a precise error. Never
//! touches the store, the metrics or the secrets.

use serde_json::{Map, Value};

use super::payload;
use crate::events::{
    App, Commit, CommitLink, CommitSha, Deploy, Event, EventTime, Failure, FailureChange,
    FieldError, ImageSha, IssueNumber, Namespace,
};
use crate::ledger::DeliveryId;

pub const SOURCE: &str = "pelorus";
/// Largest body Pelorus accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 100_000;
pub const EVENT_HEADER: &str = "x-pelorus-event";
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const USER_AGENT_PREFIX: &str = "Pelorus-Webhook/";
/// Event labels of this source, `unknown` for deliveries refused before the
/// event header was read.
pub const EVENT_LABELS: &[&str] = &["committime", "deploytime", "failure", "ping", "unknown"];

/// The `X-Pelorus-Event` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PelorusEvent {
    CommitTime,
    DeployTime,
    Failure,
    Ping,
}

impl PelorusEvent {
    pub fn parse(value: &str) -> Option<PelorusEvent> {
        match value {
            "committime" => Some(PelorusEvent::CommitTime),
            "deploytime" => Some(PelorusEvent::DeployTime),
            "failure" => Some(PelorusEvent::Failure),
            "ping" => Some(PelorusEvent::Ping),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PelorusEvent::CommitTime => "committime",
            PelorusEvent::DeployTime => "deploytime",
            PelorusEvent::Failure => "failure",
            PelorusEvent::Ping => "ping",
        }
    }
}

/// True when the `User-Agent` starts with `Pelorus-Webhook/` (any case).
pub fn user_agent_ok(user_agent: Option<&[u8]>) -> bool {
    user_agent.is_some_and(|ua| {
        ua.len() >= USER_AGENT_PREFIX.len()
            && ua[..USER_AGENT_PREFIX.len()].eq_ignore_ascii_case(USER_AGENT_PREFIX.as_bytes())
    })
}

pub use super::{FieldProblem, PayloadError};

/// Collects field problems while values are parsed.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    problems: Vec<FieldProblem>,
}

impl<'a> Fields<'a> {
    fn fail(&mut self, field: &'static str, reason: FieldError) {
        self.problems.push(FieldProblem { field, reason });
    }

    fn text(&mut self, field: &'static str, required: bool) -> Option<&'a str> {
        match payload::string(self.object.get(field)) {
            Err(FieldError::Missing) if !required => None,
            found => found.map_err(|reason| self.fail(field, reason)).ok(),
        }
    }

    fn parsed<T>(
        &mut self,
        field: &'static str,
        required: bool,
        parse: fn(&str) -> Result<T, FieldError>,
    ) -> Option<T> {
        let value = self.text(field, required)?;
        parse(value).map_err(|reason| self.fail(field, reason)).ok()
    }

    /// Epoch seconds as a JSON integer or a string of digits (Pelorus
    /// senders written in shell often quote it).
    fn time(&mut self, field: &'static str) -> Option<EventTime> {
        let seconds = match self.object.get(field) {
            None | Some(Value::Null) => Err(FieldError::Missing),
            Some(Value::Number(n)) => n.as_i64().ok_or(if n.is_f64() {
                FieldError::NotInteger
            } else {
                FieldError::OutOfRange
            }),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<i64>().map_err(|_| FieldError::OutOfRange)
            }
            Some(Value::String(_)) => Err(FieldError::NotInteger),
            Some(_) => Err(FieldError::WrongType),
        };
        seconds
            .and_then(EventTime::from_epoch_seconds)
            .map_err(|reason| self.fail(field, reason))
            .ok()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, PayloadError> {
        match value {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => Err(PayloadError::Invalid(self.problems)),
        }
    }
}

/// Parses and validates a Pelorus payload into its event.
pub fn parse_event(event: PelorusEvent, body: &[u8]) -> Result<Event, PayloadError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| PayloadError::Malformed {
        message: e.to_string(),
    })?;
    let Value::Object(object) = value else {
        return Err(PayloadError::Malformed {
            message: "the payload is not a JSON object".into(),
        });
    };
    let mut f = Fields {
        object: &object,
        problems: Vec::new(),
    };
    if event == PelorusEvent::Ping {
        return Err(PayloadError::Malformed {
            message: "a ping carries no event".into(),
        });
    }
    let app = f.parsed("app", true, App::parse);
    match event {
        PelorusEvent::CommitTime => {
            let commit = f.parsed("commit_hash", true, CommitSha::parse);
            let image_sha = f.parsed("image_sha", true, ImageSha::parse);
            let namespace = f.parsed("namespace", true, Namespace::parse);
            let commit_link = f.parsed("commit_link", false, CommitLink::parse);
            let time = f.time("timestamp");
            let event = (|| {
                Some(Event::Commit(Commit {
                    app: app?,
                    commit: commit?,
                    image_sha: Some(image_sha?),
                    namespace: Some(namespace?),
                    commit_link,
                    time: time?,
                    pushed: false,
                }))
            })();
            f.finish(event)
        }
        PelorusEvent::DeployTime => {
            let image_sha = f.parsed("image_sha", true, ImageSha::parse);
            let namespace = f.parsed("namespace", true, Namespace::parse);
            let commit = f.parsed("commit_hash", false, CommitSha::parse);
            let time = f.time("timestamp");
            let event = (|| {
                Some(Event::Deploy(Deploy {
                    app: app?,
                    namespace: namespace?,
                    image_sha: Some(image_sha?),
                    commit,
                    environment: None,
                    rework: false,
                    time: time?,
                }))
            })();
            f.finish(event)
        }
        PelorusEvent::Failure | PelorusEvent::Ping => {
            let issue_number = f.parsed("failure_id", true, IssueNumber::parse);
            let change = f.parsed("failure_event", true, |v| match v {
                "created" => Ok(FailureChange::Created),
                "resolved" => Ok(FailureChange::Resolved),
                _ => Err(FieldError::InvalidFormat),
            });
            let time = f.time("timestamp");
            let event = (|| {
                Some(Event::Failure(Failure {
                    app: app?,
                    issue_number: issue_number?,
                    change: change?,
                    time: time?,
                }))
            })();
            f.finish(event)
        }
    }
}

/// Pelorus senders send no delivery id: the id is derived from the event's
/// identity (DESIGN.md) and led by its time, plus the change for a failure,
/// whose identity covers both ends and every update. A retry of the same
/// event gets the same id; a newer update of the same resource gets a new
/// one (a commit re-sent with another time too, and the commit table then
/// finds it a duplicate).
pub fn delivery_id(event: &Event) -> DeliveryId {
    let identity = event.identity();
    let time = event.time().seconds();
    match event {
        Event::Failure(f) => DeliveryId::derived_at(
            time,
            &[
                SOURCE.as_bytes(),
                identity.as_bytes(),
                f.change.as_str().as_bytes(),
            ],
        ),
        _ => DeliveryId::derived_at(time, &[SOURCE.as_bytes(), identity.as_bytes()]),
    }
}

/// Id of a delivery refused before its event was known: a content hash.
pub fn content_delivery_id(body: &[u8]) -> DeliveryId {
    DeliveryId::derived(&[SOURCE.as_bytes(), body])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(event: PelorusEvent, body: &str) -> Vec<(&'static str, &'static str)> {
        match parse_event(event, body.as_bytes()) {
            Err(PayloadError::Invalid(p)) => {
                p.iter().map(|p| (p.field, p.reason.as_str())).collect()
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_failing_field_is_listed() {
        let found = problems(
            PelorusEvent::DeployTime,
            r#"{"app": "", "namespace": "Bad_NS", "timestamp": 12}"#,
        );
        assert_eq!(
            found,
            vec![
                ("app", "empty"),
                ("image_sha", "missing_field"),
                ("namespace", "invalid_format"),
                ("timestamp", "out_of_range"),
            ]
        );
    }

    #[test]
    fn timestamps_must_be_integers() {
        let body = |ts: &str| {
            format!(r#"{{"app":"a","failure_id":"1","failure_event":"created","timestamp":{ts}}}"#)
        };
        assert!(parse_event(PelorusEvent::Failure, body("1683022198").as_bytes()).is_ok());
        assert!(parse_event(PelorusEvent::Failure, body("\"1683022198\"").as_bytes()).is_ok());
        for (timestamp, reason) in [
            ("1683022198.5", "not_integer"),
            ("\"soon\"", "not_integer"),
            ("true", "wrong_type"),
            ("-5", "out_of_range"),
            ("99999999999999999999", "not_integer"),
        ] {
            assert_eq!(
                problems(PelorusEvent::Failure, &body(timestamp)),
                vec![("timestamp", reason)],
                "{timestamp}"
            );
        }
    }

    #[test]
    fn non_objects_are_malformed() {
        for body in ["[]", "\"x\"", "{", ""] {
            assert!(matches!(
                parse_event(PelorusEvent::CommitTime, body.as_bytes()),
                Err(PayloadError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn user_agent_prefix_is_case_insensitive() {
        assert!(user_agent_ok(Some(b"Pelorus-Webhook/test")));
        assert!(user_agent_ok(Some(b"pelorus-webhook/1.0")));
        assert!(!user_agent_ok(Some(b"curl/8.0")));
        assert!(!user_agent_ok(Some(b"Pelorus-Webhook")));
        assert!(!user_agent_ok(None));
    }

    #[test]
    fn failure_updates_get_distinct_ids_and_retries_the_same() {
        let event = |ts: i64| {
            parse_event(
                PelorusEvent::Failure,
                format!(
                    r#"{{"app":"a","failure_id":"1","failure_event":"created","timestamp":{ts}}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        assert_eq!(
            delivery_id(&event(1683022198)),
            delivery_id(&event(1683022198))
        );
        assert_ne!(
            delivery_id(&event(1683022198)),
            delivery_id(&event(1683022199))
        );
    }
}
