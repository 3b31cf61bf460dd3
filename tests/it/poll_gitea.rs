//! The Gitea poller against a fake Gitea (wiremock) that behaves as its
//! `/api/v1` documents: `Authorization: token …` or 401, `limit` clamped
//! to `[api] MAX_RESPONSE_ITEMS` with `Link` and `X-Total-Count`, no
//! ETags, `not` on `/commits` (500 when it names an unknown commit), 404
//! for a deleted repository, and a proxy in front that may answer 429
//! with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::path_regex;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use hookgauge::poll::{GiteaPoller, PollError, Provider, Stream};

use crate::harness::{fixture, now, spawn_app_with, TestApp, SECRET};
use crate::polling::{
    answered, assert_webhook_is_duplicate, awaiting_review, commit_time, deployments_total,
    eventually, eventually_deployed, eventually_recorded, review_waits, rfc3339, Rig, Stepped,
};
use crate::sources::{post, provider_headers};

pub(crate) const TOKEN: &str = "gitea-token-for-tests";
const REPO: &str = "/api/v1/repos/acme/shop";

/// What the fake repository holds; tests change it between polls.
#[derive(Default)]
pub(crate) struct Repository {
    deleted: bool,
    /// Gitea's `[api] MAX_RESPONSE_ITEMS`.
    max_items: usize,
    issues: Vec<Value>,
    /// Linear history, newest first; the head of `main` is the first.
    commits: Vec<Value>,
    /// Commit statuses by SHA.
    statuses: HashMap<String, Vec<Value>>,
    pub(crate) pulls: Vec<Value>,
    pub(crate) reviews: HashMap<u64, Vec<Value>>,
    pub(crate) timelines: HashMap<u64, Vec<Value>>,
    /// Requests the proxy in front refuses (429, `Retry-After: 2`) next.
    throttle: usize,
}

/// The fake instance: every request is logged with its arrival time.
#[derive(Clone)]
pub(crate) struct FakeGitea {
    repo: Arc<Mutex<Repository>>,
    log: Arc<Mutex<Vec<(Instant, Request)>>>,
    root: String,
}

impl FakeGitea {
    pub(crate) async fn start(server: &MockServer) -> FakeGitea {
        let fake = FakeGitea {
            repo: Arc::new(Mutex::new(Repository {
                max_items: 50,
                ..Repository::default()
            })),
            log: Arc::default(),
            root: server.uri(),
        };
        Mock::given(path_regex("^/api/v1/"))
            .respond_with(fake.clone())
            .mount(server)
            .await;
        fake
    }

    pub(crate) fn with<R>(&self, change: impl FnOnce(&mut Repository) -> R) -> R {
        change(&mut self.repo.lock().unwrap())
    }

    /// The logged requests whose path ends with `suffix`, with their times.
    fn requests(&self, suffix: &str) -> Vec<(Instant, Request)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| r.url.path().ends_with(suffix))
            .cloned()
            .collect()
    }

    fn count(&self, suffix: &str) -> usize {
        self.requests(suffix).len()
    }

    /// One page of `items` as Gitea pages a list: `limit` clamped to
    /// `MAX_RESPONSE_ITEMS`, `X-Total-Count`, `Link` with `next` while
    /// items remain, built from the request URL on the instance's root.
    fn page(&self, request: &Request, items: &[Value], max_items: usize) -> ResponseTemplate {
        let query = query(request);
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(30)
            .clamp(1, max_items);
        let page = query
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let start = ((page - 1) * limit).min(items.len());
        let end = (start + limit).min(items.len());
        let pages = items.len().div_ceil(limit).max(1);
        let link_to = |n: usize, rel: &str| {
            let mut url = request.url.clone();
            let pairs: Vec<(String, String)> = request
                .url
                .query_pairs()
                .into_owned()
                .filter(|(k, _)| k != "page")
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(pairs)
                .append_pair("page", &n.to_string());
            format!(
                "<{}{}?{}>; rel=\"{rel}\"",
                self.root,
                url.path(),
                url.query().unwrap_or_default()
            )
        };
        let mut links = Vec::new();
        if page < pages {
            links.push(link_to(page + 1, "next"));
            links.push(link_to(pages, "last"));
        }
        if page > 1 {
            links.push(link_to(1, "first"));
            links.push(link_to(page - 1, "prev"));
        }
        let mut template = ResponseTemplate::new(200)
            .insert_header("x-total-count", items.len().to_string().as_str())
            .set_body_json(Value::from(items[start..end].to_vec()));
        if !links.is_empty() {
            template = template.insert_header("link", links.join(",").as_str());
        }
        template
    }
}

