//! The normalised domain: `Commit`, `Deploy`, `Failure` and the newtypes their
//! fields are made of. Every newtype's `parse` checks a value once, so an
//! invalid app name, digest or timestamp cannot exist past this module.
//!
//! This module knows nothing about HTTP, JSON wire formats or storage.

use std::fmt;
use std::sync::Arc;

/// The newtypes cross process boundaries (the change feed between replicas
/// sharing one store) as their text, and are checked again when read back.
macro_rules! serde_as_text {
    ($($t:ty => $text:ident),* $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.$text())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                <$t>::parse(&text).map_err(|e| {
                    serde::de::Error::custom(format!("{}: {}", stringify!($t), e.as_str()))
                })
            }
        }
    )*};
}

/// Earliest accepted event time: 2010-01-01T01:01:01Z (the Pelorus bound).
pub const MIN_EVENT_TIME: i64 = 1_262_307_661;
/// Latest accepted event time: 2060-01-01T01:01:01Z (the Pelorus bound).
pub const MAX_EVENT_TIME: i64 = 2_840_144_461;

/// Why a field value was refused. The set is closed: codes become labels and
/// JSON `reason` values, parser text never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    Missing,
    WrongType,
    Empty,
    TooLong,
    InvalidFormat,
    NotInteger,
    OutOfRange,
}

impl FieldError {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldError::Missing => "missing_field",
            FieldError::WrongType => "wrong_type",
            FieldError::Empty => "empty",
            FieldError::TooLong => "too_long",
            FieldError::InvalidFormat => "invalid_format",
            FieldError::NotInteger => "not_integer",
            FieldError::OutOfRange => "out_of_range",
        }
    }
}

/// A name or id: 1 to `max_chars` characters, no control characters.
fn check_text(value: &str, max_chars: usize) -> Result<&str, FieldError> {
    if value.is_empty() {
        return Err(FieldError::Empty);
    }
    if value.chars().count() > max_chars {
        return Err(FieldError::TooLong);
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::InvalidFormat);
    }
    Ok(value)
}

/// `as_str` of a newtype over text.
macro_rules! text_newtype {
    ($($name:ident),*) => {$(
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    )*};
}

text_newtype!(App, Namespace, CommitSha, IssueNumber, CommitLink);

/// Application name: 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct App(Arc<str>);

impl App {
    pub const MAX_LEN: usize = 200;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        check_text(value, Self::MAX_LEN).map(|v| App(v.into()))
    }
}

/// Kubernetes namespace: an RFC 1123 label, 1 to 63 characters of `[a-z0-9-]`,
/// starting and ending with an alphanumeric character.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    pub const MAX_LEN: usize = 63;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        if value.is_empty() {
            return Err(FieldError::Empty);
        }
        if value.len() > Self::MAX_LEN {
            return Err(FieldError::TooLong);
        }
        let bytes = value.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = bytes.iter().all(|&b| alnum(b) || b == b'-')
            && alnum(bytes[0])
            && alnum(bytes[bytes.len() - 1]);
        if !valid {
            return Err(FieldError::InvalidFormat);
        }
        Ok(Namespace(value.into()))
    }
}

/// Git commit SHA: 7 or 40 hexadecimal digits, kept in lowercase so that the
/// same commit written in either case has one identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitSha(Box<str>);

impl CommitSha {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        if value.is_empty() {
            return Err(FieldError::Empty);
        }
        if !matches!(value.len(), 7 | 40) || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FieldError::InvalidFormat);
        }
        Ok(CommitSha(value.to_ascii_lowercase().into()))
    }
}

/// Container image digest: `sha256:` followed by 64 lowercase hex digits.
/// Kept as the 32 raw bytes; `Display` gives the canonical text form back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageSha([u8; 32]);

impl ImageSha {
    const PREFIX: &'static str = "sha256:";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        if value.is_empty() {
            return Err(FieldError::Empty);
        }
        let hex_part = value
            .strip_prefix(Self::PREFIX)
            .ok_or(FieldError::InvalidFormat)?;
        let lowercase_hex = hex_part.len() == 64
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lowercase_hex {
            return Err(FieldError::InvalidFormat);
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut raw).map_err(|_| FieldError::InvalidFormat)?;
        Ok(ImageSha(raw))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl ImageSha {
    /// The 64 lowercase hex digits.
    fn hex(&self) -> [u8; 64] {
        let mut buf = [0u8; 64];
        // 32 bytes always fit 64 digits.
        let _ = hex::encode_to_slice(self.0, &mut buf);
        buf
    }

    /// Appends the canonical text form (what `Display` writes) to `out`,
    /// without the formatting machinery: a scrape writes one per series.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(Self::PREFIX.as_bytes());
        out.extend_from_slice(&self.hex());
    }
}

