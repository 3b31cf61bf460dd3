//! Native sources through `/hooks/<source>`: every provider fixture delivered
//! with a correct signature maps as SOURCES.md specifies (outcome, ledger row,
//! series); bad credentials are refused for every source; a push followed by
//! a deploy measures the lead time of every commit the deploy shipped.

use serde_json::json;

use crate::harness::{
    fixture, hmac_hex, spawn_app_with, standard_signature, Reply, TestApp, WHSEC,
};

pub use crate::harness::SECRET;

pub async fn spawn_sources() -> TestApp {
    spawn_app_with(|raw| {
        let sources = &mut raw.sources.native;
        sources.insert(
            "github".into(),
            json!({"secrets": [SECRET], "incident_labels": ["bug"]}),
        );
        sources.insert("gitlab".into(), json!({"secrets": [SECRET]}));
        sources.insert(
            "gitea".into(),
            json!({"secrets": [SECRET], "incident_labels": ["bug"]}),
        );
        sources.insert(
            "bitbucket".into(),
            json!({"secrets": [SECRET], "branches": ["name-of-branch"], "deploy_workflows": ["mybuildtool"]}),
        );
        sources.insert("pagerduty".into(), json!({"secrets": [SECRET]}));
        sources.insert("standard-webhooks".into(), json!({"secrets": [WHSEC]}));
        sources.insert("bitbucket-datacenter".into(), json!({"secrets": [SECRET]}));
        sources.insert(
            "azure-devops".into(),
            json!({"secrets": [SECRET], "deploy_workflows": ["ConsumerAddressModule"]}),
        );
        sources.insert("jira".into(), json!({"secrets": [SECRET]}));
        sources.insert("opsgenie".into(), json!({"secrets": [SECRET]}));
        sources.insert("argocd".into(), json!({"secrets": [SECRET]}));
        sources.insert(
            "tekton".into(),
            json!({"secrets": [SECRET], "deploy_workflows": ["deploy-shop"]}),
        );
        sources.insert(
            "jenkins".into(),
            json!({"secrets": [SECRET], "deploy_workflows": ["shop-deploy"]}),
        );
    })
    .await
}

/// Basic auth as a sender puts it when the URL carries `user:secret@`.
fn basic(secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("hookgauge:{secret}"))
    )
}

/// Where a source's deliveries go; Tekton carries its token in the URL.
pub fn hook_path(source: &str, secret: &str) -> String {
    match source {
        "tekton" => format!("/hooks/tekton?token={secret}"),
        _ => format!("/hooks/{source}"),
    }
}

/// Sources whose senders give a delivery id (else the content hash is one).
fn has_delivery_id(source: &str) -> bool {
    !matches!(source, "argocd" | "opsgenie" | "jenkins")
}

/// The headers a provider sends with `body`, signed with `secret`.
pub fn provider_headers(
    source: &str,
    event: &str,
    id: &str,
    body: &[u8],
    secret: &str,
) -> Vec<(String, String)> {
    let h = |k: &str, v: String| (k.to_owned(), v);
    let sig = hmac_hex(secret.as_bytes(), body);
    match source {
        "github" => vec![
            h("X-GitHub-Event", event.into()),
            h("X-GitHub-Delivery", id.into()),
            h("X-Hub-Signature-256", format!("sha256={sig}")),
        ],
        "gitlab" => vec![
            h("X-Gitlab-Event", event.into()),
            h("Idempotency-Key", id.into()),
            h("X-Gitlab-Token", secret.into()),
        ],
        "gitea" => vec![
            h("X-Gitea-Event", event.into()),
            h("X-Gitea-Delivery", id.into()),
            h("X-Gitea-Signature", sig),
        ],
        "bitbucket" => vec![
            h("X-Event-Key", event.into()),
            h("X-Request-UUID", id.into()),
            h("X-Hub-Signature", format!("sha256={sig}")),
        ],
        "pagerduty" => vec![
            h("X-Webhook-Id", id.into()),
            h("X-PagerDuty-Signature", format!("v1={sig}")),
        ],
        "bitbucket-datacenter" => vec![
            h("X-Event-Key", event.into()),
            h("X-Request-Id", id.into()),
            h("X-Hub-Signature", format!("sha256={sig}")),
        ],
        // The body carries the id; the subscription's basic auth the secret.
        "azure-devops" | "jenkins" => vec![h("Authorization", basic(secret))],
        "jira" => vec![
            h("X-Atlassian-Webhook-Identifier", id.into()),
            h("X-Hub-Signature", format!("sha256={sig}")),
        ],
        "opsgenie" | "argocd" => vec![h("Authorization", format!("Bearer {secret}"))],
        "tekton" => vec![
            h("Ce-Id", id.into()),
            h("Ce-Type", event.into()),
            h("Ce-Specversion", "1.0".into()),
        ],
        other => panic!("no headers for {other}"),
    }
}