fn query(request: &Request) -> HashMap<String, String> {
    request.url.query_pairs().into_owned().collect()
}

/// What `items` holds for the pull request numbered `n` (a path segment),
/// or nothing.
fn numbered(items: &HashMap<u64, Vec<Value>>, n: &str) -> Vec<Value> {
    items.get(&n.parse().unwrap()).cloned().unwrap_or_default()
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(
        json!({"errors": ["The target couldn't be found."], "message": "The target couldn't be found.", "url": "http://localhost/api/swagger"}),
    )
}

impl Respond for FakeGitea {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.log
            .lock()
            .unwrap()
            .push((Instant::now(), request.clone()));
        let mut repo = self.repo.lock().unwrap();
        if repo.throttle > 0 {
            repo.throttle -= 1;
            return ResponseTemplate::new(429)
                .insert_header("retry-after", "2")
                .set_body_string("Too Many Requests");
        }
        let authorization = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if authorization != Some(format!("token {TOKEN}").as_str()) {
            return ResponseTemplate::new(401)
                .set_body_json(json!({"message": "token is required", "url": ""}));
        }
        let Some(rest) = request.url.path().strip_prefix(REPO) else {
            return not_found();
        };
        if repo.deleted {
            return not_found();
        }
        let query = query(request);
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let max_items = repo.max_items;
        match parts.as_slice() {
            [""] => ResponseTemplate::new(200).set_body_json(json!({
                "id": 1, "full_name": "acme/shop", "name": "shop", "default_branch": "main",
                "owner": {"login": "acme"}, "empty": false
            })),
            ["issues"] => {
                assert_eq!(query.get("type").map(String::as_str), Some("issues"));
                let since = query
                    .get("since")
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
                let wanted: Vec<&str> = query
                    .get("labels")
                    .map(|l| l.split(',').collect())
                    .unwrap_or_default();
                let mut issues: Vec<Value> = repo
                    .issues
                    .iter()
                    .filter(|i| i["pull_request"].is_null())
                    .filter(|i| {
                        since.is_none_or(|since| {
                            chrono::DateTime::parse_from_rfc3339(i["updated_at"].as_str().unwrap())
                                .unwrap()
                                >= since
                        })
                    })
                    .filter(|i| {
                        wanted.is_empty()
                            || i["labels"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|l| wanted.contains(&l["name"].as_str().unwrap_or_default()))
                    })
                    .cloned()
                    .collect();
                // Newest first.
                issues.sort_by_key(|i| std::cmp::Reverse(i["number"].as_u64()));
                self.page(request, &issues, max_items)
            }
            ["branches", "main"] => match repo.commits.first() {
                Some(head) => ResponseTemplate::new(200).set_body_json(json!({
                    "name": "main",
                    "commit": {
                        "id": head["sha"], "message": head["commit"]["message"],
                        "url": head["html_url"], "timestamp": head["commit"]["author"]["date"],
                        "author": {"name": "ann", "email": "ann@example.com", "username": "ann"},
                        "committer": {"name": "ann", "email": "ann@example.com", "username": "ann"},
                        "verification": null, "added": null, "removed": null, "modified": null
                    },
                    "protected": false, "user_can_push": true, "user_can_merge": true,
                    "effective_branch_protection_name": ""
                })),
                None => not_found(),
            },
            ["branches", _] => not_found(),
            ["commits"] => {
                let from = query.get("sha").cloned().unwrap_or_default();
                let position = |sha: &str| repo.commits.iter().position(|c| c["sha"] == sha);
                let start = if from == "main" {
                    Some(0)
                } else {
                    position(&from)
                };
                let Some(start) = start else {
                    return not_found();
                };
                let end = match query.get("not") {
                    // `git rev-list ^<unknown>` fails: so does the API.
                    Some(not) => match position(not) {
                        Some(end) => end,
                        None => {
                            return ResponseTemplate::new(500)
                                .set_body_json(json!({"message": "bad revision"}));
                        }
                    },
                    None => repo.commits.len(),
                };
                let listed = repo.commits[start..end.max(start)].to_vec();
                self.page(request, &listed, max_items.min(50))
            }
            ["git", "commits", sha] => match repo.commits.iter().find(|c| c["sha"] == *sha) {
                Some(commit) => ResponseTemplate::new(200).set_body_json(commit.clone()),
                None => not_found(),
            },
            ["statuses", sha] => {
                let statuses = repo.statuses.get(*sha).cloned().unwrap_or_default();
                self.page(request, &statuses, max_items)
            }
            ["pulls"] => {
                assert_eq!(query.get("state").map(String::as_str), Some("open"));
                let pulls: Vec<Value> = repo
                    .pulls
                    .iter()
                    .filter(|p| p["state"] == "open")
                    .cloned()
                    .collect();
                self.page(request, &pulls, max_items)
            }
            ["pulls", n, "reviews"] => self.page(request, &numbered(&repo.reviews, n), max_items),
            ["issues", n, "timeline"] => {
                self.page(request, &numbered(&repo.timelines, n), max_items)
            }
            _ => not_found(),
        }
    }
}

