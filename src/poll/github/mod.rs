//! The GitHub poller (POLLING.md §1): deployments and their statuses,
//! incident issues, commits of the tracked branches and open pull
//! requests' reviews of one repository.
//!
//! A status or an issue is mapped by the GitHub plugin's own
//! `deployment_status` / `issues` rules (the API objects are the webhook's
//! objects), commits by its `push` rules; every request is conditional on
//! the validators stored for its URL, and a 304 costs no quota.

mod commits;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::MAX_PAGES;
use super::api::{Api, Fetched};
use super::forge::{forge_parts, Base, Dialect, Forge, IssueList};
use super::recorder::mapped;
use super::streams::Deployments;
use super::watermark::{mark_of, server_time};
use super::{PollError, PollTarget, Poller, Recorder};
use crate::ledger::Delivery;
use crate::plugins::{github::GitHub, Plugin};
use crate::poll::{poller_new, poller_parts};
use crate::store::PollCursor;

/// The media type of the REST API's JSON answers.
const GITHUB_JSON: &str = "application/vnd.github+json";
/// Deployments younger than this have their statuses followed.
const STATUS_HORIZON_SECONDS: i64 = 24 * 3600;
/// GitHub's API as the shared streams read it: pages of 100; issues
/// oldest update first; open pull requests newest update first, of one
/// base on the server; a draft says so; a pull request became ready at its
/// timeline's last `ready_for_review`; a pending review is a draft nobody
/// else sees.
const GITHUB: Dialect = Dialect {
    header: "x-github-event",
    accept: GITHUB_JSON,
    first_page: "per_page=100",
    max_pages: MAX_PAGES,
    issues: IssueList {
        url: |base, label, since| {
            format!("{base}/issues?state=all&labels={label}&sort=updated&direction=asc&per_page=100&since={since}")
        },
        oldest_update_first: true,
    },
    open_pulls: |base, branches| {
        // One base on the server; several are filtered here.
        let base_param = match branches {
            [one] => format!(
                "&base={}",
                form_urlencoded::byte_serialize(one.as_bytes()).collect::<String>()
            ),
            _ => String::new(),
        };
        format!("{base}/pulls?state=open{base_param}&sort=updated&direction=desc&per_page=100")
    },
    draft: |pull| pull["draft"].as_bool().unwrap_or(false),
    marks_ready: |event| event["event"].as_str() == Some("ready_for_review"),
    timeline_optional: false,
    not_reviews: &["PENDING"],
};

/// What the deployments stream keeps between polls (the cursor's
/// watermark, as JSON): the highest deployment id seen and the recent
/// deployments whose statuses are still followed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct DeploymentsMark {
    max_id: i64,
    /// id → created_at (epoch seconds) of deployments without a final status.
    open: BTreeMap<i64, i64>,
    /// The next page of an unfinished backfill (a `Link` URL, verbatim):
    /// each page read is committed with it, so an interrupted backfill
    /// resumes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backfill: Option<String>,
}

/// Polls one repository.
pub struct GithubPoller {
    target: PollTarget,
    api: Api,
    rec: Recorder,
    base: Base,
    /// The repository's default branch and when it was read.
    default_branch: Option<(String, tokio::time::Instant)>,
}

impl Poller for GithubPoller {
    poller_parts!();
}

poller_new!(GithubPoller, target, { base: Base::new(&target), default_branch: None });

impl Forge for GithubPoller {
    const DIALECT: &'static Dialect = &GITHUB;

    forge_parts!();
}

