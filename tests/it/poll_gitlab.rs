//! The GitLab poller against a fake GitLab (wiremock) that behaves as REST
//! v4 documents: `Authorization: Bearer` checked on every request,
//! `RateLimit-*` headers, offset pagination with `Link` (and the `x-*`
//! page headers), `updated_after` filters, and a 400 when a deployments
//! `updated_after` is not paired with `order_by=updated_at`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use hookgauge::poll::{Clock, GitlabPoller, PollError, Provider, Stream};

use crate::harness::{now, TestApp, SECRET};
use crate::polling::{
    answered, assert_webhook_is_duplicate, awaiting_review, commit_time, deployments_of,
    deployments_total, eventually, eventually_deployed, eventually_recorded, http_date,
    requests_to, review_waits, rfc3339, Rig, Stepped, BRANCH_COMMITS,
};

pub(crate) const TOKEN: &str = "glpat-fake-token-for-tests";
pub(crate) const PROJECT: &str = "/api/v4/projects/42";
const HEAD: &str = "c5feabde2d8cd023215af4d2ceeb7a64839fc428";

/// GitLab's timestamps: RFC 3339 with milliseconds.
pub(crate) fn gitlab_time(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .timestamp()
}

/// A 401 unless the request carries the token as a bearer token.
fn unauthorized(request: &Request) -> Option<ResponseTemplate> {
    let auth = request
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    (auth != Some(&format!("Bearer {TOKEN}")))
        .then(|| ResponseTemplate::new(401).set_body_json(json!({"message": "401 Unauthorized"})))
}

/// An answer with the rate-limit headers of gitlab.com (a minute's quota).
fn answer(status: u16) -> ResponseTemplate {
    let t = now();
    ResponseTemplate::new(status)
        .insert_header("ratelimit-name", "throttle_authenticated_api")
        .insert_header("ratelimit-limit", "2000")
        .insert_header("ratelimit-observed", "10")
        .insert_header("ratelimit-remaining", "1990")
        .insert_header("ratelimit-reset", (t - t % 60 + 60).to_string().as_str())
}

fn query(request: &Request) -> HashMap<String, String> {
    request.url.query_pairs().into_owned().collect()
}

/// A JSON object (the project, a branch, approvals) behind the token.
pub(crate) struct Object(Arc<Mutex<Value>>);

impl Object {
    pub(crate) fn new(body: Value) -> (Object, Arc<Mutex<Value>>) {
        let body = Arc::new(Mutex::new(body));
        (Object(Arc::clone(&body)), body)
    }
}

impl Respond for Object {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(refused) = unauthorized(request) {
            return refused;
        }
        answer(200).set_body_json(self.0.lock().unwrap().clone())
    }
}

/// A list endpoint as REST v4 serves it: filtered by the query
/// parameters it documents, sorted by `order_by`/`sort`, paged by `page`
/// and `per_page` (default 20, at most 100) with a `Link` header built
/// from the request's own URL.
#[derive(Clone)]
pub(crate) struct List {
    pub(crate) items: Arc<Mutex<Vec<Value>>>,
    /// The deployments endpoint refuses an unpaired `updated_after`.
    deployments: bool,
    /// An item (id) updated just after the first page was served: it
    /// moves to the end, and the later pages shift by one.
    moved_after_first_page: Arc<Mutex<Option<i64>>>,
    /// Every `rel="next"` URL sent.
    links: Arc<Mutex<Vec<String>>>,
    /// The server's address, which links start with (the recorded request
    /// URL does not carry it).
    origin: String,
}

impl List {
    pub(crate) fn new(server: &MockServer, items: Vec<Value>) -> List {
        List {
            items: Arc::new(Mutex::new(items)),
            deployments: false,
            moved_after_first_page: Arc::default(),
            links: Arc::default(),
            origin: server.uri(),
        }
    }

