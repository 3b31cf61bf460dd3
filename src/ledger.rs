//! The delivery ledger's vocabulary: what a delivery is (`Delivery`), how it is
//! identified (`DeliveryId`), what happened to it (`Outcome`) and what a
//! committed delivery changed (`Effect`), which the metric view applies.
//!
//! Pure types and the rules that derive ids; no I/O happens here.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::events::{App, CommitLink, CommitSha, Event, ImageSha, IssueNumber, Namespace};

/// What happened to a delivery. A closed set: these strings are labels and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// New or newer information, committed.
    Accepted,
    /// Same delivery id seen before, or an identical event already stored.
    Duplicate,
    /// An older update for a resource that already holds a newer one.
    Outdated,
    /// Authentic and well-formed, but without DORA meaning.
    Ignored,
    /// Well-formed request whose payload or headers failed validation.
    Invalid,
    /// Authentication failed; only metadata is kept.
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Outdated,
        Outcome::Ignored,
        Outcome::Invalid,
        Outcome::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Outdated => "outdated",
            Outcome::Ignored => "ignored",
            Outcome::Invalid => "invalid",
            Outcome::Rejected => "rejected",
        }
    }

    pub fn parse(value: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == value)
    }
}

/// The id a delivery is deduplicated on: the sender's idempotency header where
/// it has one, else a hash derived from the content (see [`DeliveryId::derived`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// Longest sender-supplied id kept; longer ones are replaced by their hash.
    pub const MAX_LEN: usize = 200;

    /// An id taken from a sender's header, if it is usable as one.
    pub fn from_header(value: &str) -> Option<DeliveryId> {
        let usable = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| DeliveryId(value.to_owned()))
    }

    /// An id derived from `parts` (source, event identity, ...): the first 128
    /// bits of their SHA-256, hex encoded. Stable across retries of one event.
    pub fn derived(parts: &[&[u8]]) -> DeliveryId {
        DeliveryId(hex::encode(&Self::digest(parts)[..16]))
    }

    /// As [`DeliveryId::derived`], led by the event time (8 hex digits) and
    /// followed by 96 bits of the hash: ids of events that arrive roughly in
    /// time order then sort together, which keeps the ledger's id index from
    /// being written at random places.
    pub fn derived_at(time: i64, parts: &[&[u8]]) -> DeliveryId {
        let leading = (time.clamp(0, u32::MAX as i64) as u32).to_be_bytes();
        let digest = Self::digest(parts);
        DeliveryId(format!(
            "{}{}",
            hex::encode(leading),
            hex::encode(&digest[..12])
        ))
    }

    fn digest(parts: &[&[u8]]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the ingest path disposed of a delivery before it reached the store.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// Authentic and valid: these events are to be applied.
    Events(Vec<Event>),
    /// Authentic and valid, but carries no event.
    Ignored { reason: &'static str },
    /// Failed validation; `reason` is a bounded code.
    Invalid { reason: &'static str },
    /// Failed authentication.
    Rejected { reason: &'static str },
}

/// One delivery as it goes into the ledger.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: DeliveryId,
    /// Source name, e.g. `pelorus`.
    pub source: &'static str,
    /// Source-specific event kind from a closed set, e.g. `deploytime`.
    pub event: &'static str,
    pub received_at_ms: i64,
    /// False when the sender was not (or could not yet be) authenticated.
    pub authenticated: bool,
    /// Raw body to keep for replay; `None` when it must not be kept.
    pub body: Option<Bytes>,
    pub disposition: Disposition,
    /// The request headers as a JSON object, credential values redacted.
    pub headers: Option<String>,
    /// The named instance (`/hooks/<source>/<name>`) it was sent to.
    pub instance: Option<String>,
    /// A redelivery being finished: the queued ledger row it updates.
    pub queued_row: Option<i64>,
}

/// Where a ledger row stands. Rows recorded in their request are `Done` at
/// once; redeliveries go `Queued` → `Processing` → `Done`, or `Errored`
/// (retried while attempts remain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Processing,
    Done,
    Errored,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Processing => "processing",
            State::Done => "done",
            State::Errored => "errored",
        }
    }

    pub fn parse(value: &str) -> Option<State> {
        [
            State::Queued,
            State::Processing,
            State::Done,
            State::Errored,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

/// What the store made of a delivery, once committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    /// Sentence for the response body and the ledger.
    pub detail: String,
    /// For `outdated`: the delivery whose newer information is kept.
    pub superseded_by: Option<String>,
}

/// A stored commit as the view shows it (its `commit_timestamp` series):
/// when it is new, and again when the view is rebuilt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShownCommit {
    pub app: App,
    pub commit: CommitSha,
    pub image_sha: Option<ImageSha>,
    pub namespace: Option<Namespace>,
    pub commit_link: Option<CommitLink>,
    pub time: i64,
}

