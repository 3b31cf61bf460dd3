//! Authentication of Pelorus deliveries through HTTP: strict HMAC over the
//! raw body, rotation, Pelorus' lenient check, and what a refusal leaves.

use crate::harness::*;

async fn assert_rejected(app: &TestApp, reply: Reply, reason: &str) {
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(reply.outcome(), "rejected");
    assert_eq!(reply.json["reason"], reason, "{}", reply.text);
    assert_eq!(reply.json["field"], "X-Hub-Signature-256");
    let ledger = app.ledger();
    let last = ledger
        .last()
        .expect("a rejected delivery gets a ledger row");
    assert_eq!(last.outcome, "rejected");
    assert_eq!(last.reason.as_deref(), Some(reason));
    assert_eq!(last.body, None, "a rejected body is never kept");
    let scrape = app.scrape().await;
    assert!(scrape.find("hookgauge_deployments_total", &[]).is_empty());
    assert!(scrape.find("deploy_timestamp", &[]).is_empty());
}

/// The deploys of `shop` in `prod` that the ledger accepted and the metrics
/// counted: every one of `images` is exposed, and counted once.
async fn assert_deploys_recorded(app: &TestApp, images: &[String]) {
    let accepted = app
        .ledger()
        .into_iter()
        .filter(|row| row.outcome == "accepted")
        .count();
    assert_eq!(accepted, images.len(), "accepted ledger rows");
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.deployments_total("shop", "prod"),
        images.len() as f64
    );
    for image_sha in images {
        assert_eq!(
            scrape
                .find("deploy_timestamp", &[("image_sha", image_sha.as_str())])
                .len(),
            1,
            "{image_sha} is exposed"
        );
    }
}

