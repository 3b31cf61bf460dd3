//! A real SQLite store in a temporary directory, reporting its commits to
//! a fresh view: what the stepped pollers of `polling.rs` write into, and
//! the poll bench too (`benches/poll.rs` includes this file).

use std::sync::Arc;
use std::time::Duration;

use hookgauge::metrics::view::{View, Windows};
use hookgauge::metrics::Metrics;
use hookgauge::store::deliveries::Ledger;
use hookgauge::store::{CommitSink, Location, Store, StoreConfig, Synchronous};

/// The store, its ledger, and the view and metrics it reports to.
pub struct EmbeddedStore {
    pub metrics: Arc<Metrics>,
    pub view: Arc<View>,
    pub store: Store,
    pub ledger: Ledger,
    /// Removed when dropped: kept as long as the store.
    pub dir: tempfile::TempDir,
}

impl EmbeddedStore {
    /// Opens the store, its view keeping 30 days of commits and deploys.
    pub fn start() -> EmbeddedStore {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let windows = Windows {
            commit: Duration::from_secs(30 * 86_400),
            exposure: Duration::from_secs(30 * 86_400),
        };
        let view = Arc::new(View::new(Arc::clone(&metrics), windows));
        let location = Location::Sqlite(dir.path().join("hookgauge.db"));
        let (store, opened) = Store::start(
            StoreConfig {
                location: location.clone(),
                synchronous: Synchronous::Normal,
                busy_timeout: Duration::from_secs(5),
                max_body_bytes: 64 * 1024,
                max_unauthenticated_rows: 10_000,
                windows: windows.into(),
                failure_link_window: Duration::from_secs(86_400),
            },
            Arc::clone(&view) as Arc<dyn CommitSink>,
        );
        opened.expect("the store opens");
        EmbeddedStore {
            metrics,
            view,
            store,
            ledger: Ledger::new(&location),
            dir,
        }
    }
}
