//! Durability and store faults: restarts rebuild the same metrics, a locked,
//! unwritable or full store answers 503 and acknowledges nothing, and the
//! service recovers without a restart once the fault clears.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_exposes_identical_metric_values() {
    let mut app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.metrics.commit_window = Duration::from_secs(20 * 365 * 86_400);
    })
    .await;
    let t = now();
    for (event, file) in [
        ("committime", "pelorus/committime.json"),
        ("deploytime", "pelorus/deploytime.json"),
        ("failure", "pelorus/failure.created.json"),
        ("failure", "pelorus/failure.resolved.json"),
    ] {
        assert_eq!(app.post_signed(event, &fixture(file)).await.status, 202);
    }
    for n in 0..5 {
        let commit = serde_json::json!({
            "app": "shop", "commit_hash": format!("{n:040x}"), "image_sha": image(n),
            "namespace": "prod", "timestamp": t - 3_600 - n as i64,
        });
        assert_eq!(
            app.post_signed("committime", &serde_json::to_vec(&commit).unwrap())
                .await
                .status,
            202
        );
        let deploy = deploy_body("shop", "prod", &image(n), t - 60 + n as i64);
        assert_eq!(app.post_signed("deploytime", &deploy).await.status, 202);
    }
    let failure = serde_json::json!({"app": "shop", "failure_id": "7", "failure_event": "created", "timestamp": t});
    assert_eq!(
        app.post_signed("failure", &serde_json::to_vec(&failure).unwrap())
            .await
            .status,
        202
    );

    let before = app.scrape().await.dora_samples();
    assert!(before.iter().any(|s| s.name == "deploy_timestamp"));
    assert!(before
        .iter()
        .any(|s| s.name == "hookgauge_lead_time_seconds_count"
            && s.labels["app"] == "shop"
            && s.value == 5.0));
    app.restart().await;
    let after = app.scrape().await.dora_samples();
    assert_eq!(before, after);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_store_answers_503_and_recovers_without_restart() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.store.busy_timeout = Duration::from_millis(200);
    })
    .await;
    let t = now();
    assert_eq!(app.deploy_image(1, t).await.status, 202);

    // Another process holds the write lock.
    let other = rusqlite::Connection::open(app.database()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let refused = app.deploy_image(2, t).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.headers["retry-after"], "5");
    assert_eq!(refused.json["error"], "service_unavailable");
    assert_eq!(
        refused.json["outcome"],
        serde_json::Value::Null,
        "nothing is acknowledged"
    );
    let ready = app.get(format!("{}/readyz", app.ingest)).await;
    assert_eq!(
        (ready.status, ready.json["reason"].as_str()),
        (503, Some("store_busy"))
    );
    let scrape = app.scrape().await;
    assert_eq!(scrape.value("hookgauge_deployments_total", &[]), 1.0);
    assert!(scrape.value("hookgauge_store_errors_total", &[("kind", "busy")]) >= 1.0);
    other.execute_batch("ROLLBACK;").unwrap();

    // The sender's retry now succeeds: the refused delivery was never stored.
    let retried = app.deploy_image(2, t).await;
    assert_eq!((retried.status, retried.outcome()), (202, "accepted"));
    assert_eq!(app.get(format!("{}/readyz", app.ingest)).await.status, 200);
    assert_eq!(
        app.scrape().await.value("hookgauge_deployments_total", &[]),
        2.0
    );
    app.shutdown().await;
}

