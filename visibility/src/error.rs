//! Errors of the visibility service, and their one mapping to RFC 9457 problem+json.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use std::path::PathBuf;

use crate::merkle::LogError;
use crate::store::StoreError;
use federation::checkpoint::NoteError;
use federation::keys::KeyError;
use federation::verify::{Check, VerifyError};
use service::http::Problem;

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
    /// A path parameter without its format (400, naming the parameter).
    #[error(transparent)]
    Param(#[from] service::params::ParamError),
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

/// Why the service's state could not be opened at start. One line, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] service::config::ConfigError),
    /// The key file (named in the message) is missing, open or malformed.
    #[error(transparent)]
    Key(KeyError),
    #[error("key_file belongs to {found}, not to the configured did {configured}")]
    KeyMismatch { found: String, configured: String },
    #[error("the visibility key must be an Ed25519 key (checkpoints are Ed25519 notes)")]
    NotEd25519,
    #[error("checkpoint verifier: {0}")]
    Note(#[from] NoteError),
    #[error("data_dir {}: {source}", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened (the message names the file: in use, damaged,
    /// written by a newer fedgate, or an earlier fedgate's sled database in its place).
    #[error(transparent)]
    Database(#[from] service::db::StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("registry: {0}")]
    Registry(String),
    #[error("members {did}: {source}")]
    Member {
        did: String,
        #[source]
        source: url::ParseError,
    },
    #[error("the service's DID document: {0}")]
    DidDocument(#[source] KeyError),
}

/// Why the log's last checkpoint cannot be served at start: serving the log as it is
/// would fork it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log holds {size} leaves but its last checkpoint names {checkpoint}: refusing to serve a log that lost entries")]
    LostEntries { size: u64, checkpoint: u64 },
    #[error("the log's root at size {size} differs from its last checkpoint: refusing to serve a rewritten log")]
    Rewritten { size: u64 },
    #[error("stored checkpoint: {0}")]
    Unreadable(#[source] NoteError),
    #[error("signing a checkpoint: {0}")]
    Sign(#[source] VisibilityError),
}

impl From<LogError> for CheckpointError {
    fn from(e: LogError) -> Self {
        CheckpointError::Store(e.into())
    }
}

impl From<service::db::StoreError> for CheckpointError {
    fn from(e: service::db::StoreError) -> Self {
        CheckpointError::Store(e.into())
    }
}

/// Why [`crate::run`] failed: at start or while serving. (Nothing is left to do at the
/// end: every write is on disk when it returns.)
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] service::start::StartError),
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl VisibilityError {
    pub(crate) fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        VisibilityError::BadRequest {
            slug,
            detail: detail.into(),
        }
    }

    pub(crate) fn forbidden(slug: &'static str, detail: impl Into<String>) -> Self {
        VisibilityError::Forbidden {
            slug,
            detail: detail.into(),
        }
    }

    pub(crate) fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        VisibilityError::Unprocessable {
            slug,
            detail: detail.into(),
        }
    }
}

impl From<service::nonce::NonceError> for VisibilityError {
    fn from(e: service::nonce::NonceError) -> Self {
        match e {
            service::nonce::NonceError::Storage(m) => VisibilityError::Storage(m),
            other => VisibilityError::Unauthorized(other.to_string()),
        }
    }
}

impl From<service::db::StoreError> for VisibilityError {
    fn from(e: service::db::StoreError) -> Self {
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
            LogError::EmptyName | LogError::Full | LogError::Storage(_) | LogError::Corrupt(_) => {
                VisibilityError::Storage(e.to_string())
            }
        }
    }
}

impl From<federation::checkpoint::NoteError> for VisibilityError {
    fn from(e: federation::checkpoint::NoteError) -> Self {
        VisibilityError::Signing(e.to_string())
    }
}

impl IntoResponse for VisibilityError {
    fn into_response(self) -> Response {
        let problem = match &self {
            VisibilityError::BadRequest { slug, detail } => {
                service::http::bad_request(slug, detail)
            }
            VisibilityError::Param(e) => e.problem(),
            VisibilityError::BadBatch { check, detail } => {
                service::http::bad_request("invalid-batch", detail)
                    .with("check", serde_json::json!(check))
            }
            VisibilityError::Unauthorized(m) => service::http::unauthorized(m),
            VisibilityError::Verification(v) => service::http::unauthorized(v.to_string())
                .with("check", serde_json::json!(v.check))
                .with("credential", serde_json::json!(v.credential)),
            VisibilityError::Forbidden { slug, detail } => service::http::forbidden(slug, detail),
            VisibilityError::NotFound(m) => service::http::not_found(m),
            VisibilityError::Conflict(m) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", m)
            }
            VisibilityError::TooLarge(m) => service::http::payload_too_large(m),
            VisibilityError::Unprocessable { slug, detail } => {
                service::http::unprocessable(slug, detail)
            }
            VisibilityError::Unavailable(m) => service::http::service_unavailable(m),
            VisibilityError::Storage(m) | VisibilityError::Signing(m) => service::http::internal(m),
        };
        problem.into_response()
    }
}
