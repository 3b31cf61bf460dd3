//! The pull-request stream (POLLING.md §5): open pull requests against the
//! tracked branches, and the reviews of those that changed, to tell which
//! wait for a first review and since when.
//!
//! Cheapest first: the open list is conditional (mostly 304s, which cost no
//! quota); reviews are read only for a pull request that is new or whose
//! `updated_at` or head moved (a review bumps `updated_at`), and once an
//! hour for those still waiting, each conditional on its own ETag; the
//! timeline, for the last `ready_for_review`, once for a pull request that
//! waits, a few a poll. What the stream knows is kept in its cursor, so a
//! restart answers 304 and still knows every wait.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{server_time, GithubPoller, PollError, GITHUB_JSON, MAX_PAGES};
use crate::poll::reviews::{last_review, PullState, PullsMark};
use crate::store::PollCursor;

/// How often the reviews of a waiting pull request are read although its
/// listing did not change.
const REVIEW_RECHECK_SECONDS: i64 = 3600;
/// Timelines read in one poll at most.
const TIMELINES_PER_POLL: usize = 20;

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
        let mut next = Some(format!(
            "{}/pulls?state=open{base}&sort=updated&direction=desc&per_page=100",
            self.base
        ));
        let mut listed: Option<Vec<Value>> = None;
        let mut page = 0;
        while let Some(url) = next.take() {
            let Some((items, link_next)) = self
                .api
                .list_page(&url, page, &cursor, &mut new_cursor, "pulls", GITHUB_JSON)
                .await?
            else {
                break;
            };
            page += 1;
            listed.get_or_insert_with(Vec::new).extend(items);
            if page < MAX_PAGES {
                next = link_next.filter(|u| u.starts_with(&self.target.api_url));
            }
        }
        let now = self.api.server_now();
        let mut open = BTreeMap::new();
        let mut review = Vec::new();
        match listed {
            // Unchanged: the waiting ones are re-read now and then.
            None => {
                for (number, state) in &mark.open {
                    if state.waits() && now - state.checked_at >= REVIEW_RECHECK_SECONDS {
                        review.push(*number);
                    }
                }
                open = mark.open.clone();
            }
            Some(items) => {
                for pull in items {
                    let (Some(number), Some(created)) =
                        (pull["number"].as_u64(), server_time(&pull["created_at"]))
                    else {
                        continue;
                    };
                    let base_ref = pull["base"]["ref"].as_str().unwrap_or_default();
                    if !branches.iter().any(|b| b == base_ref) {
                        continue;
                    }
                    let state = PullState {
                        author: pull["user"]["login"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        updated_at: pull["updated_at"].as_str().unwrap_or_default().to_owned(),
                        head: pull["head"]["sha"].as_str().unwrap_or_default().to_owned(),
                        draft: pull["draft"].as_bool().unwrap_or(false),
                        ..PullState::default()
                    };
                    let previous = mark.open.get(&number);
                    let state = match previous {
                        Some(p) if p.updated_at == state.updated_at && p.head == state.head => {
                            if p.waits() && now - p.checked_at >= REVIEW_RECHECK_SECONDS {
                                review.push(number);
                            }
                            p.clone()
                        }
                        _ if state.draft => state,
                        // Ready before and still: a push or an edit does
                        // not undo a review; its reviews are read again.
                        Some(p) if !p.draft => {
                            review.push(number);
                            PullState {
                                ready_at: p.ready_at,
                                ready_known: p.ready_known,
                                last_review: p.last_review,
                                ..state
                            }
                        }
                        // First seen ready, or no longer a draft: when it
                        // became ready is read from its timeline.
                        _ => {
                            review.push(number);
                            PullState {
                                ready_at: created,
                                ready_known: false,
                                last_review: previous.and_then(|p| p.last_review),
                                ..state
                            }
                        }
                    };
                    open.insert(number, state);
                }
            }
        }
        for number in review {
            let Some(state) = open.get_mut(&number) else {
                continue;
            };
            let author = state.author.clone();
            if let Some(last) = self.reviews(number, &author, cursors).await? {
                state.last_review = last;
            }
            state.checked_at = now;
        }
        for number in mark.open.keys().filter(|n| !open.contains_key(n)) {
            self.rec
                .forget
                .push(self.target.stream(&format!("reviews|{number}")));
        }
        mark.open = open;
        // When each ready one became so: a few timelines a poll, the others
        // at the next polls (and not counted as waiting until then).
        for (number, created) in mark.ready_unknown(TIMELINES_PER_POLL) {
            let ready_at = self.ready_at(number, created).await?;
            if let Some(state) = mark.open.get_mut(&number) {
                state.ready_at = ready_at;
                state.ready_known = true;
            }
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
        let mut next = Some(format!(
            "{}/issues/{number}/timeline?per_page=100",
            self.base
        ));
        let mut ready = created;
        let mut page = 0;
        let none = PollCursor::default();
        while let Some(url) = next.take() {
            let mut ignored = PollCursor::default();
            let Some((events, link_next)) = self
                .api
                .list_page(&url, page, &none, &mut ignored, "timeline", GITHUB_JSON)
                .await?
            else {
                break;
            };
            page += 1;
            for event in events {
                if event["event"].as_str() == Some("ready_for_review") {
                    if let Some(at) = server_time(&event["created_at"]) {
                        ready = ready.max(at);
                    }
                }
            }
            if page < MAX_PAGES {
                next = link_next.filter(|u| u.starts_with(&self.target.api_url));
            }
        }
        Ok(ready)
    }

    /// The latest review of pull request `number` by someone other than
    /// `author`, from its reviews (conditional on their own ETag); `None`
    /// when they did not change.
    async fn reviews(
        &mut self,
        number: u64,
        author: &str,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<Option<Option<i64>>, PollError> {
        let cursor = self
            .rec
            .cursor(self.target.stream(&format!("reviews|{number}")));
        let url = format!("{}/pulls/{number}/reviews?per_page=100", self.base);
        let mut new_cursor = cursor.clone();
        let mut next = Some(url);
        let mut page = 0;
        let mut all = None;
        while let Some(url) = next.take() {
            let Some((items, link_next)) = self
                .api
                .list_page(&url, page, &cursor, &mut new_cursor, "reviews", GITHUB_JSON)
                .await?
            else {
                break;
            };
            page += 1;
            all.get_or_insert_with(Vec::new).extend(items);
            if page < MAX_PAGES {
                next = link_next.filter(|u| u.starts_with(&self.target.api_url));
            }
        }
        let Some(all) = all else {
            return Ok(None);
        };
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(Some(last_review(&all, author, &["PENDING"])))
    }
}
