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

async fn deploy(app: &TestApp, n: u64, time: i64) {
    let reply = app
        .post_signed("deploytime", &deploy_body("shop", "prod", &image(n), time))
        .await;
    assert_eq!(reply.status, 202, "deploy {n}: {}", reply.text);
    assert_eq!(reply.outcome(), "accepted", "deploy {n}");
}

async fn failure(app: &TestApp, id: &str, event: &str, time: i64) {
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
