//! CDEvents through `/hooks/cdevents`: every conformance example of spec
//! 0.4 and 0.5 is answered and stored as the README documents; binary,
//! structured and batch CloudEvents and a bare CDEvent all arrive; shapes
//! real emitters send (URL ids, unpinned purls, extra `customData`) map;
//! bad input is a 4xx naming the field; and a change → artifact → deploy →
//! incident → resolution scenario measures lead time and time to restore.

use serde_json::{json, Value};

use crate::harness::{fixture, hmac_hex, spawn_app_with, Reply, TestApp, SECRET};

const DIGEST: &str = "sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427";
const SHA: &str = "e83c5163316f89bfbde7d9ab23ca2e25604af290";

async fn spawn_cdevents() -> TestApp {
    spawn_app_with(|raw| {
        raw.sources.native.insert(
            "cdevents".into(),
            json!({
                "secrets": [SECRET],
                // The conformance examples deploy to `test123` and report
                // incidents in `prod1`.
                "environments": ["production", "test123", "prod1"],
                "apps": {"acme/shop": "shop"},
                "argo": {"secrets": [SECRET], "auth": "bearer", "environments": ["production"]},
            }),
        );
    })
    .await
}

/// Posts `body` to `path` with `content_type`, `headers` and a valid
/// `X-Hub-Signature-256`.
async fn post(
    app: &TestApp,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut request = app
        .client
        .post(format!("{}{path}", app.ingest))
        .header("Content-Type", content_type)
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(SECRET.as_bytes(), body)),
        )
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::from(request.send().await.unwrap()).await
}

/// Binary mode: the CDEvent as the body, the CloudEvent in `ce-*` headers.
/// Posts `body` as a CloudEvents batch (`application/cloudevents-batch+json`).
async fn post_batch(app: &TestApp, body: &[u8]) -> Reply {
    post(
        app,
        "/hooks/cdevents",
        "application/cloudevents-batch+json",
        &[],
        body,
    )
    .await
}

async fn post_binary(app: &TestApp, id: &str, body: &[u8]) -> Reply {
    let cdevent: Value = serde_json::from_slice(body).unwrap();
    let kind = cdevent["context"]["type"].as_str().unwrap().to_owned();
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/conformance"),
        ("ce-type", kind.as_str()),
        ("ce-time", "2024-05-01T10:00:00Z"),
    ];
    post(app, "/hooks/cdevents", "application/json", &headers, body).await
}

/// A CDEvent of spec 0.5 of `kind` (type and version) about `subject`.
fn cdevent(id: &str, kind: &str, time: &str, subject: Value) -> Value {
    json!({
        "context": {
            "specversion": "0.5.1",
            "id": id,
            "source": "/ci/shop",
            "type": format!("dev.cdevents.{kind}"),
            "timestamp": time,
        },
        "subject": subject,
    })
}

fn deployed(id: &str, time: &str) -> Value {
    cdevent(id, "service.deployed.0.3.0", time, shop_in_production())
}

/// The subject of a service event: `shop`, in production, running `DIGEST`.
fn shop_in_production() -> Value {
    json!({"id": "shop", "content": {
        "environment": {"id": "production"},
        "artifactId": format!("pkg:oci/shop@{}", DIGEST.replace(':', "%3A")),
    }})
}

