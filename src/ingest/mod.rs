//! The public ingest port: webhook routes, `/healthz` and `/readyz`.
//!
//! The shared path owns what every source needs once: the body cap enforced
//! on the bytes actually read, authentication on the raw bytes before any
//! parsing, the ledger row, the commit, and the answer — 2xx only after the
//! store has committed. Nothing on this port reads or reveals stored data.

mod error;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{json, Value};

pub use error::{IngestError, MAX_REQUEST_HEADERS, MAX_REQUEST_HEADER_BYTES, RETRY_AFTER_SECONDS};

use crate::clock::{now_ms, now_seconds};
use crate::config::{PelorusSettings, SourceInstance};
use crate::ledger::{Delivery, DeliveryId, Disposition, Outcome, Recorded};
use crate::metrics::Metrics;
use crate::plugins::pelorus::{self, PelorusEvent};
use crate::plugins::{payload, Plugin};
use crate::signature::{self, AuthFailure, SignatureError};
use crate::store::{Store, StoreError};

/// How long `/readyz` waits for the store before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of the ingest handlers.
pub struct IngestState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub pelorus: PelorusSettings,
    /// Every source this process knows (an unknown one is a 404).
    pub plugins: Vec<&'static dyn Plugin>,
    /// Ledger rows for unauthenticated requests, per second.
    pub unauthenticated_rows: RateLimit,
    /// Native source instances, enabled or not.
    pub sources: Vec<SourceInstance>,
}

/// Registers the ingest routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/pelorus/webhook", web::post().to(pelorus_webhook))
        .route("/hooks/{source}", web::post().to(native_webhook))
        .route("/hooks/{source}/{name}", web::post().to(native_webhook))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Answer for paths and methods that do not exist.
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "not_found", "detail": "no such endpoint"}))
}

/// Alive, unless this replica's metric view fell behind the shared store
/// beyond repair (see `Store::view_stale`): a restart rebuilds it.
async fn healthz(state: web::Data<IngestState>) -> HttpResponse {
    if state.store.view_stale() {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "unavailable",
            "reason": "view_behind_store",
            "detail": "this replica missed changes the store no longer keeps; restart it to rebuild its metrics",
        }));
    }
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<IngestState>) -> HttpResponse {
    match tokio::time::timeout(READY_TIMEOUT, state.store.check_writable()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Ok(Err(error)) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "Not ready: store cannot be written"
            );
            HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()))
                .json(json!({"status": "unavailable", "reason": format!("store_{}", error.kind())}))
        }
        Err(_) => HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()))
            .json(json!({"status": "unavailable", "reason": "store_timeout"})),
    }
}

/// Reads the body, refusing it as soon as it is known to exceed `limit`
/// bytes: from `Content-Length` before reading, else while reading (chunked
/// bodies, lying lengths). The rest of an oversized body is never buffered.
async fn read_body(
    headers: &HeaderMap,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngestError::TooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| IngestError::BodyRead)?;
            if body.len() + chunk.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    // A body trickled byte by byte (slow loris) holds a connection and a
    // buffer: every sender delivers well within this.
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(IngestError::BodyTimeout {
                seconds: BODY_READ_TIMEOUT.as_secs(),
            })
        }
    }
    Ok(body.freeze())
}

