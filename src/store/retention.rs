//! Retention: bounded steps that drop old bodies, ledger rows and facts,
//! and the cap on unauthenticated ledger rows.

use super::sql::{DbError, Sql};

/// How long ledger rows, bodies and events are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub body_days: u32,
    pub ledger_days: u32,
    /// 0: events are kept for ever.
    pub events_days: u32,
    /// 0: no cap on the bodies' total size.
    pub max_body_bytes_total: u64,
}

/// What one retention step removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub bodies: usize,
    pub rows: usize,
    pub events: usize,
    /// A limit was reached: another step has more to do.
    pub more: bool,
}

/// One bounded step of retention: at most `batch` bodies dropped and `batch`
/// rows deleted per kind. Each step seeks to its cutoff through an index and
/// touches only what it removes; `body_excess` (bytes of bodies beyond the
/// total cap, measured by the caller on a read connection) drops the oldest
/// bodies too. `watermark`: rows up to it have no body left to drop; moved
/// on by the step.
pub fn prune(
    tx: &mut dyn Sql,
    policy: &RetentionPolicy,
    now_ms: i64,
    batch: u32,
    body_excess: u64,
    watermark: &mut i64,
) -> Result<Pruned, DbError> {
    let day_ms = 86_400_000i64;
    let limit = i64::from(batch);
    // The newest row older than a cutoff, found with one seek.
    let last_before = |tx: &mut dyn Sql, cutoff: i64| -> Result<i64, DbError> {
        Ok(tx
            .row(
                "SELECT seq FROM deliveries INDEXED BY deliveries_by_received_at \
                 WHERE received_at_ms < ?1 ORDER BY received_at_ms DESC LIMIT 1",
                &[&cutoff],
                |r| r.get::<i64>(0),
            )?
            .unwrap_or(0))
    };
    // Bodies of finished rows (not of redeliveries still to run), from the
    // watermark up: rows below it have none left to drop, so no index on
    // bodies is needed (one would cost every insert).
    let body_seq = last_before(tx, now_ms - policy.body_days as i64 * day_ms)?;
    let candidates: Vec<(i64, bool, bool)> = tx.rows(
        "SELECT seq, body IS NOT NULL, next_attempt_ms IS NOT NULL FROM deliveries \
         WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        &[&*watermark, &body_seq, &limit],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let scanned_all = candidates.len() >= batch as usize;
    let mut reached = *watermark;
    let mut held = false;
    let mut bodies = 0;
    const DROP_BODY: &str = "UPDATE deliveries SET body = NULL WHERE seq = ?1";
    for (seq, has_body, pending) in candidates {
        if pending {
            // Kept until it is done; the watermark waits for it.
            held = true;
            continue;
        }
        if has_body {
            tx.execute(DROP_BODY, &[&seq])?;
            bodies += 1;
        }
        if !held {
            reached = seq;
        }
    }
    if body_excess > 0 && bodies < batch as usize {
        let oldest: Vec<(i64, i64)> = tx.rows(
            "SELECT seq, CAST(length(body) AS BIGINT) FROM deliveries WHERE seq > ?1 \
             AND body IS NOT NULL AND next_attempt_ms IS NULL ORDER BY seq LIMIT ?2",
            &[&reached, &limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut excess = body_excess;
        for (seq, len) in oldest {
            if excess == 0 {
                break;
            }
            tx.execute(DROP_BODY, &[&seq])?;
            excess = excess.saturating_sub(len as u64);
            bodies += 1;
        }
    }
    let rows_seq = last_before(tx, now_ms - policy.ledger_days as i64 * day_ms)?;
    let rows = tx.execute(
        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries \
         WHERE seq <= ?1 AND next_attempt_ms IS NULL ORDER BY seq LIMIT ?2)",
        &[&rows_seq, &limit],
    )?;
    let mut events = 0;
    if policy.events_days > 0 {
        let cutoff = now_ms / 1000 - policy.events_days as i64 * 86_400;
        for table in ["commits", "deploys"] {
            // Both tables are keyed by their identity; their time index
            // bounds the step (rows sharing the last second go too).
            events += tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE time IN (SELECT time FROM {table} WHERE time < ?1 \
                     ORDER BY time LIMIT ?2)"
                ),
                &[&cutoff, &limit],
            )?;
        }
        // Failures go once resolved before the cutoff; open ones stay.
        events += tx.execute(
            "DELETE FROM failures WHERE (app, issue_number) IN (SELECT app, issue_number FROM failures \
             WHERE resolved IS NOT NULL AND resolved < ?1 AND coalesce(created, 0) < ?1 LIMIT ?2)",
            &[&cutoff, &limit],
        )?;
    }
    *watermark = reached;
    let limit = batch as usize;
    Ok(Pruned {
        bodies,
        rows,
        events,
        more: scanned_all || rows >= limit || events >= limit,
    })
}

/// Drops the oldest unauthenticated rows beyond `keep`: `excess` of them
/// when the caller counts them itself, else every one past the newest `keep`.
pub fn cap_unauthenticated(
    tx: &mut dyn Sql,
    excess: Option<u64>,
    keep: u64,
) -> Result<usize, DbError> {
    match excess {
        Some(0) => Ok(0),
        Some(excess) => tx.execute(
            "DELETE FROM deliveries WHERE seq IN \
             (SELECT seq FROM deliveries WHERE authenticated = 0 ORDER BY seq LIMIT ?1)",
            &[&(excess as i64)],
        ),
        None => tx.execute(
            &format!(
                "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries \
                 WHERE authenticated = 0 ORDER BY seq DESC LIMIT {} OFFSET ?1)",
                tx.dialect().no_limit()
            ),
            &[&(keep as i64)],
        ),
    }
}
