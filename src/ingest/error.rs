//! `IngestError`: every way a delivery can be refused, and the one place where
//! each becomes an HTTP status and a JSON body. Bodies name the field and a
//! bounded reason code; a 5xx body reveals nothing about the cause.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use serde_json::json;

use crate::ledger::{DeliveryId, Outcome};
use crate::plugins::{FieldProblem, PayloadError};
use crate::signature::AuthFailure;

/// Seconds a sender is asked to wait after a 503: as long as the store
/// reports a fault.
pub const RETRY_AFTER_SECONDS: u64 = crate::store::FAULT_RETRY_AFTER.as_secs();

/// The most request headers a webhook may carry, and their total size
/// (names and values). Providers send 10 to 25; proxies add a few. Beyond
/// the HTTP parser's own hard limits (96 headers, 128 KiB of request head)
/// the connection is answered 431 and closed without a JSON body.
pub const MAX_REQUEST_HEADERS: usize = 64;
pub const MAX_REQUEST_HEADER_BYTES: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no such source")]
    UnknownSource,
    /// Answered like an unknown source; the log says how to enable it.
    #[error("no such source")]
    SourceDisabled,
    #[error("the body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request has {count} headers of {bytes} bytes; at most {MAX_REQUEST_HEADERS} headers of {MAX_REQUEST_HEADER_BYTES} bytes are read")]
    HeadersTooLarge { count: usize, bytes: usize },
    #[error("the body could not be read")]
    BodyRead,
    #[error("the body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("User-Agent must start with {expected}")]
    BadUserAgent { expected: &'static str },
    #[error("header {header} is missing")]
    MissingHeader { header: &'static str },
    #[error("header {header} has an unknown value")]
    UnknownEvent { header: &'static str },
    #[error("{}", .0.error)]
    Unauthorized(AuthFailure),
    #[error("the body is not a JSON object: {message}")]
    MalformedJson { message: String },
    #[error("the payload failed validation")]
    Invalid(Vec<FieldProblem>),
    #[error("the store is unavailable; retry later")]
    StoreUnavailable,
}

impl From<PayloadError> for IngestError {
    fn from(problem: PayloadError) -> Self {
        match problem {
            PayloadError::Malformed { message } => IngestError::MalformedJson { message },
            PayloadError::Invalid(problems) => IngestError::Invalid(problems),
        }
    }
}

impl IngestError {
    /// Refuses a request head beyond [`MAX_REQUEST_HEADERS`] or
    /// [`MAX_REQUEST_HEADER_BYTES`] before anything else is read.
    pub fn check_headers(headers: &actix_web::http::header::HeaderMap) -> Result<(), IngestError> {
        let count = headers.len();
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if count > MAX_REQUEST_HEADERS || bytes > MAX_REQUEST_HEADER_BYTES {
            return Err(IngestError::HeadersTooLarge { count, bytes });
        }
        Ok(())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownSource | IngestError::SourceDisabled => StatusCode::NOT_FOUND,
            IngestError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            IngestError::BodyRead => StatusCode::BAD_REQUEST,
            IngestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngestError::BadUserAgent { .. } => StatusCode::PRECONDITION_FAILED,
            IngestError::MissingHeader { .. } | IngestError::UnknownEvent { .. } => {
                StatusCode::BAD_REQUEST
            }
            IngestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IngestError::MalformedJson { .. } => StatusCode::BAD_REQUEST,
            IngestError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Bounded reason code, also kept in the ledger.
    pub fn reason(&self) -> &'static str {
        match self {
            // A disabled source answers exactly as an unknown one: the body
            // does not tell a scanner which sources exist.
            IngestError::UnknownSource | IngestError::SourceDisabled => "unknown_source",
            IngestError::UnsupportedMediaType => "unsupported_media_type",
            IngestError::TooLarge { .. } => "body_too_large",
            IngestError::HeadersTooLarge { .. } => "headers_too_large",
            IngestError::BodyRead => "body_unreadable",
            IngestError::BodyTimeout { .. } => "body_read_timeout",
            IngestError::BadUserAgent { .. } => "bad_user_agent",
            IngestError::MissingHeader { .. } => "missing_header",
            IngestError::UnknownEvent { .. } => "unknown_event",
            IngestError::Unauthorized(failure) => failure.error.as_str(),
            IngestError::MalformedJson { .. } => "invalid_json",
            IngestError::Invalid(problems) => problems
                .first()
                .map(|p| p.reason.as_str())
                .unwrap_or("invalid"),
            IngestError::StoreUnavailable => "store_unavailable",
        }
    }

    /// The field (or header) the error is about, if any.
    fn field(&self) -> Option<&'static str> {
        match self {
            IngestError::BadUserAgent { .. } => Some("User-Agent"),
            IngestError::MissingHeader { header } | IngestError::UnknownEvent { header } => {
                Some(header)
            }
            IngestError::Unauthorized(failure) => Some(failure.header),
            IngestError::UnsupportedMediaType => Some("Content-Type"),
            IngestError::HeadersTooLarge { .. } => Some("headers"),
            IngestError::Invalid(problems) => problems.first().map(|p| p.field),
            _ => None,
        }
    }

    /// The ledger outcome of a delivery refused this way, if it gets a row.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            IngestError::Unauthorized(_) => Some(Outcome::Rejected),
            IngestError::UnknownSource
            | IngestError::SourceDisabled
            | IngestError::HeadersTooLarge { .. }
            | IngestError::StoreUnavailable => None,
            _ => Some(Outcome::Invalid),
        }
    }

    /// The HTTP response: `{"outcome", "delivery_id", "detail", "error",
    /// "field", "reason"}`, plus `errors` listing every failing field on 422.
    pub fn to_response(&self, delivery_id: Option<&DeliveryId>) -> HttpResponse {
        let body = self.body(delivery_id);
        let mut response = HttpResponse::build(self.status());
        if matches!(self, IngestError::StoreUnavailable) {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string()));
        }
        if matches!(
            self,
            IngestError::TooLarge { .. } | IngestError::BodyTimeout { .. }
        ) {
            // The rest of the body is not read: the connection cannot be reused.
            response.insert_header((header::CONNECTION, "close"));
        }
        response.json(body)
    }

    /// The JSON body of [`IngestError::to_response`] (also one item of a
    /// batch answer).
    pub fn body(&self, delivery_id: Option<&DeliveryId>) -> serde_json::Value {
        let mut body = json!({
            "outcome": self.outcome().map(Outcome::as_str),
            "delivery_id": delivery_id.map(DeliveryId::as_str),
            "detail": self.to_string(),
            "error": self.status().canonical_reason().unwrap_or("error").to_ascii_lowercase().replace(' ', "_"),
            "reason": self.reason(),
            "field": self.field(),
        });
        if let IngestError::Invalid(problems) = self {
            body["errors"] = problems
                .iter()
                .map(|p| json!({"field": p.field, "reason": p.reason.as_str()}))
                .collect();
        }
        body
    }
}