fn body() -> Vec<u8> {
    deploy_body("shop", "prod", &image(3), now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_signature_is_accepted() {
    let app = spawn_app().await;
    let reply = app.post_signed("deploytime", &body()).await;
    assert_eq!((reply.status, reply.outcome()), (202, "accepted"));
    assert_deploys_recorded(&app, &[image(3)]).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_rejected() {
    let app = spawn_app().await;
    let reply = app
        .post_pelorus("deploytime", &body(), Some("not-the-secret"))
        .await;
    assert_rejected(&app, reply, "bad_signature").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_signature_is_rejected() {
    let app = spawn_app().await;
    let reply = app.post_pelorus("deploytime", &body(), None).await;
    assert_rejected(&app, reply, "missing_signature").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_secret_of_a_rotation_is_accepted() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec!["old-secret".into(), "new-secret".into()]
    })
    .await;
    let old = app
        .post_pelorus(
            "deploytime",
            &deploy_body("shop", "prod", &image(1), now()),
            Some("old-secret"),
        )
        .await;
    assert_eq!(old.status, 202);
    let new = app
        .post_pelorus(
            "deploytime",
            &deploy_body("shop", "prod", &image(2), now()),
            Some("new-secret"),
        )
        .await;
    assert_eq!(new.status, 202);
    let neither = app
        .post_pelorus(
            "deploytime",
            &deploy_body("shop", "prod", &image(3), now()),
            Some(SECRET),
        )
        .await;
    assert_eq!(neither.status, 401);
    assert_deploys_recorded(&app, &[image(1), image(2)]).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_changed_byte_of_body_is_rejected() {
    let app = spawn_app().await;
    let signed = body();
    let mut sent = signed.clone();
    // Change one digit of the timestamp: still valid JSON, different bytes.
    let last_digit = sent.iter().rposition(u8::is_ascii_digit).unwrap();
    sent[last_digit] = if sent[last_digit] == b'0' { b'1' } else { b'0' };
    let signature = sign(SECRET, &signed);
    let reply = app
        .post_pelorus_with_headers(
            &[
                ("User-Agent", USER_AGENT),
                ("X-Pelorus-Event", "deploytime"),
                ("X-Hub-Signature-256", &signature),
            ],
            sent,
        )
        .await;
    assert_rejected(&app, reply, "bad_signature").await;
    app.shutdown().await;
}

async fn post_with_signature_header(app: &TestApp, body: &[u8], values: &[&str]) -> Reply {
    let mut headers = vec![
        ("User-Agent", USER_AGENT),
        ("X-Pelorus-Event", "deploytime"),
    ];
    headers.extend(values.iter().map(|value| ("X-Hub-Signature-256", *value)));
    app.post_pelorus_with_headers(&headers, body.to_vec()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha1_prefix_is_rejected() {
    use hmac::Mac;
    let app = spawn_app().await;
    let body = body();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let header = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
    let reply = post_with_signature_header(&app, &body, &[&header]).await;
    assert_rejected(&app, reply, "unsupported_algorithm").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_repeated_signature_headers_are_rejected() {
    let app = spawn_app().await;
    let body = body();
    let good = sign(SECRET, &body);
    let upper = format!("sha256={}", good["sha256=".len()..].to_ascii_uppercase());
    let reply = post_with_signature_header(&app, &body, &[&upper]).await;
    assert_rejected(&app, reply, "malformed_signature").await;
    let bare = good["sha256=".len()..].to_owned();
    let reply = post_with_signature_header(&app, &body, &[&bare]).await;
    assert_rejected(&app, reply, "malformed_signature").await;
    let reply = post_with_signature_header(&app, &body, &[&good, &good]).await;
    assert_rejected(&app, reply, "repeated_signature").await;
    app.shutdown().await;
}

/// Pelorus' documented curl example signs `echo -n $(cat file)` (the file's
/// words joined by single spaces) while `curl -d @file` sends the file with
/// its newlines stripped, so the signed and the sent bytes differ.
fn pelorus_documented_example(file: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8(file.to_vec()).unwrap();
    let signed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sent: String = text.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    (signed.into_bytes(), sent.into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pelorus_documented_curl_example_passes_the_lenient_check() {
    let app = spawn_app().await;
    let (signed, sent) = pelorus_documented_example(&fixture("pelorus/deploytime.json"));
    assert_ne!(signed, sent);
    let reply = post_with_signature_header(&app, &sent, &[&sign(SECRET, &signed)]).await;
    reply.assert_accepted();
    // The fixture's deploy (2023) is older than the exposure window, so it
    // shows in the counter, not as a deploy_timestamp series.
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.deployments_total("mongo-todolist", "mongo-persistent"),
        1.0
    );
    let rows = app.ledger();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].body.as_deref(),
        Some(sent.as_slice()),
        "the sent bytes are kept"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_check_can_be_turned_off() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.sources.pelorus.lenient_signatures = false;
    })
    .await;
    let (signed, sent) = pelorus_documented_example(&fixture("pelorus/deploytime.json"));
    let reply = post_with_signature_header(&app, &sent, &[&sign(SECRET, &signed)]).await;
    assert_rejected(&app, reply, "bad_signature").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_unsigned_deliveries_are_accepted_on_loopback() {
    let app = spawn_app_with(|_| {}).await;
    assert!(app.raw.sources.pelorus.secrets.is_empty());
    assert!(app.raw.server.ingest_addr.starts_with("127.0.0.1:"));
    let reply = app.post_pelorus("deploytime", &body(), None).await;
    assert_eq!((reply.status, reply.outcome()), (202, "accepted"));
    assert_deploys_recorded(&app, &[image(3)]).await;
    // Only because it listens on loopback: the same settings on a public
    // address are refused before anything starts.
    let mut public = app.raw.clone();
    public.server.ingest_addr = "0.0.0.0:0".into();
    let refused = hookgauge::config::Settings::from_raw(public).unwrap_err();
    assert!(
        refused.to_string().contains("sources.pelorus.secrets"),
        "{refused}"
    );
    app.shutdown().await;
}
