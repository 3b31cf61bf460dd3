//! The GitHub poller against a fake GitHub (wiremock) that behaves as the
//! REST API documents: weak ETags answered 304 only on an exact
//! `If-None-Match`, rate-limit headers on every answer, a primary limit
//! answered 403 with `x-ratelimit-remaining: 0`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use hookgauge::poll::{token_gates, GithubPoller, PollError, Provider, Stream};

use crate::harness::{now, TestApp, SECRET};
use crate::polling::{
    answered, assert_webhook_is_duplicate, awaiting_review, commit_time, deployments_of,
    deployments_total, eventually, eventually_answered, eventually_deployed, eventually_recorded,
    http_date, requests_to, review_waits, rfc3339, Rig, Stepped, BRANCH_COMMITS,
};

pub(crate) const TOKEN: &str = "ghp_fake_token_for_tests";

/// A JSON list with a weak ETag: 304 when `If-None-Match` repeats it
/// byte for byte, after checking the request carries a valid token.
struct Conditional {
    body: Value,
    etag: String,
    remaining: Arc<AtomicUsize>,
}

/// Serves `body` at `path` as a [`Conditional`] list with `etag`, counting
/// down `quota`.
async fn mount_conditional(
    server: &MockServer,
    url_path: &str,
    body: Value,
    etag: &str,
    quota: &Arc<AtomicUsize>,
) {
    Mock::given(method("GET"))
        .and(path(url_path))
        .respond_with(Conditional {
            body,
            etag: etag.into(),
            remaining: Arc::clone(quota),
        })
        .mount(server)
        .await;
}

impl Respond for Conditional {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let valid = [TOKEN, NEW_TOKEN].map(|t| format!("Bearer {t}"));
        if !header("authorization").is_some_and(|a| valid.contains(&a)) {
            return ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"}));
        }
        assert_eq!(
            header("x-github-api-version").as_deref(),
            Some("2022-11-28")
        );
        let remaining = self.remaining.fetch_sub(1, Ordering::SeqCst) - 1;
        let template = |status: u16| {
            ResponseTemplate::new(status)
                .insert_header("etag", self.etag.as_str())
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", remaining.to_string().as_str())
                .insert_header("x-ratelimit-reset", (now() + 3600).to_string().as_str())
        };
        if header("if-none-match").as_deref() == Some(self.etag.as_str()) {
            // A conditional hit costs no quota.
            self.remaining.fetch_add(1, Ordering::SeqCst);
            return template(304);
        }
        template(200).set_body_json(self.body.clone())
    }
}

/// A [`Conditional`] list whose content a test changes; its ETag follows
/// the content.
#[derive(Clone)]
pub(crate) struct Listing {
    body: Arc<std::sync::Mutex<Value>>,
    remaining: Arc<AtomicUsize>,
}

impl Listing {
    pub(crate) fn new(body: Value) -> Listing {
        Listing {
            body: Arc::new(std::sync::Mutex::new(body)),
            remaining: Arc::new(AtomicUsize::new(5000)),
        }
    }

    pub(crate) fn set(&self, body: Value) {
        *self.body.lock().unwrap() = body;
    }
}

impl Respond for Listing {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        use std::hash::{Hash, Hasher};
        let body = self.body.lock().unwrap().clone();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        body.to_string().hash(&mut hasher);
        Conditional {
            body,
            etag: format!("W/\"{:x}\"", hasher.finish()),
            remaining: Arc::clone(&self.remaining),
        }
        .respond(request)
    }
}

fn deployment(id: i64, created_at: &str) -> Value {
    json!({
        "id": id, "sha": "c5feabde2d8cd023215af4d2ceeb7a64839fc428", "ref": "main",
        "environment": "production", "created_at": created_at, "payload": {},
        "url": format!("https://api.github.com/repos/acme/shop/deployments/{id}")
    })
}

/// The app polling `acme/shop` on the fake server with a token from a
/// file (kept alive by the returned directory); `webhooks` also serves
/// `/hooks/github`.
async fn app_polling(server: &MockServer, webhooks: bool) -> (tempfile::TempDir, TestApp) {
    app_polling_with(server, webhooks, "").await
}

/// [`app_polling`] with more keys (`extra`, TOML) in the poll entry.
async fn app_polling_with(
    server: &MockServer,
    webhooks: bool,
    extra: &str,
) -> (tempfile::TempDir, TestApp) {
    crate::polling::app_polling("github", &server.uri(), TOKEN, extra, |raw| {
        if webhooks {
            raw.sources
                .native
                .insert("github".into(), json!({"secrets": [SECRET]}));
        }
    })
    .await
}

/// An issues list with no incident, for tests about deployments.
pub(crate) async fn mount_no_incidents(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/issues"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(server)
        .await;
}

const HEAD: &str = "c5feabde2d8cd023215af4d2ceeb7a64839fc428";

/// A branch head as `Accept: application/vnd.github.sha` gets it: the bare
/// SHA, with the SHA as its ETag (304 while it matches).
struct BranchHead(Arc<std::sync::Mutex<String>>);

impl Respond for BranchHead {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        assert_eq!(
            request.headers.get("accept").and_then(|v| v.to_str().ok()),
            Some("application/vnd.github.sha")
        );
        let sha = self.0.lock().unwrap().clone();
        let etag = format!("\"{sha}\"");
        if request
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        {
            return ResponseTemplate::new(304).insert_header("etag", etag.as_str());
        }
        ResponseTemplate::new(200)
            .insert_header("etag", etag.as_str())
            .set_body_string(sha)
    }
}

/// No deployment and no incident, and the quiet streams below: for tests
/// that mount their commits or pull requests ahead of them.
async fn mount_quiet_but_for_commits_and_pulls(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(server)
        .await;
    mount_no_incidents(server).await;
    mount_quiet_streams(server).await;
}

