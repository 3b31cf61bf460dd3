//! Background work on the ledger: the redelivery worker (queued rows run
//! through their source again, errored ones retried with backoff),
//! retention (bounded prune steps, then the size self-metrics) and the
//! event-interval gauges.
//!
//! One worker processes redeliveries one at a time, oldest due first, so
//! redeliveries never race each other; a retried one runs after those queued
//! while it waited. Each redelivery's events are applied by the store's
//! usual rules (event time decides `outdated`), whatever the order.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Notify;

use crate::config::RetentionSettings;
use crate::ingest::{self, IngestState};
use crate::ledger::{Delivery, DeliveryId, State};
use crate::metrics::view::{Interval, View};
use crate::metrics::Metrics;
use crate::plugins::pelorus;
use crate::store::deliveries::{IntervalWindow, Ledger, Pending};
use crate::store::Store;

/// Attempts a redelivery gets before it stays `errored`.
pub const MAX_ATTEMPTS: i64 = 8;
/// How often due retries are looked for when nothing wakes the worker.
const POLL: Duration = Duration::from_secs(1);
/// Rows removed per kind in one retention step.
const PRUNE_BATCH: u32 = 500;

/// Wait before retry `attempt` (1-based): 2 s doubling, at most 5 minutes.
pub fn backoff_ms(attempt: i64) -> i64 {
    let exponent = attempt.clamp(1, 16) as u32 - 1;
    (2_000i64 << exponent).min(300_000)
}

/// Runs redeliveries until the task is aborted.
pub async fn redeliveries(
    ledger: Ledger,
    store: Store,
    ingest: Arc<IngestState>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
) {
    let mut store_down = 0u32;
    loop {
        let due: Vec<Pending> = ledger
            .pending(crate::clock::now_ms(), 16)
            .await
            .unwrap_or_default();
        let idle = due.is_empty();
        let mut faulted = false;
        for pending in due {
            if process(pending, &store, &ingest, &metrics).await.is_err() {
                faulted = true;
                break;
            }
        }
        if faulted {
            // The store cannot be written: wait, longer each time.
            store_down = (store_down + 1).min(6);
            tokio::time::sleep(POLL * (1 << store_down)).await;
        } else {
            store_down = 0;
            if idle {
                let _ = tokio::time::timeout(POLL, wake.notified()).await;
            }
        }
    }
}

fn header_map(headers: &serde_json::Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Some(object) = headers.as_object() {
        for (name, value) in object {
            let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(name.as_bytes()),
                value.as_str().map(HeaderValue::from_str),
            ) else {
                continue;
            };
            map.insert(name, value);
        }
    }
    map
}

/// Runs one redelivery. `Err` only when the store could not be written.
async fn process(
    mut pending: Pending,
    store: &Store,
    ingest: &IngestState,
    metrics: &Metrics,
) -> Result<(), crate::store::StoreError> {
    if pending.attempts >= MAX_ATTEMPTS {
        // Every attempt was used, the last one without an answer (a crash).
        let error = format!("gave up after {MAX_ATTEMPTS} attempts");
        return store
            .mark(pending.row, State::Errored, Some(error), None)
            .await;
    }
    // Claimed: should this attempt never finish, it is taken up again in a
    // while, with one attempt fewer left.
    let retry_at = crate::clock::now_ms() + backoff_ms(pending.attempts + 1);
    if !store.claim(pending.row, pending.attempts, retry_at).await? {
        // Another worker (a replica that held the background work just
        // before) claimed it since it was read.
        return Ok(());
    }
    let source = ingest
        .plugins
        .iter()
        .map(|p| p.source())
        .chain([pelorus::SOURCE])
        .find(|s| *s == pending.source);
    let headers = header_map(&pending.headers);
    let replayed = match source {
        None => Err(format!("source {} is not known any more", pending.source)),
        Some(source) => {
            let body = bytes::Bytes::from(std::mem::take(&mut pending.body));
            let run = std::panic::AssertUnwindSafe(|| {
                ingest::replay(ingest, source, pending.instance.as_deref(), &headers, body)
            });
            match std::panic::catch_unwind(run) {
                Ok(replayed) => replayed.map(|(event, disposition)| (source, event, disposition)),
                Err(_) => Err("the source's mapping failed unexpectedly".to_owned()),
            }
        }
    };
    let result = match replayed {
        Ok((source, event, disposition)) => {
            let delivery = Delivery {
                id: DeliveryId::from_header(&pending.delivery_id)
                    .unwrap_or_else(|| DeliveryId::derived(&[pending.delivery_id.as_bytes()])),
                source,
                event,
                received_at_ms: crate::clock::now_ms(),
                authenticated: true,
                body: None,
                disposition,
                headers: None,
                instance: pending.instance.clone(),
                queued_row: Some(pending.row),
            };
            match store.record(delivery).await {
                Ok(recorded) => {
                    tracing::info!(
                        row = pending.row,
                        outcome = recorded.outcome.as_str(),
                        "Redelivery processed"
                    );
                    Ok(())
                }
                Err(error) => Err(error.to_string()),
            }
        }
        Err(why) => Err(why),
    };
    match result {
        Ok(()) => {
            metrics.redeliveries.with_label_values(&["done"]).inc();
            Ok(())
        }
        Err(why) => {
            metrics.redeliveries.with_label_values(&["errored"]).inc();
            let attempt = pending.attempts + 1;
            let next = (attempt < MAX_ATTEMPTS).then_some(retry_at);
            tracing::warn!(row = pending.row, attempt, error = %why, "Redelivery failed");
            store
                .mark(pending.row, State::Errored, Some(why), next)
                .await
        }
    }
}

