//! What the review streams of every provider keep of the open pull (merge)
//! requests, and which of them wait for a first review (POLLING.md §5): a
//! pull request waits while it is open, not a draft and not reviewed by
//! anyone but its author since it last became ready.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::Api;
use super::error::PollError;
use super::recorder::Recorder;
use super::settings::PollTarget;
use super::watermark::server_time;
use crate::metrics::Metrics;
use crate::store::PollCursor;

/// The review stream's key (its cursor holds the [`PullsMark`]).
pub(in crate::poll) const PULLS_STREAM: &str = "pulls";

/// How often the reviews of a waiting pull request are read although its
/// listing did not change.
pub(in crate::poll) const REVIEW_RECHECK_SECONDS: i64 = 3600;

/// Ready times (timelines) read in one poll at most; the others wait for
/// the next polls.
pub(in crate::poll) const READY_TIMES_PER_POLL: usize = 20;

/// One open pull request as the stream last saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(in crate::poll) struct PullState {
    pub(in crate::poll) updated_at: String,
    pub(in crate::poll) head: String,
    pub(in crate::poll) author: String,
    pub(in crate::poll) draft: bool,
    /// When it last became ready for review: `created_at`, or the last
    /// time it was marked ready (server epoch seconds).
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
    /// Ready, and not reviewed since it became ready (it is open: listed).
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
}

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
    /// Those whose reviews are to be read: new or changed (`updated_at`,
    /// head) and not drafts, or waiting and not checked for an hour.
    pub(in crate::poll) review: Vec<u64>,
    /// Those no longer open, whose review state is let go.
    pub(in crate::poll) closed: Vec<u64>,
}

