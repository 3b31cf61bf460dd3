//! Why a poll did not complete, in the classes the schedule acts on
//! (limited, transient, refused, gone), each keeping its cause: the
//! underlying error where there is one (`source()`), else the endpoint and
//! what was wrong. The text is bounded and never carries a token, a URL's
//! query or a body.

use crate::store::StoreError;

/// Why a poll did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Nothing may be sent before `until` (epoch seconds, local clock).
    #[error("rate limited until {until}")]
    RateLimited { until: i64 },
    /// Retry later with backoff.
    #[error("transient failure: {0}")]
    Transient(#[source] Failure),
    /// The token, the repository or the permissions are wrong: retried at
    /// the longest interval only.
    #[error(transparent)]
    Refused(Refusal),
    /// 404 or 410: the repository, or one object, is gone.
    #[error("{endpoint}: {status}: no such repository or object, or the token cannot see it")]
    Gone {
        endpoint: &'static str,
        status: reqwest::StatusCode,
    },
}

/// A failure that a later attempt may not meet.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No answer (connection, timeout), or its body could not be read; the
    /// error is kept without its URL.
    #[error("{0}")]
    Request(#[source] reqwest::Error),
    /// An answer that is not the JSON the endpoint documents.
    #[error("{endpoint}: {source}")]
    Json {
        endpoint: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The store could not read or record.
    #[error("{0}")]
    Store(#[source] StoreError),
    /// A 5xx.
    #[error("{endpoint}: {status}")]
    ServerError { endpoint: &'static str, status: u16 },
    /// A 429 that says neither when to retry nor when the quota resets.
    #[error("{endpoint}: 429 without a retry time")]
    NoRetryTime { endpoint: &'static str },
    /// A 401 after which the token was read again and had changed.
    #[error("{endpoint}: 401; the token changed and is used from now on")]
    TokenChanged { endpoint: &'static str },
    /// A 304 to a request that was not conditional.
    #[error("{endpoint}: unexpected 304")]
    NotModified { endpoint: &'static str },
    /// An answer without what the endpoint documents (`what`).
    #[error("{endpoint}: {what}")]
    Missing {
        endpoint: &'static str,
        what: &'static str,
    },
    /// A branch head that is not a commit SHA.
    #[error("{endpoint}: not a commit SHA ({bytes} bytes)")]
    NotASha {
        endpoint: &'static str,
        bytes: usize,
    },
}

/// A refusal that needs a person.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{endpoint}: 401: the token is wrong or expired")]
    Unauthorized { endpoint: &'static str },
    /// A 403 that is no rate limit; `why` says what it may be.
    #[error("{endpoint}: 403 ({why})")]
    Forbidden {
        endpoint: &'static str,
        why: &'static str,
    },
    /// A status the provider does not document for the request.
    #[error("{endpoint}: unexpected {status}")]
    Status { endpoint: &'static str, status: u16 },
}

impl PollError {
    /// A transient failure of `endpoint` reading `source` as JSON.
    pub(in crate::poll) fn json(endpoint: &'static str, source: serde_json::Error) -> PollError {
        PollError::Transient(Failure::Json { endpoint, source })
    }

    /// A transient failure: `endpoint` answered without `what`.
    pub(in crate::poll) fn missing(endpoint: &'static str, what: &'static str) -> PollError {
        PollError::Transient(Failure::Missing { endpoint, what })
    }

    /// A transient failure: `endpoint` answered 304 to a request that was
    /// not conditional.
    pub(in crate::poll) fn not_modified(endpoint: &'static str) -> PollError {
        PollError::Transient(Failure::NotModified { endpoint })
    }
}

impl From<StoreError> for PollError {
    fn from(error: StoreError) -> PollError {
        PollError::Transient(Failure::Store(error))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn errors_print_their_bounded_text_and_keep_their_cause() {
        let json = serde_json::from_slice::<serde_json::Value>(b"{").unwrap_err();
        let text = json.to_string();
        let error = PollError::json("issues", json);
        assert_eq!(
            error.to_string(),
            format!("transient failure: issues: {text}")
        );
        let cause = error.source().and_then(|failure| failure.source());
        assert!(
            cause.is_some_and(|c| c.is::<serde_json::Error>()),
            "{cause:?}"
        );
        let gone = PollError::Gone {
            endpoint: "deployments",
            status: reqwest::StatusCode::NOT_FOUND,
        };
        assert_eq!(
            gone.to_string(),
            "deployments: 404 Not Found: no such repository or object, or the token cannot see it"
        );
        let refused = PollError::Refused(Refusal::Forbidden {
            endpoint: "deployments",
            why: "permission, SSO or a blocked token",
        });
        assert_eq!(
            refused.to_string(),
            "deployments: 403 (permission, SSO or a blocked token)"
        );
        assert_eq!(
            PollError::missing("branch", "no commit id").to_string(),
            "transient failure: branch: no commit id"
        );
    }
}
