//! Read-only access to the stored history, for `hookgauge export`. Reads on
//! its own connection, so it runs beside serving processes (WAL lets readers
//! and the writer of the embedded file proceed together) and never writes.

use super::deliveries::Reader;
use super::sql::{DbError, Row, Sql};
use super::{FaultKind, Location, StoreError};

/// Which part of the history to read: events whose time lies in `[from, to]`,
/// of one app or of all.
#[derive(Debug, Clone)]
pub struct HistoryFilter {
    pub from: i64,
    pub to: i64,
    pub app: Option<String>,
}

/// One stored deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRow {
    pub app: String,
    pub namespace: String,
    pub image_sha: String,
    pub time: i64,
}

/// One stored commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRow {
    pub app: String,
    pub commit: String,
    pub image_sha: String,
    pub namespace: String,
    pub commit_link: String,
    pub time: i64,
}

/// One end of a stored failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRow {
    pub app: String,
    pub issue_number: String,
    pub time: i64,
}

/// One histogram observation and the time it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationRow {
    pub app: String,
    pub time: i64,
    pub seconds: f64,
}

/// Maps `SELECT app, <time>, seconds` to an observation.
fn observation_row(r: &Row<'_>) -> Result<ObservationRow, DbError> {
    Ok(ObservationRow {
        app: r.get(0)?,
        time: r.get(1)?,
        seconds: r.get::<i64>(2)? as f64,
    })
}

pub struct History {
    reader: Reader,
}

impl History {
    /// Reads the store at `location`; an embedded store must exist.
    pub fn open(location: &Location) -> Result<History, StoreError> {
        if let Location::Sqlite(path) = location {
            if !path.exists() {
                return Err(StoreError::unavailable(
                    FaultKind::Open,
                    super::Unusable::NoStore(path.clone()),
                ));
            }
        }
        // An export reads whole histories: no statement timeout.
        let location = match location {
            Location::Postgres(config) => Location::Postgres(Box::new(config.without_timeouts())),
            other => other.clone(),
        };
        Ok(History {
            reader: Reader::new(&location),
        })
    }

    fn query<T>(
        &self,
        sql: &str,
        filter: &HistoryFilter,
        row: impl Fn(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, StoreError> {
        self.reader.run(|conn: &mut dyn Sql| {
            conn.rows(
                sql,
                &[&filter.from, &filter.to, &filter.app.as_deref()],
                row,
            )
        })
    }

    /// Deploys in the window, ordered by app, namespace and time.
    pub fn deploys(&self, filter: &HistoryFilter) -> Result<Vec<DeployRow>, StoreError> {
        self.query(
            "SELECT app, namespace, image_sha, time FROM deploys WHERE time BETWEEN ?1 AND ?2 \
             AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) ORDER BY app, namespace, time, image_sha",
            filter,
            |r| {
                Ok(DeployRow {
                    app: r.get(0)?,
                    namespace: r.get(1)?,
                    image_sha: r.get(2)?,
                    time: r.get(3)?,
                })
            },
        )
    }

    /// Commits in the window, ordered by series and time.
    pub fn commits(&self, filter: &HistoryFilter) -> Result<Vec<CommitRow>, StoreError> {
        self.query(
            "SELECT app, commit_sha, image_sha, namespace, commit_link, time FROM commits \
             WHERE time BETWEEN ?1 AND ?2 AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) \
             ORDER BY app, commit_sha, image_sha, time",
            filter,
            |r| {
                Ok(CommitRow {
                    app: r.get(0)?,
                    commit: r.get(1)?,
                    image_sha: r.get(2)?,
                    namespace: r.get(3)?,
                    commit_link: r.get(4)?,
                    time: r.get(5)?,
                })
            },
        )
    }

    /// Failure creations (`resolved == false`) or resolutions of the whole
    /// history up to `filter.to`, ordered by app and time; the caller counts
    /// those before `filter.from` into its counters.
    pub fn failure_ends(
        &self,
        filter: &HistoryFilter,
        resolved: bool,
    ) -> Result<Vec<FailureRow>, StoreError> {
        let sql = if resolved {
            "SELECT app, issue_number, resolved FROM failures WHERE resolved IS NOT NULL AND resolved <= ?2 \
             AND CAST(?1 AS BIGINT) IS NOT NULL AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) ORDER BY app, resolved, issue_number"
        } else {
            "SELECT app, issue_number, created FROM failures WHERE created IS NOT NULL AND created <= ?2 \
             AND CAST(?1 AS BIGINT) IS NOT NULL AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) ORDER BY app, created, issue_number"
        };
        self.query(sql, filter, |r| {
            Ok(FailureRow {
                app: r.get(0)?,
                issue_number: r.get(1)?,
                time: r.get(2)?,
            })
        })
    }

    /// Lead-time observations of the whole history up to `filter.to`, at the
    /// time they were made (the commit's first deployment), ordered by app and time.
    pub fn lead_times(&self, filter: &HistoryFilter) -> Result<Vec<ObservationRow>, StoreError> {
        self.query(
            "SELECT app, at, seconds FROM (\
               SELECT o.app AS app, c.time + o.seconds AS at, o.seconds AS seconds FROM observations o \
               JOIN (SELECT app, commit_sha, MIN(time) AS time FROM commits GROUP BY app, commit_sha) c \
                 ON c.app = o.app AND c.commit_sha = o.subject \
               WHERE o.kind = 'lead_time' AND (CAST(?3 AS TEXT) IS NULL OR o.app = ?3)) AS made \
             WHERE at <= ?2 AND CAST(?1 AS BIGINT) IS NOT NULL ORDER BY app, at",
            filter,
            observation_row,
        )
    }

    /// Time-to-restore observations up to `filter.to`, at their resolution
    /// (or creation, whichever came later), ordered by app and time.
    pub fn restore_times(&self, filter: &HistoryFilter) -> Result<Vec<ObservationRow>, StoreError> {
        self.query(
            "SELECT app, at, seconds FROM (\
               SELECT o.app AS app, CASE WHEN f.created > f.resolved THEN f.created ELSE f.resolved END AS at, \
                 o.seconds AS seconds FROM observations o \
               JOIN failures f ON f.app = o.app AND f.issue_number = o.subject \
               WHERE o.kind = 'time_to_restore' AND (CAST(?3 AS TEXT) IS NULL OR o.app = ?3)) AS made \
             WHERE at <= ?2 AND CAST(?1 AS BIGINT) IS NOT NULL ORDER BY app, at",
            filter,
            observation_row,
        )
    }
}