/// Runs `command` as an unprivileged user when the tests run as root, so
/// that file permissions apply to the service as they do in production.
fn as_unprivileged(command: &mut Command) -> Option<u32> {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let nobody = 65_534;
    command.uid(nobody).gid(nobody);
    Some(nobody)
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_data_dir_answers_503_and_recovers_when_writable() {
    let root = tempfile::tempdir().unwrap();
    set_mode(root.path(), 0o755);
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let client = reqwest::Client::new();
    let command = || {
        let mut command = crate::harness::serve_command(&data);
        let user = as_unprivileged(&mut command);
        (command, user)
    };
    let (mut first, user) = command();
    if let Some(uid) = user {
        std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
    }
    let post = |url: String, body: Vec<u8>| {
        let client = client.clone();
        async move { post_pelorus_to(&client, &url, "deploytime", &body, Some(SECRET)).await }
    };
    let t = now();
    let server = Process::start(&mut first, &root.path().join("first.log"));
    assert_eq!(
        post(
            server.ingest.clone(),
            deploy_body("shop", "prod", &image(1), t)
        )
        .await
        .status,
        202
    );
    server.terminate();

    // The data directory and the database become read-only for the service.
    let database = data.join("hookgauge.db");
    set_mode(&database, 0o444);
    set_mode(&data, 0o555);
    let (mut second, _) = command();
    let server = Process::start(&mut second, &root.path().join("second.log"));
    let refused = post(
        server.ingest.clone(),
        deploy_body("shop", "prod", &image(2), t),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(
        client
            .get(format!("{}/readyz", server.ingest))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    // Writable again: the service recovers without a restart.
    set_mode(&data, 0o755);
    set_mode(&database, 0o644);
    assert!(
        wait_for_status(
            &client,
            &format!("{}/readyz", server.ingest),
            200,
            Duration::from_secs(10)
        )
        .await,
        "store did not recover"
    );
    let accepted = post(
        server.ingest.clone(),
        deploy_body("shop", "prod", &image(3), t),
    )
    .await;
    accepted.assert_accepted();
    let metrics = Scrape::parse(
        &client
            .get(format!("{}/metrics", server.metrics))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        metrics.value("hookgauge_deployments_total", &[("app", "shop")]),
        2.0
    );
    server.terminate();

    // What was answered 503 was never stored.
    let ledger = ledger_rows(&database);
    let accepted: Vec<&LedgerRow> = ledger.iter().filter(|r| r.outcome == "accepted").collect();
    assert_eq!(accepted.len(), 2);
    assert!(accepted
        .iter()
        .all(|r| r.delivery_id != refused.json["delivery_id"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::harness::serve_command(dir.path());
    command.env(
        "HOOKGAUGE__SOURCES__PELORUS__SECRETS",
        format!("{SECRET},second-secret-value"),
    );
    let server = Process::start(&mut command, &dir.path().join("serve.log"));
    let client = reqwest::Client::new();
    let t = now();
    let mut sends = Vec::new();
    for n in 0..50 {
        let client = client.clone();
        let url = server.ingest.clone();
        sends.push(tokio::spawn(async move {
            let body = deploy_body("shop", "prod", &image(n), t);
            post_pelorus_to(&client, &url, "deploytime", &body, Some(SECRET))
                .await
                .status
        }));
    }
    let mut acked = 0;
    for send in sends {
        if send.await.unwrap() == 202 {
            acked += 1;
        }
    }
    // A wrong signature, so that the log shows a refusal.
    let body = deploy_body("shop", "prod", &image(99), t);
    let rejected =
        post_pelorus_to(&client, &server.ingest, "deploytime", &body, Some("wrong")).await;
    assert_eq!(rejected.status, 401);
    let log = server.terminate();
    assert_eq!(acked, 50);
    assert!(log.contains("Store closed"), "{log}");
    assert!(
        !log.contains(SECRET) && !log.contains("second-secret-value"),
        "a secret was logged"
    );
    let database = dir.path().join("hookgauge.db");
    assert!(
        !dir.path().join("hookgauge.db-wal").exists(),
        "WAL checkpointed and removed on close"
    );
    let stored = intact_deploy_count(&database);
    assert_eq!(stored, 50);
}

/// The deploys in the SQLite file `database`, once its integrity check
/// passes.
fn intact_deploy_count(database: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(database).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    conn.query_row("SELECT COUNT(*) FROM deploys", [], |r| r.get(0))
        .unwrap()
}

/// A tmpfs of `size` mounted at `path`, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk {
            path: path.to_owned(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Writes `path` in chunks of `chunk` bytes until its disk is full.
fn fill_disk(path: &std::path::Path, chunk: usize) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; chunk];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_acknowledges_nothing_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&root.path().join("disk"), "8m") else {
        // Mounting needs root (CI runs as root); say so rather than pass quietly.
        eprintln!("SKIPPED: cannot mount a tmpfs here; the full-disk test needs root");
        return;
    };
    let data = disk.path.join("data");
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.server.data_dir = data.clone();
    })
    .await;
    let t = now() - 60;
    let first = app.deploy_image(0, t).await;
    assert_eq!(first.status, 202);
    // Leave a few kilobytes: a ballast file takes the rest.
    let ballast = disk.path.join("ballast");
    fill_disk(&ballast, 64 * 1024);
    let mut acked = vec![0u64];
    let mut full = None;
    for n in 1..5_000u64 {
        let reply = app.deploy_image(n, t + n as i64).await;
        match reply.status {
            202 => acked.push(n),
            503 => {
                full = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    let full = full.expect("the disk filled up");
    assert!(
        full.headers.contains_key("retry-after"),
        "503 with Retry-After"
    );
    assert_eq!(full.json["reason"], "store_unavailable");
    // The failed commit's rollback can leave room in files SQLite already
    // holds (WAL frames), so a one-row readiness probe may still fit. Take
    // the disk's free space again, and use up that room with deliveries
    // (each acknowledged one is counted) until the probe fails too.
    let topped_up = disk.path.join("ballast-2");
    fill_disk(&topped_up, 4 * 1024);
    let mut ready = app.get(format!("{}/readyz", app.ingest)).await;
    for n in 5_000..5_200u64 {
        if ready.status == 503 {
            break;
        }
        let reply = app.deploy_image(n, t + n as i64).await;
        match reply.status {
            202 => acked.push(n),
            503 => {}
            other => panic!("unexpected {other}: {}", reply.text),
        }
        ready = app.get(format!("{}/readyz", app.ingest)).await;
    }
    assert_eq!(ready.status, 503, "{}", ready.text);

    // Space returns: service resumes without a restart.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&topped_up).unwrap();
    let mut recovered = false;
    for attempt in 0..50u64 {
        let n = 10_000 + attempt;
        let reply = app.deploy_image(n, t + n as i64).await;
        if reply.status == 202 {
            acked.push(n);
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "ingest resumed once space returned");
    assert_eq!(app.get(format!("{}/readyz", app.ingest)).await.status, 200);
    let scrape = app.scrape().await;
    assert_eq!(
        scrape.value("hookgauge_deployments_total", &[("app", "shop")]),
        acked.len() as f64,
        "every acknowledged deploy counted, nothing else"
    );
    app.shutdown().await;
    let stored = intact_deploy_count(&data.join("hookgauge.db"));
    assert_eq!(
        stored as usize,
        acked.len(),
        "the store holds exactly what was acknowledged"
    );
}

/// 10,000 applications (three namespaces, every hundredth with a lead time
/// and a failure): the scrape holds every series, each family under one
/// `# TYPE` line with its series together, passes `promtool check metrics`,
/// and a restart rebuilds the same series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_apps_scrape_whole_grouped_and_identical_after_restart() {
    use futures_util::StreamExt as _;
    const APPS: u64 = 10_000;
    let mut app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.metrics.commit_window = Duration::from_secs(20 * 365 * 86_400);
    })
    .await;
    let t = now();
    let mut posts = Vec::new();
    for n in 0..APPS {
        let name = format!("app-{n:05}");
        let namespace = format!("ns{}", n % 3);
        if n % 100 == 0 {
            let commit = serde_json::json!({
                "app": name, "commit_hash": format!("{n:040x}"), "image_sha": image(n),
                "namespace": namespace, "timestamp": t - 3_600 - n as i64,
            });
            posts.push(("committime", serde_json::to_vec(&commit).unwrap()));
        }
        posts.push((
            "deploytime",
            deploy_body(&name, &namespace, &image(n), t - 60),
        ));
        if n % 100 == 0 {
            for (change, time) in [("created", t - 50), ("resolved", t - 10)] {
                let failure = serde_json::json!({"app": name, "failure_id": "1", "failure_event": change, "timestamp": time});
                posts.push(("failure", serde_json::to_vec(&failure).unwrap()));
            }
        }
    }
    // In order per app (a commit before its deploy), many apps at once.
    let statuses: Vec<u16> = futures_util::stream::iter(posts.chunks(4))
        .map(|chunk| {
            let app = &app;
            async move {
                let mut statuses = Vec::new();
                for (event, body) in chunk {
                    statuses.push(app.post_signed(event, body).await.status);
                }
                statuses
            }
        })
        .buffer_unordered(32)
        .flat_map(futures_util::stream::iter)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "not all accepted");

    let scrape = app.scrape().await;
    let apps = APPS as usize;
    for (family, expected) in [
        ("deploy_timestamp", apps),
        ("hookgauge_deployments_total", apps),
        ("hookgauge_last_deploy_timestamp_seconds", apps),
        ("hookgauge_rework_deployments_total", apps),
        ("hookgauge_rework_deployments_withdrawn_total", apps),
        ("hookgauge_failed_deployments_total", apps),
        ("hookgauge_failed_deployments_withdrawn_total", apps),
        ("commit_timestamp", apps / 100),
        ("hookgauge_lead_time_seconds_count", apps / 100),
        ("hookgauge_failures_total", apps / 100),
        ("hookgauge_failures_resolved_total", apps / 100),
        ("hookgauge_open_failures", apps / 100),
    ] {
        assert_eq!(scrape.find(family, &[]).len(), expected, "{family}");
    }
    assert_eq!(
        scrape.value("hookgauge_deployments_total", &[("app", "app-04242")]),
        1.0
    );
    assert_eq!(
        scrape
            .find(
                "hookgauge_lead_time_seconds_bucket",
                &[("app", "app-00700")]
            )
            .len(),
        SPAN_BUCKETS_WITH_INF
    );
    // Every family once, its series right under its own header.
    let mut seen = std::collections::HashSet::new();
    let mut family = String::new();
    for line in scrape.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_string();
            assert!(seen.insert(family.clone()), "{family} twice");
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| *b == family))
                .unwrap_or(name);
            assert_eq!(base, family, "{line} outside its family");
        }
    }
    let (ok, output) = promtool_check_metrics(&scrape.text);
    assert!(ok, "promtool check metrics failed:\n{output}");

    let before = scrape.dora_samples();
    app.restart().await;
    let after = app.scrape().await.dora_samples();
    assert!(before == after, "a restart rebuilt different series");
    app.shutdown().await;
}

/// The buckets a histogram exposes: every bound of the spans and `+Inf`.
const SPAN_BUCKETS_WITH_INF: usize = 15;
