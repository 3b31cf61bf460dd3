//! The pull-request stream (POLLING.md §5): open pull requests against the
//! tracked branches, and the reviews of those that changed, to tell which
//! wait for a first review and since when.
//!
//! Cheapest first: the open list is conditional (mostly 304s, which cost no
//! quota); reviews are read only for a pull request that is new or whose
//! `updated_at` or head moved (a review bumps `updated_at`), and once an
//! hour for those still waiting, each conditional on its own ETag; the
//! timeline, for the last `ready_for_review`, once when a pull request is
//! first seen ready. What the stream knows is kept in its cursor, so a
//! restart answers 304 and still knows every wait.

use serde_json::Value;

use super::{server_time, GithubPoller, PollError, GITHUB_JSON, MAX_PAGES};
use crate::poll::api::{Api, Listing};
use crate::poll::reviews;
use crate::poll::reviews::{last_review, Listed, PullReviews, PULLS_STREAM};
use crate::poll::{PollTarget, Recorder};
use crate::store::PollCursor;

impl GithubPoller {
    /// Polls the open pull requests of `branches` and publishes the waits.
    pub(super) async fn pulls(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self.rec.cursor(self.target.stream(PULLS_STREAM));
        let mut new_cursor = cursor.clone();
        // One base on the server; several are filtered here.
        let base = match branches {
            [one] => format!(
                "&base={}",
                form_urlencoded::byte_serialize(one.as_bytes()).collect::<String>()
            ),
            _ => String::new(),
        };
        let first = format!(
            "{}/pulls?state=open{base}&sort=updated&direction=desc&per_page=100",
            self.base
        );
        let listed = self
            .api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "pulls",
                GITHUB_JSON,
                MAX_PAGES,
            )
            .await?
            .map(|list| {
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

impl PullReviews for GithubPoller {
    fn parts(&mut self) -> (&mut Recorder, &Api, &PollTarget) {
        (&mut self.rec, &self.api, &self.target)
    }

    /// When pull request `number` last became ready for review: the last
    /// `ready_for_review` of its timeline, else its creation.
    async fn ready_at(&mut self, number: u64, created: i64) -> Result<i64, PollError> {
        let first = format!("{}/issues/{number}/timeline?per_page=100", self.base);
        let events = self
            .api
            .list_all(
                first,
                &PollCursor::default(),
                &mut PollCursor::default(),
                "timeline",
                GITHUB_JSON,
                MAX_PAGES,
            )
            .await?
            .map(|list| list.items)
            .unwrap_or_default();
        Ok(events
            .iter()
            .filter(|event| event["event"].as_str() == Some("ready_for_review"))
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
        let first = format!("{}/pulls/{number}/reviews?per_page=100", self.base);
        let mut new_cursor = cursor.clone();
        let Some(Listing { items: all, .. }) = self
            .api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "reviews",
                GITHUB_JSON,
                MAX_PAGES,
            )
            .await?
        else {
            return Ok(None);
        };
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(Some(last_review(&all, author, &["PENDING"])))
    }
}

/// A listed pull request, as the review plan takes it.
fn listed(pull: &Value) -> Option<Listed> {
    Listed::of(pull, pull["draft"].as_bool().unwrap_or(false))
}
