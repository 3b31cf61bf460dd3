//! The admin API and deliveries page on the metrics port: filters and
//! pagination, redaction, API keys, redelivery after a configuration change,
//! processing states, and retention while ingest goes on.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    deploy_body, eventually, fixture, image, now, spawn_app_with, Reply, TestApp, SECRET,
};
use crate::sources::{post, provider_headers};

const KEY: &str = "admin-test-key-0123456789";

async fn get(app: &TestApp, path: &str, key: Option<&str>) -> Reply {
    let mut request = app.client.get(format!("{}{path}", app.metrics));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    Reply::from(request.send().await.unwrap()).await
}

async fn post_admin(app: &TestApp, path: &str, key: Option<&str>) -> Reply {
    let mut request = app.client.post(format!("{}{path}", app.metrics));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    Reply::from(request.send().await.unwrap()).await
}

/// Waits (bounded, 15 s) until ledger row `id` is no longer queued or
/// processing.
async fn settled(app: &TestApp, id: i64, key: Option<&str>) -> Value {
    for _ in 0..300 {
        let reply = get(app, &format!("/api/v1/deliveries/{id}"), key).await;
        let state = reply.json["state"].as_str().unwrap_or("").to_owned();
        if state != "queued" && state != "processing" {
            return reply.json;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("row {id} still pending");
}

/// Asks for delivery `id` to be redelivered, without a key.
async fn redeliver(app: &TestApp, id: i64) -> Reply {
    post_admin(app, &format!("/api/v1/deliveries/{id}/redeliver"), None).await
}

/// The deploys counted for the GitHub fixture's repository in `prod`.
async fn prod_deploys(app: &TestApp) -> f64 {
    app.scrape()
        .await
        .deployments_total("Codertocat/Hello-World", "prod")
}

async fn github(app: &TestApp, event: &str, id: &str, body: &[u8]) -> Reply {
    let headers = provider_headers("github", event, id, body, SECRET);
    post(app, "/hooks/github", &headers, body).await
}

#[tokio::test]
async fn listing_filters_pages_and_redacts() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.sources
            .native
            .insert("github".into(), json!({"secrets": [SECRET]}));
    })
    .await;
    let t = now() - 60;
    app.deploy_images(0..3, t).await;
    let ping = fixture("github/ping.json");
    assert_eq!(
        github(&app, "ping", "gh-ping", &ping).await.outcome(),
        "ignored"
    );
    let rejected = app
        .post_pelorus(
            "deploytime",
            &deploy_body("shop", "prod", &image(9), t),
            Some("wrong"),
        )
        .await;
    assert_eq!(rejected.status, 401);

    let all = get(&app, "/api/v1/deliveries", None).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let rows = all.json["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    let ignored = get(&app, "/api/v1/deliveries?outcome=ignored", None).await;
    let rows = ignored.json["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["source"], "github");
    assert_eq!(rows[0]["reason"], "ping");
    let by_app = get(&app, "/api/v1/deliveries?app=shop&source=pelorus", None).await;
    assert_eq!(by_app.json["deliveries"].as_array().unwrap().len(), 3);
    let by_text = get(&app, "/api/v1/deliveries?q=bad_sig", None).await;
    assert_eq!(by_text.json["deliveries"][0]["outcome"], "rejected");

    // Two per page, following the cursor, covers everything once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/deliveries?limit=2".to_owned();
    loop {
        let page = get(&app, &path, None).await;
        let rows = page.json["deliveries"].as_array().unwrap();
        seen.extend(rows.iter().map(|r| r["id"].as_i64().unwrap()));
        match page.json["next_cursor"].as_i64() {
            Some(cursor) => path = format!("/api/v1/deliveries?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    for (path, field) in [
        ("/api/v1/deliveries?outcome=maybe", "outcome"),
        ("/api/v1/deliveries?limit=0", "limit"),
        ("/api/v1/deliveries?colour=red", "colour"),
        ("/api/v1/deliveries/abc", "id"),
        ("/api/v1/events?kind=tea", "kind"),
    ] {
        let reply = get(&app, path, None).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert!(
            reply.text.contains(field),
            "{path} names {field}: {}",
            reply.text
        );
    }
    assert_eq!(
        get(&app, "/api/v1/deliveries/999999", None).await.status,
        404
    );

    // The detail of the GitHub ping: headers with the signature redacted.
    let ping_row = ids[1];
    let detail = get(&app, &format!("/api/v1/deliveries/{ping_row}"), None).await;
    assert_eq!(detail.json["headers"]["x-github-event"], "ping");
    assert_eq!(detail.json["headers"]["x-hub-signature-256"], "[redacted]");
    assert!(detail.json["body"].as_str().unwrap().contains("zen"));
    let accepted = get(&app, &format!("/api/v1/deliveries/{}", ids[2]), None).await;
    assert_eq!(accepted.json["events"][0]["kind"], "deploy");
    assert_eq!(accepted.json["events"][0]["app"], "shop");

    // No response, JSON or HTML, ever carries a secret or a signature.
    let signature = crate::harness::sign(SECRET, &ping);
    let hex = signature.trim_start_matches("sha256=");
    let mut texts = Vec::new();
    for path in [
        "/api/v1/deliveries".to_owned(),
        format!("/api/v1/deliveries/{ping_row}"),
        "/api/v1/events".to_owned(),
        "/api/v1/sources".to_owned(),
        "/".to_owned(),
        format!("/deliveries/{ping_row}"),
        "/sources".to_owned(),
    ] {
        let reply = get(&app, &path, None).await;
        assert_eq!(reply.status, 200, "{path}");
        texts.push(reply.text);
    }
    for text in &texts {
        assert!(!text.contains(SECRET), "a secret in a response");
        assert!(!text.contains(hex), "a signature in a response");
    }
    let events = get(&app, "/api/v1/events?kind=deploy&app=shop", None).await;
    assert_eq!(events.json["events"].as_array().unwrap().len(), 3);
    let sources = get(&app, "/api/v1/sources", None).await;
    let pelorus = sources.json["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "pelorus")
        .unwrap()
        .clone();
    assert_eq!(pelorus["last_24h"]["accepted"], 3);
    assert_eq!(pelorus["last_error"]["outcome"], "rejected");
    app.shutdown().await;
}

#[tokio::test]
async fn api_keys_are_required_once_configured() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.admin.api_keys = vec![KEY.into(), "second-key-for-rotation".into()];
    })
    .await;
    for path in ["/api/v1/deliveries", "/api/v1/events", "/api/v1/sources"] {
        assert_eq!(get(&app, path, None).await.status, 401, "{path}");
        assert_eq!(get(&app, path, Some("wrong")).await.status, 401, "{path}");
        assert_eq!(get(&app, path, Some(KEY)).await.status, 200, "{path}");
        assert_eq!(
            get(&app, path, Some("second-key-for-rotation"))
                .await
                .status,
            200
        );
    }
    let denied = get(&app, "/api/v1/deliveries", Some(&format!("{KEY}x"))).await;
    assert_eq!(denied.json["field"], "authorization");
    assert!(!denied.text.contains(KEY));
    assert_eq!(
        post_admin(&app, "/api/v1/deliveries/1/redeliver", None)
            .await
            .status,
        401
    );
    // The page sends a browser without the key to the sign-in form.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/", app.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    // Prometheus still scrapes without a key.
    assert_eq!(get(&app, "/metrics", None).await.status, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn redelivery_after_a_config_change_accepts_what_was_ignored() {
    let mut app = spawn_app_with(|raw| {
        raw.sources
            .native
            .insert("github".into(), json!({"secrets": [SECRET]}));
    })
    .await;
    // A deployment_status to "production"... in a repository whose
    // environments are named "prod": ignored until the config says so.
    let body = fixture("github/deployment_status.success.json");
    let mut payload: Value = serde_json::from_slice(&body).unwrap();
    payload["deployment"]["environment"] = json!("prod");
    payload["deployment_status"]["environment"] = json!("prod");
    let body = serde_json::to_vec(&payload).unwrap();
    let first = github(&app, "deployment_status", "gh-deploy-1", &body).await;
    assert_eq!(first.outcome(), "ignored", "{}", first.text);
    let rows = get(&app, "/api/v1/deliveries", None).await;
    let original = rows.json["deliveries"][0]["id"].as_i64().unwrap();

    app.raw.sources.native.insert(
        "github".into(),
        json!({"secrets": ["rotated-secret"], "environments": ["prod"]}),
    );
    app.restart().await;
    let queued = redeliver(&app, original).await;
    assert_eq!(queued.status, 202, "{}", queued.text);
    assert_eq!(queued.json["state"], "queued");
    let replay = queued.json["id"].as_i64().unwrap();
    let done = settled(&app, replay, None).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["outcome"], "accepted", "{done}");
    assert_eq!(done["replay_of"], original);
    assert_eq!(done["delivery_id"], "gh-deploy-1");
    assert_eq!(prod_deploys(&app).await, 1.0);
    // Redelivered again: the deploy is already recorded.
    let again = redeliver(&app, original).await;
    let again = settled(&app, again.json["id"].as_i64().unwrap(), None).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");
    let detail = get(&app, &format!("/api/v1/deliveries/{original}"), None).await;
    assert_eq!(detail.json["replays"].as_array().unwrap().len(), 2);
    assert_eq!(prod_deploys(&app).await, 1.0);

    // A rejected delivery has nothing trustworthy to replay.
    let wrong = provider_headers("github", "ping", "gh-bad", b"{}", "not-the-secret");
    assert_eq!(post(&app, "/hooks/github", &wrong, b"{}").await.status, 401);
    let rejected = get(&app, "/api/v1/deliveries?outcome=rejected", None).await;
    let rejected_id = rejected.json["deliveries"][0]["id"].as_i64().unwrap();
    let refused = redeliver(&app, rejected_id).await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert_eq!(refused.json["reason"], "not_authenticated");

    // A source removed from the configuration: the redelivery errors, and
    // is kept for a retry with its error shown.
    app.raw.sources.native.clear();
    app.restart().await;
    let queued = redeliver(&app, original).await;
    let errored = settled(&app, queued.json["id"].as_i64().unwrap(), None).await;
    assert_eq!(errored["state"], "errored", "{errored}");
    assert_eq!(errored["attempts"], 1);
    assert!(
        errored["error"].as_str().unwrap().contains("github"),
        "{errored}"
    );
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_redeliveries_total", &[("result", "errored")]),
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn retention_prunes_old_bodies_and_rows_while_ingest_goes_on() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.retention.interval = Duration::from_millis(100);
        raw.retention.body_days = 7;
        raw.retention.ledger_days = 30;
    })
    .await;
    let t = now() - 60;
    app.deploy_images(0..40, t).await;
    // Time passes for the first 30: ten of them past the ledger's age, twenty
    // past the bodies' only.
    let day_ms = 86_400_000i64;
    app.exec(&format!(
        "UPDATE deliveries SET received_at_ms = received_at_ms - {} WHERE seq <= 10",
        31 * day_ms
    ));
    app.exec(&format!(
        "UPDATE deliveries SET received_at_ms = received_at_ms - {} WHERE seq > 10 AND seq <= 30",
        8 * day_ms
    ));
    // Ingest continues meanwhile and is acknowledged as usual.
    app.deploy_images(40..60, t).await;
    let counts = || {
        (
            app.count("SELECT COUNT(*) FROM deliveries"),
            app.count("SELECT COUNT(*) FROM deliveries WHERE body IS NOT NULL"),
        )
    };
    eventually("50 rows and 30 bodies left after retention", || async {
        counts() == (50, 30)
    })
    .await;
    // Events are the history: all 60 deploys are still stored.
    assert_eq!(app.count("SELECT COUNT(*) FROM deploys"), 60);
    // A retention run counts what it deleted after each commit, and sets
    // the ledger's size once it is done.
    eventually(
        "the deletions counted and the ledger's size set",
        || async {
            let scrape = app.scrape().await;
            let pruned =
                |what| scrape.value_or_zero("hookgauge_store_pruned_total", &[("what", what)]);
            pruned("bodies") >= 30.0
                && pruned("rows") >= 10.0
                && scrape.value_or_zero("hookgauge_store_ledger_rows", &[]) == 50.0
        },
    )
    .await;
    let scrape = app.scrape().await;
    assert_eq!(scrape.value("hookgauge_store_ledger_rows", &[]), 50.0);
    assert_eq!(
        scrape.value("hookgauge_store_pruned_total", &[("what", "rows")]),
        10.0
    );
    // Every body older than a week went, those of the rows deleted after too.
    assert_eq!(
        scrape.value("hookgauge_store_pruned_total", &[("what", "bodies")]),
        30.0
    );
    assert!(
        scrape.value("hookgauge_store_last_prune_timestamp_seconds", &[]) > (now() - 60) as f64
    );
    app.shutdown().await;
}

