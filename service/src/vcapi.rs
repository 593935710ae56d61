//! The W3C VC API verify endpoints, answered the same way by every service that has them
//! (issuer and gateway): `POST /credentials/verify` and `POST /presentations/verify`.
//!
//! Both take any VC Data Model 2.0 credential ([`Verifier::verify_any_credential`]): an
//! access decision is not made here, so a credential of a type fedgate does not know is
//! verified for what can be verified of it, and a presentation need not name its holder.
//! A failed verification is one problem+json shape everywhere: 422,
//! `problems/verification-failed`, the failing `check` and, inside a presentation, the
//! `credential`'s position.
//!
//! `options` members this service does not act on are ignored, as the VC API lets a
//! verifier do; `challenge` and `domain` are compared when given, and go together.

use axum::http::StatusCode;
use axum::Json;
use federation::credentials::PresentationBinding;
use federation::verify::Verifier;
use federation::VerifyError;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::http::Problem;

/// The body of `POST /credentials/verify`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyCredentialRequest {
    /// A Data Integrity credential (object), a `vc+jwt` (string), or an enveloped one.
    #[schema(value_type = Object)]
    verifiable_credential: Value,
    /// Ignored members are allowed (`checks`, ...).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    options: Option<Map<String, Value>>,
}

/// The body of `POST /presentations/verify`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPresentationRequest {
    /// A Data Integrity presentation (object) or a `vp+jwt` (string).
    #[schema(value_type = Object)]
    verifiable_presentation: Value,
    /// `challenge` and `domain` (together) the presentation must be bound to; other
    /// members are ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    options: Option<Map<String, Value>>,
}

/// A failed verification, named by its check (and credential, inside a presentation).
pub fn verification_problem(e: &VerifyError) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "verification-failed",
        "Verification failed",
        e.to_string(),
    )
    .with("check", json!(e.check))
    .with("credential", json!(e.credential))
}

fn option_string<'a>(
    options: Option<&'a Map<String, Value>>,
    key: &str,
) -> Result<Option<&'a str>, Problem> {
    match options.and_then(|o| o.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(crate::http::bad_request(
            "invalid-request",
            format!("options.{key} must be a string"),
        )),
    }
}

/// Verifies a credential of any type.
pub async fn verify_credential(
    verifier: &Verifier,
    req: VerifyCredentialRequest,
) -> Result<Json<Value>, Problem> {
    let _ = req.options;
    let v = verifier
        .verify_any_credential(&req.verifiable_credential)
        .await
        .map_err(|e| verification_problem(&e))?;
    Ok(Json(json!({
        "checks": v.checks,
        "warnings": v.warnings,
        "errors": [],
        "credential": v,
    })))
}

/// Verifies a presentation of credentials of any type, bound to `options.challenge` and
/// `options.domain` when they are given.
pub async fn verify_presentation(
    verifier: &Verifier,
    req: VerifyPresentationRequest,
) -> Result<Json<Value>, Problem> {
    let options = req.options.as_ref();
    let binding = match (
        option_string(options, "challenge")?,
        option_string(options, "domain")?,
    ) {
        (Some(challenge), Some(domain)) => Some(PresentationBinding {
            challenge: challenge.to_string(),
            domain: domain.to_string(),
        }),
        (None, None) => None,
        _ => {
            return Err(crate::http::bad_request(
                "invalid-request",
                "options.challenge and options.domain are given together",
            ))
        }
    };
    let v = verifier
        .verify_any_presentation(&req.verifiable_presentation, binding.as_ref())
        .await
        .map_err(|e| verification_problem(&e))?;
    let warnings: Vec<&String> = v
        .credentials
        .iter()
        .flat_map(|c| c.warnings.iter())
        .collect();
    Ok(Json(json!({
        "checks": v.checks,
        "warnings": warnings,
        "errors": [],
        "presentation": v,
    })))
}