    fn deployments(server: &MockServer, items: Vec<Value>) -> List {
        List {
            deployments: true,
            ..List::new(server, items)
        }
    }

    pub(crate) fn set(&self, items: Vec<Value>) {
        *self.items.lock().unwrap() = items;
    }
}

impl Respond for List {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(refused) = unauthorized(request) {
            return refused;
        }
        let query = query(request);
        let paired = query.get("order_by").map(String::as_str) == Some("updated_at");
        if self.deployments
            && (query.contains_key("updated_after") || query.contains_key("updated_before"))
            && !paired
        {
            return answer(400).set_body_json(
                json!({"message": "400 Bad request - `updated_at` filter and `updated_at` sorting must be paired"}),
            );
        }
        let text = |item: &Value, field: &str| item[field].as_str().unwrap_or_default().to_owned();
        let mut items: Vec<Value> = self
            .items
            .lock()
            .unwrap()
            .iter()
            .filter(|item| {
                query.iter().all(|(key, value)| match key.as_str() {
                    "updated_after" => parse_time(&text(item, "updated_at")) > parse_time(value),
                    "since" => parse_time(&text(item, "committed_date")) >= parse_time(value),
                    "status" | "issue_type" | "state" | "target_branch" => {
                        text(item, key) == *value
                    }
                    "labels" => value.split(',').all(|label| {
                        item["labels"]
                            .as_array()
                            .is_some_and(|ls| ls.iter().any(|l| l.as_str() == Some(label)))
                    }),
                    _ => true,
                })
            })
            .cloned()
            .collect();
        if query.get("order_by").map(String::as_str) == Some("updated_at") {
            items.sort_by_key(|item| parse_time(&text(item, "updated_at")));
            if query.get("sort").map(String::as_str) != Some("asc") {
                items.reverse();
            }
        }
        let per_page = query
            .get("per_page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(20)
            .clamp(1, 100);
        let page = query
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let pages = items.len().div_ceil(per_page).max(1);
        let body: Vec<Value> = items
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .cloned()
            .collect();
        let link_to = |n: usize| {
            let mut url: reqwest::Url = format!("{}{}", self.origin, request.url.path())
                .parse()
                .unwrap();
            let kept: Vec<(String, String)> = query
                .iter()
                .filter(|(k, _)| k.as_str() != "page")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("page", &n.to_string());
            url.to_string()
        };
        let mut links = vec![
            format!("<{}>; rel=\"first\"", link_to(1)),
            format!("<{}>; rel=\"last\"", link_to(pages)),
        ];
        let mut template = answer(200)
            .insert_header("x-page", page.to_string().as_str())
            .insert_header("x-per-page", per_page.to_string().as_str())
            .insert_header("x-total", items.len().to_string().as_str())
            .insert_header("x-total-pages", pages.to_string().as_str());
        if page < pages {
            let next = link_to(page + 1);
            self.links.lock().unwrap().push(next.clone());
            links.insert(0, format!("<{next}>; rel=\"next\""));
            template = template.insert_header("x-next-page", (page + 1).to_string().as_str());
        }
        if page == 1 {
            if let Some(id) = self.moved_after_first_page.lock().unwrap().take() {
                let mut all = self.items.lock().unwrap();
                if let Some(item) = all.iter_mut().find(|i| i["id"].as_i64() == Some(id)) {
                    item["updated_at"] = json!(gitlab_time(now()));
                }
            }
        }
        template
            .insert_header("link", links.join(", ").as_str())
            .set_body_json(body)
    }
}

fn project() -> Value {
    json!({
        "id": 42, "name": "shop", "path": "shop", "path_with_namespace": "acme/shop",
        "default_branch": "main", "web_url": "https://gitlab.example/acme/shop"
    })
}

pub(crate) async fn mount(server: &MockServer, at: &str, responder: impl Respond + 'static) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(responder)
        .with_priority(1)
        .mount(server)
        .await;
}

