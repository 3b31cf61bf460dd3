//! The outcome rules: how a batch of deliveries becomes facts, ledger rows
//! and effects, written once over [`Sql`] for both backends and run inside
//! the transaction the backend opened. This module records deliveries
//! (dedupe by delivery, the ledger rows); `facts` applies their events;
//! `decisions` decides which deploys are rework or failed and which
//! recoveries are tied to a deploy.
//!
//! Dedupe and ordering are decided by the database, so that they hold when
//! several replicas write one PostgreSQL store at once: facts are inserted
//! with `ON CONFLICT DO NOTHING` against their identity (a second writer of
//! the same fact waits for the first one's commit, then inserts nothing),
//! and a failure's row is locked before its newer end is kept.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::sql::{DbError, Sql};
use facts::{apply_event, EventResult, Prepared};
use groups::prepare_group;

mod decisions;
mod facts;
mod groups;
#[cfg(test)]
mod tests;
use crate::events::{Event, FailureChange};
use crate::ledger::{Delivery, Disposition, Effect, Outcome, Recorded};

/// What recording one delivery produced: its outcome and committed effects.
pub type Applied = (Recorded, Vec<Effect>);

/// What a committed transaction of deliveries applied: each one's outcome
/// and effects, all the effects in order, and its change feed row (shared
/// store, when there were effects).
pub struct Committed {
    pub applied: Vec<Applied>,
    pub effects: Vec<Effect>,
    pub seq: Option<i64>,
}

/// The effects of `applied`, in order.
pub fn effects(applied: &[Applied]) -> Vec<Effect> {
    applied
        .iter()
        .flat_map(|(_, effects)| effects.iter().cloned())
        .collect()
}

pub const LEAD_TIME: &str = "lead_time";
pub const TIME_TO_RESTORE: &str = "time_to_restore";
/// Recovery time of a failure tied to a deployment (DORA's failed
/// deployment recovery time).
pub const FAILED_DEPLOYMENT_RECOVERY: &str = "failed_deployment_recovery";

/// Applies `deliveries` in order in the transaction `tx` and writes their
/// ledger rows; the caller commits. On an error other than a database
/// fault, `failed` names a delivery it came from.
///
/// The statements a batch sends do not grow with its size where they need
/// not (each is a round trip on PostgreSQL): the application locks are one
/// statement, "was this delivery recorded before" is one read for the
/// whole batch (answered from memory for deliveries of the batch itself),
/// and the ledger rows are inserted together at the end, several per
/// statement. On PostgreSQL, deploys of different applications are
/// inserted and decided together, two statements for a group of them
/// ([`prepare_group`]); everything else is applied one event at a time.
pub fn record_all(
    tx: &mut dyn Sql,
    deliveries: &[&Delivery],
    max_body_bytes: usize,
    link_window: i64,
    failed: &mut Option<usize>,
) -> Result<Vec<Applied>, DbError> {
    let not_fault = |error: DbError, index: usize, failed: &mut Option<usize>| {
        if !error.is_fault() {
            tracing::error!(error = %error, delivery_id = %deliveries[index].id, "Delivery could not be applied");
            *failed = Some(index);
        }
        error
    };
    let mut recording = Recording {
        recorded: HashSet::with_capacity(deliveries.len()),
        ask_each: tx.dialect() != super::sql::Dialect::Postgres,
        rows: Vec::with_capacity(deliveries.len()),
        current: 0,
        prepared: HashMap::new(),
    };
    if !recording.ask_each {
        recording.recorded = lock_and_recall(tx, deliveries)?;
    }
    let mut results = Vec::with_capacity(deliveries.len());
    for (index, delivery) in deliveries.iter().enumerate() {
        recording.current = index;
        if !recording.ask_each && !recording.prepared.contains_key(&index) {
            prepare_group(tx, deliveries, link_window, &mut recording)
                .map_err(|e| not_fault(e, index, failed))?;
        }
        let result = record_one(tx, delivery, max_body_bytes, link_window, &mut recording)
            .map_err(|e| not_fault(e, index, failed))?;
        results.push(result);
    }
    insert_ledger_rows(tx, &recording.rows)
        .map_err(|(error, index)| not_fault(error, index, failed))?;
    Ok(results)
}