impl fmt::Display for ImageSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        // hex output is ASCII by construction.
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ImageSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageSha({self})")
    }
}

/// Identifier of a failure (an issue number, an incident id): 1 to 200
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssueNumber(Box<str>);

impl IssueNumber {
    pub const MAX_LEN: usize = 200;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        check_text(value, Self::MAX_LEN).map(|v| IssueNumber(v.into()))
    }
}

/// Link to a commit in a web UI: an `http(s)://` URL of at most 2048 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommitLink(Box<str>);

impl CommitLink {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        if value.len() > Self::MAX_LEN {
            return Err(FieldError::TooLong);
        }
        let has_scheme = value.starts_with("https://") || value.starts_with("http://");
        if !has_scheme || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(FieldError::InvalidFormat);
        }
        Ok(CommitLink(value.into()))
    }
}

/// Event time in whole UTC epoch seconds, within [`MIN_EVENT_TIME`, `MAX_EVENT_TIME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventTime(i64);

impl EventTime {
    pub fn from_epoch_seconds(seconds: i64) -> Result<Self, FieldError> {
        if !(MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&seconds) {
            return Err(FieldError::OutOfRange);
        }
        Ok(EventTime(seconds))
    }

    pub fn seconds(self) -> i64 {
        self.0
    }
}

/// A commit that is part of an application's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub app: App,
    pub commit: CommitSha,
    pub image_sha: Option<ImageSha>,
    pub namespace: Option<Namespace>,
    pub commit_link: Option<CommitLink>,
    pub time: EventTime,
    /// Reported by a push to a tracked branch. The events of one delivery
    /// list such commits in branch order (oldest first), and the store keeps
    /// that order: a deploy of a commit also ships the pushed commits before it.
    pub pushed: bool,
}

/// A successful deployment of an application into a namespace, naming the
/// image it ran, the commit it was built from, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    pub app: App,
    pub namespace: Namespace,
    /// `None` when the sender only knows the commit: the store then takes the
    /// digest from the commit→digest links, now or when one arrives.
    pub image_sha: Option<ImageSha>,
    pub commit: Option<CommitSha>,
    pub environment: Option<Box<str>>,
    /// The source reports this deploy as unplanned work that restores
    /// production (a rollback, a hotfix): rework whatever the failures say.
    pub rework: bool,
    pub time: EventTime,
}

/// A fact linking a commit to the image digest built from it (a registry
/// package published, a build pipeline's result), so that deploys that name
/// only the commit can be shown with their image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub app: App,
    pub commit: CommitSha,
    pub image_sha: ImageSha,
    pub time: EventTime,
}

/// Which end of a failure an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureChange {
    Created,
    Resolved,
}

impl FailureChange {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureChange::Created => "created",
            FailureChange::Resolved => "resolved",
        }
    }
}

/// A production failure (an incident) that was created or resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub app: App,
    pub issue_number: IssueNumber,
    pub change: FailureChange,
    pub time: EventTime,
}

/// One normalised event, as produced by a source plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Commit(Commit),
    Deploy(Deploy),
    Failure(Failure),
    Link(Link),
}

impl Event {
    /// When the event happened.
    pub fn time(&self) -> EventTime {
        match self {
            Event::Commit(c) => c.time,
            Event::Deploy(d) => d.time,
            Event::Failure(f) => f.time,
            Event::Link(l) => l.time,
        }
    }

    /// The application the event belongs to.
    pub fn app(&self) -> &App {
        match self {
            Event::Commit(c) => &c.app,
            Event::Deploy(d) => &d.app,
            Event::Failure(f) => &f.app,
            Event::Link(l) => &l.app,
        }
    }

