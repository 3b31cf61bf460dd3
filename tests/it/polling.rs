//! What the poller tests of every provider share: bounded waits, the
//! requests a fake received, the review-wait gauges, and the app polling
//! `acme/shop` with a token read from a file.

use std::time::Duration;

use hookgauge::config::RawConfig;
use wiremock::{MockServer, Request};

use crate::harness::{spawn_app_with, TestApp, SECRET};
use crate::sources::{post, provider_headers};

/// Waits (bounded: 15 s) for `check` to hold.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The requests `server` received whose path ends with `suffix`.
pub async fn requests_to(server: &MockServer, suffix: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path().ends_with(suffix))
        .collect()
}

/// Epoch seconds as RFC 3339 UTC text.
pub fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `hookgauge_pull_request_review_wait_seconds` of `acme/shop` by number.
pub async fn review_waits(app: &TestApp) -> Vec<(String, f64)> {
    app.scrape()
        .await
        .find(
            "hookgauge_pull_request_review_wait_seconds",
            &[("repo", "acme/shop")],
        )
        .iter()
        .map(|s| (s.labels["number"].clone(), s.value))
        .collect()
}

/// `hookgauge_pull_requests_awaiting_review` of `acme/shop`.
pub async fn awaiting_review(app: &TestApp) -> f64 {
    app.scrape().await.value_or_zero(
        "hookgauge_pull_requests_awaiting_review",
        &[("repo", "acme/shop")],
    )
}

/// The app polling `acme/shop` on `provider`'s API at `api_url` with
/// `token` from a file (kept alive by the returned directory), the entry
/// holding `extra` (TOML) too, after `configure`.
pub async fn app_polling(
    provider: &str,
    api_url: &str,
    token: &str,
    extra: &str,
    configure: impl FnOnce(&mut RawConfig),
) -> (tempfile::TempDir, TestApp) {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let entry = toml::from_str(&format!(
        "repo = \"acme/shop\"\ntoken_file = {:?}\napi_url = {api_url:?}\n{extra}",
        token_file.display().to_string(),
    ))
    .unwrap();
    let app = spawn_app_with(|raw| {
        configure(raw);
        match provider {
            "github" => raw.poll.github = vec![entry],
            "gitlab" => raw.poll.gitlab = vec![entry],
            "gitea" => raw.poll.gitea = vec![entry],
            other => panic!("no poller for {other}"),
        }
    })
    .await;
    (token_dir, app)
}

/// `payload` delivered as a signed `event` webhook of `source` with id
/// `id`: answered 200 as a duplicate, the poll having recorded it first.
pub async fn assert_webhook_is_duplicate(
    app: &TestApp,
    source: &str,
    event: &str,
    id: &str,
    payload: &serde_json::Value,
) {
    let body = serde_json::to_vec(payload).unwrap();
    let headers = provider_headers(source, event, id, &body, SECRET);
    let reply = post(app, &format!("/hooks/{source}"), &headers, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["outcome"], "duplicate", "{}", reply.text);
}
