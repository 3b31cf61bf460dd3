//! Why a poll did not complete, in the classes the schedule acts on.

/// Why a poll did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Nothing may be sent before `until` (epoch seconds, local clock).
    #[error("rate limited until {until}")]
    RateLimited { until: i64 },
    /// Retry later with backoff.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The token, the repository or the permissions are wrong: retried at
    /// the longest interval only.
    #[error("{0}")]
    Refused(String),
    /// 404 or 410: the repository, or one object, is gone.
    #[error("{0}")]
    Gone(String),
}
