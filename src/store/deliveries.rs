//! Read-only access to the delivery ledger for the admin API, the deliveries
//! page and the redelivery worker. Each call opens its own read-only
//! connection (WAL lets it read beside the writer) and runs on a blocking
//! thread; nothing here writes.

use std::path::{Path, PathBuf};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::{sqlite::fault_kind, FaultKind, PollCursor, StoreError};

/// Which ledger rows to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub source: Option<String>,
    pub event: Option<String>,
    pub outcome: Option<String>,
    pub state: Option<String>,
    /// Rows whose events name this application.
    pub app: Option<String>,
    /// Received at or after (epoch ms).
    pub since_ms: Option<i64>,
    /// Received before (epoch ms).
    pub until_ms: Option<i64>,
    /// Text contained in the reason or the detail.
    pub text: Option<String>,
    /// Cursor: rows older than this seq.
    pub before: Option<i64>,
    pub limit: u32,
}

/// One ledger row, as listed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeliveryRow {
    pub id: i64,
    pub delivery_id: String,
    pub source: String,
    pub instance: Option<String>,
    pub event: String,
    pub received_at_ms: i64,
    pub state: String,
    /// `None` until a queued redelivery is done.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub detail: String,
    pub apps: Vec<String>,
    pub authenticated: bool,
    pub body_bytes: Option<i64>,
    pub replay_of: Option<i64>,
    pub superseded_by: Option<String>,
    pub attempts: i64,
    pub error: Option<String>,
}

/// One ledger row with everything known about it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub row: DeliveryRow,
    /// Headers as received, credential values redacted.
    pub headers: Value,
    /// The body as text, when kept and UTF-8.
    pub body: Option<String>,
    /// Identities of the events the delivery carried.
    pub event_keys: Vec<String>,
    /// The stored facts first recorded by this delivery.
    pub events: Vec<StoredEvent>,
    /// For `outdated`: the ledger row that holds the newer information.
    pub superseded_by_row: Option<i64>,
    /// Redeliveries of this row.
    pub replays: Vec<i64>,
}

/// A stored fact: a commit, a deploy or one end of a failure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredEvent {
    pub kind: &'static str,
    pub app: String,
    pub time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_sha: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue_number: Option<String>,
    pub delivery_id: String,
}

/// The event kinds, as the admin API names them.
pub const EVENT_KINDS: [&str; 4] = ["commit", "deploy", "failure_created", "failure_resolved"];

/// The rolling window of [`Ledger::event_intervals`]: the last
/// `max_seconds` or the last `max_events` events, whichever holds fewer.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct IntervalWindow {
    pub max_seconds: i64,
    pub max_events: u32,
}

impl IntervalWindow {
    /// 7 days or 500 events.
    pub const DEFAULT: IntervalWindow = IntervalWindow {
        max_seconds: 7 * 86_400,
        max_events: 500,
    };
}

/// The average time between consecutive events of one kind for one
/// application, over the window actually used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventInterval {
    /// The application (the repository, unless the source maps it).
    pub repo: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Events in the window.
    pub events: u32,
    /// `(last - first) / (events - 1)`; absent with fewer than two events.
    pub mean_interval_seconds: Option<f64>,
    /// The window used: from `now - max_seconds`, or from the oldest of the
    /// last `max_events` events when there are that many; to now.
    pub window_start: i64,
    pub window_end: i64,
    pub first_event: i64,
    pub last_event: i64,
}

/// One page of stored events.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `until` for the next page; `None` on the last.
    pub next_until: Option<i64>,
}

/// Which stored events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `commit`, `deploy`, `failure_created`, `failure_resolved`.
    pub kind: Option<String>,
    pub app: Option<String>,
    pub since: Option<i64>,
    /// Events before this time (epoch seconds): the cursor.
    pub until: Option<i64>,
    pub limit: u32,
}

/// What one source has been sending lately.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceSummary {
    pub source: String,
    pub last_received_at_ms: i64,
    /// Outcome → deliveries in the last 24 hours.
    pub last_24h: std::collections::BTreeMap<String, i64>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastError {
    pub id: i64,
    pub received_at_ms: i64,
    pub outcome: String,
    pub reason: Option<String>,
}

/// A redelivery waiting to be processed.
#[derive(Debug, Clone)]
pub struct Pending {
    pub row: i64,
    pub delivery_id: String,
    pub source: String,
    pub instance: Option<String>,
    pub headers: Value,
    pub body: Vec<u8>,
    pub attempts: i64,
}