pub async fn post(app: &TestApp, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
    let mut request = app
        .client
        .post(format!("{}{path}", app.ingest))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    Reply::from(request.send().await.unwrap()).await
}

/// (source, fixture, event header, expected outcome, expected ledger reason)
const FIXTURES: &[(&str, &str, &str, &str, Option<&str>)] = &[
    (
        "github",
        "github/deployment.created.json",
        "deployment",
        "ignored",
        Some("deployment_created_awaiting_status"),
    ),
    (
        "github",
        "github/deployment_status.failure.json",
        "deployment_status",
        "ignored",
        Some("deployment_not_successful"),
    ),
    (
        "github",
        "github/deployment_status.success.json",
        "deployment_status",
        "accepted",
        None,
    ),
    (
        "github",
        "github/issues.closed.json",
        "issues",
        "accepted",
        None,
    ),
    (
        "github",
        "github/issues.labeled.json",
        "issues",
        "accepted",
        None,
    ),
    // The same issue, created at the same time: the failure is already stored.
    (
        "github",
        "github/issues.opened.json",
        "issues",
        "duplicate",
        Some("event_stored"),
    ),
    (
        "github",
        "github/ping.json",
        "ping",
        "ignored",
        Some("ping"),
    ),
    (
        "github",
        "github/pull_request.closed.json",
        "pull_request",
        "ignored",
        Some("event_not_used"),
    ),
    ("github", "github/push.json", "push", "accepted", None),
    (
        "github",
        "github/registry_package.published.json",
        "registry_package",
        "ignored",
        Some("not_a_container_package"),
    ),
    (
        "github",
        "github/release.published.json",
        "release",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "github",
        "github/workflow_run.completed.json",
        "workflow_run",
        "ignored",
        Some("workflow_runs_not_configured_as_deploys"),
    ),
    (
        "gitlab",
        "gitlab/deployment.failed.json",
        "Deployment Hook",
        "ignored",
        Some("deployment_not_successful"),
    ),
    (
        "gitlab",
        "gitlab/deployment.success.gitlab-com.json",
        "Deployment Hook",
        "accepted",
        None,
    ),
    (
        "gitlab",
        "gitlab/deployment.success.json",
        "Deployment Hook",
        "ignored",
        Some("environment_not_production"),
    ),
    (
        "gitlab",
        "gitlab/incident.close.json",
        "Issue Hook",
        "accepted",
        None,
    ),
    (
        "gitlab",
        "gitlab/incident.open.json",
        "Issue Hook",
        "accepted",
        None,
    ),
    (
        "gitlab",
        "gitlab/issue.open.json",
        "Issue Hook",
        "ignored",
        Some("issue_not_an_incident"),
    ),
    (
        "gitlab",
        "gitlab/job.success.json",
        "Job Hook",
        "ignored",
        Some("job_not_a_deploy"),
    ),
    (
        "gitlab",
        "gitlab/merge_request.open.json",
        "Merge Request Hook",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "gitlab",
        "gitlab/pipeline.success.json",
        "Pipeline Hook",
        "ignored",
        Some("pipeline_not_a_deploy"),
    ),
    ("gitlab", "gitlab/push.json", "Push Hook", "accepted", None),
    (
        "gitlab",
        "gitlab/release.create.json",
        "Release Hook",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "gitlab",
        "gitlab/system_hook.merge_request.json",
        "System Hook",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "gitlab",
        "gitlab/system_hook.push.json",
        "System Hook",
        "accepted",
        None,
    ),
    (
        "gitlab",
        "gitlab/tag_push.json",
        "Tag Push Hook",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "gitea",
        "gitea/create.json",
        "create",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "gitea",
        "gitea/issues.label_updated.json",
        "issues",
        "accepted",
        None,
    ),
    (
        "gitea",
        "gitea/issues.opened.json",
        "issues",
        "ignored",
        Some("issue_not_an_incident"),
    ),
    (
        "gitea",
        "gitea/pull_request.opened.json",
        "pull_request",
        "ignored",
        Some("event_not_used"),
    ),
    ("gitea", "gitea/push.json", "push", "accepted", None),
    (
        "gitea",
        "gitea/release.published.json",
        "release",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "bitbucket",
        "bitbucket-cloud/issue.created.json",
        "issue:created",
        "ignored",
        Some("issue_not_a_bug"),
    ),
    (
        "bitbucket",
        "bitbucket-cloud/issue.updated.json",
        "issue:updated",
        "ignored",
        Some("issue_not_a_bug"),
    ),
    (
        "bitbucket",
        "bitbucket-cloud/pullrequest.fulfilled.json",
        "pullrequest:fulfilled",
        "ignored",
        Some("event_not_used"),
    ),
    (
        "bitbucket",
        "bitbucket-cloud/repo.commit_status_created.json",
        "repo:commit_status_created",
        "ignored",
        Some("status_not_successful"),
    ),
    (
        "bitbucket",
        "bitbucket-cloud/repo.commit_status_updated.json",
        "repo:commit_status_updated",
        "accepted",
        None,
    ),
    // Its one commit carries no date and is not the tip: nothing is certain.
    (
        "bitbucket",
        "bitbucket-cloud/repo.push.json",
        "repo:push",
        "ignored",
        Some("push_without_dated_commits"),
    ),
    (
        "pagerduty",
        "pagerduty/incident.resolved.json",
        "",
        "accepted",
        None,
    ),
    (
        "pagerduty",
        "pagerduty/incident.triggered.json",
        "",
        "accepted",
        None,
    ),
    (
        "bitbucket-datacenter",
        "bitbucket-datacenter/pr.merged.json",
        "pr:merged",
        "ignored",
        Some("event_not_used"),
    ),
    // A feature branch deleted.
    (
        "bitbucket-datacenter",
        "bitbucket-datacenter/repo.refs_changed.json",
        "repo:refs_changed",
        "ignored",
        Some("branch_not_tracked"),
    ),
    // The events reference's samples are what the wizard's Test sends.
    (
        "azure-devops",
        "azuredevops/build.complete.json",
        "",
        "ignored",
        Some("test_sample"),
    ),
    (
        "azure-devops",
        "azuredevops/git.pullrequest.merged.json",
        "",
        "ignored",
        Some("test_sample"),
    ),
    (
        "azure-devops",
        "azuredevops/git.push.json",
        "",
        "ignored",
        Some("test_sample"),
    ),
    (
        "argocd",
        "argocd/app-deleted.json",
        "",
        "ignored",
        Some("app_deleted"),
    ),
    (
        "argocd",
        "argocd/sync-running.json",
        "",
        "ignored",
        Some("sync_running"),
    ),
    (
        "argocd",
        "argocd/sync-succeeded.degraded.json",
        "",
        "ignored",
        Some("app_not_healthy"),
    ),
    (
        "argocd",
        "argocd/sync-succeeded.healthy.json",
        "",
        "accepted",
        None,
    ),
];

