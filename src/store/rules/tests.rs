//! The outcome rules on a migrated in-memory SQLite database: what a batch
//! of deliveries records (outcome, reason, ledger rows in order) and the
//! effects it reports. The same rules run on PostgreSQL; the integration
//! suite runs them there too (`HOOKGAUGE_TEST_STORE=postgres`).

use rusqlite::Connection;

use super::{record_all, Applied};
use crate::events::{
    App, Commit, CommitSha, Deploy, Event, EventTime, Failure, FailureChange, ImageSha,
    IssueNumber, Namespace,
};
use crate::ledger::{Delivery, DeliveryId, Disposition, Effect, Outcome};
use crate::store::sql::{DbError, Lite, Sql};

const WINDOW: i64 = 3600;
const T: i64 = 1_750_000_000;

fn database() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    crate::store::sqlite::migrate(&conn).unwrap();
    conn
}

fn image(n: u8) -> ImageSha {
    ImageSha::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
}

fn time(seconds: i64) -> EventTime {
    EventTime::from_epoch_seconds(seconds).unwrap()
}

fn deploy(app: &str, image_n: u8, at: i64) -> Event {
    Event::Deploy(Deploy {
        app: App::parse(app).unwrap(),
        namespace: Namespace::parse("prod").unwrap(),
        image_sha: Some(image(image_n)),
        commit: None,
        environment: None,
        rework: false,
        time: time(at),
    })
}

fn commit(app: &str, sha: &str, image_n: u8, at: i64) -> Event {
    Event::Commit(Commit {
        app: App::parse(app).unwrap(),
        commit: CommitSha::parse(sha).unwrap(),
        image_sha: Some(image(image_n)),
        namespace: None,
        commit_link: None,
        time: time(at),
        pushed: false,
    })
}

fn failure(app: &str, issue: &str, change: FailureChange, at: i64) -> Event {
    Event::Failure(Failure {
        app: App::parse(app).unwrap(),
        issue_number: IssueNumber::parse(issue).unwrap(),
        change,
        time: time(at),
    })
}

fn delivery(id: &str, disposition: Disposition) -> Delivery {
    Delivery {
        id: DeliveryId::from_header(id).unwrap(),
        source: "pelorus",
        event: "deploytime",
        received_at_ms: T * 1000,
        authenticated: true,
        body: Some(bytes::Bytes::from_static(b"{}")),
        disposition,
        headers: None,
        instance: None,
        queued_row: None,
    }
}

fn events(id: &str, events: Vec<Event>) -> Delivery {
    delivery(id, Disposition::Events(events))
}

/// Records `deliveries` as one batch in one transaction, committed.
fn record(conn: &mut Connection, deliveries: &[Delivery]) -> Vec<Applied> {
    let tx = conn.transaction().unwrap();
    let batch: Vec<&Delivery> = deliveries.iter().collect();
    let applied = record_all(&mut Lite(&tx), &batch, 1 << 20, WINDOW, &mut None).unwrap();
    tx.commit().unwrap();
    applied
}

