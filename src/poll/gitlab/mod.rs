//! The GitLab poller (POLLING.md §2): successful deployments, incident
//! issues, commits of the tracked branches and open merge requests'
//! reviews of one project, on gitlab.com or a self-managed instance (REST
//! v4).
//!
//! GitLab documents no conditional requests for REST v4, so every request
//! is paid: lists are read by `updated_after` watermarks (server
//! timestamps, less an overlap) instead of validators, and the scheduler
//! keeps the project within its share of the budget. What is read is put in
//! the shape of the webhooks (`Deployment Hook`, `Issue Hook`, `Push Hook`)
//! and mapped by the GitLab plugin's own rules, so a fact both polled and
//! delivered counts once.

mod commits;
mod merge_requests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::MAX_PAGES;
use super::api::{Api, Fetched, Listing};
use super::recorder::mapped;
use super::streams::{Deployments, Streams};
use super::watermark::{mark_of, rfc3339, server_time, settled, OVERLAP_SECONDS};
use super::{PollError, PollTarget, Poller, Recorder};
use crate::ledger::Delivery;
use crate::poll::{poller_new, poller_parts};
use crate::store::PollCursor;

/// The media type of the REST API's answers.
const GITLAB_JSON: &str = "application/json";
/// How long what was read of the project (its id, path and default
/// branch) is trusted before it is read again.
const PROJECT_TTL_SECONDS: i64 = 3600;
/// The webhook header whose value names the event a polled object stands
/// for, kept on its ledger row.
const EVENT_HEADER: &str = "x-gitlab-event";

/// The project as last read, kept in the `project` stream's watermark: its
/// numeric id addresses it from then on, so that a renamed or transferred
/// project is still found (and its old path, once reused, never polled).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct ProjectMark {
    id: u64,
    path_with_namespace: String,
    web_url: String,
    default_branch: Option<String>,
    /// When it was read (server epoch seconds).
    read_at: i64,
}

/// Polls one project.
pub struct GitlabPoller {
    target: PollTarget,
    api: Api,
    rec: Recorder,
    /// What was read of the project, once read.
    project: ProjectMark,
    /// The merge requests of the current listing someone was asked to
    /// review (only theirs have reviewers to read).
    asked: BTreeSet<u64>,
}

impl Poller for GitlabPoller {
    poller_parts!();
}

poller_new!(GitlabPoller, target, { project: ProjectMark::default(), asked: BTreeSet::new() });

impl Deployments for GitlabPoller {
    /// The deployments stream: successful deployments updated since the
    /// watermark (less an overlap), oldest update first. `updated_after`
    /// is always paired with `order_by=updated_at`, which GitLab requires.
    async fn deployments(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let deployments = self
            .read_since(
                "deployments",
                |base, since| {
                    format!(
                        "{base}/deployments?updated_after={since}&order_by=updated_at&sort=asc&status=success&per_page=100"
                    )
                },
                "deployments",
                cursors,
            )
            .await?;
        for deployment in &deployments {
            if deployment["status"].as_str() == Some("success") {
                deliveries.push(self.deployment_delivery(deployment));
            }
        }
        Ok(())
    }
}

impl Streams for GitlabPoller {
    fn books(&mut self) -> (&mut Recorder, &PollTarget) {
        (&mut self.rec, &self.target)
    }

    /// Reads the project first: every stream addresses it by its id.
    async fn prepare(&mut self, cursors: &mut Vec<PollCursor>) -> Result<(), PollError> {
        self.read_project(cursors).await
    }

    /// The project is addressed by its id: nothing moves.
    fn conclude(&mut self, _cursors: &mut Vec<PollCursor>) {}

    async fn tracked_branches(
        &mut self,
        _cursors: &mut Vec<PollCursor>,
    ) -> Result<Vec<String>, PollError> {
        self.branches()
    }

    /// The incidents stream: issues of type incident, and issues carrying
    /// each incident label, updated since their watermark (less an
    /// overlap), oldest update first. An issue found both ways is one
    /// failure.
    async fn incidents(
        &mut self,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        let mut filters = vec![("type|incident".to_owned(), "issue_type=incident".to_owned())];
        for label in &self.target.options.incident_labels {
            let param: String = form_urlencoded::byte_serialize(label.as_bytes()).collect();
            filters.push((format!("label|{label}"), format!("labels={param}")));
        }
        for (key, filter) in filters {
            let issues = self
                .read_since(
                    &format!("incidents|{key}"),
                    |base, since| {
                        format!(
                            "{base}/issues?{filter}&scope=all&updated_after={since}&order_by=updated_at&sort=asc&per_page=100"
                        )
                    },
                    "issues",
                    cursors,
                )
                .await?;
            for issue in &issues {
                deliveries.extend(self.issue_deliveries(issue));
            }
        }
        Ok(())
    }

