//! HTTP limits on the public port: slow-loris headers and bodies are cut
//! off, deep JSON and header floods are refused without harm, and a flood of
//! unsigned requests writes only a trickle of ledger rows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{deploy_body, image, ledger_rows, now, spawn_app, TestApp};

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
async fn deep_json_and_header_floods_are_refused_harmlessly() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let reply = app
        .post_signed("deploytime", &deep.as_bytes()[..40_000])
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let reply = app.post_signed("deploytime", deep.as_bytes()).await;
    assert!(matches!(reply.status, 400 | 413), "{}", reply.text);
    // A client of its own: the server drops the connection after refusing
    // the headers, and a pooled connection must not be reused by what
    // follows.
    let mut request = reqwest::Client::new()
        .post(format!("{}/pelorus/webhook", app.ingest))
        .body("{}");
    for i in 0..200 {
        request = request.header(format!("x-flood-{i}"), "v".repeat(100));
    }
    // Refused with a 4xx, or the connection closed outright.
    if let Ok(response) = request.send().await {
        assert!(response.status().as_u16() >= 400, "{}", response.status());
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
    let rejected = ledger_rows(&app.database())
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
