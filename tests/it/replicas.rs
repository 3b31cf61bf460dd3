//! Several replicas on one PostgreSQL database, as the real binary runs
//! behind a load balancer: deliveries split, interleaved and duplicated
//! between two processes count once and keep the newest; killing one
//! mid-load loses nothing either acknowledged; the background work moves
//! to the survivor within seconds; a database that goes away answers 503
//! and comes back without a restart; `migrate-store` moves an embedded
//! history into PostgreSQL. These tests use PostgreSQL whatever
//! `HOOKGAUGE_TEST_STORE` says.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    deploy_body, image, now, post_pelorus_to, postgres_database, serve_command, spawn_app_with,
    try_post_pelorus_to, Process, Scrape, SECRET,
};
use crate::postgres::Cluster;

/// `hookgauge serve` (the binary) on `url`, logging to `dir/name.log`.
fn replica(url: &str, dir: &tempfile::TempDir, name: &str, extra: &[(&str, &str)]) -> Process {
    let mut command = serve_command(&dir.path().join(name));
    command.env("HOOKGAUGE__STORE__URL", url);
    for (key, value) in extra {
        command.env(key, value);
    }
    Process::start(&mut command, &dir.path().join(format!("{name}.log")))
}

/// Replicas `a` and `b` on one fresh database: its URL, the directory
/// holding their data and logs, and the two processes.
async fn two_replicas() -> (String, tempfile::TempDir, Process, Process) {
    let url = database_url().await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&url, &dir, "a", &[]);
    let b = replica(&url, &dir, "b", &[]);
    (url, dir, a, b)
}

async fn scrape(client: &reqwest::Client, metrics: &str) -> Scrape {
    crate::harness::scrape_from(client, metrics).await
}