    async fn pull_requests(
        &mut self,
        branches: &[String],
        cursors: &mut Vec<PollCursor>,
    ) -> Result<(), PollError> {
        self.merge_requests(branches, cursors).await
    }
}

impl GitlabPoller {
    /// The project's address: by its numeric id.
    fn base(&self) -> String {
        format!("{}/projects/{}", self.target.api_url, self.project.id)
    }

    /// The key events count under, as webhooks name the project
    /// (`path_with_namespace`): the configured path, or, for a project
    /// configured by its id, the path read.
    fn project_key(&self) -> &str {
        if self.target.repo.bytes().all(|b| b.is_ascii_digit()) {
            &self.project.path_with_namespace
        } else {
            &self.target.repo
        }
    }

    /// The `project` object of a webhook payload.
    fn project_payload(&self) -> Value {
        json!({
            "id": self.project.id,
            "path_with_namespace": self.project_key(),
            "web_url": self.project.web_url,
            "default_branch": self.project.default_branch,
        })
    }

    /// Reads the project (at most hourly; by its configured path or id the
    /// first time, by the id read since), its new state joining `cursors`.
    async fn read_project(&mut self, cursors: &mut Vec<PollCursor>) -> Result<(), PollError> {
        let cursor = self.rec.cursor(self.target.stream("project"));
        let stored: Option<ProjectMark> = mark_of(&cursor);
        let now = self.api.server_now();
        if let Some(stored) = &stored {
            if (0..PROJECT_TTL_SECONDS).contains(&(now - stored.read_at)) {
                self.project.clone_from(stored);
                return Ok(());
            }
        }
        let id = match &stored {
            Some(stored) => stored.id.to_string(),
            None => form_urlencoded::byte_serialize(self.target.repo.as_bytes()).collect(),
        };
        let url = format!("{}/projects/{id}", self.target.api_url);
        let Fetched::Changed { body, .. } = self
            .api
            .get(&url, &PollCursor::default(), "project", GITLAB_JSON)
            .await?
        else {
            return Err(PollError::not_modified("project"));
        };
        let project: Value =
            serde_json::from_slice(&body).map_err(|e| PollError::json("project", e))?;
        let (Some(id), Some(path)) = (
            project["id"].as_u64(),
            project["path_with_namespace"].as_str(),
        ) else {
            return Err(PollError::missing(
                "project",
                "no id or path_with_namespace",
            ));
        };
        let configured_by_path = !self.target.repo.bytes().all(|b| b.is_ascii_digit());
        let moved = match &stored {
            Some(stored) => stored.path_with_namespace != path,
            None => configured_by_path && !path.eq_ignore_ascii_case(&self.target.repo),
        };
        if moved {
            tracing::warn!(repo = %self.target.repo, path, "The project was renamed or moved; polling it by its id");
        }
        self.project = ProjectMark {
            id,
            path_with_namespace: path.to_owned(),
            web_url: project["web_url"].as_str().unwrap_or_default().to_owned(),
            default_branch: project["default_branch"].as_str().map(str::to_owned),
            read_at: now,
        };
        cursors.push(PollCursor {
            watermark: serde_json::to_string(&self.project).ok(),
            ..cursor
        });
        Ok(())
    }

    /// The tracked branches: the configured ones, else the project's
    /// default branch.
    fn branches(&self) -> Result<Vec<String>, PollError> {
        if let Some(branches) = self.target.configured_branches() {
            return Ok(branches);
        }
        match &self.project.default_branch {
            Some(branch) => Ok(vec![branch.clone()]),
            None => Err(PollError::missing(
                "project",
                "no default_branch (an empty repository?)",
            )),
        }
    }

    /// A list, read unconditionally (GitLab documents no
    /// conditional requests), following `Link` within the instance for
    /// [`MAX_PAGES`] at most.
    async fn listing(&mut self, url: String, endpoint: &'static str) -> Result<Listing, PollError> {
        let listing = self
            .api
            .list_unconditional(url, endpoint, GITLAB_JSON, MAX_PAGES)
            .await?
            .unwrap_or_default();
        if listing.next.is_some() {
            tracing::warn!(repo = %self.target.repo, endpoint, pages = MAX_PAGES, "List longer than the pages read in one poll; the rest is read by the next");
        }
        Ok(listing)
    }

