//! What patients and the registration desk tell the custodian: consents registered and
//! withdrawn (`POST /v1/consents`, `/v1/consents/withdrawals`), and the DIDs linked to a
//! patient (`POST /v1/patient-links`, `/v1/patient-links/removals`, admin token).

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::state::GatewayState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use federation::credentials::CredentialKind;
use serde::Deserialize;
use serde_json::{json, Value};
use service::http::StrictJson;
use service::openapi::{AdminErrors, JsonBodyErrors, NotFound};
use std::sync::Arc;

type AppState = State<Arc<GatewayState>>;

/// A patient's presentation of their consents.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresentationBody {
    /// A VP: a compact JWS (`vp+jwt`) or a Data Integrity JSON object.
    presentation: Value,
}

/// Consents in a patient's presentation that are theirs and name this custodian.
fn own_consents<'a>(
    vp: &'a federation::verify::VerifiedPresentation,
    custodian: &'a str,
) -> impl Iterator<Item = &'a federation::verify::VerifiedCredential> {
    vp.of_kind(CredentialKind::PatientConsent)
        .filter(move |c| c.subject["id"] == vp.holder.as_str())
        .filter(move |c| {
            c.subject["custodians"]
                .as_array()
                .is_some_and(|a| a.iter().any(|d| d == custodian))
        })
}

/// `POST /v1/patient-links` and `/removals`: the custodian (its registration desk or
/// patient portal, holding the admin token) confirms that a DID belongs to one of its
/// patients, or withdraws that.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatientLinkBody {
    patient: crate::exchange::PatientRef,
    /// The patient's DID (at most 2,048 characters).
    did: String,
}

/// Checks an admin link request and finds its patient (never echoed: PHI).
async fn link_target(
    s: &GatewayState,
    headers: &HeaderMap,
    body: &PatientLinkBody,
) -> Result<String, GatewayError> {
    s.require_admin(headers)?;
    if !body.did.starts_with("did:") || body.did.len() > 2048 {
        return Err(GatewayError::bad_request(
            "invalid-did",
            "did must be a DID",
        ));
    }
    s.records
        .find_patient(&body.patient.system, &body.patient.value)
        .await
        .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?
        .ok_or_else(|| GatewayError::NotFound("a patient with this identifier".into()))
}

/// Link a DID to a patient of this custodian (admin).
#[utoipa::path(post, path = "/v1/patient-links", tag = "patients",
    request_body = PatientLinkBody, security(("adminToken" = [])),
    responses((status = 200, description = "`{did, linked: true}`", body = Object),
        JsonBodyErrors, AdminErrors, NotFound))]
pub(crate) async fn link_patient(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PatientLinkBody>,
) -> Result<Response, GatewayError> {
    let patient_id = link_target(&s, &headers, &body).await?;
    s.consents.link(&patient_id, &body.did).await?;
    tracing::info!(patient = %s.patient_ref(&patient_id), did_digest = %federation::events::patient_did_digest(&body.did), "patient DID linked");
    Ok(Json(json!({"did": body.did, "linked": true})).into_response())
}

/// Remove a patient link (admin).
#[utoipa::path(post, path = "/v1/patient-links/removals", tag = "patients",
    request_body = PatientLinkBody, security(("adminToken" = [])),
    responses((status = 200, description = "`{did, linked: false, removed}`", body = Object),
        JsonBodyErrors, AdminErrors, NotFound))]
pub(crate) async fn unlink_patient(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PatientLinkBody>,
) -> Result<Response, GatewayError> {
    let patient_id = link_target(&s, &headers, &body).await?;
    let removed = s.consents.unlink(&patient_id, &body.did).await?;
    tracing::info!(patient = %s.patient_ref(&patient_id), did_digest = %federation::events::patient_did_digest(&body.did), removed, "patient DID unlinked");
    Ok(Json(json!({"did": body.did, "linked": false, "removed": removed})).into_response())
}

/// A patient registers consents (presentation by the patient).
#[utoipa::path(post, path = "/v1/consents", tag = "patients",
    request_body = PresentationBody,
    responses((status = 201, description = "`{registered: [{id, patientKnown, speaksForPatient}]}`", body = Object),
        crate::error::Denied, JsonBodyErrors))]
pub(crate) async fn register_consents(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationBody>,
) -> Response {
    let answer = register(s.clone(), req).await;
    s.offering_next_challenge(answer)
}

async fn register(s: Arc<GatewayState>, req: PresentationBody) -> Result<Response, GatewayError> {
    let mut ledger = Ledger::new("consent", "PATRQT", &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let mut registered = Vec::new();
    for c in own_consents(&vp, &s.config.did) {
        let mut patient_id = None;
        for ident in c.subject["patientIdentifiers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if ident["custodian"] != s.config.did.as_str() {
                continue;
            }
            let (Some(system), Some(value)) = (ident["system"].as_str(), ident["value"].as_str())
            else {
                continue;
            };
            patient_id = s
                .records
                .find_patient(system, value)
                .await
                .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?;
            if patient_id.is_some() {
                break;
            }
        }
        let stored = s.consents.register(c, patient_id.clone()).await?;
        // Whether it speaks for the patient yet (a self-issued one needs a link).
        let speaks = patient_id.as_deref().is_some_and(|pid| {
            s.consents.speaks_for(
                pid,
                &stored.patient_did,
                &stored.issuer,
                s.config.custodian.require_patient_links,
            )
        });
        registered.push(json!({
            "id": stored.id,
            "patientKnown": patient_id.is_some(),
            "speaksForPatient": speaks,
        }));
    }
    if registered.is_empty() {
        return Err(GatewayError::Unprocessable(
            "the presentation holds no consent of the presenter naming this custodian".into(),
        ));
    }
    Ok((StatusCode::CREATED, Json(json!({"registered": registered}))).into_response())
}

/// A patient withdraws consents.
#[utoipa::path(post, path = "/v1/consents/withdrawals", tag = "patients",
    request_body = PresentationBody,
    responses((status = 200, description = "`{withdrawn: [id]}`", body = Object),
        crate::error::Denied, JsonBodyErrors))]
pub(crate) async fn withdraw_consents(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationBody>,
) -> Response {
    let answer = withdraw(s.clone(), req).await;
    s.offering_next_challenge(answer)
}

async fn withdraw(
    s: Arc<GatewayState>,
    req: PresentationBody,
) -> Result<Json<Value>, GatewayError> {
    let mut ledger = Ledger::new("consent", "PATRQT", &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let mut withdrawn = Vec::new();
    for c in own_consents(&vp, &s.config.did) {
        let id = c.id.clone().unwrap_or_else(|| c.digest.clone());
        s.consents.withdraw(&id).await?;
        withdrawn.push(id);
    }
    if withdrawn.is_empty() {
        return Err(GatewayError::Unprocessable(
            "the presentation holds no consent of the presenter naming this custodian".into(),
        ));
    }
    Ok(Json(json!({"withdrawn": withdrawn})))
}