/// What a conformance example must come to: outcome, ledger reason, and a
/// query counting what it stored (with the count it must give).
struct Expect {
    file: &'static str,
    outcome: &'static str,
    reason: Option<&'static str>,
    stored: (&'static str, i64),
}

const NOTHING: (&str, i64) = (
    "SELECT (SELECT COUNT(*) FROM deploys) + (SELECT COUNT(*) FROM failures) \
     + (SELECT COUNT(*) FROM commits) + (SELECT COUNT(*) FROM links)",
    0,
);
const DEPLOY: (&str, i64) = (
    "SELECT COUNT(*) FROM deploys WHERE app = 'mySubject123' AND namespace = 'test123' \
     AND image_sha = 'sha256:0b31b1c02ff458ad9b7b81cbdf8f028bd54699fa151f221d1e8de6817db93427' \
     AND environment = 'test123' AND time = 1679322425",
    1,
);
const INCIDENT_OPEN: (&str, i64) = (
    "SELECT COUNT(*) FROM failures WHERE app = 'myApp' \
     AND issue_number = '/monitoring/prod1#incident-123' AND created = 1668174740 AND resolved IS NULL",
    1,
);
const INCIDENT_RESOLVED: (&str, i64) = (
    "SELECT COUNT(*) FROM failures WHERE app = 'myApp' \
     AND issue_number = '/monitoring/prod1#incident-123' AND created IS NULL AND resolved = 1668174740",
    1,
);

/// Every conformance example of one spec version (the file names are the
/// same in both), each into a fresh store.
const CONFORMANCE: &[Expect] = &[
    Expect {
        file: "artifact_packaged.json",
        outcome: "ignored",
        reason: Some("artifact_without_digest"),
        stored: NOTHING,
    },
    Expect {
        file: "artifact_published.json",
        outcome: "ignored",
        reason: Some("type_not_used"),
        stored: NOTHING,
    },
    Expect {
        file: "build_finished.json",
        outcome: "ignored",
        reason: Some("type_not_used"),
        stored: NOTHING,
    },
    Expect {
        file: "change_created.json",
        outcome: "ignored",
        reason: Some("type_not_used"),
        stored: NOTHING,
    },
    Expect {
        file: "change_merged.json",
        outcome: "ignored",
        reason: Some("change_not_a_commit"),
        stored: NOTHING,
    },
    Expect {
        file: "incident_detected.json",
        outcome: "accepted",
        reason: None,
        stored: INCIDENT_OPEN,
    },
    Expect {
        file: "incident_reported.json",
        outcome: "accepted",
        reason: None,
        stored: INCIDENT_OPEN,
    },
    Expect {
        file: "incident_resolved.json",
        outcome: "accepted",
        reason: None,
        stored: INCIDENT_RESOLVED,
    },
    Expect {
        file: "pipelinerun_finished.json",
        outcome: "ignored",
        reason: Some("type_not_used"),
        stored: NOTHING,
    },
    Expect {
        file: "service_deployed.json",
        outcome: "accepted",
        reason: None,
        stored: DEPLOY,
    },
    Expect {
        file: "service_removed.json",
        outcome: "ignored",
        reason: Some("type_not_used"),
        stored: NOTHING,
    },
    Expect {
        file: "service_rolledback.json",
        outcome: "accepted",
        reason: None,
        stored: DEPLOY,
    },
    Expect {
        file: "service_upgraded.json",
        outcome: "accepted",
        reason: None,
        stored: DEPLOY,
    },
];

#[tokio::test]
async fn cdevents_conformance_examples_of_both_spec_versions_map_as_documented() {
    for version in ["v0.4", "v0.5"] {
        for expect in CONFORMANCE {
            let path = format!("cdevents/{version}/{}", expect.file);
            let app = spawn_cdevents().await;
            let reply = post_binary(&app, "ce-1", &fixture(&path)).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text);
            assert_eq!(reply.outcome(), expect.outcome, "{path}: {}", reply.text);
            assert_eq!(reply.json["delivery_id"], "/conformance#ce-1", "{path}");
            let ledger = app.ledger();
            assert_eq!(ledger.len(), 1, "{path}");
            assert_eq!(ledger[0].outcome, expect.outcome, "{path}");
            assert_eq!(ledger[0].reason.as_deref(), expect.reason, "{path}");
            let (query, count) = expect.stored;
            assert_eq!(app.count(query), count, "{path}: {query}");
            app.shutdown().await;
        }
    }
}

