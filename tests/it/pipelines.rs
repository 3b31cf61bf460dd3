//! Sources without published fixtures in the shared set (Jira, Opsgenie,
//! Tekton, Jenkins) driven with payloads of the shape their documentation
//! gives; declarative plugins from `[server] plugins_dir`; GitHub's legacy
//! SHA-1 signature, off unless enabled.

use serde_json::{json, Value};

use crate::harness::{now, spawn_app_with, TestApp};
use crate::sources::{hook_path, post, provider_headers, spawn_sources, SECRET};

/// Delivers `body` to `source` as its sender would, signed with the test secret.
async fn deliver(app: &TestApp, source: &str, event: &str, id: &str, body: &Value) -> Value {
    let bytes = serde_json::to_vec(body).unwrap();
    let headers = provider_headers(source, event, id, &bytes, SECRET);
    let reply = post(app, &hook_path(source, SECRET), &headers, &bytes).await;
    assert_eq!(reply.status, 200, "{source} {id}: {}", reply.text);
    reply.json
}

/// The reason the ledger gives for the delivery that `reply` answered.
fn reason(app: &TestApp, reply: &Value) -> Option<String> {
    app.ledger()
        .into_iter()
        .find(|r| Some(r.delivery_id.as_str()) == reply["delivery_id"].as_str())
        .and_then(|r| r.reason)
}

/// ISO 8601 with milliseconds and a `+0200` offset, as Jira writes it.
fn jira_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds + 7200, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S.000+0200")
        .to_string()
}

fn jira_issue(
    event: &str,
    key: &str,
    issue_type: &str,
    created: i64,
    resolved: Option<i64>,
) -> Value {
    json!({
        "timestamp": (created + 60) * 1000,
        "webhookEvent": event,
        "issue_event_type_name": "issue_generic",
        "issue": {
            "id": "99291",
            "key": key,
            "fields": {
                "issuetype": {"name": issue_type},
                "labels": ["customer-facing"],
                "project": {"key": "SHOP"},
                "components": [{"name": "checkout"}],
                "created": jira_time(created),
                "resolutiondate": resolved.map(jira_time),
                "status": {"statusCategory": {"key": if resolved.is_some() { "done" } else { "new" }}}
            }
        }
    })
}

