//! The five keys (issue 21): rework and failed deployments decided in the
//! store's transaction, whatever order the facts arrive in and across
//! restarts; failed deployment recovery time; the explicit rework of
//! sources (a CDEvents rollback).

use crate::harness::*;

const HOUR: i64 = 3_600;

fn failure_body(id: &str, event: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "app": "shop", "failure_id": id, "failure_event": event, "timestamp": timestamp,
    }))
    .unwrap()
}

pub async fn deploy(app: &TestApp, n: u64, time: i64) {
    let reply = app
        .post_signed("deploytime", &deploy_body("shop", "prod", &image(n), time))
        .await;
    assert_eq!(reply.status, 202, "deploy {n}: {}", reply.text);
    assert_eq!(reply.outcome(), "accepted", "deploy {n}");
}

pub async fn failure(app: &TestApp, id: &str, event: &str, time: i64) {
    let reply = app
        .post_signed("failure", &failure_body(id, event, time))
        .await;
    assert_eq!(reply.status, 202, "failure {id} {event}: {}", reply.text);
    assert_eq!(reply.outcome(), "accepted", "failure {id} {event}");
}

/// The counters of `shop` in `prod`: (deploys, rework decided, rework
/// withdrawn, failed decided, failed withdrawn).
fn counts(scrape: &Scrape) -> (f64, f64, f64, f64, f64) {
    let labels = [("app", "shop"), ("namespace", "prod")];
    (
        scrape.value("hookgauge_deployments_total", &labels),
        scrape.value("hookgauge_rework_deployments_total", &labels),
        scrape.value("hookgauge_rework_deployments_withdrawn_total", &labels),
        scrape.value("hookgauge_failed_deployments_total", &labels),
        scrape.value("hookgauge_failed_deployments_withdrawn_total", &labels),
    )
}