impl Deployments for GithubPoller {
    /// The deployments stream: new deployments (newest first, by `Link`)
    /// and the statuses of those still followed.
    async fn deployments(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let cursor = self.rec.cursor(self.target.stream("deployments"));
        let mut mark: DeploymentsMark = mark_of(&cursor).unwrap_or_default();
        let mut deployments: BTreeMap<i64, Value> = BTreeMap::new();
        let mut new_cursor = cursor.clone();
        let first = format!("{}/deployments?per_page=100", self.base);
        // Page 1 is conditional; newer-first pages are followed through
        // `rel="next"` until one reaches what was already seen or the
        // horizon (POLLING.md §6 step 6).
        let mut next = Some(first);
        let mut page = 0;
        let mut max_id = mark.max_id;
        // The first poll with `backfill_since` also reads the older
        // deployments' statuses, once each, and goes on down the pages.
        let backfill_since = self
            .target
            .backfill_since
            .filter(|_| cursor.watermark.is_none());
        let mut history = Vec::new();
        let mut past_since = false;
        while let Some(url) = next.take() {
            let Some((list, link_next)) = self
                .api
                .list_page(
                    &url,
                    page,
                    &cursor,
                    &mut new_cursor,
                    "deployments",
                    GITHUB_JSON,
                )
                .await?
            else {
                break;
            };
            page += 1;
            let horizon = self.api.server_now() - STATUS_HORIZON_SECONDS;
            let mut reached_seen = list.is_empty();
            for deployment in list {
                let Some(id) = deployment["id"].as_i64() else {
                    continue;
                };
                // A time that does not parse is taken as now: followed, not lost.
                let created =
                    server_time(&deployment["created_at"]).unwrap_or_else(|| self.api.server_now());
                max_id = max_id.max(id);
                if id > mark.max_id && created < horizon && cursor.watermark.is_some() {
                    // Created while polls were not running, for longer than
                    // the statuses horizon: its statuses are read once.
                    history.push(deployment.clone());
                } else if id <= mark.max_id || created < horizon {
                    reached_seen = true;
                    match backfill_since {
                        Some(since) if created >= since => history.push(deployment.clone()),
                        Some(_) => past_since = true,
                        None => {}
                    }
                } else {
                    mark.open.insert(id, created);
                }
                deployments.insert(id, deployment);
            }
            if !reached_seen && page < MAX_PAGES {
                next = self.api.same_origin(link_next);
            } else if backfill_since.is_some() && !past_since {
                mark.backfill = self.api.same_origin(link_next);
            }
        }
        mark.max_id = max_id;
        // Statuses of the deployments still followed, each conditional; one
        // that passed the horizon is read a last time, then let go.
        let horizon = self.api.server_now() - STATUS_HORIZON_SECONDS;
        let open: Vec<(i64, i64)> = mark.open.iter().map(|(id, c)| (*id, *c)).collect();
        // Whatever happens below, the statuses state of a deployment that
        // leaves `open` goes with it.
        let followed: Vec<i64> = open.iter().map(|(id, _)| *id).collect();
        for (id, created) in open {
            let statuses_cursor = self
                .rec
                .cursor(self.target.stream(&format!("statuses|{id}")));
            let url = format!("{}/deployments/{id}/statuses?per_page=100", self.base);
            let fetched = match self
                .api
                .get(&url, &statuses_cursor, "statuses", GITHUB_JSON)
                .await
            {
                Err(PollError::Gone { .. }) => {
                    // Deleted since: nothing more to follow.
                    mark.open.remove(&id);
                    continue;
                }
                other => other?,
            };
            if created < horizon {
                mark.open.remove(&id);
            }
            let Fetched::Changed {
                body,
                etag,
                last_modified,
                ..
            } = fetched
            else {
                continue;
            };
            let statuses: Vec<Value> =
                serde_json::from_slice(&body).map_err(|e| PollError::json("statuses", e))?;
            let deployment = match deployments.get(&id) {
                Some(d) => d.clone(),
                None => match self.deployment(id).await {
                    Err(PollError::Gone { .. }) => {
                        mark.open.remove(&id);
                        continue;
                    }
                    other => other?,
                },
            };
            for status in &statuses {
                if let Some(delivery) = self.delivery(&deployment, status) {
                    deliveries.push(delivery);
                }
            }
            let finished = statuses.iter().any(|s| {
                matches!(
                    s["state"].as_str(),
                    Some("success" | "failure" | "error" | "inactive")
                )
            });
            if finished {
                mark.open.remove(&id);
            }
            cursors.push(PollCursor {
                etag,
                last_modified,
                ..statuses_cursor
            });
        }
        for id in followed
            .into_iter()
            .filter(|id| !mark.open.contains_key(id))
        {
            self.rec
                .forget
                .push(self.target.stream(&format!("statuses|{id}")));
        }
        for deployment in &history {
            deliveries.extend(self.final_statuses(deployment).await?);
        }
        new_cursor.watermark = Some(serde_json::to_string(&mark).unwrap_or_default());
        if new_cursor != cursor {
            cursors.push(new_cursor.clone());
        }
        if mark.backfill.is_some() {
            self.backfill(&mut mark, new_cursor, deliveries, cursors)
                .await?;
        }
        Ok(())
    }
}

