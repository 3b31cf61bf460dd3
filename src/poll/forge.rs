//! What the pollers of the GitHub-shaped APIs (GitHub, Gitea and Forgejo)
//! share: the repository's address as it moves, its tracked branches,
//! incident issues read since a watermark and mapped as `issues` webhooks,
//! open pull requests and their reviews, and commits mapped as one `push`
//! webhook. A poller of such an API is a [`Forge`]: it says how its API
//! differs (its [`Dialect`]) and reads its deployments and commits itself;
//! every other stream is read here, the same way for each.
//!
//! Builds deliveries and cursors only; committing them is the caller's.

use std::time::Duration;

use serde_json::{json, Value};

use super::api::{Api, Fetched, Listing};
use super::error::PollError;
use super::recorder::{mapped, Recorder};
use super::reviews::{self, last_review, Listed, PullReviews, PULLS_STREAM};
use super::settings::PollTarget;
use super::streams::{BranchCommits, Deployments, Streams};
use super::watermark::{rfc3339, server_time, settled, OVERLAP_SECONDS};
use crate::ledger::Delivery;
use crate::store::PollCursor;

/// How a GitHub-shaped API differs from GitHub's.
pub(super) struct Dialect {
    /// The header its webhooks name their event in (`x-github-event`, …).
    pub(super) header: &'static str,
    /// The media type of its JSON answers.
    pub(super) accept: &'static str,
    /// The query of a list's first page (its page size).
    pub(super) first_page: &'static str,
    /// Pages of one list read in one poll at most.
    pub(super) max_pages: usize,
    pub(super) issues: IssueList,
    /// The open pull requests' first page from the repository's address
    /// and the tracked branches (filtered by `base.ref` here in any case).
    pub(super) open_pulls: fn(base: &str, branches: &[String]) -> String,
    /// Whether a listed pull request is a draft.
    pub(super) draft: fn(pull: &Value) -> bool,
    /// Whether a timeline event marked the pull request ready for review.
    pub(super) marks_ready: fn(event: &Value) -> bool,
    /// Whether a timeline may be missing (404: an instance without
    /// timelines), a pull request then ready from its creation.
    pub(super) timeline_optional: bool,
    /// Review states that are no reviews.
    pub(super) not_reviews: &'static [&'static str],
}

/// The parts of a [`Forge`] poller the shared streams use.
pub(super) struct ForgeParts<'a> {
    pub(super) api: &'a mut Api,
    pub(super) rec: &'a mut Recorder,
    pub(super) target: &'a PollTarget,
    pub(super) base: &'a mut Base,
    /// The repository's default branch and when it was read.
    pub(super) default_branch: &'a mut Option<(String, tokio::time::Instant)>,
}

/// A poller of a GitHub-shaped API: its streams are read as [`Streams`]
/// says, its deployments and commits its own way.
pub(super) trait Forge: Deployments + BranchCommits {
    const DIALECT: &'static Dialect;

    fn forge(&mut self) -> ForgeParts<'_>;
}

/// [`Forge::forge`] of a poller with the fields `api`, `rec`, `target`,
/// `base` and `default_branch`.
macro_rules! forge_parts {
    () => {
        fn forge(&mut self) -> $crate::poll::forge::ForgeParts<'_> {
            $crate::poll::forge::ForgeParts {
                api: &mut self.api,
                rec: &mut self.rec,
                target: &self.target,
                base: &mut self.base,
                default_branch: &mut self.default_branch,
            }
        }
    };
}
pub(super) use forge_parts;

impl<F: Forge> Streams for F {
    fn books(&mut self) -> (&mut Recorder, &PollTarget) {
        let parts = self.forge();
        (parts.rec, parts.target)
    }

    /// Takes up the address an earlier poll saw the repository move to.
    async fn prepare(&mut self, _cursors: &mut Vec<PollCursor>) -> Result<(), PollError> {
        let parts = self.forge();
        parts.base.load(parts.rec, parts.target);
        Ok(())
    }

    /// Follows a move the stream's requests met, stored when it is new.
    fn conclude(&mut self, cursors: &mut Vec<PollCursor>) {
        let parts = self.forge();
        parts.base.follow(parts.api, parts.target);
        cursors.extend(parts.base.moved_cursor());
    }

