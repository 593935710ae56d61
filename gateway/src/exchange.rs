//! One request through the gateway, top to bottom:
//! verify → decide → fetch → tokenize → record → respond.
//!
//! Every request that names a domain and carries a presentation gets a decision id and an
//! access event, whether it is allowed, denied by policy, or refused by verification.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use federation::credentials::{ConsentSubject, CredentialKind};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::policy::{
    claims_of, holder_privilege, ConsentInput, CredentialInput, Decision, PrivilegeFacts,
};
use crate::state::GatewayState;

/// HL7 v3 PurposeOfUse codes this gateway understands (the federation's); anything else is
/// a client error.
pub use federation::events::PURPOSES;

/// The patient, named by the identifier the custodian knows them by.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientRef {
    pub system: String,
    pub value: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    pub purpose: String,
    pub patient: PatientRef,
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub justification: Option<String>,
    pub presentation: Value,
}

pub use crate::policy::requester_org;

pub use federation::verify::claimed_challenge;

/// Whether a consent names this patient at this custodian.
fn consent_is_about(c: &ConsentSubject, custodian: &str, patient: &PatientRef) -> bool {
    c.patient_identifiers
        .iter()
        .any(|i| i.custodian == custodian && i.system == patient.system && i.value == patient.value)
}

/// `POST /v1/exchange/{domain}`.
pub async fn exchange(
    state: &GatewayState,
    domain: &str,
    req: ExchangeRequest,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    if !matches!(domain, "clinical" | "billing") {
        return Err(GatewayError::UnknownDomain(domain.to_string()));
    }
    if !PURPOSES.contains(&req.purpose.as_str()) {
        return Err(GatewayError::bad_request(
            "unknown-purpose",
            format!(
                "unknown purpose code {:?} (HL7 v3 PurposeOfUse)",
                req.purpose
            ),
        ));
    }
    if req.data_classes.is_empty()
        || req.data_classes.len() > 64
        || req.data_classes.iter().any(|c| !is_resource_type(c))
    {
        return Err(GatewayError::bad_request(
            "invalid-data-classes",
            "data_classes must list 1 to 64 FHIR resource type names",
        ));
    }
    if req.patient.system.len() > 256 || req.patient.value.len() > 128 {
        return Err(GatewayError::bad_request(
            "invalid-patient",
            "patient identifier too long",
        ));
    }
    if req.justification.as_ref().is_some_and(|j| j.len() > 1000) {
        return Err(GatewayError::bad_request(
            "invalid-justification",
            "justification over 1000 characters",
        ));
    }
    let wants_jwe = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/jose"));
    // Fail closed before doing any work if the access could not be recorded.
    if !state.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full; refusing to serve unrecorded access".into(),
        ));
    }

    let mut ledger = Ledger::new(domain, &req.purpose, &req.data_classes);
    ledger.justification = req.justification.clone().filter(|j| !j.trim().is_empty());

    // verify
    let vp = state
        .verify_presentation(&mut ledger, &req.presentation)
        .await?;

    // decide
    let patient_id = state
        .records
        .find_patient(&req.patient.system, &req.patient.value)
        .await
        .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?;
    if let Some(pid) = &patient_id {
        ledger.patient_ref = Some(state.patient_ref(pid));
    }
    let custodian = state.config.did.as_str();
    let require_links = state.config.custodian.require_patient_links;
    // The patient's DIDs this custodian knows (links and registered consents), so that
    // they find this access in their history even when it was made without their consent
    // (break-glass, denials).
    let registered = patient_id
        .as_deref()
        .map(|pid| state.consents.dids_for_patient(pid, require_links))
        .transpose()?
        .unwrap_or_default();
    let claims = claims_of::<ConsentSubject>(&vp, CredentialKind::PatientConsent)
        .and_then(|consents| Ok((consents, holder_privilege(&vp)?)));
    let (consents, privilege) = match claims {
        Ok(claims) => claims,
        Err(e) => {
            ledger.patient_did_digests = did_digests(registered);
            return Err(state.deny_unasked(&ledger, e.to_string()).await?);
        }
    };
    let consents: Vec<_> = consents
        .into_iter()
        .filter(|c| consent_is_about(&c.claims, custodian, &req.patient))
        .filter(|c| {
            let credential = c.credential;
            !state
                .consents
                .is_withdrawn(credential.id.as_deref().unwrap_or(&credential.digest))
        })
        .collect();
    // Whether each consent's DID speaks for this patient: a self-issued consent does only
    // once the custodian has linked its DID to the patient (policy decides what an
    // unlinked one is worth; `require_patient_links` is in `input.custodian`).
    let consents: Vec<ConsentInput> = consents
        .iter()
        .map(|c| {
            let linked = patient_id
                .as_deref()
                .is_some_and(|pid| state.consents.is_linked(pid, &c.claims.id));
            ConsentInput::new(c.credential, &c.claims, linked)
        })
        .collect();
    // Besides the registered DIDs, those of the consents presented that speak for the
    // patient: a DID that does not never sees their history.
    ledger.patient_did_digests = did_digests(
        consents
            .iter()
            .filter(|c| !require_links || c.patient_linked || !c.self_issued)
            .map(|c| c.subject.id.clone())
            .chain(registered),
    );
    let mut input = state.policy_input(&ledger, patient_id.is_some());
    input.privilege =
        privilege.map(|p| CredentialInput::new(p.credential, PrivilegeFacts::from(&p.claims)));
    input.consents = consents;
    let mut decision = state.decide(domain, input).await;
    if decision.allow && patient_id.is_none() {
        decision = Decision::deny("the patient is not known at this custodian");
    }
    let Some(patient_id) = patient_id.filter(|_| decision.allow) else {
        state.record(&ledger, &decision, 0).await?;
        return Err(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons.clone(),
            check: None,
            policy: Some(decision.policy_digest.clone()),
        });
    };

    // fetch
    let resources = state
        .records
        .patient_resources(&patient_id, &decision.data_classes)
        .await
        .map_err(|e| GatewayError::Unavailable(format!("record store: {e}")))?;

    // tokenize
    let resources = state
        .tokenize(
            resources,
            decision.obligations.clone(),
            ledger.requester_org.clone().unwrap_or_default(),
            domain,
            ledger.time,
        )
        .await?;

    // record
    state
        .record(&ledger, &decision, resources.len() as u64)
        .await?;

    // respond
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "identifier": {"system": "urn:fedgate:decision", "value": ledger.decision_id},
        "meta": {"lastUpdated": federation::time::rfc3339(Utc::now())},
        "total": resources.len(),
        "entry": resources.into_iter().map(|r| json!({"resource": r, "search": {"mode": "match"}})).collect::<Vec<_>>(),
    });
    respond(
        &ledger,
        &decision,
        bundle,
        wants_jwe.then_some(vp.holder.as_str()),
    )
}