impl GithubPoller {
    /// Goes on with an unfinished backfill, at most [`MAX_PAGES`] pages a
    /// poll: the statuses of each deployment created since
    /// `backfill_since`, read once; each page committed with the place
    /// reached (`mark.backfill`), until a page reaches past the date or
    /// the list ends.
    async fn backfill(
        &mut self,
        mark: &mut DeploymentsMark,
        mut cursor: PollCursor,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let since = self.target.backfill_since.unwrap_or(i64::MAX);
        for _ in 0..MAX_PAGES {
            let Some(url) = mark.backfill.clone() else {
                break;
            };
            let mut ignored = PollCursor::default();
            let Some((list, link_next)) = self
                .api
                .list_page(
                    &url,
                    1,
                    &ignored.clone(),
                    &mut ignored,
                    "deployments",
                    GITHUB_JSON,
                )
                .await?
            else {
                break;
            };
            let mut reached = list.is_empty();
            for deployment in &list {
                let created = server_time(&deployment["created_at"]).unwrap_or(i64::MAX);
                if created < since {
                    reached = true;
                    continue;
                }
                deliveries.extend(self.final_statuses(deployment).await?);
            }
            mark.backfill = if reached {
                None
            } else {
                self.api.same_origin(link_next)
            };
            cursor.watermark = Some(serde_json::to_string(&*mark).unwrap_or_default());
            cursors.push(cursor.clone());
            self.rec
                .commit(GitHub.source(), deliveries, cursors)
                .await?;
        }
        if mark.backfill.is_none() {
            tracing::info!(repo = %self.target.repo, "Deployments backfill done");
        }
        Ok(())
    }

    /// The success of an old deployment, from its statuses read once.
    async fn final_statuses(&mut self, deployment: &Value) -> Result<Vec<Delivery>, PollError> {
        let Some(id) = deployment["id"].as_i64() else {
            return Ok(Vec::new());
        };
        let url = format!("{}/deployments/{id}/statuses?per_page=100", self.base);
        let statuses = match self
            .api
            .get(&url, &PollCursor::default(), "statuses", GITHUB_JSON)
            .await
        {
            Ok(Fetched::Changed { body, .. }) => serde_json::from_slice::<Vec<Value>>(&body)
                .map_err(|e| PollError::json("statuses", e))?,
            Ok(Fetched::NotModified) | Err(PollError::Gone { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(statuses
            .iter()
            .filter_map(|status| self.delivery(deployment, status))
            .collect())
    }

    /// One deployment, for a status whose deployment left the first page.
    async fn deployment(&mut self, id: i64) -> Result<Value, PollError> {
        let url = format!("{}/deployments/{id}", self.base);
        match self
            .api
            .get(&url, &PollCursor::default(), "deployment", GITHUB_JSON)
            .await?
        {
            Fetched::Changed { body, .. } => {
                serde_json::from_slice(&body).map_err(|e| PollError::json("deployment", e))
            }
            Fetched::NotModified => Err(PollError::not_modified("deployment")),
        }
    }

    /// A status as the ledger records it: the payload a `deployment_status`
    /// webhook would carry, mapped by the GitHub plugin. `None` for a
    /// status that maps to nothing worth a ledger row (not a success).
    fn delivery(&self, deployment: &Value, status: &Value) -> Option<Delivery> {
        if status["state"].as_str() != Some("success") {
            return None;
        }
        let payload = json!({
            "action": "created",
            "deployment_status": status,
            "deployment": deployment,
            "repository": {"full_name": self.target.repo},
        });
        let status_id = status["id"].as_i64().unwrap_or_default().to_string();
        Some(mapped(
            &self.target,
            "x-github-event",
            "deployment_status",
            &payload,
            &[b"status", status_id.as_bytes()],
        ))
    }
}