    async fn tracked_branches(
        &mut self,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<Vec<String>, PollError> {
        let parts = self.forge();
        tracked_branches(parts, Self::DIALECT.accept, cursors).await
    }

    async fn incidents(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        incidents(self.forge(), Self::DIALECT, deliveries, cursors).await
    }

    /// The open pull requests against `branches` (several are filtered
    /// here), and the reviews of those the plan calls for.
    async fn pull_requests(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let dialect = Self::DIALECT;
        let parts = self.forge();
        let cursor = parts.rec.cursor(parts.target.stream(PULLS_STREAM));
        let mut new_cursor = cursor.clone();
        let first = (dialect.open_pulls)(parts.base.as_str(), branches);
        let repo = &parts.target.repo;
        let listed = parts
            .api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "pulls",
                dialect.accept,
                dialect.max_pages,
            )
            .await?
            .map(|list| {
                if list.next.is_some() {
                    tracing::warn!(repo = %repo, pages = dialect.max_pages, "More open pull requests than a poll reads; the rest are not gauged");
                }
                list.items
                    .iter()
                    .filter(|pull| {
                        let base_ref = pull["base"]["ref"].as_str().unwrap_or_default();
                        branches.iter().any(|b| b == base_ref)
                    })
                    .filter_map(|pull| Listed::of(pull, (dialect.draft)(pull)))
                    .collect()
            });
        reviews::refresh(self, cursor, new_cursor, listed, cursors).await
    }
}

impl<F: Forge> PullReviews for F {
    fn parts(&mut self) -> (&mut Recorder, &Api, &PollTarget) {
        let parts = self.forge();
        (parts.rec, parts.api, parts.target)
    }

    /// The later of its creation and the last timeline event that marked
    /// it ready ([`Dialect::marks_ready`]).
    async fn ready_at(&mut self, number: u64, created: i64) -> Result<i64, PollError> {
        let dialect = Self::DIALECT;
        let parts = self.forge();
        let first = format!(
            "{}/issues/{number}/timeline?{}",
            parts.base, dialect.first_page
        );
        let listed = parts
            .api
            .list_unconditional(first, "timeline", dialect.accept, dialect.max_pages)
            .await;
        let events = match listed {
            Err(PollError::Gone { .. }) if dialect.timeline_optional => return Ok(created),
            other => other?.map(|list| list.items).unwrap_or_default(),
        };
        Ok(events
            .iter()
            .filter(|event| (dialect.marks_ready)(event))
            .filter_map(|event| server_time(&event["created_at"]))
            .fold(created, i64::max))
    }

    /// The latest review of pull request `number` by someone other than
    /// `author`, from its reviews (conditional on their own ETag where the
    /// server gives one); `None` when they did not change.
    async fn last_review(
        &mut self,
        number: u64,
        author: &str,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<Option<Option<i64>>, PollError> {
        let dialect = Self::DIALECT;
        let parts = self.forge();
        let cursor = parts
            .rec
            .cursor(parts.target.stream(&format!("reviews|{number}")));
        let first = format!(
            "{}/pulls/{number}/reviews?{}",
            parts.base, dialect.first_page
        );
        let mut new_cursor = cursor.clone();
        let Some(Listing { items: all, .. }) = parts
            .api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "reviews",
                dialect.accept,
                dialect.max_pages,
            )
            .await?
        else {
            return Ok(None);
        };
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
        Ok(Some(last_review(&all, author, dialect.not_reviews)))
    }
}

/// How long the repository's default branch is trusted before it is asked
/// for again.
const DEFAULT_BRANCH_TTL: Duration = Duration::from_secs(3600);

/// `{api_url}/repos/{owner}/{name}`, or where the repository moved.
pub(super) struct Base {
    home: String,
    current: String,
    /// The stored address's cursor, as [`Base::load`] read it.
    location: Option<PollCursor>,
}

impl std::fmt::Display for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.current)
    }
}

impl Base {
    pub(super) fn new(target: &PollTarget) -> Base {
        let home = format!("{}/repos/{}", target.api_url, target.repo);
        Base {
            current: home.clone(),
            home,
            location: None,
        }
    }

    pub(super) fn as_str(&self) -> &str {
        &self.current
    }

    /// Takes up the address stored by an earlier poll (a move it saw),
    /// keeping its cursor for [`Base::moved_cursor`].
    pub(super) fn load(&mut self, rec: &Recorder, target: &PollTarget) {
        let location = rec.cursor(target.stream("location"));
        if let Some(moved) = &location.watermark {
            self.current.clone_from(moved);
        }
        self.location = Some(location);
    }

    /// The cursor to store when the address moved since [`Base::load`].
    pub(super) fn moved_cursor(&mut self) -> Option<PollCursor> {
        let location = self.location.take()?;
        let moved = location.watermark.as_deref() != Some(self.current.as_str())
            && self.current != self.home;
        moved.then(|| PollCursor {
            watermark: Some(self.current.clone()),
            ..location
        })
    }