/// Sorted, distinct access-event digests of patient DIDs.
fn did_digests(dids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut digests: Vec<String> = dids
        .into_iter()
        .map(|d| federation::events::patient_did_digest(&d))
        .collect();
    digests.sort();
    digests.dedup();
    digests
}

/// Serializes an allowed answer, encrypting it to `encrypt_to` when asked.
pub fn respond(
    ledger: &Ledger,
    decision: &Decision,
    body: Value,
    encrypt_to: Option<&str>,
) -> Result<Response, GatewayError> {
    let bytes = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let mut response = match encrypt_to {
        Some(did) => {
            let jwe = crate::jwe::encrypt_for(did, &bytes).map_err(|e| {
                GatewayError::Unprocessable(format!("cannot encrypt the response: {e}"))
            })?;
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/jose")],
                jwe,
            )
                .into_response()
        }
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/fhir+json")],
            bytes,
        )
            .into_response(),
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ledger.decision_id) {
        h.insert("fedgate-decision-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&decision.policy_digest) {
        h.insert("fedgate-policy-digest", v);
    }
    if decision.break_glass {
        h.insert("fedgate-break-glass", HeaderValue::from_static("true"));
        if let Some(Ok(v)) = decision.expires_at.as_deref().map(HeaderValue::from_str) {
            h.insert("fedgate-access-expires", v);
        }
    }
    Ok(response)
}

/// A FHIR resource type name: an ASCII letter then letters (a closed shape, not a list).
pub fn is_resource_type(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphabetic())
}
