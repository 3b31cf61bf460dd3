//! Read-only access to the delivery ledger for the admin API, the deliveries
//! page, the pollers and the redelivery worker. Each call runs on a blocking
//! thread on a read connection: a fresh read-only one for the embedded file
//! (WAL lets it read beside the writer), one from the pool for PostgreSQL.
//! Nothing here writes.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::sql::{DbError, Lite, Param, Pg, Row, Sql};
use super::{FaultKind, Location, PollCursor, StoreError};

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

/// Read-only ledger queries against the store.
#[derive(Debug, Clone)]
pub struct Ledger {
    reader: Reader,
}

/// Where reads go: a file opened per read, or a pool of connections.
#[derive(Clone)]
pub enum Reader {
    Sqlite(PathBuf),
    Postgres(r2d2::Pool<super::postgres::Manager>),
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Reader::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

impl Reader {
    pub fn new(location: &Location) -> Reader {
        match location {
            Location::Sqlite(path) => Reader::Sqlite(path.clone()),
            Location::Postgres(config) => Reader::Postgres(config.pool()),
        }
    }

    /// Runs `f` on a read connection, here on the calling thread.
    pub fn run<T>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let result = match self {
            Reader::Sqlite(path) => rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| {
                conn.busy_timeout(std::time::Duration::from_secs(2))?;
                Ok(conn)
            })
            .map_err(DbError::from)
            .and_then(|conn| f(&mut Lite(&conn))),
            Reader::Postgres(pool) => match pool.get() {
                Ok(mut client) => {
                    let mut sql = Pg {
                        client: &mut **client,
                        statements: None,
                    };
                    f(&mut sql)
                }
                Err(error) => {
                    return Err(StoreError::unavailable(
                        FaultKind::Io,
                        super::Unusable::NoConnection(Box::new(error)),
                    ))
                }
            },
        };
        result.map_err(|error| {
            StoreError::unavailable(error.fault_kind().unwrap_or(FaultKind::Other), error)
        })
    }
}

const ROW_COLUMNS: &str =
    "seq, delivery_id, source, instance, event, received_at_ms, state, outcome, \
     reason, detail, apps, authenticated <> 0, CAST(length(body) AS BIGINT), replay_of, superseded_by, \
     attempts, error";

