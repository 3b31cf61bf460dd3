//! The deliveries page on the metrics port: server-rendered HTML that reads
//! without JavaScript. `/` lists recent deliveries with filters, `/deliveries/<id>`
//! shows one (headers, pretty-printed body, events, redeliver button),
//! `/sources` shows per source the last delivery, the last 24 hours by
//! outcome and the last error. With API keys configured, `/login` takes a key
//! once and keeps it in a same-site, HTTP-only cookie.

use std::fmt::Write as _;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::api::{
    authorize, cross_site, queue_redelivery, session_token, Credentials, Denied, ListQuery,
    KEY_COOKIE,
};
use super::AdminState;
use crate::signature;
use crate::store::deliveries::{DeliveryDetail, DeliveryRow, SourceSummary};
use crate::store::keys::{Figure, Key, KeyFacts, TrendPoint, WINDOWS};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/deliveries/{id}", web::get().to(detail))
        .route("/deliveries/{id}/redeliver", web::post().to(redeliver))
        .route("/sources", web::get().to(sources))
        .route("/keys", web::get().to(keys))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login));
}

/// Text made safe for HTML element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value, percent-encoded.
fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}\
header{background:#1b1f24;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}\
header a{color:#fff}main{padding:1rem 1.2rem;max-width:80rem}table{border-collapse:collapse;width:100%;background:#fff}\
th,td{padding:.35rem .5rem;border-bottom:1px solid #dde1e6;text-align:left;vertical-align:top}\
th{background:#eef0f3}pre{background:#fff;border:1px solid #dde1e6;padding:.6rem;overflow:auto;max-height:40rem}\
.badge{display:inline-block;padding:.05rem .45rem;border-radius:.6rem;font-size:.85em;font-weight:600}\
.accepted{background:#d5f5dd;color:#0b5c22}.duplicate,.outdated{background:#e4e8ee;color:#333}\
.ignored{background:#fdf1c7;color:#6b4e00}.invalid,.rejected,.errored{background:#fbd5d5;color:#8a1212}\
.queued,.processing{background:#dbe9ff;color:#123f8a}form.filters{display:flex;flex-wrap:wrap;gap:.6rem;margin:0 0 1rem}\
label{display:flex;flex-direction:column;font-size:.85em}input,select,button{font:inherit;padding:.25rem .4rem}\
button{cursor:pointer}.muted{color:#5b6470}table.fields th{width:12rem}\
.elite{background:#d5f5dd;color:#0b5c22}.high{background:#dbe9ff;color:#123f8a}.medium{background:#fdf1c7;color:#6b4e00}\
.low{background:#fbd5d5;color:#8a1212}table.keys{margin:0 0 1.6rem}table.keys td.trend{width:170px}\
svg.trend polyline{fill:none;stroke:#123f8a;stroke-width:1.5}svg.trend circle{fill:#123f8a}svg.trend line{stroke:#dde1e6}";

fn page(title: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · hookgauge</title><style>{STYLE}</style></head><body>\
         <header><strong>hookgauge</strong><nav><a href=\"/\">Deliveries</a> · <a href=\"/sources\">Sources</a> · \
         <a href=\"/keys\">Keys</a> · \
         <a href=\"/metrics\">Metrics</a></nav></header><main>{body}</main></body></html>",
        esc(title)
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .body(html)
}

fn denied_page(denied: Denied) -> HttpResponse {
    match denied {
        Denied::BadKey => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, "/login"))
            .finish(),
        // No page route requires a configured key.
        Denied::NoKeyConfigured => denied.response(),
        Denied::NotLoopback => {
            let mut response = page(
                "Forbidden",
                "<h1>Forbidden</h1><p>No admin API key is configured, so this page answers loopback \
                 clients only. Set <code>[admin] api_keys</code> to use it from elsewhere.</p>",
            );
            *response.status_mut() = actix_web::http::StatusCode::FORBIDDEN;
            response
        }
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn badge(text: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(text))
}

fn status_badge(row: &DeliveryRow) -> String {
    match (&row.outcome, row.state.as_str()) {
        (Some(outcome), "done") => badge(outcome),
        (_, state) => badge(state),
    }
}

async fn index(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::BearerOrSession) {
        return denied_page(denied);
    }
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(_) => ListQuery::default().filter().expect("defaults are valid"),
    };
    let limit = filter.limit as usize;
    let rows = match state.ledger.list(filter).await {
        Ok(rows) => rows,
        Err(error) => return unavailable("Deliveries", &error),
    };
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
    let mut body = String::from("<h1>Recent deliveries</h1>");
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/\" aria-label=\"Filter deliveries\">\
         <label>Source<input name=\"source\" value=\"{}\"></label>\
         <label>Outcome<select name=\"outcome\" id=\"outcome\"><option value=\"\">any</option>{}</select></label>\
         <label>Application<input name=\"app\" value=\"{}\"></label>\
         <label>Reason contains<input name=\"q\" value=\"{}\"></label>\
         <label>&nbsp;<button type=\"submit\">Filter</button></label></form>",
        value(&query.source),
        crate::ledger::Outcome::ALL
            .iter()
            .map(|o| {
                let selected = if query.outcome.as_deref() == Some(o.as_str()) { " selected" } else { "" };
                format!("<option value=\"{0}\"{selected}>{0}</option>", o.as_str())
            })
            .collect::<String>(),
        value(&query.app),
        value(&query.q),
    );
    if rows.is_empty() {
        body.push_str("<p class=\"muted\">No deliveries match.</p>");
    } else {
        body.push_str(
            "<table><caption class=\"muted\">Newest first</caption><thead><tr><th scope=\"col\">Received</th>\
             <th scope=\"col\">Source</th><th scope=\"col\">Event</th><th scope=\"col\">Outcome</th>\
             <th scope=\"col\">Reason</th><th scope=\"col\">Applications</th><th scope=\"col\">Delivery</th></tr></thead><tbody>",
        );
        for row in &rows {
            let _ = write!(
                body,
                "<tr class=\"delivery\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td><a href=\"/deliveries/{}\">#{} {}</a></td></tr>",
                time(row.received_at_ms),
                esc(&row.source),
                esc(&row.event),
                status_badge(row),
                esc(row.reason.as_deref().or(row.error.as_deref()).unwrap_or("")),
                esc(&row.apps.join(", ")),
                row.id,
                row.id,
                esc(&row.delivery_id),
            );
        }
        body.push_str("</tbody></table>");
        if rows.len() == limit {
            if let Some(last) = rows.last() {
                let mut next = format!("/?cursor={}", last.id);
                let times = [("since", query.since), ("until", query.until)];
                for (key, v) in times {
                    if let Some(v) = v {
                        let _ = write!(next, "&{key}={v}");
                    }
                }
                let texts = [
                    ("source", &query.source),
                    ("event", &query.event),
                    ("outcome", &query.outcome),
                    ("state", &query.state),
                    ("app", &query.app),
                    ("q", &query.q),
                ];
                for (key, v) in texts {
                    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                        let _ = write!(next, "&{key}={}", enc(v));
                    }
                }
                let _ = write!(
                    body,
                    "<p><a href=\"{}\" rel=\"next\">Older deliveries →</a></p>",
                    esc(&next)
                );
            }
        }
    }
    page("Deliveries", &body)
}

/// The body as a person reads it: pretty-printed when it is JSON.
fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

fn detail_body(d: &DeliveryDetail) -> String {
    let row = &d.row;
    let mut body = format!("<h1>Delivery #{} {}</h1>", row.id, status_badge(row));
    let mut field = |name: &str, value: String| {
        let _ = write!(
            body,
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
            esc(name),
            value
        );
    };
    field("Received", time(row.received_at_ms));
    field(
        "Source",
        esc(&match &row.instance {
            Some(name) => format!("{} ({name})", row.source),
            None => row.source.clone(),
        }),
    );
    field("Event", esc(&row.event));
    field("Delivery id", esc(&row.delivery_id));
    field("State", esc(&row.state));
    field(
        "Outcome",
        row.outcome.as_deref().map(badge).unwrap_or_default(),
    );
    field("Reason", esc(row.reason.as_deref().unwrap_or("")));
    field("Detail", esc(&row.detail));
    if let Some(error) = &row.error {
        field("Error", esc(&format!("{error} (attempt {})", row.attempts)));
    }
    if let Some(of) = row.replay_of {
        field(
            "Redelivery of",
            format!("<a href=\"/deliveries/{of}\">#{of}</a>"),
        );
    }
    if let Some(by) = d.superseded_by_row {
        field(
            "Superseded by",
            format!("<a href=\"/deliveries/{by}\">#{by}</a>"),
        );
    }
    if !d.replays.is_empty() {
        field(
            "Redeliveries",
            d.replays
                .iter()
                .map(|r| format!("<a href=\"/deliveries/{r}\">#{r}</a>"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let mut out = String::new();
    out.push_str(&body.replacen("</h1>", "</h1><table class=\"fields\"><tbody>", 1));
    out.push_str("</tbody></table>");
    if row.authenticated && row.body_bytes.is_some() && row.state == "done" {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/deliveries/{}/redeliver\"><p><button type=\"submit\" id=\"redeliver\">\
             Redeliver</button> <span class=\"muted\">runs the stored body and headers through the source again, \
             with today's configuration</span></p></form>",
            row.id
        );
    }
    out.push_str("<h2>Events</h2>");
    if d.events.is_empty() {
        out.push_str("<p class=\"muted\">No stored event was first recorded by this delivery.</p>");
    } else {
        out.push_str("<table><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Application</th><th scope=\"col\">Time</th><th scope=\"col\">Details</th></tr></thead><tbody>");
        for e in &d.events {
            let details: Vec<String> = [
                e.namespace.as_ref().map(|v| format!("namespace {v}")),
                e.commit.as_ref().map(|v| format!("commit {v}")),
                e.image_sha.as_ref().map(|v| format!("image {v}")),
                e.issue_number.as_ref().map(|v| format!("failure {v}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(e.kind),
                esc(&e.app),
                time(e.time * 1000),
                esc(&details.join(", "))
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h2>Headers</h2><table><tbody>");
    if let Some(headers) = d.headers.as_object() {
        for (name, value) in headers {
            let _ = write!(
                out,
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                esc(name),
                esc(value.as_str().unwrap_or(""))
            );
        }
    }
    out.push_str("</tbody></table><h2>Body</h2>");
    match &d.body {
        Some(text) => {
            let _ = write!(out, "<pre id=\"body\">{}</pre>", esc(&pretty(text)));
        }
        None => out
            .push_str("<p class=\"muted\">Not kept (rejected, too large, or past retention).</p>"),
    }
    out
}

async fn detail(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::BearerOrSession) {
        return denied_page(denied);
    }
    let Some(id) = row_id(&req) else {
        return not_found();
    };
    match state.ledger.get(id).await {
        Ok(Some(d)) => page(&format!("Delivery #{id}"), &detail_body(&d)),
        Ok(None) => not_found(),
        Err(error) => unavailable("Delivery", &error),
    }
}

/// The ledger row id in the path.
fn row_id(req: &HttpRequest) -> Option<i64> {
    req.match_info()
        .get("id")
        .and_then(|v| v.parse::<i64>().ok())
}

fn unavailable(title: &str, error: &crate::store::StoreError) -> HttpResponse {
    // The whole chain: the store's fault and what caused it.
    let mut why = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        why.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let mut response = page(title, &format!("<p>{}</p>", esc(&why)));
    *response.status_mut() = actix_web::http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

fn not_found() -> HttpResponse {
    let mut response = page(
        "Not found",
        "<h1>No such delivery</h1><p><a href=\"/\">All deliveries</a></p>",
    );
    *response.status_mut() = actix_web::http::StatusCode::NOT_FOUND;
    response
}

async fn redeliver(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if cross_site(&req) {
        return HttpResponse::Forbidden().body("cross-site request refused");
    }
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::BearerOrSession) {
        return denied_page(denied);
    }
    let Some(id) = row_id(&req) else {
        return not_found();
    };
    match queue_redelivery(&state, id).await {
        Ok(row) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/deliveries/{row}")))
            .finish(),
        Err(problem) => {
            let mut page = page(
                "Redelivery refused",
                &format!(
                    "<h1>Redelivery refused</h1><p>{}</p><p><a href=\"/deliveries/{id}\">Back</a></p>",
                    esc(&problem.reason.replace('_', " "))
                ),
            );
            *page.status_mut() = problem.status;
            page
        }
    }
}

fn sources_body(sources: &[SourceSummary]) -> String {
    let mut out = String::from(
        "<h1>Sources</h1><p class=\"muted\">The first place to look when a webhook stops arriving.</p>",
    );
    if sources.is_empty() {
        out.push_str("<p class=\"muted\">Nothing has been received yet.</p>");
        return out;
    }
    out.push_str("<table><thead><tr><th scope=\"col\">Source</th><th scope=\"col\">Last delivery</th><th scope=\"col\">Last 24 hours</th><th scope=\"col\">Last error</th></tr></thead><tbody>");
    for s in sources {
        let counts: Vec<String> = s
            .last_24h
            .iter()
            .map(|(outcome, n)| format!("{} {n}", badge(outcome)))
            .collect();
        let error = match &s.last_error {
            Some(e) => format!(
                "<a href=\"/deliveries/{}\">{}</a> {} {}",
                e.id,
                time(e.received_at_ms),
                badge(&e.outcome),
                esc(e.reason.as_deref().unwrap_or(""))
            ),
            None => "<span class=\"muted\">none</span>".into(),
        };
        let _ = write!(
            out,
            "<tr class=\"source\"><td><a href=\"/?source={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            enc(&s.source),
            esc(&s.source),
            time(s.last_received_at_ms),
            counts.join(" "),
            error
        );
    }
    out.push_str("</tbody></table>");
    out
}

async fn sources(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::BearerOrSession) {
        return denied_page(denied);
    }
    match state
        .ledger
        .sources(state.source_names.clone(), crate::clock::now_ms())
        .await
    {
        Ok(sources) => page("Sources", &sources_body(&sources)),
        Err(error) => unavailable("Sources", &error),
    }
}

/// A duration in its two largest units: `4h 0m`, `2d 3h`, `45s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as i64;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

/// A key's value as a person reads it.
fn key_value(key: Key, value: f64) -> String {
    match key {
        Key::DeploymentFrequency => format!("{value:.2}/day"),
        Key::LeadTime | Key::FailedDeploymentRecoveryTime => duration(value),
        Key::ChangeFailureRate | Key::ReworkRate => format!("{:.1} %", value * 100.0),
    }
}

fn figure_cell(key: Key, figure: &Figure) -> String {
    match (figure.value, figure.tier) {
        (Some(value), Some(tier)) => format!(
            "<td class=\"figure\" data-value=\"{value}\"><span class=\"value\">{}</span> {}</td>",
            esc(&key_value(key, value)),
            badge(tier.as_str())
        ),
        _ => "<td class=\"figure\"><span class=\"muted\">no data</span></td>".into(),
    }
}

/// The weekly points of one key as a small line chart: one circle per week
/// with a value, lines between consecutive ones, 0 at the bottom.
fn trend_svg(key: Key, points: &[TrendPoint]) -> String {
    const W: f64 = 160.0;
    const H: f64 = 36.0;
    let values: Vec<Option<f64>> = points.iter().map(|p| p.keys.figure(key).value).collect();
    let max = values.iter().flatten().fold(0.0_f64, |a, b| a.max(*b));
    let step = W / (values.len().max(2) - 1) as f64;
    let y = |v: f64| {
        if max > 0.0 {
            H - 2.0 - (v / max) * (H - 4.0)
        } else {
            H - 2.0
        }
    };
    let described: Vec<String> = values
        .iter()
        .map(|v| v.map_or("none".into(), |v| key_value(key, v)))
        .collect();
    let mut svg = format!(
        "<svg class=\"trend\" width=\"{W}\" height=\"{H}\" viewBox=\"-3 -1 {} {}\" role=\"img\" \
         aria-label=\"{}, weekly\"><title>{}, weekly over 13 weeks: {}</title>\
         <line x1=\"0\" y1=\"{}\" x2=\"{W}\" y2=\"{}\"/>",
        W + 6.0,
        H + 2.0,
        esc(key.title()),
        esc(key.title()),
        esc(&described.join(", ")),
        H - 2.0,
        H - 2.0,
    );
    let mut run: Vec<String> = Vec::new();
    let flush = |run: &mut Vec<String>, svg: &mut String| {
        if run.len() > 1 {
            let _ = write!(svg, "<polyline points=\"{}\"/>", run.join(" "));
        }
        run.clear();
    };
    for (i, value) in values.iter().enumerate() {
        match value {
            Some(v) => {
                let (px, py) = (i as f64 * step, y(*v));
                run.push(format!("{px:.1},{py:.1}"));
                let _ = write!(svg, "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"2\"/>");
            }
            None => flush(&mut run, &mut svg),
        }
    }
    flush(&mut run, &mut svg);
    svg.push_str("</svg>");
    svg
}

/// One application's (or all applications') keys: a row per key, a column
/// per window, and the weekly trend.
fn keys_table(facts: &KeyFacts, app: Option<&str>) -> String {
    let windows: Vec<_> = WINDOWS.iter().map(|d| facts.window(app, *d)).collect();
    let trend = facts.trend(app);
    let (id, title) = match app {
        Some(app) => (format!("app-{}", enc(app)), esc(app)),
        None => ("all".to_owned(), "All applications".to_owned()),
    };
    let mut out = format!(
        "<section class=\"app\" id=\"{}\"><h2>{title}</h2><table class=\"keys\"><thead><tr>\
         <th scope=\"col\">Key</th>",
        esc(&id)
    );
    for (days, keys) in WINDOWS.iter().zip(&windows) {
        let _ = write!(
            out,
            "<th scope=\"col\">{days} days <span class=\"muted\">({} deploy{})</span></th>",
            keys.deployments,
            if keys.deployments == 1 { "" } else { "s" }
        );
    }
    out.push_str("<th scope=\"col\">Weekly, 13 weeks</th></tr></thead><tbody>");
    for key in Key::ALL {
        let _ = write!(
            out,
            "<tr class=\"key\" data-key=\"{}\"><th scope=\"row\">{}</th>",
            key.name(),
            esc(key.title())
        );
        for keys in &windows {
            out.push_str(&figure_cell(key, keys.figure(key)));
        }
        let _ = write!(
            out,
            "<td class=\"trend\">{}</td></tr>",
            trend_svg(key, &trend)
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

fn keys_body(facts: &KeyFacts, app: Option<&str>) -> String {
    let mut out = String::from(
        "<h1>The five keys</h1><p class=\"muted\">Computed from the store: deployments per day, the \
         median change lead time (commits first deployed in the window), the change failure rate of \
         deployments a failure was tied to, the median recovery time of those failures, and the \
         share of rework deployments; tiers as in the Prometheus rules. Medians are exact here, \
         estimated from histogram buckets in Prometheus.</p>",
    );
    match app {
        Some(app) => {
            out.push_str(&keys_table(facts, Some(app)));
            out.push_str("<p><a href=\"/keys\">All applications</a></p>");
        }
        None => {
            out.push_str(&keys_table(facts, None));
            let apps: Vec<&str> = facts.apps().collect();
            if apps.is_empty() {
                out.push_str("<p class=\"muted\">No deployment in the last 13 weeks yet.</p>");
            }
            for app in apps {
                out.push_str(&keys_table(facts, Some(app)));
            }
        }
    }
    out
}

#[derive(Deserialize)]
struct KeysPageQuery {
    app: Option<String>,
}

async fn keys(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if let Err(denied) = authorize(&req, &state.api_keys, Credentials::BearerOrSession) {
        return denied_page(denied);
    }
    let app = web::Query::<KeysPageQuery>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().app)
        .filter(|a| !a.is_empty());
    let now = crate::clock::now_ms() / 1000;
    match state.ledger.key_facts(app.clone(), now).await {
        Ok(facts) => page("Keys", &keys_body(&facts, app.as_deref())),
        Err(error) => unavailable("Keys", &error),
    }
}

const LOGIN_FORM: &str = "<h1>Admin API key</h1><form method=\"post\" action=\"/login\">\
     <label>API key<input type=\"password\" name=\"key\" autocomplete=\"current-password\" required></label>\
     <p><button type=\"submit\">Sign in</button></p></form>\
     <p class=\"muted\">One of the keys in <code>[admin] api_keys</code>. It is kept in a same-site, HTTP-only \
     cookie for this browser session.</p>";

async fn login_form() -> HttpResponse {
    page("Sign in", LOGIN_FORM)
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

async fn login(
    req: HttpRequest,
    state: web::Data<AdminState>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    if cross_site(&req) {
        return HttpResponse::Forbidden().body("cross-site request refused");
    }
    let presented = form.key.trim();
    let key = state
        .api_keys
        .iter()
        .find(|k| signature::any_token_matches(std::slice::from_ref(*k), presented.as_bytes()));
    let Some(key) = key else {
        let mut response = page(
            "Sign in",
            &format!("<p role=\"alert\">That key is not accepted.</p>{LOGIN_FORM}"),
        );
        *response.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
        return response;
    };
    let secure = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(KEY_COOKIE, session_token(key))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Strict)
        .finish();
    HttpResponse::SeeOther()
        .cookie(cookie)
        .insert_header((header::LOCATION, "/"))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
