//! What a poller writes: the facts it read, mapped by its provider's
//! plugin as the webhooks would be, committed with the stream states
//! (cursors) that produced them in one transaction; and what it reads back
//! of the store (the stored cursors, the mean time between events).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::PollError;
use super::reviews;
use super::settings::PollTarget;
use super::watermark::mark_of;
use crate::ledger::{Delivery, DeliveryId, Disposition};
use crate::metrics::Metrics;
use crate::store::deliveries::{IntervalWindow, Ledger};
use crate::store::{PollCursor, Store};

/// What a poller keeps of the store: the stream states of its repository
/// as the current stream's poll began, and the streams to let go.
pub struct Recorder {
    store: Store,
    ledger: Ledger,
    pub(in crate::poll) metrics: Arc<Metrics>,
    stored: BTreeMap<String, PollCursor>,
    /// Streams let go in this poll (deployments no longer followed), their
    /// state deleted with the next commit.
    pub(in crate::poll) forget: Vec<String>,
    /// The stored review waits were published.
    waits_restored: bool,
}

impl Recorder {
    pub fn new(store: Store, ledger: Ledger, metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            store,
            ledger,
            metrics,
            stored: Default::default(),
            forget: Vec::new(),
            waits_restored: false,
        }
    }

    /// Once, after the first [`Recorder::load`]: publishes the review waits
    /// stored in the review stream `key`, so that they are exposed from the
    /// start, before (or without) a poll of that stream.
    pub(in crate::poll) fn restore_waits(&mut self, key: String, repo: &str) {
        if std::mem::replace(&mut self.waits_restored, true) {
            return;
        }
        let stored: Option<reviews::PullsMark> = self.stored.get(&key).and_then(mark_of);
        if let Some(mark) = stored {
            mark.publish(&self.metrics, repo, 0);
        }
    }

    /// Reads the stream states whose keys start with `prefix`.
    pub(in crate::poll) async fn load(&mut self, prefix: String) -> Result<(), PollError> {
        self.stored = self
            .ledger
            .poll_cursors(prefix)
            .await?
            .into_iter()
            .map(|c| (c.stream.clone(), c))
            .collect();
        Ok(())
    }

    /// The stored state of `stream` as the poll began, or a fresh one.
    pub(in crate::poll) fn cursor(&self, stream: String) -> PollCursor {
        self.stored.get(&stream).cloned().unwrap_or(PollCursor {
            stream,
            ..PollCursor::default()
        })
    }

    /// Records what a stream read (taken from `deliveries` and `cursors`)
    /// with the streams to forget, in one transaction; `Ok(false)` when
    /// there was nothing.
    pub(in crate::poll) async fn commit(
        &mut self,
        source: &'static str,
        deliveries: &mut Vec<Delivery>,
        cursors: &mut Vec<PollCursor>,
    ) -> Result<bool, PollError> {
        if cursors.is_empty() && self.forget.is_empty() {
            deliveries.clear();
            return Ok(false);
        }
        let deliveries = std::mem::take(deliveries);
        let events: Vec<&'static str> = deliveries.iter().map(|d| d.event).collect();
        let recorded = self
            .store
            .record_polled(
                deliveries,
                std::mem::take(cursors),
                std::mem::take(&mut self.forget),
            )
            .await?;
        for (r, event) in recorded.iter().zip(events) {
            self.metrics.count_delivery(source, event, r.outcome);
        }
        tracing::debug!(source, stored = recorded.len(), "Poll recorded");
        Ok(true)
    }

    /// The mean time between `kind` events of `app` over the rolling
    /// window, from the store (webhook and polled events alike).
    pub async fn mean_interval(&self, app: Option<String>, kind: &'static str) -> Option<Duration> {
        let app = app?;
        let intervals = self
            .ledger
            .event_intervals(
                Some(app),
                Some(kind),
                IntervalWindow::DEFAULT,
                crate::clock::now_seconds(),
            )
            .await
            .ok()?;
        intervals
            .first()
            .and_then(|i| i.mean_interval_seconds)
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    }
}

/// `payload` as a webhook of `event` from `target`'s provider would be
/// recorded: mapped by its plugin with the target's source options, the
/// ledger row keeping the event header (`header`: so that it can be
/// redelivered). The delivery id is derived from `identity`: a fact read
/// again is a duplicate delivery.
pub(in crate::poll) fn mapped(
    target: &PollTarget,
    header: &'static str,
    event: &'static str,
    payload: &Value,
    identity: &[&[u8]],
) -> Delivery {
    let plugin = target.provider.plugin();
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static(header),
        HeaderValue::from_static(event),
    );
    let (label, mapping) = plugin.classify(&headers, payload, &target.options);
    let disposition = match mapping {
        Ok(mapping) => mapping.into_disposition(),
        Err(_) => Disposition::Invalid {
            reason: "invalid_api_object",
        },
    };
    let mut parts: Vec<&[u8]> = vec![b"poll", target.api_url.as_bytes(), target.repo.as_bytes()];
    parts.extend_from_slice(identity);
    let prefix = format!("{}.", target.provider.name());
    Delivery {
        id: DeliveryId::derived(&parts),
        source: plugin.source(),
        event: label,
        received_at_ms: crate::clock::now_seconds() * 1000,
        authenticated: true,
        body: serde_json::to_vec(payload).ok().map(Bytes::from),
        disposition,
        headers: Some(json!({header: event, "x-hookgauge-poll": target.api_url}).to_string()),
        instance: target.source.strip_prefix(&prefix).map(str::to_owned),
        queued_row: None,
    }
}
