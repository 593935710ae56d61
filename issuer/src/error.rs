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
    /// An OpenID4VCI / OAuth 2.0 endpoint's refusal, answered in that protocol's format.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// An error of the OpenID4VCI endpoints (token, nonce, credential): `{"error",
/// "error_description"}` with the status the specifications give (RFC 6749 §5.2,
/// RFC 6750 §3.1, OpenID4VCI 1.0 §8.3.1).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {description}")]
pub struct ProtocolError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) description: String,
}

impl ProtocolError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<String>,
    ) -> Self {
        ProtocolError {
            status,
            code,
            description: description.into(),
        }
    }
    /// 400 with `code`.
    pub(crate) fn bad(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, description)
    }
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code,
            "error_description": self.description,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: the scheme, and why the token was refused.
            let challenge = format!("Bearer error=\"{}\"", self.code);
            if let Ok(value) = axum::http::HeaderValue::from_str(&challenge) {
                headers.insert(axum::http::header::WWW_AUTHENTICATE, value);
            }
        }
        response
            .extensions_mut()
            .insert(service::http::ProtocolErrorBody);
        response
    }
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
        let this = match self {
            IssuerError::Protocol(e) => return e.into_response(),
            other => other,
        };
        let problem = match &this {
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
            IssuerError::EarlierDatabase { .. } => service::http::internal(&this),
            // Answered above, in the protocol's own format.
            IssuerError::Protocol(e) => service::http::internal(e),
        };
        problem.into_response()
    }
}
