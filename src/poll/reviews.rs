//! What the review streams of every provider keep of the open pull (merge)
//! requests, and which of them wait for a first review (POLLING.md §5): a
//! pull request waits while it is open, not a draft and not reviewed by
//! anyone but its author since it last became ready.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{server_time, PollError};
use crate::metrics::Metrics;
use crate::store::PollCursor;

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

/// How often the reviews of a waiting pull request are read although its
/// listing did not change.
pub(in crate::poll) const REVIEW_RECHECK_SECONDS: i64 = 3600;

/// One open pull request as a listing shows it.
pub(in crate::poll) struct Listed {
    pub(in crate::poll) number: u64,
    /// Server epoch seconds.
    pub(in crate::poll) created: i64,
    /// Its author, `updated_at`, head and draft flag (the rest is the
    /// stream's).
    pub(in crate::poll) state: PullState,
}

impl Listed {
    /// A listed pull request of the GitHub and Gitea shape (`number`,
    /// `created_at`, `updated_at`, `user.login`, `head.sha`), a draft or
    /// not as its provider tells.
    pub(in crate::poll) fn of(pull: &Value, draft: bool) -> Option<Listed> {
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        Some(Listed {
            number: pull["number"].as_u64()?,
            created: server_time(&pull["created_at"])?,
            state: PullState {
                author: text(&pull["user"]["login"]),
                updated_at: text(&pull["updated_at"]),
                head: text(&pull["head"]["sha"]),
                draft,
                ..PullState::default()
            },
        })
    }
}

/// What a poll of the open pull requests does next.
#[derive(Debug, Default, PartialEq)]
pub(in crate::poll) struct ReviewPlan {
    /// The open pull requests from now on.
    pub(in crate::poll) open: BTreeMap<u64, PullState>,
    /// Those first seen ready, or ready again after a draft, with their
    /// creation: when they became ready is to be read.
    pub(in crate::poll) newly_ready: Vec<(u64, i64)>,
    /// Those whose reviews are to be read: new or changed (`updated_at`,
    /// head) and not drafts, or waiting and not checked for an hour.
    pub(in crate::poll) review: Vec<u64>,
    /// Those no longer open, whose review state is let go.
    pub(in crate::poll) closed: Vec<u64>,
}

impl PullsMark {
    /// The plan after a listing (`None`: the listing did not change) read
    /// at `now` (server epoch seconds).
    pub(in crate::poll) fn plan(&self, listed: Option<Vec<Listed>>, now: i64) -> ReviewPlan {
        let due = |p: &PullState| p.waits() && now - p.checked_at >= REVIEW_RECHECK_SECONDS;
        let mut plan = ReviewPlan::default();
        match listed {
            None => {
                plan.review = self
                    .open
                    .iter()
                    .filter(|(_, p)| due(p))
                    .map(|(n, _)| *n)
                    .collect();
                plan.open = self.open.clone();
            }
            Some(items) => {
                for Listed {
                    number,
                    created,
                    state,
                } in items
                {
                    let previous = self.open.get(&number);
                    let state = match previous {
                        Some(p) if p.updated_at == state.updated_at && p.head == state.head => {
                            if due(p) {
                                plan.review.push(number);
                            }
                            p.clone()
                        }
                        _ if state.draft => state,
                        _ => {
                            plan.review.push(number);
                            match previous {
                                Some(p) if !p.draft => PullState {
                                    ready_at: p.ready_at,
                                    ..state
                                },
                                _ => {
                                    plan.newly_ready.push((number, created));
                                    PullState {
                                        ready_at: created,
                                        ..state
                                    }
                                }
                            }
                        }
                    };
                    plan.open.insert(number, state);
                }
            }
        }
        plan.closed = self
            .open
            .keys()
            .filter(|n| !plan.open.contains_key(n))
            .copied()
            .collect();
        plan
    }
}

/// What a provider's review stream reads for the plan.
pub(in crate::poll) trait PullReviews: Send {
    /// When pull request `number` (created at `created`) last became ready
    /// for review, server epoch seconds.
    fn ready_at(
        &mut self,
        number: u64,
        created: i64,
    ) -> impl Future<Output = Result<i64, PollError>> + Send;

    /// Whether pull request `number` was reviewed by someone other than
    /// `author` since `since`; `None` when its reviews did not change. Its
    /// cursor joins `cursors` when it changed.
    fn reviewed(
        &mut self,
        number: u64,
        author: &str,
        since: i64,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<Option<bool>, PollError>> + Send;
}

impl ReviewPlan {
    /// Reads what the plan calls for through `source` at `now`: the ready
    /// time of the newly ready, then the reviews due; returns the open pull
    /// requests as they now stand.
    pub(in crate::poll) async fn carry_out(
        mut self,
        source: &mut impl PullReviews,
        now: i64,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<BTreeMap<u64, PullState>, PollError> {
        for (number, created) in std::mem::take(&mut self.newly_ready) {
            let ready_at = source.ready_at(number, created).await?;
            if let Some(state) = self.open.get_mut(&number) {
                state.ready_at = ready_at;
            }
        }
        for number in std::mem::take(&mut self.review) {
            let Some(state) = self.open.get(&number) else {
                continue;
            };
            let (author, since) = (state.author.clone(), state.ready_at);
            let reviewed = source.reviewed(number, &author, since, cursors).await?;
            if let Some(state) = self.open.get_mut(&number) {
                if let Some(reviewed) = reviewed {
                    state.reviewed = reviewed;
                }
                state.checked_at = now;
            }
        }
        Ok(self.open)
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

    fn listed(number: u64, updated: &str, draft: bool) -> Listed {
        Listed {
            number,
            created: 100,
            state: PullState {
                updated_at: updated.into(),
                head: "h".into(),
                author: "ann".into(),
                draft,
                ..PullState::default()
            },
        }
    }

    #[test]
    fn a_plan_reads_reviews_of_new_and_changed_pulls_and_rechecks_waiting_ones_hourly() {
        let mut mark = PullsMark::default();
        let plan = mark.plan(
            Some(vec![listed(1, "a", false), listed(2, "a", true)]),
            1000,
        );
        assert_eq!(plan.review, [1]);
        assert_eq!(plan.newly_ready, [(1, 100)]);
        assert!(plan.closed.is_empty());
        mark.open = plan.open;
        mark.open.get_mut(&1).unwrap().checked_at = 1000;
        // Unchanged within the hour: nothing to read; #2 closed.
        let plan = mark.plan(Some(vec![listed(1, "a", false)]), 1000 + 60);
        assert!(plan.review.is_empty() && plan.newly_ready.is_empty());
        assert_eq!(plan.closed, [2]);
        // An hour later the waiting one is read again, listed or not.
        let later = 1000 + REVIEW_RECHECK_SECONDS;
        assert_eq!(mark.plan(None, later).review, [1]);
        assert_eq!(
            mark.plan(Some(vec![listed(1, "a", false)]), later).review,
            [1]
        );
        // Changed: read again, its ready time kept; a draft made ready is
        // newly ready.
        mark.open.get_mut(&1).unwrap().ready_at = 500;
        let plan = mark.plan(Some(vec![listed(1, "b", false)]), 1100);
        assert_eq!(plan.review, [1]);
        assert!(plan.newly_ready.is_empty());
        assert_eq!(plan.open[&1].ready_at, 500);
        mark.open.insert(2, listed(2, "a", true).state);
        let plan = mark.plan(Some(vec![listed(2, "b", false)]), 1100);
        assert_eq!(plan.newly_ready, [(2, 100)]);
    }

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