    /// The items of a list sorted oldest update first, updated since the
    /// watermark of `stream` (`url` builds the list's address from the
    /// project's and the `updated_after` value), less those the overlap
    /// reads again; the new watermark joins `cursors` when it moved.
    async fn read_since(
        &mut self,
        stream: &str,
        url: impl Fn(&str, &str) -> String,
        endpoint: &'static str,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<Vec<Value>, PollError> {
        let cursor = self.rec.cursor(self.target.stream(stream));
        let mark: UpdatedMark = mark_of(&cursor).unwrap_or_else(|| UpdatedMark {
            since: rfc3339(self.target.bootstrap_since(self.api.server_now())),
            seen: BTreeMap::new(),
        });
        let listing = self
            .listing(url(&self.base(), &mark.since), endpoint)
            .await?;
        let fresh = listing
            .items
            .iter()
            .filter(|item| mark.is_new(item))
            .cloned()
            .collect();
        let watermark = serde_json::to_string(&mark.advanced(&listing)).ok();
        if watermark != cursor.watermark {
            cursors.push(PollCursor {
                watermark,
                ..cursor
            });
        }
        Ok(fresh)
    }

    /// Every item of a list, as [`GitlabPoller::listing`] reads it.
    async fn list(&mut self, url: String, endpoint: &'static str) -> Result<Vec<Value>, PollError> {
        Ok(self.listing(url, endpoint).await?.items)
    }

    /// A successful deployment as the ledger records it; the delivery id
    /// comes from the deployment's id alone, so a deployment read again,
    /// even updated since, is one delivery.
    fn deployment_delivery(&self, deployment: &Value) -> Delivery {
        let payload = deployment_hook(&self.project_payload(), deployment);
        let id = deployment["id"].as_i64().unwrap_or_default().to_string();
        mapped(
            &self.target,
            EVENT_HEADER,
            "Deployment Hook",
            &payload,
            &[b"deployment", id.as_bytes()],
        )
    }

    /// An incident's opening and, once closed, its closing, as the ledger
    /// records them.
    fn issue_deliveries(&self, issue: &Value) -> Vec<Delivery> {
        let iid = issue["iid"].as_i64().unwrap_or_default().to_string();
        issue_hooks(&self.project_payload(), issue)
            .into_iter()
            .map(|(action, payload)| {
                let when = payload["object_attributes"][match action {
                    "open" => "created_at",
                    _ => "closed_at",
                }]
                .as_str()
                .unwrap_or_default()
                .to_owned();
                mapped(
                    &self.target,
                    EVENT_HEADER,
                    "Issue Hook",
                    &payload,
                    &[b"issue", iid.as_bytes(), action.as_bytes(), when.as_bytes()],
                )
            })
            .collect()
    }
}

/// A deployment (an API object) as a `Deployment Hook` of `project` (the
/// hook's `project` object) would carry it. The deployment's own
/// `updated_at` is when it became successful: the hook's
/// `status_changed_at`.
fn deployment_hook(project: &Value, deployment: &Value) -> Value {
    let sha = deployment["sha"].as_str().unwrap_or_default();
    let environment = &deployment["environment"];
    let web_url = project["web_url"].as_str().unwrap_or_default();
    json!({
        "object_kind": "deployment",
        "status": deployment["status"],
        "status_changed_at": deployment["updated_at"],
        "deployment_id": deployment["id"],
        "deployable_id": deployment["deployable"]["id"],
        "deployable_url": deployment["deployable"]["web_url"],
        "environment": environment["name"],
        "environment_tier": environment["tier"],
        "environment_slug": environment["slug"],
        "environment_external_url": environment["external_url"],
        "project": project,
        "short_sha": sha.get(..8),
        "commit_url": format!("{web_url}/-/commit/{sha}"),
        "ref": deployment["ref"],
    })
}