#[tokio::test]
async fn event_pages_end_on_whole_seconds_and_cover_everything_once() {
    let app = spawn_app_with(|raw| raw.sources.pelorus.secrets = vec![SECRET.into()]).await;
    let t = now() - 600;
    // Five deploys in one second, three in seconds of their own.
    let times = [t, t, t, t, t, t - 1, t - 2, t - 3];
    for (i, time) in times.iter().enumerate() {
        let reply = app
            .post_signed(
                "deploytime",
                &deploy_body("shop", &format!("ns{i}"), &image(i as u64), *time),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    for limit in [1, 2, 3, 7, 8, 50] {
        let mut seen = Vec::new();
        let mut path = format!("/api/v1/events?kind=deploy&limit={limit}");
        for _ in 0..20 {
            let page = get(&app, &path, None).await;
            assert_eq!(page.status, 200, "{}", page.text);
            for event in page.json["events"].as_array().unwrap() {
                seen.push(event["namespace"].as_str().unwrap().to_owned());
            }
            match page.json["next_until"].as_i64() {
                Some(until) => {
                    path = format!("/api/v1/events?kind=deploy&limit={limit}&until={until}")
                }
                None => break,
            }
        }
        seen.sort();
        let expected: Vec<String> = (0..times.len()).map(|i| format!("ns{i}")).collect();
        assert_eq!(seen, expected, "limit {limit}: every event once");
    }
    // A cross-site form post to the API is refused whatever the credentials.
    let reply = Reply::from(
        app.client
            .post(format!("{}/api/v1/deliveries/1/redeliver", app.metrics))
            .header("Origin", "http://evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    app.shutdown().await;
}

async fn intervals(app: &TestApp, query: &str, key: Option<&str>) -> Reply {
    get(app, &format!("/api/v1/stats/event-intervals{query}"), key).await
}

fn interval<'a>(reply: &'a Reply, repo: &str, kind: &str) -> &'a Value {
    reply.json["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["repo"] == repo && i["type"] == kind)
        .unwrap_or_else(|| panic!("no {repo}/{kind} in {}", reply.text))
}

#[tokio::test]
async fn event_intervals_are_computed_from_the_store_per_app_and_type() {
    let mut app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.admin.api_keys = vec![KEY.into()];
    })
    .await;
    let t = now();
    // shop: deploys 600 s apart, one older than the 7-day window.
    for (n, at) in [
        (1, t - 8 * 86_400),
        (2, t - 1_800),
        (3, t - 1_200),
        (4, t - 600),
    ] {
        let reply = app
            .post_signed("deploytime", &deploy_body("shop", "prod", &image(n), at))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    // cart: 520 deploys a second apart: only the last 500 count.
    let last = t - 100;
    for n in 0..520u64 {
        let at = last - 519 + n as i64;
        let body = deploy_body("cart", "prod", &image(1_000 + n), at);
        assert_eq!(app.post_signed("deploytime", &body).await.status, 202);
    }
    // A commit of one deploy: a single event has no interval. The same
    // commit shipped in another image, its time given otherwise, is still
    // one event.
    let commit_of_shop = |image_sha: String, timestamp: i64| {
        let commit = json!({"app": "shop", "commit_hash": "c5feabde2d8cd023215af4d2ceeb7a64839fc428",
            "image_sha": image_sha, "namespace": "prod", "timestamp": timestamp});
        serde_json::to_vec(&commit).unwrap()
    };
    for (image_sha, timestamp) in [(image(4), t - 3_000), (image(3), t - 2_900)] {
        let reply = app
            .post_signed("committime", &commit_of_shop(image_sha, timestamp))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }

    let check = |reply: &Reply| {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json["window"]["max_seconds"], 7 * 86_400);
        assert_eq!(reply.json["window"]["max_events"], 500);
        let now = reply.json["now"].as_i64().unwrap();
        let shop = interval(reply, "shop", "deploy");
        assert_eq!(shop["events"], 3, "the 8-day-old deploy is outside");
        assert_eq!(shop["mean_interval_seconds"], 600.0);
        assert_eq!(shop["first_event"], t - 1_800);
        assert_eq!(shop["last_event"], t - 600);
        assert_eq!(shop["window_start"], now - 7 * 86_400);
        let cart = interval(reply, "cart", "deploy");
        assert_eq!(cart["events"], 500);
        assert_eq!(cart["mean_interval_seconds"], 1.0);
        assert_eq!(
            cart["window_start"],
            last - 499,
            "the oldest of the last 500"
        );
        let commit = interval(reply, "shop", "commit");
        assert_eq!(commit["events"], 1);
        assert_eq!(commit["mean_interval_seconds"], Value::Null);
    };
    check(&intervals(&app, "", Some(KEY)).await);

    let narrowed = intervals(&app, "?repo=shop&type=deploy", Some(KEY)).await;
    assert_eq!(narrowed.status, 200, "{}", narrowed.text);
    assert_eq!(narrowed.json["intervals"].as_array().unwrap().len(), 1);
    assert_eq!(narrowed.json["intervals"][0]["events"], 3);

    let bad = intervals(&app, "?type=push", Some(KEY)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["field"], "type");
    let bad = intervals(&app, "?repo=", Some(KEY)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["field"], "repo");
    let bad = intervals(&app, "?since=1", Some(KEY)).await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(intervals(&app, "", None).await.status, 401);
    assert_eq!(intervals(&app, "", Some("wrong-key")).await.status, 401);

    // Survives a restart: computed from the store, and the gauge is set
    // at start-up.
    app.restart().await;
    check(&intervals(&app, "", Some(KEY)).await);
    let mut gauge = 0.0;
    for _ in 0..100 {
        let scrape = app.scrape().await;
        let found = scrape.find(
            "hookgauge_event_interval_seconds",
            &[("repo", "shop"), ("type", "deploy")],
        );
        if let Some(sample) = found.first() {
            gauge = sample.value;
            assert_eq!(
                scrape.value(
                    "hookgauge_event_interval_events",
                    &[("repo", "cart"), ("type", "deploy")]
                ),
                500.0
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge, 600.0);
    app.shutdown().await;
}

#[tokio::test]
async fn event_intervals_need_a_configured_key_even_on_loopback() {
    let app = spawn_app_with(|raw| raw.sources.pelorus.secrets = vec![SECRET.into()]).await;
    let reply = intervals(&app, "", None).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.json["field"], "admin.api_keys");
    // The rest of the admin API stays open to loopback without keys.
    assert_eq!(get(&app, "/api/v1/sources", None).await.status, 200);
    app.shutdown().await;
}