/// Mounts `responder` at `at` behind the tests' own mocks.
async fn mount_quiet(server: &MockServer, at: &str, responder: impl Respond + 'static) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(responder)
        .mount(server)
        .await;
}

/// The project (by path and by id), a `main` whose head has no history,
/// and no deployment, incident or open merge request: for tests about
/// other streams.
pub(crate) async fn mount_quiet_project(server: &MockServer) {
    for at in ["/api/v4/projects/acme%2Fshop", PROJECT] {
        mount_quiet(server, at, Object::new(project()).0).await;
    }
    let head = json!({"name": "main", "commit": {"id": HEAD, "committed_date": gitlab_time(now() - 86_400)}});
    let branch = format!("{PROJECT}/repository/branches/main");
    mount_quiet(server, &branch, Object::new(head).0).await;
    let deployments = format!("{PROJECT}/deployments");
    mount_quiet(server, &deployments, List::deployments(server, Vec::new())).await;
    for list in ["issues", "repository/commits", "merge_requests"] {
        mount_quiet(
            server,
            &format!("{PROJECT}/{list}"),
            List::new(server, Vec::new()),
        )
        .await;
    }
}

/// The app polling `acme/shop` on the fake GitLab with a token from a
/// file (kept alive by the returned directory); `webhooks` also serves
/// `/hooks/gitlab`.
async fn app_polling(server: &MockServer, webhooks: bool) -> (tempfile::TempDir, TestApp) {
    let api_url = format!("{}/api/v4", server.uri());
    crate::polling::app_polling("gitlab", &api_url, TOKEN, "", |raw| {
        if webhooks {
            raw.sources
                .native
                .insert("gitlab".into(), json!({"secrets": [SECRET]}));
        }
    })
    .await
}

fn sha(n: i64) -> String {
    format!("{n:040x}")
}

