//! HTTP limits on the public port: slow-loris headers and bodies are cut
//! off, deep JSON is refused without harm, header count and size are capped
//! with a precise 431, connections past `server.max_connections` wait, and
//! a flood of unsigned requests writes only a trickle of ledger rows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{deploy_body, image, now, spawn_app, TestApp};

fn connect(app: &TestApp) -> TcpStream {
    let addr = app.ingest.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection; what it said, and when.
fn until_closed(mut stream: TcpStream, started: Instant) -> (String, Duration) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_headers_and_bodies_are_cut_off() {
    let app = spawn_app().await;
    let (headers, body) = tokio::task::block_in_place(|| {
        // Headers that never finish.
        let mut slow = connect(&app);
        let started = Instant::now();
        slow.write_all(
            b"POST /pelorus/webhook HTTP/1.1\r\nHost: x\r\nX-Pelorus-Event: deploytime\r\n",
        )
        .unwrap();
        let headers = until_closed(slow, started);
        // A body trickled after complete headers.
        let mut trickle = connect(&app);
        let started = Instant::now();
        trickle
            .write_all(
                b"POST /pelorus/webhook HTTP/1.1\r\nHost: x\r\nUser-Agent: Pelorus-Webhook/test\r\n\
                  X-Pelorus-Event: deploytime\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )
            .unwrap();
        let body = until_closed(trickle, started);
        (headers, body)
    });
    assert!(
        headers.1 < Duration::from_secs(8),
        "headers cut after {:?}",
        headers.1
    );
    assert!(
        body.1 < Duration::from_secs(13),
        "body cut after {:?}",
        body.1
    );
    assert!(body.0.starts_with("HTTP/1.1 408"), "{}", body.0);
    assert!(body.0.contains("body_read_timeout"), "{}", body.0);
    // Still serving.
    let reply = app
        .post_signed("deploytime", &deploy_body("shop", "prod", &image(1), now()))
        .await;
    assert_eq!(reply.status, 202);
    app.shutdown().await;
}

#[tokio::test]
async fn deep_json_is_refused_harmlessly() {
    let app = spawn_app().await;
    // 20 000 nested arrays (40 000 bytes, under the body limit): the parser
    // refuses the depth instead of recursing into it.
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let reply = app.post_signed("deploytime", deep.as_bytes()).await;
    assert_eq!(
        (reply.status, reply.json["reason"].as_str(), reply.outcome()),
        (400, Some("invalid_json"), "invalid"),
        "{}",
        reply.text
    );
    // The same nesting in an object, left open.
    let open = format!("{{\"app\":{}", "{\"a\":".repeat(10_000));
    let reply = app.post_signed("deploytime", open.as_bytes()).await;
    assert_eq!(
        (reply.status, reply.json["reason"].as_str()),
        (400, Some("invalid_json")),
        "{}",
        reply.text
    );
    let ledger = app.ledger();
    assert_eq!(ledger.len(), 2);
    for (row, sent) in ledger.iter().zip([deep.as_bytes(), open.as_bytes()]) {
        assert_eq!(
            (row.outcome.as_str(), row.reason.as_deref()),
            ("invalid", Some("invalid_json"))
        );
        assert_eq!(row.body.as_deref(), Some(sent), "kept for a look");
    }
    let reply = app
        .post_signed("deploytime", &deploy_body("shop", "prod", &image(2), now()))
        .await;
    assert_eq!(reply.status, 202, "still serving");
    app.shutdown().await;
}

#[tokio::test]
async fn an_unsigned_flood_writes_a_trickle_and_valid_senders_go_through() {
    let app = spawn_app().await;
    let started = Instant::now();
    let mut sends = Vec::new();
    for n in 0..600u64 {
        let client = app.client.clone();
        let url = app.ingest.clone();
        sends.push(tokio::spawn(async move {
            let body = deploy_body("shop", "prod", &image(n), now());
            crate::harness::post_pelorus_to(&client, &url, "deploytime", &body, Some("forged"))
                .await
                .status
        }));
    }
    let valid = app
        .post_signed(
            "deploytime",
            &deploy_body("shop", "prod", &image(9_999), now()),
        )
        .await;
    for send in sends {
        assert_eq!(send.await.unwrap(), 401);
    }
    assert_eq!(
        valid.status, 202,
        "a valid sender is served during the flood"
    );
    let seconds = started.elapsed().as_secs() + 1;
    let rejected = app
        .ledger()
        .into_iter()
        .filter(|r| r.outcome == "rejected")
        .count() as u64;
    assert!(
        rejected <= 50 * (seconds + 1),
        "{rejected} rows in {seconds} s"
    );
    let scrape = app.scrape().await;
    let counted: f64 = scrape
        .find("hookgauge_deliveries_total", &[("outcome", "rejected")])
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(counted, 600.0, "every refusal is counted");
    app.shutdown().await;
}

/// One raw HTTP/1.1 request with `extra` headers; the status line's code.
fn status_with_headers(app: &TestApp, path: &str, extra: &[(String, String)]) -> (u16, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Pelorus-Event: deploytime\r\nUser-Agent: Pelorus-Webhook/test\r\nConnection: close\r\nContent-Length: 2\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n{}");
    let mut stream = connect(app);
    // The server may answer and close before it has read every header.
    let _ = stream.write_all(request.as_bytes());
    let (answer, _) = until_closed(stream, Instant::now());
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn headers(count: usize, value_len: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("x-extra-{i}"), "v".repeat(value_len)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_and_size_are_limited_with_a_431_naming_the_headers() {
    use hookgauge::ingest::{MAX_REQUEST_HEADERS, MAX_REQUEST_HEADER_BYTES};
    let app = crate::harness::spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![crate::harness::SECRET.into()];
        raw.sources.native.insert(
            "github".into(),
            serde_json::json!({"secrets": [crate::harness::SECRET]}),
        );
    })
    .await;
    // The request's own headers: Host, Content-Type, X-Pelorus-Event,
    // User-Agent, Connection, Content-Length.
    let own = 6;
    for path in ["/pelorus/webhook", "/hooks/github"] {
        // At the limit: read, then refused for what it is (unsigned).
        let (status, body) =
            status_with_headers(&app, path, &headers(MAX_REQUEST_HEADERS - own, 10));
        assert_ne!(status, 431, "{path}: {body}");
        assert!(status == 401 || status == 400, "{path}: {status} {body}");

        let (status, body) =
            status_with_headers(&app, path, &headers(MAX_REQUEST_HEADERS - own + 1, 10));
        assert_eq!(status, 431, "{path}: {body}");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["reason"], "headers_too_large");
        assert_eq!(problem["field"], "headers");
        assert_eq!(problem["outcome"], serde_json::Value::Null);

        // Few headers, too many bytes.
        let (status, body) =
            status_with_headers(&app, path, &headers(2, MAX_REQUEST_HEADER_BYTES / 2));
        assert_eq!(status, 431, "{path}: {body}");
        assert!(body.contains("headers_too_large"), "{body}");
    }
    // Past the HTTP parser's hard limits (96 headers, 128 KiB of head) the
    // answer is a bare 431 and the connection closes.
    let (status, _) = status_with_headers(&app, "/pelorus/webhook", &headers(200, 10));
    assert_eq!(status, 431);
    let (status, _) = status_with_headers(&app, "/pelorus/webhook", &headers(1, 200 * 1024));
    assert_eq!(status, 431);

    // A row for each request at the limit (refused as unsigned), none for
    // a refused head.
    assert_eq!(app.ledger().len(), 2, "{:?}", app.ledger());
    let reply = app
        .post_signed("deploytime", &deploy_body("shop", "prod", &image(3), now()))
        .await;
    assert_eq!(reply.status, 202, "still serving");
    app.shutdown().await;
}

/// Sends a keep-alive request and reads its whole answer, leaving the
/// connection open; `None` when no answer came within `wait`.
fn healthz_on(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_until_one_closes() {
    let app = crate::harness::spawn_app_with(|c| c.server.max_connections = 2).await;
    let held: Vec<TcpStream> = tokio::task::spawn_blocking({
        let addr = app.ingest.trim_start_matches("http://").to_owned();
        move || {
            (0..2)
                .map(|_| {
                    let mut stream = TcpStream::connect(&addr).unwrap();
                    let answer = healthz_on(&mut stream, Duration::from_secs(10));
                    assert!(answer.is_some(), "a connection within the limit is served");
                    stream
                })
                .collect()
        }
    })
    .await
    .unwrap();
    let addr = app.ingest.trim_start_matches("http://").to_owned();
    let (waiting, answered) = tokio::task::spawn_blocking(move || {
        // The kernel completes the handshake (backlog); the server does not
        // read the request while both connections are open.
        let mut third = TcpStream::connect(&addr).unwrap();
        let waiting = healthz_on(&mut third, Duration::from_millis(1500));
        drop(held);
        let mut buf = [0u8; 1024];
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let answered = third.read(&mut buf).map(|n| n > 0).unwrap_or(false);
        (waiting, answered)
    })
    .await
    .unwrap();
    assert_eq!(waiting, None, "a third connection waits while two are open");
    assert!(answered, "and is served once one closes");
    app.shutdown().await;
}

#[tokio::test]
async fn a_source_instance_caps_bodies_at_its_max_body_bytes() {
    use crate::harness::SECRET;
    use crate::sources::{post, provider_headers};
    let app = crate::harness::spawn_app_with(|raw| {
        raw.sources.native.insert(
            "github".into(),
            serde_json::json!({"secrets": [SECRET], "max_body_bytes": 2048}),
        );
    })
    .await;
    let body = |len: usize| {
        let padding = "x".repeat(len.saturating_sub(40));
        format!(r#"{{"zen":"{padding}","hook_id":1}}"#).into_bytes()
    };
    let small = body(1500);
    let headers = provider_headers("github", "ping", "d-small", &small, SECRET);
    let reply = post(&app, "/hooks/github", &headers, &small).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    let large = body(3000);
    let headers = provider_headers("github", "ping", "d-large", &large, SECRET);
    let reply = post(&app, "/hooks/github", &headers, &large).await;
    assert_eq!(reply.status, 413, "{}", reply.text);
    assert_eq!(reply.json["reason"], "body_too_large");
    app.shutdown().await;

    let mut raw = crate::harness::test_config(std::path::Path::new("unused"));
    raw.sources
        .native
        .insert("github".into(), serde_json::json!({"max_body_bytes": 10}));
    let error = hookgauge::config::Settings::from_raw(raw)
        .unwrap_err()
        .to_string();
    assert!(error.contains("sources.github.max_body_bytes"), "{error}");
}