#[tokio::test]
async fn jira_incidents_open_and_resolve() {
    let app = spawn_sources().await;
    let created = now() - 3600;
    let opened = jira_issue("jira:issue_created", "SHOP-17", "Incident", created, None);
    let reply = deliver(&app, "jira", "", "jira-1", &opened).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");

    let mut resolved = jira_issue(
        "jira:issue_updated",
        "SHOP-17",
        "Incident",
        created,
        Some(created + 1800),
    );
    resolved["changelog"] = json!({"id": "10124", "items": [
        {"field": "resolution", "fieldtype": "jira", "from": null, "fromString": null, "to": "10000", "toString": "Done"}
    ]});
    let reply = deliver(&app, "jira", "", "jira-2", &resolved).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    // Retried with the same identifier: nothing new.
    let reply = deliver(&app, "jira", "", "jira-2", &resolved).await;
    assert_eq!(reply["outcome"], "duplicate", "{reply}");

    let story = jira_issue("jira:issue_created", "SHOP-18", "Story", created, None);
    let reply = deliver(&app, "jira", "", "jira-3", &story).await;
    assert_eq!(
        reason(&app, &reply).as_deref(),
        Some("issue_not_an_incident")
    );

    let mut reopened = jira_issue("jira:issue_updated", "SHOP-17", "Incident", created, None);
    reopened["changelog"] = json!({"items": [
        {"field": "resolution", "fieldtype": "jira", "from": "10000", "fromString": "Done", "to": null, "toString": null}
    ]});
    let reply = deliver(&app, "jira", "", "jira-4", &reopened).await;
    assert_eq!(reason(&app, &reply).as_deref(), Some("resolution_cleared"));

    let scrape = app.scrape().await;
    let app_label = [("app", "SHOP")];
    assert_eq!(scrape.value("hookgauge_failures_total", &app_label), 1.0);
    assert_eq!(
        scrape.value("hookgauge_failures_resolved_total", &app_label),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &app_label),
        1800.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn opsgenie_alerts_tagged_as_incidents_are_failures() {
    let app = spawn_sources().await;
    let created = now() - 600;
    let alert = |action: &str, tags: &[&str], updated_ns: i64| {
        json!({
            "action": action,
            "alert": {
                "alertId": "052652ac-5d1c-464a-812a-7dd18bbfba8c",
                "alias": "checkout-5xx",
                "message": "checkout answers 5xx",
                "entity": "",
                "tags": tags,
                "createdAt": created * 1000 + 104,
                "updatedAt": updated_ns,
            },
            "source": {"name": "web", "type": "API"},
            "integrationId": "37c8f316-17c6-49d7-899b-9c7e540c048d"
        })
    };
    let tags = ["incident", "app:shop"];
    let reply = deliver(
        &app,
        "opsgenie",
        "",
        "",
        &alert("Create", &tags, created * 1_000_000_000),
    )
    .await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    // `updatedAt` is in nanoseconds.
    let closed = alert(
        "Close",
        &tags,
        (created + 300) * 1_000_000_000 + 669_001_603,
    );
    let reply = deliver(&app, "opsgenie", "", "", &closed).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    let reply = deliver(&app, "opsgenie", "", "", &closed).await;
    assert_eq!(
        reply["outcome"], "duplicate",
        "same content, same delivery: {reply}"
    );
    let untagged = alert("Create", &["tag1"], created * 1_000_000_000);
    let reply = deliver(&app, "opsgenie", "", "", &untagged).await;
    assert_eq!(
        reason(&app, &reply).as_deref(),
        Some("alert_not_an_incident")
    );
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_failures_total", &[("app", "shop")]),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &[("app", "shop")]),
        300.0
    );
    app.shutdown().await;
}

const DIGEST: &str = "sha256:4a5d2b8f0c1e3d6a7b9c8e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";
const COMMIT: &str = "c5feabde2d8cd023215af4d2ceeb7a64839fc428";

/// A v1 PipelineRun as Tekton's CloudEvents carry it.
fn pipeline_run(pipeline: &str, completed: i64, results: Value) -> Value {
    let time = chrono::DateTime::from_timestamp(completed, 0)
        .unwrap()
        .to_rfc3339();
    json!({"pipelineRun": {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {
            "name": format!("{pipeline}-run-x7k2p"),
            "namespace": "ci",
            "labels": {"tekton.dev/pipeline": pipeline}
        },
        "spec": {
            "pipelineRef": {"name": pipeline},
            "params": [{"name": "app", "value": "shop"}, {"name": "namespace", "value": "shop-prod"}]
        },
        "status": {
            "startTime": time,
            "completionTime": time,
            "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}],
            "results": results
        }
    }})
}

