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
    /// `ready_for_review` (server epoch seconds).
    pub(in crate::poll) ready_at: i64,
    /// `ready_at` was read from the provider; until it is, `ready_at` is
    /// the creation and the pull request is not counted as waiting (it may
    /// have been a draft, and reviewed before it was again).
    #[serde(default)]
    pub(in crate::poll) ready_known: bool,
    /// The latest review by someone other than its author, if any (server
    /// epoch seconds).
    #[serde(default)]
    pub(in crate::poll) last_review: Option<i64>,
    /// When its reviews were last read (server epoch seconds).
    pub(in crate::poll) checked_at: i64,
}

impl PullState {
    /// Open (it is listed), ready, and not reviewed since it became ready.
    pub(in crate::poll) fn waits(&self) -> bool {
        !self.draft && self.last_review.is_none_or(|r| r < self.ready_at)
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
            .filter(|(_, p)| p.waits() && p.ready_known)
            .map(|(n, p)| (*n, p.ready_at - skew))
            .collect();
        metrics.review_waits.set(repo, waiting);
    }

    /// The ready pull requests whose ready time is still to be read, at
    /// most `limit`: those that would wait first (they are the ones an
    /// alert is about), then the reviewed ones.
    pub(in crate::poll) fn ready_unknown(&self, limit: usize) -> Vec<(u64, i64)> {
        let mut unknown: Vec<(bool, u64, i64)> = self
            .open
            .iter()
            .filter(|(_, p)| !p.draft && !p.ready_known)
            .map(|(n, p)| (!p.waits(), *n, p.ready_at))
            .collect();
        unknown.sort();
        unknown
            .into_iter()
            .take(limit)
            .map(|(_, n, at)| (n, at))
            .collect()
    }
}

/// The latest review in `reviews` (GitHub's and Gitea's shape:
/// `user.login`, `state`, `submitted_at`) by someone other than `author`,
/// in a state other than `not_reviews` (a pending review is a draft nobody
/// else sees). A comment-only review counts (POLLING.md §5); one without a
/// time counts as recent.
pub(in crate::poll) fn last_review(
    reviews: &[Value],
    author: &str,
    not_reviews: &[&str],
) -> Option<i64> {
    reviews
        .iter()
        .filter(|review| {
            let by = review["user"]["login"].as_str().unwrap_or_default();
            let state = review["state"].as_str().unwrap_or_default();
            !not_reviews.contains(&state) && !by.is_empty() && by != author
        })
        .map(|review| server_time(&review["submitted_at"]).unwrap_or(i64::MAX))
        .max()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_last_review_is_by_someone_else_and_not_pending() {
        let at = |t: &str| server_time(&json!(t)).unwrap();
        let review = |by: &str, state: &str, when: &str| json!({"user": {"login": by}, "state": state, "submitted_at": when});
        let (early, late) = ("2026-10-30T09:00:00Z", "2026-11-02T09:00:00Z");
        let last = |reviews: &[Value]| last_review(reviews, "ann", &["PENDING"]);
        assert_eq!(
            last(&[
                review("bob", "COMMENTED", early),
                review("eve", "APPROVED", late)
            ]),
            Some(at(late))
        );
        assert_eq!(last(&[review("ann", "COMMENTED", late)]), None);
        assert_eq!(last(&[review("bob", "PENDING", late)]), None);
        assert_eq!(last(&[]), None);
    }

    #[test]
    fn a_pull_request_waits_until_reviewed_after_it_last_became_ready() {
        let ready = PullState {
            ready_at: 1_000,
            ready_known: true,
            ..PullState::default()
        };
        assert!(ready.waits());
        let reviewed_before = PullState {
            last_review: Some(900),
            ..ready.clone()
        };
        assert!(reviewed_before.waits());
        let reviewed_after = PullState {
            last_review: Some(1_000),
            ..ready.clone()
        };
        assert!(!reviewed_after.waits());
        let draft = PullState {
            draft: true,
            ..ready
        };
        assert!(!draft.waits());
    }
}