/// The longest a request body may take to arrive.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Strict HMAC over the raw body, then (if enabled) Pelorus' lenient check.
fn authenticate_pelorus(
    settings: &PelorusSettings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SignatureError> {
    if settings.secrets.is_empty() {
        return Ok(());
    }
    let value = signature::single_header(headers, pelorus::SIGNATURE_HEADER)?
        .ok_or(SignatureError::Missing)?;
    let mac = signature::parse_sha256_header(value)?;
    if signature::any_secret_matches(&settings.secrets, body, &mac) {
        return Ok(());
    }
    if settings.lenient_signatures
        && signature::pelorus_lenient_matches(&settings.secrets, body, &mac)
    {
        tracing::debug!("Pelorus delivery authenticated by the lenient check");
        return Ok(());
    }
    Err(SignatureError::Mismatch)
}

/// A delivery refused before it reached the store's outcome rules.
struct Refusal {
    error: IngestError,
    event: &'static str,
    /// The body, once read; kept in the ledger only for authenticated senders.
    body: Option<Bytes>,
    authenticated: bool,
}

impl Refusal {
    fn before_auth(error: IngestError, event: &'static str, body: Option<Bytes>) -> Self {
        Refusal {
            error,
            event,
            body,
            authenticated: false,
        }
    }

    /// Refused after authentication: the body is kept for replay.
    fn after_auth(error: IngestError, event: &'static str, body: Bytes) -> Self {
        Refusal {
            error,
            event,
            body: Some(body),
            authenticated: true,
        }
    }
}

/// What a Pelorus delivery turned out to be after every check passed.
enum Checked {
    Ping,
    Event {
        label: &'static str,
        event: crate::events::Event,
        body: Bytes,
    },
}

/// Runs Pelorus' checks in Pelorus' order: size, then `User-Agent`, then the
/// event header and the signature, then the payload.
async fn check_pelorus(
    settings: &PelorusSettings,
    headers: &HeaderMap,
    payload: web::Payload,
) -> Result<Checked, Refusal> {
    let body = read_body(headers, payload, pelorus::MAX_BODY_BYTES)
        .await
        .map_err(|error| Refusal::before_auth(error, "unknown", None))?;
    if !pelorus::user_agent_ok(headers.get(header::USER_AGENT).map(|v| v.as_bytes())) {
        let error = IngestError::BadUserAgent {
            expected: pelorus::USER_AGENT_PREFIX,
        };
        return Err(Refusal::before_auth(error, "unknown", Some(body)));
    }
    let event = match headers.get(pelorus::EVENT_HEADER) {
        None => Err(IngestError::MissingHeader {
            header: "X-Pelorus-Event",
        }),
        Some(value) => {
            value
                .to_str()
                .ok()
                .and_then(PelorusEvent::parse)
                .ok_or(IngestError::UnknownEvent {
                    header: "X-Pelorus-Event",
                })
        }
    }
    .map_err(|error| Refusal::before_auth(error, "unknown", Some(body.clone())))?;
    let label = event.as_str();
    if let Err(error) = authenticate_pelorus(settings, headers, &body) {
        tracing::warn!(
            reason = error.as_str(),
            "Delivery rejected: authentication failed"
        );
        let error = IngestError::Unauthorized(AuthFailure {
            error,
            header: "X-Hub-Signature-256",
        });
        return Err(Refusal::before_auth(error, label, Some(body)));
    }
    if event == PelorusEvent::Ping {
        return Ok(Checked::Ping);
    }
    match pelorus::parse_event(event, &body) {
        Ok(event) => Ok(Checked::Event { label, event, body }),
        Err(problem) => Err(Refusal::after_auth(problem.into(), label, body)),
    }
}

/// What a stored, once authenticated delivery is when run through its
/// source again (a redelivery): the event label and disposition, or why it
/// cannot be run (the source or instance is no longer configured).
pub fn replay(
    state: &IngestState,
    source: &str,
    instance: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(&'static str, Disposition), String> {
    let invalid = |refusal: Refusal| Disposition::Invalid {
        reason: refusal.error.reason(),
    };
    if source == pelorus::SOURCE {
        let event = headers
            .get(pelorus::EVENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(PelorusEvent::parse)
            .ok_or("the stored delivery has no usable X-Pelorus-Event header")?;
        let label = event.as_str();
        return Ok(match pelorus::parse_event(event, &body) {
            Ok(event) => (label, Disposition::Events(vec![event])),
            Err(problem) => (
                label,
                invalid(Refusal::after_auth(problem.into(), label, body)),
            ),
        });
    }
    let instance = state
        .sources
        .iter()
        .find(|i| i.plugin.source() == source && i.name.as_deref() == instance && i.enabled)
        .ok_or_else(|| format!("source {source} is not configured (or not enabled) any more"))?;
    Ok(match map_native(instance, headers, body) {
        Ok(checked) => (checked.event, checked.disposition),
        Err(refusal) => (refusal.event, invalid(refusal)),
    })
}

/// `POST /pelorus/webhook`, compatible with the Pelorus webhook exporter.
#[tracing::instrument(skip_all, fields(source = pelorus::SOURCE, delivery_id))]
async fn pelorus_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<IngestState>,
) -> HttpResponse {
    let received_at_ms = now_ms();
    if let Err(error) = IngestError::check_headers(req.headers()) {
        return error.to_response(None);
    }
    if !state.pelorus.enabled {
        tracing::info!(
            "Delivery to a disabled source; enable it with [sources.pelorus] enabled = true"
        );
        return IngestError::SourceDisabled.to_response(None);
    }
    let (label, event, body) = match check_pelorus(&state.pelorus, req.headers(), payload).await {
        Ok(Checked::Event { label, event, body }) => (label, event, body),
        Ok(Checked::Ping) => {
            state
                .metrics
                .count_delivery(pelorus::SOURCE, "ping", Outcome::Ignored);
            return HttpResponse::Ok()
                .json(json!({"outcome": "ignored", "delivery_id": null, "detail": "pong"}));
        }
        Err(refusal) => {
            let headers = recorded_headers(req.headers(), &[]);
            return refuse(
                &state,
                pelorus::SOURCE,
                refusal,
                received_at_ms,
                headers,
                None,
            )
            .await;
        }
    };
    let id = pelorus::delivery_id(&event);
    tracing::Span::current().record("delivery_id", tracing::field::display(&id));
    let record = Delivery {
        id: id.clone(),
        source: pelorus::SOURCE,
        event: label,
        received_at_ms,
        authenticated: true,
        body: Some(body),
        disposition: Disposition::Events(vec![event]),
        headers: Some(recorded_headers(req.headers(), &[])),
        instance: None,
        queued_row: None,
    };
    match state.store.record(record).await {
        Ok(recorded) => {
            state
                .metrics
                .count_delivery(pelorus::SOURCE, label, recorded.outcome);
            tracing::debug!(
                outcome = recorded.outcome.as_str(),
                event = label,
                "Delivery recorded"
            );
            let status = match recorded.outcome {
                // Pelorus answers 202 to what it accepts.
                Outcome::Accepted => StatusCode::ACCEPTED,
                _ => StatusCode::OK,
            };
            HttpResponse::build(status).json(recorded_body(&id, recorded))
        }
        Err(error) => store_unavailable(&error).to_response(Some(&id)),
    }
}

/// The answer to a delivery whose outcome committed.
fn recorded_body(id: &DeliveryId, recorded: Recorded) -> Value {
    let mut body = json!({
        "outcome": recorded.outcome.as_str(),
        "delivery_id": id.as_str(),
        "detail": recorded.detail,
    });
    if let Some(by) = recorded.superseded_by {
        body["superseded_by"] = by.into();
    }
    body
}

/// The refusal of a delivery the store could not take, the cause logged.
fn store_unavailable(error: &StoreError) -> IngestError {
    tracing::error!(
        error = error as &dyn std::error::Error,
        "Delivery not acknowledged: store unavailable"
    );
    IngestError::StoreUnavailable
}

/// Parts of header names that mark a credential: such values are stored
/// and shown as `[redacted]`.
const CREDENTIAL_WORDS: &[&str] = &[
    "authorization",
    "signature",
    "token",
    "secret",
    "password",
    "cookie",
    "api-key",
    "apikey",
];

/// The most header text kept per ledger row, and per header value.
const MAX_RECORDED_HEADER_BYTES: usize = 16 * 1024;
const MAX_RECORDED_VALUE_BYTES: usize = 1024;

/// The request headers as the ledger keeps them: a JSON object (repeated
/// headers joined by `, `), credential values and the `credentials` headers
/// of the source redacted. Long values are cut; past
/// [`MAX_RECORDED_HEADER_BYTES`] the rest is dropped, the `x-` headers that
/// name events and deliveries (what a redelivery needs) coming first.
pub fn recorded_headers(headers: &HeaderMap, credentials: &[&str]) -> String {
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable_by_key(|n| (!n.starts_with("x-") && !n.starts_with("ce-"), *n));
    names.dedup();
    let mut object = serde_json::Map::new();
    let mut total = 0;
    for name in names {
        let redacted =
            credentials.contains(&name) || CREDENTIAL_WORDS.iter().any(|w| name.contains(w));
        let mut value = if redacted {
            "[redacted]".to_owned()
        } else {
            headers
                .get_all(name)
                .map(|v| v.to_str().unwrap_or("[not text]"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if value.len() > MAX_RECORDED_VALUE_BYTES {
            let mut cut = MAX_RECORDED_VALUE_BYTES;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push('…');
        }
        total += name.len() + value.len();
        if total > MAX_RECORDED_HEADER_BYTES {
            object.insert("…".into(), "[truncated]".into());
            break;
        }
        object.insert(name.to_owned(), value.into());
    }
    Value::Object(object).to_string()
}

/// Records a refused delivery in the ledger (best effort: the refusal stands
/// even when the store is down), counts it and answers. Its id is a hash of
/// the body, or unique when the body was never read.
async fn refuse(
    state: &IngestState,
    source: &'static str,
    refusal: Refusal,
    received_at_ms: i64,
    headers: String,
    instance: Option<String>,
) -> HttpResponse {
    let (error, id) =
        record_refusal(state, source, refusal, received_at_ms, headers, instance).await;
    error.to_response(Some(&id))
}

/// Records and counts a refused delivery as [`refuse`] does; returns the
/// error and the id to answer with.
async fn record_refusal(
    state: &IngestState,
    source: &'static str,
    refusal: Refusal,
    received_at_ms: i64,
    headers: String,
    instance: Option<String>,
) -> (IngestError, DeliveryId) {
    static UNREAD: AtomicU64 = AtomicU64::new(0);
    let id = match &refusal.body {
        Some(body) => DeliveryId::derived(&[source.as_bytes(), body]),
        None => DeliveryId::derived(&[
            source.as_bytes(),
            b"unread",
            &received_at_ms.to_be_bytes(),
            &UNREAD.fetch_add(1, Ordering::Relaxed).to_be_bytes(),
        ]),
    };
    let Some(outcome) = refusal.error.outcome() else {
        return (refusal.error, id);
    };
    state.metrics.count_delivery(source, refusal.event, outcome);
    tracing::info!(
        delivery_id = %id,
        event = refusal.event,
        reason = refusal.error.reason(),
        "Delivery refused"
    );
    let record = Delivery {
        id: id.clone(),
        source,
        event: refusal.event,
        received_at_ms,
        authenticated: refusal.authenticated,
        body: refusal.body.filter(|_| refusal.authenticated),
        disposition: match outcome {
            Outcome::Rejected => Disposition::Rejected {
                reason: refusal.error.reason(),
            },
            _ => Disposition::Invalid {
                reason: refusal.error.reason(),
            },
        },
        headers: Some(headers),
        instance,
        queued_row: None,
    };
    // Unauthenticated rows are also rate-limited: a flood of forged
    // requests is answered and counted, but only a trickle reaches the disk.
    if refusal.authenticated || state.unauthenticated_rows.admit(received_at_ms / 1000) {
        if let Err(store_error) = state.store.record(record).await {
            tracing::warn!(
                error = &store_error as &dyn std::error::Error,
                "Refused delivery not written to the ledger"
            );
        }
    }
    (refusal.error, id)
}

/// At most `per_second` admissions in each wall-clock second.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    /// The current second in the high 32 bits, admissions in the low 32.
    window: AtomicU64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            window: AtomicU64::new(0),
        }
    }

    /// True when one more admission fits in second `now`. A `now` older than
    /// the current window (a request received just before the second
    /// turned, admitted just after) counts against the current window: going
    /// back would start a fresh count and let concurrent requests from two
    /// seconds admit without bound.
    pub fn admit(&self, now: i64) -> bool {
        let second = (now.max(0) as u64) & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (at, used) = (current >> 32, current & 0xffff_ffff);
            let next = if second > at {
                (second << 32) | 1
            } else {
                if used >= u64::from(self.per_second) {
                    return false;
                }
                current + 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// True for `application/json` and `application/<x>+json`, any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| {
            let essence = essence.trim().to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// What a native delivery turned out to be after every check passed.
struct NativeChecked {
    event: &'static str,
    id: DeliveryId,
    body: Bytes,
    disposition: Disposition,
}

/// What an authentic request to a native instance carries: one delivery,
/// or a batch whose items were mapped (or refused) one by one.
enum NativeRequest {
    One(NativeChecked),
    Batch(Vec<Result<NativeChecked, Refusal>>),
}

/// The shared runner's checks for one native source instance: body cap,
/// media type, authentication on the raw bytes, then the plugin's mapping.
async fn check_native(
    instance: &SourceInstance,
    headers: &HeaderMap,
    query: &str,
    payload: web::Payload,
) -> Result<NativeRequest, Refusal> {
    let plugin = instance.plugin;
    let event = plugin.event(headers, None);
    let body = read_body(headers, payload, instance.max_body_bytes)
        .await
        .map_err(|error| Refusal::before_auth(error, event, None))?;
    if let Err(failure) = instance
        .verifier
        .verify(headers, query, &body, now_seconds())
    {
        tracing::warn!(
            source = plugin.source(),
            reason = failure.error.as_str(),
            "Delivery rejected: authentication failed"
        );
        let error = IngestError::Unauthorized(failure);
        return Err(Refusal::before_auth(error, event, Some(body)));
    }
    if plugin.batch(headers) {
        return map_batch(instance, headers, body).map(NativeRequest::Batch);
    }
    map_native(instance, headers, body).map(NativeRequest::One)
}

/// The items of an authentic batch, each mapped as a delivery of its own
/// whose body is the item (what the ledger keeps and a redelivery runs).
fn map_batch(
    instance: &SourceInstance,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Vec<Result<NativeChecked, Refusal>>, Refusal> {
    let plugin = instance.plugin;
    let event = plugin.event(headers, None);
    if !is_json(headers) {
        let error = IngestError::UnsupportedMediaType;
        return Err(Refusal::after_auth(error, event, body));
    }
    let items = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        Ok(_) => {
            let error = IngestError::MalformedJson {
                message: "a batch is a JSON array of events".into(),
            };
            return Err(Refusal::after_auth(error, event, body));
        }
        Err(e) => {
            let error = IngestError::MalformedJson {
                message: e.to_string(),
            };
            return Err(Refusal::after_auth(error, event, body));
        }
    };
    Ok(items
        .into_iter()
        .map(|item| {
            let bytes = Bytes::from(serde_json::to_vec(&item).unwrap_or_default());
            if !item.is_object() {
                let error = IngestError::MalformedJson {
                    message: "a batch item is not a JSON object".into(),
                };
                return Err(Refusal::after_auth(error, event, bytes));
            }
            map_value(instance, headers, item, bytes)
        })
        .collect())
}

/// What an authentic delivery to a native instance is: media type, JSON,
/// event label, delivery id and the plugin's mapping. Redeliveries run
/// through here with the headers and body stored at receipt.
fn map_native(
    instance: &SourceInstance,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<NativeChecked, Refusal> {
    let plugin = instance.plugin;
    let event = plugin.event(headers, None);
    if !is_json(headers) {
        let error = IngestError::UnsupportedMediaType;
        return Err(Refusal::after_auth(error, event, body));
    }
    let value = match payload::parse_object(&body) {
        Ok(value) => value,
        Err(problem) => return Err(Refusal::after_auth(problem.into(), event, body)),
    };
    map_value(instance, headers, value, body)
}

/// What the parsed JSON object `value` of a delivery (`body`) is.
fn map_value(
    instance: &SourceInstance,
    headers: &HeaderMap,
    value: Value,
    body: Bytes,
) -> Result<NativeChecked, Refusal> {
    let plugin = instance.plugin;
    let (event, mapping) = plugin.classify(headers, &value, &instance.options);
    let id = plugin
        .delivery_id(headers, &value)
        .unwrap_or_else(|| DeliveryId::derived(&[plugin.source().as_bytes(), &body]));
    let disposition = match mapping {
        Ok(mapping) => mapping.into_disposition(),
        Err(problem) => return Err(Refusal::after_auth(problem.into(), event, body)),
    };
    Ok(NativeChecked {
        event,
        id,
        body,
        disposition,
    })
}

/// `POST /hooks/<source>[/<name>]`: every native source through one runner.
#[tracing::instrument(skip_all, fields(source, delivery_id))]
async fn native_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<IngestState>,
) -> HttpResponse {
    let received_at_ms = now_ms();
    if let Err(error) = IngestError::check_headers(req.headers()) {
        return error.to_response(None);
    }
    let source = req.match_info().get("source").unwrap_or_default();
    let name = req.match_info().get("name");
    let Some(plugin) = state.plugins.iter().copied().find(|p| p.source() == source) else {
        return IngestError::UnknownSource.to_response(None);
    };
    tracing::Span::current().record("source", plugin.source());
    let instance = state
        .sources
        .iter()
        .find(|i| i.plugin.source() == plugin.source() && i.name.as_deref() == name);
    let Some(instance) = instance.filter(|i| i.enabled) else {
        let key = match name {
            Some(name) => format!("sources.{}.{name}", plugin.source()),
            None => format!("sources.{}", plugin.source()),
        };
        tracing::info!(
            "Delivery to a source that is not enabled; configure [{key}] with its secrets to enable it"
        );
        return IngestError::SourceDisabled.to_response(None);
    };
    let headers = recorded_headers(req.headers(), &instance.credential_headers);
    let request = match check_native(instance, req.headers(), req.query_string(), payload).await {
        Ok(request) => request,
        Err(refusal) => {
            let name = instance.name.clone();
            return refuse(
                &state,
                plugin.source(),
                refusal,
                received_at_ms,
                headers,
                name,
            )
            .await;
        }
    };
    let checked = match request {
        NativeRequest::One(checked) => checked,
        NativeRequest::Batch(items) => {
            return answer_batch(&state, instance, items, received_at_ms, headers).await
        }
    };
    tracing::Span::current().record("delivery_id", tracing::field::display(&checked.id));
    match record_native(&state, instance, checked, received_at_ms, headers).await {
        Ok(body) => HttpResponse::Ok().json(body),
        Err((error, id)) => error.to_response(Some(&id)),
    }
}

/// Records one checked delivery and counts it: the answer's body once it
/// committed, else the error to answer with.
async fn record_native(
    state: &IngestState,
    instance: &SourceInstance,
    checked: NativeChecked,
    received_at_ms: i64,
    headers: String,
) -> Result<Value, (IngestError, DeliveryId)> {
    let source = instance.plugin.source();
    let record = Delivery {
        id: checked.id.clone(),
        source,
        event: checked.event,
        received_at_ms,
        authenticated: true,
        body: Some(checked.body),
        disposition: checked.disposition,
        headers: Some(headers),
        instance: instance.name.clone(),
        queued_row: None,
    };
    match state.store.record(record).await {
        Ok(recorded) => {
            state
                .metrics
                .count_delivery(source, checked.event, recorded.outcome);
            tracing::debug!(
                delivery_id = %checked.id,
                outcome = recorded.outcome.as_str(),
                event = checked.event,
                "Delivery recorded"
            );
            // Every committed outcome is a 200: senders disable hooks that
            // answer 4xx to what they consider ordinary events.
            Ok(recorded_body(&checked.id, recorded))
        }
        Err(error) => Err((store_unavailable(&error), checked.id)),
    }
}

/// Records every item of a batch as a delivery of its own, in order, and
/// answers `{"events": [...]}` with each item's own answer. The batch is a
/// 200 only when every item's outcome committed; else it takes the status
/// of its gravest item (503 before the 4xx of a refused item), so that a
/// sender retries it; items already stored are duplicates then.
async fn answer_batch(
    state: &IngestState,
    instance: &SourceInstance,
    items: Vec<Result<NativeChecked, Refusal>>,
    received_at_ms: i64,
    headers: String,
) -> HttpResponse {
    let source = instance.plugin.source();
    let mut answers = Vec::with_capacity(items.len());
    let mut status = StatusCode::OK;
    for item in items {
        let answer = match item {
            Ok(checked) => {
                record_native(state, instance, checked, received_at_ms, headers.clone()).await
            }
            Err(refusal) => Err(record_refusal(
                state,
                source,
                refusal,
                received_at_ms,
                headers.clone(),
                instance.name.clone(),
            )
            .await),
        };
        answers.push(match answer {
            Ok(body) => body,
            Err((error, id)) => {
                let item_status = error.status();
                if status != StatusCode::SERVICE_UNAVAILABLE
                    && (status.is_success() || item_status == StatusCode::SERVICE_UNAVAILABLE)
                {
                    status = item_status;
                }
                error.body(Some(&id))
            }
        });
    }
    let mut response = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()));
    }
    response.json(json!({"events": answers}))
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn a_rate_limit_admits_per_second_and_starts_again_at_the_next() {
        let limit = RateLimit::new(3);
        assert_eq!((0..5).filter(|_| limit.admit(100)).count(), 3);
        assert_eq!((0..5).filter(|_| limit.admit(101)).count(), 3);
    }

    #[test]
    fn requests_of_the_previous_second_count_against_the_current_one() {
        // Received at 100 and 101, admitted in any order: still at most
        // `per_second` each time the window turns, never a fresh count for
        // every switch between the two seconds.
        let limit = RateLimit::new(3);
        let admitted = (0..40).filter(|n| limit.admit(100 + n % 2)).count();
        // One in second 100, then three in 101 (the window turned there).
        assert_eq!(admitted, 1 + 3);
    }
}
