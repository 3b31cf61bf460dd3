//! The internal metrics port: `GET /metrics`, rendered from the in-memory
//! view part by part (never by querying the store), so that a scrape of many
//! series neither buffers the whole exposition nor blocks ingest; the admin
//! API (`api`), the deliveries page (`page`) and the ledger's background
//! work (`worker`).

pub mod api;
pub mod page;
pub mod worker;

use std::convert::Infallible;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use futures_util::stream;

use crate::metrics::view::View;
use crate::signature::Secret;
use crate::store::deliveries::Ledger;
use crate::store::Store;

/// What the admin routes share.
pub struct AdminState {
    pub api_keys: Vec<Secret>,
    /// Every source this process serves, for the per-source summary.
    pub source_names: Vec<String>,
    pub ledger: Ledger,
    pub store: Store,
    /// Wakes the redelivery worker when a redelivery is queued.
    pub worker_wake: Arc<tokio::sync::Notify>,
}

/// Content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Registers the metrics-port routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .configure(api::configure)
        .configure(page::configure);
}

async fn metrics(view: web::Data<Arc<View>>) -> HttpResponse {
    let view = Arc::clone(&view);
    let scrape = view.begin_scrape(crate::clock::now_seconds()).await;
    // One chunk per poll, yielding to the runtime before each, so that a
    // scrape of many series never keeps a worker from other requests.
    let body = stream::unfold((view, scrape), |(view, mut scrape)| async move {
        tokio::task::yield_now().await;
        let chunk = view.render_next(&mut scrape)?;
        Some((Ok::<_, Infallible>(chunk), (view, scrape)))
    });
    HttpResponse::Ok().content_type(TEXT_FORMAT).streaming(body)
}
