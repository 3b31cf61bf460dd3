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

/// An open pull request as the provider's listing shows it.
pub(in crate::poll) struct Listed {
    pub(in crate::poll) number: u64,
    /// Server epoch seconds.
    pub(in crate::poll) created: i64,
    /// Its `updated_at`, head, author and draft flag (the rest is the
    /// stream's to fill).
    pub(in crate::poll) state: PullState,
}

/// What a review stream reads after listing the open pull requests.
pub(in crate::poll) struct ReviewPlan {
    /// Every open pull request, as far as the listing tells.
    pub(in crate::poll) open: BTreeMap<u64, PullState>,
    /// Pull requests first seen ready, with their creation: when each
    /// became ready is to be read (its `ready_at` is the creation until
    /// then).
    pub(in crate::poll) ready: Vec<(u64, i64)>,
    /// Pull requests whose reviews are to be read.
    pub(in crate::poll) review: Vec<u64>,
}

impl PullsMark {
    /// Which pull requests of `listed` (`None`: the listing did not
    /// change) need their reviews read: new or changed ones (`updated_at`
    /// or head moved) that are not drafts, and, once per
    /// `recheck_seconds`, those still waiting. A changed pull request
    /// keeps what is known of its current readiness (when it became ready,
    /// whether it was reviewed since) until its reviews are read again.
    pub(in crate::poll) fn plan(
        &self,
        listed: Option<Vec<Listed>>,
        now: i64,
        recheck_seconds: i64,
    ) -> ReviewPlan {
        let stale = |p: &PullState| p.waits() && now - p.checked_at >= recheck_seconds;
        let mut plan = ReviewPlan {
            open: BTreeMap::new(),
            ready: Vec::new(),
            review: Vec::new(),
        };
        let Some(listed) = listed else {
            plan.review = self
                .open
                .iter()
                .filter(|(_, p)| stale(p))
                .map(|(n, _)| *n)
                .collect();
            plan.open = self.open.clone();
            return plan;
        };
        for Listed {
            number,
            created,
            state,
        } in listed
        {
            let previous = self.open.get(&number);
            let state = match previous {
                Some(p) if p.updated_at == state.updated_at && p.head == state.head => {
                    if stale(p) {
                        plan.review.push(number);
                    }
                    p.clone()
                }
                _ if state.draft => state,
                Some(p) if !p.draft => {
                    plan.review.push(number);
                    PullState {
                        ready_at: p.ready_at,
                        reviewed: p.reviewed,
                        checked_at: p.checked_at,
                        ..state
                    }
                }
                _ => {
                    // Newly ready (or first seen): when did it become so?
                    plan.ready.push((number, created));
                    plan.review.push(number);
                    PullState {
                        ready_at: created,
                        ..state
                    }
                }
            };
            plan.open.insert(number, state);
        }
        plan
    }

    /// Takes `open` as the open pull requests; returns those no longer
    /// open.
    pub(in crate::poll) fn replace(&mut self, open: BTreeMap<u64, PullState>) -> Vec<u64> {
        let gone = self
            .open
            .keys()
            .filter(|n| !open.contains_key(n))
            .copied()
            .collect();
        self.open = open;
        gone
    }

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

    fn listed(number: u64, updated_at: &str, draft: bool) -> Listed {
        Listed {
            number,
            created: 100,
            state: PullState {
                updated_at: updated_at.into(),
                head: "h".into(),
                author: "ann".into(),
                draft,
                ..PullState::default()
            },
        }
    }

    #[test]
    fn a_plan_reads_reviews_of_new_and_changed_pull_requests_and_keeps_what_is_known() {
        let mut mark = PullsMark::default();
        let plan = mark.plan(
            Some(vec![listed(1, "a", false), listed(2, "a", true)]),
            1_000,
            3600,
        );
        assert_eq!(plan.ready, [(1, 100)]);
        assert_eq!(plan.review, [1]);
        assert_eq!(plan.open[&1].ready_at, 100);
        let mut open = plan.open;
        open.get_mut(&1).unwrap().ready_at = 500;
        open.get_mut(&1).unwrap().reviewed = true;
        open.get_mut(&1).unwrap().checked_at = 1_000;
        assert!(mark.replace(open).is_empty());
        // #1 changed (a push): its reviews are read again, and until then
        // it stays reviewed since it became ready at 500. #2 became ready:
        // when is read. Unchanged and reviewed, nothing is read.
        let plan = mark.plan(
            Some(vec![listed(1, "b", false), listed(2, "b", false)]),
            2_000,
            3600,
        );
        assert_eq!(plan.ready, [(2, 100)]);
        assert_eq!(plan.review, [1, 2]);
        let one = &plan.open[&1];
        assert_eq!(
            (one.ready_at, one.reviewed, one.checked_at),
            (500, true, 1_000)
        );
        // An unchanged listing re-reads only the waiting, once an hour.
        let mut open = plan.open;
        open.get_mut(&2).unwrap().checked_at = 2_000;
        mark.replace(open);
        assert!(mark.plan(None, 3_000, 3600).review.is_empty());
        assert_eq!(mark.plan(None, 5_600, 3600).review, [2]);
        // Gone from the listing: let go.
        let plan = mark.plan(Some(vec![listed(2, "b", false)]), 5_600, 3600);
        assert_eq!(mark.replace(plan.open), [1]);
    }
}