/// What one [`record_all`] knows as it goes.
struct Recording<'d> {
    /// (source, delivery id) of the batch's deliveries known to be
    /// recorded with events: before the batch (PostgreSQL: read once for
    /// the batch) or earlier in it (their ledger rows are inserted only at
    /// the end).
    recorded: HashSet<(&'static str, &'d str)>,
    /// SQLite: the deliveries recorded before the batch are asked about one
    /// by one (a statement there is a function call, not a round trip).
    ask_each: bool,
    /// Ledger rows to insert at the end, in order.
    rows: Vec<LedgerRow<'d>>,
    /// The index in the batch of the delivery being recorded.
    current: usize,
    /// PostgreSQL: deploys already inserted with others of their group
    /// ([`prepare_group`]), by index in the batch.
    prepared: HashMap<usize, Prepared>,
}

impl<'d> Recording<'d> {
    fn seen(&self, tx: &mut dyn Sql, delivery: &Delivery) -> Result<bool, DbError> {
        if self
            .recorded
            .contains(&(delivery.source, delivery.id.as_str()))
        {
            return Ok(true);
        }
        if self.ask_each {
            return delivery_seen(tx, delivery);
        }
        Ok(false)
    }

    /// `delivery`'s row now says it was recorded (accepted, duplicate or
    /// outdated): the same delivery later in the batch is a duplicate.
    fn recorded(&mut self, delivery: &'d Delivery) {
        self.recorded
            .insert((delivery.source, delivery.id.as_str()));
    }
}

/// The text of a statement assembled from shared parts, built the first
/// time it is needed rather than on every call (the deploy path runs them
/// per event; the text is also the key of the prepared-statement caches).
fn statement(cell: &'static OnceLock<String>, build: fn() -> String) -> &'static str {
    cell.get_or_init(build)
}

/// A new ledger row, inserted by [`insert_ledger_rows`].
struct LedgerRow<'d> {
    /// Its delivery's index in the batch.
    index: usize,
    delivery: &'d Delivery,
    outcome: &'static str,
    reason: Option<&'static str>,
    detail: String,
    keys: String,
    superseded_by: Option<String>,
    body: Option<&'d [u8]>,
    apps: String,
}

