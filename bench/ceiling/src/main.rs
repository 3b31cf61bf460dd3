//! The HTTP ceiling of this machine for scripts/bench: the same framework
//! and the same request as hookgauge's Pelorus endpoint, minus everything
//! hookgauge does (signature check, parsing, the store). Reads the whole
//! body, answers 202 with a small JSON body; `/readyz` answers 200.
//!
//! Usage: hookgauge-ceiling <ingest address>

use actix_web::{web, App, HttpResponse, HttpServer};

async fn webhook(body: web::Bytes) -> HttpResponse {
    HttpResponse::Accepted()
        .content_type("application/json")
        .body(format!(
            "{{\"outcome\":\"accepted\",\"bytes\":{}}}",
            body.len()
        ))
}

async fn ready() -> HttpResponse {
    HttpResponse::Ok().body("ready")
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    HttpServer::new(|| {
        App::new()
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .route("/pelorus/webhook", web::post().to(webhook))
            .route("/readyz", web::get().to(ready))
    })
    .bind(addr)?
    .run()
    .await
}