/// A committed change the metric view must reflect. Applying effects is
/// commutative (counters add, gauges keep the newest time), so the order in
/// which concurrent commits report them does not matter. Replicas sharing
/// one store pass them to each other as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    Commit(ShownCommit),
    /// A new deploy: counted, and shown with its image when it is known.
    Deploy {
        app: App,
        namespace: Namespace,
        image_sha: Option<ImageSha>,
        time: i64,
    },
    /// A stored deploy whose image became known through a link: shown, not
    /// counted again.
    DeployImage {
        app: App,
        namespace: Namespace,
        image_sha: ImageSha,
        time: i64,
    },
    FailureCreated {
        app: App,
        issue_number: IssueNumber,
        time: i64,
        /// True the first time this failure is known to have been created.
        first: bool,
        /// Creation time while the failure is open after this change.
        open_since: Option<i64>,
    },
    FailureResolved {
        app: App,
        issue_number: IssueNumber,
        time: i64,
        first: bool,
        open_since: Option<i64>,
    },
    LeadTime {
        app: App,
        seconds: f64,
    },
    TimeToRestore {
        app: App,
        seconds: f64,
    },
    /// A failure tied to a deployment was resolved after this long.
    FailedDeploymentRecovery {
        app: App,
        seconds: f64,
    },
    /// A stored deploy was decided rework (`true`), or that decision was
    /// withdrawn (`false`): each counts once on its own counter.
    Rework {
        app: App,
        namespace: Namespace,
        rework: bool,
    },
    /// A failure was tied to a stored deploy (`true`), or no longer is.
    DeployFailed {
        app: App,
        namespace: Namespace,
        failed: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_effect_is_one_flat_object_on_the_change_feed() {
        let effect = Effect::Commit(ShownCommit {
            app: App::parse("shop").unwrap(),
            commit: CommitSha::parse("abc1234").unwrap(),
            image_sha: None,
            namespace: None,
            commit_link: None,
            time: 7,
        });
        let json = serde_json::to_string(&effect).unwrap();
        assert_eq!(
            json,
            r#"{"effect":"commit","app":"shop","commit":"abc1234","image_sha":null,"namespace":null,"commit_link":null,"time":7}"#
        );
        assert_eq!(serde_json::from_str::<Effect>(&json).unwrap(), effect);
    }

    #[test]
    fn derived_ids_separate_their_parts() {
        let a = DeliveryId::derived(&[b"ab", b"c"]);
        let b = DeliveryId::derived(&[b"a", b"bc"]);
        assert_ne!(a, b);
        assert_eq!(a, DeliveryId::derived(&[b"ab", b"c"]));
        assert_eq!(a.as_str().len(), 32);
    }

    #[test]
    fn time_led_ids_sort_by_time() {
        let early = DeliveryId::derived_at(1_700_000_000, &[b"z"]);
        let late = DeliveryId::derived_at(1_700_000_001, &[b"a"]);
        assert!(early.as_str() < late.as_str());
        assert_eq!(early.as_str().len(), 32);
        assert!(early.as_str().starts_with("6553f100"));
    }

    #[test]
    fn header_ids_must_be_printable_and_bounded() {
        assert!(DeliveryId::from_header("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_some());
        assert!(DeliveryId::from_header("").is_none());
        assert!(DeliveryId::from_header("has space").is_none());
        assert!(DeliveryId::from_header(&"x".repeat(201)).is_none());
    }

    #[test]
    fn outcome_strings_round_trip() {
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
    }
}
