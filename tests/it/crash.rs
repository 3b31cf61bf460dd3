//! Crash safety: signed load from senders that retry every delivery not
//! answered 2xx, while the server is killed with SIGKILL at random moments
//! and restarted on the same data. At the end every acknowledged delivery is
//! stored, every unique deploy is counted exactly once, and the database
//! passes `PRAGMA integrity_check`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{deploy_body, image, now, try_post_pelorus_to, Process, SECRET};

const DELIVERIES: u64 = 600;
const SENDERS: u64 = 4;
const KILLS: usize = 3;

fn serve(dir: &std::path::Path, run: usize) -> Process {
    let mut command = crate::harness::serve_command(dir);
    Process::start(&mut command, &dir.join(format!("serve-{run}.log")))
}

/// A small deterministic generator for the kill moments (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged_and_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), 0);
    let url = Arc::new(Mutex::new(server.ingest.clone()));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let t = now() - 3600;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let (url, acked, client) = (Arc::clone(&url), Arc::clone(&acked), client.clone());
        senders.push(tokio::spawn(async move {
            let mut attempts = 0u64;
            for n in (s..DELIVERIES).step_by(SENDERS as usize) {
                let body = deploy_body("shop", "prod", &image(n), t + n as i64);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    attempts += 1;
                    let target = url.lock().unwrap().clone();
                    let reply = tokio::time::timeout(
                        Duration::from_secs(5),
                        try_post_pelorus_to(&client, &target, "deploytime", &body, Some(SECRET)),
                    )
                    .await;
                    if let Ok(Ok(reply)) = reply {
                        if (200..300).contains(&reply.status) {
                            acked.lock().unwrap().insert(n);
                            break;
                        }
                    }
                    assert!(Instant::now() < deadline, "delivery {n} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            attempts
        }));
    }
    let mut seed = now() as u64 | 1;
    for kill in 1..=KILLS {
        tokio::time::sleep(Duration::from_millis(150 + next(&mut seed) % 400)).await;
        server.kill();
        server = serve(dir.path(), kill);
        *url.lock().unwrap() = server.ingest.clone();
    }
    let mut attempts = 0;
    for sender in senders {
        attempts += sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len() as u64,
        DELIVERIES,
        "every delivery was acknowledged in the end"
    );

    let scrape = reqwest::get(format!("{}/metrics", server.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("hookgauge_deployments_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    server.terminate();
    let conn = rusqlite::Connection::open(dir.path().join("hookgauge.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let stored: BTreeSet<String> = conn
        .prepare("SELECT image_sha FROM deploys")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !stored.contains(&image(*n)))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    assert_eq!(stored.len() as u64, DELIVERIES);
    assert_eq!(
        counted, DELIVERIES as f64,
        "each unique deploy counted once"
    );
    println!(
        "crash safety: {DELIVERIES} deliveries, {attempts} attempts, {} acked, {KILLS} kills, lost 0, double-counted {}",
        acked.len(),
        counted as u64 - DELIVERIES
    );
}
