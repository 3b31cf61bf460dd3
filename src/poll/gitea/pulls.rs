//! The pull-request stream (POLLING.md §5): open pull requests against the
//! tracked branches, and the reviews of those that changed, to tell which
//! wait for a first review and since when.
//!
//! The open list (`/pulls?state=open`) is filtered by `base.ref` here;
//! reviews are read only for a pull request that is new or whose
//! `updated_at` or head moved, and once an hour for those still waiting.
//! A draft is one whose `draft` says so (newer Gitea, Forgejo) or, where
//! the field is missing, whose title starts with `WIP:` or `[WIP]`, Gitea's
//! work-in-progress convention (and what its `draft` reports). It became
//! ready at its creation or at the last timeline `change_title` that took
//! the prefix off. `PENDING` (an unsubmitted draft review) and
//! `REQUEST_REVIEW` (a request, not a review) are no reviews.

use serde_json::Value;

use super::{work_in_progress, GiteaPoller, GITEA_JSON, MAX_LIST_PAGES};
use crate::poll::api::{Api, Listing};
use crate::poll::reviews;
use crate::poll::reviews::{last_review, Listed, PullReviews, PULLS_STREAM};
use crate::poll::watermark::server_time;
use crate::poll::PollError;
use crate::poll::{PollTarget, Recorder};
use crate::store::PollCursor;

/// Review states that are no reviews.
const NOT_REVIEWS: &[&str] = &["PENDING", "REQUEST_REVIEW"];

impl GiteaPoller {
    /// Polls the open pull requests of `branches` and publishes the waits.
    pub(super) async fn pulls(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self.rec.cursor(self.target.stream(PULLS_STREAM));
        let mut new_cursor = cursor.clone();
        let first = format!("{}/pulls?state=open&limit=50&page=1", self.base);
        let listed = self
            .api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "pulls",
                GITEA_JSON,
                MAX_LIST_PAGES,
            )
            .await?
            .map(|list| {
                if list.truncated {
                    tracing::warn!(repo = %self.target.repo, pages = MAX_LIST_PAGES, "More open pull requests than a poll reads; the rest are not gauged");
                }
                list.items
                    .iter()
                    .filter(|pull| {
                        let base_ref = pull["base"]["ref"].as_str().unwrap_or_default();
                        branches.iter().any(|b| b == base_ref)
                    })
                    .filter_map(listed)
                    .collect()
            });
        reviews::refresh(self, cursor, new_cursor, listed, cursors).await
    }
}

impl PullReviews for GiteaPoller {
    fn parts(&mut self) -> (&mut Recorder, &Api, &PollTarget) {
        (&mut self.rec, &self.api, &self.target)
    }

    /// The later of its creation and the last `change_title` of its
    /// timeline that took the work-in-progress prefix off; its creation
    /// where the instance has no timeline (before Gitea 1.15).
    async fn ready_at(&mut self, number: u64, created: i64) -> Result<i64, PollError> {
        let first = format!("{}/issues/{number}/timeline?limit=50&page=1", self.base);
        let events = match self
            .api
            .list_all(
                first,
                &PollCursor::default(),
                &mut PollCursor::default(),
                "timeline",
                GITEA_JSON,
                MAX_LIST_PAGES,
            )
            .await
        {
            Err(PollError::Gone { .. }) => return Ok(created),
            other => other?.map(|list| list.items).unwrap_or_default(),
        };
        Ok(events
            .iter()
            .filter(|event| {
                let title = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
                event["type"].as_str() == Some("change_title")
                    && work_in_progress(&title("old_title"))
                    && !work_in_progress(&title("new_title"))
            })
            .filter_map(|event| server_time(&event["created_at"]))
            .fold(created, i64::max))
    }

    /// The latest review of pull request `number` by someone other than
    /// `author`, from its reviews (conditional on their own ETag where the
    /// server gives one); `None` when they did not change.
    async fn last_review(
        &mut self,
        number: u64,
        author: &str,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<Option<Option<i64>>, PollError> {
        let cursor = self
            .rec
            .cursor(self.target.stream(&format!("reviews|{number}")));
        let first = format!("{}/pulls/{number}/reviews?limit=50&page=1", self.base);
        let mut new_cursor = cursor.clone();
        let Some(Listing { items: all, .. }) = self
            .api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "reviews",
                GITEA_JSON,
                MAX_LIST_PAGES,
            )
            .await?
        else {
            return Ok(None);
        };
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(Some(last_review(&all, author, NOT_REVIEWS)))
    }
}

/// A listed pull request, as the review plan takes it.
fn listed(pull: &Value) -> Option<Listed> {
    let draft = pull["draft"]
        .as_bool()
        .unwrap_or_else(|| work_in_progress(pull["title"].as_str().unwrap_or_default()));
    Listed::of(pull, draft)
}
