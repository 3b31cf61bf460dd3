//! Provider timestamp formats (SOURCES.md §0), normalised to UTC epoch
//! seconds: RFC 3339 with `Z` or `±hh:mm` and any fraction, GitLab's
//! `YYYY-MM-DD hh:mm:ss UTC` and `YYYY-MM-DD hh:mm:ss ±hhmm`, ISO 8601 with
//! `±hhmm` (Jira, Bitbucket Data Center), and epoch seconds or milliseconds
//! as JSON numbers.
//!
//! Pure parsing: no clock is read here.

use chrono::{DateTime, NaiveDateTime};
use serde_json::Value;

use crate::events::{EventTime, FieldError};

/// Numbers at or above this are epoch milliseconds (as seconds they would
/// lie past the year 5000, far outside the accepted range anyway).
const MILLISECONDS_FROM: i64 = 100_000_000_000;

/// A timestamp string in any accepted format, as epoch seconds.
pub fn parse_text(text: &str) -> Result<EventTime, FieldError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(FieldError::Empty);
    }
    let seconds = DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S %z"))
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map(|t| t.timestamp())
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S UTC")
                .map(|t| t.and_utc().timestamp())
        })
        .map_err(|_| FieldError::InvalidFormat)?;
    EventTime::from_epoch_seconds(seconds)
}

/// Epoch nanoseconds (Opsgenie's `updatedAt`) as a timestamp.
pub fn from_epoch_nanos(value: &Value) -> Result<EventTime, FieldError> {
    let nanos = match value {
        Value::Number(n) => n.as_i64().ok_or(FieldError::NotInteger)?,
        Value::Null => return Err(FieldError::Missing),
        _ => return Err(FieldError::WrongType),
    };
    EventTime::from_epoch_seconds(nanos.div_euclid(1_000_000_000))
}

/// A timestamp given as a string or as epoch seconds / milliseconds.
pub fn parse_value(value: &Value) -> Result<EventTime, FieldError> {
    match value {
        Value::String(text) => parse_text(text),
        Value::Number(n) => {
            let whole = n.as_i64().ok_or(FieldError::NotInteger)?;
            let seconds = if whole >= MILLISECONDS_FROM {
                whole.div_euclid(1000)
            } else {
                whole
            };
            EventTime::from_epoch_seconds(seconds)
        }
        Value::Null => Err(FieldError::Missing),
        _ => Err(FieldError::WrongType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(text: &str) -> i64 {
        parse_text(text).unwrap().seconds()
    }

    #[test]
    fn every_documented_format_is_normalised_to_utc() {
        // 2019-05-15T15:20:55Z
        let expected = 1_557_933_655;
        assert_eq!(seconds("2019-05-15T15:20:55Z"), expected);
        assert_eq!(seconds("2019-05-15T17:20:55+02:00"), expected);
        assert_eq!(seconds("2019-05-15T15:20:55.1234567Z"), expected);
        assert_eq!(seconds("2019-05-15 15:20:55 UTC"), expected);
        assert_eq!(seconds("2019-05-15 17:20:55 +0200"), expected);
        assert_eq!(seconds("2019-05-15T17:20:55.000+0200"), expected);
        assert_eq!(
            parse_value(&Value::from(1_557_933_655_123_i64))
                .unwrap()
                .seconds(),
            expected
        );
        assert_eq!(
            parse_value(&Value::from(expected)).unwrap().seconds(),
            expected
        );
    }

    #[test]
    fn bad_and_out_of_range_times_are_refused() {
        assert_eq!(parse_text("yesterday"), Err(FieldError::InvalidFormat));
        assert_eq!(parse_text(""), Err(FieldError::Empty));
        assert_eq!(
            parse_text("1999-01-01T00:00:00Z"),
            Err(FieldError::OutOfRange)
        );
        assert_eq!(parse_value(&Value::from(1.5)), Err(FieldError::NotInteger));
        assert_eq!(parse_value(&Value::Bool(true)), Err(FieldError::WrongType));
    }
}
