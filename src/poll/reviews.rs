//! What the review streams of every provider keep of the open pull (merge)
//! requests, and which of them wait for a first review (POLLING.md §5): a
//! pull request waits while it is open, not a draft and not reviewed by
//! anyone but its author since it last became ready.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::server_time;
use crate::metrics::Metrics;

/// One open pull request as the stream last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(in crate::poll) struct PullState {
    pub(in crate::poll) updated_at: String,
    pub(in crate::poll) head: String,
    pub(in crate::poll) author: String,
    pub(in crate::poll) draft: bool,
    /// When it last became ready for review: `created_at`, or the last
    /// `ready_for_review` (server epoch seconds). 0 while a draft.
    pub(in crate::poll) ready_at: i64,
    /// Reviewed by someone other than its author since `ready_at`.
    pub(in crate::poll) reviewed: bool,
    /// When its reviews were last read (server epoch seconds).
    pub(in crate::poll) checked_at: i64,
}

impl PullState {
    pub(in crate::poll) fn waits(&self) -> bool {
        !self.draft && !self.reviewed
    }
}

/// The stream's watermark: every open pull request against a tracked branch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(in crate::poll) struct PullsMark {
    pub(in crate::poll) open: BTreeMap<u64, PullState>,
}

impl PullsMark {
    /// Publishes the waits of `repo` (`skew`: server clock minus local).
    pub(in crate::poll) fn publish(&self, metrics: &Metrics, repo: &str, skew: i64) {
        let waiting = self
            .open
            .iter()
            .filter(|(_, p)| p.waits())
            .map(|(n, p)| (*n, p.ready_at - skew))
            .collect();
        metrics.review_waits.set(repo, waiting);
    }
}

/// Whether `reviews` (GitHub's and Gitea's shape: `user.login`, `state`,
/// `submitted_at`) hold one by someone other than `author`, submitted at
/// or after `since`, in a state other than `not_reviews` (a pending review
/// is a draft nobody else sees). A comment-only review counts (POLLING.md
/// §5).
pub(in crate::poll) fn reviewed(
    reviews: &[Value],
    author: &str,
    since: i64,
    not_reviews: &[&str],
) -> bool {
    reviews.iter().any(|review| {
        let by = review["user"]["login"].as_str().unwrap_or_default();
        let submitted = server_time(&review["submitted_at"]).unwrap_or(i64::MAX);
        let state = review["state"].as_str().unwrap_or_default();
        !not_reviews.contains(&state) && !by.is_empty() && by != author && submitted >= since
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_review_counts_when_someone_else_submitted_it_after_the_pull_became_ready() {
        let at = |t: &str| server_time(&json!(t)).unwrap();
        let ready = at("2026-11-01T12:00:00Z");
        let review = |by: &str, state: &str, when: &str| json!({"user": {"login": by}, "state": state, "submitted_at": when});
        let after = "2026-11-02T09:00:00Z";
        assert!(reviewed(
            &[review("bob", "COMMENTED", after)],
            "ann",
            ready,
            &["PENDING"]
        ));
        assert!(reviewed(
            &[review("bob", "APPROVED", after)],
            "ann",
            ready,
            &["PENDING"]
        ));
        assert!(!reviewed(
            &[review("ann", "COMMENTED", after)],
            "ann",
            ready,
            &["PENDING"]
        ));
        assert!(!reviewed(
            &[review("bob", "PENDING", after)],
            "ann",
            ready,
            &["PENDING"]
        ));
        assert!(!reviewed(
            &[review("bob", "CHANGES_REQUESTED", "2026-10-30T09:00:00Z")],
            "ann",
            ready,
            &["PENDING"]
        ));
        assert!(!reviewed(&[], "ann", ready, &["PENDING"]));
    }
}
