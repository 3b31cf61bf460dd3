//! Two replicas on one PostgreSQL database, end to end: two real hookgauge
//! processes share a database of the test cluster, signed Pelorus
//! deliveries are split between them (some to each, some to both), and once
//! both replicas expose the same DORA series a real Prometheus scrapes both
//! as two targets of job `hookgauge` with the shipped rules loaded. The
//! recorded four keys, the Pelorus `sdp:*` records and every DORA dashboard
//! query must be what was sent, and exactly what a second Prometheus
//! scraping one replica only computes; the self-metrics add up over the
//! replicas.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::monitoring::{Prometheus, PrometheusSetup, QueryResult};
use crate::prometheus::{
    assert_close, commit, dashboard_queries, deploy, expected_quantile, failure, post, substitute,
};

/// How long the replicas may take to expose the same DORA series.
const AGREE: Duration = Duration::from_secs(20);
/// How long Prometheus may take to scrape both targets and record the rules.
const RECORD: Duration = Duration::from_secs(60);

/// The series every replica derives from the shared store: they must be
/// the same on both. (Self-metrics such as deliveries, latencies, the
/// background lock and the follow lag are each replica's own.)
const DORA_SERIES: &[&str] = &[
    "commit_timestamp",
    "deploy_timestamp",
    "failure_creation_timestamp",
    "failure_resolution_timestamp",
    "hookgauge_deployments_total",
    "hookgauge_failures_total",
    "hookgauge_failures_resolved_total",
    "hookgauge_lead_time_seconds_bucket",
    "hookgauge_lead_time_seconds_sum",
    "hookgauge_lead_time_seconds_count",
    "hookgauge_time_to_restore_seconds_bucket",
    "hookgauge_time_to_restore_seconds_sum",
    "hookgauge_time_to_restore_seconds_count",
    "hookgauge_last_deploy_timestamp_seconds",
    "hookgauge_open_failures",
    "hookgauge_oldest_open_failure_timestamp_seconds",
];

/// `hookgauge serve` on the shared store at `url`, with its own (unused)
/// data directory and log under `dir`.
fn start_replica(dir: &Path, name: &str, url: &str) -> Process {
    let data = dir.join(name);
    std::fs::create_dir(&data).unwrap();
    let mut command = serve_command(&data);
    command.env("HOOKGAUGE__STORE__URL", url);
    Process::start(&mut command, &dir.join(format!("{name}.log")))
}

async fn scrape(client: &reqwest::Client, metrics: &str) -> Scrape {
    crate::harness::scrape_from(client, metrics).await
}

fn dora(scrape: &Scrape) -> Vec<Sample> {
    let mut samples: Vec<Sample> = scrape
        .samples
        .iter()
        .filter(|s| DORA_SERIES.contains(&s.name.as_str()))
        .cloned()
        .collect();
    samples.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    samples
}

/// The sum of the samples of `name` with `labels` in a scrape.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.find(name, labels).iter().map(|s| s.value).sum()
}

/// A query's results in a comparable form: sorted by labels, NaN as text.
fn normalized(results: Vec<QueryResult>) -> Vec<(BTreeMap<String, String>, String)> {
    let mut results: Vec<_> = results
        .into_iter()
        .map(|(labels, value)| (labels, format!("{value:?}")))
        .collect();
    results.sort();
    results
}

