//! The pollers' saved state, one row per stream, written in the
//! transaction of the facts a poll read.

use super::sql::{DbError, Sql};

/// What one poller stream last saw: the response validators of its stable
/// URL and how far it has read (`watermark`: a server id or timestamp).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollCursor {
    pub stream: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub watermark: Option<String>,
}

/// Saves the state of poller streams and drops that of `forget`.
pub fn save_cursors(
    tx: &mut dyn Sql,
    cursors: &[PollCursor],
    forget: &[String],
    now_ms: i64,
) -> Result<(), DbError> {
    for cursor in cursors {
        tx.execute(
            "INSERT INTO poll_state (stream, etag, last_modified, watermark, updated_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (stream) DO UPDATE SET \
             etag = excluded.etag, last_modified = excluded.last_modified, \
             watermark = excluded.watermark, updated_ms = excluded.updated_ms",
            &[
                &cursor.stream,
                &cursor.etag,
                &cursor.last_modified,
                &cursor.watermark,
                &now_ms,
            ],
        )?;
    }
    for stream in forget {
        tx.execute("DELETE FROM poll_state WHERE stream = ?1", &[stream])?;
    }
    Ok(())
}