#[tokio::test]
async fn tekton_build_links_the_digest_and_the_deploy_finds_it() {
    let app = spawn_sources().await;
    let t = now() - 120;
    let successful = "dev.tekton.event.pipelinerun.successful.v1";
    let build = pipeline_run(
        "build-shop",
        t,
        json!([{"name": "IMAGE_DIGEST", "value": DIGEST}, {"name": "CHAINS-GIT_COMMIT", "value": COMMIT}]),
    );
    let reply = deliver(&app, "tekton", successful, "ce-build", &build).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    // The deploy pipeline reports only the commit.
    let deploy = pipeline_run(
        "deploy-shop",
        t + 60,
        json!([{"name": "commit", "value": COMMIT}]),
    );
    let reply = deliver(&app, "tekton", successful, "ce-deploy", &deploy).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    // Tekton retries with the same Ce-Id.
    let reply = deliver(&app, "tekton", successful, "ce-deploy", &deploy).await;
    assert_eq!(reply["outcome"], "duplicate", "{reply}");
    // A build that reports a digest but a branch, not a commit: nothing to link.
    let branch_only = pipeline_run(
        "build-shop",
        t + 30,
        json!([{"name": "IMAGE_DIGEST", "value": DIGEST}, {"name": "revision", "value": "main"}]),
    );
    let reply = deliver(&app, "tekton", successful, "ce-branch", &branch_only).await;
    assert_eq!(
        reason(&app, &reply).as_deref(),
        Some("pipeline_not_a_deploy"),
        "{reply}"
    );
    let failed = pipeline_run("deploy-shop", t + 90, json!([]));
    let reply = deliver(
        &app,
        "tekton",
        "dev.tekton.event.pipelinerun.failed.v1",
        "ce-failed",
        &failed,
    )
    .await;
    assert_eq!(reason(&app, &reply).as_deref(), Some("run_not_successful"));
    let task = json!({"taskRun": {"metadata": {"name": "t"}}});
    let reply = deliver(
        &app,
        "tekton",
        "dev.tekton.event.taskrun.successful.v1",
        "ce-task",
        &task,
    )
    .await;
    assert_eq!(reason(&app, &reply).as_deref(), Some("taskrun_not_used"));

    let scrape = app.scrape().await;
    let labels = [("app", "shop"), ("namespace", "shop-prod")];
    assert_eq!(scrape.value("hookgauge_deployments_total", &labels), 1.0);
    let gauges = scrape.find(
        "deploy_timestamp",
        &[("app", "shop"), ("image_sha", DIGEST)],
    );
    assert_eq!(gauges.len(), 1, "the deploy is shown with the linked image");
    assert_eq!(gauges[0].value, (t + 60) as f64);
    app.shutdown().await;
}

#[tokio::test]
async fn jenkins_finalized_successful_deploy_jobs_are_deploys() {
    let app = spawn_sources().await;
    let t = now() - 300;
    let build = |name: &str, phase: &str, status: &str, number: i64| {
        json!({
            "name": name,
            "display_name": name,
            "url": format!("job/{name}/"),
            "build": {
                "full_url": format!("https://jenkins.example/job/{name}/{number}/"),
                "number": number,
                "phase": phase,
                "status": status,
                "timestamp": t * 1000 + 512,
                "duration": 42000,
                "scm": {"url": "https://git.example/shop.git", "branch": "origin/main", "commit": COMMIT},
                "parameters": {"IMAGE_DIGEST": DIGEST},
                "artifacts": {}
            }
        })
    };
    let cases = [
        (
            build("shop-deploy", "STARTED", "", 7),
            "ignored",
            Some("build_not_finalized"),
        ),
        (
            build("shop-deploy", "FINALIZED", "FAILURE", 7),
            "ignored",
            Some("build_not_successful"),
        ),
        (
            build("shop-tests", "FINALIZED", "SUCCESS", 8),
            "ignored",
            Some("job_not_a_deploy"),
        ),
        (
            build("shop-deploy", "FINALIZED", "SUCCESS", 9),
            "accepted",
            None,
        ),
    ];
    for (body, outcome, why) in cases {
        let reply = deliver(&app, "jenkins", "", "", &body).await;
        assert_eq!(reply["outcome"], outcome, "{body}: {reply}");
        assert_eq!(reason(&app, &reply).as_deref(), why, "{body}");
    }
    let scrape = app.scrape().await;
    let labels = [("app", "shop-deploy"), ("namespace", "production")];
    assert_eq!(scrape.value("hookgauge_deployments_total", &labels), 1.0);
    assert_eq!(
        scrape
            .find(
                "deploy_timestamp",
                &[("app", "shop-deploy"), ("image_sha", DIGEST)]
            )
            .len(),
        1
    );
    app.shutdown().await;
}

const USER_PLUGIN: &str = r#"
# A team's own release tool: it signs with HMAC-SHA512, base64.
source = "shipit"
description = "shipit release notifications"

