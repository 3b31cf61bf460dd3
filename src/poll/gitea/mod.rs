//! The Gitea and Forgejo poller (POLLING.md §3): incident issues, commits
//! of the tracked branches with, opt-in, the deploys their commit statuses
//! report, and open pull requests' reviews of one repository on an
//! instance's `/api/v1`.
//!
//! Issues, pushes and statuses are mapped by the Gitea plugin's own
//! `issues`, `push` and `status` rules, the API objects put in the
//! webhooks' shapes, so a fact both polled and delivered counts once.
//! Gitea has no API rate limit of its own (a proxy in front may answer 429
//! with `Retry-After`, which holds the repository until then) and no
//! conditional requests: every request is paid, so with `quota_per_hour`
//! the shared scheduler keeps the polls within the budget. Validators are
//! sent only where the server gave some. Pages are `limit=50` (the default
//! `[api] MAX_RESPONSE_ITEMS`, which the server clamps to silently) and a
//! list ends only where `Link` has no `rel="next"`, never on a short page.

mod commits;

use super::api::{Api, MAX_PAGES};
use super::forge::{forge_parts, Base, Dialect, Forge, IssueList};
use super::streams::Deployments;
use super::{PollError, PollTarget, Poller, Recorder};
use crate::ledger::Delivery;
use crate::poll::{poller_new, poller_parts};
use crate::store::PollCursor;

/// The media type of the API's answers.
const GITEA_JSON: &str = "application/json";
/// The header Gitea's webhooks name their event in.
const EVENT_HEADER: &str = "x-gitea-event";
/// Pages read of one list in one poll at most: Gitea's pages hold 50
/// items, so a poll reaches as far as GitHub's 10 pages of 100.
const MAX_LIST_PAGES: usize = MAX_PAGES * 2;

/// Gitea's API as the shared streams read it: pages of 50. The issue list
/// takes `type=issues`, which leaves pull requests out, and comes newest
/// first, so a read cut at the page limit leaves the watermark. The open
/// pull requests (`/pulls?state=open`) are filtered by `base.ref` here. A
/// draft is one whose `draft` says so (newer Gitea, Forgejo) or, where the
/// field is missing, whose title starts with `WIP:` or `[WIP]`, Gitea's
/// work-in-progress convention (and what its `draft` reports); it became
/// ready at its creation or at the last timeline `change_title` that took
/// the prefix off, at its creation where the instance has no timeline
/// (before Gitea 1.15). `PENDING` (an unsubmitted draft review) and
/// `REQUEST_REVIEW` (a request, not a review) are no reviews.
const GITEA: Dialect = Dialect {
    header: EVENT_HEADER,
    accept: GITEA_JSON,
    first_page: "limit=50&page=1",
    max_pages: MAX_LIST_PAGES,
    issues: IssueList {
        url: |base, label, since| {
            format!(
                "{base}/issues?state=all&type=issues&labels={label}&since={since}&limit=50&page=1"
            )
        },
        oldest_update_first: false,
    },
    open_pulls: |base, _branches| format!("{base}/pulls?state=open&limit=50&page=1"),
    draft: |pull| {
        pull["draft"]
            .as_bool()
            .unwrap_or_else(|| work_in_progress(pull["title"].as_str().unwrap_or_default()))
    },
    marks_ready: |event| {
        let title = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        event["type"].as_str() == Some("change_title")
            && work_in_progress(&title("old_title"))
            && !work_in_progress(&title("new_title"))
    },
    timeline_optional: true,
    not_reviews: &["PENDING", "REQUEST_REVIEW"],
};

/// Polls one repository of a Gitea or Forgejo instance.
pub struct GiteaPoller {
    target: PollTarget,
    api: Api,
    rec: Recorder,
    base: Base,
    /// The repository's default branch and when it was read.
    default_branch: Option<(String, tokio::time::Instant)>,
}

impl Poller for GiteaPoller {
    poller_parts!();
}

poller_new!(GiteaPoller, target, { base: Base::new(&target), default_branch: None });

impl Forge for GiteaPoller {
    const DIALECT: &'static Dialect = &GITEA;

    forge_parts!();
}

impl Deployments for GiteaPoller {
    /// Gitea has no deployments API; deploys come from commit statuses,
    /// read with the commits.
    async fn deployments(
        &mut self,
        _deliveries: &mut Vec<Delivery>,
        _cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        Ok(())
    }
}

/// A branch name as a path: each segment percent-encoded, the slashes
/// kept (Gitea routes `/branches/*`).
fn branch_path(branch: &str) -> String {
    branch
        .split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `text` percent-encoded as one path segment.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `title` marks a pull request as work in progress under Gitea's
/// default `[repository.pull-request] WORK_IN_PROGRESS_PREFIXES` (`WIP:`,
/// `[WIP]`, case-insensitive): its draft convention, for instances whose
/// pull requests have no `draft` field.
fn work_in_progress(title: &str) -> bool {
    let upper = title.to_ascii_uppercase();
    upper.starts_with("WIP:") || upper.starts_with("[WIP]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_paths_keep_their_slashes_and_encode_the_rest() {
        assert_eq!(branch_path("main"), "main");
        assert_eq!(branch_path("release/1.2"), "release/1.2");
        assert_eq!(branch_path("fix/a+b#c"), "fix/a%2Bb%23c");
    }

    #[test]
    fn wip_titles_are_drafts() {
        assert!(work_in_progress("WIP: new checkout"));
        assert!(work_in_progress("[wip] new checkout"));
        assert!(!work_in_progress("new checkout (WIP:)"));
        assert!(!work_in_progress("Wipe the cache"));
    }
}
