//! The merge-request stream (POLLING.md §5): open merge requests against
//! the tracked branches, and the approvals and reviewer states of those
//! that changed, to tell which wait for a first review and since when.
//!
//! Every request is paid, so the least is read: the open list each poll;
//! for a merge request that is new or whose `updated_at` or head moved (an
//! approval or a review comment bumps `updated_at`), and once an hour for
//! those still waiting, its approvals, and its reviewers' states only when
//! someone was asked to review it; its notes, for the last time it was
//! marked ready, once when it is first seen ready. A comment by someone who
//! was not asked to review, and who did not approve, is not seen.

use serde_json::Value;

use super::{GitlabPoller, GITLAB_JSON};
use crate::poll::api::{Api, Fetched};
use crate::poll::reviews;
use crate::poll::reviews::{Listed, PullReviews, PullState, PULLS_STREAM};
use crate::poll::watermark::server_time;
use crate::poll::PollError;
use crate::poll::{PollTarget, Recorder};
use crate::store::PollCursor;

/// Reviewer states that mean the reviewer reviewed (`/reviewers`);
/// `unreviewed` and `review_started` (a review not yet submitted) do not.
const REVIEWED_STATES: &[&str] = &["reviewed", "requested_changes", "approved", "unapproved"];

/// System notes that mark a merge request ready (current wording, and
/// the one before drafts were called drafts).
const READY_NOTES: &[&str] = &[
    "marked this merge request as **ready**",
    "unmarked as a **Work In Progress**",
];

impl GitlabPoller {
    /// Polls the open merge requests of `branches` and publishes the waits.
    pub(super) async fn merge_requests(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self.rec.cursor(self.target.stream(PULLS_STREAM));
        // One target branch on the server; several are filtered here.
        let target = match branches {
            [one] => format!(
                "&target_branch={}",
                form_urlencoded::byte_serialize(one.as_bytes()).collect::<String>()
            ),
            _ => String::new(),
        };
        let url = format!(
            "{}/merge_requests?state=opened{target}&order_by=updated_at&sort=desc&per_page=100",
            self.base()
        );
        let items = self.list(url, "merge_requests").await?;
        let listed: Vec<Listed> = items
            .iter()
            .filter(|mr| {
                let target = mr["target_branch"].as_str().unwrap_or_default();
                branches.iter().any(|b| b == target)
            })
            .filter_map(listed)
            .collect();
        self.asked = items
            .iter()
            .filter(|mr| mr["reviewers"].as_array().is_some_and(|r| !r.is_empty()))
            .filter_map(|mr| mr["iid"].as_u64())
            .collect();
        let listed_cursor = cursor.clone();
        reviews::refresh(self, cursor, listed_cursor, Some(listed), cursors).await
    }
}

impl PullReviews for GitlabPoller {
    fn parts(&mut self) -> (&mut Recorder, &Api, &PollTarget) {
        (&mut self.rec, &self.api, &self.target)
    }

    /// When merge request `iid` was last marked ready: the newest such
    /// system note, else its creation.
    async fn ready_at(&mut self, iid: u64, created: i64) -> Result<i64, PollError> {
        let url = format!(
            "{}/merge_requests/{iid}/notes?sort=desc&order_by=created_at&per_page=100",
            self.base()
        );
        let notes = match self.list(url, "notes").await {
            // Merged or deleted since it was listed.
            Err(PollError::Gone { .. }) => return Ok(created),
            other => other?,
        };
        Ok(last_ready(&notes).map_or(created, |at| at.max(created)))
    }