[auth]
scheme = "hmac"
header = "X-Shipit-Signature"
algorithm = "sha512"
encoding = "base64"

[delivery]
id = "$.delivery"

[[rule]]
name = "released"
when = "@.kind == 'release' && @.result == 'ok'"
emit = "deploy"
fields.app = "$.service"
fields.environment = "$.stage"
fields.time = "$.at"
fields.commit = "$.sha"

[[rule]]
name = "other"
when = "@.kind"
ignore = "not_a_release"
"#;

fn sha512_base64(secret: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_plugin_file_from_plugins_dir_is_a_source() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("shipit.toml"), USER_PLUGIN).unwrap();
    let dir = plugins.path().to_owned();
    let app = spawn_app_with(|raw| {
        raw.server.plugins_dir = Some(dir);
        raw.sources.native.insert(
            "shipit".into(),
            json!({"secrets": [SECRET], "apps": {"svc-shop": "shop"}}),
        );
    })
    .await;
    let t = now() - 60;
    let send = |body: Value, signature: Option<String>| {
        let bytes = serde_json::to_vec(&body).unwrap();
        let signature = signature.unwrap_or_else(|| sha512_base64(SECRET, &bytes));
        let headers = vec![("X-Shipit-Signature".to_owned(), signature)];
        let app = &app;
        async move { post(app, "/hooks/shipit", &headers, &bytes).await }
    };
    let release = json!({"delivery": "d-1", "kind": "release", "result": "ok", "service": "svc-shop", "stage": "production", "at": t, "sha": COMMIT});
    let reply = send(release.clone(), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["outcome"], "accepted");
    assert_eq!(reply.json["delivery_id"], "d-1");
    let reply = send(json!({"delivery": "d-2", "kind": "rollback"}), None).await;
    assert_eq!(reason(&app, &reply.json).as_deref(), Some("not_a_release"));
    let staging = json!({"delivery": "d-3", "kind": "release", "result": "ok", "service": "svc-shop", "stage": "staging", "at": t, "sha": COMMIT});
    let reply = send(staging, None).await;
    assert_eq!(
        reason(&app, &reply.json).as_deref(),
        Some("environment_not_production")
    );
    // A missing field is a 422 naming its path.
    let reply = send(json!({"delivery": "d-4", "kind": "release", "result": "ok", "stage": "production", "at": t, "sha": COMMIT}), None).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json["field"], "$.service", "{}", reply.text);
    // Signed under another secret.
    let reply = send(release, Some(sha512_base64("other", b"{}"))).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    let scrape = app.scrape().await;
    let labels = [("app", "shop"), ("namespace", "production")];
    assert_eq!(scrape.value("hookgauge_deployments_total", &labels), 1.0);
    app.shutdown().await;
}

#[test]
fn a_bad_plugin_file_stops_start_up_with_file_line_and_reason() {
    let plugins = tempfile::tempdir().unwrap();
    let bad = USER_PLUGIN.replace("@.kind == 'release' &&", "@.kind == 'release' &&&");
    std::fs::write(plugins.path().join("shipit.toml"), bad).unwrap();
    let output = std::process::Command::new(crate::harness::binary())
        .args(["check-config"])
        .env("HOOKGAUGE__SERVER__PLUGINS_DIR", plugins.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let line = USER_PLUGIN
        .lines()
        .position(|l| l.starts_with("when = \"@.kind == 'release'"))
        .unwrap()
        + 1;
    let expected = format!("shipit.toml:{line}: `when` is not a JSONPath filter expression");
    assert!(stderr.contains(&expected), "{expected} in {stderr}");
}

#[tokio::test]
async fn github_sha1_signatures_only_when_enabled() {
    use hmac::{Hmac, Mac};
    let body = crate::harness::fixture("github/ping.json");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let sha1 = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
    let headers = vec![
        ("X-GitHub-Event".to_owned(), "ping".to_owned()),
        ("X-GitHub-Delivery".to_owned(), "legacy-1".to_owned()),
        ("X-Hub-Signature".to_owned(), sha1),
    ];
    let app = spawn_app_with(|raw| {
        raw.sources.native.insert(
            "github".into(),
            json!({"secrets": [SECRET], "ghes": {"secrets": [SECRET], "legacy_sha1_signatures": true}}),
        );
    })
    .await;
    let reply = post(&app, "/hooks/github", &headers, &body).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.json["field"], "x-hub-signature-256", "{}", reply.text);
    let reply = post(&app, "/hooks/github/ghes", &headers, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["outcome"], "ignored");
    app.shutdown().await;
}

