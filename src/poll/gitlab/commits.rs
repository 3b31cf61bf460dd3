//! The commits stream: commits that reach a tracked branch, as a `Push
//! Hook` would carry them (POLLING.md §2).
//!
//! The branch is read each poll (GitLab has no free conditional read of a
//! head); only a moved head costs a compare of the old head with the new
//! one. The first poll of a branch reads its commits of the bootstrap
//! window; a compare that no longer finds the old head (history rewritten)
//! or that timed out on the server falls back to the listing since the old
//! head's time.

use serde_json::{json, Value};

use super::{GitlabPoller, EVENT_HEADER, GITLAB_JSON};
use crate::ledger::Delivery;
use crate::poll::api::Fetched;
use crate::poll::recorder::mapped;
use crate::poll::streams::{branch_head, head_cursor, BranchCommits};
use crate::poll::watermark::{rfc3339, server_time, HeadMark, OVERLAP_SECONDS};
use crate::poll::PollError;
use crate::store::PollCursor;

impl BranchCommits for GitlabPoller {
    /// Reads the head of `branch` and records the commits it gained.
    async fn branch_commits(
        &mut self,
        branch: &str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let (cursor, mark) = head_cursor::<HeadMark>(&self.rec, &self.target, branch);
        let branch_path: String = form_urlencoded::byte_serialize(branch.as_bytes()).collect();
        let url = format!("{}/repository/branches/{branch_path}", self.base());
        // GitLab has no conditional read of a head: never validators.
        let none = PollCursor::default();
        let Some(answer) = branch_head(
            &mut self.api,
            &self.target,
            branch,
            &url,
            &none,
            "branch",
            GITLAB_JSON,
        )
        .await?
        else {
            return Ok(());
        };
        let Fetched::Changed { body, .. } = answer else {
            return Err(PollError::not_modified("branch"));
        };
        let head: Value =
            serde_json::from_slice(&body).map_err(|e| PollError::json("branch", e))?;
        let sha = head["commit"]["id"].as_str().unwrap_or_default().to_owned();
        if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PollError::missing("branch", "no commit id"));
        }
        if mark.as_ref().is_some_and(|m| m.sha == sha) {
            return Ok(());
        }
        let commits = match &mark {
            Some(old) => match self.compare(&old.sha, &sha).await {
                Ok(Some(commits)) => commits,
                // The old head is gone, or the server gave up comparing.
                Ok(None) | Err(PollError::Gone { .. }) => {
                    self.listed(&branch_path, old.at - OVERLAP_SECONDS).await?
                }
                Err(e) => return Err(e),
            },
            None => {
                let since = self.target.bootstrap_since(self.api.server_now());
                self.listed(&branch_path, since).await?
            }
        };
        let at = commits
            .iter()
            .filter_map(|c| server_time(&c["committed_date"]))
            .max()
            .or_else(|| server_time(&head["commit"]["committed_date"]))
            .or(mark.as_ref().map(|m| m.at))
            .unwrap_or_else(|| self.api.server_now());
        for chunk in commits.chunks(100) {
            deliveries.push(self.push_delivery(branch, &sha, chunk));
        }
        cursors.push(PollCursor {
            etag: None,
            last_modified: None,
            watermark: serde_json::to_string(&HeadMark {
                sha,
                at,
                backfill: None,
            })
            .ok(),
            ..cursor
        });
        Ok(())
    }
}

impl GitlabPoller {
    /// The commits reachable from `new` and not from `old` (merge-base
    /// comparison); `None` when the server timed out comparing.
    async fn compare(&mut self, old: &str, new: &str) -> Result<Option<Vec<Value>>, PollError> {
        let url = format!("{}/repository/compare?from={old}&to={new}", self.base());
        let Fetched::Changed { body, .. } = self
            .api
            .get(&url, &PollCursor::default(), "compare", GITLAB_JSON)
            .await?
        else {
            return Err(PollError::not_modified("compare"));
        };
        let compare: Value =
            serde_json::from_slice(&body).map_err(|e| PollError::json("compare", e))?;
        if compare["compare_timeout"].as_bool() == Some(true) {
            tracing::warn!(repo = %self.target.repo, "Compare timed out on the server; listing the branch's commits instead");
            return Ok(None);
        }
        Ok(Some(
            compare["commits"].as_array().cloned().unwrap_or_default(),
        ))
    }

