//! Errors of the gateway, and their one mapping to RFC 9457 problem+json.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service::http::Problem;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The client's request is malformed (400).
    #[error("{detail}")]
    BadRequest { slug: &'static str, detail: String },
    /// A path parameter without its format (400, naming the parameter).
    #[error(transparent)]
    Param(#[from] service::params::ParamError),
    /// Well-formed but not processable (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("unknown data domain {0:?} (clinical or billing)")]
    UnknownDomain(String),
    /// Access refused: verification failed or policy denied (403). Always recorded.
    #[error("access denied")]
    Denied {
        decision_id: String,
        reasons: Vec<String>,
        check: Option<String>,
        /// Digest of the policy bundle that decided (none when verification refused).
        policy: Option<String>,
    },
    #[error("{0} not found")]
    NotFound(String),
    /// An admin endpoint without the admin token (401).
    #[error("the gateway's admin token is required")]
    Unauthorized,
    /// Fail closed: the gateway cannot record or decide right now (503).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        GatewayError::BadRequest {
            slug,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let problem = match self {
            GatewayError::BadRequest { slug, detail } => {
                service::http::bad_request(slug, detail)
            }
            GatewayError::Param(e) => e.problem(),
            GatewayError::Unprocessable(d) => service::http::unprocessable("invalid-request", d),
            GatewayError::UnknownDomain(d) => service::http::not_found(format!(
                "unknown data domain {d:?} (clinical or billing)"
            )),
            GatewayError::Denied {
                decision_id,
                reasons,
                check,
                policy,
            } => {
                let detail = reasons
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "access denied".into());
                let mut p = Problem::new(
                    StatusCode::FORBIDDEN,
                    "access-denied",
                    "Access denied",
                    detail,
                )
                .with("decision_id", decision_id)
                .with("reasons", serde_json::json!(reasons));
                if let Some(check) = check {
                    p = p.with("check", check);
                }
                if let Some(policy) = policy.filter(|d| !d.is_empty()) {
                    p = p.with("policy_digest", policy);
                }
                p
            }
            GatewayError::NotFound(what) => {
                service::http::not_found(format!("{what} not found"))
            }
            GatewayError::Unauthorized => service::http::unauthorized(
                "this endpoint needs the gateway's admin token (admin_token_file) as a Bearer token",
            ),
            GatewayError::Unavailable(d) => service::http::service_unavailable(d),
            GatewayError::Internal(d) => service::http::internal(d),
        };
        problem.into_response()
    }
}
