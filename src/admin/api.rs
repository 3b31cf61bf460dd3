//! The admin API on the metrics port (docs/operations.md): the delivery
//! ledger, its redelivery and the stored events, as JSON with stable field
//! names. Every route checks [`authorize`] first.

use std::net::IpAddr;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use crate::events::App;
use crate::ledger::{Outcome, State};
use crate::signature::{self, Secret};
use crate::store::deliveries::{DeliveryFilter, EventFilter, IntervalWindow, EVENT_KINDS};
use crate::store::keys::WINDOWS;
use crate::store::{ReplayRefusal, StoreError};

/// Most rows one page of a listing returns.
pub const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 50;

/// Name of the cookie the deliveries page keeps the API key in.
pub const KEY_COOKIE: &str = "hookgauge_admin_key";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/deliveries", web::get().to(list))
        .route("/api/v1/deliveries/{id}", web::get().to(detail))
        .route(
            "/api/v1/deliveries/{id}/redeliver",
            web::post().to(redeliver),
        )
        .route("/api/v1/events", web::get().to(events))
        .route("/api/v1/sources", web::get().to(sources))
        .route("/api/v1/keys", web::get().to(keys))
        .route(
            "/api/v1/stats/event-intervals",
            web::get().to(event_intervals),
        );
}

/// Why a request may not use the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Keys are configured and none was presented, or a wrong one.
    BadKey,
    /// No key is configured and the client is not on loopback.
    NotLoopback,
    /// The route needs a configured key, and none is.
    NoKeyConfigured,
}

impl Denied {
    pub fn response(self) -> HttpResponse {
        match self {
            Denied::BadKey => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"hookgauge admin\""))
                .json(json!({"error": "unauthorized", "field": "authorization", "reason": "missing_or_wrong_api_key"})),
            Denied::NoKeyConfigured => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"hookgauge admin\""))
                .json(json!({"error": "unauthorized", "field": "admin.api_keys", "reason": "no_api_key_configured"})),
            Denied::NotLoopback => HttpResponse::Forbidden().json(json!({
                "error": "forbidden",
                "field": "admin.api_keys",
                "reason": "no_api_key_configured_and_client_not_on_loopback"
            })),
        }
    }
}

/// How a request may prove it holds a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer <key>` only (the API: no ambient credential a
    /// browser would attach by itself).
    Bearer,
    /// The bearer header or the page's session cookie.
    BearerOrSession,
    /// `Authorization: Bearer <key>`, with a key configured: no loopback
    /// access without keys (the statistics API).
    KeyRequired,
}

/// The session cookie's value for `key`: derived from it, so the cookie
/// never holds the key itself.
pub fn session_token(key: &Secret) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key.expose()).expect("HMAC accepts any key length");
    mac.update(b"hookgauge deliveries page session v1");
    hex::encode(mac.finalize().into_bytes())
}

/// True when the `Host` header names this machine: with no key configured,
/// a request whose name is anything else may come through DNS rebinding.
fn loopback_host(req: &HttpRequest) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a request against the configured API keys (constant time, every
/// key tried); with none configured, only loopback clients that address
/// this machine by a loopback name pass, and none on a
/// [`Credentials::KeyRequired`] route.
pub fn authorize(req: &HttpRequest, keys: &[Secret], accepted: Credentials) -> Result<(), Denied> {
    if keys.is_empty() {
        if accepted == Credentials::KeyRequired {
            return Err(Denied::NoKeyConfigured);
        }
        let loopback = req
            .peer_addr()
            .map(|a| a.ip())
            .is_some_and(|ip: IpAddr| ip.is_loopback());
        return if loopback && loopback_host(req) {
            Ok(())
        } else {
            Err(Denied::NotLoopback)
        };
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().to_owned());
    if let Some(key) = bearer {
        return if signature::any_token_matches(keys, key.as_bytes()) {
            Ok(())
        } else {
            Err(Denied::BadKey)
        };
    }
    if accepted == Credentials::BearerOrSession {
        if let Some(cookie) = req.cookie(KEY_COOKIE) {
            let tokens: Vec<Secret> = keys.iter().map(|k| Secret::new(session_token(k))).collect();
            if signature::any_token_matches(&tokens, cookie.value().as_bytes()) {
                return Ok(());
            }
        }
    }
    Err(Denied::BadKey)
}

/// A form post from another site (the browser says so in `Origin` or
/// `Sec-Fetch-Site`): refused on every state-changing route.
pub fn cross_site(req: &HttpRequest) -> bool {
    let fetch_site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|s| s != "same-origin" && s != "none") {
        return true;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, h)| h) != Some(host),
        (Some(_), None) => true,
        _ => false,
    }
}

