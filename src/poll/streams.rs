//! One poll of one stream, the same for every provider: the stored states
//! loaded, what every stream needs read first (GitLab's project, the
//! forges' stored address), the stream read, and what it read committed
//! with its new states in one transaction, even when the read failed part
//! way (what was read stays read). What differs is each provider's
//! [`Streams`]; the steps of the commits stream that every provider takes
//! (a branch's stored head, the answer for a branch that is gone) are here
//! too.

use std::future::Future;

use serde::de::DeserializeOwned;

use super::api::{Api, Fetched};
use super::error::PollError;
use super::recorder::Recorder;
use super::reviews::PULLS_STREAM;
use super::schedule::Stream;
use super::settings::PollTarget;
use super::watermark::mark_of;
use crate::ledger::Delivery;
use crate::store::PollCursor;

/// The deployments stream, as each provider reads it.
pub(in crate::poll) trait Deployments: Send {
    fn deployments(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<(), PollError>> + Send;
}

/// The commits stream of one branch, as each provider reads it.
pub(in crate::poll) trait BranchCommits: Send {
    /// The commits that reached `branch`.
    fn branch_commits(
        &mut self,
        branch: &str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<(), PollError>> + Send;
}

/// What a provider reads for each stream; new states join `cursors`, facts
/// join `deliveries`.
pub(in crate::poll) trait Streams: Deployments + BranchCommits {
    /// The poller's recorder and target.
    fn books(&mut self) -> (&mut Recorder, &PollTarget);

    /// What every stream needs, read before any of them.
    fn prepare(
        &mut self,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<(), PollError>> + Send;

    /// After a stream was read, whether it failed or not.
    fn conclude(&mut self, cursors: &mut Vec<PollCursor>);

    /// The branches whose commits and pull requests are read.
    fn tracked_branches(
        &mut self,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<Vec<String>, PollError>> + Send;

    fn incidents(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<(), PollError>> + Send;

    /// The open pull (merge) requests against `branches` and their reviews.
    fn pull_requests(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> impl Future<Output = Result<(), PollError>> + Send;
}

/// Polls `stream` of `poller`'s repository and records what it read;
/// `Ok(true)` when something changed.
pub(in crate::poll) async fn poll_stream(
    poller: &mut impl Streams,
    stream: Stream,
) -> Result<bool, PollError> {
    let (rec, target) = poller.books();
    let prefix = target.stream("");
    let pulls = target.stream(PULLS_STREAM);
    let repo = target.repo.clone();
    rec.load(prefix).await?;
    rec.restore_waits(pulls, &repo);
    let mut deliveries = Vec::new();
    let mut cursors = Vec::new();
    let result = match poller.prepare(&mut cursors).await {
        Ok(()) => read(poller, stream, &mut deliveries, &mut cursors).await,
        Err(e) => Err(e),
    };
    poller.conclude(&mut cursors);
    let (rec, target) = poller.books();
    let source = target.provider.plugin().source();
    let changed = rec.commit(source, &mut deliveries, &mut cursors).await?;
    result.map(|()| changed)
}

/// Reads `stream`; the commits of each tracked branch in turn, up to the
/// first that fails.
async fn read(
    poller: &mut impl Streams,
    stream: Stream,
    deliveries: &mut Vec<Delivery>,
    cursors: &mut Vec<PollCursor>,
) -> Result<(), PollError> {
    match stream {
        Stream::Deployments => poller.deployments(deliveries, cursors).await,
        Stream::Incidents => poller.incidents(deliveries, cursors).await,
        Stream::Commits => {
            for branch in poller.tracked_branches(cursors).await? {
                poller.branch_commits(&branch, deliveries, cursors).await?;
            }
            Ok(())
        }
        Stream::PullRequests => {
            let branches = poller.tracked_branches(cursors).await?;
            poller.pull_requests(&branches, cursors).await
        }
    }
}

/// The commits stream's state of `branch` as the poll began, and the head
/// mark it keeps (`M`: the provider's).
pub(in crate::poll) fn head_cursor<M: DeserializeOwned>(
    rec: &Recorder,
    target: &PollTarget,
    branch: &str,
) -> (PollCursor, Option<M>) {
    let cursor = rec.cursor(target.stream(&format!("head|{branch}")));
    let mark = mark_of(&cursor);
    (cursor, mark)
}

/// The answer for `branch`'s head at `url` (conditional on `validators`);
/// `None` when the branch is gone, which is logged: its commits are not
/// polled.
pub(in crate::poll) async fn branch_head(
    api: &mut Api,
    target: &PollTarget,
    branch: &str,
    url: &str,
    validators: &PollCursor,
    endpoint: &'static str,
    accept: &str,
) -> Result<Option<Fetched>, PollError> {
    match api.get(url, validators, endpoint, accept).await {
        Err(PollError::Gone { .. }) => {
            tracing::warn!(repo = %target.repo, branch, "Tracked branch not found; its commits are not polled");
            Ok(None)
        }
        other => other.map(Some),
    }
}