/// PostgreSQL, in one statement (one round trip): takes a
/// transaction-level advisory lock for each application `deliveries` write
/// facts of, in one order, and reads which of them were recorded before.
/// Facts of one application read each other (a commit looks for its
/// deploys, a deploy for its commits and links, pushes number their
/// commits), so two replicas (or writers) writing facts of one application
/// take turns; different applications proceed in parallel. The read sees
/// what was committed when the statement began: of two replicas taking one
/// delivery at once, the second may find none, and its events then meet the
/// first one's rows (a duplicate all the same). SQLite needs neither: it
/// has one writer, and [`Recording`] asks it about each delivery.
fn lock_and_recall<'d>(
    tx: &mut dyn Sql,
    deliveries: &[&'d Delivery],
) -> Result<HashSet<(&'static str, &'d str)>, DbError> {
    let with_events: Vec<&Delivery> = deliveries
        .iter()
        .copied()
        .filter(|d| matches!(d.disposition, Disposition::Events(_)))
        .collect();
    let mut seen = HashSet::new();
    if with_events.is_empty() {
        return Ok(seen);
    }
    let mut apps: Vec<&str> = with_events
        .iter()
        .filter_map(|d| match &d.disposition {
            Disposition::Events(events) => Some(events.iter().map(|e| e.app().as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    apps.sort_unstable();
    apps.dedup();
    let pairs: Vec<(&str, &str)> = with_events
        .iter()
        .map(|d| (d.source, d.id.as_str()))
        .collect();
    let encoded =
        serde_json::to_string(&apps).and_then(|apps| Ok((apps, serde_json::to_string(&pairs)?)));
    let (apps, pairs) =
        encoded.map_err(|e| DbError::Broken(format!("a batch's names cannot be encoded: {e}")))?;
    // The locks are taken in the sorted order of the array, as every
    // writer does: no two wait on each other. Each lookup goes through the
    // delivery id's index: the lateral subquery keeps the planner from
    // hashing the whole ledger against the list (which it takes for 100
    // rows long, whatever its length), and names `locked` so that the
    // locks are taken first.
    tx.each(
        "SELECT CAST(p.n AS BIGINT) FROM \
           (SELECT count(pg_advisory_xact_lock(hashtextextended('hookgauge app ' || a, 0))) AS n \
            FROM jsonb_array_elements_text(CAST(CAST(?1 AS TEXT) AS jsonb)) AS a) AS locked \
         CROSS JOIN jsonb_array_elements(CAST(CAST(?2 AS TEXT) AS jsonb)) WITH ORDINALITY AS p(value, n) \
         CROSS JOIN LATERAL (SELECT 1 FROM deliveries AS d WHERE locked.n >= 0 \
           AND d.source = p.value->>0 AND d.delivery_id = p.value->>1 \
           AND d.outcome IN ('accepted', 'duplicate', 'outdated') LIMIT 1) AS hit",
        &[&apps, &pairs],
        &mut |r| {
            // The position (from 1) of a delivery of `with_events`.
            let n = r.get::<i64>(0)?;
            if let Some(d) = usize::try_from(n - 1).ok().and_then(|i| with_events.get(i)) {
                seen.insert((d.source, d.id.as_str()));
            }
            Ok(())
        },
    )?;
    Ok(seen)
}

/// Columns of a new ledger row, and the insert statements of 1, 2, 4 …
/// [`LEDGER_CHUNK`] rows.
const LEDGER_COLUMNS: &str =
    "delivery_id, source, event, received_at_ms, outcome, reason, detail, \
     event_keys, superseded_by, authenticated, body, headers, instance, apps";
const LEDGER_WIDTH: usize = 14;
const LEDGER_CHUNK: usize = 64;

fn ledger_insert(rows: usize) -> &'static str {
    static STATEMENTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        (0..=LEDGER_CHUNK.trailing_zeros())
            .map(|power| {
                let values: Vec<String> = (0..1usize << power)
                    .map(|row| {
                        let params: Vec<String> = (1..=LEDGER_WIDTH)
                            .map(|column| format!("?{}", row * LEDGER_WIDTH + column))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                format!(
                    "INSERT INTO deliveries ({LEDGER_COLUMNS}) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    });
    &statements[rows.trailing_zeros() as usize]
}

/// Inserts `rows` in order, in as few statements as their number allows
/// (the largest power of two that fits, again and again). On an error, the
/// index (in the batch) of the first row of the statement that failed.
fn insert_ledger_rows(tx: &mut dyn Sql, rows: &[LedgerRow<'_>]) -> Result<(), (DbError, usize)> {
    let mut done = 0;
    while done < rows.len() {
        let left = rows.len() - done;
        let take = if left >= LEDGER_CHUNK {
            LEDGER_CHUNK
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        let chunk = &rows[done..done + take];
        let authenticated: Vec<i64> = chunk
            .iter()
            .map(|r| i64::from(r.delivery.authenticated))
            .collect();
        let ids: Vec<&str> = chunk.iter().map(|r| r.delivery.id.as_str()).collect();
        let mut params: Vec<&dyn super::sql::Param> = Vec::with_capacity(take * LEDGER_WIDTH);
        for ((row, authenticated), id) in chunk.iter().zip(&authenticated).zip(&ids) {
            let d = row.delivery;
            params.extend_from_slice(&[
                id,
                &d.source,
                &d.event,
                &d.received_at_ms,
                &row.outcome,
                &row.reason,
                &row.detail,
                &row.keys,
                &row.superseded_by,
                authenticated,
                &row.body,
                &d.headers,
                &d.instance,
                &row.apps,
            ]);
        }
        tx.execute(ledger_insert(take), &params)
            .map_err(|error| (error, rows[done].index))?;
        done += take;
    }
    Ok(())
}

/// Applies one delivery; its ledger row is updated now (a queued
/// redelivery finishing) or left in `recording` to insert.
fn record_one<'d>(
    tx: &mut dyn Sql,
    delivery: &'d Delivery,
    max_body_bytes: usize,
    link_window: i64,
    recording: &mut Recording<'d>,
) -> Result<Applied, DbError> {
    let (outcome, reason, detail, keys, superseded_by, effects, keep_body) = match &delivery
        .disposition
    {
        Disposition::Rejected { reason } => (
            Outcome::Rejected,
            Some(*reason),
            "authentication failed".to_owned(),
            Vec::new(),
            None,
            Vec::new(),
            false,
        ),
        Disposition::Invalid { reason } => (
            Outcome::Invalid,
            Some(*reason),
            "the delivery failed validation".to_owned(),
            Vec::new(),
            None,
            Vec::new(),
            delivery.authenticated,
        ),
        Disposition::Ignored { reason } => (
            Outcome::Ignored,
            Some(*reason),
            format!("ignored: {reason}"),
            Vec::new(),
            None,
            Vec::new(),
            true,
        ),
        Disposition::Events(events) => {
            let keys: Vec<String> = events.iter().map(Event::identity).collect();
            if recording.seen(tx, delivery)? {
                debug_assert!(
                    !recording.prepared.contains_key(&recording.current),
                    "a deploy was inserted for a delivery recorded before"
                );
                (
                    Outcome::Duplicate,
                    Some("delivery_seen"),
                    format!("delivery {} was already recorded", delivery.id),
                    keys,
                    None,
                    Vec::new(),
                    false,
                )
            } else {
                let mut effects = Vec::new();
                let mut any_new = false;
                let mut superseded = None;
                let mut prepared = recording.prepared.remove(&recording.current);
                for event in events {
                    match apply_event(
                        tx,
                        event,
                        delivery.id.as_str(),
                        link_window,
                        prepared.take(),
                    )? {
                        EventResult::New(mut e) => {
                            any_new = true;
                            effects.append(&mut e);
                        }
                        EventResult::Duplicate => {}
                        EventResult::Outdated { superseded_by } => superseded = Some(superseded_by),
                    }
                }
                if any_new {
                    let detail = match events.as_slice() {
                        [one] => format!("{} recorded", event_noun(one)),
                        many => format!("{} events recorded", many.len()),
                    };
                    (Outcome::Accepted, None, detail, keys, None, effects, true)
                } else if let Some(by) = superseded {
                    (
                        Outcome::Outdated,
                        Some("newer_update_stored"),
                        format!("a newer update is already stored (delivery {by})"),
                        keys,
                        Some(by),
                        Vec::new(),
                        false,
                    )
                } else {
                    (
                        Outcome::Duplicate,
                        Some("event_stored"),
                        "an identical event is already stored".to_owned(),
                        keys,
                        None,
                        Vec::new(),
                        false,
                    )
                }
            }
        }
    };
    let body = delivery
        .body
        .as_ref()
        .filter(|b| keep_body && b.len() <= max_body_bytes)
        .map(|b| b.as_ref());
    let apps = match &delivery.disposition {
        Disposition::Events(events) => {
            let mut apps: Vec<&str> = events.iter().map(|e| e.app().as_str()).collect();
            apps.sort_unstable();
            apps.dedup();
            serde_json::to_string(&apps).unwrap_or_else(|_| "[]".into())
        }
        _ => "[]".to_owned(),
    };
    let keys = serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into());
    if matches!(
        outcome,
        Outcome::Accepted | Outcome::Duplicate | Outcome::Outdated
    ) {
        recording.recorded(delivery);
    }
    if let Some(row) = delivery.queued_row {
        // A redelivery finishing: its queued row takes the outcome.
        let updated = tx.execute(
            "UPDATE deliveries SET event = ?2, outcome = ?3, reason = ?4, detail = ?5, event_keys = ?6, \
             superseded_by = ?7, apps = ?8, state = 'done', error = NULL, next_attempt_ms = NULL \
             WHERE seq = ?1 AND state = 'processing'",
            &[
                &row,
                &delivery.event,
                &outcome.as_str(),
                &reason,
                &detail,
                &keys,
                &superseded_by,
                &apps,
            ],
        )?;
        if updated != 1 {
            // The row went (retention) or was finished elsewhere: nothing of
            // this delivery may commit without its ledger row.
            return Err(DbError::Broken(format!(
                "the queued ledger row {row} of delivery {} is gone or finished",
                delivery.id
            )));
        }
    } else {
        recording.rows.push(LedgerRow {
            index: recording.current,
            delivery,
            outcome: outcome.as_str(),
            reason,
            detail: detail.clone(),
            keys,
            superseded_by: superseded_by.clone(),
            body,
            apps,
        });
    }
    Ok((
        Recorded {
            outcome,
            detail,
            superseded_by,
        },
        effects,
    ))
}

fn event_noun(event: &Event) -> &'static str {
    match event {
        Event::Commit(_) => "commit",
        Event::Deploy(_) => "deploy",
        Event::Link(_) => "commit-to-image link",
        Event::Failure(f) => match f.change {
            FailureChange::Created => "failure creation",
            FailureChange::Resolved => "failure resolution",
        },
    }
}

/// The same delivery recorded before. Two replicas taking one delivery at
/// once may both find none: its events then meet each other's rows and the
/// second is recorded as a duplicate of the first.
fn delivery_seen(tx: &mut dyn Sql, delivery: &Delivery) -> Result<bool, DbError> {
    tx.exists(
        "SELECT 1 FROM deliveries WHERE source = ?1 AND delivery_id = ?2 \
         AND outcome IN ('accepted', 'duplicate', 'outdated') LIMIT 1",
        &[&delivery.source, &delivery.id.as_str()],
    )
}