#[tokio::test]
async fn cdevents_binary_structured_batch_and_bare_bodies_are_all_recorded() {
    let app = spawn_cdevents().await;
    // Bare: no envelope; the delivery id is context.id scoped by context.source.
    let bare = serde_json::to_vec(&deployed("bare-1", "2024-05-01T10:00:00Z")).unwrap();
    let reply = post(&app, "/hooks/cdevents", "application/json", &[], &bare).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["delivery_id"], "/ci/shop#bare-1");
    assert_eq!(reply.outcome(), "accepted");

    // Structured: the CloudEvent's own id and source name the delivery.
    let structured = serde_json::to_vec(&json!({
        "specversion": "1.0", "id": "s-1", "source": "/argo", "type": "dev.cdevents.service.deployed.0.3.0",
        "datacontenttype": "application/json",
        "data": deployed("ignored-id", "2024-05-01T11:00:00Z"),
    }))
    .unwrap();
    let reply = post(
        &app,
        "/hooks/cdevents",
        "application/cloudevents+json; charset=utf-8",
        &[],
        &structured,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["delivery_id"], "/argo#s-1");
    assert_eq!(reply.outcome(), "accepted");

    // Binary, sent twice: the second is the same delivery.
    let binary = serde_json::to_vec(&deployed("b-1", "2024-05-01T12:00:00Z")).unwrap();
    assert_eq!(
        post_binary(&app, "bin-1", &binary).await.outcome(),
        "accepted"
    );
    let again = post_binary(&app, "bin-1", &binary).await;
    assert_eq!(again.outcome(), "duplicate", "{}", again.text);

    // Batch: every event recorded and answered on its own.
    let item = |id: &str, data: Value| json!({"specversion": "1.0", "id": id, "source": "/batch", "type": data["context"]["type"], "data": data});
    let batch = serde_json::to_vec(&json!([
        item("i-1", deployed("x", "2024-05-01T13:00:00Z")),
        item("i-2", cdevent("y", "pipelinerun.finished.0.3.0", "2024-05-01T13:00:00Z", json!({"id": "p"}))),
        item("i-3", cdevent("z", "incident.detected.0.3.0", "2024-05-01T13:05:00Z",
            json!({"id": "INC-1", "content": {"environment": {"id": "production"}, "service": {"id": "shop"}}}))),
    ]))
    .unwrap();
    let reply = post_batch(&app, &batch).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answers: Vec<(&str, &str)> = reply.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["delivery_id"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("/batch#i-1", "accepted"),
            ("/batch#i-2", "ignored"),
            ("/batch#i-3", "accepted")
        ]
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM deploys WHERE app = 'shop'"),
        4
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM failures WHERE issue_number = '/ci/shop#INC-1' AND created IS NOT NULL"),
        1
    );
    // Each batch item is its own ledger row, keeping its own body.
    let rows: Vec<_> = app
        .ledger()
        .into_iter()
        .filter(|r| r.delivery_id.starts_with("/batch#"))
        .collect();
    assert_eq!(rows.len(), 3);
    let kept: Value = serde_json::from_slice(rows[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(kept["id"], "i-1");
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_deployments_total", &[("app", "shop")]),
        4.0
    );
}

#[tokio::test]
async fn cdevents_batch_with_a_bad_item_is_a_4xx_but_keeps_the_good_ones() {
    let app = spawn_cdevents().await;
    let mut broken = deployed("bad", "2024-05-01T10:00:00Z");
    broken["subject"]["content"]["artifactId"] = "pkg:oci/shop@sha256:123".into();
    let batch = serde_json::to_vec(&json!([
        {"specversion": "1.0", "id": "ok", "source": "/b", "data": deployed("good", "2024-05-01T09:00:00Z")},
        {"specversion": "1.0", "id": "bad", "source": "/b", "data": broken},
        {"specversion": "1.0", "id": "empty", "source": "/b"},
    ]))
    .unwrap();
    let reply = post_batch(&app, &batch).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let events = reply.json["events"].as_array().unwrap();
    assert_eq!(events[0]["outcome"], "accepted");
    assert_eq!(events[1]["outcome"], "invalid");
    assert_eq!(events[1]["field"], "subject.content.artifactId");
    assert_eq!(events[1]["reason"], "invalid_format");
    assert_eq!(events[2]["field"], "data");
    assert_eq!(events[2]["reason"], "missing_field");
    assert_eq!(app.count("SELECT COUNT(*) FROM deploys"), 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM deliveries WHERE outcome = 'invalid'"),
        2
    );

    // A batch that is not an array is malformed as a whole.
    let reply = post_batch(&app, b"{}").await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json["reason"], "invalid_json");
}