/// A deployment of `sha(id)` to production, last updated at `updated`.
fn deployment(id: i64, updated: i64, status: &str) -> Value {
    json!({
        "id": id, "iid": id, "ref": "main", "sha": sha(id), "status": status,
        "created_at": gitlab_time(updated - 300), "updated_at": gitlab_time(updated),
        "user": {"id": 1, "username": "ann"},
        "environment": {"id": 9, "name": "production", "slug": "production", "external_url": null, "tier": "production"},
        "deployable": {"id": 1000 + id, "status": status, "finished_at": gitlab_time(updated - 5),
                       "web_url": format!("https://gitlab.example/acme/shop/-/jobs/{}", 1000 + id)}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_deployments_are_read_by_paired_updated_after_through_links_and_count_once() {
    let server = MockServer::start().await;
    let t = now();
    // 250 successful deployments (three pages of 100), an hour apart, and
    // a failed one the status filter leaves out.
    let mut items: Vec<Value> = (1..=250)
        .map(|id| deployment(id, t - (260 - id) * 3600, "success"))
        .collect();
    items.push(deployment(251, t - 600, "failed"));
    let deployments = List::deployments(&server, items);
    // Deployment 1 is updated while the pages are read: it moves to the
    // end, and deployment 101 slides onto the page already served.
    *deployments.moved_after_first_page.lock().unwrap() = Some(1);
    mount(
        &server,
        &format!("{PROJECT}/deployments"),
        deployments.clone(),
    )
    .await;
    mount_quiet_project(&server).await;
    let (_token_dir, mut app) = app_polling(&server, true).await;

    eventually_deployed(&app, 249.0).await;
    let lists = requests_to(&server, "/deployments").await;
    assert_eq!(lists.len(), 3, "three pages, and no page 4");
    for request in &lists {
        assert_eq!(
            request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        let query = query(request);
        assert_eq!(query["order_by"], "updated_at", "{query:?}");
        assert_eq!(query["sort"], "asc");
        assert_eq!(query["status"], "success");
        assert_eq!(query["per_page"], "100");
        assert!(query.contains_key("updated_after"), "{query:?}");
    }
    // The first request reaches 30 days back; later pages are the links
    // the server sent, byte for byte.
    let bootstrap = parse_time(&query(&lists[0])["updated_after"]) - (t - 30 * 86_400);
    assert!((0..5).contains(&bootstrap), "30 days back: {bootstrap}");
    let links = deployments.links.lock().unwrap().clone();
    assert_eq!(links.len(), 2);
    let followed = |r: &Request| {
        format!(
            "{}{}?{}",
            server.uri(),
            r.url.path(),
            r.url.query().unwrap_or_default()
        )
    };
    assert_eq!(followed(&lists[1]), links[0]);
    assert_eq!(followed(&lists[2]), links[1]);
    // The project was read once, by its path; the rest by its id.
    assert_eq!(requests_to(&server, "/projects/acme%2Fshop").await.len(), 1);

    // Deployment 250 delivered by webhook as well: already stored.
    let updated_250 = t - 10 * 3600;
    let hook = json!({
        "object_kind": "deployment", "status": "success",
        "status_changed_at": chrono::DateTime::from_timestamp(updated_250, 0).unwrap().format("%Y-%m-%d %H:%M:%S +0000").to_string(),
        "deployment_id": 250, "deployable_id": 1250, "environment": "production",
        "environment_tier": "production",
        "project": {"id": 42, "path_with_namespace": "acme/shop", "default_branch": "main"},
        "short_sha": &sha(250)[..8],
        "commit_url": format!("https://gitlab.example/acme/shop/-/commit/{}", sha(250)),
        "ref": "main"
    });
    assert_webhook_is_duplicate(&app, "gitlab", "Deployment Hook", "hook-250", &hook).await;
    assert_eq!(deployments_total(&app).await, 249.0);

    // A deployment moved while the pages were read: only the first page
    // is certain, so the next read (a restart polls at once) starts from
    // its newest update less the 2-minute overlap, finds deployment 101,
    // and counts deployment 1 (read again, updated) once.
    app.restart().await;
    eventually_deployed(&app, 250.0).await;
    let lists = requests_to(&server, "/deployments").await;
    let resumed = query(&lists[3]);
    assert_eq!(resumed["order_by"], "updated_at");
    assert_eq!(
        resumed["updated_after"],
        rfc3339(t - (260 - 100) * 3600 - 120)
    );
    eventually("the resumed read's last page", || async {
        requests_to(&server, "/deployments").await.len() == 5
    })
    .await;
    assert_eq!(deployments_total(&app).await, 250.0);
    app.shutdown().await;
}

/// Deployments answered 429 three ways, then 200: `Retry-After` (with a
/// later `RateLimit-Reset`), then `RateLimit-Reset` alone, then neither;
/// resets on `clock`.
struct Throttled(AtomicUsize, Clock);

impl Respond for Throttled {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(refused) = unauthorized(request) {
            return refused;
        }
        let refused = json!({"message": "Retry later"});
        let now = self.1.now_seconds();
        let date = http_date(now);
        let template = match self.0.fetch_add(1, Ordering::SeqCst) {
            0 => ResponseTemplate::new(429)
                .insert_header("retry-after", "2")
                .insert_header("ratelimit-reset", (now + 30).to_string().as_str())
                .set_body_json(refused),
            1 => ResponseTemplate::new(429)
                .insert_header("ratelimit-reset", (now + 8).to_string().as_str())
                .set_body_json(refused),
            2 => ResponseTemplate::new(429).set_body_json(refused),
            _ => answer(200).set_body_json(json!([deployment(7, now - 600, "success")])),
        };
        // The server's clock is the rig's.
        template.insert_header("date", date.as_str())
    }
}

/// A GitLab poller of `acme/shop` on the fake, stepped on `rig`.
fn gitlab(rig: &Rig, server: &MockServer) -> Stepped<GitlabPoller> {
    let api_url = format!("{}/api/v4", server.uri());
    let (new, with_clock) = (GitlabPoller::new, GitlabPoller::with_clock);
    rig.shop_poller(Provider::Gitlab, &api_url, TOKEN, new, with_clock)
}

#[tokio::test]
async fn gitlab_429s_wait_for_retry_after_then_the_reset_then_back_off() {
    let server = MockServer::start().await;
    let rig = Rig::start().await;
    mount(
        &server,
        &format!("{PROJECT}/deployments"),
        Throttled(AtomicUsize::new(0), rig.clock.clone()),
    )
    .await;
    mount_quiet_project(&server).await;
    let mut shop = gitlab(&rig, &server);
    // When each deployments request went (seconds on the rig's clock).
    let mut times = Vec::new();
    while times.len() < 4 {
        let (stream, result) = shop.step(&rig).await;
        if stream == Stream::Deployments {
            times.push(rig.since_start().as_secs_f64());
            assert_eq!(result.is_ok(), times.len() == 4, "{result:?}");
        }
        assert!(rig.since_start() < Duration::from_secs(60), "{times:?}");
    }
    assert_eq!(requests_to(&server, "/deployments").await.len(), 4);
    assert_eq!(deployments_of(&rig.scrape()), 1.0);
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Retry-After: 2 s, although the reset is 30 s ahead.
    assert!((1.9..4.0).contains(&gaps[0]), "{gaps:?}");
    // RateLimit-Reset alone, 8 s ahead: until the reset and a second
    // (more than the 4 s a second refusal in a row backs off at least).
    assert!(gaps[1] >= 7.5, "{gaps:?}");
    // Neither: backoff (the first failure waits at most 2 s), not the
    // earlier reset.
    assert!(gaps[2] < 3.0, "{gaps:?}");
    rig.shutdown().await;
}

#[tokio::test]
async fn a_gitlab_403_is_not_retried_while_other_streams_go_on() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{PROJECT}/deployments")))
        .respond_with(answer(403).set_body_json(json!({"message": "403 Forbidden"})))
        .with_priority(1)
        .mount(&server)
        .await;
    mount_quiet_project(&server).await;
    let rig = Rig::start().await;
    let mut shop = gitlab(&rig, &server);
    let refused = shop.poll(&rig, Stream::Deployments).await;
    assert!(matches!(refused, Err(PollError::Refused(_))), "{refused:?}");
    assert!(shop.schedule.degraded());
    // The other streams go on; the refused one waits for its longest
    // interval (30 min).
    while rig.since_start() + shop.next(&rig).1 < Duration::from_secs(29 * 60) {
        let (stream, result) = shop.step(&rig).await;
        assert_ne!(stream, Stream::Deployments, "at {:?}", rig.since_start());
        assert!(result.is_ok(), "{stream:?}: {result:?}");
    }
    assert!(!requests_to(&server, "/merge_requests").await.is_empty());
    assert_eq!(requests_to(&server, "/deployments").await.len(), 1);
    let scrape = rig.scrape();
    assert_eq!(answered(&scrape, "deployments", "403"), 1.0);
    // The quota is read from GitLab's headers.
    assert_eq!(
        scrape.value(
            "hookgauge_poll_rate_limit_remaining",
            &[("repo", "acme/shop")]
        ),
        1990.0
    );
    rig.shutdown().await;
}

fn issue(
    id: i64,
    iid: i64,
    issue_type: &str,
    labels: &[&str],
    created: i64,
    closed: Option<i64>,
) -> Value {
    json!({
        "id": id, "iid": iid, "project_id": 42, "title": "Checkout down",
        "state": if closed.is_some() { "closed" } else { "opened" },
        "type": issue_type.to_uppercase(), "issue_type": issue_type, "labels": labels,
        "created_at": gitlab_time(created), "updated_at": gitlab_time(closed.unwrap_or(created)),
        "closed_at": closed.map(gitlab_time),
        "web_url": format!("https://gitlab.example/acme/shop/-/issues/{iid}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_incidents_by_type_and_label_count_once_and_resume_after_the_overlap() {
    let server = MockServer::start().await;
    let t = now();
    let (opened, closed) = (t - 7200, t - 3600);
    // #3 is an incident also labelled `incident`; #4 an issue labelled so;
    // #5 an issue that is neither.
    let issues = List::new(
        &server,
        vec![
            issue(103, 3, "incident", &["incident"], opened, Some(closed)),
            issue(104, 4, "issue", &["incident", "checkout"], t - 1800, None),
            issue(105, 5, "issue", &["bug"], t - 1800, None),
        ],
    );
    mount(&server, &format!("{PROJECT}/issues"), issues.clone()).await;
    mount_quiet_project(&server).await;
    let (_token_dir, mut app) = app_polling(&server, false).await;
    let failures = |scrape: &crate::harness::Scrape, name: &str| {
        scrape.value_or_zero(name, &[("app", "acme/shop")])
    };
    eventually("the incidents", || async {
        let scrape = app.scrape().await;
        failures(&scrape, "hookgauge_failures_total") == 2.0
            && failures(&scrape, "hookgauge_failures_resolved_total") == 1.0
    })
    .await;
    assert_eq!(
        failures(&app.scrape().await, "hookgauge_time_to_restore_seconds_sum"),
        3_600.0
    );
    let reads = requests_to(&server, "/issues").await;
    assert_eq!(reads.len(), 2, "one read by type, one by label");
    let queries: Vec<HashMap<String, String>> = reads.iter().map(query).collect();
    assert_eq!(queries[0]["issue_type"], "incident");
    assert_eq!(queries[1]["labels"], "incident");
    for q in &queries {
        assert_eq!(q["order_by"], "updated_at");
        assert_eq!(q["sort"], "asc");
        let bootstrap = parse_time(&q["updated_after"]) - (t - 30 * 86_400);
        assert!((0..5).contains(&bootstrap), "30 days back: {bootstrap}");
    }

    // An incident committed late: its update is older than the newest one
    // read, but within the overlap.
    let mut items = issues.items.lock().unwrap().clone();
    items.push(issue(106, 6, "incident", &[], closed - 60, None));
    issues.set(items);

    // After a restart each read starts from its newest update less the
    // overlap; what is read again is not counted again, the late incident
    // is.
    app.restart().await;
    eventually("the second reads", || async {
        requests_to(&server, "/issues").await.len() == 4
    })
    .await;
    let reads = requests_to(&server, "/issues").await;
    assert_eq!(query(&reads[2])["updated_after"], rfc3339(closed - 120));
    assert_eq!(query(&reads[3])["updated_after"], rfc3339(t - 1800 - 120));
    eventually("the late incident", || async {
        failures(&app.scrape().await, "hookgauge_failures_total") == 3.0
    })
    .await;
    let scrape = app.scrape().await;
    assert_eq!(failures(&scrape, "hookgauge_failures_resolved_total"), 1.0);
    // Since the restart only the late incident was recorded, and nothing
    // read again within the overlap was even offered as a duplicate.
    let delivered = |outcome: &str| {
        scrape.value_or_zero(
            "hookgauge_deliveries_total",
            &[
                ("source", "gitlab"),
                ("event", "issue"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(delivered("accepted"), 1.0);
    assert_eq!(delivered("duplicate"), 0.0);
    app.shutdown().await;
}

fn commit(id: &str, at: i64) -> Value {
    json!({
        "id": id, "short_id": &id[..8], "title": "change", "message": "change\n",
        "author_name": "Ann", "author_email": "ann@example.com",
        "authored_date": gitlab_time(at), "committed_date": gitlab_time(at),
        "web_url": format!("https://gitlab.example/acme/shop/-/commit/{id}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_commits_come_from_the_branch_head_and_a_compare() {
    let server = MockServer::start().await;
    let t = now();
    let (c1, c2, c3) = BRANCH_COMMITS;
    let (branch, head) = Object::new(json!({"name": "main", "commit": {"id": c2}}));
    mount(
        &server,
        &format!("{PROJECT}/repository/branches/main"),
        branch,
    )
    .await;
    // The first poll lists the bootstrap window, newest first.
    let history = List::new(&server, vec![commit(c2, t - 600), commit(c1, t - 1200)]);
    mount(&server, &format!("{PROJECT}/repository/commits"), history).await;
    let (compare, _) = Object::new(json!({
        "commit": commit(c3, t - 60), "commits": [commit(c3, t - 60)], "diffs": [],
        "compare_timeout": false, "compare_same_ref": false,
        "web_url": format!("https://gitlab.example/acme/shop/-/compare/{c2}...{c3}")
    }));
    mount(&server, &format!("{PROJECT}/repository/compare"), compare).await;
    mount_quiet_project(&server).await;

    let (_token_dir, mut app) = app_polling(&server, false).await;
    eventually_recorded(&app, &[c1, c2]).await;
    assert_eq!(commit_time(&app, c1).await, Some((t - 1200) as f64));
    let listed = requests_to(&server, "/repository/commits").await;
    assert_eq!(listed.len(), 1);
    let q = query(&listed[0]);
    assert_eq!(q["ref_name"], "main");
    let bootstrap = parse_time(&q["since"]) - (t - 30 * 86_400);
    assert!((0..5).contains(&bootstrap), "30 days back: {bootstrap}");

    // The head moves: one compare, from the old head to the new.
    head.lock().unwrap()["commit"]["id"] = json!(c3);
    app.restart().await;
    eventually("the pushed commit", || async {
        commit_time(&app, c3).await.is_some()
    })
    .await;
    let compares = requests_to(&server, "/repository/compare").await;
    assert_eq!(compares.len(), 1);
    let q = query(&compares[0]);
    assert_eq!((q["from"].as_str(), q["to"].as_str()), (c2, c3));
    assert_eq!(requests_to(&server, "/repository/commits").await.len(), 1);

    // Unmoved: the branch is read, nothing else.
    let merge_requests = requests_to(&server, "/merge_requests").await.len();
    app.restart().await;
    eventually("a third branch read", || async {
        requests_to(&server, "/repository/branches/main")
            .await
            .len()
            == 3
    })
    .await;
    eventually("the merge requests after it", || async {
        requests_to(&server, "/merge_requests").await.len() > merge_requests
    })
    .await;
    assert_eq!(requests_to(&server, "/repository/compare").await.len(), 1);
    assert_eq!(requests_to(&server, "/repository/commits").await.len(), 1);
    app.shutdown().await;
}

pub(crate) fn merge_request(
    iid: u64,
    author: &str,
    created: i64,
    updated: i64,
    draft: bool,
    reviewers: &[&str],
) -> Value {
    json!({
        "id": 1000 + iid, "iid": iid, "project_id": 42, "title": "Change", "state": "opened",
        "draft": draft, "work_in_progress": draft, "target_branch": "main", "source_branch": format!("f{iid}"),
        "created_at": gitlab_time(created), "updated_at": gitlab_time(updated),
        "author": {"id": 1, "username": author}, "sha": HEAD,
        "reviewers": reviewers.iter().map(|r| json!({"username": r})).collect::<Vec<_>>()
    })
}

pub(crate) fn approvals(by: &[(&str, i64)]) -> Value {
    json!({
        "approved": !by.is_empty(), "approvals_required": 0, "approvals_left": 0,
        "approved_by": by.iter().map(|(who, at)| json!({"user": {"username": who}, "approved_at": gitlab_time(*at)})).collect::<Vec<_>>()
    })
}

/// GitLab's part of the review waits (the scenario every provider shares
/// is in `poll_reviews.rs`): the target branch asked on the server and
/// filtered here, the author's approval no review, and reviewers' states
/// read only where someone was asked and nobody approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_reviewers_are_read_only_where_someone_was_asked_and_nobody_approved() {
    let server = MockServer::start().await;
    let t = now();
    let day = 86_400;
    let mut other_branch = merge_request(6, "ann", t - 4 * day, t - 4 * day, false, &[]);
    other_branch["target_branch"] = json!("release");
    // !3 marked ready half an hour ago, approved by its author only, its
    // reviewer not done; !4 approved by eve; !5 reviewed by gus, who was
    // asked.
    let mrs = List::new(
        &server,
        vec![
            merge_request(3, "cat", t - 2 * day, t - 1800, false, &["bob"]),
            merge_request(4, "dan", t - 2 * day, t - 2 * day, false, &["eve"]),
            merge_request(5, "fay", t - 2 * day, t - 2 * day, false, &["gus"]),
            other_branch,
        ],
    );
    mount(&server, &format!("{PROJECT}/merge_requests"), mrs).await;
    for (iid, by) in [
        (3, vec![("cat", t - 600)]),
        (4, vec![("eve", t - day)]),
        (5, vec![]),
    ] {
        let (approvals, _) = Object::new(approvals(&by));
        mount(
            &server,
            &format!("{PROJECT}/merge_requests/{iid}/approvals"),
            approvals,
        )
        .await;
    }
    let reviewers = |who: &str, state: &str| {
        List::new(
            &server,
            vec![
                json!({"user": {"username": who}, "state": state, "created_at": gitlab_time(t - day)}),
            ],
        )
    };
    mount(
        &server,
        &format!("{PROJECT}/merge_requests/3/reviewers"),
        reviewers("bob", "unreviewed"),
    )
    .await;
    mount(
        &server,
        &format!("{PROJECT}/merge_requests/5/reviewers"),
        reviewers("gus", "reviewed"),
    )
    .await;
    let note = |body: &str, at: i64| json!({"id": at, "body": body, "system": true, "created_at": gitlab_time(at), "author": {"username": "cat"}});
    let notes_3 = List::new(
        &server,
        vec![note("marked this merge request as **ready**", t - 1800)],
    );
    mount(
        &server,
        &format!("{PROJECT}/merge_requests/3/notes"),
        notes_3,
    )
    .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            r"^/api/v4/projects/42/merge_requests/[0-9]+/notes$",
        ))
        .respond_with(List::new(&server, Vec::new()))
        .mount(&server)
        .await;
    mount_quiet_project(&server).await;

    let (_token_dir, app) = app_polling(&server, false).await;
    eventually("one merge request waiting", || async {
        awaiting_review(&app).await == 1.0
    })
    .await;
    let waits = review_waits(&app).await;
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert_eq!(waits[0].0, "3");
    assert!(
        (1800.0..1860.0).contains(&waits[0].1),
        "!3 waits since it was last marked ready: {waits:?}"
    );
    let q = query(&requests_to(&server, "/merge_requests").await[0]);
    assert_eq!(q["state"], "opened");
    assert_eq!(q["target_branch"], "main");
    let count = |suffix: String| {
        let server = &server;
        async move { requests_to(server, &suffix).await.len() }
    };
    assert_eq!(count("/merge_requests/6/approvals".into()).await, 0);
    for iid in [3, 4, 5] {
        assert_eq!(
            count(format!("/merge_requests/{iid}/approvals")).await,
            1,
            "!{iid}"
        );
    }
    for (iid, reads) in [(3, 1), (4, 0), (5, 1)] {
        assert_eq!(
            count(format!("/merge_requests/{iid}/reviewers")).await,
            reads,
            "!{iid}"
        );
    }
    app.shutdown().await;
}
