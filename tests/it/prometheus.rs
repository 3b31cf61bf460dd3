//! End to end with a real Prometheus (Debian's `prometheus`): the real
//! hookgauge binary is scraped with the shipped rules loaded, history is
//! backfilled with `hookgauge export` and `promtool tsdb create-blocks-from`,
//! a scripted history is driven over HTTP (with a retry and a restart), and
//! the recorded results and every dashboard query are checked.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::*;
use crate::monitoring::Prometheus;

/// The quantile Prometheus' `histogram_quantile` computes from cumulative
/// bucket counts, computed here from the raw observations.
pub(crate) fn expected_quantile(q: f64, bounds: &[f64], observations: &[f64]) -> f64 {
    let counts: Vec<f64> = bounds
        .iter()
        .map(|b| observations.iter().filter(|o| **o <= *b).count() as f64)
        .collect();
    let total = observations.len() as f64;
    let rank = q * total;
    let index = counts
        .iter()
        .position(|c| *c >= rank)
        .expect("rank within the buckets");
    let (lower, below) = if index == 0 {
        (0.0, 0.0)
    } else {
        (bounds[index - 1], counts[index - 1])
    };
    lower + (bounds[index] - lower) * (rank - below) / (counts[index] - below)
}

pub(crate) fn assert_close(name: &str, actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-6,
        "{name}: got {actual}, expected {expected}"
    );
}

/// Posts one Pelorus delivery to a running binary; returns the status.
pub(crate) async fn post(
    client: &reqwest::Client,
    ingest: &str,
    event: &str,
    body: Value,
    secret: &str,
) -> u16 {
    let body = serde_json::to_vec(&body).unwrap();
    post_pelorus_to(client, ingest, event, &body, Some(secret))
        .await
        .status
}

pub(crate) fn commit(app: &str, n: u64, time: i64) -> Value {
    serde_json::json!({"app": app, "commit_hash": format!("{n:040x}"), "image_sha": image(n), "namespace": "build", "timestamp": time})
}

pub(crate) fn deploy(app: &str, namespace: &str, n: u64, time: i64) -> Value {
    serde_json::json!({"app": app, "image_sha": image(n), "namespace": namespace, "timestamp": time})
}

pub(crate) fn failure(app: &str, id: &str, change: &str, time: i64) -> Value {
    serde_json::json!({"app": app, "failure_id": id, "failure_event": change, "timestamp": time})
}