/// Six deploys of `shop` and three failures around them, sent out of
/// order with a restart half-way. By hand (hours after `t0`, window 24 h):
///
/// | deploy | at   | open failure then      | next failure, none deployed between |
/// |--------|------|------------------------|-------------------------------------|
/// | D1     | 0    | —                      | F1 at 1 → failed                    |
/// | D2     | 2    | F1 (1–3) → rework      | —  (D3 before F2)                   |
/// | D3     | 4    | —                      | F2 at 5 → failed                    |
/// | D4     | 6    | — (F2 5–5.5)           | —  (D5 before F3)                   |
/// | D5     | 8    | —                      | —  (D6 before F3)                   |
/// | D6     | 8.25 | —                      | F3 at 8.5 → failed                  |
///
/// Rework 1 of 6; failed 3 of 6; recovery of F1, F2, F3 (each tied to a
/// deploy): 7200, 1800 and 1800 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rework_and_failed_deploys_are_decided_by_the_facts_not_their_order() {
    let mut app = spawn_app().await;
    let t0 = now() - 2 * 86_400;

    deploy(&app, 4, t0 + 6 * HOUR).await;
    failure(&app, "F2", "created", t0 + 5 * HOUR).await;
    // D4 was deployed while F2 was open (its resolution is not known yet).
    let scrape = app.scrape().await;
    assert_eq!(counts(&scrape), (1.0, 1.0, 0.0, 0.0, 0.0));
    deploy(&app, 3, t0 + 4 * HOUR).await;
    failure(&app, "F1", "resolved", t0 + 3 * HOUR).await;
    deploy(&app, 2, t0 + 2 * HOUR).await;
    deploy(&app, 5, t0 + 8 * HOUR).await;
    failure(&app, "F3", "created", t0 + 8 * HOUR + HOUR / 2).await;
    // D4 and D5 rework (F2 is open: its resolution is not known yet); D3
    // tied to F2, D5 to F3; D2 not rework (F1's creation is not known yet).
    let before_restart = app.scrape().await;
    assert_eq!(counts(&before_restart), (4.0, 2.0, 0.0, 2.0, 0.0));

    app.restart().await;
    assert_eq!(
        before_restart.dora_samples(),
        app.scrape().await.dora_samples(),
        "a restart rebuilds the same series"
    );

    failure(&app, "F1", "created", t0 + HOUR).await;
    assert_eq!(counts(&app.scrape().await), (4.0, 3.0, 0.0, 2.0, 0.0));
    deploy(&app, 1, t0).await;
    failure(&app, "F2", "resolved", t0 + 5 * HOUR + HOUR / 2).await;
    deploy(&app, 6, t0 + 8 * HOUR + HOUR / 4).await;
    failure(&app, "F3", "resolved", t0 + 9 * HOUR).await;
    // Retries change nothing.
    for (event, body) in [
        (
            "deploytime",
            deploy_body("shop", "prod", &image(2), t0 + 2 * HOUR),
        ),
        ("failure", failure_body("F1", "created", t0 + HOUR)),
    ] {
        let reply = app.post_signed(event, &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.outcome(), "duplicate");
    }

    let scrape = app.scrape().await;
    // D4's and D5's rework withdrawn by F2's late resolution; D5's tie
    // moved to D6.
    let (deploys, rework, rework_withdrawn, failed, failed_withdrawn) = counts(&scrape);
    assert_eq!(
        (deploys, rework, rework_withdrawn, failed, failed_withdrawn),
        (6.0, 3.0, 2.0, 4.0, 1.0)
    );
    assert_eq!(
        rework - rework_withdrawn,
        1.0,
        "D2 is the one rework deploy"
    );
    assert_eq!(failed - failed_withdrawn, 3.0, "D1, D3 and D6 failed");
    let app_label = [("app", "shop")];
    assert_eq!(
        scrape.value(
            "hookgauge_failed_deployment_recovery_seconds_count",
            &app_label
        ),
        3.0
    );
    assert_eq!(
        scrape.value(
            "hookgauge_failed_deployment_recovery_seconds_sum",
            &app_label
        ),
        (7_200 + 1_800 + 1_800) as f64
    );
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_count", &app_label),
        3.0
    );

    // What the store holds is the final decision, whatever the order.
    assert_eq!(
        app.strings("SELECT CAST(time AS TEXT) FROM deploys WHERE rework <> 0"),
        [(t0 + 2 * HOUR).to_string()]
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM deploys WHERE failed <> 0"),
        3
    );

    app.restart().await;
    assert_eq!(scrape.dora_samples(), app.scrape().await.dora_samples());
    app.shutdown().await;
}

/// A failure created after the link window is tied to no deploy: it counts
/// in time to restore but not in failed deployment recovery time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_outside_the_link_window_are_not_tied_to_a_deploy() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.metrics.failure_link_window = std::time::Duration::from_secs(HOUR as u64);
    })
    .await;
    let t0 = now() - 86_400;
    deploy(&app, 1, t0).await;
    failure(&app, "late", "created", t0 + 2 * HOUR).await;
    failure(&app, "late", "resolved", t0 + 3 * HOUR).await;
    failure(&app, "near", "created", t0 + HOUR / 2).await;
    failure(&app, "near", "resolved", t0 + HOUR).await;
    let scrape = app.scrape().await;
    let shop = [("app", "shop")];
    assert_eq!(
        scrape.value("hookgauge_time_to_restore_seconds_count", &shop),
        2.0
    );
    assert_eq!(
        scrape.value("hookgauge_failed_deployment_recovery_seconds_count", &shop),
        1.0
    );
    assert_eq!(
        scrape.value("hookgauge_failed_deployment_recovery_seconds_sum", &shop),
        1_800.0
    );
    assert_eq!(counts(&scrape), (1.0, 0.0, 0.0, 1.0, 0.0));
    app.shutdown().await;
}

const DAY: i64 = 86_400;

