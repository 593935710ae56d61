//! The gateway's HTTP service: shared state, the router, and thin handlers that hand each
//! request to the flow in [`crate::exchange`].

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use federation::credentials::{CredentialKind, PresentationBinding};
use serde::Deserialize;
use serde_json::{json, Value};
use service::http::StrictJson;

use crate::error::GatewayError;
use crate::exchange::{self, ExchangeRequest, Ledger};
use crate::policy::{CredentialInput, PrivilegeFacts, StudyFacts, TokenInput};
use crate::state::GatewayState;
use crate::vault::VaultError;

type AppState = State<Arc<GatewayState>>;

pub fn router(state: Arc<GatewayState>) -> Router {
    let limits = state.config.limits.clone();
    let router = Router::new()
        .route("/.well-known/did.json", get(did_document))
        .route("/v1/challenges", post(challenge))
        .route("/v1/exchange/{domain}", post(exchange_handler))
        .route("/v1/research/queries", post(research_handler))
        .route("/v1/consents", post(register_consents))
        .route("/v1/consents/withdrawals", post(withdraw_consents))
        .route("/v1/patient-links", post(link_patient))
        .route("/v1/patient-links/removals", post(unlink_patient))
        .route("/v1/detokenize", post(detokenize_handler))
        .route("/credentials/verify", post(verify_credential))
        .route("/presentations/verify", post(verify_presentation))
        .route("/v1/keys", get(inventory))
        .route("/v1/log/checkpoint", get(adopted_checkpoint))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/openapi.json", get(openapi))
        .fallback(service::http::problem_fallback)
        .with_state(state);
    service::http::common_layers(router, &limits)
}

async fn did_document(State(s): AppState) -> Result<Json<Value>, GatewayError> {
    let mut doc = s
        .key
        .did_document()
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    doc["service"] = json!([{
        "id": format!("{}#gateway", s.config.did),
        "type": "FedgateGateway",
        "serviceEndpoint": s.config.public_url.clone().unwrap_or_default(),
    }]);
    Ok(Json(doc))
}

/// The log checkpoint this gateway adopted last, as the log signed it (a C2SP signed
/// note): what peer gateways compare with theirs (see `gossip`). Public: a tree size and a
/// root hash, nothing about any patient.
async fn adopted_checkpoint(State(s): AppState) -> Result<Response, GatewayError> {
    let state =
        s.db.open_tree(crate::shipper::LOG_STATE)
            .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    let adopted = crate::shipper::Adopted::load(&state)
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    match adopted.and_then(|a| a.note) {
        Some(note) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            note,
        )
            .into_response()),
        None => Err(GatewayError::NotFound("an adopted log checkpoint".into())),
    }
}

async fn inventory(State(s): AppState) -> Json<Value> {
    Json(json!({ "keys": [s.key.info()] }))
}

async fn challenge(State(s): AppState) -> Result<Response, GatewayError> {
    let (challenge, expires) = s
        .nonces
        .issue()
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "challenge": challenge,
            "domain": s.config.did,
            "expiresAt": federation::time::rfc3339(expires),
        })),
    )
        .into_response())
}