/// An issue (an API object) as the `Issue Hook`s of `project` would carry
/// it: its opening and, once closed, its closing (`action` `open`,
/// `close`).
fn issue_hooks(project: &Value, issue: &Value) -> Vec<(&'static str, Value)> {
    // Label names by default; objects with `with_labels_details`.
    let labels: Vec<Value> = issue["labels"]
        .as_array()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| l.as_str().or_else(|| l["name"].as_str()))
                .map(|name| json!({"title": name}))
                .collect()
        })
        .unwrap_or_default();
    let closed = issue["state"].as_str() == Some("closed");
    ["open", "close"]
        .into_iter()
        .filter(|action| *action == "open" || closed)
        .map(|action| {
            let payload = json!({
                "object_kind": "issue",
                "event_type": "issue",
                "project": project,
                "object_attributes": {
                    "id": issue["id"],
                    "iid": issue["iid"],
                    "title": issue["title"],
                    "state": issue["state"],
                    "action": action,
                    "type": issue["type"],
                    "issue_type": issue["issue_type"],
                    "created_at": issue["created_at"],
                    "updated_at": issue["updated_at"],
                    "closed_at": issue["closed_at"],
                    "url": issue["web_url"],
                },
                "labels": labels,
            });
            (action, payload)
        })
        .collect()
}

/// The watermark of a list read by `updated_after` (POLLING.md §6 step 6):
/// that server timestamp, and the items read at or after it (id →
/// `updated_at`), which the overlap reads again and which are then
/// skipped. GitLab sends no validators, so this is what tells a late item
/// within the overlap from one already recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct UpdatedMark {
    since: String,
    seen: BTreeMap<i64, String>,
}

impl UpdatedMark {
    /// Whether `item` was not read before as it is now.
    fn is_new(&self, item: &Value) -> bool {
        let id = item["id"].as_i64().unwrap_or_default();
        self.seen.get(&id).map(String::as_str) != item["updated_at"].as_str()
    }

    /// The mark after a read of `listing` from this one.
    fn advanced(&self, listing: &Listing) -> UpdatedMark {
        let newest = settled(listing)
            .iter()
            .filter_map(|item| server_time(&item["updated_at"]))
            .max();
        let since = next_since(&self.since, newest);
        let from = server_time(&Value::from(since.as_str())).unwrap_or(i64::MIN);
        let read = listing.items.iter().filter_map(|item| {
            Some((
                item["id"].as_i64()?,
                item["updated_at"].as_str()?.to_owned(),
            ))
        });
        let seen = self
            .seen
            .clone()
            .into_iter()
            .chain(read)
            .filter(|(_, at)| server_time(&Value::from(at.as_str())).is_some_and(|t| t >= from))
            .collect();
        UpdatedMark { since, seen }
    }
}