/// Waits (at most `limit`) until `check` holds on a scrape of `metrics`;
/// returns the last scrape and whether it held.
async fn wait_scrape(
    client: &reqwest::Client,
    metrics: &str,
    limit: Duration,
    check: impl Fn(&Scrape) -> bool,
) -> (Scrape, bool) {
    let deadline = Instant::now() + limit;
    loop {
        let scraped = scrape(client, metrics).await;
        if check(&scraped) {
            return (scraped, true);
        }
        if Instant::now() >= deadline {
            return (scraped, false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn deployments(scrape: &Scrape) -> f64 {
    scrape
        .find("hookgauge_deployments_total", &[("app", "shop")])
        .iter()
        .map(|s| s.value)
        .sum()
}

fn failure_body(id: &str, change: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "app": "shop", "failure_id": id, "failure_event": change, "timestamp": timestamp,
    }))
    .unwrap()
}

async fn database_url() -> String {
    tokio::task::spawn_blocking(postgres_database)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_count_interleaved_and_duplicated_deliveries_once_and_keep_the_newest() {
    let (url, _dir, a, b) = two_replicas().await;
    let client = reqwest::Client::new();
    let t = now() - 600;
    let deploys = 240u64;
    let failures = 20u64;
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    // Deploy n goes to A, to B, or to both at once (a sender's retry that
    // the load balancer sends elsewhere), and every fifth again later.
    for n in 0..deploys {
        let targets: Vec<String> = match n % 3 {
            0 => vec![a.ingest.clone()],
            1 => vec![b.ingest.clone()],
            _ => vec![a.ingest.clone(), b.ingest.clone()],
        };
        let body = deploy_body("shop", "prod", &image(n), t + n as i64);
        for ingest in targets {
            let (client, body, limit) = (client.clone(), body.clone(), Arc::clone(&limit));
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                post_pelorus_to(&client, &ingest, "deploytime", &body, Some(SECRET)).await
            }));
        }
    }
    // Two updates of one failure at once, one on each replica: the newer
    // creation time must be the one kept.
    for n in 0..failures {
        let id = format!("INC-{n}");
        for (ingest, time) in [(a.ingest.clone(), t), (b.ingest.clone(), t + 10)] {
            let body = failure_body(&id, "created", time);
            let (client, limit) = (client.clone(), Arc::clone(&limit));
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                post_pelorus_to(&client, &ingest, "failure", &body, Some(SECRET)).await
            }));
        }
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert!(reply.status < 300, "{}: {}", reply.status, reply.text);
        *outcomes.entry(reply.outcome().to_owned()).or_default() += 1;
    }
    // Retries of a fifth of the deploys, each to the replica that did not
    // take it: duplicates, whichever replica answers.
    for n in (0..deploys).step_by(5) {
        let ingest = if n % 2 == 0 { &b.ingest } else { &a.ingest };
        let body = deploy_body("shop", "prod", &image(n), t + n as i64);
        let reply = post_pelorus_to(&client, ingest, "deploytime", &body, Some(SECRET)).await;
        assert_eq!(
            (reply.status, reply.outcome()),
            (200, "duplicate"),
            "{}",
            reply.text
        );
    }
    assert!(
        outcomes
            .keys()
            .all(|o| ["accepted", "duplicate", "outdated"].contains(&o.as_str())),
        "{outcomes:?}"
    );
    // Both replicas show every deploy once, and the failures once each.
    for (name, metrics) in [("a", &a.metrics), ("b", &b.metrics)] {
        let (scraped, agreed) = wait_scrape(&client, metrics, Duration::from_secs(10), |s| {
            deployments(s) == deploys as f64
                && s.value("hookgauge_failures_total", &[("app", "shop")]) == failures as f64
        })
        .await;
        assert!(
            agreed,
            "replica {name}: {} deployments, {} failures",
            deployments(&scraped),
            scraped.value("hookgauge_failures_total", &[("app", "shop")])
        );
    }
    let (scrape_a, scrape_b) = (
        scrape(&client, &a.metrics).await,
        scrape(&client, &b.metrics).await,
    );
    assert_eq!(
        scrape_a.dora_samples(),
        scrape_b.dora_samples(),
        "the replicas' views differ"
    );
    let cluster = Cluster::shared();
    let stored = |sql: &str| cluster.psql(&url, sql);
    assert_eq!(stored("SELECT COUNT(*) FROM deploys"), deploys.to_string());
    assert_eq!(
        stored(&format!(
            "SELECT COUNT(*) FROM failures WHERE created = {}",
            t + 10
        )),
        failures.to_string(),
        "the newer creation of every failure is kept"
    );
    assert_eq!(
        stored(
            "SELECT COUNT(*) FROM deliveries WHERE outcome = 'accepted' AND event = 'deploytime'"
        ),
        deploys.to_string()
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_mid_load_loses_nothing_either_acknowledged() {
    let (url, _dir, mut a, b) = two_replicas().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let t = now() - 3600;
    let total = 400u64;
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for n in 0..total {
        let first = if n % 2 == 0 {
            a.ingest.clone()
        } else {
            b.ingest.clone()
        };
        let fallback = b.ingest.clone();
        let (client, acked, limit) = (client.clone(), Arc::clone(&acked), Arc::clone(&limit));
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let body = deploy_body("shop", "prod", &image(n), t + n as i64);
            // As a load balancer does: what one replica did not answer goes
            // to the other (the sender retries until it gets an answer).
            for ingest in [&first, &fallback, &fallback] {
                match try_post_pelorus_to(&client, ingest, "deploytime", &body, Some(SECRET)).await
                {
                    Ok(reply) if reply.status < 300 => {
                        acked.lock().unwrap().insert(n);
                        return;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    // Kill A once a quarter of the load is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < (total / 4) as usize {
        assert!(Instant::now() < deadline, "the load did not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill();
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len() as u64,
        total,
        "every delivery was answered by a replica"
    );
    let cluster = Cluster::shared();
    let stored: BTreeSet<u64> = cluster
        .psql(&url, "SELECT image_sha FROM deploys")
        .lines()
        .map(|sha| u64::from_str_radix(sha.trim_start_matches("sha256:"), 16).unwrap())
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    // The survivor counts what is stored, A's last commits included.
    let (scraped, agreed) = wait_scrape(&client, &b.metrics, Duration::from_secs(10), |s| {
        deployments(s) == stored.len() as f64
    })
    .await;
    assert!(
        agreed,
        "B shows {} of {} stored",
        deployments(&scraped),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_moves_to_another_replica_within_seconds_when_its_holder_dies() {
    let url = database_url().await;
    let dir = tempfile::tempdir().unwrap();
    let retention = [("HOOKGAUGE__RETENTION__INTERVAL", "1s")];
    let client = reqwest::Client::new();
    let mut a = replica(&url, &dir, "a", &retention);
    let active = |s: &Scrape| s.value("hookgauge_background_active", &[]);
    let (_, held) = wait_scrape(&client, &a.metrics, Duration::from_secs(10), |s| {
        active(s) == 1.0
    })
    .await;
    assert!(held, "the first replica takes the background work");
    let b = replica(&url, &dir, "b", &retention);
    // B waits its turn: it neither holds the lock nor runs retention.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = scrape(&client, &b.metrics).await;
    assert_eq!(active(&waiting), 0.0);
    assert_eq!(
        waiting.value("hookgauge_store_last_prune_timestamp_seconds", &[]),
        0.0
    );
    assert_eq!(active(&scrape(&client, &a.metrics).await), 1.0);

    let killed = Instant::now();
    a.kill();
    let (taken, moved) = wait_scrape(&client, &b.metrics, Duration::from_secs(15), |s| {
        active(s) == 1.0 && s.value("hookgauge_store_last_prune_timestamp_seconds", &[]) > 0.0
    })
    .await;
    let failover = killed.elapsed();
    assert!(
        moved,
        "B did not take over: active {}, last prune {}",
        active(&taken),
        taken.value("hookgauge_store_last_prune_timestamp_seconds", &[])
    );
    eprintln!(
        "background work failed over in {:.1} s",
        failover.as_secs_f64()
    );
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_answers_503_and_the_replica_recovers_without_restart() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let database = cluster.database();
    let password_file = cluster.password_file();
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.store.url = Some(database.clone());
        raw.store.password_file = Some(password_file.clone());
        raw.store.connect_timeout = Duration::from_secs(2);
    })
    .await;
    let t = now() - 60;
    let first = app.deploy_image(1, t).await;
    assert_eq!(first.status, 202, "{}", first.text);

    let cluster = Arc::new(cluster);
    let paused = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || paused.pause())
        .await
        .unwrap();
    let down = app.deploy_image(2, t + 1).await;
    assert_eq!(down.status, 503, "{}", down.text);
    assert!(!down.text.contains(cluster.password()), "{}", down.text);
    let ready = app.get(format!("{}/readyz", app.ingest)).await;
    assert_eq!(ready.status, 503, "{}", ready.text);

    let resumed = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || resumed.resume())
        .await
        .unwrap();
    // The sender retries; the store reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    let retried = loop {
        let reply = app.deploy_image(2, t + 1).await;
        if reply.status != 503 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(retried.status, 202, "{}", retried.text);
    assert_eq!(app.get(format!("{}/readyz", app.ingest)).await.status, 200);
    assert_eq!(deployments(&app.scrape().await), 2.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_an_embedded_history_into_postgresql_with_the_same_numbers() {
    // An embedded store with some history, in a directory that outlives
    // the app.
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let sqlite = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.server.data_dir = data_dir.clone();
        raw.store.url = None;
    })
    .await;
    let t = now() - 1200;
    let commit = serde_json::to_vec(&serde_json::json!({
        "app": "shop", "commit_hash": "0123456789abcdef0123456789abcdef01234567",
        "image_sha": image(7), "namespace": "prod", "timestamp": t,
    }))
    .unwrap();
    assert_eq!(sqlite.post_signed("committime", &commit).await.status, 202);
    for n in 5..9 {
        let reply = sqlite.deploy_image(n, t + 60 * n as i64).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    for (change, time) in [("created", t + 100), ("resolved", t + 400)] {
        let reply = sqlite
            .post_signed("failure", &failure_body("INC-7", change, time))
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let before = sqlite.scrape().await.dora_samples();
    let rows = sqlite.ledger().len();
    let db_path = data_dir.join("hookgauge.db");
    sqlite.shutdown().await;

    let cluster = Cluster::shared();
    let target = tokio::task::spawn_blocking(|| Cluster::shared().database())
        .await
        .unwrap();
    let migrate = || {
        std::process::Command::new(crate::harness::binary())
            .args(["migrate-store", "--from"])
            .arg(format!("sqlite://{}", db_path.display()))
            .args(["--to", &target, "--password-file"])
            .arg(cluster.password_file())
            .output()
            .unwrap()
    };
    let out = migrate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("deliveries: {rows} rows")),
        "{stderr}"
    );
    assert!(!stderr.contains(cluster.password()), "{stderr}");
    // A second run refuses: the target holds a store now.
    let again = migrate();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));

    let postgres = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.server.data_dir = data_dir.join("unused");
        raw.store.url = Some(cluster.url_with_password(&target));
    })
    .await;
    assert_eq!(postgres.scrape().await.dora_samples(), before);
    assert_eq!(postgres.ledger().len(), rows);
    // New deliveries continue after the copied ledger rows.
    let next = postgres.deploy_image(9, t + 900).await;
    assert_eq!(next.status, 202, "{}", next.text);
    let ids =
        postgres.strings("SELECT CAST(seq AS TEXT) FROM deliveries ORDER BY seq DESC LIMIT 1");
    assert_eq!(ids, [(rows + 1).to_string()]);
    postgres.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_pruned_changes_fails_healthz_until_a_restart_rebuilds_it() {
    let url = database_url().await;
    let mut app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.store.url = Some(url.clone());
    })
    .await;
    let reply = app.deploy_image(1, now() - 60).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(app.get(format!("{}/healthz", app.ingest)).await.status, 200);
    // Retention deleted feed rows this replica never applied (as when it is
    // cut off from the database for longer than the feed is kept).
    app.exec("UPDATE changes_pruned SET through = 1000000");
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = app.get(format!("{}/healthz", app.ingest)).await;
        if health.status != 200 || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.status, 503, "{}", health.text);
    assert_eq!(health.json["reason"], "view_behind_store");
    // A restart rebuilds the view from the store: healthy, same numbers.
    app.restart().await;
    assert_eq!(app.get(format!("{}/healthz", app.ingest)).await.status, 200);
    assert_eq!(deployments(&app.scrape().await), 1.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get(format!("{}/healthz", app.ingest)).await.status, 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_and_its_deploy_arriving_at_two_replicas_at_once_get_their_lead_time() {
    let (url, _dir, a, b) = two_replicas().await;
    let client = reqwest::Client::new();
    let t = now() - 7200;
    let pairs = 40u64;
    let mut tasks = Vec::new();
    for n in 0..pairs {
        // The commit of image n to A, its deploy to B, at the same moment:
        // each must see the other, whichever commits first.
        let app = format!("svc{n}");
        let commit = serde_json::to_vec(&serde_json::json!({
            "app": app, "commit_hash": format!("{n:040x}"), "image_sha": image(n),
            "namespace": "prod", "timestamp": t,
        }))
        .unwrap();
        let deploy = deploy_body(&app, "prod", &image(n), t + 600);
        for (ingest, event, body) in [
            (a.ingest.clone(), "committime", commit),
            (b.ingest.clone(), "deploytime", deploy),
        ] {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                post_pelorus_to(&client, &ingest, event, &body, Some(SECRET)).await
            }));
        }
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let observed = Cluster::shared().psql(
        &url,
        "SELECT COUNT(*) FROM observations WHERE kind = 'lead_time' AND seconds = 600",
    );
    assert_eq!(
        observed,
        pairs.to_string(),
        "every commit got its lead time"
    );
    for metrics in [&a.metrics, &b.metrics] {
        let (scraped, all) = wait_scrape(&client, metrics, Duration::from_secs(10), |s| {
            s.find("hookgauge_lead_time_seconds_count", &[])
                .iter()
                .map(|s| s.value)
                .sum::<f64>()
                == pairs as f64
        })
        .await;
        assert!(
            all,
            "{:?}",
            scraped.find("hookgauge_lead_time_seconds_count", &[])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_tls_verified_against_the_configured_ca() {
    let (cluster, ca) = tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start();
        let ca = cluster.enable_tls();
        (cluster, ca)
    })
    .await
    .unwrap();
    let database = format!("{}?sslmode=require", cluster.database());
    let password_file = cluster.password_file();
    let spawn = |ca_file: Option<std::path::PathBuf>| {
        spawn_app_with(|raw| {
            raw.sources.pelorus.secrets = vec![SECRET.into()];
            raw.store.url = Some(database.clone());
            raw.store.password_file = Some(password_file.clone());
            raw.store.ca_file = ca_file;
        })
    };
    let app = spawn(Some(ca.clone())).await;
    let reply = app.deploy_image(1, now() - 60).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let url = database.trim_end_matches("?sslmode=require").to_owned();
    let sessions = |encrypted: bool| {
        cluster.psql(
            &url,
            &format!(
                "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE ssl = {encrypted} AND application_name = 'hookgauge'"
            ),
        )
    };
    assert_ne!(sessions(true), "0", "hookgauge's sessions use TLS");
    assert_eq!(sessions(false), "0", "no hookgauge session in the clear");
    app.shutdown().await;

    // Without the CA the server's certificate is not trusted: the delivery
    // is answered 503 and nothing is written.
    let untrusted = spawn(None).await;
    let reply = untrusted.deploy_image(2, now() - 60).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    untrusted.shutdown().await;
    assert_eq!(cluster.psql(&url, "SELECT COUNT(*) FROM deploys"), "1");
}
