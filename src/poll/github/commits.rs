//! The commits stream: commits that reach a tracked branch, as a push
//! webhook would carry them (POLLING.md §1.4, §1.6).
//!
//! The branch head is asked for as a bare SHA with `If-None-Match:
//! "<sha>"`, which GitHub answers 304 (free) while the head has not moved;
//! only a moved head costs a compare of the old head with the new one. The
//! first poll of a branch reads its commits of the bootstrap window; a
//! compare that no longer finds the old head (history rewritten and
//! collected) falls back to the listing since the old head's time.

use serde_json::{json, Value};

use super::{
    mapped, rfc3339, server_time, Fetched, GithubPoller, PollError, BOOTSTRAP_SECONDS, GITHUB_JSON,
    MAX_PAGES, OVERLAP_SECONDS,
};
use crate::ledger::Delivery;
use crate::poll::HeadMark;
use crate::store::PollCursor;

const GITHUB_SHA: &str = "application/vnd.github.sha";

impl GithubPoller {
    /// Polls the head of `branch` and records the commits it gained.
    pub(super) async fn commits(
        &mut self,
        branch: &str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self
            .rec
            .cursor(self.target.stream(&format!("head|{branch}")));
        let mark: Option<HeadMark> = cursor
            .watermark
            .as_deref()
            .and_then(|w| serde_json::from_str(w).ok());
        let branch_path: String = form_urlencoded::byte_serialize(branch.as_bytes()).collect();
        let url = format!("{}/commits/{branch_path}", self.base);
        let head = match self.api.get(&url, &cursor, "branch_head", GITHUB_SHA).await {
            Err(PollError::Gone(_)) => {
                tracing::warn!(repo = %self.target.repo, branch, "Tracked branch not found; its commits are not polled");
                return Ok(());
            }
            other => other?,
        };
        let Fetched::Changed { body, .. } = head else {
            return Ok(());
        };
        let sha = String::from_utf8_lossy(&body).trim().to_owned();
        if sha.len() < 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PollError::Transient(format!(
                "branch_head: not a commit SHA ({} bytes)",
                body.len()
            )));
        }
        if mark.as_ref().is_some_and(|m| m.sha == sha) {
            return Ok(());
        }
        let commits = match &mark {
            Some(old) => match self.compare(&old.sha, &sha).await {
                Err(PollError::Gone(_)) => {
                    self.listed(&branch_path, old.at - OVERLAP_SECONDS).await?
                }
                other => other?,
            },
            None => {
                let since = self.api.server_now() - BOOTSTRAP_SECONDS;
                self.listed(&branch_path, since).await?
            }
        };
        let at = commits
            .iter()
            .filter_map(|c| server_time(&c["commit"]["committer"]["date"]))
            .max()
            .or(mark.as_ref().map(|m| m.at))
            .unwrap_or_else(|| self.api.server_now());
        for chunk in commits.chunks(100) {
            deliveries.push(self.push_delivery(branch, &sha, chunk));
        }
        cursors.push(PollCursor {
            // The validator is the SHA itself: it survives token rotation.
            etag: Some(format!("\"{sha}\"")),
            last_modified: None,
            watermark: serde_json::to_string(&HeadMark { sha, at }).ok(),
            ..cursor
        });
        Ok(())
    }

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
            let page: Value = serde_json::from_slice(&body)
                .map_err(|e| PollError::Transient(format!("compare: {e}")))?;
            commits.extend(page["commits"].as_array().cloned().unwrap_or_default());
            if pages < MAX_PAGES {
                next = link.filter(|u| u.starts_with(&self.target.api_url));
            }
        }
        Ok(commits)
    }

    /// The commits of the branch (`branch_path`, URL-encoded) with a
    /// commit date at or after `since` (server epoch seconds), oldest
    /// first.
    async fn listed(&mut self, branch_path: &str, since: i64) -> Result<Vec<Value>, PollError> {
        let url = format!(
            "{}/commits?sha={branch_path}&since={}&per_page=100",
            self.base,
            rfc3339(since)
        );
        let origin = self.target.api_url.clone();
        let mut commits = self
            .api
            .list_all(
                url,
                &PollCursor::default(),
                &mut PollCursor::default(),
                "commits",
                GITHUB_JSON,
                &origin,
            )
            .await?
            .unwrap_or_default();
        commits.reverse();
        Ok(commits)
    }

    /// Commits (API objects) as one `push` webhook of `branch` to `after`
    /// would carry them, mapped by the GitHub plugin; re-reading the same
    /// commits gives the same delivery.
    fn push_delivery(&self, branch: &str, after: &str, commits: &[Value]) -> Delivery {
        let items: Vec<Value> = commits
            .iter()
            .map(|c| {
                json!({
                    "id": c["sha"],
                    "timestamp": c["commit"]["committer"]["date"],
                    "url": c["html_url"],
                    "message": c["commit"]["message"],
                })
            })
            .collect();
        let payload = json!({
            "ref": format!("refs/heads/{branch}"),
            "after": after,
            "commits": items,
            "repository": {"full_name": self.target.repo, "default_branch": branch},
        });
        let first = commits
            .first()
            .and_then(|c| c["sha"].as_str())
            .unwrap_or("");
        let last = commits.last().and_then(|c| c["sha"].as_str()).unwrap_or("");
        mapped(
            &self.target,
            "x-github-event",
            "push",
            &payload,
            &[
                b"commits",
                branch.as_bytes(),
                first.as_bytes(),
                last.as_bytes(),
            ],
        )
    }
}