fn row(r: &Row<'_>) -> Result<DeliveryRow, DbError> {
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

/// A value of a filter, owned until the query runs.
enum Bound {
    Text(String),
    Int(i64),
}

impl Bound {
    fn param(&self) -> &dyn Param {
        match self {
            Bound::Text(v) => v,
            Bound::Int(v) => v,
        }
    }
}

impl Ledger {
    pub fn new(location: &Location) -> Self {
        Ledger {
            reader: Reader::new(location),
        }
    }

    /// Runs `f` on a read connection on a blocking thread.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.run(f))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    pub async fn list(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(move |conn| {
            let dialect = conn.dialect();
            let mut sql = format!("SELECT {ROW_COLUMNS} FROM deliveries WHERE 1 = 1");
            let mut values: Vec<Bound> = Vec::new();
            let mut clause = |sql_part: &str, value: Bound| {
                sql.push_str(sql_part);
                values.push(value);
            };
            if let Some(v) = filter.source {
                clause(" AND source = ?", Bound::Text(v));
            }
            if let Some(v) = filter.event {
                clause(" AND event = ?", Bound::Text(v));
            }
            if let Some(v) = filter.outcome {
                clause(" AND outcome = ?", Bound::Text(v));
            }
            if let Some(v) = filter.state {
                clause(" AND state = ?", Bound::Text(v));
            }
            if let Some(v) = filter.app {
                clause(
                    &format!(" AND {}", dialect.json_array_has("deliveries.apps")),
                    Bound::Text(v),
                );
            }
            if let Some(v) = filter.since_ms {
                clause(" AND received_at_ms >= ?", Bound::Int(v));
            }
            if let Some(v) = filter.until_ms {
                clause(" AND received_at_ms < ?", Bound::Int(v));
            }
            if let Some(v) = filter.text {
                let pattern = like_literal(&v);
                let like = dialect.like();
                clause(
                    &format!(" AND (reason {like} ? ESCAPE '\\' OR detail {like} ? ESCAPE '\\'"),
                    Bound::Text(pattern.clone()),
                );
                sql.push(')');
                values.push(Bound::Text(pattern));
            }
            if let Some(v) = filter.before {
                sql.push_str(" AND seq < ?");
                values.push(Bound::Int(v));
            }
            sql.push_str(" ORDER BY seq DESC LIMIT ?");
            values.push(Bound::Int(i64::from(filter.limit)));
            let params: Vec<&dyn Param> = values.iter().map(Bound::param).collect();
            conn.rows(&sql, &params, row)
        })
        .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<DeliveryDetail>, StoreError> {
        self.read(move |conn| {
            let found = conn.row(
                &format!("SELECT {ROW_COLUMNS}, headers, body, event_keys FROM deliveries WHERE seq = ?1"),
                &[&id],
                |r| {
                    let headers: Option<String> = r.get(17)?;
                    let body: Option<Vec<u8>> = r.get(18)?;
                    let keys: String = r.get(19)?;
                    Ok((row(r)?, headers, body, keys))
                },
            )?;
            let Some((row, headers, body, keys)) = found else {
                return Ok(None);
            };
            let events = produced(conn, &row.delivery_id)?;
            // The newer fact usually comes from the same source (one seek);
            // else from another one (rare: an outdated row being looked at).
            let superseded_by_row = match &row.superseded_by {
                Some(by) => {
                    let same: Option<i64> = conn.value(
                        "SELECT MAX(seq) FROM deliveries WHERE source = ?1 AND delivery_id = ?2 \
                         AND outcome = 'accepted'",
                        &[&row.source, by],
                    )?;
                    match same {
                        Some(seq) => Some(seq),
                        None => conn.value(
                            "SELECT MAX(seq) FROM deliveries WHERE delivery_id = ?1 AND outcome = 'accepted'",
                            &[by],
                        )?,
                    }
                }
                None => None,
            };
            let replays = conn.rows(
                "SELECT seq FROM deliveries WHERE replay_of = ?1 ORDER BY seq",
                &[&id],
                |r| r.get(0),
            )?;
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
                       FROM ({times}) AS events WHERE time >= ?1 AND time <= ?2 AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) \
                     ) AS latest WHERE n <= ?4 GROUP BY app ORDER BY app"
                );
                let rows = conn.rows(
                    &sql,
                    &[&since, &now, &app.as_deref(), &i64::from(window.max_events)],
                    |r| {
                        let events = r.get::<i64>(1)? as u32;
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
                out.extend(rows);
            }
            Ok(out)
        })
        .await
    }

    /// The stored state of every poller stream whose name starts with
    /// `prefix` (one repository's streams), in one read.
    pub async fn poll_cursors(&self, prefix: String) -> Result<Vec<PollCursor>, StoreError> {
        self.read(move |conn| {
            conn.rows(
                "SELECT stream, etag, last_modified, watermark FROM poll_state \
                 WHERE substr(stream, 1, length(?1)) = ?1",
                &[&prefix],
                |r| {
                    Ok(PollCursor {
                        stream: r.get(0)?,
                        etag: r.get(1)?,
                        last_modified: r.get(2)?,
                        watermark: r.get(3)?,
                    })
                },
            )
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
            let mut summaries = Vec::new();
            for source in sources {
                let Some(last_received_at_ms): Option<i64> = conn.value(
                    "SELECT MAX(received_at_ms) FROM deliveries INDEXED BY deliveries_by_source WHERE source = ?1",
                    &[&source],
                )?
                else {
                    continue;
                };
                let last_24h = conn
                    .rows(
                        "SELECT CASE WHEN outcome = '' THEN state ELSE outcome END, COUNT(*) FROM deliveries \
                         INDEXED BY deliveries_by_source WHERE source = ?1 AND received_at_ms >= ?2 GROUP BY 1",
                        &[&source, &(now_ms - 86_400_000)],
                        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
                    )?
                    .into_iter()
                    .collect();
                let last_error = conn.row(
                    "SELECT seq, received_at_ms, CASE WHEN state = 'errored' THEN 'errored' ELSE outcome END, \
                     coalesce(error, reason) FROM deliveries INDEXED BY deliveries_errors \
                     WHERE source = ?1 AND (outcome IN ('rejected', 'invalid') OR state = 'errored') \
                     ORDER BY seq DESC LIMIT 1",
                    &[&source],
                    |r| {
                        Ok(LastError {
                            id: r.get(0)?,
                            received_at_ms: r.get(1)?,
                            outcome: r.get(2)?,
                            reason: r.get(3)?,
                        })
                    },
                )?;
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
            conn.rows(
                "SELECT seq, source, instance, headers, body, attempts, delivery_id FROM deliveries \
                 INDEXED BY deliveries_pending \
                 WHERE state IN ('queued', 'processing', 'errored') AND next_attempt_ms <= ?1 \
                 ORDER BY seq LIMIT ?2",
                &[&now_ms, &i64::from(limit)],
                |r| {
                let headers: Option<String> = r.get(3)?;
                Ok(Pending {
                    row: r.get(0)?,
                    source: r.get(1)?,
                    instance: r.get(2)?,
                    headers: headers
                        .and_then(|h| serde_json::from_str(&h).ok())
                        .unwrap_or(Value::Object(Default::default())),
                    body: r.get::<Option<Vec<u8>>>(4)?.unwrap_or_default(),
                    attempts: r.get(5)?,
                    delivery_id: r.get(6)?,
                })
            })
        })
        .await
    }

    pub async fn size(&self) -> Result<LedgerSize, StoreError> {
        self.read(|conn| {
            let rows: i64 = conn.value("SELECT COUNT(*) FROM deliveries", &[])?;
            let body_bytes: i64 = conn.value(
                "SELECT CAST(COALESCE(SUM(length(body)), 0) AS BIGINT) FROM deliveries WHERE body IS NOT NULL",
                &[],
            )?;
            let pending: i64 = conn.value(
                "SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_pending \
                 WHERE state IN ('queued', 'processing', 'errored') AND next_attempt_ms IS NOT NULL",
                &[],
            )?;
            Ok(LedgerSize {
                rows,
                body_bytes,
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
fn read_events(conn: &mut dyn Sql, filter: &EventFilter) -> Result<Vec<StoredEvent>, DbError> {
    let since = filter.since.unwrap_or(i64::MIN);
    let until = filter.until.unwrap_or(i64::MAX);
    let app = filter.app.as_deref();
    let limit = i64::from(filter.limit);
    let wanted = |kind: &str| filter.kind.as_deref().is_none_or(|k| k == kind);
    let mut events = Vec::new();
    for (kind, table) in [("commit", "commits"), ("deploy", "deploys")] {
        if !wanted(kind) {
            continue;
        }
        events.extend(conn.rows(
            &format!(
                "SELECT app, time, namespace, commit_sha, image_sha, delivery_id FROM {table} \
                 WHERE time >= ?1 AND time < ?2 AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) ORDER BY time DESC LIMIT ?4"
            ),
            &[&since, &until, &app, &limit],
            |r| commit_or_deploy(kind, r, r.get(5)?),
        )?);
    }
    for (kind, column) in [
        ("failure_created", "created"),
        ("failure_resolved", "resolved"),
    ] {
        if !wanted(kind) {
            continue;
        }
        events.extend(conn.rows(
            &format!(
                "SELECT app, {column}, issue_number, {column}_delivery FROM failures \
                 WHERE {column} IS NOT NULL AND {column} >= ?1 AND {column} < ?2 \
                 AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) ORDER BY {column} DESC LIMIT ?4"
            ),
            &[&since, &until, &app, &limit],
            |r| {
                let delivery_id = r.get::<Option<String>>(3)?.unwrap_or_default();
                Ok(fact(kind, r.get(0)?, r.get(1)?, delivery_id).issue(r.get(2)?))
            },
        )?);
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

/// A commit or a deploy read as `app, time, namespace, commit_sha,
/// image_sha`.
fn commit_or_deploy(
    kind: &'static str,
    r: &Row<'_>,
    delivery_id: String,
) -> Result<StoredEvent, DbError> {
    Ok(fact(kind, r.get(0)?, r.get(1)?, delivery_id)
        .namespace(r.get(2)?)
        .commit(r.get(3)?)
        .image(r.get(4)?))
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

    fn issue(mut self, number: String) -> Self {
        self.issue_number = Some(number);
        self
    }
}

/// The facts first stored by `delivery_id`.
fn produced(conn: &mut dyn Sql, delivery_id: &str) -> Result<Vec<StoredEvent>, DbError> {
    let mut events = Vec::new();
    for (kind, table) in [("commit", "commits"), ("deploy", "deploys")] {
        events.extend(conn.rows(
            &format!(
                "SELECT app, time, namespace, commit_sha, image_sha FROM {table} WHERE delivery_id = ?1"
            ),
            &[&delivery_id],
            |r| commit_or_deploy(kind, r, delivery_id.to_owned()),
        )?);
    }
    for (kind, column) in [
        ("failure_created", "created"),
        ("failure_resolved", "resolved"),
    ] {
        events.extend(conn.rows(
            &format!(
                "SELECT app, {column}, issue_number FROM failures WHERE {column}_delivery = ?1"
            ),
            &[&delivery_id],
            |r| Ok(fact(kind, r.get(0)?, r.get(1)?, delivery_id.to_owned()).issue(r.get(2)?)),
        )?);
    }
    Ok(events)
}