/// An issue as Gitea's API returns it.
fn issue(number: u64, labels: &[&str], created: i64, closed: Option<i64>) -> Value {
    let labels: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"id": i + 1, "name": name, "color": "e11d21", "description": "", "url": ""}))
        .collect();
    json!({
        "id": 100 + number, "number": number,
        "url": format!("http://localhost/api/v1/repos/acme/shop/issues/{number}"),
        "html_url": format!("http://localhost/acme/shop/issues/{number}"),
        "user": {"id": 1, "login": "ann", "username": "ann"},
        "original_author": "", "original_author_id": 0,
        "title": format!("incident {number}"), "body": "", "ref": "",
        "labels": labels, "milestone": null, "assignee": null, "assignees": null,
        "state": if closed.is_some() { "closed" } else { "open" },
        "is_locked": false, "comments": 0,
        "created_at": rfc3339(created),
        "updated_at": rfc3339(closed.unwrap_or(created)),
        "closed_at": closed.map(rfc3339),
        "due_date": null, "pull_request": null,
        "repository": {"id": 1, "name": "shop", "owner": "acme", "full_name": "acme/shop"}
    })
}

/// A commit SHA: forty times the digit `n`.
fn sha(n: u8) -> String {
    format!("{n}").repeat(40)
}

/// A commit as Gitea's `/commits` lists it: `created` is the committer
/// time, the author time is what push webhooks carry.
fn commit(sha: &str, authored: i64, committed: i64) -> Value {
    json!({
        "url": format!("http://localhost/api/v1/repos/acme/shop/git/commits/{sha}"),
        "sha": sha, "created": rfc3339(committed),
        "html_url": format!("http://localhost/acme/shop/commit/{sha}"),
        "commit": {
            "url": format!("http://localhost/api/v1/repos/acme/shop/git/commits/{sha}"),
            "author": {"name": "ann", "email": "ann@example.com", "date": rfc3339(authored)},
            "committer": {"name": "ann", "email": "ann@example.com", "date": rfc3339(committed)},
            "message": "change\n", "tree": {"sha": sha, "url": "", "created": rfc3339(committed)},
            "verification": null
        },
        "author": null, "committer": null, "parents": [], "files": null, "stats": null
    })
}