/// The keys page's and `/api/v1/keys`' scenario, at fixed times before `t`
/// (`now` when it starts). `shop`, by hand:
///
/// | fact | at (from t)   | decided                                       |
/// |------|---------------|-----------------------------------------------|
/// | D1   | -1d           | lead time of C1: 2 h                          |
/// | D2   | -2d           | lead time of C2: 10 h; F1 over by then         |
/// | D3   | -3d           | lead time of C3: 4 h; failed (F1 at -3d+1h)    |
/// | F1   | -3d+1h..+3h   | tied to D3, recovered in 7200 s                |
/// | D4   | -10d          | failed (F2 at -10d+1h)                         |
/// | F2   | -10d+1h..-9d  | tied to D4, recovered in 82800 s               |
/// | D4b  | -10d+6h       | rework (F2 open)                               |
/// | D5   | -40d          | —                                             |
///
/// and `cart` deployed once, at -20d.
pub async fn keys_scenario(app: &TestApp, t: i64) {
    for (n, c, commit_at) in [
        (1, "c1", t - DAY - 2 * HOUR),
        (2, "c2", t - 2 * DAY - 10 * HOUR),
        (3, "c3", t - 3 * DAY - 4 * HOUR),
    ] {
        let commit = serde_json::json!({"app": "shop", "commit_hash": format!("{c:0>40}"),
            "image_sha": image(n), "namespace": "prod", "timestamp": commit_at});
        let reply = app
            .post_signed("committime", &serde_json::to_vec(&commit).unwrap())
            .await;
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    for (n, at) in [
        (1, t - DAY),
        (2, t - 2 * DAY),
        (3, t - 3 * DAY),
        (4, t - 10 * DAY),
        (5, t - 10 * DAY + 6 * HOUR),
        (6, t - 40 * DAY),
    ] {
        deploy(app, n, at).await;
    }
    failure(app, "F1", "created", t - 3 * DAY + HOUR).await;
    failure(app, "F1", "resolved", t - 3 * DAY + 3 * HOUR).await;
    failure(app, "F2", "created", t - 10 * DAY + HOUR).await;
    failure(app, "F2", "resolved", t - 9 * DAY).await;
    let reply = app
        .post_signed(
            "deploytime",
            &deploy_body("cart", "prod", &image(7), t - 20 * DAY),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
}

/// (value, tier) of each key, in the order of the page's rows: deployment
/// frequency, lead time, change failure rate, recovery time, rework rate.
pub type Expected = [(Option<f64>, Option<&'static str>); 5];

/// The hand-computed keys of [`keys_scenario`]: (app or "all", days, keys).
pub fn keys_expected() -> Vec<(&'static str, u32, Expected)> {
    let (el, hi, me, lo) = (Some("elite"), Some("high"), Some("medium"), Some("low"));
    vec![
        // shop: D1-D3 in 7 days; D4 and D4b join in 30; D5 in 90.
        (
            "shop",
            7,
            [
                (Some(3.0 / 7.0), hi),
                (Some(14_400.0), el),
                (Some(1.0 / 3.0), lo),
                (Some(7_200.0), hi),
                (Some(0.0), el),
            ],
        ),
        (
            "shop",
            30,
            [
                (Some(5.0 / 30.0), hi),
                (Some(14_400.0), el),
                (Some(2.0 / 5.0), lo),
                (Some(45_000.0), hi),
                (Some(1.0 / 5.0), lo),
            ],
        ),
        (
            "shop",
            90,
            [
                (Some(6.0 / 90.0), me),
                (Some(14_400.0), el),
                (Some(2.0 / 6.0), lo),
                (Some(45_000.0), hi),
                (Some(1.0 / 6.0), lo),
            ],
        ),
        // cart: no deploy in 7 days (frequency low, no rates); one in 30.
        (
            "cart",
            7,
            [
                (Some(0.0), lo),
                (None, None),
                (None, None),
                (None, None),
                (None, None),
            ],
        ),
        (
            "cart",
            30,
            [
                (Some(1.0 / 30.0), me),
                (None, None),
                (Some(0.0), el),
                (None, None),
                (Some(0.0), el),
            ],
        ),
        (
            "all",
            30,
            [
                (Some(6.0 / 30.0), hi),
                (Some(14_400.0), el),
                (Some(2.0 / 6.0), lo),
                (Some(45_000.0), hi),
                (Some(1.0 / 6.0), lo),
            ],
        ),
        (
            "all",
            90,
            [
                (Some(7.0 / 90.0), me),
                (Some(14_400.0), el),
                (Some(2.0 / 7.0), lo),
                (Some(45_000.0), hi),
                (Some(1.0 / 7.0), me),
            ],
        ),
    ]
}

pub const KEY_NAMES: [&str; 5] = [
    "deployment_frequency",
    "lead_time",
    "change_failure_rate",
    "failed_deployment_recovery_time",
    "rework_rate",
];

fn check_keys(keys: &serde_json::Value, expected: &Expected, what: &str) {
    for (name, (value, tier)) in KEY_NAMES.iter().zip(expected) {
        let figure = &keys[name];
        match value {
            Some(v) => {
                let got = figure["value"].as_f64().unwrap_or(f64::NAN);
                assert!((got - v).abs() < 1e-9, "{what} {name}: {got} != {v}");
            }
            None => assert!(figure["value"].is_null(), "{what} {name}: {figure}"),
        }
        assert_eq!(figure["tier"].as_str(), *tier, "{what} {name}");
    }
}

const API_KEY: &str = "keys-test-admin-key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_api_gives_the_hand_computed_keys() {
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.admin.api_keys = vec![API_KEY.into()];
    })
    .await;
    let t = now();
    keys_scenario(&app, t).await;
    let get = |query: &str| {
        app.client
            .get(format!("{}/api/v1/keys{query}", app.metrics))
            .bearer_auth(API_KEY)
            .send()
    };

    for (who, days, expected) in keys_expected() {
        let query = match who {
            "all" => format!("?days={days}"),
            app => format!("?app={app}&days={days}"),
        };
        let reply = Reply::from(get(&query).await.unwrap()).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.text);
        assert_eq!(reply.json["days"], days);
        let keys = match who {
            "all" => &reply.json["all"]["keys"],
            _ => &reply.json["keys"],
        };
        check_keys(keys, &expected, &format!("{who} {days}d"));
    }

    // Without app: all of them and each; 30 days by default.
    let reply = Reply::from(get("").await.unwrap()).await;
    assert_eq!(reply.json["days"], 30);
    let apps: Vec<&str> = reply.json["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["cart", "shop"]);
    let shop = &reply.json["apps"][1];
    assert_eq!(shop["keys"]["deployments"], 5);
    assert_eq!(shop["keys"]["failed_deployments"], 2);
    assert_eq!(shop["keys"]["rework_deployments"], 1);
    assert_eq!(shop["keys"]["lead_times"], 3);
    assert_eq!(shop["keys"]["recoveries"], 2);
    // The trend: 13 weeks, oldest first, each over 7 days; D1-D3 in the
    // last, D4 and D4b the week before, D5 in the sixth from the end.
    let trend = shop["trend"].as_array().unwrap();
    assert_eq!(trend.len(), 13);
    let deploys: Vec<i64> = trend
        .iter()
        .map(|p| p["deployments"].as_i64().unwrap())
        .collect();
    assert_eq!(deploys, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 3]);
    assert_eq!(trend[12]["end"], reply.json["now"]);
    let week_1 = &trend[11];
    assert_eq!(week_1["change_failure_rate"]["value"], 0.5);
    assert_eq!(week_1["rework_rate"]["value"], 0.5);
    assert!(trend[0]["lead_time"]["value"].is_null());
    assert_eq!(trend[0]["deployment_frequency"]["tier"], "low");

    // days is 7, 30 or 90.
    for bad in ["?days=14", "?days=week", "?app=shop&days=0"] {
        let reply = Reply::from(get(bad).await.unwrap()).await;
        assert_eq!(reply.status, 422, "{bad}: {}", reply.text);
        assert_eq!(reply.json["field"], "days", "{bad}");
    }
    // An API key is required once one is configured.
    let reply = app.get(format!("{}/api/v1/keys?days=7", app.metrics)).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    let wrong = app
        .client
        .get(format!("{}/api/v1/keys", app.metrics))
        .bearer_auth("not-the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The page takes the same rule: without a session it sends to /login.
    let page = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/keys", app.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    app.shutdown().await;
}
