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

use super::{server_time, GithubPoller, PollError, GITHUB_JSON};
use crate::poll::reviews::{reviewed, Listed, PullState, PullsMark, ReviewPlan};
use crate::store::PollCursor;

/// How often the reviews of a waiting pull request are read although its
/// listing did not change.
const REVIEW_RECHECK_SECONDS: i64 = 3600;

impl GithubPoller {
    /// Polls the open pull requests of `branches` and publishes the waits.
    pub(super) async fn pulls(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self.rec.cursor(self.target.stream("pulls"));
        let mut mark: PullsMark = cursor
            .watermark
            .as_deref()
            .and_then(|w| serde_json::from_str(w).ok())
            .unwrap_or_default();
        let mut new_cursor = cursor.clone();
        // One base on the server; several are filtered here.
        let base = match branches {
            [one] => format!(
                "&base={}",
                form_urlencoded::byte_serialize(one.as_bytes()).collect::<String>()
            ),
            _ => String::new(),
        };
        let url = format!(
            "{}/pulls?state=open{base}&sort=updated&direction=desc&per_page=100",
            self.base
        );
        let origin = self.target.api_url.clone();
        let listed = self
            .api
            .list_all(url, &cursor, &mut new_cursor, "pulls", GITHUB_JSON, &origin)
            .await?
            .map(|items| {
                items
                    .iter()
                    .filter(|pull| {
                        let base_ref = pull["base"]["ref"].as_str().unwrap_or_default();
                        branches.iter().any(|b| b == base_ref)
                    })
                    .filter_map(|pull| {
                        Some(Listed {
                            number: pull["number"].as_u64()?,
                            created: server_time(&pull["created_at"])?,
                            state: PullState {
                                author: pull["user"]["login"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                updated_at: pull["updated_at"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                head: pull["head"]["sha"].as_str().unwrap_or_default().to_owned(),
                                draft: pull["draft"].as_bool().unwrap_or(false),
                                ..PullState::default()
                            },
                        })
                    })
                    .collect()
            });
        let now = self.api.server_now();
        let ReviewPlan {
            mut open,
            ready,
            review,
        } = mark.plan(listed, now, REVIEW_RECHECK_SECONDS);
        for (number, created) in ready {
            let ready_at = self.ready_at(number, created).await?;
            if let Some(state) = open.get_mut(&number) {
                state.ready_at = ready_at;
            }
        }
        for number in review {
            let Some(state) = open.get_mut(&number) else {
                continue;
            };
            let author = state.author.clone();
            if let Some(reviewed) = self
                .reviews(number, &author, state.ready_at, cursors)
                .await?
            {
                state.reviewed = reviewed;
            }
            state.checked_at = now;
        }
        for number in mark.replace(open) {
            self.rec
                .forget
                .push(self.target.stream(&format!("reviews|{number}")));
        }
        mark.publish(&self.rec.metrics, &self.target.repo, self.api.skew());
        new_cursor.watermark = Some(serde_json::to_string(&mark).unwrap_or_default());
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(())
    }

    /// When pull request `number` last became ready for review: the last
    /// `ready_for_review` of its timeline, else its creation.
    async fn ready_at(&mut self, number: u64, created: i64) -> Result<i64, PollError> {
        let url = format!("{}/issues/{number}/timeline?per_page=100", self.base);
        let origin = self.target.api_url.clone();
        let events = self
            .api
            .list_all(
                url,
                &PollCursor::default(),
                &mut PollCursor::default(),
                "timeline",
                GITHUB_JSON,
                &origin,
            )
            .await?
            .unwrap_or_default();
        Ok(events
            .iter()
            .filter(|event| event["event"].as_str() == Some("ready_for_review"))
            .filter_map(|event| server_time(&event["created_at"]))
            .fold(created, i64::max))
    }

    /// Whether pull request `number` was reviewed since `since`, from its
    /// reviews (conditional on their own ETag); `None` when unchanged.
    async fn reviews(
        &mut self,
        number: u64,
        author: &str,
        since: i64,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<Option<bool>, PollError> {
        let cursor = self
            .rec
            .cursor(self.target.stream(&format!("reviews|{number}")));
        let url = format!("{}/pulls/{number}/reviews?per_page=100", self.base);
        let mut new_cursor = cursor.clone();
        let origin = self.target.api_url.clone();
        let Some(all) = self
            .api
            .list_all(
                url,
                &cursor,
                &mut new_cursor,
                "reviews",
                GITHUB_JSON,
                &origin,
            )
            .await?
        else {
            return Ok(None);
        };
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(Some(reviewed(&all, author, since, &["PENDING"])))
    }
}