/// A refused admin request: the status, the parameter and a bounded reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub field: &'static str,
    pub reason: &'static str,
}

impl Problem {
    pub fn response(self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let wait = crate::store::FAULT_RETRY_AFTER.as_secs();
            response.insert_header((header::RETRY_AFTER, wait.to_string()));
        }
        response.json(json!({"error": self.reason, "field": self.field, "reason": self.reason}))
    }
}

fn problem(status: StatusCode, field: &'static str, reason: &'static str) -> Problem {
    Problem {
        status,
        field,
        reason,
    }
}

fn unavailable(error: &StoreError) -> Problem {
    tracing::warn!(
        error = error as &dyn std::error::Error,
        "Admin API: store unavailable"
    );
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "store",
        "store_unavailable",
    )
}

/// Query parameters of `GET /api/v1/deliveries`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub source: Option<String>,
    pub event: Option<String>,
    pub outcome: Option<String>,
    pub state: Option<String>,
    pub app: Option<String>,
    /// Epoch milliseconds, inclusive.
    pub since: Option<i64>,
    /// Epoch milliseconds, exclusive.
    pub until: Option<i64>,
    /// Text in the reason or detail.
    pub q: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    pub limit: Option<u32>,
}

impl ListQuery {
    /// The store filter, or a 400 naming the parameter.
    pub fn filter(&self) -> Result<DeliveryFilter, Problem> {
        let text = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let outcome = text(&self.outcome);
        if let Some(o) = &outcome {
            if Outcome::parse(o).is_none() {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    "outcome",
                    "unknown_outcome",
                ));
            }
        }
        let state = text(&self.state);
        if let Some(s) = &state {
            if State::parse(s).is_none() {
                return Err(problem(StatusCode::BAD_REQUEST, "state", "unknown_state"));
            }
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(problem(StatusCode::BAD_REQUEST, "limit", "out_of_range"));
        }
        Ok(DeliveryFilter {
            source: text(&self.source),
            event: text(&self.event),
            outcome,
            state,
            app: text(&self.app),
            since_ms: self.since,
            until_ms: self.until,
            text: text(&self.q),
            before: self.cursor,
            limit,
        })
    }
}

/// A bad query string: a 400 naming the parameter serde complained of.
pub fn bad_query(error: &actix_web::error::QueryPayloadError) -> HttpResponse {
    let message = error.to_string();
    let field = message.split('`').nth(1).unwrap_or("query").to_owned();
    HttpResponse::BadRequest()
        .json(json!({"error": "bad_query", "field": field, "reason": message}))
}

/// The request's query, once the request is authorized with `credentials`;
/// else the answer refusing it.
fn authorized_query<Q: DeserializeOwned>(
    req: &HttpRequest,
    state: &AdminState,
    credentials: Credentials,
) -> Result<Q, Box<HttpResponse>> {
    authorize(req, &state.api_keys, credentials).map_err(|denied| denied.response())?;
    web::Query::<Q>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| Box::new(bad_query(&e)))
}

async fn list(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    let query: ListQuery = match authorized_query(&req, &state, Credentials::Bearer) {
        Ok(query) => query,
        Err(refused) => return *refused,
    };
    let filter = match query.filter() {
        Ok(f) => f,
        Err(problem) => return problem.response(),
    };
    let limit = filter.limit as usize;
    match state.ledger.list(filter).await {
        Ok(rows) => {
            let next = (rows.len() == limit)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            HttpResponse::Ok().json(json!({"deliveries": rows, "next_cursor": next}))
        }
        Err(error) => unavailable(&error).response(),
    }
}

fn path_id(req: &HttpRequest) -> Result<i64, Problem> {
    req.match_info()
        .get("id")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| problem(StatusCode::BAD_REQUEST, "id", "not_a_ledger_row_id"))
}

async fn detail(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::Bearer) {
        return denied.response();
    }
    let id = match path_id(&req) {
        Ok(id) => id,
        Err(problem) => return problem.response(),
    };
    match state.ledger.get(id).await {
        Ok(Some(detail)) => HttpResponse::Ok().json(detail),
        Ok(None) => problem(StatusCode::NOT_FOUND, "id", "no_such_delivery").response(),
        Err(error) => unavailable(&error).response(),
    }
}