#[tokio::test]
async fn cdevents_bad_input_names_the_field() {
    let app = spawn_cdevents().await;
    let mut event = deployed("e-1", "not a time");
    event["subject"]
        .as_object_mut()
        .unwrap()
        .remove("id")
        .unwrap();
    let reply = post(
        &app,
        "/hooks/cdevents",
        "application/json",
        &[],
        &serde_json::to_vec(&event).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let fields: Vec<&str> = reply.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["subject.id", "context.timestamp"]);
    assert_eq!(app.count("SELECT COUNT(*) FROM deploys"), 0);

    let no_type = serde_json::to_vec(&json!({"context": {"specversion": "0.5.0"}})).unwrap();
    let reply = post(&app, "/hooks/cdevents", "application/json", &[], &no_type).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json["field"], "context.type");

    let reply = post(&app, "/hooks/cdevents", "text/plain", &[], b"hello").await;
    assert_eq!(reply.status, 415, "{}", reply.text);

    // A wrong signature is refused before anything is read.
    let body = serde_json::to_vec(&deployed("e-2", "2024-05-01T10:00:00Z")).unwrap();
    let reply = app
        .client
        .post(format!("{}/hooks/cdevents", app.ingest))
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 401);
    assert_eq!(app.count("SELECT COUNT(*) FROM deploys"), 0);
}

#[tokio::test]
async fn cdevents_bearer_instance_takes_what_real_emitters_send() {
    let app = spawn_cdevents().await;
    // A URL as the service id, a purl with a tag instead of a digest,
    // customData and no subject.source.
    let mut event = cdevent(
        "argo-1",
        "service.upgraded.0.2.0",
        "2024-05-02T08:00:00Z",
        json!({"id": "https://argocd.example/applications/shop", "content": {
            "environment": {"id": "production", "source": "https://argocd.example"},
            "artifactId": "pkg:oci/shop@v1.4.2?repository_url=ghcr.io/acme",
        }}),
    );
    event["context"]["version"] = "0.4.1".into();
    event["context"]
        .as_object_mut()
        .unwrap()
        .remove("specversion");
    event["customData"] = json!({"argocd": {"revision": "abc"}});
    let body = serde_json::to_vec(&event).unwrap();
    let send = |auth: String| {
        app.client
            .post(format!("{}/hooks/cdevents/argo", app.ingest))
            .header("Content-Type", "application/json")
            .header("Authorization", auth)
            .body(body.clone())
            .send()
    };
    let refused = Reply::from(send("Bearer wrong".into()).await.unwrap()).await;
    assert_eq!(refused.status, 401);
    let reply = Reply::from(send(format!("Bearer {SECRET}")).await.unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.outcome(), "accepted");
    // A deploy of no known image: counted, identified by app, namespace and time.
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM deploys WHERE app = 'https://argocd.example/applications/shop' \
             AND image_sha = '' AND commit_sha = '' AND namespace = 'production' AND time = 1714636800"
        ),
        1
    );
}

#[tokio::test]
async fn cdevents_change_artifact_deploy_incident_measure_lead_time_and_restore() {
    let app = spawn_cdevents().await;
    let t = |minutes: i64| {
        chrono::DateTime::from_timestamp(1_714_557_600 + minutes * 60, 0)
            .unwrap()
            .to_rfc3339()
    };
    let events = [
        cdevent(
            "c-1",
            "change.merged.0.3.0",
            &t(0),
            json!({"id": format!("https://git.example/acme/shop/commit/{SHA}"),
                   "content": {"repository": {"id": "acme/shop", "source": "https://git.example"}}}),
        ),
        cdevent(
            "a-1",
            "artifact.packaged.0.3.0",
            &t(5),
            json!({"id": format!("pkg:oci/shop@{DIGEST}"),
                   "content": {"change": {"id": SHA, "source": "https://git.example/acme/shop"}}}),
        ),
        deployed("d-1", &t(30)),
        cdevent(
            "i-1",
            "incident.detected.0.3.0",
            &t(40),
            json!({"id": "INC-9", "content": {"environment": {"id": "production"}, "service": {"id": "shop"}}}),
        ),
        cdevent(
            "i-2",
            "incident.resolved.0.3.0",
            &t(52),
            json!({"id": "INC-9", "content": {"environment": {"id": "production"}, "service": {"id": "shop"}}}),
        ),
    ];
    for event in &events {
        let body = serde_json::to_vec(event).unwrap();
        let id = event["context"]["id"].as_str().unwrap();
        let reply = post_binary(&app, id, &body).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.text);
        assert_eq!(reply.outcome(), "accepted", "{id}: {}", reply.text);
    }
    let scrape = app.scrape().await;
    let app_label = [("app", "shop")];
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_count", &app_label),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_sum", &app_label),
        1800.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_count", &app_label),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &app_label),
        720.0
    );
}

