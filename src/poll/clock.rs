//! The pollers' clock: the system's, or a simulated one that moves only
//! when it is told to (or sleeps), for the benchmark and the tests that step
//! pollers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The pollers' clock for their requests' pacing and rate-limit
/// arithmetic: the system's, or a simulated one that a benchmark moves and
/// that sleeps by moving itself (POLLING.md §7: the fake shares a virtual
/// clock with the poller, no sleeps).
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// A simulated clock at `epoch_ms` (milliseconds since the epoch).
    pub fn simulated(epoch_ms: i64) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(epoch_ms))))
    }

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => crate::clock::now_ms(),
            Some(ms) => ms.load(Ordering::SeqCst),
        }
    }

    pub fn now_seconds(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves a simulated clock forward to `epoch_ms` (never back).
    pub fn advance_to(&self, epoch_ms: i64) {
        if let Some(ms) = &self.0 {
            ms.fetch_max(epoch_ms, Ordering::SeqCst);
        }
    }

    pub(in crate::poll) async fn sleep(&self, d: Duration) {
        match &self.0 {
            None => tokio::time::sleep(d).await,
            Some(ms) => {
                ms.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
            }
        }
    }
}