/// Queues a redelivery of a ledger row; the answer names the new row.
pub async fn queue_redelivery(state: &AdminState, id: i64) -> Result<i64, Problem> {
    match state.store.enqueue_replay(id, crate::clock::now_ms()).await {
        Ok(Ok(row)) => {
            state.worker_wake.notify_one();
            Ok(row)
        }
        Ok(Err(refusal)) => {
            let status = match refusal {
                ReplayRefusal::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            Err(problem(status, "id", refusal.as_str()))
        }
        Err(error) => Err(unavailable(&error)),
    }
}

async fn redeliver(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if cross_site(&req) {
        return problem(StatusCode::FORBIDDEN, "origin", "cross_site_request").response();
    }
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::Bearer) {
        return denied.response();
    }
    let id = match path_id(&req) {
        Ok(id) => id,
        Err(problem) => return problem.response(),
    };
    match queue_redelivery(&state, id).await {
        Ok(row) => HttpResponse::Accepted()
            .insert_header((header::LOCATION, format!("/api/v1/deliveries/{row}")))
            .json(json!({"id": row, "replay_of": id, "state": State::Queued.as_str()})),
        Err(problem) => problem.response(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    kind: Option<String>,
    app: Option<String>,
    /// Epoch seconds, inclusive.
    since: Option<i64>,
    /// Epoch seconds, exclusive: the `next_until` of the previous page.
    until: Option<i64>,
    limit: Option<u32>,
}

async fn events(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    let query: EventsQuery = match authorized_query(&req, &state, Credentials::Bearer) {
        Ok(query) => query,
        Err(refused) => return *refused,
    };
    if let Some(kind) = &query.kind {
        if !EVENT_KINDS.contains(&kind.as_str()) {
            return problem(StatusCode::BAD_REQUEST, "kind", "unknown_kind").response();
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return problem(StatusCode::BAD_REQUEST, "limit", "out_of_range").response();
    }
    let filter = EventFilter {
        kind: query.kind,
        app: query.app,
        since: query.since,
        until: query.until,
        limit,
    };
    match state.ledger.events(filter).await {
        Ok(page) => HttpResponse::Ok().json(page),
        Err(error) => unavailable(&error).response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalsQuery {
    repo: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `GET /api/v1/stats/event-intervals[?repo=&type=]`: the mean time between
/// consecutive events per application and kind (docs/operations.md, "Event intervals").
/// Needs a configured API key even from loopback.
async fn event_intervals(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    let query: IntervalsQuery = match authorized_query(&req, &state, Credentials::KeyRequired) {
        Ok(query) => query,
        Err(refused) => return *refused,
    };
    let kind = match query.kind.as_deref() {
        None => None,
        Some(kind) => match EVENT_KINDS.iter().find(|k| **k == kind) {
            Some(kind) => Some(*kind),
            None => return problem(StatusCode::BAD_REQUEST, "type", "unknown_type").response(),
        },
    };
    if let Some(repo) = &query.repo {
        if App::parse(repo).is_err() {
            return problem(StatusCode::BAD_REQUEST, "repo", "invalid_app").response();
        }
    }
    let window = IntervalWindow::DEFAULT;
    let now = crate::clock::now_ms() / 1000;
    match state
        .ledger
        .event_intervals(query.repo, kind, window, now)
        .await
    {
        Ok(intervals) => HttpResponse::Ok().json(json!({
            "window": window,
            "now": now,
            "intervals": intervals,
        })),
        Err(error) => unavailable(&error).response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    app: Option<String>,
    days: Option<String>,
}

/// `GET /api/v1/keys[?app=&days=]`: the five keys over the last 7, 30 or
/// 90 days (default 30) with their tiers and 13 weekly trend points, for one
/// application or for all of them and each (docs/operations.md, "Keys page").
async fn keys(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    let query: KeysQuery = match authorized_query(&req, &state, Credentials::Bearer) {
        Ok(query) => query,
        Err(refused) => return *refused,
    };
    let days = match query.days.as_deref() {
        None => 30,
        Some(days) => match days.parse::<u32>() {
            Ok(days) if WINDOWS.contains(&days) => days,
            _ => {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, "days", "not_7_30_or_90")
                    .response()
            }
        },
    };
    let app = query.app.filter(|a| !a.is_empty());
    if let Some(app) = &app {
        if App::parse(app).is_err() {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "app", "invalid_app").response();
        }
    }
    let now = crate::clock::now_ms() / 1000;
    let facts = match state.ledger.key_facts(app.clone(), now).await {
        Ok(facts) => facts,
        Err(error) => return unavailable(&error).response(),
    };
    let card =
        |app: Option<&str>| json!({"keys": facts.window(app, days), "trend": facts.trend(app)});
    let body = match &app {
        Some(app) => json!({"days": days, "now": now, "app": app,
            "keys": facts.window(Some(app), days), "trend": facts.trend(Some(app))}),
        None => {
            let apps: Vec<_> = facts
                .apps()
                .map(|app| {
                    let mut one = card(Some(app));
                    one["app"] = json!(app);
                    one
                })
                .collect();
            json!({"days": days, "now": now, "all": card(None), "apps": apps})
        }
    };
    HttpResponse::Ok().json(body)
}

async fn sources(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::Bearer) {
        return denied.response();
    }
    match state
        .ledger
        .sources(state.source_names.clone(), crate::clock::now_ms())
        .await
    {
        Ok(sources) => HttpResponse::Ok().json(json!({"sources": sources})),
        Err(error) => unavailable(&error).response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    const ANY: Credentials = Credentials::BearerOrSession;

    fn request(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut request = TestRequest::default().peer_addr(peer.parse().unwrap());
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        request.to_http_request()
    }

    #[test]
    fn without_keys_only_loopback_clients_by_loopback_names_pass() {
        assert_eq!(authorize(&request("127.0.0.1:5000", &[]), &[], ANY), Ok(()));
        assert_eq!(authorize(&request("[::1]:5000", &[]), &[], ANY), Ok(()));
        assert_eq!(
            authorize(&request("10.0.0.7:5000", &[]), &[], ANY),
            Err(Denied::NotLoopback)
        );
        // A rebound name reaching loopback is not this machine's.
        let rebound = request("127.0.0.1:5000", &[("host", "attacker.example:9464")]);
        assert_eq!(authorize(&rebound, &[], ANY), Err(Denied::NotLoopback));
        for host in [
            "localhost:9464",
            "127.0.0.1:9464",
            "[::1]:9464",
            "localhost",
        ] {
            let named = request("127.0.0.1:5000", &[("host", host)]);
            assert_eq!(authorize(&named, &[], ANY), Ok(()), "{host}");
        }
    }

    #[test]
    fn keys_are_bearer_tokens_or_the_page_session() {
        let keys = [Secret::new("k1"), Secret::new("k2")];
        let with = |name: &str, value: &str| request("10.0.0.7:5000", &[(name, value)]);
        assert_eq!(
            authorize(&with("authorization", "Bearer k2"), &keys, ANY),
            Ok(())
        );
        assert_eq!(
            authorize(&with("authorization", "bearer k1"), &keys, ANY),
            Ok(())
        );
        let session = format!("{KEY_COOKIE}={}", session_token(&keys[0]));
        assert_eq!(authorize(&with("cookie", &session), &keys, ANY), Ok(()));
        // The API takes no cookie, and the cookie is never the key itself.
        assert_eq!(
            authorize(&with("cookie", &session), &keys, Credentials::Bearer),
            Err(Denied::BadKey)
        );
        let raw = format!("{KEY_COOKIE}=k1");
        assert_eq!(
            authorize(&with("cookie", &raw), &keys, ANY),
            Err(Denied::BadKey)
        );
        for wrong in ["Bearer k3", "Basic azE6azE="] {
            assert_eq!(
                authorize(&with("authorization", wrong), &keys, ANY),
                Err(Denied::BadKey),
                "{wrong}"
            );
        }
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let same = request(
            "127.0.0.1:1",
            &[
                ("origin", "http://127.0.0.1:9464"),
                ("host", "127.0.0.1:9464"),
            ],
        );
        assert!(!cross_site(&same));
        let other = request(
            "127.0.0.1:1",
            &[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:9464"),
            ],
        );
        assert!(cross_site(&other));
        assert!(cross_site(&request(
            "127.0.0.1:1",
            &[("sec-fetch-site", "cross-site")]
        )));
        assert!(
            !cross_site(&request("127.0.0.1:1", &[])),
            "curl sends neither"
        );
    }
}