#[tokio::test]
async fn cdevents_deploy_before_its_artifact_link_still_measures_lead_time() {
    let app = spawn_cdevents().await;
    let merged = cdevent(
        "c-1",
        "change.merged.0.3.0",
        "2024-05-01T10:00:00Z",
        json!({"id": SHA, "content": {"repository": {"id": "acme/shop"}}}),
    );
    let packaged = cdevent(
        "a-1",
        "artifact.packaged.0.3.0",
        "2024-05-01T10:05:00Z",
        json!({"id": format!("pkg:oci/shop@{DIGEST}"), "content": {"change": {"id": SHA}}}),
    );
    for (id, event) in [
        ("c-1", merged),
        ("d-1", deployed("d-1", "2024-05-01T11:00:00Z")),
        ("a-1", packaged),
    ] {
        let reply = post_binary(&app, id, &serde_json::to_vec(&event).unwrap()).await;
        assert_eq!(reply.outcome(), "accepted", "{id}: {}", reply.text);
    }
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_lead_time_seconds_sum", &[("app", "shop")]),
        3600.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdevents_send_emits_events_the_source_records() {
    let app = spawn_cdevents().await;
    let url = app.ingest.clone();
    let secret = [("HOOKGAUGE_SECRET", SECRET)];
    let send = |command: &str| {
        let mut args = vec!["send", "--cdevents", "--url", &url, "--retries", "0"];
        args.extend(command.split_whitespace());
        tokio::task::block_in_place(|| crate::cli::run(&args, &secret))
    };
    // One command a line, its words separated by spaces.
    let commands = [
        format!("committime --app shop --commit {SHA} --image-sha {DIGEST} --namespace production --timestamp 1714557600"),
        format!("deploytime --app shop --image-sha {DIGEST} --namespace production --timestamp 1714558200"),
        "failure --app shop --failure-id INC-3 --event created --timestamp 1714558800".to_owned(),
        "failure --app shop --failure-id INC-3 --event resolved --timestamp 1714559400".to_owned(),
    ];
    for command in &commands {
        let (code, stdout, stderr) = send(command);
        assert_eq!(code, 0, "{command:?}: {stdout}{stderr}");
        assert!(stdout.contains("\"outcome\":\"accepted\""), "{stdout}");
    }
    // Sent again: the same CloudEvent id, the same delivery.
    let (code, stdout, _) = send(&commands[1]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"outcome\":\"duplicate\""), "{stdout}");
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM links WHERE app = 'shop' AND commit_sha = '{SHA}' AND image_sha = '{DIGEST}'"
        )),
        1
    );
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM deploys WHERE app = 'shop' AND image_sha = '{DIGEST}' AND time = 1714558200"
        )),
        1
    );
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &[("app", "shop")]),
        600.0
    );
    let rows = app.ledger();
    assert!(rows
        .iter()
        .all(|r| r.delivery_id.starts_with("/hookgauge/send#")));
    assert_eq!(
        rows.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(),
        [
            "artifact.packaged",
            "service.deployed",
            "incident.detected",
            "incident.resolved",
            "service.deployed"
        ]
    );
}

/// Issue 21: a `service.rolledback` is a deploy that counts as rework, with
/// no failure open; a `service.deployed` of the same service is not.
#[tokio::test]
async fn cdevents_rollback_counts_as_rework() {
    let app = spawn_cdevents().await;
    let rollback = cdevent(
        "rb-1",
        "service.rolledback.0.3.0",
        "2024-05-01T12:00:00Z",
        shop_in_production(),
    );
    for body in [deployed("d-1", "2024-05-01T10:00:00Z"), rollback] {
        let reply = post_binary(
            &app,
            body["context"]["id"].as_str().unwrap(),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.outcome(), "accepted", "{}", reply.text);
    }
    let scrape = app.scrape().await;
    let labels = [("app", "shop"), ("namespace", "production")];
    assert_eq!(scrape.value("hookgauge_deployments_total", &labels), 2.0);
    assert_eq!(
        scrape.value("hookgauge_rework_deployments_total", &labels),
        1.0
    );
    assert_eq!(
        app.strings(
            "SELECT CAST(time AS TEXT) FROM deploys WHERE rework <> 0 AND rework_reported <> 0"
        ),
        ["1714564800"]
    );
    app.shutdown().await;
}