/// Every PromQL expression of every shipped dashboard, with its location.
pub(crate) fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(file: &str, panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        format!("{file} / {title} / {}", target["refId"]),
                        expr.to_owned(),
                    ));
                }
            }
            walk(
                file,
                panel["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                out,
            );
        }
    }
    let mut queries = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("grafana/dashboards"))
        .expect("grafana/dashboards exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "three dashboards are shipped: {files:?}");
    for file in files {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        walk(
            &name,
            dashboard["panels"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            &mut queries,
        );
    }
    queries
}

/// Grafana's variables as a dashboard user would have them set.
pub(crate) fn substitute(expr: &str) -> String {
    expr.replace("${app}", "shop")
        .replace("$app", "shop")
        .replace("${namespace}", ".*")
        .replace("$namespace", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$__interval", "15s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboards_compute_the_four_keys_in_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let (ingest_port, metrics_port) = (free_port(), free_port());
    let start_hookgauge = |log: &str| {
        let mut command = serve_command_on(
            &data,
            &format!("127.0.0.1:{ingest_port}"),
            &format!("127.0.0.1:{metrics_port}"),
        );
        Process::start(&mut command, &dir.path().join(log))
    };
    let t = now();

    // History from before Prometheus existed: stored, then backfilled.
    let hookgauge = start_hookgauge("hookgauge-1.log");
    let ingest = hookgauge.ingest.clone();
    let mut legacy = Vec::new();
    for n in 0..3u64 {
        let at = t - 3 * 86_400 + n as i64 * 3_600;
        legacy.push(("committime", commit("legacy", 100 + n, at - 1_800)));
        legacy.push(("deploytime", deploy("legacy", "legacy-prod", 100 + n, at)));
    }
    let failed = t - 2 * 86_400;
    legacy.push(("failure", failure("legacy", "OLD-1", "created", failed)));
    legacy.push((
        "failure",
        failure("legacy", "OLD-1", "resolved", failed + 600),
    ));
    for (event, body) in legacy {
        assert_eq!(post(&client, &ingest, event, body, SECRET).await, 202);
    }
    let storage = dir.path().join("tsdb");
    let export_file = dir.path().join("history.om");
    let export = Command::new(binary())
        .args(["export", "--data-dir"])
        .arg(&data)
        .args(["--from", "7d", "--to", &(t - 900).to_string(), "-o"])
        .arg(&export_file)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let blocks = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&export_file)
        .arg(&storage)
        .output()
        .expect("promtool is installed");
    assert!(
        blocks.status.success(),
        "{}{}",
        String::from_utf8_lossy(&blocks.stdout),
        String::from_utf8_lossy(&blocks.stderr)
    );

    let prometheus =
        Prometheus::start(dir.path(), &storage, &format!("127.0.0.1:{metrics_port}")).await;

    // Live history. Lead times: shop c1 → first deploy 7 080 s, c2 → 3 510 s
    // (staging first), cart c3 → 1 700 s. Time to restore: shop INC-1 1 170 s.
    // Five keys (issue 21), by hand: shop's image-0 deploy at t-1500 is the
    // one INC-1 (created t-1200) is tied to; the three shop deploys after it
    // were made while INC-1 was open (t-1200 to t-30): rework 3 of 4. cart's
    // one deploy is followed by INC-2 (t-20): tied. legacy's third deploy is
    // followed 22 h later by OLD-1 (within the 24 h window), restored in
    // 600 s. Recovery of tied failures: shop 1 170 s, legacy 600 s.
    let live = [
        ("deploytime", deploy("shop", "shop-prod", 0, t - 1_500)),
        ("committime", commit("shop", 1, t - 7_200)),
        ("committime", commit("shop", 2, t - 3_600)),
        ("committime", commit("cart", 3, t - 1_800)),
        ("deploytime", deploy("shop", "shop-prod", 1, t - 120)),
        ("deploytime", deploy("cart", "cart-prod", 3, t - 100)),
        ("failure", failure("shop", "INC-1", "created", t - 1_200)),
    ];
    for (event, body) in live {
        assert_eq!(post(&client, &ingest, event, body, SECRET).await, 202);
    }
    // A restart in the middle: counters continue from the store.
    hookgauge.terminate();
    let hookgauge = start_hookgauge("hookgauge-2.log");
    let later = [
        ("deploytime", deploy("shop", "shop-staging", 2, t - 90)),
        ("deploytime", deploy("shop", "shop-prod", 2, t - 60)),
        ("failure", failure("shop", "INC-1", "resolved", t - 30)),
        ("failure", failure("cart", "INC-2", "created", t - 20)),
    ];
    for (event, body) in later {
        assert_eq!(post(&client, &ingest, event, body, SECRET).await, 202);
    }
    // A sender's retry, a bad signature and an invalid payload change no number.
    assert_eq!(
        post(
            &client,
            &ingest,
            "deploytime",
            deploy("shop", "shop-prod", 2, t - 60),
            SECRET
        )
        .await,
        200
    );
    assert_eq!(
        post(
            &client,
            &ingest,
            "deploytime",
            deploy("shop", "shop-prod", 9, t - 10),
            "wrong"
        )
        .await,
        401
    );
    assert_eq!(
        post(
            &client,
            &ingest,
            "deploytime",
            deploy("shop", "Shop_Prod", 9, t - 10),
            SECRET
        )
        .await,
        422
    );

    // Gap-tolerant hookgauge:* rules.
    let increase1d = |app: &str, ns: &str| {
        format!("hookgauge:deployments:increase1d{{app=\"{app}\",namespace=\"{ns}\"}}")
    };
    assert_close(
        "shop prod today",
        prometheus.value(&increase1d("shop", "shop-prod")).await,
        3.0,
    );
    assert_close(
        "shop staging today",
        prometheus.value(&increase1d("shop", "shop-staging")).await,
        1.0,
    );
    assert_close(
        "cart prod today",
        prometheus.value(&increase1d("cart", "cart-prod")).await,
        1.0,
    );
    assert_close(
        "legacy today (backfilled, 3 days old)",
        prometheus.value(&increase1d("legacy", "legacy-prod")).await,
        0.0,
    );
    let per_day = |app: &str| format!("hookgauge:deployments_per_day:7d{{app=\"{app}\"}}");
    assert_close(
        "shop per day",
        prometheus.value(&per_day("shop")).await,
        4.0 / 7.0,
    );
    assert_close(
        "legacy per day",
        prometheus.value(&per_day("legacy")).await,
        3.0 / 7.0,
    );
    let cfr = |app: &str| format!("hookgauge:change_failure_rate:30d{{app=\"{app}\"}}");
    assert_close(
        "shop change failure rate",
        prometheus.value(&cfr("shop")).await,
        1.0 / 4.0,
    );
    assert_close(
        "cart change failure rate",
        prometheus.value(&cfr("cart")).await,
        1.0,
    );
    assert_close(
        "legacy change failure rate",
        prometheus.value(&cfr("legacy")).await,
        1.0 / 3.0,
    );
    let bounds: Vec<f64> = hookgauge::metrics::SPAN_BUCKETS.to_vec();
    let shop_lead = [7_080.0, 3_510.0];
    for (q, rule) in [(0.5, "p50_7d"), (0.9, "p90_7d")] {
        let expr = format!("hookgauge:lead_time_seconds:{rule}{{app=\"shop\"}}");
        assert_close(
            &expr,
            prometheus.value(&expr).await,
            expected_quantile(q, &bounds, &shop_lead),
        );
    }
    let expr = "hookgauge:time_to_restore_seconds:p50_30d{app=\"shop\"}";
    assert_close(
        expr,
        prometheus.value(expr).await,
        expected_quantile(0.5, &bounds, &[1_170.0]),
    );

    // The five keys' rules (issue 21).
    for (app, rework, linked) in [
        ("shop", 3.0 / 4.0, 1.0 / 4.0),
        ("cart", 0.0, 1.0),
        ("legacy", 0.0, 1.0 / 3.0),
    ] {
        let expr = format!("hookgauge:rework_rate:30d{{app=\"{app}\"}}");
        assert_close(&expr, prometheus.value(&expr).await, rework);
        let expr = format!("hookgauge:change_failure_rate_linked:30d{{app=\"{app}\"}}");
        assert_close(&expr, prometheus.value(&expr).await, linked);
    }
    let expr = "hookgauge:rework_rate:30d{scope=\"all\"}";
    assert_close(expr, prometheus.value(expr).await, 3.0 / 8.0);
    let expr = "hookgauge:change_failure_rate_linked:30d{scope=\"all\"}";
    assert_close(expr, prometheus.value(expr).await, 3.0 / 8.0);
    for (app, recoveries) in [("shop", &[1_170.0][..]), ("legacy", &[600.0][..])] {
        let expr = format!("hookgauge:failed_deployment_recovery_seconds:p50_30d{{app=\"{app}\"}}");
        assert_close(
            &expr,
            prometheus.value(&expr).await,
            expected_quantile(0.5, &bounds, recoveries),
        );
    }
    let expr = "hookgauge:failed_deployment_recovery_seconds:p50_30d{scope=\"all\"}";
    assert_close(
        expr,
        prometheus.value(expr).await,
        expected_quantile(0.5, &bounds, &[1_170.0, 600.0]),
    );

    // Tiers (hookgauge.rules.yml, 4 elite .. 1 low). shop: 4 deploys in 7 days
    // (4/7 a day: high), lead time p50 within a day (elite), linked change
    // failure rate 25 % and rework rate 75 % (low), recovery 1 170 s (elite).
    for (key, tier) in [
        ("deployment_frequency", 3.0),
        ("lead_time", 4.0),
        ("change_failure_rate", 1.0),
        ("failed_deployment_recovery_time", 4.0),
        ("rework_rate", 1.0),
    ] {
        let expr = format!("hookgauge:tier{{app=\"shop\",key=\"{key}\"}}");
        assert_close(&expr, prometheus.value(&expr).await, tier);
    }

    // Pelorus-compatible sdp:* rules (visible while the deploys are recent).
    let by_commit = |n: u64| format!("sdp:lead_time:by_commit{{app=\"shop\",commit=\"{n:040x}\"}}");
    assert_close(
        "shop c1 lead time",
        prometheus.value(&by_commit(1)).await,
        7_080.0,
    );
    assert_close(
        "shop c2 lead time",
        prometheus.value(&by_commit(2)).await,
        3_510.0,
    );
    assert_close(
        "shop lead time",
        prometheus.value("sdp:lead_time:by_app{app=\"shop\"}").await,
        (7_080.0 + 3_510.0) / 2.0,
    );
    assert_close(
        "global lead time",
        prometheus.value("sdp:lead_time:global").await,
        ((7_080.0 + 3_510.0) / 2.0 + 1_700.0) / 2.0,
    );
    assert_close(
        "INC-1 time to restore",
        prometheus
            .value("sdp:time_to_restore:by_issue{app=\"shop\",issue_number=\"INC-1\"}")
            .await,
        1_170.0,
    );
    assert_close(
        "cart Pelorus CFR",
        prometheus
            .value("sdp:change_failure_rate:by_app{app=\"cart\"}")
            .await,
        1.0,
    );
    assert_close(
        "shop Pelorus CFR",
        prometheus
            .value("sdp:change_failure_rate:by_app{app=\"shop\"}")
            .await,
        0.0,
    );

    // The backfilled blocks were loaded: their first counter value is there.
    assert_close(
        "backfilled counter start",
        prometheus
            .value("min(min_over_time(hookgauge_deployments_total{app=\"legacy\"}[7d]))")
            .await,
        1.0,
    );
    assert_close(
        "backfilled deploys",
        prometheus
            .value("sum(count_over_time(deploy_timestamp{app=\"legacy\"}[7d]))")
            .await,
        3.0,
    );

    // Alerts: the open failure is young, no threshold is crossed.
    assert_close(
        "open failures",
        prometheus
            .value("hookgauge_open_failures{app=\"cart\"}")
            .await,
        1.0,
    );

    // Every panel query of every dashboard returns data. rate() needs two
    // scrapes in its window: wait (bounded) until there are a few.
    let scrapes = "count_over_time(up{job=\"hookgauge\"}[1m]) >= 4";
    prometheus.value(scrapes).await;
    let mut empty = Vec::new();
    for (location, expr) in dashboard_queries() {
        let expr = substitute(&expr);
        match prometheus.query(&expr).await {
            Ok(results) if !results.is_empty() => {}
            Ok(_) => empty.push(format!("{location}: no data: {expr}")),
            Err(error) => empty.push(format!("{location}: error: {error}")),
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    hookgauge.terminate();
}
