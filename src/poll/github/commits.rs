//! The commits stream: commits that reach a tracked branch, as a push
//! webhook would carry them (POLLING.md §1.4, §1.6).
//!
//! The branch head is asked for as a bare SHA with `If-None-Match:
//! "<sha>"`, which GitHub answers 304 (free) while the head has not moved;
//! only a moved head costs a compare of the old head with the new one. The
//! first poll of a branch reads its commits of the bootstrap window; a
//! compare that no longer finds the old head (history rewritten and
//! collected) falls back to the listing since the old head's time.

use serde_json::Value;

use super::{Fetched, GithubPoller, PollError, GITHUB_JSON, MAX_PAGES};
use crate::ledger::Delivery;
use crate::plugins::{github::GitHub, Plugin};
use crate::poll::error::Failure;
use crate::poll::forge;
use crate::poll::streams::{branch_head, head_cursor, BranchCommits};
use crate::poll::watermark::{rfc3339, server_time, HeadMark, OVERLAP_SECONDS};
use crate::store::PollCursor;

const GITHUB_SHA: &str = "application/vnd.github.sha";

impl BranchCommits for GithubPoller {
    /// Polls the head of `branch` and records the commits it gained.
    async fn branch_commits(
        &mut self,
        branch: &str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let (cursor, mut mark) = head_cursor::<HeadMark>(&self.rec, &self.target, branch);
        let branch_path: String = form_urlencoded::byte_serialize(branch.as_bytes()).collect();
        if let Some(unfinished) = mark.as_mut().filter(|m| m.backfill.is_some()) {
            self.backfill_commits(branch, unfinished, &cursor, deliveries, cursors)
                .await?;
        }
        let url = format!("{}/commits/{branch_path}", self.base);
        let head = branch_head(
            &mut self.api,
            &self.target,
            branch,
            &url,
            &cursor,
            "branch_head",
            GITHUB_SHA,
        )
        .await?;
        let Some(Fetched::Changed { body, .. }) = head else {
            return Ok(());
        };
        let sha = String::from_utf8_lossy(&body).trim().to_owned();
        if sha.len() < 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PollError::Transient(Failure::NotASha {
                endpoint: "branch_head",
                bytes: body.len(),
            }));
        }
        if mark.as_ref().is_some_and(|m| m.sha == sha) {
            return Ok(());
        }
        let mut backfill = mark.as_ref().and_then(|m| m.backfill.clone());
        let commits = match &mark {
            Some(old) => match self.compare(&old.sha, &sha).await {
                Err(PollError::Gone { .. }) => {
                    self.listed(branch, &branch_path, old.at - OVERLAP_SECONDS)
                        .await?
                        .0
                }
                other => other?,
            },
            None => {
                let since = self.target.bootstrap_since(self.api.server_now());
                let (commits, rest) = self.listed(branch, &branch_path, since).await?;
                backfill = rest;
                commits
            }
        };
        let at = commits
            .iter()
            .filter_map(|c| server_time(&c["commit"]["committer"]["date"]))
            .max()
            .or(mark.as_ref().map(|m| m.at))
            .unwrap_or_else(|| self.api.server_now());
        deliveries.extend(forge::push_deliveries(
            &self.target,
            "x-github-event",
            branch,
            &sha,
            &commits,
            "/commit/committer/date",
        ));
        cursors.push(PollCursor {
            // The validator is the SHA itself: it survives token rotation.
            etag: Some(format!("\"{sha}\"")),
            last_modified: None,
            watermark: serde_json::to_string(&HeadMark { sha, at, backfill }).ok(),
            ..cursor
        });
        Ok(())
    }
}

impl GithubPoller {
    /// The commits reachable from `new` and not from `old`, oldest first.
    async fn compare(&mut self, old: &str, new: &str) -> Result<Vec<Value>, PollError> {
        let mut next = Some(format!("{}/compare/{old}...{new}?per_page=100", self.base));
        let mut commits = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            let Fetched::Changed {
                body, next: link, ..
            } = self
                .api
                .get(&url, &PollCursor::default(), "compare", GITHUB_JSON)
                .await?
            else {
                break;
            };
            pages += 1;
            let page: Value =
                serde_json::from_slice(&body).map_err(|e| PollError::json("compare", e))?;
            commits.extend(page["commits"].as_array().cloned().unwrap_or_default());
            if pages < MAX_PAGES {
                next = self.api.same_origin(link);
            }
        }
        Ok(commits)
    }

    /// Goes on with a first listing that stopped at [`MAX_PAGES`]: at most
    /// as many pages again, each committed with the place reached, so an
    /// interrupted backfill resumes there.
    async fn backfill_commits(
        &mut self,
        branch: &str,
        mark: &mut HeadMark,
        cursor: &PollCursor,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        for _ in 0..MAX_PAGES {
            let Some(url) = mark.backfill.clone() else {
                break;
            };
            let mut ignored = PollCursor::default();
            let Some((items, link)) = self
                .api
                .list_page(
                    &url,
                    1,
                    &PollCursor::default(),
                    &mut ignored,
                    "commits",
                    GITHUB_JSON,
                )
                .await?
            else {
                break;
            };
            mark.backfill = self.api.same_origin(link);
            if !items.is_empty() {
                deliveries.push(forge::push_delivery(
                    &self.target,
                    "x-github-event",
                    branch,
                    &mark.sha,
                    &items.into_iter().rev().collect::<Vec<_>>(),
                    "/commit/committer/date",
                ));
            }
            cursors.push(PollCursor {
                watermark: serde_json::to_string(&*mark).ok(),
                ..cursor.clone()
            });
            self.rec
                .commit(GitHub.source(), deliveries, cursors)
                .await?;
        }
        if mark.backfill.is_none() {
            tracing::info!(repo = %self.target.repo, branch, "Commits backfill done");
        }
        Ok(())
    }

    /// The commits of `branch` with a commit date at or after `since`
    /// (server epoch seconds), oldest first, at most [`MAX_PAGES`] pages;
    /// and the next page's `Link` when there are more.
    async fn listed(
        &mut self,
        branch: &str,
        branch_path: &str,
        since: i64,
    ) -> Result<(Vec<Value>, Option<String>), PollError> {
        let first = format!(
            "{}/commits?sha={branch_path}&since={}&per_page=100",
            self.base,
            rfc3339(since)
        );
        let listing = self
            .api
            .list_unconditional(first, "commits", GITHUB_JSON, MAX_PAGES)
            .await?
            .unwrap_or_default();
        if listing.next.is_some() {
            tracing::info!(repo = %self.target.repo, branch, pages = MAX_PAGES, "Branch history longer than a poll reads; the next polls go on");
        }
        let mut commits = listing.items;
        commits.reverse();
        Ok((commits, listing.next))
    }
}