async fn exchange_handler(
    State(s): AppState,
    Path(domain): Path<String>,
    headers: HeaderMap,
    StrictJson(req): StrictJson<ExchangeRequest>,
) -> Result<Response, GatewayError> {
    // A domain is a lowercase name; anything else is malformed (400), a name that is no
    // exchange domain is unknown (404, in `exchange`).
    service::params::domain("domain", &domain)?;
    exchange::exchange(&s, &domain, req, &headers).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResearchRequest {
    purpose: String,
    query: crate::research::CohortQuery,
    presentation: Value,
}

async fn research_handler(
    State(s): AppState,
    StrictJson(req): StrictJson<ResearchRequest>,
) -> Result<Response, GatewayError> {
    if req.purpose != "HRESCH" {
        return Err(GatewayError::bad_request(
            "unknown-purpose",
            "research queries use purpose HRESCH",
        ));
    }
    if !s.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full".into(),
        ));
    }
    let mut ledger = Ledger::new("research", &req.purpose, &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    let study = match crate::policy::holder_study(&vp) {
        Ok(study) => study,
        Err(e) => return Err(s.deny_unasked(&ledger, e.to_string()).await?),
    };
    let Some(study) = study else {
        return Err(s
            .refuse(
                &ledger,
                "holder-binding",
                "no study credential of the presenter".into(),
            )
            .await);
    };
    ledger.data_classes = study.claims.data_classes.clone();
    let mut input = s.policy_input(&ledger, true);
    input.study = Some(CredentialInput::new(
        study.credential,
        StudyFacts::from(&study.claims),
    ));
    let decision = s.decide("research", input).await;
    if !decision.allow {
        s.record(&ledger, &decision, 0).await?;
        return Err(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons.clone(),
            check: None,
            policy: Some(decision.policy_digest.clone()),
        });
    }
    let study_id = study.claims.id.as_str();
    let cohort = s.consents.research_cohort(
        study_id,
        &vp.holder,
        &req.purpose,
        ledger.time,
        s.config.custodian.require_patient_links,
    )?;
    let min_cell = decision
        .obligations
        .min_cell_size
        .unwrap_or(s.config.custodian.min_cell_size)
        .max(s.config.custodian.min_cell_size);
    let result = crate::research::aggregate(&s.records, &cohort, &req.query, min_cell, ledger.time)
        .await
        .map_err(|e| GatewayError::Unprocessable(e.to_string()))?;
    s.record(&ledger, &decision, cohort.len() as u64).await?;
    let body = json!({
        "decisionId": ledger.decision_id,
        "study": study_id,
        "minCellSize": min_cell,
        "result": result,
    });
    exchange::respond(&ledger, &decision, body, None)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresentationBody {
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientLinkBody {
    patient: crate::exchange::PatientRef,
    did: String,
}

impl GatewayState {
    fn require_admin(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        match &self.admin {
            Some(token) if token.admits(headers) => Ok(()),
            _ => Err(GatewayError::Unauthorized),
        }
    }

    /// Checks an admin link request and finds its patient (never echoed: PHI).
    async fn link_target(
        &self,
        headers: &HeaderMap,
        body: &PatientLinkBody,
    ) -> Result<String, GatewayError> {
        self.require_admin(headers)?;
        if !body.did.starts_with("did:") || body.did.len() > 2048 {
            return Err(GatewayError::bad_request(
                "invalid-did",
                "did must be a DID",
            ));
        }
        self.records
            .find_patient(&body.patient.system, &body.patient.value)
            .await
            .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?
            .ok_or_else(|| GatewayError::NotFound("a patient with this identifier".into()))
    }
}

async fn link_patient(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PatientLinkBody>,
) -> Result<Response, GatewayError> {
    let patient_id = s.link_target(&headers, &body).await?;
    s.consents.link(&patient_id, &body.did).await?;
    tracing::info!(patient = %s.patient_ref(&patient_id), did_digest = %federation::events::patient_did_digest(&body.did), "patient DID linked");
    Ok(Json(json!({"did": body.did, "linked": true})).into_response())
}

async fn unlink_patient(
    State(s): AppState,
    headers: HeaderMap,
    StrictJson(body): StrictJson<PatientLinkBody>,
) -> Result<Response, GatewayError> {
    let patient_id = s.link_target(&headers, &body).await?;
    let removed = s.consents.unlink(&patient_id, &body.did).await?;
    tracing::info!(patient = %s.patient_ref(&patient_id), did_digest = %federation::events::patient_did_digest(&body.did), removed, "patient DID unlinked");
    Ok(Json(json!({"did": body.did, "linked": false, "removed": removed})).into_response())
}

async fn register_consents(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationBody>,
) -> Result<Response, GatewayError> {
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

async fn withdraw_consents(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationBody>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    token: String,
    purpose: String,
    presentation: Value,
}

async fn detokenize_handler(
    State(s): AppState,
    StrictJson(req): StrictJson<DetokenizeRequest>,
) -> Result<Response, GatewayError> {
    if !exchange::PURPOSES.contains(&req.purpose.as_str()) {
        return Err(GatewayError::bad_request(
            "unknown-purpose",
            "unknown purpose code",
        ));
    }
    if req.token.len() > 128 {
        return Err(GatewayError::bad_request("invalid-token", "token too long"));
    }
    if !s.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full".into(),
        ));
    }
    let mut ledger = Ledger::new("detokenize", &req.purpose, &[]);
    let vp = s
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;
    // A vault that cannot answer is a 503: the token may well exist.
    let info = s.vault.find(&req.token)?;
    let privilege = match crate::policy::holder_privilege(&vp) {
        Ok(privilege) => privilege,
        Err(e) => return Err(s.deny_unasked(&ledger, e.to_string()).await?),
    };
    let mut input = s.policy_input(&ledger, info.is_some());
    input.privilege =
        privilege.map(|p| CredentialInput::new(p.credential, PrivilegeFacts::from(&p.claims)));
    input.token = info.as_ref().map(|i| TokenInput {
        recipient: i.recipient_org.clone(),
        domain: i.domain.clone(),
        class: i.class.clone(),
    });
    let mut decision = s.decide("detokenize", input).await;
    if decision.allow && info.is_none() {
        decision = crate::policy::Decision::deny("unknown token");
    }
    let value = if decision.allow {
        match s.vault.reveal(
            &req.token,
            ledger.requester_org.as_deref().unwrap_or_default(),
        ) {
            Ok(v) => Some(v),
            Err(VaultError::WrongRecipient) => {
                decision =
                    crate::policy::Decision::deny("the token was not issued to this organization");
                None
            }
            Err(VaultError::UnknownToken) => {
                decision = crate::policy::Decision::deny("unknown token");
                None
            }
            // Storage (503) or a corrupt entry (500): nothing about the token or the caller.
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    s.record(&ledger, &decision, u64::from(value.is_some()))
        .await?;
    match value {
        Some(v) => {
            let class = info.map(|i| i.class).unwrap_or_default();
            exchange::respond(
                &ledger,
                &decision,
                json!({"value": v, "class": class, "decisionId": ledger.decision_id}),
                None,
            )
        }
        None => Err(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons.clone(),
            check: None,
            policy: Some(decision.policy_digest.clone()),
        }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyCredentialRequest {
    verifiable_credential: Value,
}

async fn verify_credential(
    State(s): AppState,
    StrictJson(req): StrictJson<VerifyCredentialRequest>,
) -> Result<Json<Value>, GatewayError> {
    match s
        .verifier
        .verify_credential(&req.verifiable_credential)
        .await
    {
        Ok(v) => Ok(Json(
            json!({"checks": v.checks, "warnings": [], "errors": [], "credential": v}),
        )),
        Err(e) => Err(verification_problem(e)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyPresentationRequest {
    verifiable_presentation: Value,
    options: PresentationBinding,
}

async fn verify_presentation(
    State(s): AppState,
    StrictJson(req): StrictJson<VerifyPresentationRequest>,
) -> Result<Json<Value>, GatewayError> {
    match s
        .verifier
        .verify_presentation(&req.verifiable_presentation, &req.options)
        .await
    {
        Ok(v) => Ok(Json(
            json!({"checks": v.checks, "warnings": [], "errors": [], "presentation": v}),
        )),
        Err(e) => Err(verification_problem(e)),
    }
}

fn verification_problem(e: federation::VerifyError) -> GatewayError {
    GatewayError::Unprocessable(e.to_string())
}

async fn readyz(State(s): AppState) -> Response {
    let policy = s.policy.current_digest();
    let outbox_ok = s.outbox.has_room();
    let body = json!({
        "policy": policy,
        // `pending`: events without a receipt; `unpublished` counts against `max`.
        "outbox": {
            "pending": s.outbox.unconfirmed_len(),
            "unpublished": s.outbox.len(),
            "awaitingReceipt": s.outbox.awaiting_len(),
            "max": s.config.outbox_max_events,
        },
    });
    if policy.is_some() && outbox_ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        service::http::service_unavailable(if policy.is_none() {
            "policies failed to load; every request is denied"
        } else {
            "the access-event outbox is full"
        })
        .with("state", body)
        .into_response()
    }
}

async fn metrics_handler(State(s): AppState) -> Response {
    metrics::gauge!("fedgate_outbox_pending").set(s.outbox.len() as f64);
    metrics::gauge!("fedgate_outbox_awaiting_receipt").set(s.outbox.awaiting_len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}