/// The repository (default branch `main`), a `main` head with no history
/// and no open pull request: for tests about other streams.
pub(crate) async fn mount_quiet_streams(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"full_name": "acme/shop", "default_branch": "main"})),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/commits/main"))
        .respond_with(BranchHead(Arc::new(std::sync::Mutex::new(HEAD.into()))))
        .mount(server)
        .await;
    for list in ["/repos/acme/shop/commits", "/repos/acme/shop/pulls"] {
        Mock::given(method("GET"))
            .and(path(list))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
            .mount(server)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_deploy_counts_once_with_its_webhook_and_restarts_poll_conditionally() {
    let server = MockServer::start().await;
    let quota = Arc::new(AtomicUsize::new(5000));
    let created = now() - 600;
    let deployment = deployment(7, &rfc3339(created));
    let status = json!({
        "id": 70, "state": "success", "environment": "production",
        "created_at": rfc3339(created + 120), "description": "Deployed"
    });
    for (url_path, body, etag) in [
        (
            "/repos/acme/shop/deployments",
            json!([deployment]),
            "W/\"d1\"",
        ),
        (
            "/repos/acme/shop/deployments/7/statuses",
            json!([status]),
            "W/\"s1\"",
        ),
    ] {
        mount_conditional(&server, url_path, body, etag, &quota).await;
    }
    mount_no_incidents(&server).await;
    mount_quiet_streams(&server).await;

    let (_token_dir, mut app) = app_polling(&server, true).await;

    eventually_deployed(&app, 1.0).await;
    let lists = requests_to(&server, "/deployments").await;
    assert_eq!(lists.len(), 1);
    assert!(lists[0].headers.get("if-none-match").is_none());
    assert_eq!(requests_to(&server, "/statuses").await.len(), 1);
    // The finished deployment's statuses state went with it; the
    // deployments stream's stays.
    let streams = app.strings("SELECT stream FROM poll_state ORDER BY stream");
    assert!(
        streams.iter().any(|s| s.ends_with("|deployments")),
        "{streams:?}"
    );
    assert!(
        !streams.iter().any(|s| s.contains("|statuses|")),
        "{streams:?}"
    );
    let scrape = app.scrape().await;
    assert_eq!(answered(&scrape, "deployments", "200"), 1.0);
    assert_eq!(
        scrape.value(
            "hookgauge_poll_rate_limit_remaining",
            &[("repo", "acme/shop")]
        ),
        4998.0
    );

    // The same status as a webhook: the deploy is already stored.
    let payload = json!({
        "action": "created", "deployment_status": status, "deployment": deployment,
        "repository": {"full_name": "acme/shop"}
    });
    assert_webhook_is_duplicate(&app, "github", "deployment_status", "hook-1", &payload).await;
    assert_eq!(deployments_total(&app).await, 1.0);

    // After a restart the first request is conditional (the stored ETag,
    // byte for byte) and answered 304; the finished deployment's statuses
    // are not read again.
    app.restart().await;
    eventually("a second poll", || async {
        requests_to(&server, "/deployments").await.len() == 2
    })
    .await;
    let lists = requests_to(&server, "/deployments").await;
    assert_eq!(
        lists[1]
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some("W/\"d1\"")
    );
    eventually_answered(&app, "deployments", "304", 1.0).await;
    assert_eq!(requests_to(&server, "/statuses").await.len(), 1);
    assert_eq!(deployments_total(&app).await, 1.0);
    app.shutdown().await;
}

/// A GitHub poller of `acme/shop` on the fake, stepped on `rig`.
fn github(rig: &Rig, server: &MockServer) -> Stepped<GithubPoller> {
    let api_url = server.uri();
    let (new, with_clock) = (GithubPoller::new, GithubPoller::with_clock);
    rig.shop_poller(Provider::Github, &api_url, TOKEN, new, with_clock)
}

#[tokio::test]
async fn an_exhausted_quota_stops_requests_until_the_reset() {
    let server = MockServer::start().await;
    let rig = Rig::start().await;
    let reset = rig.clock.now_seconds() + 4;
    let clock = rig.clock.clone();
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(move |_: &Request| {
            ResponseTemplate::new(403)
                .insert_header("date", http_date(clock.now_seconds()).as_str())
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.to_string().as_str())
                .set_body_json(json!({"message": "API rate limit exceeded for user ID 1."}))
        })
        .mount(&server)
        .await;
    let mut shop = github(&rig, &server);
    let limited = shop.poll(&rig, Stream::Deployments).await;
    assert!(
        matches!(limited, Err(PollError::RateLimited { until }) if until == reset + 1),
        "{limited:?}"
    );
    // Silent until the reset (+1 s): every stream waits for it, and one
    // polled before then is refused without a request.
    let (_, wait) = shop.next(&rig);
    assert!(
        wait >= Duration::from_secs((reset + 1 - rig.clock.now_seconds()) as u64),
        "{wait:?}"
    );
    rig.advance(Duration::from_secs(2));
    let held = shop.poll(&rig, Stream::Incidents).await;
    assert!(
        matches!(held, Err(PollError::RateLimited { .. })),
        "{held:?}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    // Then one more attempt.
    let (stream, again) = shop.step(&rig).await;
    assert_eq!(stream, Stream::Deployments);
    assert!(rig.clock.now_seconds() > reset, "after the reset");
    assert!(
        matches!(again, Err(PollError::RateLimited { .. })),
        "{again:?}"
    );
    assert_eq!(requests_to(&server, "/deployments").await.len(), 2);
    // Refused again although the reset is past: it backs off (≥ 4 s), it
    // does not retry at once.
    assert!(
        shop.next(&rig).1 >= Duration::from_secs(4),
        "{:?}",
        shop.next(&rig)
    );
    assert_eq!(
        rig.scrape().value(
            "hookgauge_poll_rate_limit_remaining",
            &[("repo", "acme/shop")]
        ),
        0.0
    );
    rig.shutdown().await;
}

/// A page of deployments with a `Link` to the next one.
struct Page {
    body: Value,
    next: Option<String>,
}

impl Respond for Page {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut template = ResponseTemplate::new(200)
            .insert_header("etag", "W/\"p\"")
            .set_body_json(self.body.clone());
        if let Some(next) = &self.next {
            template = template.insert_header(
                "link",
                format!("<{next}>; rel=\"next\", <{next}>; rel=\"last\"").as_str(),
            );
        }
        template
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pages_are_followed_through_their_links() {
    let server = MockServer::start().await;
    let created = now() - 900;
    let page2 = format!(
        "{}/repositories/1/deployments?per_page=100&page=2",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(Page {
            body: json!([
                deployment(9, &rfc3339(created + 20)),
                deployment(8, &rfc3339(created + 10))
            ]),
            next: Some(page2),
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repositories/1/deployments"))
        .respond_with(Page {
            body: json!([deployment(7, &rfc3339(created))]),
            next: None,
        })
        .mount(&server)
        .await;
    for id in [7, 8, 9] {
        Mock::given(method("GET"))
            .and(path(format!("/repos/acme/shop/deployments/{id}/statuses")))
            .respond_with(Page {
                body: json!([{"id": id * 10, "state": "success", "environment": "production",
                              "created_at": rfc3339(created + id * 100)}]),
                next: None,
            })
            .mount(&server)
            .await;
    }
    mount_no_incidents(&server).await;
    mount_quiet_streams(&server).await;
    let (_token_dir, app) = app_polling(&server, false).await;
    eventually_deployed(&app, 3.0).await;
    let page2 = requests_to(&server, "/repositories/1/deployments").await;
    assert_eq!(page2.len(), 1, "the next page, by its link, once");
    assert_eq!(page2[0].url.query(), Some("per_page=100&page=2"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_issues_are_polled_since_their_watermark_and_counted_once() {
    let server = MockServer::start().await;
    let quota = Arc::new(AtomicUsize::new(5000));
    let opened = now() - 7_200;
    let closed = now() - 3_600;
    let incident = json!({
        "number": 12, "state": "closed", "title": "checkout down",
        "labels": [{"name": "incident"}],
        "created_at": rfc3339(opened), "closed_at": rfc3339(closed), "updated_at": rfc3339(closed)
    });
    let pull = json!({
        "number": 13, "state": "open", "labels": [{"name": "incident"}],
        "created_at": rfc3339(opened), "updated_at": rfc3339(opened),
        "pull_request": {"url": "https://api.github.com/repos/acme/shop/pulls/13"}
    });
    for (url_path, body, etag) in [
        ("/repos/acme/shop/deployments", json!([]), "W/\"empty\""),
        (
            "/repos/acme/shop/issues",
            json!([incident, pull]),
            "W/\"i1\"",
        ),
    ] {
        mount_conditional(&server, url_path, body, etag, &quota).await;
    }
    mount_quiet_streams(&server).await;
    let (_token_dir, mut app) = app_polling(&server, false).await;
    let failures = |scrape: &crate::harness::Scrape, name: &str| {
        scrape.value_or_zero(name, &[("app", "acme/shop")])
    };
    eventually("the incident", || async {
        failures(&app.scrape().await, "hookgauge_failures_resolved_total") == 1.0
    })
    .await;
    let scrape = app.scrape().await;
    assert_eq!(
        failures(&scrape, "hookgauge_failures_total"),
        1.0,
        "the pull request is not an incident"
    );
    assert_eq!(
        scrape.value(
            "hookgauge_time_to_restore_seconds_sum",
            &[("app", "acme/shop")]
        ),
        3_600.0
    );
    let first = &requests_to(&server, "/issues").await[0];
    let query: std::collections::HashMap<String, String> =
        first.url.query_pairs().into_owned().collect();
    assert_eq!(query["labels"], "incident");
    assert_eq!(query["state"], "all");
    assert_eq!(query["sort"], "updated");
    assert_eq!(query["direction"], "asc");

    // After a restart: since = the newest update less the 2-minute
    // overlap; what is read again is not counted again.
    app.restart().await;
    eventually("a second issues poll", || async {
        requests_to(&server, "/issues").await.len() == 2
    })
    .await;
    let second = &requests_to(&server, "/issues").await[1];
    let query: std::collections::HashMap<String, String> =
        second.url.query_pairs().into_owned().collect();
    assert_eq!(query["since"], rfc3339(closed - 120));
    let scrape = app.scrape().await;
    assert_eq!(failures(&scrape, "hookgauge_failures_total"), 1.0);
    assert_eq!(failures(&scrape, "hookgauge_failures_resolved_total"), 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn repositories_sharing_a_token_share_its_exhausted_quota() {
    let server = MockServer::start().await;
    // acme/shop exhausts the token; acme/cart answers 502, so its poller
    // would retry soon if it did not know the quota is gone.
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", (now() + 60).to_string().as_str())
                .set_body_json(json!({"message": "API rate limit exceeded for user ID 1."})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/cart/deployments"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    mount_no_incidents(&server).await;
    mount_quiet_streams(&server).await;
    let rig = Rig::start().await;
    let targets = ["acme/shop", "acme/cart"]
        .map(|repo| Rig::target(Provider::Github, repo, &server.uri(), TOKEN, ""));
    let gates = token_gates(&targets);
    let [shop, cart] = targets;
    let [shop_gate, cart_gate] = [Arc::clone(&gates[0]), Arc::clone(&gates[1])];
    let mut shop = rig.poller(shop, shop_gate, GithubPoller::new, GithubPoller::with_clock);
    let mut cart = rig.poller(cart, cart_gate, GithubPoller::new, GithubPoller::with_clock);
    let exhausted = shop.poll(&rig, Stream::Deployments).await;
    assert!(
        matches!(exhausted, Err(PollError::RateLimited { .. })),
        "{exhausted:?}"
    );
    rig.advance(Duration::from_secs(5));
    for (poller, repo) in [(&mut shop, "acme/shop"), (&mut cart, "acme/cart")] {
        let held = poller.poll(&rig, Stream::Deployments).await;
        assert!(
            matches!(held, Err(PollError::RateLimited { .. })),
            "{repo}: {held:?}"
        );
    }
    assert_eq!(
        requests_to(&server, "/repos/acme/shop/deployments")
            .await
            .len(),
        1
    );
    assert!(
        requests_to(&server, "/repos/acme/cart/deployments")
            .await
            .is_empty(),
        "cart sent nothing once the shared token was exhausted"
    );
    rig.shutdown().await;
}

pub(crate) fn pull(number: u64, author: &str, created: i64, updated: i64, draft: bool) -> Value {
    json!({
        "number": number, "state": "open", "draft": draft,
        "created_at": rfc3339(created), "updated_at": rfc3339(updated),
        "user": {"login": author}, "head": {"sha": HEAD}, "base": {"ref": "main"},
        "requested_reviewers": [], "requested_teams": []
    })
}

pub(crate) fn review(id: u64, by: &str, state: &str, at: i64) -> Value {
    json!({"id": id, "user": {"login": by}, "state": state, "submitted_at": rfc3339(at)})
}

/// Mounts `listing` at `at`, ahead of the quiet streams' mocks.
pub(crate) async fn mount_listing(server: &MockServer, at: &str, listing: &Listing) {
    Mock::given(method("GET"))
        .and(path(at))
        .respond_with(listing.clone())
        .with_priority(2)
        .mount(server)
        .await;
}

/// GitHub's part of the review waits (the scenario every provider shares
/// is in `poll_reviews.rs`): one base asked on the server, reviews read
/// again conditionally after a push without undoing them, and the waits
/// kept across restarts whether the list answers 304 or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_waits_survive_restarts_and_a_push_rereads_reviews_conditionally() {
    let server = MockServer::start().await;
    let t = now();
    let day = 86_400;
    let pulls = Listing::new(json!([
        pull(9, "cat", t - 2 * day, t - 3600, false),
        pull(10, "dan", t - 2 * day, t - 2 * day, false),
    ]));
    mount_listing(&server, "/repos/acme/shop/pulls", &pulls).await;
    let reviews_of_9 = Listing::new(json!([review(91, "bob", "APPROVED", t - 2 * day + 60)]));
    mount_listing(&server, "/repos/acme/shop/pulls/9/reviews", &reviews_of_9).await;
    let reviews_of_10 = Listing::new(json!([review(100, "eve", "COMMENTED", t - day)]));
    mount_listing(&server, "/repos/acme/shop/pulls/10/reviews", &reviews_of_10).await;
    let ready_9 = Listing::new(json!([
        {"event": "ready_for_review", "created_at": rfc3339(t - 1800)},
    ]));
    mount_listing(&server, "/repos/acme/shop/issues/9/timeline", &ready_9).await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            r"^/repos/acme/shop/issues/[0-9]+/timeline$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    mount_quiet_but_for_commits_and_pulls(&server).await;

    let (_token_dir, mut app) = app_polling(&server, false).await;
    eventually("#9 waiting", || async {
        awaiting_review(&app).await == 1.0
    })
    .await;
    assert_eq!(review_waits(&app).await[0].0, "9");
    let lists = requests_to(&server, "/pulls").await;
    let query = lists[0].url.query().unwrap_or_default();
    assert!(
        query.contains("state=open") && query.contains("base=main"),
        "{query}"
    );

    // Dan pushes to #10, reviewed already: after the next poll (a restart
    // polls at once) its reviews are read again, conditionally (304), and
    // it still does not wait. #9 did not change: its reviews are not read
    // again.
    let mut pushed = pull(10, "dan", t - 2 * day, now(), false);
    pushed["head"]["sha"] = json!("5555555555555555555555555555555555555555");
    pulls.set(json!([
        pull(9, "cat", t - 2 * day, t - 3600, false),
        pushed
    ]));
    app.restart().await;
    eventually("#10's reviews read again", || async {
        requests_to(&server, "/pulls/10/reviews").await.len() == 2
    })
    .await;
    let reviews = requests_to(&server, "/pulls/10/reviews").await;
    assert!(reviews[1].headers.get("if-none-match").is_some());
    eventually_answered(&app, "reviews", "304", 1.0).await;
    let waits = review_waits(&app).await;
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert_eq!(waits[0].0, "9");
    assert_eq!(requests_to(&server, "/pulls/9/reviews").await.len(), 1);

    // Nothing changed: the list answers 304, and the waits come back from
    // the store.
    app.restart().await;
    eventually_answered(&app, "pulls", "304", 1.0).await;
    assert_eq!(awaiting_review(&app).await, 1.0);
    assert_eq!(review_waits(&app).await[0].0, "9");

    // GitHub failing after a restart: the stored waits are exposed still.
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/pulls"))
        .respond_with(ResponseTemplate::new(502))
        .with_priority(1)
        .mount(&server)
        .await;
    app.restart().await;
    eventually_answered(&app, "pulls", "502", 1.0).await;
    assert_eq!(awaiting_review(&app).await, 1.0);
    let waits = review_waits(&app).await;
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!((1800.0..1900.0).contains(&waits[0].1), "{waits:?}");
    app.shutdown().await;
}

fn commit(sha: &str, at: i64) -> Value {
    json!({
        "sha": sha,
        "html_url": format!("https://github.com/acme/shop/commit/{sha}"),
        "commit": {"message": "change", "committer": {"name": "ann", "date": rfc3339(at)}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reaching_the_default_branch_are_read_through_its_head_and_a_compare() {
    let server = MockServer::start().await;
    let t = now();
    let (c1, c2, c3) = BRANCH_COMMITS;
    let head = Arc::new(std::sync::Mutex::new(c2.to_owned()));
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/commits/main"))
        .respond_with(BranchHead(Arc::clone(&head)))
        .with_priority(1)
        .mount(&server)
        .await;
    // The first poll reads the bootstrap window, newest first.
    let history = Listing::new(json!([commit(c2, t - 600), commit(c1, t - 1200)]));
    mount_listing(&server, "/repos/acme/shop/commits", &history).await;
    Mock::given(method("GET"))
        .and(path(format!("/repos/acme/shop/compare/{c2}...{c3}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"status": "ahead", "total_commits": 1, "commits": [commit(c3, t - 60)]}),
        ))
        .mount(&server)
        .await;
    mount_quiet_but_for_commits_and_pulls(&server).await;

    let (_token_dir, mut app) = app_polling(&server, false).await;
    eventually_recorded(&app, &[c1, c2]).await;
    assert_eq!(commit_time(&app, c1).await, Some((t - 1200) as f64));
    let listed = requests_to(&server, "/repos/acme/shop/commits").await;
    assert_eq!(listed.len(), 1);
    let query = listed[0].url.query().unwrap_or_default().to_owned();
    assert!(
        query.contains("sha=main") && query.contains("since="),
        "{query}"
    );

    // The head moves: one compare, from the old head to the new.
    *head.lock().unwrap() = c3.to_owned();
    app.restart().await;
    eventually("the pushed commit", || async {
        commit_time(&app, c3).await.is_some()
    })
    .await;
    let heads = requests_to(&server, "/commits/main").await;
    assert_eq!(heads.len(), 2);
    assert!(heads[0].headers.get("if-none-match").is_none());
    assert_eq!(
        heads[1]
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some(format!("\"{c2}\"").as_str())
    );
    assert_eq!(requests_to(&server, "/compare/").await.len(), 0);
    assert_eq!(
        requests_to(&server, &format!("/compare/{c2}...{c3}"))
            .await
            .len(),
        1
    );
    assert_eq!(
        requests_to(&server, "/repos/acme/shop/commits").await.len(),
        1
    );

    // Unmoved: 304, no compare.
    app.restart().await;
    eventually("a third head request", || async {
        requests_to(&server, "/commits/main").await.len() == 3
    })
    .await;
    eventually_answered(&app, "branch_head", "304", 1.0).await;
    assert_eq!(
        requests_to(&server, &format!("/compare/{c2}...{c3}"))
            .await
            .len(),
        1
    );
    app.shutdown().await;
}

/// Answers every request under `/repos/acme/shop` with a permanent
/// redirect to the same path under `/repositories/42`, as GitHub answers
/// for a renamed repository.
struct Moved(String);

impl Respond for Moved {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let rest = request.url.path().trim_start_matches("/repos/acme/shop");
        let query = request
            .url
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        ResponseTemplate::new(301)
            .insert_header(
                "location",
                format!("{}/repositories/42{rest}{query}", self.0).as_str(),
            )
            .set_body_json(json!({"message": "Moved Permanently"}))
    }
}

/// Every stream of a repository at `base` quiet but for one finished
/// deployment.
async fn mount_repository_at(server: &MockServer, base: &str) -> Value {
    let created = now() - 600;
    let deployment = deployment(7, &rfc3339(created));
    let status = json!({
        "id": 70, "state": "success", "environment": "production",
        "created_at": rfc3339(created + 60)
    });
    let quota = Arc::new(AtomicUsize::new(5000));
    for (at, body, etag) in [
        ("/deployments", json!([deployment]), "W/\"d1\""),
        ("/deployments/7/statuses", json!([status]), "W/\"s1\""),
        ("/issues", json!([]), "W/\"i\""),
        ("/commits", json!([]), "W/\"c\""),
        ("/pulls", json!([]), "W/\"p\""),
        (
            "",
            json!({"full_name": "acme/shop", "default_branch": "main"}),
            "W/\"r\"",
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(format!("{base}{at}")))
            .respond_with(Conditional {
                body,
                etag: etag.into(),
                remaining: Arc::clone(&quota),
            })
            .mount(server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path(format!("{base}/commits/main")))
        .respond_with(BranchHead(Arc::new(std::sync::Mutex::new(HEAD.into()))))
        .mount(server)
        .await;
    deployment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_repository_is_followed_to_its_new_address_and_remembered() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(r"^/repos/acme/shop(/.*)?$"))
        .respond_with(Moved(server.uri()))
        .mount(&server)
        .await;
    mount_repository_at(&server, "/repositories/42").await;
    let (_token_dir, mut app) = app_polling(&server, false).await;
    eventually_deployed(&app, 1.0).await;
    eventually("the pull requests, at the new address", || async {
        !requests_to(&server, "/repositories/42/pulls")
            .await
            .is_empty()
    })
    .await;
    let old = |requests: Vec<Request>| {
        requests
            .iter()
            .filter(|r| r.url.path().starts_with("/repos/"))
            .count()
    };
    // The first stream's requests were redirected; once it was done, the
    // poller went to the new address directly.
    let redirected = old(server.received_requests().await.unwrap());
    assert!(redirected <= 2, "{redirected} requests to the old address");
    assert!(requests_to(&server, "/repos/acme/shop/issues")
        .await
        .is_empty());

    app.restart().await;
    eventually("a second deployments poll", || async {
        requests_to(&server, "/repositories/42/deployments")
            .await
            .len()
            == 2
    })
    .await;
    assert_eq!(
        old(server.received_requests().await.unwrap()),
        redirected,
        "the new address is stored"
    );
    assert_eq!(deployments_total(&app).await, 1.0);
    app.shutdown().await;
}

/// Deployments answered only for the current token, with an ETag bound to
/// it (`Vary: Authorization`). Once `revoke` is set, the old token is
/// refused with 401 and, at the first refusal, the new one is written to
/// the token file: the Secret was rotated.
#[derive(Clone)]
struct Rotating {
    body: Value,
    token_file: std::path::PathBuf,
    revoked: Arc<std::sync::atomic::AtomicBool>,
    refusals: Arc<AtomicUsize>,
}

const NEW_TOKEN: &str = "ghp_rotated_token_for_tests";

impl Respond for Rotating {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let current = if self.revoked.load(Ordering::SeqCst) {
            NEW_TOKEN
        } else {
            TOKEN
        };
        if auth != format!("Bearer {current}") {
            if self.refusals.fetch_add(1, Ordering::SeqCst) == 0 {
                std::fs::write(&self.token_file, NEW_TOKEN).unwrap();
            }
            return ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"}));
        }
        let etag = format!("W/\"{}\"", &current[4..12]);
        let template = ResponseTemplate::new(200)
            .insert_header("etag", etag.as_str())
            .insert_header("vary", "Accept, Authorization");
        if request
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        {
            return ResponseTemplate::new(304).insert_header("etag", etag.as_str());
        }
        template.set_body_json(self.body.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_read_again_from_its_file_without_double_counting() {
    let server = MockServer::start().await;
    let deployment = mount_repository_at(&server, "/repos/acme/shop").await;
    let (token_dir, mut app) = app_polling(&server, false).await;
    let rotating = Rotating {
        body: json!([deployment]),
        token_file: token_dir.path().join("token"),
        revoked: Arc::default(),
        refusals: Arc::default(),
    };
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(rotating.clone())
        .with_priority(1)
        .mount(&server)
        .await;
    eventually_deployed(&app, 1.0).await;

    // The token is revoked and the Secret rotated; the app restarts with
    // the old token (read before the rotation, say) …
    rotating.revoked.store(true, Ordering::SeqCst);
    std::fs::write(&rotating.token_file, TOKEN).unwrap();
    app.restart().await;
    // … is refused once, reads the file again and goes on with the new
    // token: its ETag does not match the stored one, so one 200.
    eventually("deployments read with the new token", || async {
        requests_to(&server, "/repos/acme/shop/deployments")
            .await
            .iter()
            .any(|r| {
                r.headers
                    .get("authorization")
                    .is_some_and(|v| v == &format!("Bearer {NEW_TOKEN}")[..])
            })
    })
    .await;
    assert_eq!(rotating.refusals.load(Ordering::SeqCst), 1);
    eventually_answered(&app, "deployments", "200", 1.0).await;
    assert_eq!(deployments_total(&app).await, 1.0, "no double count");
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_poll_degraded", &[("repo", "acme/shop")]),
        0.0
    );
    assert!(!scrape.text.contains(NEW_TOKEN) && !scrape.text.contains(TOKEN));
    app.shutdown().await;
}

/// Answers 502 `failures` times, then as `then`.
struct Flaky {
    failures: AtomicUsize,
    then: Conditional,
}

impl Respond for Flaky {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return ResponseTemplate::new(502).set_body_string("Bad Gateway");
        }
        self.then.respond(request)
    }
}

#[tokio::test]
async fn a_burst_of_502s_is_retried_with_backoff_and_loses_nothing() {
    let server = MockServer::start().await;
    let deployment = mount_repository_at(&server, "/repos/acme/shop").await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(Flaky {
            failures: AtomicUsize::new(2),
            then: Conditional {
                body: json!([deployment]),
                etag: "W/\"d1\"".into(),
                remaining: Arc::new(AtomicUsize::new(5000)),
            },
        })
        .with_priority(1)
        .mount(&server)
        .await;
    let rig = Rig::start().await;
    let mut shop = github(&rig, &server);
    let mut results = Vec::new();
    while deployments_of(&rig.scrape()) == 0.0 && results.len() < 20 {
        if let (Stream::Deployments, result) = shop.step(&rig).await {
            results.push(result.map_err(|e| e.to_string()));
        }
    }
    assert_eq!(
        results,
        [
            Err("transient failure: deployments: 502".to_owned()),
            Err("transient failure: deployments: 502".to_owned()),
            Ok(true)
        ]
    );
    let lists = requests_to(&server, "/deployments").await;
    assert_eq!(lists.len(), 3);
    // The watermark did not move: every attempt asked for the same thing.
    assert!(lists
        .iter()
        .all(|r| r.url == lists[0].url && r.headers.get("if-none-match").is_none()));
    assert_eq!(answered(&rig.scrape(), "deployments", "502"), 2.0);
    assert!(!shop.schedule.degraded());
    rig.shutdown().await;
}

/// A GitHub poller stepped on a fake whose deployments answer `refusal`.
async fn refused_with(
    server: &MockServer,
    refusal: ResponseTemplate,
) -> (Rig, Stepped<GithubPoller>) {
    mount_repository_at(server, "/repos/acme/shop").await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(refusal)
        .with_priority(1)
        .mount(server)
        .await;
    let rig = Rig::start().await;
    let shop = github(&rig, server);
    (rig, shop)
}

#[tokio::test]
async fn a_secondary_limit_holds_the_repository_for_its_retry_after_or_a_minute() {
    let secondary = json!({
        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
    });
    for (retry_after, expected) in [(Some("30"), 30.0), (None, 60.0)] {
        let server = MockServer::start().await;
        let mut refusal = ResponseTemplate::new(403)
            .insert_header("x-ratelimit-limit", "5000")
            .insert_header("x-ratelimit-remaining", "4000")
            .set_body_json(secondary.clone());
        if let Some(seconds) = retry_after {
            refusal = refusal.insert_header("retry-after", seconds);
        }
        let (rig, mut shop) = refused_with(&server, refusal).await;
        let limited = shop.poll(&rig, Stream::Deployments).await;
        assert!(
            matches!(limited, Err(PollError::RateLimited { .. })),
            "{limited:?}"
        );
        let backoff = shop.schedule.backoff().as_secs_f64();
        assert!(
            (expected - 2.0..=expected + 1.0).contains(&backoff),
            "retry-after {retry_after:?}: backoff {backoff}"
        );
        // Every stream waits, and one polled meanwhile asks nothing.
        let (_, wait) = shop.next(&rig);
        assert!(wait.as_secs_f64() >= expected - 2.0, "{wait:?}");
        let held = shop.poll(&rig, Stream::PullRequests).await;
        assert!(
            matches!(held, Err(PollError::RateLimited { .. })),
            "{held:?}"
        );
        let asked = server.received_requests().await.unwrap().len();
        assert_eq!(asked, 1, "retry-after {retry_after:?}");
        assert!(!shop.schedule.degraded());
        rig.shutdown().await;
    }
}

#[tokio::test]
async fn a_permission_refusal_degrades_the_repository_without_retries() {
    let server = MockServer::start().await;
    let refusal = ResponseTemplate::new(403).set_body_json(json!({
        "message": "Resource not accessible by personal access token",
        "documentation_url": "https://docs.github.com/rest/deployments/deployments#list-deployments"
    }));
    let (rig, mut shop) = refused_with(&server, refusal).await;
    let refused = shop.poll(&rig, Stream::Deployments).await;
    assert!(matches!(refused, Err(PollError::Refused(_))), "{refused:?}");
    // Degraded at the first refusal (a transient failure degrades only
    // after five in a row), without a backoff.
    assert!(shop.schedule.degraded());
    assert_eq!(shop.schedule.backoff(), Duration::ZERO);
    // The other streams go on; the refused one is not asked again before
    // its longest interval (30 min).
    while rig.since_start() + shop.next(&rig).1 < Duration::from_secs(29 * 60) {
        let (stream, result) = shop.step(&rig).await;
        assert_ne!(stream, Stream::Deployments, "at {:?}", rig.since_start());
        assert!(result.is_ok(), "{stream:?}: {result:?}");
    }
    assert!(!requests_to(&server, "/pulls").await.is_empty());
    assert_eq!(requests_to(&server, "/deployments").await.len(), 1);
    assert!(shop.schedule.degraded());
    rig.shutdown().await;
}

#[tokio::test]
async fn a_reset_in_server_time_is_waited_for_on_the_local_clock() {
    // The server's clock is 10 minutes ahead; its reset is 20 minutes
    // ahead of the server's now, so 20 minutes from now here (not 30, as
    // comparing it with the local clock would make it).
    let skew = 600;
    let server_now = now() + skew;
    let date = chrono::DateTime::from_timestamp(server_now, 0)
        .unwrap()
        .to_rfc2822();
    let refusal = ResponseTemplate::new(403)
        .insert_header("date", date.as_str())
        .insert_header("x-ratelimit-limit", "5000")
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header(
            "x-ratelimit-reset",
            (server_now + 1200).to_string().as_str(),
        )
        .set_body_json(json!({"message": "API rate limit exceeded for user ID 1."}));
    let server = MockServer::start().await;
    let (rig, mut shop) = refused_with(&server, refusal).await;
    let limited = shop.poll(&rig, Stream::Deployments).await;
    assert!(
        matches!(limited, Err(PollError::RateLimited { .. })),
        "{limited:?}"
    );
    let reset = rig.scrape().value(
        "hookgauge_poll_rate_limit_reset_timestamp_seconds",
        &[("repo", "acme/shop")],
    );
    let local = (rig.clock.now_seconds() + 1200) as f64;
    assert!(
        (reset - local).abs() <= 3.0,
        "reset {reset}, expected about {local}"
    );
    let backoff = shop.schedule.backoff().as_secs_f64();
    assert!((1195.0..=1205.0).contains(&backoff), "backoff {backoff}");
    rig.shutdown().await;
}

/// A success status for every deployment `id`, created at `created(id)`.
async fn mount_success_statuses(
    server: &MockServer,
    created: impl Fn(i64) -> i64 + Send + Sync + 'static,
) {
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            r"^/repos/acme/shop/deployments/[0-9]+/statuses$",
        ))
        .respond_with(move |request: &Request| {
            let id: i64 = request
                .url
                .path()
                .split('/')
                .nth(5)
                .unwrap()
                .parse()
                .unwrap();
            ResponseTemplate::new(200).set_body_json(json!([{
                "id": id * 10, "state": "success", "environment": "production",
                "created_at": rfc3339(created(id))
            }]))
        })
        .mount(server)
        .await;
}

/// Deployments in pages of five, newest first, linked by `page`; page 1
/// A list served `per_page` items a page, linked by `page` under `next`
/// (a URL ending in `page=`); page 1 has the ETag `W/"p1"`, and page 3
/// answers 502 while `broken` is set.
struct Paged {
    items: Vec<Value>,
    per_page: usize,
    next: String,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Respond for Paged {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let page: usize = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "page")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        if page == 3 && self.broken.load(Ordering::SeqCst) {
            return ResponseTemplate::new(502);
        }
        if page == 1
            && request
                .headers
                .get("if-none-match")
                .is_some_and(|v| v == "W/\"p1\"")
        {
            return ResponseTemplate::new(304).insert_header("etag", "W/\"p1\"");
        }
        let chunk: Vec<Value> = self
            .items
            .iter()
            .skip((page - 1) * self.per_page)
            .take(self.per_page)
            .cloned()
            .collect();
        let mut template = ResponseTemplate::new(200).set_body_json(Value::Array(chunk));
        if page == 1 {
            template = template.insert_header("etag", "W/\"p1\"");
        }
        if page * self.per_page < self.items.len() {
            let link = format!("<{}{}>; rel=\"next\"", self.next, page + 1);
            template = template.insert_header("link", link.as_str());
        }
        template
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_interrupted_mid_way_resumes_where_it_stopped_without_duplicates() {
    let server = MockServer::start().await;
    let day = 86_400;
    // 15 deployments of the last 2 to 16 days, and one older than the
    // backfill's start; each with a success status.
    let deployments: Vec<Value> = (0..16)
        .map(|i| {
            let mut d = deployment(100 - i, &rfc3339(now() - (2 + i) * day));
            d["sha"] = json!(format!("{:040x}", 100 - i));
            if i == 15 {
                d["created_at"] = json!(rfc3339(now() - 40 * day));
            }
            d
        })
        .collect();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/deployments"))
        .respond_with(Paged {
            items: deployments,
            per_page: 5,
            next: format!(
                "{}/repos/acme/shop/deployments?per_page=100&page=",
                server.uri()
            ),
            broken: Arc::clone(&broken),
        })
        .mount(&server)
        .await;
    mount_success_statuses(&server, |id| now() - (100 - id + 2) * 86_400 + 60).await;
    mount_no_incidents(&server).await;
    mount_quiet_streams(&server).await;
    let since = format!("backfill_since = {:?}", rfc3339(now() - 30 * day));
    let (_token_dir, mut app) = app_polling_with(&server, false, &since).await;

    // Pages 1 and 2 are read and committed; page 3 fails.
    eventually_deployed(&app, 10.0).await;
    eventually("the failing page", || async {
        requests_to(&server, "/deployments")
            .await
            .iter()
            .any(|r| r.url.query().unwrap_or_default().contains("page=3"))
    })
    .await;
    // A restart resumes at page 3, not at the start.
    app.restart().await;
    eventually("page 3 asked again", || async {
        requests_to(&server, "/deployments")
            .await
            .iter()
            .filter(|r| r.url.query().unwrap_or_default().contains("page=3"))
            .count()
            >= 2
    })
    .await;
    broken.store(false, Ordering::SeqCst);
    eventually_deployed(&app, 15.0).await;
    let page_2 = requests_to(&server, "/deployments")
        .await
        .iter()
        .filter(|r| r.url.query().unwrap_or_default().contains("page=2"))
        .count();
    assert_eq!(page_2, 1, "page 2 was read once");
    // Each deployment's statuses were read once; the one older than the
    // backfill's start never.
    let statuses = requests_to(&server, "/statuses").await;
    let mut ids: Vec<&str> = statuses.iter().map(|r| r.url.path()).collect();
    ids.sort();
    let read = ids.len();
    ids.dedup();
    assert_eq!((read, ids.len()), (15, 15), "{ids:?}");
    assert!(!ids.iter().any(|p| p.contains("/85/")));
    let duplicates = app
        .ledger()
        .iter()
        .filter(|r| r.outcome == "duplicate")
        .count();
    assert_eq!(duplicates, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deployments_total(&app).await, 15.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_longer_than_a_poll_reads_is_read_on_over_the_next_polls() {
    let server = MockServer::start().await;
    let t = now();
    // Twelve pages; a poll reads ten.
    let commits: Vec<Value> = (0..12)
        .map(|i| commit(&format!("{:040x}", 500 - i), t - 600 - i * 60))
        .collect();
    Mock::given(method("GET"))
        .and(path("/repos/acme/shop/commits"))
        .respond_with(Paged {
            items: commits.clone(),
            per_page: 1,
            next: format!(
                "{}/repos/acme/shop/commits?sha=main&per_page=100&page=",
                server.uri()
            ),
            broken: Arc::default(),
        })
        .with_priority(1)
        .mount(&server)
        .await;
    mount_quiet_but_for_commits_and_pulls(&server).await;
    let since = format!("backfill_since = {:?}", rfc3339(t - 86_400));
    let (_token_dir, mut app) = app_polling_with(&server, false, &since).await;
    let newest = format!("{:040x}", 500);
    let oldest = format!("{:040x}", 500 - 11);
    eventually("the first ten pages", || async {
        commit_time(&app, &newest).await.is_some()
    })
    .await;
    assert_eq!(
        requests_to(&server, "/repos/acme/shop/commits").await.len(),
        10
    );
    assert_eq!(commit_time(&app, &oldest).await, None);
    app.restart().await;
    eventually("the rest of the history", || async {
        commit_time(&app, &oldest).await.is_some()
    })
    .await;
    let listed = requests_to(&server, "/repos/acme/shop/commits").await;
    let mut pages: Vec<String> = listed
        .iter()
        .map(|r| r.url.query().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(pages.len(), 12, "{pages:?}");
    pages.sort();
    pages.dedup();
    assert_eq!(pages.len(), 12, "each page read once");
    for c in &commits {
        let sha = c["sha"].as_str().unwrap();
        assert!(commit_time(&app, sha).await.is_some(), "{sha}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_made_while_polls_were_down_for_days_are_counted() {
    let server = MockServer::start().await;
    let day = 86_400;
    let with_sha = |id: i64, created: i64| {
        let mut d = deployment(id, &rfc3339(created));
        d["sha"] = json!(format!("{id:040x}"));
        d
    };
    let list = Listing::new(json!([with_sha(7, now() - 600)]));
    mount_listing(&server, "/repos/acme/shop/deployments", &list).await;
    mount_success_statuses(&server, |id| {
        now() - if id == 7 { 500 } else { 2 * 86_400 - 60 }
    })
    .await;
    mount_no_incidents(&server).await;
    mount_quiet_streams(&server).await;
    let (_token_dir, mut app) = app_polling(&server, false).await;
    eventually_deployed(&app, 1.0).await;
    // The service was down for days; meanwhile #8 was deployed, two days
    // before it comes back.
    list.set(json!([
        with_sha(8, now() - 2 * day),
        with_sha(7, now() - 600)
    ]));
    app.restart().await;
    eventually_deployed(&app, 2.0).await;
    assert_eq!(
        requests_to(&server, "/deployments/8/statuses").await.len(),
        1
    );
    app.shutdown().await;
}