/// The app polling `acme/shop` on the fake with a token from a file (kept
/// alive by the returned directory); `source` holds the `[sources.gitea]`
/// options, with the webhook secret.
async fn app_polling(server: &MockServer, source: Value) -> (tempfile::TempDir, TestApp) {
    let token_dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(|raw| {
        raw.sources.native.insert("gitea".into(), source);
        raw.poll.gitea = vec![gitea_entry(server, &token_dir)];
    })
    .await;
    (token_dir, app)
}

fn gitea_entry(server: &MockServer, token_dir: &tempfile::TempDir) -> hookgauge::poll::RawTarget {
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    toml::from_str(&format!(
        "repo = \"acme/shop\"\ntoken_file = {:?}\napi_url = \"{}/api/v1\"",
        token_file.display().to_string(),
        server.uri()
    ))
    .unwrap()
}

async fn failures(app: &TestApp, name: &str) -> f64 {
    app.scrape()
        .await
        .value_or_zero(name, &[("app", "acme/shop")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_delivered_by_webhook_then_polled_counts_once() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let opened = now() - 7_200;
    let closed = now() - 3_600;
    // Gitea's own webhook for the opening, signed, before any poll.
    let mut payload: Value = serde_json::from_slice(&fixture("gitea/issues.opened.json")).unwrap();
    payload["number"] = json!(12);
    payload["issue"] = issue(12, &["incident"], opened, None);
    payload["repository"]["full_name"] = json!("acme/shop");
    let body = serde_json::to_vec(&payload).unwrap();
    let mut app = spawn_app_with(|raw| {
        raw.sources
            .native
            .insert("gitea".into(), json!({"secrets": [SECRET]}));
    })
    .await;
    let headers = provider_headers("gitea", "issues", "hook-12", &body, SECRET);
    let reply = post(&app, "/hooks/gitea", &headers, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["outcome"], "accepted", "{}", reply.text);
    assert_eq!(failures(&app, "hookgauge_failures_total").await, 1.0);

    // Later the incident is closed; a second one, and an issue that is no
    // incident, exist. Polling starts.
    fake.with(|repo| {
        repo.issues = vec![
            issue(12, &["incident"], opened, Some(closed)),
            issue(13, &["bug"], opened, None),
            issue(14, &["p1", "incident"], closed, None),
        ];
    });
    let token_dir = tempfile::tempdir().unwrap();
    app.raw.poll.gitea = vec![gitea_entry(&server, &token_dir)];
    app.restart().await;
    eventually("the polled resolution", || async {
        failures(&app, "hookgauge_failures_resolved_total").await == 1.0
    })
    .await;
    assert_eq!(
        failures(&app, "hookgauge_failures_total").await,
        2.0,
        "#12 once (webhook and poll), #14 once; #13 is no incident"
    );
    assert_eq!(
        app.scrape().await.value(
            "hookgauge_time_to_restore_seconds_sum",
            &[("app", "acme/shop")]
        ),
        3_600.0
    );
    let polled: Vec<(String, String)> = app
        .ledger()
        .into_iter()
        .filter(|r| r.event == "issues" && r.delivery_id != "hook-12")
        .map(|r| (r.outcome, r.reason.unwrap_or_default()))
        .collect();
    assert_eq!(polled.len(), 3, "{polled:?}");
    assert_eq!(
        polled.iter().filter(|(o, _)| o == "duplicate").count(),
        1,
        "the polled opening of #12 is the webhook's: {polled:?}"
    );
    let requests = fake.requests("/repos/acme/shop/issues");
    let (_, first) = &requests[0];
    let q = query(first);
    assert_eq!(q["state"], "all");
    assert_eq!(q["labels"], "incident");
    assert_eq!(q["limit"], "50");
    assert!(q.contains_key("since"), "{q:?}");
    assert_eq!(
        first.headers.get("authorization").unwrap(),
        &format!("token {TOKEN}")
    );
    assert!(first.headers.get("if-none-match").is_none());

    // After a restart: since = the newest update less two minutes; nothing
    // is counted twice.
    app.restart().await;
    eventually("a second issues poll", || async {
        fake.count("/repos/acme/shop/issues") == 2
    })
    .await;
    let (_, second) = &fake.requests("/repos/acme/shop/issues")[1];
    assert_eq!(query(second)["since"], rfc3339(closed - 120));
    assert_eq!(failures(&app, "hookgauge_failures_total").await, 2.0);
    assert_eq!(
        failures(&app, "hookgauge_failures_resolved_total").await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_followed_by_link_past_a_clamped_page_size() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let t = now() - 3_600;
    fake.with(|repo| {
        // The instance serves 20 a page, whatever `limit` asks.
        repo.max_items = 20;
        repo.issues = (1..=45)
            .map(|n| issue(n, &["incident"], t + n as i64, None))
            .collect();
    });
    let (_token_dir, app) = app_polling(&server, json!({})).await;
    eventually("45 incidents", || async {
        failures(&app, "hookgauge_failures_total").await == 45.0
    })
    .await;
    let pages: Vec<String> = fake
        .requests("/repos/acme/shop/issues")
        .iter()
        .map(|(_, r)| query(r)["page"].clone())
        .collect();
    assert_eq!(
        pages,
        ["1", "2", "3"],
        "two short pages did not end the list"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_of_the_default_branch_are_recorded_once_across_restarts() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let t = now();
    let (c0, c1, c2, c3) = (sha(1), sha(2), sha(3), sha(4));
    fake.with(|repo| {
        repo.max_items = 1;
        repo.commits = vec![
            commit(&c2, t - 700, t - 600),
            commit(&c1, t - 1300, t - 1200),
            // Older than the bootstrap window (30 days).
            commit(&c0, t - 40 * 86_400, t - 40 * 86_400),
        ];
    });
    let (_token_dir, mut app) = app_polling(&server, json!({})).await;
    eventually_recorded(&app, &[&c1, &c2]).await;
    // The author time, as Gitea's push webhooks carry it.
    assert_eq!(commit_time(&app, &c1).await, Some((t - 1300) as f64));
    assert_eq!(commit_time(&app, &c0).await, None, "outside the window");
    assert_eq!(
        fake.count("/repos/acme/shop"),
        1,
        "the default branch, read once"
    );
    let listed = fake.requests("/repos/acme/shop/commits");
    assert_eq!(listed.len(), 3, "one commit a page, down to the window");
    let q = query(&listed[0].1);
    assert_eq!(q["sha"], c2, "listed from the head just read");
    assert!(!q.contains_key("not"));

    // Head unchanged: the branch is read, the commits are not.
    app.restart().await;
    eventually("a second head read", || async {
        fake.count("/branches/main") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.count("/repos/acme/shop/commits"), 3);

    // The head moves: one listing, without what the old head reached.
    fake.with(|repo| {
        repo.max_items = 50;
        repo.commits.insert(0, commit(&c3, t - 60, t - 60));
    });
    app.restart().await;
    eventually("the pushed commit", || async {
        commit_time(&app, &c3).await.is_some()
    })
    .await;
    let listed = fake.requests("/repos/acme/shop/commits");
    assert_eq!(listed.len(), 4);
    let q = query(&listed[3].1);
    assert_eq!(
        (q["sha"].as_str(), q["not"].as_str()),
        (c3.as_str(), c2.as_str())
    );
    let pushes: Vec<String> = app
        .ledger()
        .into_iter()
        .filter(|r| r.event == "push")
        .map(|r| r.outcome)
        .collect();
    assert_eq!(pushes, ["accepted", "accepted"], "{pushes:?}");
    for (_, request) in fake.log.lock().unwrap().iter() {
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            &format!("token {TOKEN}")
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_status_polled_and_delivered_by_webhook_counts_once() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let t = now();
    let head = "c5feabde2d8cd023215af4d2ceeb7a64839fc428";
    let status = |id: u64, context: &str, state: &str, at: i64| {
        json!({
            "id": id, "status": state, "state": state, "context": context,
            "target_url": "https://ci.example.com/1", "description": "",
            "url": format!("http://localhost/api/v1/repos/acme/shop/statuses/{head}"),
            "creator": {"login": "ci"},
            "created_at": rfc3339(at), "updated_at": rfc3339(at)
        })
    };
    let deployed = status(3, "deploy/production", "success", t - 300);
    fake.with(|repo| {
        repo.commits = vec![commit(head, t - 900, t - 900)];
        repo.statuses.insert(
            head.into(),
            vec![
                status(1, "deploy/production", "pending", t - 600),
                status(2, "ci/build", "success", t - 500),
                deployed.clone(),
            ],
        );
    });
    let source = json!({"secrets": [SECRET], "deploy_workflows": ["deploy/production"]});
    let (_token_dir, mut app) = app_polling(&server, source).await;
    eventually_deployed(&app, 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deployments_total(&app).await, 1.0);
    assert_eq!(fake.count(&format!("/statuses/{head}")), 1);

    // The same status as Gitea's webhook: already counted.
    let mut payload = deployed.clone();
    payload["sha"] = json!(head);
    payload["repository"] = json!({"full_name": "acme/shop"});
    assert_webhook_is_duplicate(&app, "gitea", "status", "hook-status-3", &payload).await;
    assert_eq!(deployments_total(&app).await, 1.0);

    // Deployed: its statuses are let go.
    app.restart().await;
    eventually("a second head read", || async {
        fake.count("/branches/main") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.count(&format!("/statuses/{head}")), 1);
    app.shutdown().await;
}

pub(crate) fn pull(
    number: u64,
    title: &str,
    author: &str,
    base: &str,
    created: i64,
    updated: i64,
) -> Value {
    json!({
        "id": 500 + number, "number": number, "title": title, "body": "", "state": "open",
        "url": format!("http://localhost/acme/shop/pulls/{number}"),
        "user": {"id": 1, "login": author, "username": author},
        "labels": [], "milestone": null, "assignee": null, "assignees": null,
        "is_locked": false, "comments": 0, "html_url": "", "diff_url": "", "patch_url": "",
        "mergeable": true, "merged": false, "merged_at": null, "merge_commit_sha": null,
        "merged_by": null,
        "base": {"label": base, "ref": base, "sha": "b".repeat(40), "repo_id": 1},
        "head": {"label": "topic", "ref": "topic", "sha": "a".repeat(40), "repo_id": 1},
        "merge_base": "b".repeat(40), "due_date": null,
        "created_at": rfc3339(created), "updated_at": rfc3339(updated), "closed_at": null
    })
}

pub(crate) fn review(id: u64, by: &str, state: &str, at: i64) -> Value {
    json!({
        "id": id, "user": {"login": by}, "team": null, "state": state, "body": "",
        "commit_id": "a".repeat(40), "stale": false, "official": false, "dismissed": false,
        "comments_count": 0, "submitted_at": rfc3339(at), "updated_at": rfc3339(at),
        "html_url": "", "pull_request_url": ""
    })
}

/// Gitea's part of the review waits (the scenario every provider shares is
/// in `poll_reviews.rs`): a title that says work in progress on an
/// instance without `draft`, a base filtered here, and review requests and
/// pending reviews that are no reviews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wip_titles_other_bases_and_review_requests_do_not_end_a_wait() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let t = now();
    let day = 86_400;
    fake.with(|repo| {
        repo.pulls = vec![
            // An instance without `draft`: the title says so.
            pull(
                9,
                "WIP: cart rework",
                "cat",
                "main",
                t - 2 * day,
                t - 2 * day,
            ),
            pull(10, "docs", "dan", "develop", t - 2 * day, t - 2 * day),
            pull(11, "retry payments", "eve", "main", t - day, t - day),
            pull(12, "fix typo", "fay", "main", t - day, t - day),
        ];
        // A review request and a pending review are no reviews, nor is the
        // author's own comment; someone else's comment is.
        repo.reviews.insert(
            11,
            vec![
                review(110, "bob", "REQUEST_REVIEW", t - 3600),
                review(111, "bob", "PENDING", t - 1800),
                review(112, "eve", "COMMENT", t - 600),
            ],
        );
        repo.reviews
            .insert(12, vec![review(120, "gus", "COMMENT", t - 600)]);
    });
    let (_token_dir, app) = app_polling(&server, json!({})).await;
    eventually("one pull request waiting", || async {
        awaiting_review(&app).await == 1.0
    })
    .await;
    let waits = review_waits(&app).await;
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert_eq!(waits[0].0, "11");
    assert!(
        (day as f64..day as f64 + 60.0).contains(&waits[0].1),
        "#11 waits since its creation: {waits:?}"
    );
    for (n, reads) in [(9, 0), (10, 0), (11, 1), (12, 1)] {
        assert_eq!(fake.count(&format!("/pulls/{n}/reviews")), reads, "#{n}");
    }
    app.shutdown().await;
}

/// A Gitea poller of `acme/shop` on the fake, stepped on `rig`.
fn gitea(rig: &Rig, server: &MockServer) -> Stepped<GiteaPoller> {
    let api_url = format!("{}/api/v1", server.uri());
    let (new, with_clock) = (GiteaPoller::new, GiteaPoller::with_clock);
    rig.shop_poller(Provider::Gitea, &api_url, TOKEN, new, with_clock)
}

#[tokio::test]
async fn a_proxy_429_with_retry_after_holds_every_stream_until_then() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    fake.with(|repo| repo.throttle = 1);
    let rig = Rig::start().await;
    let mut shop = gitea(&rig, &server);
    let (first, limited) = shop.step(&rig).await;
    assert!(
        matches!(limited, Err(PollError::RateLimited { .. })),
        "{limited:?}"
    );
    // Every stream waits: one polled meanwhile asks nothing.
    let held = shop.poll(&rig, Stream::Commits).await;
    assert!(
        matches!(held, Err(PollError::RateLimited { .. })),
        "{held:?}"
    );
    assert_eq!(fake.log.lock().unwrap().len(), 1);
    let (_, wait) = shop.next(&rig);
    assert!(
        wait >= Duration::from_secs(2),
        "the next request comes {wait:?} after a Retry-After of 2 s"
    );
    assert!(wait < Duration::from_secs(5), "{wait:?}");
    let (again, result) = shop.step(&rig).await;
    assert_eq!(again, first, "the refused stream is the first polled again");
    assert!(result.is_ok(), "{result:?}");
    let log = fake.log.lock().unwrap().clone();
    assert_eq!(
        log[1].1.url.path(),
        log[0].1.url.path(),
        "the refused request is the first sent again"
    );
    assert_eq!(answered(&rig.scrape(), "issues", "429"), 1.0);
    rig.shutdown().await;
}

#[tokio::test]
async fn a_deleted_repository_is_not_asked_again_soon() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    fake.with(|repo| repo.deleted = true);
    let rig = Rig::start().await;
    let mut shop = gitea(&rig, &server);
    for result in shop.poll_each(&rig).await {
        assert!(matches!(result, Err(PollError::Gone { .. })), "{result:?}");
    }
    let paths: Vec<String> = fake
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.url.path().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/repos/acme/shop/issues",
            "/api/v1/repos/acme/shop",
            "/api/v1/repos/acme/shop"
        ],
        "one 404 per stream"
    );
    assert_eq!(answered(&rig.scrape(), "repository", "404"), 2.0);
    // Then nothing until the longest interval (30 min).
    assert!(shop.schedule.degraded());
    let (_, wait) = shop.next(&rig);
    assert!(wait >= Duration::from_secs(29 * 60), "{wait:?}");
    rig.shutdown().await;
}

/// `hookgauge check-config` on `config`: exit code, stdout, stderr.
fn check_config(config: &std::path::Path) -> (i32, String, String) {
    crate::cli::run(&["check-config", "--config", config.to_str().unwrap()], &[])
}

#[test]
fn check_config_describes_a_gitea_repository_and_requires_its_api_url() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("poll.toml");
    let entry = format!(
        "[[poll.gitea]]\nrepo = \"acme/shop\"\ntoken_file = {:?}\n",
        token.display().to_string()
    );
    std::fs::write(
        &config,
        format!(
            "[sources.gitea]\nsecrets = [\"s3cr3t\"]\ndeploy_workflows = [\"deploy/production\"]\n\n{entry}api_url = \"https://git.example.com/api/v1\"\nquota_per_hour = 3600\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(
            "# poll gitea acme/shop at https://git.example.com/api/v1: incident issues, commits, \
             open pull requests' reviews, deploys from commit statuses deploy/production of the \
             default branch, mapped by [sources.gitea]"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN), "the token is never printed");

    // Gitea has no default address.
    std::fs::write(&config, &entry).unwrap();
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("poll.gitea[0].api_url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_quota_every_request_is_paid_and_the_budget_is_never_passed() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let token_dir = tempfile::tempdir().unwrap();
    let mut entry = gitea_entry(&server, &token_dir);
    // Half of 6 an hour is this service's: 3 requests (a poll of the three
    // streams takes 4), then nothing until the hour is over.
    entry.quota_per_hour = Some(6);
    let app = spawn_app_with(|raw| raw.poll.gitea = vec![entry]).await;
    eventually("the budget spent", || async {
        fake.log.lock().unwrap().len() >= 3
    })
    .await;
    eventually("the poller held", || async {
        app.scrape()
            .await
            .value("hookgauge_poll_backoff_seconds", &[("repo", "acme/shop")])
            > 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let times: Vec<Instant> = fake.log.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 3, "requests past the budget");
    // At most 10 a second, even within the budget.
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(95),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    let backoff = app
        .scrape()
        .await
        .value("hookgauge_poll_backoff_seconds", &[("repo", "acme/shop")]);
    assert!(backoff > 3000.0, "held {backoff} s, until the hour is over");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_history_is_read_by_date_from_the_old_heads_time() {
    let server = MockServer::start().await;
    let fake = FakeGitea::start(&server).await;
    let t = now();
    let (c1, c2, c8, c9) = (sha(1), sha(2), sha(8), sha(9));
    fake.with(|repo| {
        repo.commits = vec![commit(&c2, t - 600, t - 600), commit(&c1, t - 900, t - 900)]
    });
    let (_token_dir, mut app) = app_polling(&server, json!({})).await;
    eventually("the first head's commits", || async {
        commit_time(&app, &c2).await.is_some()
    })
    .await;
    // Force-pushed: the old head is gone; the new history shares nothing
    // with it. c8 is older than the old head's time less the overlap.
    fake.with(|repo| {
        repo.commits = vec![
            commit(&c9, t - 60, t - 60),
            commit(&c8, t - 3_600, t - 3_600),
        ];
    });
    app.restart().await;
    eventually("the rewritten head's commit", || async {
        commit_time(&app, &c9).await.is_some()
    })
    .await;
    let listed: Vec<Option<String>> = fake
        .requests("/repos/acme/shop/commits")
        .iter()
        .map(|(_, r)| query(r).get("not").cloned())
        .collect();
    assert_eq!(listed, [None, Some(c2.clone()), None], "{listed:?}");
    assert_eq!(fake.count(&format!("/git/commits/{c2}")), 1);
    assert_eq!(
        commit_time(&app, &c8).await,
        None,
        "older than the old head"
    );
    app.shutdown().await;
}
