//! The commits stream: commits that reach a tracked branch, as a `push`
//! webhook would carry them, and, when the source counts commit statuses
//! as deploys (`deploy_workflows`), the deploys its heads' statuses report.
//!
//! `GET /branches/{branch}` gives the head (`commit.id`); only a moved head
//! costs a listing, `GET /commits?sha=<head>&not=<old head>`, newest first
//! and page by page. `not` leaves out what the old head already reached;
//! an instance that ignores it is read down to the old head, and one that
//! no longer has the old head (history rewritten and collected, which
//! fails the listing) is read without it down to the old head's commit
//! time. Gitea's `/commits` takes no `since` (its parameters are `sha`,
//! `path`, `stat`, `verification`, `files`, `page`, `limit`, `not`, in
//! Gitea and Forgejo alike), so the first poll cuts the bootstrap window
//! here, by commit date.
//!
//! The statuses belong to this stream rather than one of their own: the
//! commits they are read for are the heads this stream finds, and its
//! watermark keeps them (Gitea has no list of deploys to poll instead). A
//! head is followed from when it is first seen until every configured
//! context succeeded on it or for a day (server clock), so that a deploy
//! that finishes after the push is still read; the newest ten at most.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{branch_path, GiteaPoller, EVENT_HEADER, GITEA_JSON, MAX_LIST_PAGES};
use crate::ledger::Delivery;
use crate::poll::api::Fetched;
use crate::poll::recorder::mapped;
use crate::poll::streams::{branch_head, head_cursor, BranchCommits};
use crate::poll::watermark::{server_time, OVERLAP_SECONDS};
use crate::poll::{forge, PollError};
use crate::store::PollCursor;

/// Heads whose statuses are followed for this long after they are seen.
const STATUS_HORIZON_SECONDS: i64 = 24 * 3600;
/// Heads followed at most (the newest).
const MAX_FOLLOWED: usize = 10;
/// Pages of one commit's statuses read at most.
const MAX_STATUS_PAGES: usize = 2;

/// The stream's watermark for one branch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct HeadMark {
    /// The head last read.
    sha: String,
    /// The newest commit time read (server epoch seconds).
    at: i64,
    /// Heads whose statuses are followed: SHA → when it was first seen as
    /// the head (server epoch seconds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deploys: BTreeMap<String, i64>,
}

impl BranchCommits for GiteaPoller {
    /// Polls the head of `branch`, records the commits it gained and the
    /// deploys its followed heads report.
    async fn branch_commits(
        &mut self,
        branch: &str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let (cursor, mark) = head_cursor::<HeadMark>(&self.rec, &self.target, branch);
        let url = format!("{}/branches/{}", self.base, branch_path(branch));
        let Some(answer) = branch_head(
            &mut self.api,
            &self.target,
            branch,
            &url,
            &cursor,
            "branch",
            GITEA_JSON,
        )
        .await?
        else {
            return Ok(());
        };
        let mut new_cursor = cursor.clone();
        let head = match answer {
            Fetched::NotModified => None,
            Fetched::Changed {
                body,
                etag,
                last_modified,
                ..
            } => {
                new_cursor.etag = etag;
                new_cursor.last_modified = last_modified;
                let object: Value =
                    serde_json::from_slice(&body).map_err(|e| PollError::json("branch", e))?;
                let sha = object["commit"]["id"].as_str().unwrap_or_default();
                if !is_sha(sha) {
                    return Err(PollError::missing("branch", "no commit id"));
                }
                Some(sha.to_owned())
            }
        };
        let mut new_mark = mark.clone();
        let deploys_wanted = !self.target.options.deploy_workflows.is_empty();
        if let Some(sha) = head.filter(|sha| mark.as_ref().map(|m| &m.sha) != Some(sha)) {
            let commits = self.new_commits(&sha, mark.as_ref()).await?;
            let at = commits
                .iter()
                .filter_map(commit_time)
                .max()
                .or(mark.as_ref().map(|m| m.at))
                .unwrap_or_else(|| self.api.server_now());
            deliveries.extend(forge::push_deliveries(
                &self.target,
                EVENT_HEADER,
                branch,
                &sha,
                &commits,
                // Gitea's push webhooks carry the author date.
                "/commit/author/date",
            ));
            let mut deploys = mark.map(|m| m.deploys).unwrap_or_default();
            if deploys_wanted {
                deploys.insert(sha.clone(), self.api.server_now());
            }
            new_mark = Some(HeadMark { sha, at, deploys });
        }
        // What the statuses gave is recorded with the head even when a
        // later request fails.
        let statuses = match new_mark.as_mut() {
            Some(mark) if deploys_wanted => {
                self.deploy_statuses(&mut mark.deploys, deliveries).await
            }
            Some(mark) => {
                mark.deploys.clear();
                Ok(())
            }
            None => Ok(()),
        };
        if let Some(mark) = &new_mark {
            new_cursor.watermark = serde_json::to_string(mark).ok();
        }
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        statuses
    }
}