    /// The commits of the branch (`branch_path`, URL-encoded) committed at
    /// or after `since` (server epoch seconds), oldest first.
    async fn listed(&mut self, branch_path: &str, since: i64) -> Result<Vec<Value>, PollError> {
        let url = format!(
            "{}/repository/commits?ref_name={branch_path}&since={}&per_page=100",
            self.base(),
            rfc3339(since)
        );
        let mut commits = self.list(url, "commits").await?;
        commits.reverse();
        Ok(commits)
    }

    /// Commits (API objects) as one `Push Hook` of `branch` to `after`
    /// would carry them, mapped by the GitLab plugin; re-reading the same
    /// commits gives the same delivery.
    fn push_delivery(&self, branch: &str, after: &str, commits: &[Value]) -> Delivery {
        let mut project = self.project_payload();
        // The branch read is the one the push went to: tracked as the
        // source options say, like a push to the default branch otherwise.
        project["default_branch"] = json!(branch);
        let payload = push_hook(project, branch, after, commits);
        let first = commits.first().and_then(|c| c["id"].as_str()).unwrap_or("");
        let last = commits.last().and_then(|c| c["id"].as_str()).unwrap_or("");
        mapped(
            &self.target,
            EVENT_HEADER,
            "Push Hook",
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

/// Commits (API objects) as a `Push Hook` of `project` to `branch` would
/// list them: a commit's `timestamp` is its commit date.
fn push_hook(project: Value, branch: &str, after: &str, commits: &[Value]) -> Value {
    let items: Vec<Value> = commits
        .iter()
        .map(|c| {
            json!({
                "id": c["id"],
                "message": c["message"],
                "title": c["title"],
                "timestamp": c["committed_date"],
                "url": c["web_url"],
                "author": {"name": c["author_name"], "email": c["author_email"]},
            })
        })
        .collect();
    json!({
        "object_kind": "push",
        "event_name": "push",
        "ref": format!("refs/heads/{branch}"),
        "after": after,
        "commits": items,
        "total_commits_count": commits.len(),
        "project": project,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::ledger::Disposition;

    #[test]
    fn listed_commits_map_to_commits_of_the_project_at_their_commit_date() {
        let sha = "ed899a2f4b50b4370feeea94676502b42383c746";
        let commit = json!({
            "id": sha, "short_id": "ed899a2f", "title": "Replace sanitize with escape once",
            "message": "Replace sanitize with escape once\n", "author_name": "Ann",
            "author_email": "ann@example.com", "authored_date": "2026-08-11T07:00:00.000+02:00",
            "committed_date": "2026-08-11T09:00:00.000+02:00",
            "web_url": format!("https://gitlab.example/acme/shop/-/commit/{sha}")
        });
        let project = json!({"path_with_namespace": "acme/shop", "default_branch": "main"});
        let payload = push_hook(project, "main", sha, &[commit]);
        let delivery = mapped(
            &super::super::tests::target(),
            EVENT_HEADER,
            "Push Hook",
            &payload,
            &[b"x"],
        );
        let Disposition::Events(events) = delivery.disposition else {
            panic!("{:?}", delivery.disposition);
        };
        let [Event::Commit(commit)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(commit.commit.as_str(), sha);
        assert_eq!(commit.app.as_str(), "acme/shop");
        // 09:00 +02:00 is 07:00 UTC.
        assert_eq!(commit.time.seconds(), 1_786_431_600);
    }
}