/// The ledger in insertion order: (delivery id, outcome, reason).
fn ledger(conn: &Connection) -> Vec<(String, String, Option<String>)> {
    (&mut Lite(conn) as &mut dyn Sql)
        .rows(
            "SELECT delivery_id, outcome, reason FROM deliveries ORDER BY seq",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

fn outcomes(applied: &[Applied]) -> Vec<Outcome> {
    applied.iter().map(|(r, _)| r.outcome).collect()
}

#[test]
fn a_delivery_is_accepted_once_and_a_repeat_in_the_same_batch_or_later_is_a_duplicate() {
    let mut conn = database();
    let first = events("d-1", vec![deploy("shop", 1, T)]);
    let applied = record(&mut conn, &[first.clone(), first.clone()]);
    assert_eq!(outcomes(&applied), [Outcome::Accepted, Outcome::Duplicate]);
    assert!(matches!(applied[0].1.as_slice(), [Effect::Deploy { time, .. }] if *time == T));
    assert!(applied[1].1.is_empty(), "a duplicate has no effect");

    // Later, in another batch: the same delivery, and the same deploy
    // reported by another delivery.
    let again = record(
        &mut conn,
        &[first, events("d-2", vec![deploy("shop", 1, T)])],
    );
    assert_eq!(outcomes(&again), [Outcome::Duplicate, Outcome::Duplicate]);
    assert_eq!(
        ledger(&conn)
            .into_iter()
            .map(|(_, _, reason)| reason)
            .collect::<Vec<_>>(),
        [
            None,
            Some("delivery_seen".to_owned()),
            Some("delivery_seen".to_owned()),
            Some("event_stored".to_owned()),
        ]
    );
}

#[test]
fn ledger_rows_of_a_large_batch_are_all_written_in_the_batch_order() {
    let mut conn = database();
    // 64 + 4 + 2 + 1 rows: every statement size of the ledger insert.
    let deliveries: Vec<Delivery> = (0..71u8)
        .map(|n| match n % 5 {
            0 => delivery(
                &format!("r-{n}"),
                Disposition::Rejected {
                    reason: "bad_signature",
                },
            ),
            1 => delivery(&format!("i-{n}"), Disposition::Ignored { reason: "ping" }),
            _ => events(&format!("e-{n}"), vec![deploy("shop", n, T + i64::from(n))]),
        })
        .collect();
    let applied = record(&mut conn, &deliveries);
    assert_eq!(applied.len(), 71);
    let rows = ledger(&conn);
    let expected: Vec<(String, String)> = deliveries
        .iter()
        .zip(&applied)
        .map(|(d, (r, _))| (d.id.to_string(), r.outcome.as_str().to_owned()))
        .collect();
    let written: Vec<(String, String)> = rows.into_iter().map(|(id, o, _)| (id, o)).collect();
    assert_eq!(written, expected);
    assert!(written.iter().any(|(_, o)| o == "rejected"));
    assert!(written.iter().any(|(_, o)| o == "ignored"));
}

#[test]
fn a_deploy_of_a_built_image_gives_its_commit_a_lead_time() {
    let mut conn = database();
    record(
        &mut conn,
        &[events("c", vec![commit("shop", "abc1234", 7, T - 600)])],
    );
    let applied = record(&mut conn, &[events("d", vec![deploy("shop", 7, T)])]);
    let lead: Vec<f64> = applied[0]
        .1
        .iter()
        .filter_map(|e| match e {
            Effect::LeadTime { seconds, .. } => Some(*seconds),
            _ => None,
        })
        .collect();
    assert_eq!(lead, [600.0]);
    // A second deploy of the same image does not observe it again.
    let later = record(&mut conn, &[events("d2", vec![deploy("shop", 7, T + 60)])]);
    assert!(!later[0]
        .1
        .iter()
        .any(|e| matches!(e, Effect::LeadTime { .. })));
}

#[test]
fn a_failure_after_a_deploy_marks_it_failed_and_its_resolution_is_its_recovery() {
    let mut conn = database();
    record(&mut conn, &[events("d", vec![deploy("shop", 1, T)])]);
    let created = record(
        &mut conn,
        &[events(
            "f1",
            vec![failure("shop", "INC-1", FailureChange::Created, T + 120)],
        )],
    );
    assert!(created[0]
        .1
        .iter()
        .any(|e| matches!(e, Effect::DeployFailed { failed: true, .. })));
    let resolved = record(
        &mut conn,
        &[events(
            "f2",
            vec![failure("shop", "INC-1", FailureChange::Resolved, T + 420)],
        )],
    );
    assert!(resolved[0].1.iter().any(|e| matches!(
        e,
        Effect::FailedDeploymentRecovery { seconds, .. } if *seconds == 300.0
    )));
}

#[test]
fn a_deploy_while_a_failure_is_open_is_rework_and_a_later_deploy_is_not_failed() {
    let mut conn = database();
    record(
        &mut conn,
        &[events(
            "f",
            vec![failure("shop", "INC-2", FailureChange::Created, T)],
        )],
    );
    let applied = record(&mut conn, &[events("d", vec![deploy("shop", 1, T + 60)])]);
    assert!(applied[0]
        .1
        .iter()
        .any(|e| matches!(e, Effect::Rework { rework: true, .. })));
    // Failures created before a deploy never mark it failed.
    assert!(!applied[0]
        .1
        .iter()
        .any(|e| matches!(e, Effect::DeployFailed { .. })));
}

#[test]
fn an_older_update_of_a_failure_is_outdated_and_names_the_delivery_kept() {
    let mut conn = database();
    record(
        &mut conn,
        &[events(
            "new",
            vec![failure("shop", "INC-3", FailureChange::Created, T + 10)],
        )],
    );
    let applied = record(
        &mut conn,
        &[events(
            "old",
            vec![failure("shop", "INC-3", FailureChange::Created, T)],
        )],
    );
    assert_eq!(outcomes(&applied), [Outcome::Outdated]);
    assert_eq!(applied[0].0.superseded_by.as_deref(), Some("new"));
}

#[test]
fn a_delivery_that_cannot_be_applied_names_its_place_in_the_batch() {
    let mut conn = database();
    let tx = conn.transaction().unwrap();
    // A redelivery whose queued row does not exist: nothing of it may commit.
    let mut lost = events("q", vec![deploy("shop", 2, T)]);
    lost.queued_row = Some(999);
    let good = events("g", vec![deploy("shop", 1, T)]);
    let mut failed = None;
    let result = record_all(
        &mut Lite(&tx),
        &[&good, &lost],
        1 << 20,
        WINDOW,
        &mut failed,
    );
    assert!(matches!(result, Err(DbError::Broken(_))), "{result:?}");
    assert_eq!(failed, Some(1));
}

#[test]
fn a_late_deploy_between_a_deploy_and_its_failure_takes_the_failure_over() {
    let mut conn = database();
    record(
        &mut conn,
        &[
            events("older", vec![deploy("shop", 1, T - 50)]),
            events("a", vec![deploy("shop", 2, T)]),
            events("a-twin", vec![deploy("shop", 3, T)]),
        ],
    );
    let failed = record(
        &mut conn,
        &[events(
            "f",
            vec![failure("shop", "INC-4", FailureChange::Created, T + 100)],
        )],
    );
    let marked = |applied: &[Applied], to: bool| {
        applied[0]
            .1
            .iter()
            .filter(|e| matches!(e, Effect::DeployFailed { failed, .. } if *failed == to))
            .count()
    };
    assert_eq!(marked(&failed, true), 2, "both deploys of T: {failed:?}");
    // A deploy at T + 50 reported late now stands between them and the
    // failure: both are failed no more, it is; the older one was never.
    let late = record(
        &mut conn,
        &[events("late", vec![deploy("shop", 4, T + 50)])],
    );
    assert_eq!(marked(&late, false), 2, "{late:?}");
    assert_eq!(marked(&late, true), 1, "{late:?}");
    let failed_now: Vec<i64> = (&mut Lite(&conn) as &mut dyn Sql)
        .rows(
            "SELECT time FROM deploys WHERE failed <> 0 ORDER BY time",
            &[],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failed_now, [T + 50]);
}