/// The single value of `expr` evaluated at `time`.
async fn value_at(prometheus: &Prometheus, expr: &str, time: f64) -> f64 {
    match prometheus.query_at(expr, Some(time)).await.as_deref() {
        Ok([(_, value)]) => *value,
        other => panic!("{expr} at {time}: not one value: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_scraped_as_two_targets_record_the_four_keys_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let url = tokio::task::spawn_blocking(postgres_database)
        .await
        .unwrap();
    let a = start_replica(dir.path(), "a", &url);
    let b = start_replica(dir.path(), "b", &url);

    // The deployments are dated a few seconds back: the Pelorus rules see
    // them for Prometheus' 5-minute lookback after that, which is when this
    // test reads them.
    //
    // Sent: lead times shop c1 7 150 s, c2 3 560 s, c3 570 s (staging first,
    // prod 5 s later), cart c4 1 765 s; time to restore shop INC-1 985 s;
    // cart INC-2 stays open; web is deployed without a known commit.
    // Commits and deployments of one commit, and the two ends of a failure,
    // reach different replicas.
    let t = now();
    let deliveries: &[(&str, &str, Value)] = &[
        ("a", "committime", commit("shop", 1, t - 7_200)),
        ("a", "committime", commit("shop", 2, t - 3_600)),
        ("b", "committime", commit("shop", 3, t - 600)),
        ("b", "committime", commit("cart", 4, t - 1_800)),
        ("b", "committime", commit("shop", 1, t - 7_200)),
        ("b", "deploytime", deploy("shop", "shop-prod", 1, t - 50)),
        ("a", "deploytime", deploy("shop", "shop-prod", 1, t - 50)),
        ("a", "deploytime", deploy("shop", "shop-prod", 2, t - 40)),
        ("b", "deploytime", deploy("cart", "cart-prod", 4, t - 35)),
        ("b", "deploytime", deploy("shop", "shop-staging", 3, t - 30)),
        ("a", "deploytime", deploy("shop", "shop-prod", 3, t - 25)),
        ("b", "deploytime", deploy("web", "web-prod", 5, t - 20)),
        (
            "a",
            "failure",
            failure("shop", "INC-1", "created", t - 1_000),
        ),
        ("b", "failure", failure("shop", "INC-1", "resolved", t - 15)),
        ("a", "failure", failure("shop", "INC-1", "resolved", t - 15)),
        ("a", "failure", failure("cart", "INC-2", "created", t - 10)),
        ("b", "failure", failure("cart", "INC-2", "created", t - 10)),
    ];
    // The second copy of a delivery is a duplicate, on whichever replica.
    let mut seen = Vec::new();
    let mut counted: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (replica, event, body) in deliveries {
        let ingest = if *replica == "a" {
            &a.ingest
        } else {
            &b.ingest
        };
        let status = post(&client, ingest, event, body.clone(), SECRET).await;
        let (expected, outcome) = if seen.contains(&body) {
            (200, "duplicate")
        } else {
            (202, "accepted")
        };
        assert_eq!(status, expected, "{event} to {replica}: {body}");
        seen.push(body);
        *counted.entry((replica, outcome)).or_default() += 1.0;
    }

    // Both replicas expose the same DORA series, and the final ones; one of
    // them holds the background lock.
    let deadline = Instant::now() + AGREE;
    loop {
        let (scrape_a, scrape_b) = (
            scrape(&client, &a.metrics).await,
            scrape(&client, &b.metrics).await,
        );
        let complete = |s: &Scrape| {
            total(s, "hookgauge_deployments_total", &[]) == 6.0
                && total(s, "hookgauge_failures_total", &[]) == 2.0
                && total(s, "hookgauge_failures_resolved_total", &[]) == 1.0
                && total(s, "hookgauge_lead_time_seconds_count", &[]) == 4.0
        };
        let holders = total(&scrape_a, "hookgauge_background_active", &[])
            + total(&scrape_b, "hookgauge_background_active", &[]);
        if complete(&scrape_a)
            && complete(&scrape_b)
            && dora(&scrape_a) == dora(&scrape_b)
            && holders == 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not expose the same DORA series and one lock holder within \
             {AGREE:?} (holders: {holders}):\na:\n{:#?}\nb:\n{:#?}",
            dora(&scrape_a),
            dora(&scrape_b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Prometheus scraping both replicas, and one scraping replica a only.
    let address = |p: &Process| p.metrics.trim_start_matches("http://").to_owned();
    let start = |name: &str, targets: Vec<(String, String)>| {
        let dir = dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        async move {
            let setup = PrometheusSetup {
                targets,
                alertmanagers: Vec::new(),
            };
            Prometheus::start_with(&dir, &dir.join("tsdb"), &setup).await
        }
    };
    let two = start(
        "two-targets",
        vec![("a".into(), address(&a)), ("b".into(), address(&b))],
    )
    .await;
    let one = start("one-target", vec![("a".into(), address(&a))]).await;

    // Both targets scraped, the rules recorded from their scrapes. Until both
    // targets have been scraped, the sum over the replicas of the background
    // lock can be 0 and its alert pending; the alerts group is evaluated apart
    // from the recording groups, so Prometheus scraping two targets is ready
    // once it has evaluated the alert again and found one holder.
    let lock_alert = "ALERTS{alertname=\"HookgaugeBackgroundNotOnOneReplica\"}";
    for (prometheus, targets) in [(&two, 2.0), (&one, 1.0)] {
        let mut ready = format!(
            "count(up{{job=\"hookgauge\"}} == 1) == {targets} \
             and on () count(hookgauge:deployments_per_day:7d) == 3 \
             and on () count(sdp:lead_time:by_commit) == 4 \
             and on () count(sdp:time_to_restore:by_issue) == 1"
        );
        if targets == 2.0 {
            ready.push_str(&format!(" and on () absent({lock_alert})"));
        }
        if let Err(last) = prometheus
            .wait_until(&ready, RECORD, |r| r.len() == 1)
            .await
        {
            panic!(
                "not recorded within {RECORD:?}: {last}\n{}",
                prometheus.log()
            );
        }
    }
    // Every query below is evaluated at this one instant in both.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        at < (t + 240) as f64,
        "Prometheus took too long: the deployments left the Pelorus rules' lookback"
    );

    // Two targets really are two copies of every DORA series.
    assert_close(
        "raw copies of shop's prod deployments, two targets",
        value_at(
            &two,
            "count(hookgauge_deployments_total{app=\"shop\",namespace=\"shop-prod\"})",
            at,
        )
        .await,
        2.0,
    );

    // The four keys, as computed from what was sent.
    for (name, prometheus) in [("two targets", &two), ("one target", &one)] {
        let key = |expr: &str| format!("{name}: {expr}");
        let bounds: Vec<f64> = hookgauge::metrics::SPAN_BUCKETS.to_vec();
        let expected = [
            // Deployment frequency: 4 deployments of shop, 1 of cart in 7 days.
            ("hookgauge:deployments_per_day:7d{app=\"shop\"}", 4.0 / 7.0),
            ("hookgauge:deployments_per_day:7d{app=\"cart\"}", 1.0 / 7.0),
            (
                "hookgauge:deployments:increase1d{app=\"shop\",namespace=\"shop-prod\"}",
                3.0,
            ),
            // Lead time for changes.
            (
                "hookgauge:lead_time_seconds:p50_7d{app=\"shop\"}",
                expected_quantile(0.5, &bounds, &[7_150.0, 3_560.0, 570.0]),
            ),
            (
                "hookgauge:lead_time_seconds:p90_7d{app=\"shop\"}",
                expected_quantile(0.9, &bounds, &[7_150.0, 3_560.0, 570.0]),
            ),
            (
                "hookgauge:lead_time_seconds:p50_7d{app=\"cart\"}",
                expected_quantile(0.5, &bounds, &[1_765.0]),
            ),
            // Change failure rate: 1 failure per 4 deployments, 1 per 1.
            ("hookgauge:change_failure_rate:30d{app=\"shop\"}", 0.25),
            ("hookgauge:change_failure_rate:30d{app=\"cart\"}", 1.0),
            // Time to restore service.
            (
                "hookgauge:time_to_restore_seconds:p50_30d{app=\"shop\"}",
                expected_quantile(0.5, &bounds, &[985.0]),
            ),
            // Pelorus' records over the gauges visible now.
            ("sdp:lead_time:by_commit{app=\"shop\",commit=\"0000000000000000000000000000000000000001\"}", 7_150.0),
            ("sdp:lead_time:by_commit{app=\"shop\",commit=\"0000000000000000000000000000000000000003\"}", 570.0),
            (
                "sdp:lead_time:by_app{app=\"shop\"}",
                (7_150.0 + 3_560.0 + 570.0) / 3.0,
            ),
            (
                "sdp:lead_time:global",
                ((7_150.0 + 3_560.0 + 570.0) / 3.0 + 1_765.0) / 2.0,
            ),
            // INC-1's creation has left the lookback: 0 for shop; INC-2 is visible.
            ("sdp:change_failure_rate:by_app{app=\"shop\"}", 0.0),
            ("sdp:change_failure_rate:by_app{app=\"cart\"}", 1.0),
            ("sdp:change_failure_rate:global", 0.5),
            (
                "sdp:time_to_restore:by_issue{app=\"shop\",issue_number=\"INC-1\"}",
                985.0,
            ),
            ("sdp:time_to_restore:global", 985.0),
            // web's one image, known from its deployment only.
            ("sdp:applications{app=\"web\"}", 1.0),
        ];
        for (expr, value) in expected {
            assert_close(&key(expr), value_at(prometheus, expr, at).await, value);
        }
    }

    // Every record and every DORA dashboard query: the same with two targets
    // as with one.
    let mut queries = vec![(
        "recording rules".to_owned(),
        "{__name__=~\"hookgauge:.+|sdp:.+\"}".to_owned(),
    )];
    for (location, expr) in dashboard_queries() {
        if location.starts_with("hookgauge-operations.json") {
            continue; // self-metrics: per replica, compared below
        }
        for app in ["shop", "cart", ".*"] {
            let expr = substitute(&expr.replace("${app}", app).replace("$app", app));
            queries.push((format!("{location} (app {app})"), expr));
        }
    }
    let (mut differ, mut with_data) = (Vec::new(), 0);
    for (location, expr) in &queries {
        let with_two = two.query_at(expr, Some(at)).await.map(normalized);
        let with_one = one.query_at(expr, Some(at)).await.map(normalized);
        match (with_two, with_one) {
            (Ok(two), Ok(one)) if two == one => with_data += usize::from(!two.is_empty()),
            (two, one) => differ.push(format!(
                "{location}: {expr}\n  two targets: {two:?}\n  one target:  {one:?}"
            )),
        }
    }
    assert!(
        differ.is_empty(),
        "queries whose results depend on the number of replicas scraped:\n{}",
        differ.join("\n")
    );
    assert!(
        with_data * 2 > queries.len(),
        "most queries have data: {with_data} of {}",
        queries.len()
    );

    // Self-metrics add up over the replicas: each counted what it received.
    for outcome in ["accepted", "duplicate"] {
        let expr =
            format!("sum(hookgauge_deliveries_total{{source=\"pelorus\",outcome=\"{outcome}\"}})");
        let on = |replica: &str| counted.get(&(replica, outcome)).copied().unwrap_or(0.0);
        assert_close(&expr, value_at(&two, &expr, at).await, on("a") + on("b"));
        assert_close(&expr, value_at(&one, &expr, at).await, on("a"));
    }
    assert_close(
        "replicas holding the background lock",
        value_at(&two, "sum(hookgauge_background_active)", at).await,
        1.0,
    );
    assert_eq!(
        two.query_at(lock_alert, Some(at)).await,
        Ok(Vec::new()),
        "{lock_alert}"
    );

    drop((two, one));
    a.terminate();
    b.terminate();
}