    /// The latest review of merge request `iid` by someone other than
    /// `author`: its approvals (when each was given, where GitLab tells)
    /// and, only when someone was asked to review it, its reviewers'
    /// states (a reviewed state, which has no time, counts as recent).
    /// `None` when it is gone since it was listed.
    async fn last_review(
        &mut self,
        iid: u64,
        author: &str,
        _cursors: &mut Vec<PollCursor>,
    ) -> Result<Option<Option<i64>>, PollError> {
        let url = format!("{}/merge_requests/{iid}/approvals", self.base());
        let approvals = match self
            .api
            .get(&url, &PollCursor::default(), "approvals", GITLAB_JSON)
            .await
        {
            Ok(Fetched::Changed { body, .. }) => serde_json::from_slice::<Value>(&body)
                .map_err(|e| PollError::json("approvals", e))?,
            Ok(Fetched::NotModified) => return Err(PollError::not_modified("approvals")),
            // Merged or deleted since it was listed.
            Err(PollError::Gone { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let approved = last_approval(&approvals, author);
        if approved.is_some() || !self.asked.contains(&iid) {
            return Ok(Some(approved));
        }
        let url = format!("{}/merge_requests/{iid}/reviewers", self.base());
        match self.list(url, "reviewers").await {
            Ok(reviewers) => Ok(Some(
                reviewed_by_reviewers(&reviewers, author).then_some(i64::MAX),
            )),
            Err(PollError::Gone { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A listed merge request, as the review plan takes it (`number` is its
/// `iid`).
fn listed(mr: &Value) -> Option<Listed> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    Some(Listed {
        number: mr["iid"].as_u64()?,
        created: server_time(&mr["created_at"])?,
        state: PullState {
            author: text(&mr["author"]["username"]),
            updated_at: text(&mr["updated_at"]),
            head: text(&mr["sha"]),
            // `work_in_progress` before GitLab 14.0.
            draft: mr["draft"]
                .as_bool()
                .or_else(|| mr["work_in_progress"].as_bool())
                .unwrap_or(false),
            ..PullState::default()
        },
    })
}

/// When the newest of `notes` marking the merge request ready was made
/// (server epoch seconds).
fn last_ready(notes: &[Value]) -> Option<i64> {
    notes
        .iter()
        .filter(|note| note["system"].as_bool() == Some(true))
        .filter(|note| {
            note["body"]
                .as_str()
                .is_some_and(|body| READY_NOTES.contains(&body.trim()))
        })
        .filter_map(|note| server_time(&note["created_at"]))
        .max()
}

/// The latest approval in `approvals` (`/approvals`) by someone other
/// than `author`, when it was given (`approved_at`, GitLab 17.x and later;
/// an approval without it counts as recent).
fn last_approval(approvals: &Value, author: &str) -> Option<i64> {
    approvals["approved_by"]
        .as_array()?
        .iter()
        .filter(|approval| {
            let by = approval["user"]["username"].as_str().unwrap_or_default();
            !by.is_empty() && by != author
        })
        .map(|approval| server_time(&approval["approved_at"]).unwrap_or(i64::MAX))
        .max()
}

/// Whether one of `reviewers` (`/reviewers`) other than `author` reviewed.
fn reviewed_by_reviewers(reviewers: &[Value], author: &str) -> bool {
    reviewers.iter().any(|reviewer| {
        let by = reviewer["user"]["username"].as_str().unwrap_or_default();
        let state = reviewer["state"].as_str().unwrap_or_default();
        !by.is_empty() && by != author && REVIEWED_STATES.contains(&state)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_last_approval_is_the_latest_by_someone_other_than_the_author() {
        let at = |t: &str| server_time(&json!(t)).unwrap();
        let by = |approvals: &[(&str, Option<&str>)]| json!({"approved_by": approvals.iter().map(|(who, at)| json!({"user": {"username": who}, "approved_at": at})).collect::<Vec<_>>()});
        let (early, late) = ("2026-08-11T11:00:00Z", "2026-08-11T13:00:00Z");
        assert_eq!(
            last_approval(&by(&[("bob", Some(early)), ("eve", Some(late))]), "ann"),
            Some(at(late))
        );
        assert_eq!(
            last_approval(&by(&[("bob", None)]), "ann"),
            Some(i64::MAX),
            "no time: counts as recent"
        );
        assert_eq!(last_approval(&by(&[("ann", Some(late))]), "ann"), None);
        assert_eq!(last_approval(&json!({"approved_by": []}), "ann"), None);
        assert_eq!(last_approval(&json!({}), "ann"), None);
    }

    #[test]
    fn a_reviewer_reviewed_once_past_unreviewed_and_a_started_review() {
        let reviewer = |who: &str, state: &str| json!({"user": {"username": who}, "state": state});
        for state in REVIEWED_STATES {
            assert!(
                reviewed_by_reviewers(&[reviewer("bob", state)], "ann"),
                "{state}"
            );
        }
        for state in ["unreviewed", "review_started"] {
            assert!(
                !reviewed_by_reviewers(&[reviewer("bob", state)], "ann"),
                "{state}"
            );
        }
        assert!(!reviewed_by_reviewers(
            &[reviewer("ann", "reviewed")],
            "ann"
        ));
    }

    #[test]
    fn the_last_ready_mark_is_the_newest_system_note_saying_so() {
        let note = |body: &str, system: bool, at: &str| json!({"body": body, "system": system, "created_at": at});
        let notes = [
            note(
                "marked this merge request as **ready**",
                true,
                "2026-08-11T10:00:00Z",
            ),
            note(
                "marked this merge request as **draft**",
                true,
                "2026-08-11T11:00:00Z",
            ),
            note(
                "marked this merge request as **ready**",
                false,
                "2026-08-11T13:00:00Z",
            ),
            note(
                "unmarked as a **Work In Progress**",
                true,
                "2026-08-11T12:00:00Z",
            ),
        ];
        assert_eq!(
            last_ready(&notes),
            server_time(&json!("2026-08-11T12:00:00Z"))
        );
        assert_eq!(last_ready(&notes[1..2]), None);
    }
}
