//! Errors of the visibility service, and their one mapping to RFC 9457 problem+json.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::http::Problem;
use crate::log::LogError;
use crate::verify::{Check, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum VisibilityError {
    /// A malformed request (400).
    #[error("{detail}")]
    BadRequest { slug: &'static str, detail: String },
    /// A signed batch refused before its signature is checked (400 `invalid-batch`),
    /// naming the check as the verification pipeline would: `format` for bytes that are
    /// not a compact JWS over strict JSON, `proof` for a hostile header.
    #[error("{detail}")]
    BadBatch { check: Check, detail: String },
    /// No or no valid session (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A presentation that failed the pipeline (401: it is this service's login).
    #[error("verification failed: {0}")]
    Verification(#[from] VerifyError),
    /// Authenticated but not allowed (403).
    #[error("{detail}")]
    Forbidden { slug: &'static str, detail: String },
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what the log already holds (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed but invalid content (422).
    #[error("{detail}")]
    Unprocessable { slug: &'static str, detail: String },
    /// A dependency (a member's DID document, storage under contention) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("signing: {0}")]
    Signing(String),
}

impl VisibilityError {
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        VisibilityError::BadRequest {
            slug,
            detail: detail.into(),
        }
    }

    pub fn forbidden(slug: &'static str, detail: impl Into<String>) -> Self {
        VisibilityError::Forbidden {
            slug,
            detail: detail.into(),
        }
    }

    pub fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        VisibilityError::Unprocessable {
            slug,
            detail: detail.into(),
        }
    }
}

impl From<crate::nonce::NonceError> for VisibilityError {
    fn from(e: crate::nonce::NonceError) -> Self {
        match e {
            crate::nonce::NonceError::Storage(m) => VisibilityError::Storage(m),
            other => VisibilityError::Unauthorized(other.to_string()),
        }
    }
}

impl From<sled::Error> for VisibilityError {
    fn from(e: sled::Error) -> Self {
        VisibilityError::Storage(e.to_string())
    }
}

impl From<LogError> for VisibilityError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::IndexOutOfRange { .. }
            | LogError::SizeTooLarge { .. }
            | LogError::OldAfterNew { .. }
            | LogError::EmptyOldTree => VisibilityError::bad_request("out-of-range", e.to_string()),
            LogError::Conflict => VisibilityError::Unavailable(e.to_string()),
            LogError::EmptyName | LogError::Full | LogError::Storage(_) | LogError::Corrupt(_) => {
                VisibilityError::Storage(e.to_string())
            }
        }
    }
}

impl From<crate::checkpoint::NoteError> for VisibilityError {
    fn from(e: crate::checkpoint::NoteError) -> Self {
        VisibilityError::Signing(e.to_string())
    }
}

impl IntoResponse for VisibilityError {
    fn into_response(self) -> Response {
        let problem = match &self {
            VisibilityError::BadRequest { slug, detail } => crate::http::bad_request(slug, detail),
            VisibilityError::BadBatch { check, detail } => {
                crate::http::bad_request("invalid-batch", detail)
                    .with("check", serde_json::json!(check))
            }
            VisibilityError::Unauthorized(m) => crate::http::unauthorized(m),
            VisibilityError::Verification(v) => crate::http::unauthorized(v.to_string())
                .with("check", serde_json::json!(v.check))
                .with("credential", serde_json::json!(v.credential)),
            VisibilityError::Forbidden { slug, detail } => crate::http::forbidden(slug, detail),
            VisibilityError::NotFound(m) => crate::http::not_found(m),
            VisibilityError::Conflict(m) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", m)
            }
            VisibilityError::TooLarge(m) => crate::http::payload_too_large(m),
            VisibilityError::Unprocessable { slug, detail } => {
                crate::http::unprocessable(slug, detail)
            }
            VisibilityError::Unavailable(m) => crate::http::service_unavailable(m),
            VisibilityError::Storage(m) | VisibilityError::Signing(m) => crate::http::internal(m),
        };
        problem.into_response()
    }
}