/// Runs retention every `settings.interval` until the task is aborted.
pub async fn retention(
    ledger: Ledger,
    store: Store,
    metrics: Arc<Metrics>,
    settings: RetentionSettings,
) {
    let mut interval = tokio::time::interval(settings.interval);
    loop {
        interval.tick().await;
        // The bodies' total, measured on a read connection, not under the
        // write lock.
        let excess = match ledger.size().await {
            Ok(size) => {
                (size.body_bytes as u64).saturating_sub(settings.policy.max_body_bytes_total)
            }
            Err(_) => 0,
        };
        let mut excess = if settings.policy.max_body_bytes_total == 0 {
            0
        } else {
            excess
        };
        loop {
            let step = store
                .prune(
                    settings.policy.clone(),
                    crate::clock::now_ms(),
                    PRUNE_BATCH,
                    excess,
                )
                .await;
            // What is left over the cap is measured again at the next run.
            excess = 0;
            match step {
                Ok(pruned) => {
                    metrics
                        .store_pruned
                        .with_label_values(&["bodies"])
                        .inc_by(pruned.bodies as u64);
                    metrics
                        .store_pruned
                        .with_label_values(&["rows"])
                        .inc_by(pruned.rows as u64);
                    metrics
                        .store_pruned
                        .with_label_values(&["events"])
                        .inc_by(pruned.events as u64);
                    if !pruned.more {
                        metrics
                            .store_last_prune
                            .set(crate::clock::now_ms() as f64 / 1000.0);
                        break;
                    }
                    // Let deliveries queued meanwhile go first.
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "Retention step failed; trying at the next run"
                    );
                    break;
                }
            }
        }
        if let Ok(size) = ledger.size().await {
            metrics.store_rows.set(size.rows);
            metrics.store_body_bytes.set(size.body_bytes);
            metrics.deliveries_pending.set(size.pending);
        }
    }
}

/// `hookgauge_event_interval_seconds` and `_events`, recomputed from the
/// store and handed to the view whole; series of an application and kind
/// that left the window go.
pub struct IntervalGauges {
    ledger: Ledger,
    view: Arc<View>,
}

impl IntervalGauges {
    pub fn new(ledger: Ledger, view: Arc<View>) -> Self {
        IntervalGauges { ledger, view }
    }

    /// One recomputation. Called once before the ports open, so that the
    /// gauges are there from the first scrape after a restart.
    pub async fn refresh(&mut self) {
        let now = crate::clock::now_ms() / 1000;
        let intervals = match self
            .ledger
            .event_intervals(None, None, IntervalWindow::DEFAULT, now)
            .await
        {
            Ok(intervals) => intervals,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "Event intervals not refreshed: store unavailable"
                );
                return;
            }
        };
        self.view.set_intervals(
            intervals
                .into_iter()
                .map(|i| Interval {
                    repo: i.repo.into_boxed_str(),
                    kind: i.kind,
                    events: i.events,
                    mean_seconds: i.mean_interval_seconds,
                })
                .collect(),
        );
    }

    /// Recomputes every `every` until the task is aborted.
    pub async fn run(mut self, every: Duration) {
        let start = tokio::time::Instant::now() + every;
        let mut interval = tokio::time::interval_at(start, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.refresh().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(2), 4_000);
        assert_eq!(backoff_ms(7), 128_000);
        assert_eq!(backoff_ms(8), 256_000);
        assert_eq!(backoff_ms(20), 300_000);
    }
}