impl GiteaPoller {
    /// The commits `head` gained since the last head read (`mark`), or in
    /// the bootstrap window; oldest first.
    async fn new_commits(
        &mut self,
        head: &str,
        mark: Option<&HeadMark>,
    ) -> Result<Vec<Value>, PollError> {
        let window = self.target.bootstrap_since(self.api.server_now());
        let Some(old) = mark else {
            return self.listed(head, None, window).await;
        };
        match self.listed(head, Some(&old.sha), window).await {
            Err(error @ PollError::Transient(_)) => {
                // A `not` naming a commit the instance no longer has fails
                // the listing: read down to the old head's time instead.
                let url = format!(
                    "{}/git/commits/{}?stat=false&verification=false&files=false",
                    self.base, old.sha
                );
                match self
                    .api
                    .get(&url, &PollCursor::default(), "commit", GITEA_JSON)
                    .await
                {
                    Err(PollError::Gone { .. }) => {
                        tracing::warn!(repo = %self.target.repo, "The last head read is gone (history rewritten); reading commits by date");
                        self.listed(head, None, old.at - OVERLAP_SECONDS).await
                    }
                    Ok(_) => Err(error),
                    Err(other) => Err(other),
                }
            }
            other => other,
        }
    }

    /// The commits from `head`, newest first page by page, without those
    /// `old` reaches (where the instance supports `not`), down to `old`
    /// itself or to the first commit older than `cut` (server epoch
    /// seconds); oldest first.
    async fn listed(
        &mut self,
        head: &str,
        old: Option<&str>,
        cut: i64,
    ) -> Result<Vec<Value>, PollError> {
        let not = old.map(|sha| format!("&not={sha}")).unwrap_or_default();
        let mut next = Some(format!(
            "{}/commits?sha={head}{not}&stat=false&verification=false&files=false&limit=50&page=1",
            self.base
        ));
        let none = PollCursor::default();
        let mut commits = Vec::new();
        let mut page = 0;
        'pages: while let Some(url) = next.take() {
            let mut ignored = PollCursor::default();
            let Some((items, link)) = self
                .api
                .list_page(&url, page, &none, &mut ignored, "commits", GITEA_JSON)
                .await?
            else {
                break;
            };
            page += 1;
            for commit in items {
                let reached_old = old.is_some() && commit["sha"].as_str() == old;
                if reached_old || commit_time(&commit).is_some_and(|t| t < cut) {
                    break 'pages;
                }
                commits.push(commit);
            }
            let link = self.api.same_origin(link);
            if page < MAX_LIST_PAGES {
                next = link;
            } else if link.is_some() {
                tracing::warn!(repo = %self.target.repo, head, pages = MAX_LIST_PAGES, "More new commits than a poll reads; older ones are not recorded");
            }
        }
        commits.reverse();
        Ok(commits)
    }

    /// Reads the statuses of the followed heads: each successful one of a
    /// `deploy_workflows` context is a deploy, mapped by the Gitea
    /// plugin's `status` rules. A head is let go once every configured
    /// context succeeded on it, or past the horizon (after a last read).
    async fn deploy_statuses(
        &mut self,
        deploys: &mut BTreeMap<String, i64>,
        deliveries: &mut Vec<Delivery>,
    ) -> Result<(), PollError> {
        while deploys.len() > MAX_FOLLOWED {
            let oldest = deploys
                .iter()
                .min_by_key(|(sha, seen)| (**seen, (*sha).clone()))
                .map(|(sha, _)| sha.clone());
            if let Some(sha) = oldest {
                deploys.remove(&sha);
            }
        }
        let now = self.api.server_now();
        let contexts = self.target.options.deploy_workflows.clone();
        for (sha, seen) in deploys.clone() {
            let first = format!("{}/statuses/{sha}?limit=50&page=1", self.base);
            let listed = self
                .api
                .list_unconditional(first, "statuses", GITEA_JSON, MAX_STATUS_PAGES)
                .await;
            let statuses = match listed {
                Err(PollError::Gone { .. }) => {
                    deploys.remove(&sha);
                    continue;
                }
                other => other?.map(|list| list.items).unwrap_or_default(),
            };
            let succeeded = |status: &Value, context: &str| {
                status["state"].as_str() == Some("success")
                    && status["context"].as_str() == Some(context)
            };
            for status in &statuses {
                let context = status["context"].as_str().unwrap_or_default();
                if succeeded(status, context) && self.target.options.is_deploy_workflow(&[context])
                {
                    deliveries.push(self.status_delivery(&sha, status));
                }
            }
            let all_deployed = contexts
                .iter()
                .all(|c| statuses.iter().any(|s| succeeded(s, c)));
            if all_deployed || now - seen >= STATUS_HORIZON_SECONDS {
                deploys.remove(&sha);
            }
        }
        Ok(())
    }

    /// A commit status as a `status` webhook would carry it.
    fn status_delivery(&self, sha: &str, status: &Value) -> Delivery {
        let payload = json!({
            "id": status["id"],
            "sha": sha,
            "context": status["context"],
            "state": status["state"],
            "description": status["description"],
            "target_url": status["target_url"],
            "created_at": status["created_at"],
            "updated_at": status["updated_at"],
            "repository": {"full_name": self.target.repo},
        });
        let id = status["id"].as_i64().unwrap_or_default().to_string();
        mapped(
            &self.target,
            EVENT_HEADER,
            "status",
            &payload,
            &[b"status", sha.as_bytes(), id.as_bytes()],
        )
    }
}

/// Whether `text` is a full commit id (SHA-1 or SHA-256 repositories).
fn is_sha(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A listed commit's commit (committer) time, server epoch seconds.
fn commit_time(commit: &Value) -> Option<i64> {
    server_time(&commit["created"]).or_else(|| server_time(&commit["commit"]["committer"]["date"]))
}