/// Size figures for the self-metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LedgerSize {
    pub rows: i64,
    pub body_bytes: i64,
    pub pending: i64,
}

/// Read-only ledger queries against the database at `path`.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

const ROW_COLUMNS: &str =
    "seq, delivery_id, source, instance, event, received_at_ms, state, outcome, \
     reason, detail, apps, authenticated, length(body), replay_of, superseded_by, attempts, error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    let outcome: String = r.get(7)?;
    let apps: String = r.get(10)?;
    Ok(DeliveryRow {
        id: r.get(0)?,
        delivery_id: r.get(1)?,
        source: r.get(2)?,
        instance: r.get(3)?,
        event: r.get(4)?,
        received_at_ms: r.get(5)?,
        state: r.get(6)?,
        outcome: (!outcome.is_empty()).then_some(outcome),
        reason: r.get(8)?,
        detail: r.get(9)?,
        apps: serde_json::from_str(&apps).unwrap_or_default(),
        authenticated: r.get(11)?,
        body_bytes: r.get(12)?,
        replay_of: r.get(13)?,
        superseded_by: r.get(14)?,
        attempts: r.get(15)?,
        error: r.get(16)?,
    })
}

/// `%` and `_` taken literally in a LIKE pattern (escape `\`).
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Ledger {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Ledger {
            path: path.as_ref().to_owned(),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        Ok(conn)
    }

    /// Runs `f` on a fresh read-only connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let ledger = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = ledger.open()?;
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(|error| StoreError::Unavailable {
            kind: fault_kind(&error).unwrap_or(FaultKind::Other),
            message: error.to_string(),
        })
    }

    pub async fn list(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {ROW_COLUMNS} FROM deliveries WHERE 1 = 1");
            let mut values: Vec<SqlValue> = Vec::new();
            let mut clause = |sql_part: &str, value: SqlValue| {
                sql.push_str(sql_part);
                values.push(value);
            };
            if let Some(v) = filter.source {
                clause(" AND source = ?", v.into());
            }
            if let Some(v) = filter.event {
                clause(" AND event = ?", v.into());
            }
            if let Some(v) = filter.outcome {
                clause(" AND outcome = ?", v.into());
            }
            if let Some(v) = filter.state {
                clause(" AND state = ?", v.into());
            }
            if let Some(v) = filter.app {
                clause(
                    " AND EXISTS (SELECT 1 FROM json_each(deliveries.apps) WHERE value = ?)",
                    v.into(),
                );
            }
            if let Some(v) = filter.since_ms {
                clause(" AND received_at_ms >= ?", v.into());
            }
            if let Some(v) = filter.until_ms {
                clause(" AND received_at_ms < ?", v.into());
            }
            if let Some(v) = filter.text {
                let pattern = like_literal(&v);
                clause(
                    " AND (reason LIKE ? ESCAPE '\\' OR detail LIKE ? ESCAPE '\\'",
                    pattern.clone().into(),
                );
                sql.push(')');
                values.push(pattern.into());
            }
            if let Some(v) = filter.before {
                sql.push_str(" AND seq < ?");
                values.push(v.into());
            }
            sql.push_str(" ORDER BY seq DESC LIMIT ?");
            values.push(i64::from(filter.limit).into());
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), row)?;
            rows.collect()
        })
        .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        self.read(move |conn| {
            let found = conn
                .query_row(
                    &format!(
                        "SELECT {ROW_COLUMNS}, headers, body, event_keys FROM deliveries WHERE seq = ?1"
                    ),
                    params![id],
                    |r| {
                        let headers: Option<String> = r.get(17)?;
                        let body: Option<Vec<u8>> = r.get(18)?;
                        let keys: String = r.get(19)?;
                        Ok((row(r)?, headers, body, keys))
                    },
                )
                .optional()?;
            let Some((row, headers, body, keys)) = found else {
                return Ok(None);
            };
            let events = produced(conn, &row.delivery_id)?;
            // The newer fact usually comes from the same source (one seek);
            // else from another one (rare: an outdated row being looked at).
            let superseded_by_row = match &row.superseded_by {
                Some(by) => {
                    let same: Option<i64> = conn.query_row(
                        "SELECT MAX(seq) FROM deliveries WHERE source = ?1 AND delivery_id = ?2 \
                         AND outcome = 'accepted'",
                        params![row.source, by],
                        |r| r.get(0),
                    )?;
                    match same {
                        Some(seq) => Some(seq),
                        None => conn.query_row(
                            "SELECT MAX(seq) FROM deliveries WHERE delivery_id = ?1 AND outcome = 'accepted'",
                            params![by],
                            |r| r.get(0),
                        )?,
                    }
                }
                None => None,
            };
            let replays = conn
                .prepare("SELECT seq FROM deliveries WHERE replay_of = ?1 ORDER BY seq")?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some(DeliveryDetail {
                row,
                headers: headers
                    .and_then(|h| serde_json::from_str(&h).ok())
                    .unwrap_or(Value::Object(Default::default())),
                body: body.and_then(|b| String::from_utf8(b).ok()),
                event_keys: serde_json::from_str(&keys).unwrap_or_default(),
                events,
                superseded_by_row,
                replays,
            }))
        })
        .await
    }

    /// One page of stored events, newest first; a page ends on a whole
    /// second and `next_until` continues it.
    pub async fn events(&self, filter: EventFilter) -> Result<EventPage, StoreError> {
        self.read(move |conn| {
            let mut events = read_events(
                conn,
                &EventFilter {
                    limit: filter.limit + 1,
                    ..filter.clone()
                },
            )?;
            let limit = filter.limit as usize;
            if events.len() <= limit {
                return Ok(EventPage {
                    events,
                    next_until: None,
                });
            }
            // A page ends on a whole second, so that `until` (exclusive)
            // neither skips nor repeats events that share one.
            let boundary = events[limit - 1].time;
            let spills = events[limit].time == boundary;
            events.truncate(limit);
            if !spills {
                return Ok(EventPage {
                    events,
                    next_until: Some(boundary),
                });
            }
            events.retain(|e| e.time != boundary);
            if !events.is_empty() {
                return Ok(EventPage {
                    events,
                    next_until: Some(boundary + 1),
                });
            }
            // More than a page in one second: that whole second, then on.
            let second = EventFilter {
                since: Some(boundary),
                until: Some(boundary + 1),
                limit: u32::MAX,
                ..filter
            };
            let all = read_events(conn, &second)?;
            Ok(EventPage {
                events: all,
                next_until: Some(boundary),
            })
        })
        .await
    }

    /// For each application and event kind with events in the last
    /// `window.max_seconds`: the mean time between consecutive events over
    /// that window or the last `window.max_events`, whichever holds fewer.
    /// `app` and `kind` narrow the answer. Computed from the stored events,
    /// so it covers every source and survives restarts.
    pub async fn event_intervals(
        &self,
        app: Option<String>,
        kind: Option<&'static str>,
        window: IntervalWindow,
        now: i64,
    ) -> Result<Vec<EventInterval>, StoreError> {
        self.read(move |conn| {
            let since = now - window.max_seconds;
            let mut out = Vec::new();
            for (name, times) in EVENT_TIMES {
                if kind.is_some_and(|k| k != name) {
                    continue;
                }
                let sql = format!(
                    "SELECT app, COUNT(*), MIN(time), MAX(time) FROM ( \
                       SELECT app, time, ROW_NUMBER() OVER (PARTITION BY app ORDER BY time DESC) AS n \
                       FROM ({times}) WHERE time >= ?1 AND time <= ?2 AND (?3 IS NULL OR app = ?3) \
                     ) WHERE n <= ?4 GROUP BY app ORDER BY app"
                );
                let mut stmt = conn.prepare(&sql)?;
                let rows = stmt.query_map(
                    params![since, now, app, window.max_events],
                    |r| {
                        let events: u32 = r.get(1)?;
                        let (first, last): (i64, i64) = (r.get(2)?, r.get(3)?);
                        Ok(EventInterval {
                            repo: r.get(0)?,
                            kind: name,
                            events,
                            mean_interval_seconds: (events >= 2)
                                .then(|| (last - first) as f64 / f64::from(events - 1)),
                            window_start: if events >= window.max_events {
                                first
                            } else {
                                since
                            },
                            window_end: now,
                            first_event: first,
                            last_event: last,
                        })
                    },
                )?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The stored state of every poller stream whose name starts with
    /// `prefix` (one repository's streams), in one read.
    pub async fn poll_cursors(&self, prefix: String) -> Result<Vec<PollCursor>, StoreError> {
        self.read(move |conn| {
            conn.prepare(
                "SELECT stream, etag, last_modified, watermark FROM poll_state \
                 WHERE substr(stream, 1, length(?1)) = ?1",
            )?
            .query_map(params![prefix], |r| {
                Ok(PollCursor {
                    stream: r.get(0)?,
                    etag: r.get(1)?,
                    last_modified: r.get(2)?,
                    watermark: r.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// What each of `sources` has been sending: a few index seeks per
    /// source, never a scan of the ledger.
    pub async fn sources(
        &self,
        sources: Vec<String>,
        now_ms: i64,
    ) -> Result<Vec<SourceSummary>, StoreError> {
        self.read(move |conn| {
            let mut last = conn.prepare(
                "SELECT MAX(received_at_ms) FROM deliveries INDEXED BY deliveries_by_source WHERE source = ?1",
            )?;
            let mut counts = conn.prepare(
                "SELECT CASE WHEN outcome = '' THEN state ELSE outcome END, COUNT(*) FROM deliveries \
                 INDEXED BY deliveries_by_source WHERE source = ?1 AND received_at_ms >= ?2 GROUP BY 1",
            )?;
            let mut error = conn.prepare(
                "SELECT seq, received_at_ms, CASE WHEN state = 'errored' THEN 'errored' ELSE outcome END, \
                 coalesce(error, reason) FROM deliveries INDEXED BY deliveries_errors \
                 WHERE source = ?1 AND (outcome IN ('rejected', 'invalid') OR state = 'errored') \
                 ORDER BY seq DESC LIMIT 1",
            )?;
            let mut summaries = Vec::new();
            for source in sources {
                let Some(last_received_at_ms) =
                    last.query_row(params![source], |r| r.get::<_, Option<i64>>(0))?
                else {
                    continue;
                };
                let last_24h = counts
                    .query_map(params![source, now_ms - 86_400_000], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let last_error = error
                    .query_row(params![source], |r| {
                        Ok(LastError {
                            id: r.get(0)?,
                            received_at_ms: r.get(1)?,
                            outcome: r.get(2)?,
                            reason: r.get(3)?,
                        })
                    })
                    .optional()?;
                summaries.push(SourceSummary {
                    source,
                    last_received_at_ms,
                    last_24h,
                    last_error,
                });
            }
            Ok(summaries)
        })
        .await
    }

    /// Redeliveries due at `now_ms`, oldest first.
    pub async fn pending(&self, now_ms: i64, limit: u32) -> Result<Vec<Pending>, StoreError> {
        self.read(move |conn| {
            conn.prepare(
                "SELECT seq, source, instance, headers, body, attempts, delivery_id FROM deliveries \
                 INDEXED BY deliveries_pending \
                 WHERE state IN ('queued', 'processing', 'errored') AND next_attempt_ms <= ?1 \
                 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![now_ms, limit], |r| {
                let headers: Option<String> = r.get(3)?;
                Ok(Pending {
                    row: r.get(0)?,
                    source: r.get(1)?,
                    instance: r.get(2)?,
                    headers: headers
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or(Value::Object(Default::default())),
                    body: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                    attempts: r.get(5)?,
                    delivery_id: r.get(6)?,
                })
            })?
            .collect()
        })
        .await
    }

    pub async fn size(&self) -> Result<LedgerSize, StoreError> {
        self.read(|conn| {
            let rows: i64 = conn.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?;
            let body_bytes: f64 = conn.query_row(
                "SELECT total(length(body)) FROM deliveries WHERE body IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            let pending: i64 = conn.query_row(
                "SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_pending \
                 WHERE state IN ('queued', 'processing', 'errored') AND next_attempt_ms IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(LedgerSize {
                rows,
                body_bytes: body_bytes as i64,
                pending,
            })
        })
        .await
    }
}

/// Each event kind as `(app, time)` rows, one per event: a commit stored
/// once per image it shipped in (each source may give it a different time:
/// the earliest counts) is one event, and so is a deploy stored once per
/// commit it carried (a deploy without an image is told apart by commit).
const EVENT_TIMES: [(&str, &str); 4] = [
    (
        "commit",
        "SELECT app, MIN(time) AS time FROM commits WHERE time >= ?1 GROUP BY app, commit_sha",
    ),
    (
        "deploy",
        "SELECT DISTINCT app, namespace, \
         CASE WHEN image_sha = '' THEN commit_sha ELSE image_sha END, time FROM deploys",
    ),
    (
        "failure_created",
        "SELECT app, created AS time FROM failures WHERE created IS NOT NULL",
    ),
    (
        "failure_resolved",
        "SELECT app, resolved AS time FROM failures WHERE resolved IS NOT NULL",
    ),
];

/// Stored events matching `filter`, at most `filter.limit` of each kind,
/// newest first.
fn read_events(conn: &Connection, filter: &EventFilter) -> rusqlite::Result<Vec<StoredEvent>> {
    let since = filter.since.unwrap_or(i64::MIN);
    let until = filter.until.unwrap_or(i64::MAX);
    let app = filter.app.clone();
    let limit = i64::from(filter.limit);
    let wanted = |kind: &str| filter.kind.as_deref().is_none_or(|k| k == kind);
    let mut events = Vec::new();
    if wanted("commit") {
        events.extend(
            conn.prepare(
                "SELECT app, time, namespace, commit_sha, image_sha, delivery_id FROM commits \
                 WHERE time >= ?1 AND time < ?2 AND (?3 IS NULL OR app = ?3) ORDER BY time DESC LIMIT ?4",
            )?
            .query_map(params![since, until, app, limit], |r| {
                Ok(fact("commit", r.get(0)?, r.get(1)?, r.get(5)?)
                    .namespace(r.get(2)?)
                    .commit(r.get(3)?)
                    .image(r.get(4)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    if wanted("deploy") {
        events.extend(
            conn.prepare(
                "SELECT app, time, namespace, commit_sha, image_sha, delivery_id FROM deploys \
                 WHERE time >= ?1 AND time < ?2 AND (?3 IS NULL OR app = ?3) ORDER BY time DESC LIMIT ?4",
            )?
            .query_map(params![since, until, app, limit], |r| {
                Ok(fact("deploy", r.get(0)?, r.get(1)?, r.get(5)?)
                    .namespace(r.get(2)?)
                    .commit(r.get(3)?)
                    .image(r.get(4)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    for (kind, column) in [
        ("failure_created", "created"),
        ("failure_resolved", "resolved"),
    ] {
        if !wanted(kind) {
            continue;
        }
        events.extend(
            conn.prepare(&format!(
                "SELECT app, {column}, issue_number, {column}_delivery FROM failures \
                 WHERE {column} IS NOT NULL AND {column} >= ?1 AND {column} < ?2 \
                 AND (?3 IS NULL OR app = ?3) ORDER BY {column} DESC LIMIT ?4"
            ))?
            .query_map(params![since, until, app, limit], |r| {
                let mut event = fact(
                    kind,
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                );
                event.issue_number = Some(r.get(2)?);
                Ok(event)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.time));
    Ok(events)
}

fn fact(kind: &'static str, app: String, time: i64, delivery_id: String) -> StoredEvent {
    StoredEvent {
        kind,
        app,
        time,
        namespace: None,
        commit: None,
        image_sha: None,
        issue_number: None,
        delivery_id,
    }
}

impl StoredEvent {
    fn namespace(mut self, value: String) -> Self {
        self.namespace = (!value.is_empty()).then_some(value);
        self
    }

    fn commit(mut self, value: String) -> Self {
        self.commit = (!value.is_empty()).then_some(value);
        self
    }

    fn image(mut self, value: String) -> Self {
        self.image_sha = (!value.is_empty()).then_some(value);
        self
    }
}

/// The facts first stored by `delivery_id`.
fn produced(conn: &Connection, delivery_id: &str) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut events = Vec::new();
    for (kind, table) in [("commit", "commits"), ("deploy", "deploys")] {
        events.extend(
            conn.prepare(&format!(
                "SELECT app, time, namespace, commit_sha, image_sha FROM {table} WHERE delivery_id = ?1"
            ))?
            .query_map(params![delivery_id], |r| {
                Ok(fact(kind, r.get(0)?, r.get(1)?, delivery_id.to_owned())
                    .namespace(r.get(2)?)
                    .commit(r.get(3)?)
                    .image(r.get(4)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    for (kind, column) in [
        ("failure_created", "created"),
        ("failure_resolved", "resolved"),
    ] {
        events.extend(
            conn.prepare(&format!(
                "SELECT app, {column}, issue_number FROM failures WHERE {column}_delivery = ?1"
            ))?
            .query_map(params![delivery_id], |r| {
                let mut event = fact(kind, r.get(0)?, r.get(1)?, delivery_id.to_owned());
                event.issue_number = Some(r.get(2)?);
                Ok(event)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    Ok(events)
}