/// The `updated_after` watermark after a read from `since` whose newest
/// server timestamp was `newest`: that less the overlap (POLLING.md §6
/// step 6), never behind `since`; `since` itself when nothing was read.
fn next_since(since: &str, newest: Option<i64>) -> String {
    let current = server_time(&Value::from(since));
    match (newest, current) {
        (Some(newest), Some(current)) if newest - OVERLAP_SECONDS <= current => since.to_owned(),
        (Some(newest), _) => rfc3339(newest - OVERLAP_SECONDS),
        (None, _) => since.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, FailureChange};
    use crate::ledger::Disposition;
    use crate::plugins::{gitlab::GitLab, Plugin};

    /// A target polling `acme/shop` with the GitLab source's defaults.
    pub(super) fn target() -> PollTarget {
        PollTarget {
            provider: crate::poll::Provider::Gitlab,
            repo: "acme/shop".into(),
            api_url: "https://gitlab.example/api/v4".into(),
            token: crate::signature::Secret::new("glpat-test"),
            token_source: crate::poll::TokenSource::Env("TOKEN".into()),
            source: "gitlab".into(),
            branch: None,
            options: GitLab.defaults(),
            interval: std::time::Duration::from_secs(60),
            max_interval: std::time::Duration::from_secs(1800),
            quota_per_hour: None,
            max_quota_share: 0.5,
            backfill_since: None,
        }
    }

    fn project() -> Value {
        json!({"id": 42, "path_with_namespace": "acme/shop", "web_url": "https://gitlab.example/acme/shop"})
    }

    fn events(event: &'static str, payload: &Value) -> Vec<Event> {
        match mapped(&target(), EVENT_HEADER, event, payload, &[b"test"]).disposition {
            Disposition::Events(events) => events,
            other => panic!("not mapped to events: {other:?}"),
        }
    }

    #[test]
    fn a_successful_deployment_maps_to_a_deploy_of_its_commit_when_it_succeeded() {
        let sha = "99d03678b90d914dbb1b109132516d71a4a03ea8";
        let deployment = json!({
            "id": 41, "iid": 1, "ref": "main", "sha": sha, "status": "success",
            "created_at": "2026-08-11T07:36:40.222Z", "updated_at": "2026-08-11T07:38:12.414Z",
            "environment": {"id": 9, "name": "production", "external_url": null},
            "deployable": {"id": 657, "status": "success", "finished_at": "2026-08-11T07:36:39.851Z"}
        });
        let events = events("Deployment Hook", &deployment_hook(&project(), &deployment));
        let [Event::Deploy(deploy)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(deploy.app.as_str(), "acme/shop");
        assert_eq!(deploy.commit.as_ref().map(|c| c.as_str()), Some(sha));
        assert_eq!(deploy.namespace.as_str(), "production");
        assert_eq!(deploy.time.seconds(), 1_786_433_892);
    }

    #[test]
    fn a_closed_incident_is_created_then_resolved_whether_typed_or_labelled() {
        let typed = json!({
            "id": 7, "iid": 3, "state": "closed", "type": "INCIDENT", "issue_type": "incident",
            "labels": [], "created_at": "2026-08-11T07:00:00Z",
            "updated_at": "2026-08-11T09:00:00Z", "closed_at": "2026-08-11T08:00:00Z"
        });
        let labelled = json!({
            "id": 8, "iid": 4, "state": "opened", "type": "ISSUE", "issue_type": "issue",
            "labels": [{"name": "Incident"}], "created_at": "2026-08-11T07:00:00Z",
            "updated_at": "2026-08-11T07:00:00Z", "closed_at": null
        });
        let changes = |issue: &Value| -> Vec<(String, FailureChange, i64)> {
            issue_hooks(&project(), issue)
                .iter()
                .flat_map(|(_, payload)| events("Issue Hook", payload))
                .map(|e| match e {
                    Event::Failure(f) => (
                        f.issue_number.as_str().to_owned(),
                        f.change,
                        f.time.seconds(),
                    ),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(
            changes(&typed),
            [
                ("3".to_owned(), FailureChange::Created, 1_786_431_600),
                ("3".to_owned(), FailureChange::Resolved, 1_786_435_200),
            ]
        );
        assert_eq!(
            changes(&labelled),
            [("4".to_owned(), FailureChange::Created, 1_786_431_600)]
        );
        // Neither typed nor labelled: no failure.
        let plain = json!({"iid": 5, "state": "opened", "type": "ISSUE", "labels": ["bug"], "created_at": "2026-08-11T07:00:00Z"});
        let delivery = mapped(
            &target(),
            EVENT_HEADER,
            "Issue Hook",
            &issue_hooks(&project(), &plain)[0].1,
            &[b"x"],
        );
        assert!(
            matches!(delivery.disposition, Disposition::Ignored { .. }),
            "{:?}",
            delivery.disposition
        );
    }

    #[test]
    fn since_moves_forward_only_past_the_overlap() {
        let at = |t: &str| server_time(&json!(t));
        let since = "2026-08-11T07:00:00Z";
        assert_eq!(next_since(since, None), since);
        assert_eq!(next_since(since, at("2026-08-11T07:01:00Z")), since);
        assert_eq!(
            next_since(since, at("2026-08-11T09:00:00Z")),
            "2026-08-11T08:58:00Z"
        );
    }

    #[test]
    fn the_watermark_moves_to_the_newest_update_less_the_overlap_and_skips_what_it_read() {
        let item = |id: i64, at: &str| json!({"id": id, "updated_at": at});
        let mark = UpdatedMark {
            since: "2026-08-11T07:00:00Z".into(),
            seen: BTreeMap::new(),
        };
        assert_eq!(mark.advanced(&Listing::default()), mark);
        // Inside the overlap: the time stays, the items are remembered.
        let first = mark.advanced(&Listing::from_iter([vec![item(
            1,
            "2026-08-11T07:01:00.000Z",
        )]]));
        assert_eq!(first.since, mark.since);
        assert!(!first.is_new(&item(1, "2026-08-11T07:01:00.000Z")));
        // A late item within the overlap is new; so is one updated again.
        assert!(first.is_new(&item(2, "2026-08-11T07:00:30.000Z")));
        assert!(first.is_new(&item(1, "2026-08-11T07:05:00.000Z")));
        // Past it: the newest less two minutes, and only what is at or
        // after that is remembered.
        let later = first.advanced(&Listing::from_iter([vec![
            item(1, "2026-08-11T07:01:00.000Z"),
            item(3, "2026-08-11T08:00:00.000Z"),
        ]]));
        assert_eq!(later.since, "2026-08-11T07:58:00Z");
        assert_eq!(later.seen.keys().copied().collect::<Vec<_>>(), [3]);
    }
}
