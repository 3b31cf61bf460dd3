//! The Pelorus endpoint through HTTP: fixtures, header rules, validation
//! (one test per rule), body limits, dedupe and ordering outcomes.

use crate::harness::*;

const FIXTURE_APP: &str = "mongo-todolist";
const FIXTURE_IMAGE: &str =
    "sha256:af4092ccbfa99a3ec1ea93058fe39b8ddfd8db1c7a18081db397c50a0b8ec77d";

/// Windows wide enough to expose the fixtures' 2023 timestamps.
async fn spawn_app_with_wide_windows() -> TestApp {
    spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.metrics.commit_window = std::time::Duration::from_secs(20 * 365 * 86_400);
        raw.metrics.exposure_window = std::time::Duration::from_secs(20 * 365 * 86_400);
    })
    .await
}

async fn post_all_fixtures(app: &TestApp) {
    for (event, file) in [
        ("committime", "pelorus/committime.json"),
        ("deploytime", "pelorus/deploytime.json"),
        ("failure", "pelorus/failure.created.json"),
        ("failure", "pelorus/failure.resolved.json"),
    ] {
        let reply = app.post_signed(event, &fixture(file)).await;
        assert_eq!(reply.status, 202, "{file}: {}", reply.text);
        assert_eq!(reply.outcome(), "accepted", "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pelorus_fixture_is_accepted_and_exposed() {
    let app = spawn_app_with_wide_windows().await;
    post_all_fixtures(&app).await;
    let scrape = app.scrape().await;

    let commits = scrape.find("commit_timestamp", &[]);
    assert_eq!(commits.len(), 1, "{}", scrape.text);
    let commit = commits[0];
    assert_eq!(commit.labels["app"], FIXTURE_APP);
    assert_eq!(
        commit.labels["commit"],
        "5379bad65a3f83853a75aabec9e0e43c75fd18fc"
    );
    assert_eq!(commit.labels["image_sha"], FIXTURE_IMAGE);
    assert_eq!(commit.labels["namespace"], "mongo-persistent");
    assert_eq!(commit.labels["commit_link"], "");
    assert_eq!(commit.value, 1_682_936_938.0);
    assert_eq!(
        commit.timestamp_ms, None,
        "commit_timestamp carries no sample timestamp"
    );

    let deploys = scrape.find("deploy_timestamp", &[]);
    assert_eq!(deploys.len(), 1);
    assert_eq!(deploys[0].labels.len(), 3);
    assert_eq!(deploys[0].labels["app"], FIXTURE_APP);
    assert_eq!(deploys[0].labels["image_sha"], FIXTURE_IMAGE);
    assert_eq!(deploys[0].labels["namespace"], "mongo-persistent");
    assert_eq!(deploys[0].value, 1_683_022_138.0);
    assert_eq!(deploys[0].timestamp_ms, Some(1_683_022_138_000));

    let created = scrape.find("failure_creation_timestamp", &[]);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].labels["app"], FIXTURE_APP);
    assert_eq!(created[0].labels["issue_number"], "MONGO-1");
    assert_eq!(
        (created[0].value, created[0].timestamp_ms),
        (1_683_022_198.0, Some(1_683_022_198_000))
    );
    let resolved = scrape.find("failure_resolution_timestamp", &[]);
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].labels["issue_number"], "MONGO-1");
    assert_eq!(
        (resolved[0].value, resolved[0].timestamp_ms),
        (1_683_023_338.0, Some(1_683_023_338_000))
    );

    let app_label = [("app", FIXTURE_APP)];
    assert_eq!(
        scrape.deployments_total(FIXTURE_APP, "mongo-persistent"),
        1.0
    );
    assert_eq!(scrape.value("hookgauge_failures_total", &app_label), 1.0);
    assert_eq!(
        scrape.value("hookgauge_failures_resolved_total", &app_label),
        1.0
    );
    // Deploy 1683022138 − commit 1682936938 = 85 200 s; resolved − created = 1 140 s.
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_count", &app_label),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_sum", &app_label),
        85_200.0
    );
    assert_eq!(
        scrape.value(
            "hookgauge_lead_time_seconds_bucket",
            &[("app", FIXTURE_APP), ("le", "86400")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            "hookgauge_lead_time_seconds_bucket",
            &[("app", FIXTURE_APP), ("le", "28800")]
        ),
        0.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_count", &app_label),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &app_label),
        1_140.0
    );
    for event in ["committime", "deploytime"] {
        let labels = [
            ("source", "pelorus"),
            ("event", event),
            ("outcome", "accepted"),
        ];
        assert_eq!(scrape.value("hookgauge_deliveries_total", &labels), 1.0);
    }
    let failures = [
        ("source", "pelorus"),
        ("event", "failure"),
        ("outcome", "accepted"),
    ];
    assert_eq!(scrape.value("hookgauge_deliveries_total", &failures), 2.0);

    // Accepted deliveries keep their raw body for replay.
    let ledger = app.ledger();
    assert_eq!(ledger.len(), 4);
    assert_eq!(
        ledger[1].body.as_deref(),
        Some(&fixture("pelorus/deploytime.json")[..])
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_arriving_after_its_deploy_still_gets_a_lead_time() {
    let app = spawn_app_with_wide_windows().await;
    assert_eq!(
        app.post_signed("deploytime", &fixture("pelorus/deploytime.json"))
            .await
            .status,
        202
    );
    assert_eq!(
        app.post_signed("committime", &fixture("pelorus/committime.json"))
            .await
            .status,
        202
    );
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_count", &[("app", FIXTURE_APP)]),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_sum", &[("app", FIXTURE_APP)]),
        85_200.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_deploy_is_duplicate_and_counted_once() {
    let app = spawn_app().await;
    let body = deploy_body("shop", "prod", &image(1), now());
    let first = app.post_signed("deploytime", &body).await;
    assert_eq!((first.status, first.outcome()), (202, "accepted"));
    let again = app.post_signed("deploytime", &body).await;
    assert_eq!(
        (again.status, again.outcome()),
        (200, "duplicate"),
        "{}",
        again.text
    );
    assert_eq!(again.json["delivery_id"], first.json["delivery_id"]);

    let scrape = app.scrape().await;
    assert_eq!(scrape.find("deploy_timestamp", &[("app", "shop")]).len(), 1);
    assert_eq!(scrape.deployments_total("shop", "prod"), 1.0);
    let outcome = |o| {
        [
            ("source", "pelorus"),
            ("event", "deploytime"),
            ("outcome", o),
        ]
    };
    assert_eq!(
        scrape.value("hookgauge_deliveries_total", &outcome("accepted")),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_deliveries_total", &outcome("duplicate")),
        1.0
    );
    // Known as the same delivery (read before its batch), not only as an
    // event already stored.
    let outcomes: Vec<(String, Option<String>)> = app
        .ledger()
        .into_iter()
        .map(|r| (r.outcome, r.reason))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("accepted".to_owned(), None),
            ("duplicate".to_owned(), Some("delivery_seen".to_owned()))
        ]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_of_the_same_image_counts_again_and_keeps_the_newest_time() {
    let app = spawn_app().await;
    let t = now();
    for time in [t - 60, t] {
        let reply = app
            .post_signed("deploytime", &deploy_body("shop", "prod", &image(7), time))
            .await;
        assert_eq!(reply.outcome(), "accepted");
    }
    let scrape = app.scrape().await;
    let series = scrape.find("deploy_timestamp", &[("app", "shop")]);
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].value, t as f64);
    assert_eq!(
        scrape.value("hookgauge_deployments_total", &[("app", "shop")]),
        2.0
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_deploy_is_stored_and_counted_but_not_exposed() {
    let app = spawn_app().await;
    let two_days_ago = now() - 2 * 86_400;
    let reply = app
        .post_signed(
            "deploytime",
            &deploy_body("shop", "prod", &image(2), two_days_ago),
        )
        .await;
    reply.assert_accepted();
    let scrape = app.scrape().await;
    assert_eq!(scrape.deployments_total("shop", "prod"), 1.0);
    assert!(
        scrape.find("deploy_timestamp", &[]).is_empty(),
        "{}",
        scrape.text
    );
    assert_eq!(app.ledger()[0].outcome, "accepted");
    app.shutdown().await;
}

fn failure_body(id: &str, change: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "app": "shop", "failure_id": id, "failure_event": change, "timestamp": timestamp,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_update_of_a_failure_is_outdated_and_newer_one_wins() {
    let app = spawn_app().await;
    let t = now();
    let newer = app
        .post_signed("failure", &failure_body("INC-1", "created", t - 10))
        .await;
    assert_eq!(newer.outcome(), "accepted");
    let older = app
        .post_signed("failure", &failure_body("INC-1", "created", t - 100))
        .await;
    assert_eq!(
        (older.status, older.outcome()),
        (200, "outdated"),
        "{}",
        older.text
    );
    assert_eq!(older.json["superseded_by"], newer.json["delivery_id"]);
    let newest = app
        .post_signed("failure", &failure_body("INC-1", "created", t - 5))
        .await;
    assert_eq!(newest.outcome(), "accepted");

    let scrape = app.scrape().await;
    let created = scrape.find("failure_creation_timestamp", &[("issue_number", "INC-1")]);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].value, (t - 5) as f64);
    assert_eq!(
        scrape.value("hookgauge_failures_total", &[("app", "shop")]),
        1.0,
        "one failure, updated"
    );
    let outdated = [
        ("source", "pelorus"),
        ("event", "failure"),
        ("outcome", "outdated"),
    ];
    assert_eq!(scrape.value("hookgauge_deliveries_total", &outdated), 1.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_before_creation_still_measures_time_to_restore() {
    let app = spawn_app().await;
    let t = now();
    assert_eq!(
        app.post_signed("failure", &failure_body("INC-2", "resolved", t))
            .await
            .outcome(),
        "accepted"
    );
    assert_eq!(
        app.post_signed("failure", &failure_body("INC-2", "created", t - 600))
            .await
            .outcome(),
        "accepted"
    );
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value(
            "hookgauge_time_to_restore_seconds_count",
            &[("app", "shop")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &[("app", "shop")]),
        600.0
    );
    assert_eq!(
        scrape.value("hookgauge_failures_resolved_total", &[("app", "shop")]),
        1.0
    );
    app.shutdown().await;
}

/// Posts every deploy of `bodies` at once, each twice at once (a retry
/// racing the original): one of the two is accepted, the other a duplicate.
async fn deploy_each_twice_at_once(app: &std::sync::Arc<TestApp>, bodies: Vec<Vec<u8>>) {
    let mut tasks = Vec::new();
    for body in bodies {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (a, b) = tokio::join!(
                app.post_signed("deploytime", &body),
                app.post_signed("deploytime", &body)
            );
            let mut outcomes = [a.outcome().to_owned(), b.outcome().to_owned()];
            outcomes.sort();
            outcomes
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), ["accepted", "duplicate"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unique_deliveries_are_all_committed_once() {
    let app = std::sync::Arc::new(spawn_app().await);
    let t = now();
    let deploys = (0..200u64).map(|n| deploy_body("busy", "prod", &image(n), t));
    deploy_each_twice_at_once(&app, deploys.collect()).await;
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_deployments_total", &[("app", "busy")]),
        200.0
    );
    assert_eq!(
        scrape.find("deploy_timestamp", &[("app", "busy")]).len(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_pong_without_storing() {
    let app = spawn_app().await;
    let reply = app.post_signed("ping", b"{}").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["detail"], "pong");
    assert!(app.ledger().is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body_is_refused_with_413() {
    let app = spawn_app().await;
    let chunk = bytes::Bytes::from(vec![b' '; 16 * 1024]);
    // 64 chunks of 16 KiB: far past the 100 000-byte limit, with no length.
    let stream =
        futures_util::stream::iter((0..64).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = app
        .client
        .post(format!("{}/pelorus/webhook", app.ingest))
        .header("User-Agent", USER_AGENT)
        .header("X-Pelorus-Event", "deploytime")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The server may close the connection before the client finishes sending;
    // when it does answer, the answer is 413.
    if let Ok(response) = response {
        let reply = Reply::from(response).await;
        assert_eq!(reply.status, 413, "{}", reply.text);
        assert_eq!(reply.json["reason"], "body_too_large");
    }
    let ledger = app.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0].outcome.as_str(), ledger[0].body.as_ref()),
        ("invalid", None)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversized_body_is_refused_before_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // Headers that declare one byte past the limit, and no body at all: an
    // answer can only come from the declared length, since reading the
    // body would wait (10 s) for bytes that never come.
    let address = app.ingest.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST /pelorus/webhook HTTP/1.1\r\nHost: {address}\r\nUser-Agent: {USER_AGENT}\r\n\
         X-Pelorus-Event: deploytime\r\nX-Hub-Signature-256: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100001\r\n\r\n",
        sign(SECRET, b"")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut head))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let answer = String::from_utf8_lossy(&head[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    drop(stream);
    let ledger = app.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0].outcome.as_str(), ledger[0].reason.as_deref()),
        ("invalid", Some("body_too_large"))
    );
    assert_eq!(ledger[0].body, None, "nothing of the body is kept");
    let exact = app.post_signed("deploytime", &vec![b' '; 100_000]).await;
    assert_eq!(
        (exact.status, exact.json["reason"].as_str()),
        (400, Some("invalid_json")),
        "a body of exactly the limit is read (and is not JSON)"
    );
    app.shutdown().await;
}

/// Posts `body` as `event` and asserts the status and the field/reason named.
async fn assert_refused(
    event: &str,
    body: serde_json::Value,
    status: u16,
    field: &str,
    reason: &str,
) {
    let app = spawn_app().await;
    let bytes = serde_json::to_vec(&body).unwrap();
    let reply = app.post_signed(event, &bytes).await;
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.json["field"], field, "{}", reply.text);
    assert_eq!(reply.json["reason"], reason, "{}", reply.text);
    assert_eq!(reply.outcome(), "invalid");
    let errors = reply.json["errors"]
        .as_array()
        .expect("422 lists every failing field");
    assert!(errors
        .iter()
        .any(|e| e["field"] == field && e["reason"] == reason));
    let ledger = app.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].outcome, "invalid");
    assert_eq!(
        ledger[0].body.as_deref(),
        Some(&bytes[..]),
        "invalid bodies are kept for replay"
    );
    let scrape = app.scrape().await;
    assert!(
        scrape.find("deploy_timestamp", &[]).is_empty()
            && scrape.find("commit_timestamp", &[]).is_empty()
    );
    app.shutdown().await;
}

fn deploy_with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "app": "shop", "image_sha": image(1), "namespace": "prod", "timestamp": now(),
    });
    body[field] = value;
    body
}

