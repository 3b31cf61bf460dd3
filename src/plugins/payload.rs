//! Reading provider payloads: fields addressed by dotted paths
//! (`deployment_status.created_at`), every failing field collected so that a
//! 422 lists them all.
//!
//! Knows JSON and the field newtypes; nothing about any one provider.

use serde_json::Value;

use super::{timestamp, FieldProblem, Mapping, PayloadError};
use crate::events::{
    App, CommitSha, Event, EventTime, Failure, FailureChange, FieldError, ImageSha, IssueNumber,
    Link,
};

/// Parses a body that must be a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Value, PayloadError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| PayloadError::Malformed {
        message: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(PayloadError::Malformed {
            message: "the payload is not a JSON object".into(),
        });
    }
    Ok(value)
}

/// The value at a dotted path (`a.b.c`; numeric segments index arrays).
pub fn at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(root, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
        .filter(|v| !v.is_null())
}

/// The string at a dotted path, if it is one.
pub fn text<'a>(root: &'a Value, path: &str) -> Option<&'a str> {
    at(root, path).and_then(Value::as_str)
}

/// The items of the array at a dotted path; none when it is absent or not
/// an array.
pub fn items<'a>(root: &'a Value, path: &str) -> &'a [Value] {
    at(root, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A value that must be a string: `Missing` when absent (or null),
/// `WrongType` when it is something else.
pub fn string(value: Option<&Value>) -> Result<&str, FieldError> {
    match value {
        None | Some(Value::Null) => Err(FieldError::Missing),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(FieldError::WrongType),
    }
}

/// Collects field problems while values are read from one payload.
pub struct Reader<'a> {
    root: &'a Value,
    problems: Vec<FieldProblem>,
}

impl<'a> Reader<'a> {
    pub fn new(root: &'a Value) -> Self {
        Reader {
            root,
            problems: Vec::new(),
        }
    }

    /// A reader of a nested value (an array item) that reports into this one.
    pub fn fail(&mut self, field: &'static str, reason: FieldError) {
        if !self.problems.iter().any(|p| p.field == field) {
            self.problems.push(FieldProblem { field, reason });
        }
    }

    /// A required string at `path` of `value` (this reader's root or an item
    /// of it), problems reported under `field`.
    pub fn text_in(
        &mut self,
        value: &'a Value,
        path: &str,
        field: &'static str,
    ) -> Option<&'a str> {
        string(at(value, path))
            .map_err(|reason| self.fail(field, reason))
            .ok()
    }

    /// A required string at `path`.
    pub fn text(&mut self, path: &'static str) -> Option<&'a str> {
        self.text_in(self.root, path, path)
    }

    /// The first of `paths` present, parsed; problems reported under the first.
    pub fn parsed_first<T>(
        &mut self,
        paths: &[&'static str],
        parse: impl FnOnce(&str) -> Result<T, FieldError>,
    ) -> Option<T> {
        let path = paths
            .iter()
            .copied()
            .find(|p| at(self.root, p).is_some())
            .unwrap_or(paths[0]);
        let value = self.text_in(self.root, path, path)?;
        parse(value).map_err(|reason| self.fail(path, reason)).ok()
    }

    /// A required string at `path`, parsed into a field newtype.
    pub fn parsed<T>(
        &mut self,
        path: &'static str,
        parse: impl FnOnce(&str) -> Result<T, FieldError>,
    ) -> Option<T> {
        self.parsed_first(&[path], parse)
    }

    /// A required value at `path` of `value`, parsed as a timestamp.
    pub fn time_in(
        &mut self,
        value: &'a Value,
        path: &str,
        field: &'static str,
    ) -> Option<EventTime> {
        let found = at(value, path).ok_or(FieldError::Missing);
        found
            .and_then(timestamp::parse_value)
            .map_err(|reason| self.fail(field, reason))
            .ok()
    }

    /// `value` itself as a timestamp, problems reported under `field`.
    pub fn time_of(&mut self, value: &Value, field: &'static str) -> Option<EventTime> {
        timestamp::parse_value(value)
            .map_err(|reason| self.fail(field, reason))
            .ok()
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The first of `paths` present, as a timestamp.
    pub fn time_first(&mut self, paths: &[&'static str]) -> Option<EventTime> {
        let path = paths
            .iter()
            .copied()
            .find(|p| at(self.root, p).is_some())
            .unwrap_or(paths[0]);
        self.time_in(self.root, path, path)
    }

    pub fn time(&mut self, path: &'static str) -> Option<EventTime> {
        self.time_first(&[path])
    }

    /// A failure id at `path`: a JSON number or a string.
    pub fn issue_number(&mut self, path: &'static str) -> Option<IssueNumber> {
        let parsed = match at(self.root, path) {
            Some(Value::Number(n)) => IssueNumber::parse(&n.to_string()),
            Some(Value::String(s)) => IssueNumber::parse(s),
            Some(_) => Err(FieldError::WrongType),
            None => Err(FieldError::Missing),
        };
        parsed.map_err(|reason| self.fail(path, reason)).ok()
    }

    /// The one event of a delivery, when nothing failed, else every problem.
    pub fn finish_event(self, event: Option<Event>) -> Result<Mapping, PayloadError> {
        self.finish(event).map(|e| Mapping::Events(vec![e]))
    }

    /// The failure a delivery reports, when nothing failed, else every problem.
    pub fn finish_failure(
        self,
        app: Option<App>,
        issue_number: Option<IssueNumber>,
        change: FailureChange,
        time: Option<EventTime>,
    ) -> Result<Mapping, PayloadError> {
        let failure = (|| {
            Some(Event::Failure(Failure {
                app: app?,
                issue_number: issue_number?,
                change,
                time: time?,
            }))
        })();
        self.finish_event(failure)
    }

    /// The link of `commit` to `image_sha` a delivery reports, when nothing
    /// failed, else every problem.
    pub fn finish_link(
        self,
        app: Option<App>,
        commit: CommitSha,
        image_sha: ImageSha,
        time: Option<EventTime>,
    ) -> Result<Mapping, PayloadError> {
        let link = app.zip(time).map(|(app, time)| Link {
            app,
            commit,
            image_sha,
            time,
        });
        self.finish_event(link.map(Event::Link))
    }

    /// `Ok(value)` when nothing failed, else every problem.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, PayloadError> {
        match value {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => Err(PayloadError::Invalid(self.problems)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_walk_objects_and_arrays() {
        let v = json!({"a": {"b": [{"c": "x"}]}, "n": null});
        assert_eq!(text(&v, "a.b.0.c"), Some("x"));
        assert_eq!(at(&v, "a.b.1"), None);
        assert_eq!(at(&v, "n"), None);
    }

    #[test]
    fn every_problem_is_collected_once() {
        let v = json!({"t": "soon", "s": 5});
        let mut r = Reader::new(&v);
        assert!(r.time("t").is_none());
        assert!(r.text("s").is_none());
        assert!(r.text("missing").is_none());
        assert!(r.text("missing").is_none());
        let Err(PayloadError::Invalid(problems)) = r.finish(Some(())) else {
            panic!()
        };
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.field, p.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                ("t", "invalid_format"),
                ("s", "wrong_type"),
                ("missing", "missing_field")
            ]
        );
    }
}
