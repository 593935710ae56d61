//! Errors of the issuer service, and their one mapping to RFC 9457 problem+json.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use federation::VerifyError;
use service::http::Problem;

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("admin credentials required")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    /// A path parameter without its format (400, naming the parameter).
    #[error(transparent)]
    Param(#[from] service::params::ParamError),
    #[error("{0}")]
    Unprocessable(String),
    #[error("verification failed: {0}")]
    Verification(#[from] VerifyError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A stored record that does not decode, or one that does not encode.
    #[error("storage: {0}")]
    Storage(String),
    /// The database (its Display names the file).
    #[error(transparent)]
    Database(#[from] service::db::StoreError),
    /// An earlier fedgate's sled database is where this one's would be.
    #[error(
        "{} is an earlier fedgate's sled database of issued credentials and revocations; this version cannot read it, and starting without it would reset the status list (un-revoking its credentials): keep running the earlier version",
        path.display()
    )]
    EarlierDatabase { path: std::path::PathBuf },
    #[error("signing: {0}")]
    Signing(String),
}

/// Why the issuer could not start, or stopped serving. One line, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Serve(#[from] service::start::StartError),
    /// A bundled context, schema or resource (`[bundle]`) that does not load.
    #[error(transparent)]
    Bundle(#[from] service::config::ConfigError),
    /// The key file (named in the message) is missing, open or malformed.
    #[error(transparent)]
    Key(federation::keys::KeyError),
    #[error("key_file belongs to {found}, not to the configured did {configured}")]
    KeyMismatch { found: String, configured: String },
    #[error(transparent)]
    AdminToken(#[from] service::admin::AdminTokenError),
    #[error("data_dir: {0}")]
    Store(#[source] IssuerError),
    #[error("did_web {did}: {source}")]
    DidWeb {
        did: String,
        #[source]
        source: url::ParseError,
    },
    #[error("the issuer's DID document: {0}")]
    DidDocument(#[source] federation::keys::KeyError),
}

impl From<federation::credentials::IssueError> for IssuerError {
    fn from(e: federation::credentials::IssueError) -> Self {
        use federation::credentials::IssueError::*;
        match e {
            Schema(_)
            | Type(_)
            | IssuerMismatch { .. }
            | Document(_)
            | NoSuchProof(_)
            | FormatNotForDocument(_) => IssuerError::Unprocessable(e.to_string()),
            SdJwt(federation::sdjwt::SdJwtError::Sign(m)) | Sign(m) => IssuerError::Signing(m),
            // What an SD-JWT VC needs that the credential does not give (a holder DID with
            // a local key, above all).
            SdJwt(other) => IssuerError::Unprocessable(other.to_string()),
        }
    }
}

impl IntoResponse for IssuerError {
    fn into_response(self) -> Response {
        let problem = match &self {
            IssuerError::Unauthorized => {
                service::http::unauthorized("this endpoint needs the issuer's admin bearer token")
            }
            IssuerError::BadRequest(m) => service::http::bad_request("bad-request", m),
            IssuerError::Param(e) => e.problem(),
            IssuerError::Unprocessable(m) => service::http::unprocessable("invalid-credential", m),
            IssuerError::Verification(v) => service::vcapi::verification_problem(v),
            IssuerError::NotFound(m) => service::http::not_found(format!("{m} not found")),
            IssuerError::Conflict(m) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", m)
            }
            IssuerError::Storage(m) | IssuerError::Signing(m) => service::http::internal(m),
            IssuerError::Database(e) => service::http::internal(e),
            IssuerError::EarlierDatabase { .. } => service::http::internal(&self),
        };
        problem.into_response()
    }
}