#[tokio::test]
async fn every_provider_fixture_maps_as_specified() {
    let app = spawn_sources().await;
    for (i, (source, file, event, outcome, reason)) in FIXTURES.iter().enumerate() {
        let body = fixture(file);
        let id = format!("fixture-{i}");
        let headers = provider_headers(source, event, &id, &body, SECRET);
        let path = hook_path(source, SECRET);
        let reply = post(&app, &path, &headers, &body).await;
        assert_eq!(reply.status, 200, "{file}: {}", reply.text);
        assert_eq!(reply.outcome(), *outcome, "{file}: {}", reply.text);
        let id = if *source == "azure-devops" {
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            value["id"].as_str().unwrap().to_owned()
        } else if has_delivery_id(source) {
            id
        } else {
            // The content hash: the same body, the same id.
            reply.json["delivery_id"].as_str().unwrap().to_owned()
        };
        assert_eq!(reply.json["delivery_id"], id.as_str(), "{file}");
        let rows = app.ledger();
        let row = rows
            .iter()
            .find(|r| r.delivery_id == id)
            .expect("a ledger row");
        assert_eq!(row.outcome, *outcome, "{file}");
        assert_eq!(row.reason.as_deref(), *reason, "{file}");
        // Bodies are kept for replay; a duplicate's is already stored.
        let kept = (*outcome != "duplicate").then_some(body.as_slice());
        assert_eq!(row.body.as_deref(), kept, "{file}: body kept for replay");
        // A redelivery with the same id changes nothing.
        let again = post(&app, &path, &headers, &body).await;
        if *outcome == "accepted" {
            assert_eq!(again.outcome(), "duplicate", "{file}: {}", again.text);
        }
    }

    let scrape = app.scrape().await;
    let deploys = |app: &str, ns: &str| scrape.deployments_total(app, ns);
    assert_eq!(deploys("Codertocat/Hello-World", "production"), 1.0);
    assert_eq!(deploys("vedant8600317/test", "production"), 1.0);
    assert_eq!(deploys("team_name/repo_name", "production"), 1.0);
    // Argo CD: the synced app in its destination namespace.
    assert_eq!(deploys("aaaaaaa", "aaaaaaa"), 1.0);
    let failures = |app: &str| scrape.value("hookgauge_failures_total", &[("app", app)]);
    let resolved = |app: &str| scrape.value("hookgauge_failures_resolved_total", &[("app", app)]);
    // GitHub: issue 1 labelled (created), issue 98 closed (resolved).
    assert_eq!(failures("Codertocat/Hello-World"), 1.0);
    assert_eq!(resolved("aaaaa-aaa/aaaaa-aaaaaaaaa"), 1.0);
    // GitLab: incident 2 opened, incident 6 closed.
    assert_eq!(failures("sathwikshetty33-group/mVc"), 1.0);
    assert_eq!(resolved("sathwikshetty33-group/mVc"), 1.0);
    // PagerDuty apps are service ids.
    assert_eq!(failures("PA2P440"), 1.0);
    // Commits from pushes are stored in branch order (these are older than
    // the commit window, so they are not exposed as commit_timestamp).
    for (app_name, commit) in [
        (
            "Codertocat/Hello-World",
            "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        ),
        ("mike/diaspora", "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327"),
        ("mike/diaspora", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"),
        ("mike/diaspora", "c5feabde2d8cd023215af4d2ceeb7a64839fc428"),
        (
            "example/example",
            "67b56589a6f8eca8f7a1b4e3b4b4f1b4f6bb3a0e",
        ),
    ] {
        let stored = app.count(&format!(
            "SELECT COUNT(*) FROM commits WHERE app = '{app_name}' AND commit_sha LIKE '{}%' \
             AND pushed_seq IS NOT NULL",
            &commit[..8]
        ));
        assert_eq!(stored, 1, "{app_name} {commit}");
    }
    let order = app
        .strings("SELECT commit_sha FROM commits WHERE app = 'mike/diaspora' ORDER BY pushed_seq");
    assert_eq!(order[0], "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327");
    assert_eq!(order[1], "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    let ignored: f64 = scrape
        .find("hookgauge_deliveries_total", &[("outcome", "ignored")])
        .iter()
        .map(|s| s.value)
        .sum();
    let expected_ignored = FIXTURES.iter().filter(|f| f.3 == "ignored").count() * 2;
    assert_eq!(ignored as usize, expected_ignored);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_are_refused_for_every_source() {
    let app = spawn_sources().await;
    let cases = [
        ("github", "github/push.json", "push"),
        ("gitlab", "gitlab/push.json", "Push Hook"),
        ("gitea", "gitea/push.json", "push"),
        (
            "bitbucket",
            "bitbucket-cloud/repo.commit_status_updated.json",
            "repo:commit_status_updated",
        ),
        ("pagerduty", "pagerduty/incident.triggered.json", ""),
        (
            "bitbucket-datacenter",
            "bitbucket-datacenter/repo.refs_changed.json",
            "repo:refs_changed",
        ),
        ("azure-devops", "azuredevops/git.push.json", ""),
        ("jira", "azuredevops/git.push.json", ""),
        ("opsgenie", "azuredevops/git.push.json", ""),
        ("argocd", "argocd/sync-succeeded.healthy.json", ""),
        (
            "tekton",
            "argocd/sync-succeeded.healthy.json",
            "dev.tekton.event.pipelinerun.successful.v1",
        ),
        ("jenkins", "argocd/sync-succeeded.healthy.json", ""),
    ];
    for (source, file, event) in cases {
        let body = fixture(file);
        let wrong = provider_headers(source, event, "w", &body, "not-the-secret");
        let missing: Vec<_> = provider_headers(source, event, "m", &body, SECRET)
            .into_iter()
            .filter(|(name, _)| {
                let name = name.to_ascii_lowercase();
                !name.contains("signature") && !name.ends_with("token") && name != "authorization"
            })
            .collect();
        let signed = provider_headers(source, event, "a", &body, SECRET);
        let mut altered = body.clone();
        altered.insert(1, b' ');
        for (what, headers, body) in [
            ("wrong secret", wrong, body.clone()),
            ("missing signature", missing, body.clone()),
            ("altered body", signed, altered),
        ] {
            let path = match what {
                "wrong secret" => hook_path(source, "not-the-secret"),
                "missing signature" => format!("/hooks/{source}"),
                _ => hook_path(source, SECRET),
            };
            let body_signed = !matches!(
                source,
                "gitlab" | "azure-devops" | "opsgenie" | "argocd" | "tekton" | "jenkins"
            );
            if !body_signed && what == "altered body" {
                // A token or password does not sign the body: these senders
                // offer nothing better (SOURCES.md).
                continue;
            }
            let reply = post(&app, &path, &headers, &body).await;
            assert_eq!(reply.status, 401, "{source} {what}: {}", reply.text);
            assert_eq!(reply.outcome(), "rejected", "{source} {what}");
            assert!(
                reply.json["field"].is_string(),
                "{source} {what}: names the header"
            );
        }
    }
    // Standard Webhooks: a valid signature over a stale timestamp.
    let body = br#"{"type":"deploy","data":{"app":"shop","namespace":"shop-prod","image_sha":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","timestamp":1700000000}}"#;
    let stale = crate::harness::now() - 301;
    let headers = vec![
        ("webhook-id".to_owned(), "msg_stale".to_owned()),
        ("webhook-timestamp".to_owned(), stale.to_string()),
        (
            "webhook-signature".to_owned(),
            standard_signature("msg_stale", stale, body),
        ),
    ];
    let reply = post(&app, "/hooks/standard-webhooks", &headers, body).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.json["reason"], "stale_timestamp");
    let rows = app.ledger();
    assert!(rows
        .iter()
        .all(|r| r.outcome == "rejected" || r.outcome == "accepted"));
    assert!(rows
        .iter()
        .filter(|r| r.outcome == "rejected")
        .all(|r| r.body.is_none()));
    let scrape = app.scrape().await;
    assert!(scrape.find("hookgauge_deployments_total", &[]).is_empty());
    assert!(scrape.find("commit_timestamp", &[]).is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn standard_webhooks_deliveries_are_verified_and_replays_are_duplicates() {
    let app = spawn_sources().await;
    let now = crate::harness::now();
    let body = serde_json::to_vec(&json!({
        "type": "deploy",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"app": "shop", "namespace": "shop-prod", "image_sha": crate::harness::image(7), "timestamp": now - 60},
    }))
    .unwrap();
    let headers = vec![
        ("webhook-id".to_owned(), "msg_1".to_owned()),
        ("webhook-timestamp".to_owned(), now.to_string()),
        (
            "webhook-signature".to_owned(),
            standard_signature("msg_1", now, &body),
        ),
    ];
    let reply = post(&app, "/hooks/standard-webhooks", &headers, &body).await;
    assert_eq!(
        (reply.status, reply.outcome()),
        (200, "accepted"),
        "{}",
        reply.text
    );
    let replay = post(&app, "/hooks/standard-webhooks", &headers, &body).await;
    assert_eq!(replay.outcome(), "duplicate");
    let scrape = app.scrape().await;
    assert_eq!(scrape.deployments_total("shop", "shop-prod"), 1.0);
    assert_eq!(scrape.find("deploy_timestamp", &[("app", "shop")]).len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_and_disabled_sources_are_404_alike() {
    let app = spawn_app_with(|raw| {
        raw.sources.native.insert(
            "gitea".into(),
            json!({"enabled": false, "secrets": [SECRET]}),
        );
    })
    .await;
    let unknown = post(&app, "/hooks/nosuch", &[], b"{}").await;
    let disabled = post(&app, "/hooks/gitea", &[], b"{}").await;
    let unconfigured = post(&app, "/hooks/github", &[], b"{}").await;
    for reply in [&unknown, &disabled, &unconfigured] {
        assert_eq!(reply.status, 404);
        assert_eq!(reply.json["reason"], "unknown_source");
    }
    assert_eq!(disabled.text, unconfigured.text);
    app.shutdown().await;
}

#[tokio::test]
async fn deploy_of_a_pushed_head_measures_every_commit_it_shipped() {
    let app = spawn_sources().await;
    let t = crate::harness::now() - 600;
    let iso = |s: i64| {
        chrono::DateTime::from_timestamp(s, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let sha = |n: u8| format!("{n:x}").repeat(40);
    let push = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": sha(3),
        "repository": {"full_name": "acme/shop", "default_branch": "main"},
        "commits": [
            {"id": sha(1), "timestamp": iso(t - 3600), "url": "https://github.com/acme/shop/commit/1", "distinct": true},
            {"id": sha(2), "timestamp": iso(t - 1800), "url": "https://github.com/acme/shop/commit/2", "distinct": false},
            {"id": sha(3), "timestamp": iso(t - 600), "url": "https://github.com/acme/shop/commit/3", "distinct": true},
        ],
    }))
    .unwrap();
    let deploy = serde_json::to_vec(&json!({
        "action": "created",
        "deployment_status": {"state": "success", "environment": "production", "created_at": iso(t)},
        "deployment": {"id": 1, "sha": sha(3), "environment": "production", "payload": {}},
        "repository": {"full_name": "acme/shop", "default_branch": "main"},
    }))
    .unwrap();
    let push_headers = provider_headers("github", "push", "push-1", &push, SECRET);
    let deploy_headers =
        provider_headers("github", "deployment_status", "deploy-1", &deploy, SECRET);
    let pushed = post(&app, "/hooks/github", &push_headers, &push).await;
    assert_eq!(pushed.outcome(), "accepted", "{}", pushed.text);
    let deployed = post(&app, "/hooks/github", &deploy_headers, &deploy).await;
    assert_eq!(deployed.outcome(), "accepted", "{}", deployed.text);
    let lead = |scrape: &crate::harness::Scrape, what: &str| {
        scrape.value(
            &format!("hookgauge_lead_time_seconds_{what}"),
            &[("app", "acme/shop")],
        )
    };
    let scrape = app.scrape().await;
    assert_eq!(lead(&scrape, "count"), 3.0);
    assert_eq!(lead(&scrape, "sum"), 3600.0 + 1800.0 + 600.0);
    // The same deploy redelivered changes nothing.
    assert_eq!(
        post(&app, "/hooks/github", &deploy_headers, &deploy)
            .await
            .outcome(),
        "duplicate"
    );
    assert_eq!(
        post(&app, "/hooks/github", &push_headers, &push)
            .await
            .outcome(),
        "duplicate"
    );
    let again = app.scrape().await;
    assert_eq!(lead(&again, "count"), 3.0);
    assert_eq!(again.deployments_total("acme/shop", "production"), 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn the_same_deploy_from_two_sources_counts_once() {
    let app = spawn_sources().await;
    let t = crate::harness::now() - 120;
    let commit = "ab".repeat(20);
    let iso = chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let github = serde_json::to_vec(&json!({
        "action": "created",
        "deployment_status": {"state": "success", "environment": "production", "created_at": iso},
        "deployment": {"id": 7, "sha": commit, "environment": "production", "payload": {}},
        "repository": {"full_name": "acme/shop", "default_branch": "main"},
    }))
    .unwrap();
    let headers = provider_headers("github", "deployment_status", "gh-7", &github, SECRET);
    let first = post(&app, "/hooks/github", &headers, &github).await;
    assert_eq!(first.outcome(), "accepted", "{}", first.text);
    // The pipeline also reports it, with the image, through Standard Webhooks.
    let body = serde_json::to_vec(&json!({
        "type": "deploytime",
        "data": {"app": "acme/shop", "namespace": "production", "image_sha": crate::harness::image(9),
                 "commit_hash": commit, "timestamp": t},
    }))
    .unwrap();
    let now = crate::harness::now();
    let sw = vec![
        ("webhook-id".to_owned(), "msg_dup".to_owned()),
        ("webhook-timestamp".to_owned(), now.to_string()),
        (
            "webhook-signature".to_owned(),
            standard_signature("msg_dup", now, &body),
        ),
    ];
    let second = post(&app, "/hooks/standard-webhooks", &sw, &body).await;
    assert_eq!(second.outcome(), "duplicate", "{}", second.text);
    let scrape = app.scrape().await;
    assert_eq!(scrape.deployments_total("acme/shop", "production"), 1.0);
    app.shutdown().await;
}