    /// The identity this event is deduplicated on (DESIGN.md), as text.
    pub fn identity(&self) -> String {
        match self {
            Event::Commit(c) => format!(
                "commit/{}/{}/{}",
                c.app.as_str(),
                c.commit.as_str(),
                c.image_sha.map(|s| s.to_string()).unwrap_or_default()
            ),
            Event::Deploy(d) => match (&d.image_sha, &d.commit) {
                (Some(image), _) => format!(
                    "deploy/{}/{}/{}/{}",
                    d.app.as_str(),
                    d.namespace.as_str(),
                    image,
                    d.time.seconds()
                ),
                (None, commit) => format!(
                    "deploy/{}/{}/commit:{}/{}",
                    d.app.as_str(),
                    d.namespace.as_str(),
                    commit.as_ref().map(CommitSha::as_str).unwrap_or_default(),
                    d.time.seconds()
                ),
            },
            Event::Failure(f) => format!("failure/{}/{}", f.app.as_str(), f.issue_number.as_str()),
            Event::Link(l) => format!(
                "link/{}/{}/{}",
                l.app.as_str(),
                l.commit.as_str(),
                l.image_sha
            ),
        }
    }
}

serde_as_text!(
    App => as_str,
    Namespace => as_str,
    CommitSha => as_str,
    ImageSha => to_string,
    IssueNumber => as_str,
    CommitLink => as_str,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_follows_rfc1123_label_rules() {
        assert!(Namespace::parse("mongo-persistent").is_ok());
        assert!(Namespace::parse("a").is_ok());
        assert_eq!(Namespace::parse("Mongo"), Err(FieldError::InvalidFormat));
        assert_eq!(Namespace::parse("-lead"), Err(FieldError::InvalidFormat));
        assert_eq!(Namespace::parse("trail-"), Err(FieldError::InvalidFormat));
        assert_eq!(
            Namespace::parse("under_score"),
            Err(FieldError::InvalidFormat)
        );
        assert_eq!(Namespace::parse(&"a".repeat(64)), Err(FieldError::TooLong));
        assert!(Namespace::parse(&"a".repeat(63)).is_ok());
        assert_eq!(Namespace::parse(""), Err(FieldError::Empty));
    }

    #[test]
    fn image_sha_requires_prefix_and_64_lowercase_hex() {
        let good = format!("sha256:{}", "af".repeat(32));
        assert_eq!(ImageSha::parse(&good).unwrap().to_string(), good);
        assert_eq!(
            ImageSha::parse(&format!("sha256:{}", "AF".repeat(32))),
            Err(FieldError::InvalidFormat)
        );
        assert_eq!(
            ImageSha::parse(&"af".repeat(32)),
            Err(FieldError::InvalidFormat)
        );
        assert_eq!(
            ImageSha::parse(&format!("sha256:{}", "a".repeat(63))),
            Err(FieldError::InvalidFormat)
        );
        assert_eq!(
            ImageSha::parse(&format!("sha512:{}", "a".repeat(64))),
            Err(FieldError::InvalidFormat)
        );
    }

    #[test]
    fn commit_sha_is_7_or_40_hex_and_lowercased() {
        assert_eq!(CommitSha::parse("ABCDEF1").unwrap().as_str(), "abcdef1");
        assert!(CommitSha::parse(&"0".repeat(40)).is_ok());
        assert_eq!(CommitSha::parse("abcdef"), Err(FieldError::InvalidFormat));
        assert_eq!(CommitSha::parse("abcdefg"), Err(FieldError::InvalidFormat));
        assert_eq!(
            CommitSha::parse(&"0".repeat(41)),
            Err(FieldError::InvalidFormat)
        );
    }

    #[test]
    fn event_time_bounds_are_the_pelorus_bounds() {
        assert!(EventTime::from_epoch_seconds(MIN_EVENT_TIME).is_ok());
        assert!(EventTime::from_epoch_seconds(MAX_EVENT_TIME).is_ok());
        assert_eq!(
            EventTime::from_epoch_seconds(MIN_EVENT_TIME - 1),
            Err(FieldError::OutOfRange)
        );
        assert_eq!(
            EventTime::from_epoch_seconds(MAX_EVENT_TIME + 1),
            Err(FieldError::OutOfRange)
        );
    }

    #[test]
    fn app_length_counts_characters() {
        assert!(App::parse(&"é".repeat(200)).is_ok());
        assert_eq!(App::parse(&"a".repeat(201)), Err(FieldError::TooLong));
        assert_eq!(App::parse("a\nb"), Err(FieldError::InvalidFormat));
    }
}