fn commit_with(field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut body = serde_json::json!({
        "app": "shop", "commit_hash": "5379bad65a3f83853a75aabec9e0e43c75fd18fc",
        "image_sha": image(1), "namespace": "prod", "timestamp": now(),
    });
    body[field] = value;
    body
}

macro_rules! validation_rule {
    ($name:ident, $event:expr, $body:expr, $field:expr, $reason:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            assert_refused($event, $body, 422, $field, $reason).await;
        }
    };
}

validation_rule!(
    app_longer_than_200_characters_is_invalid,
    "deploytime",
    deploy_with("app", "a".repeat(201).into()),
    "app",
    "too_long"
);
validation_rule!(
    empty_app_is_invalid,
    "deploytime",
    deploy_with("app", "".into()),
    "app",
    "empty"
);
validation_rule!(
    app_that_is_not_a_string_is_invalid,
    "deploytime",
    deploy_with("app", 5.into()),
    "app",
    "wrong_type"
);
validation_rule!(
    namespace_longer_than_63_is_invalid,
    "deploytime",
    deploy_with("namespace", "n".repeat(64).into()),
    "namespace",
    "too_long"
);
validation_rule!(
    namespace_not_rfc1123_is_invalid,
    "deploytime",
    deploy_with("namespace", "Prod_NS".into()),
    "namespace",
    "invalid_format"
);
validation_rule!(
    image_sha_without_prefix_is_invalid,
    "deploytime",
    deploy_with("image_sha", "a".repeat(64).into()),
    "image_sha",
    "invalid_format"
);
validation_rule!(
    image_sha_with_uppercase_hex_is_invalid,
    "deploytime",
    deploy_with("image_sha", format!("sha256:{}", "A".repeat(64)).into()),
    "image_sha",
    "invalid_format"
);
validation_rule!(
    image_sha_of_wrong_length_is_invalid,
    "deploytime",
    deploy_with("image_sha", format!("sha256:{}", "a".repeat(40)).into()),
    "image_sha",
    "invalid_format"
);
validation_rule!(
    missing_image_sha_is_invalid,
    "deploytime",
    deploy_with("image_sha", serde_json::Value::Null),
    "image_sha",
    "missing_field"
);
validation_rule!(
    commit_of_8_characters_is_invalid,
    "committime",
    commit_with("commit_hash", "5379bad6".into()),
    "commit_hash",
    "invalid_format"
);
validation_rule!(
    commit_that_is_not_hex_is_invalid,
    "committime",
    commit_with("commit_hash", "5379bag".into()),
    "commit_hash",
    "invalid_format"
);
validation_rule!(
    committime_without_namespace_is_invalid,
    "committime",
    commit_with("namespace", serde_json::Value::Null),
    "namespace",
    "missing_field"
);
validation_rule!(
    timestamp_before_2010_is_invalid,
    "deploytime",
    deploy_with("timestamp", 1_262_307_660i64.into()),
    "timestamp",
    "out_of_range"
);
validation_rule!(
    timestamp_after_2060_is_invalid,
    "deploytime",
    deploy_with("timestamp", 2_840_144_462i64.into()),
    "timestamp",
    "out_of_range"
);
validation_rule!(
    timestamp_in_milliseconds_is_invalid,
    "deploytime",
    deploy_with("timestamp", 1_683_022_138_000i64.into()),
    "timestamp",
    "out_of_range"
);
validation_rule!(
    fractional_timestamp_is_invalid,
    "deploytime",
    deploy_with("timestamp", 1_683_022_138.5.into()),
    "timestamp",
    "not_integer"
);
validation_rule!(
    missing_timestamp_is_invalid,
    "deploytime",
    deploy_with("timestamp", serde_json::Value::Null),
    "timestamp",
    "missing_field"
);
validation_rule!(
    unknown_failure_event_is_invalid,
    "failure",
    serde_json::json!({"app": "shop", "failure_id": "1", "failure_event": "opened", "timestamp": now()}),
    "failure_event",
    "invalid_format"
);
validation_rule!(
    missing_failure_id_is_invalid,
    "failure",
    serde_json::json!({"app": "shop", "failure_event": "created", "timestamp": now()}),
    "failure_id",
    "missing_field"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_naming_the_reason() {
    let app = spawn_app().await;
    let reply = app.post_signed("deploytime", b"{\"app\": ").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["reason"], "invalid_json");
    assert_eq!(reply.outcome(), "invalid");
    let array = app.post_signed("deploytime", b"[1, 2]").await;
    assert_eq!(
        (array.status, array.json["reason"].as_str()),
        (400, Some("invalid_json"))
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agent_other_than_pelorus_is_412() {
    let app = spawn_app().await;
    let body = fixture("pelorus/deploytime.json");
    let signature = sign(SECRET, &body);
    for user_agent in [None, Some("curl/8.5.0")] {
        let mut headers = vec![
            ("X-Pelorus-Event", "deploytime"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        headers.extend(user_agent.map(|ua| ("User-Agent", ua)));
        let reply = app.post_pelorus_with_headers(&headers, body.clone()).await;
        assert_eq!(reply.status, 412, "{user_agent:?}: {}", reply.text);
        assert_eq!(reply.json["field"], "User-Agent");
    }
    // The header check is case-insensitive, as in Pelorus.
    let reply = app
        .post_pelorus_with_headers(
            &[
                ("User-Agent", "pelorus-webhook/1.2"),
                ("X-Pelorus-Event", "ping"),
                ("X-Hub-Signature-256", &sign(SECRET, b"{}")),
            ],
            "{}",
        )
        .await;
    assert_eq!(reply.status, 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unknown_event_header_is_400() {
    let app = spawn_app().await;
    let body = fixture("pelorus/deploytime.json");
    let unknown = app.post_signed("deploy", &body).await;
    assert_eq!(
        (unknown.status, unknown.json["reason"].as_str()),
        (400, Some("unknown_event"))
    );
    assert_eq!(unknown.json["field"], "X-Pelorus-Event");
    let signature = sign(SECRET, &body);
    let missing = app
        .post_pelorus_with_headers(
            &[
                ("User-Agent", USER_AGENT),
                ("X-Hub-Signature-256", &signature),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(
        (missing.status, missing.json["reason"].as_str()),
        (400, Some("missing_header"))
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_are_not_found_and_reveal_nothing() {
    let app = spawn_app().await;
    assert_eq!(app.get(format!("{}/metrics", app.ingest)).await.status, 404);
    assert_eq!(
        app.get(format!("{}/pelorus/webhook", app.ingest))
            .await
            .status,
        404
    );
    let health = app.get(format!("{}/healthz", app.ingest)).await;
    assert_eq!(
        (health.status, health.json["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = app.get(format!("{}/readyz", app.ingest)).await;
    assert_eq!(
        (ready.status, ready.json["status"].as_str()),
        (200, Some("ready"))
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_failures_and_last_deploy_are_tracked_across_restarts() {
    let mut app = spawn_app().await;
    let t = now();
    for (id, change, time) in [
        ("INC-1", "created", t - 7_200),
        ("INC-2", "created", t - 3_600),
        ("INC-3", "created", t - 600),
        ("INC-1", "resolved", t - 60),
    ] {
        let reply = app
            .post_signed("failure", &failure_body(id, change, time))
            .await;
        assert_eq!(reply.outcome(), "accepted");
    }
    for time in [t - 100, t - 50] {
        let body = deploy_body("shop", "prod", &image(time as u64), time);
        assert_eq!(
            app.post_signed("deploytime", &body).await.outcome(),
            "accepted"
        );
    }
    for _ in 0..2 {
        let scrape = app.scrape().await;
        assert_eq!(
            scrape.value("hookgauge_open_failures", &[("app", "shop")]),
            2.0
        );
        assert_eq!(
            scrape.value(
                "hookgauge_oldest_open_failure_timestamp_seconds",
                &[("app", "shop")]
            ),
            (t - 3_600) as f64
        );
        assert_eq!(
            scrape.value(
                "hookgauge_last_deploy_timestamp_seconds",
                &[("app", "shop"), ("namespace", "prod")]
            ),
            (t - 50) as f64
        );
        app.restart().await;
    }
    for id in ["INC-2", "INC-3"] {
        assert_eq!(
            app.post_signed("failure", &failure_body(id, "resolved", t))
                .await
                .outcome(),
            "accepted"
        );
    }
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_open_failures", &[("app", "shop")]),
        0.0
    );
    assert!(scrape
        .find("hookgauge_oldest_open_failure_timestamp_seconds", &[])
        .is_empty());
    app.shutdown().await;
}

/// A burst of deploys over many applications records what the same
/// deploys record one at a time. Each application has a commit built into
/// the deployed image (a lead time); every third has a failure open at the
/// deploy (rework); every third an earlier deploy whose failure the new
/// deploy now stands before (the earlier deploy's failure withdrawn, the
/// new one failed, the recovery tied). The writer takes the burst in
/// batches; on PostgreSQL a batch inserts the deploys of different
/// applications together and decides each in one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_many_apps_records_what_one_at_a_time_records() {
    const APPS: u64 = 24;
    let app = std::sync::Arc::new(spawn_app().await);
    let t = now();
    let name = |set: &str, n: u64| format!("{set}-{n:02}");
    let deploy_time = |n: u64| if n % 3 == 1 { t - 300 } else { t - 60 };
    for set in ["one", "burst"] {
        for n in 0..APPS {
            let app_name = name(set, n);
            let mut before = vec![(
                "committime",
                serde_json::json!({
                    "app": app_name, "commit_hash": format!("{:040x}", n + 1),
                    "image_sha": image(n), "namespace": "prod", "timestamp": t - 3_600,
                }),
            )];
            let failure = |change: &str, at: i64| {
                serde_json::json!({
                    "app": app_name, "failure_id": "1", "failure_event": change, "timestamp": at,
                })
            };
            match n % 3 {
                0 => before.push(("failure", failure("created", t - 120))),
                1 => {
                    before.push((
                        "deploytime",
                        serde_json::json!({
                            "app": app_name, "image_sha": image(1_000 + n),
                            "namespace": "prod", "timestamp": t - 600,
                        }),
                    ));
                    before.push(("failure", failure("created", t - 100)));
                    before.push(("failure", failure("resolved", t - 50)));
                }
                _ => {}
            }
            for (event, body) in before {
                let reply = app
                    .post_signed(event, &serde_json::to_vec(&body).unwrap())
                    .await;
                assert_eq!(
                    reply.outcome(),
                    "accepted",
                    "{app_name} {event}: {}",
                    reply.text
                );
            }
        }
    }
    for n in 0..APPS {
        let body = deploy_body(&name("one", n), "prod", &image(n), deploy_time(n));
        assert_eq!(
            app.post_signed("deploytime", &body).await.outcome(),
            "accepted"
        );
    }
    let burst =
        (0..APPS).map(|n| deploy_body(&name("burst", n), "prod", &image(n), deploy_time(n)));
    deploy_each_twice_at_once(&app, burst.collect()).await;

    let scrape = app.scrape().await;
    type Sample3 = (String, Vec<(String, String)>, f64);
    let of_set = |set: &str| -> Vec<Sample3> {
        let prefix = format!("{set}-");
        scrape
            .dora_samples()
            .into_iter()
            .filter(|s| s.labels.get("app").is_some_and(|a| a.starts_with(&prefix)))
            .map(|s| {
                let labels = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.replacen(&prefix, "", 1)))
                    .collect();
                (s.name, labels, s.value)
            })
            .collect()
    };
    let (one, burst) = (of_set("one"), of_set("burst"));
    assert!(one.len() > APPS as usize * 10, "{} samples", one.len());
    let only = |a: &[Sample3], b: &[Sample3]| -> Vec<Sample3> {
        a.iter().filter(|s| !b.contains(s)).cloned().collect()
    };
    assert_eq!(
        (only(&burst, &one), only(&one, &burst)),
        (vec![], vec![]),
        "samples of the burst alone, and of one at a time alone"
    );
    for n in 0..APPS {
        let labels = [("app", &*name("burst", n))];
        let lead_time = scrape.value("hookgauge_lead_time_seconds_sum", &labels);
        assert_eq!(lead_time, (deploy_time(n) - (t - 3_600)) as f64, "{n}");
        let rework = scrape.value_or_zero("hookgauge_rework_deployments_total", &labels);
        assert_eq!(rework, f64::from(n % 3 == 0), "{n}");
        let withdrawn =
            scrape.value_or_zero("hookgauge_failed_deployments_withdrawn_total", &labels);
        assert_eq!(withdrawn, f64::from(n % 3 == 1), "{n}");
    }
}
