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
mod pulls;

use super::api::Api;
use super::api::MAX_PAGES;
use super::forge::{self, Base, IssueList};
use super::reviews::PULLS_STREAM;
use super::{PollError, PollTarget, Poller, Recorder, Stream};
use crate::plugins::{gitea::Gitea, Plugin};
use crate::poll::{poller_new, poller_parts};
use crate::store::PollCursor;

/// The media type of the API's answers.
const GITEA_JSON: &str = "application/json";
/// The header Gitea's webhooks name their event in.
const EVENT_HEADER: &str = "x-gitea-event";
/// Pages read of one list in one poll at most: Gitea's pages hold 50
/// items, so a poll reaches as far as GitHub's 10 pages of 100.
const MAX_LIST_PAGES: usize = MAX_PAGES * 2;

/// Gitea's issue list: `type=issues` leaves pull requests out; newest
/// first, so a read cut at the page limit leaves the watermark.
const ISSUES: IssueList = IssueList {
    header: EVENT_HEADER,
    accept: GITEA_JSON,
    url: |base, label, since| {
        format!("{base}/issues?state=all&type=issues&labels={label}&since={since}&limit=50&page=1")
    },
    max_pages: MAX_LIST_PAGES,
    oldest_update_first: false,
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

    async fn poll_stream(&mut self, stream: Stream) -> Result<bool, PollError> {
        self.rec.load(self.target.stream("")).await?;
        let location = self.base.load(&self.rec, &self.target);
        self.rec
            .restore_waits(self.target.stream(PULLS_STREAM), &self.target.repo);
        let mut deliveries = Vec::new();
        let mut cursors = Vec::new();
        let result = match stream {
            Stream::Incidents => {
                forge::incidents(
                    &mut self.api,
                    &self.rec,
                    &self.target,
                    &self.base,
                    &ISSUES,
                    &mut deliveries,
                    &mut cursors,
                )
                .await
            }
            Stream::Commits => match self.branches(&mut cursors).await {
                Ok(branches) => {
                    let mut result = Ok(());
                    for branch in &branches {
                        result = self.commits(branch, &mut deliveries, &mut cursors).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                }
                Err(e) => Err(e),
            },
            Stream::PullRequests => match self.branches(&mut cursors).await {
                Ok(branches) => self.pulls(&branches, &mut cursors).await,
                Err(e) => Err(e),
            },
            // Gitea has no deployments API; deploys come from commit
            // statuses, read with the commits.
            Stream::Deployments => Ok(()),
        };
        self.base.follow(&mut self.api, &self.target);
        cursors.extend(self.base.moved_cursor(location));
        let changed = self
            .rec
            .commit(Gitea.source(), &mut deliveries, &mut cursors)
            .await?;
        result.map(|()| changed)
    }
}

poller_new!(GiteaPoller, target, { base: Base::new(&target), default_branch: None });

impl GiteaPoller {
    /// The tracked branches ([`forge::tracked_branches`]).
    async fn branches(&mut self, cursors: &mut Vec<PollCursor>) -> Result<Vec<String>, PollError> {
        forge::tracked_branches(
            &mut self.api,
            &self.rec,
            &self.target,
            &mut self.base,
            &mut self.default_branch,
            GITEA_JSON,
            cursors,
        )
        .await
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