/// An Azure DevOps sample as a real organisation would send it: the same
/// payload from another account than the documentation's.
fn azure_delivery(file: &str) -> Value {
    let mut body: Value = serde_json::from_slice(&crate::harness::fixture(file)).unwrap();
    body["resourceContainers"]["account"]["id"] = json!("0d2f4b56-7c1e-4a8b-9f30-6e5d4c3b2a19");
    body
}

#[tokio::test]
async fn azure_devops_pushes_builds_and_work_items_map() {
    let app = spawn_sources().await;
    let push = azure_delivery("azuredevops/git.push.json");
    let reply = deliver(&app, "azure-devops", "", "", &push).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    assert_eq!(reply["delivery_id"], push["id"], "the body's id");
    let build = azure_delivery("azuredevops/build.complete.json");
    let reply = deliver(&app, "azure-devops", "", "", &build).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");

    // A bug created, resolved, then closed: one failure, restored once,
    // timed by the resolved date that both updates carry.
    let created = now() - 7200;
    let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339();
    let bug = json!({
        "id": "9d3c4a60-0001-4c1e-9a39-1b0f4c1e0001",
        "eventType": "workitem.created",
        "resource": {"id": 5, "rev": 1, "fields": {
            "System.WorkItemType": "Bug", "System.State": "New",
            "System.TeamProject": "FabrikamCloud", "System.CreatedDate": at(created)
        }}
    });
    let reply = deliver(&app, "azure-devops", "", "", &bug).await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    let update = |id: &str, from: &str, to: &str, changed: i64| {
        json!({
            "id": id,
            "eventType": "workitem.updated",
            "resource": {
                "id": 2, "workItemId": 5, "rev": 3,
                "fields": {
                    "System.State": {"oldValue": from, "newValue": to},
                    "System.ChangedDate": {"oldValue": at(created), "newValue": at(changed)}
                },
                "revision": {"id": 5, "fields": {
                    "System.WorkItemType": "Bug", "System.State": to,
                    "System.TeamProject": "FabrikamCloud", "System.CreatedDate": at(created),
                    "Microsoft.VSTS.Common.ResolvedDate": at(created + 1200)
                }}
            }
        })
    };
    let reply = deliver(
        &app,
        "azure-devops",
        "",
        "",
        &update("u-1", "Active", "Resolved", created + 1200),
    )
    .await;
    assert_eq!(reply["outcome"], "accepted", "{reply}");
    let reply = deliver(
        &app,
        "azure-devops",
        "",
        "",
        &update("u-2", "Resolved", "Closed", created + 3600),
    )
    .await;
    assert_eq!(
        reason(&app, &reply).as_deref(),
        Some("work_item_change_not_used"),
        "{reply}"
    );

    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value(
            "hookgauge_deployments_total",
            &[
                ("app", "ConsumerAddressModule"),
                ("namespace", "production")
            ]
        ),
        1.0
    );
    let project = [("app", "FabrikamCloud")];
    assert_eq!(
        scrape.value("hookgauge_failures_resolved_total", &project),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_sum", &project),
        1200.0
    );
    let pushed = app.count(
        "SELECT COUNT(*) FROM commits WHERE app = 'Fabrikam-Fiber-Git' AND commit_sha = '33b55f7cb7e7e245323987634f960cf4a6e6bc74'",
    );
    assert_eq!(pushed, 1);
    app.shutdown().await;
}