impl PullsMark {
    /// The plan after a listing (`None`: the listing did not change) read
    /// at `now` (server epoch seconds). A push or an edit does not undo a
    /// review: a pull request ready before keeps its ready time and latest
    /// review; one first seen ready, or no longer a draft, has its ready
    /// time read.
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
                        _ if state.draft => PullState {
                            last_review: previous.and_then(|p| p.last_review),
                            ..state
                        },
                        Some(p) if !p.draft => {
                            plan.review.push(number);
                            PullState {
                                ready_at: p.ready_at,
                                ready_known: p.ready_known,
                                last_review: p.last_review,
                                ..state
                            }
                        }
                        _ => {
                            plan.review.push(number);
                            PullState {
                                ready_at: created,
                                ready_known: false,
                                last_review: previous.and_then(|p| p.last_review),
                                ..state
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
    /// The poller's store side, API and target.
    fn parts(&mut self) -> (&mut Recorder, &Api, &PollTarget);

    /// When pull request `number` (created at `created`) last became ready
    /// for review, server epoch seconds.
    fn ready_at(
        &mut self,
        number: u64,
        created: i64,
    ) -> impl Future<Output = Result<i64, PollError>> + Send;

    /// The latest review of pull request `number` by someone other than
    /// `author` (server epoch seconds); `None` when its reviews did not
    /// change. Its cursor joins `cursors` when it changed.
    fn last_review(
        &mut self,
        number: u64,
        author: &str,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<Option<Option<i64>>, PollError>> + Send;
}

/// One poll of a review stream after its listing (`None`: unchanged):
/// the plan is carried out through `source`, the closed pull requests'
/// review state let go, the waits published, and the stream's new state
/// (`listed_cursor`: its `cursor` with the listing's validators) joins
/// `cursors` with the new mark when it changed. The reviews' validators
/// join `cursors` only when everything was read, as they are kept only
/// with the mark they fed (a poll cut short keeps neither, and reads them
/// again).
pub(in crate::poll) async fn refresh(
    source: &mut impl PullReviews,
    cursor: PollCursor,
    mut listed_cursor: PollCursor,
    listed: Option<Vec<Listed>>,
    cursors: &mut Vec<PollCursor>,
) -> Result<(), PollError> {
    let mut mark: PullsMark = super::watermark::mark_of(&cursor).unwrap_or_default();
    let now = source.parts().1.server_now();
    let plan = mark.plan(listed, now);
    let (rec, _, target) = source.parts();
    for number in &plan.closed {
        rec.forget.push(target.stream(&format!("reviews|{number}")));
    }
    let mut review_cursors = Vec::new();
    mark.open = plan.carry_out(source, now, &mut review_cursors).await?;
    cursors.extend(review_cursors);
    let (rec, api, target) = source.parts();
    mark.publish(&rec.metrics, &target.repo, api.skew());
    listed_cursor.watermark = Some(serde_json::to_string(&mark).unwrap_or_default());
    if listed_cursor != cursor {
        cursors.push(listed_cursor);
    }
    Ok(())
}

impl ReviewPlan {
    /// Reads what the plan calls for through `source` at `now`: the reviews
    /// due, then the ready times still unknown of the ready pull requests
    /// ([`READY_TIMES_PER_POLL`] at most; those that would wait first, as
    /// an alert is about them); returns the open pull requests as they now
    /// stand.
    async fn carry_out(
        mut self,
        source: &mut impl PullReviews,
        now: i64,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<BTreeMap<u64, PullState>, PollError> {
        for number in std::mem::take(&mut self.review) {
            let Some(state) = self.open.get(&number) else {
                continue;
            };
            let author = state.author.clone();
            let last = source.last_review(number, &author, cursors).await?;
            if let Some(state) = self.open.get_mut(&number) {
                if let Some(last) = last {
                    state.last_review = last;
                }
                state.checked_at = now;
            }
        }
        let mut unknown: Vec<(bool, u64, i64)> = self
            .open
            .iter()
            .filter(|(_, p)| !p.draft && !p.ready_known)
            .map(|(n, p)| (!p.waits(), *n, p.ready_at))
            .collect();
        unknown.sort_unstable();
        for (_, number, created) in unknown.into_iter().take(READY_TIMES_PER_POLL) {
            let ready_at = source.ready_at(number, created).await?;
            if let Some(state) = self.open.get_mut(&number) {
                state.ready_at = ready_at;
                state.ready_known = true;
            }
        }
        Ok(self.open)
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
        assert!(!plan.open[&1].ready_known);
        assert!(plan.closed.is_empty());
        mark.open = plan.open;
        let first = mark.open.get_mut(&1).unwrap();
        (first.checked_at, first.ready_known) = (1000, true);
        // Unchanged within the hour: nothing to read; #2 closed.
        let plan = mark.plan(Some(vec![listed(1, "a", false)]), 1000 + 60);
        assert!(plan.review.is_empty());
        assert_eq!(plan.closed, [2]);
        // An hour later the waiting one is read again, listed or not.
        let later = 1000 + REVIEW_RECHECK_SECONDS;
        assert_eq!(mark.plan(None, later).review, [1]);
        assert_eq!(
            mark.plan(Some(vec![listed(1, "a", false)]), later).review,
            [1]
        );
        // Changed after a review: read again, its ready time and review
        // kept (a push does not undo a review).
        let first = mark.open.get_mut(&1).unwrap();
        (first.ready_at, first.last_review) = (500, Some(600));
        let plan = mark.plan(Some(vec![listed(1, "b", false)]), 1100);
        assert_eq!(plan.review, [1]);
        assert_eq!(
            (plan.open[&1].ready_at, plan.open[&1].last_review),
            (500, Some(600))
        );
        assert!(plan.open[&1].ready_known && !plan.open[&1].waits());
        // A draft made ready has its ready time read again.
        mark.open.insert(2, listed(2, "a", true).state);
        let plan = mark.plan(Some(vec![listed(2, "b", false)]), 1100);
        assert!(!plan.open[&2].ready_known);
    }

    #[test]
    fn the_last_review_is_by_someone_else_and_not_pending() {
        let at = |t: &str| server_time(&json!(t)).unwrap();
        let review = |by: &str, state: &str, when: &str| json!({"user": {"login": by}, "state": state, "submitted_at": when});
        let (early, late) = ("2026-10-30T09:00:00Z", "2026-11-02T09:00:00Z");
        let last = |reviews: &[Value]| last_review(reviews, "ann", &["PENDING", "REQUEST_REVIEW"]);
        assert_eq!(
            last(&[
                review("bob", "COMMENTED", early),
                review("eve", "APPROVED", late)
            ]),
            Some(at(late))
        );
        assert_eq!(last(&[review("ann", "COMMENTED", late)]), None);
        assert_eq!(last(&[review("bob", "PENDING", late)]), None);
        assert_eq!(last(&[review("bob", "REQUEST_REVIEW", late)]), None);
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
