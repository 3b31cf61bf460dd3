//! Redeliveries: a ledger row queued again with its body, and its state
//! moved as the worker runs it; the outcome is written by the outcome rules
//! when it finishes.

use super::sql::{DbError, Sql};
use crate::ledger::State;

/// Why a ledger row cannot be redelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    NotFound,
    /// Its sender was never authenticated: there is nothing to trust.
    NotAuthenticated,
    /// Its body was not kept, or has been pruned.
    NoBody,
    /// It is itself a redelivery still queued or being processed.
    NotFinished,
}

impl ReplayRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayRefusal::NotFound => "not_found",
            ReplayRefusal::NotAuthenticated => "not_authenticated",
            ReplayRefusal::NoBody => "body_not_kept",
            ReplayRefusal::NotFinished => "not_finished",
        }
    }
}

/// Queues a redelivery of ledger row `original`: a new row, linked to it,
/// with its body, headers and instance, in state `queued`.
pub fn enqueue_replay(
    tx: &mut dyn Sql,
    original: i64,
    now_ms: i64,
) -> Result<Result<i64, ReplayRefusal>, DbError> {
    let found: Option<(bool, bool, String)> = tx.row(
        &format!(
            "SELECT authenticated <> 0, body IS NOT NULL, state FROM deliveries WHERE seq = ?1{}",
            tx.dialect().for_update()
        ),
        &[&original],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let refusal = match found {
        None => Some(ReplayRefusal::NotFound),
        Some((false, _, _)) => Some(ReplayRefusal::NotAuthenticated),
        Some((_, false, _)) => Some(ReplayRefusal::NoBody),
        Some((_, _, state)) if state != "done" => Some(ReplayRefusal::NotFinished),
        Some(_) => None,
    };
    if let Some(refusal) = refusal {
        return Ok(Err(refusal));
    }
    let row: i64 = tx.value(
        "INSERT INTO deliveries (delivery_id, source, event, received_at_ms, outcome, reason, detail, \
         event_keys, superseded_by, authenticated, body, headers, instance, apps, replay_of, state, \
         attempts, next_attempt_ms) \
         SELECT delivery_id, source, event, CAST(?2 AS BIGINT), '', NULL, 'queued for redelivery', '[]', \
         NULL, authenticated, body, headers, instance, '[]', seq, 'queued', 0, CAST(?2 AS BIGINT) \
         FROM deliveries WHERE seq = ?1 RETURNING seq",
        &[&original, &now_ms],
    )?;
    Ok(Ok(row))
}

/// A move of a queued row to `processing`, or to `errored` with the error
/// and the time of the next attempt (`None`: no more attempts). With
/// `claim`, only while the row has that many attempts made (compare and
/// set: of two workers that read the row, one moves it).
#[derive(Debug)]
pub struct Mark {
    pub row: i64,
    pub state: State,
    pub error: Option<String>,
    pub next_attempt_ms: Option<i64>,
    pub claim: Option<i64>,
}

/// Applies `mark`; true when the row changed.
pub fn mark(tx: &mut dyn Sql, mark: &Mark) -> Result<bool, DbError> {
    // An attempt counts when it starts: one that never finishes (a crash, a
    // panic) still uses one up.
    let attempted = i64::from(mark.state == State::Processing);
    let changed = tx.execute(
        "UPDATE deliveries SET state = ?2, error = ?3, next_attempt_ms = ?4, \
         attempts = attempts + ?5 WHERE seq = ?1 AND state <> 'done' \
         AND (CAST(?6 AS BIGINT) IS NULL OR attempts = ?6)",
        &[
            &mark.row,
            &mark.state.as_str(),
            &mark.error.as_deref(),
            &mark.next_attempt_ms,
            &attempted,
            &mark.claim,
        ],
    )?;
    Ok(changed == 1)
}