    /// Follows a permanent redirect of the repository's address (a rename
    /// or a transfer answers 301 to its new address, POLLING.md §6 step 9)
    /// that the last requests through `api` met: later requests go there.
    pub(super) fn follow(&mut self, api: &mut Api, target: &PollTarget) {
        let Some((requested, to)) = api.take_moved() else {
            return;
        };
        let Some(rest) = requested.strip_prefix(self.current.as_str()) else {
            return;
        };
        let rest = rest.split('?').next().unwrap_or_default();
        let mut new = to;
        new.set_query(None);
        let new = new.as_str().trim_end_matches('/').to_owned();
        if let Some(base) = new.strip_suffix(rest) {
            if base.starts_with(&target.api_url) && base != self.current {
                tracing::warn!(repo = %target.repo, to = base, "The repository moved; polling its new address");
                self.current = base.to_owned();
            }
        }
    }
}

/// The tracked branches: the source's `branches`, else the configured
/// default branch, else the repository's `default_branch`, read from the
/// API (conditionally where the server gave validators) at most hourly
/// and kept in `cache`; its cursor joins `cursors` when it changed.
async fn tracked_branches(
    parts: ForgeParts<'_>,
    accept: &str,
    cursors: &mut Vec<PollCursor>,
) -> Result<Vec<String>, PollError> {
    let ForgeParts {
        api,
        rec,
        target,
        base,
        default_branch: cache,
    } = parts;
    if let Some(branches) = target.configured_branches() {
        return Ok(branches);
    }
    if let Some((branch, at)) = cache {
        if at.elapsed() < DEFAULT_BRANCH_TTL {
            return Ok(vec![branch.clone()]);
        }
    }
    let cursor = rec.cursor(target.stream("repository"));
    let url = base.as_str().to_owned();
    let branch = match api.get(&url, &cursor, "repository", accept).await? {
        Fetched::NotModified => cursor.watermark.clone(),
        Fetched::Changed {
            body,
            etag,
            last_modified,
            ..
        } => {
            let repository: Value =
                serde_json::from_slice(&body).map_err(|e| PollError::json("repository", e))?;
            let branch = repository["default_branch"].as_str().map(str::to_owned);
            let new_cursor = PollCursor {
                etag,
                last_modified,
                watermark: branch.clone(),
                ..cursor.clone()
            };
            if new_cursor != cursor {
                cursors.push(new_cursor);
            }
            branch
        }
    };
    let branch = branch
        .filter(|b| !b.is_empty())
        .ok_or_else(|| PollError::missing("repository", "no default_branch"))?;
    *cache = Some((branch.clone(), tokio::time::Instant::now()));
    Ok(vec![branch])
}

/// How a provider lists a repository's issues.
pub(super) struct IssueList {
    /// The first page's URL from the repository's address, one incident
    /// label (URL-encoded) and `since` (RFC 3339).
    pub(super) url: fn(base: &str, label: &str, since: &str) -> String,
    /// Whether the list comes oldest update first: a read cut at
    /// `max_pages` then still moves the watermark to the newest update
    /// read; otherwise the watermark stays until a poll reads to the end.
    pub(super) oldest_update_first: bool,
}

/// The incidents stream, one request chain per incident label: issues
/// updated since the watermark (less an overlap: an issue updated while
/// the pages were read is read again, and counted once). An issue yields
/// its creation and, once closed, its resolution, mapped by the provider's
/// `issues` rules; pull requests and issues without an incident label (a
/// server may drop a label filter it does not know) are left out.
async fn incidents(
    parts: ForgeParts<'_>,
    dialect: &Dialect,
    deliveries: &mut Vec<Delivery>,
    cursors: &mut Vec<PollCursor>,
) -> Result<(), PollError> {
    let ForgeParts {
        api,
        rec,
        target,
        base,
        ..
    } = parts;
    let list = &dialect.issues;
    for label in target.options.incident_labels.clone() {
        let cursor = rec.cursor(target.stream(&format!("incidents|{label}")));
        // The URL stays the same until new data is committed, so that its
        // validators keep answering 304 where the server honours them.
        let since = cursor
            .watermark
            .clone()
            .unwrap_or_else(|| rfc3339(target.bootstrap_since(api.server_now())));
        let label_param: String = form_urlencoded::byte_serialize(label.as_bytes()).collect();
        let first = (list.url)(base.as_str(), &label_param, &since);
        let mut new_cursor = cursor.clone();
        let listed = api
            .list_all(
                first,
                &cursor,
                &mut new_cursor,
                "issues",
                dialect.accept,
                dialect.max_pages,
            )
            .await?;
        let Some(listing) = listed else {
            continue;
        };
        // Sorted by update and paged by offset, an issue updated between
        // two pages may have made the next page skip one.
        let certain = if list.oldest_update_first {
            settled(&listing)
        } else {
            &listing.items
        };
        let mut newest = certain
            .iter()
            .filter(|issue| issue["pull_request"].is_null())
            .filter_map(|issue| server_time(&issue["updated_at"]))
            .max();
        for issue in &listing.items {
            if !issue["pull_request"].is_null() {
                continue;
            }
            let incident = issue["labels"].as_array().is_some_and(|labels| {
                labels.iter().any(|l| {
                    l["name"]
                        .as_str()
                        .is_some_and(|name| target.options.is_incident_label(name))
                })
            });
            if incident {
                deliveries.extend(issue_deliveries(target, dialect.header, issue));
            }
        }
        if listing.next.is_some() && !list.oldest_update_first {
            tracing::warn!(repo = %target.repo, label, pages = dialect.max_pages, "More incident issues than a poll reads; the watermark waits until a poll reads them all");
            newest = None;
        }
        if let Some(newest) = newest {
            // Server timestamps only (POLLING.md §6 step 11). A new
            // `since` is a new URL: its validators start afresh.
            let watermark = rfc3339(newest - OVERLAP_SECONDS);
            if Some(&watermark) != cursor.watermark.as_ref() {
                new_cursor.watermark = Some(watermark);
                new_cursor.etag = None;
                new_cursor.last_modified = None;
            }
        } else if cursor.watermark.is_none() {
            new_cursor.watermark = Some(since);
        }
        if new_cursor != cursor {
            cursors.push(new_cursor);
        }
    }
    Ok(())
}

/// An incident issue's creation and, when closed, its resolution, as
/// `issues` webhooks (`opened`, `closed`) would carry them.
fn issue_deliveries(target: &PollTarget, header: &'static str, issue: &Value) -> Vec<Delivery> {
    let number = issue["number"].as_i64().unwrap_or_default().to_string();
    let mut out = Vec::new();
    let closed = issue["state"].as_str() == Some("closed");
    for (action, at) in [("opened", "created_at"), ("closed", "closed_at")] {
        if action == "closed" && !closed {
            continue;
        }
        let when = issue[at].as_str().unwrap_or_default();
        let payload = json!({
            "action": action,
            "issue": issue,
            "repository": {"full_name": target.repo},
        });
        out.push(mapped(
            target,
            header,
            "issues",
            &payload,
            &[
                b"issue",
                number.as_bytes(),
                action.as_bytes(),
                when.as_bytes(),
            ],
        ));
    }
    out
}

/// [`push_delivery`] for each hundred of `commits` (oldest first), as a
/// push of more commits is sent.
pub(super) fn push_deliveries<'a>(
    target: &'a PollTarget,
    header: &'static str,
    branch: &'a str,
    after: &'a str,
    commits: &'a [Value],
    time: &'a str,
) -> impl Iterator<Item = Delivery> + 'a {
    commits
        .chunks(100)
        .map(move |chunk| push_delivery(target, header, branch, after, chunk, time))
}

/// Commits (API objects: `sha`, `html_url`, `commit.message`, and the
/// commit time at the JSON pointer `time`) as one `push` webhook of
/// `branch` to `after` would carry them, mapped by the provider's plugin;
/// re-reading the same commits gives the same delivery.
pub(super) fn push_delivery(
    target: &PollTarget,
    header: &'static str,
    branch: &str,
    after: &str,
    commits: &[Value],
    time: &str,
) -> Delivery {
    let items: Vec<Value> = commits
        .iter()
        .map(|c| {
            json!({
                "id": c["sha"],
                "timestamp": c.pointer(time).cloned().unwrap_or(Value::Null),
                "url": c["html_url"],
                "message": c["commit"]["message"],
            })
        })
        .collect();
    let payload = json!({
        "ref": format!("refs/heads/{branch}"),
        "after": after,
        "commits": items,
        "repository": {"full_name": target.repo, "default_branch": branch},
    });
    let first = commits
        .first()
        .and_then(|c| c["sha"].as_str())
        .unwrap_or("");
    let last = commits.last().and_then(|c| c["sha"].as_str()).unwrap_or("");
    mapped(
        target,
        header,
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
