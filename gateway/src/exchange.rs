//! One request through the gateway, top to bottom:
//! verify → decide → fetch → tokenize → record → respond.
//!
//! Every request that names a domain and carries a presentation gets a decision id and an
//! access event, whether it is allowed, denied by policy, or refused by verification.

use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, Utc};
use federation::credentials::{ConsentSubject, CredentialKind, PresentationBinding};
use federation::events::{AccessEvent, Outcome};
use federation::verify::{VerifiedPresentation, VerifyError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::policy::{
    claims_of, holder_privilege, ConsentInput, CredentialInput, CustodianInput, Decision,
    Obligations, PolicyInput, PrivilegeFacts, RequestInput,
};
use crate::state::GatewayState;

/// HL7 v3 PurposeOfUse codes this gateway understands; anything else is a client error.
pub const PURPOSES: [&str; 12] = [
    "TREAT",
    "ETREAT",
    "BTG",
    "CAREMGT",
    "HPAYMT",
    "COVERAGE",
    "CLMATTCH",
    "HOPERAT",
    "HRESCH",
    "PUBHLTH",
    "HSYSADMIN",
    "PATRQT",
];

/// The patient, named by the identifier the custodian knows them by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientRef {
    pub system: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    pub purpose: String,
    pub patient: PatientRef,
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub justification: Option<String>,
    pub presentation: Value,
}

/// What the event of a decision is made of, filled in as the request goes.
pub struct Ledger {
    pub decision_id: String,
    pub started: Instant,
    pub time: DateTime<Utc>,
    pub domain: String,
    pub purpose: String,
    pub data_classes: Vec<String>,
    pub requester: Option<String>,
    pub requester_org: Option<String>,
    pub patient_ref: Option<String>,
    pub patient_did_digests: Vec<String>,
    pub credential_ids: Vec<String>,
    pub justification: Option<String>,
}

impl Ledger {
    pub fn new(domain: &str, purpose: &str, data_classes: &[String]) -> Self {
        Ledger {
            decision_id: AccessEvent::new_id(),
            started: Instant::now(),
            time: Utc::now(),
            domain: domain.to_string(),
            purpose: purpose.to_string(),
            data_classes: data_classes.to_vec(),
            requester: None,
            requester_org: None,
            patient_ref: None,
            patient_did_digests: Vec::new(),
            credential_ids: Vec::new(),
            justification: None,
        }
    }

    pub fn note_presentation(&mut self, vp: &VerifiedPresentation) {
        self.requester = Some(vp.holder.clone());
        self.requester_org = requester_org(vp);
        self.credential_ids = vp
            .credentials
            .iter()
            .map(|c| c.id.clone().unwrap_or_else(|| c.digest.clone()))
            .collect();
    }

    fn event(&self, custodian: &str, outcome: Outcome) -> AccessEvent {
        AccessEvent {
            id: self.decision_id.clone(),
            time: self.time,
            custodian: custodian.to_string(),
            requester_org: self.requester_org.clone(),
            requester: self.requester.clone(),
            patient_ref: self.patient_ref.clone(),
            patient_did_digests: self.patient_did_digests.clone(),
            domain: self.domain.clone(),
            purpose: self.purpose.clone(),
            data_classes: self.data_classes.clone(),
            record_count: 0,
            decision: outcome,
            decision_id: self.decision_id.clone(),
            reasons: Vec::new(),
            policy_digest: String::new(),
            credential_ids: self.credential_ids.clone(),
            failed_check: None,
            break_glass: false,
            justification: self.justification.clone(),
            review_required: false,
            expires_at: None,
        }
    }
}

pub use crate::policy::requester_org;

pub use federation::verify::claimed_challenge;

impl GatewayState {
    /// Records a refusal that happened before policy, then returns the 403 to send.
    ///
    /// The event names the failed check in fixed text only: `reason`'s detail can quote
    /// the presentation (a schema error quotes the field it refuses), which its sender may
    /// read in the answer but the federation's log must never keep.
    pub async fn refuse(&self, ledger: &Ledger, check: &str, reason: String) -> GatewayError {
        let mut event = ledger.event(&self.config.did, Outcome::Deny);
        event.failed_check = Some(check.to_string());
        event.reasons = vec![federation::events::verification_reason(check)];
        metrics::counter!("fedgate_verification_failures_total", "check" => check.to_string())
            .increment(1);
        metrics::counter!("fedgate_decisions_total", "domain" => ledger.domain.clone(), "outcome" => "deny")
            .increment(1);
        if let Err(e) = self.outbox.append(event).await {
            return GatewayError::Unavailable(e.to_string());
        }
        GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: vec![reason],
            check: Some(check.to_string()),
            policy: None,
        }
    }

    /// Records a failed verification under the check that failed.
    async fn refuse_verification(&self, ledger: &Ledger, e: &VerifyError) -> GatewayError {
        let reason = match e.credential {
            Some(i) => format!("credential #{i}: {}", e.check),
            None => format!("presentation: {}", e.check),
        };
        let reason = format!("{reason} check failed: {}", e.detail);
        self.refuse(ledger, e.check.as_str(), reason).await
    }

    /// Verifies a presentation bound to one of our challenges and consumes the challenge.
    pub async fn verify_presentation(
        &self,
        ledger: &mut Ledger,
        presentation: &Value,
    ) -> Result<VerifiedPresentation, GatewayError> {
        // The challenge is read only once the presentation passed the checks verification
        // makes first (its JWS header is held to a credential's rules), so a forged header
        // is refused as `proof`, never reported as a replay.
        let challenge = match claimed_challenge(presentation) {
            Ok(challenge) => challenge,
            Err(e) => return Err(self.refuse_verification(ledger, &e).await),
        };
        let binding = PresentationBinding {
            challenge: challenge.clone(),
            domain: self.config.did.clone(),
        };
        let vp = match self
            .verifier
            .verify_presentation(presentation, &binding)
            .await
        {
            Ok(vp) => vp,
            Err(e) => return Err(self.refuse_verification(ledger, &e).await),
        };
        ledger.note_presentation(&vp);
        // Consumed only after the proof verified: a forged presentation cannot burn
        // somebody else's challenge, and of two replays exactly one gets through.
        if let Err(e) = self.nonces.consume(&challenge) {
            return Err(self.refuse(ledger, "challenge", e.to_string()).await);
        }
        Ok(vp)
    }

    /// Evaluates policy on the blocking pool (big stacks; the engine has its own timer).
    pub async fn decide(&self, domain: &str, input: PolicyInput) -> Decision {
        let policy = self.policy.clone();
        let domain_owned = domain.to_string();
        let started = Instant::now();
        let decision = tokio::task::spawn_blocking(move || policy.evaluate(&domain_owned, &input))
            .await
            .unwrap_or_else(|_| Decision::deny("policy evaluation aborted"));
        metrics::histogram!("fedgate_decision_seconds", "domain" => domain.to_string())
            .record(started.elapsed().as_secs_f64());
        decision
    }

    /// Tokenizes what leaves, on the blocking pool: it hashes, encrypts and writes new
    /// tokens to the vault with one flush, none of which may stall the async workers.
    pub async fn tokenize(
        &self,
        resources: Vec<Value>,
        obligations: Obligations,
        recipient_org: String,
        domain: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Value>, GatewayError> {
        let vault = self.vault.clone();
        let key = self.secret;
        let domain = domain.to_string();
        tokio::task::spawn_blocking(move || {
            let ctx = crate::tokenize::TokenizeContext {
                recipient_org: &recipient_org,
                domain: &domain,
                pseudonym_key: &key,
                vault: &vault,
                now,
            };
            crate::tokenize::apply(resources, &obligations, &ctx)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("tokenization aborted: {e}")))?
        .map_err(|e| GatewayError::Internal(format!("tokenization failed: {e}")))
    }

    /// Records the decision's event (fsynced) — before any response is sent.
    pub async fn record(
        &self,
        ledger: &Ledger,
        decision: &Decision,
        record_count: u64,
    ) -> Result<(), GatewayError> {
        let outcome = if decision.allow {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let mut event = ledger.event(&self.config.did, outcome);
        event.reasons = decision.reasons.clone();
        event.policy_digest = decision.policy_digest.clone();
        event.break_glass = decision.break_glass;
        event.review_required = decision.review_required;
        event.expires_at = decision
            .expires_at
            .as_deref()
            .and_then(federation::time::parse);
        event.record_count = record_count;
        if decision.allow {
            event.data_classes = decision.data_classes.clone();
        }
        metrics::counter!(
            "fedgate_decisions_total",
            "domain" => ledger.domain.clone(),
            "outcome" => if decision.allow { "allow" } else { "deny" }
        )
        .increment(1);
        self.outbox
            .append(event)
            .await
            .map_err(|e| GatewayError::Unavailable(e.to_string()))
    }

    /// The policy input of the request in `ledger` with its `request`, `contracts` and
    /// `custodian` parts; the credentials and the token are the caller's to add.
    pub fn policy_input(&self, ledger: &Ledger, patient_found: bool) -> PolicyInput {
        let custodian = &self.config.custodian;
        let offset = chrono::Duration::minutes(i64::from(custodian.utc_offset_minutes));
        let local = ledger.time + offset;
        let weekday = match local.weekday() {
            chrono::Weekday::Mon => "Mon",
            chrono::Weekday::Tue => "Tue",
            chrono::Weekday::Wed => "Wed",
            chrono::Weekday::Thu => "Thu",
            chrono::Weekday::Fri => "Fri",
            chrono::Weekday::Sat => "Sat",
            chrono::Weekday::Sun => "Sun",
        };
        use chrono::Timelike;
        PolicyInput {
            request: RequestInput {
                domain: ledger.domain.clone(),
                purpose: ledger.purpose.clone(),
                data_classes: ledger.data_classes.clone(),
                patient_found,
                justification: ledger.justification.clone().unwrap_or_default(),
                time: federation::time::rfc3339(ledger.time),
                weekday: weekday.to_string(),
                minute_of_day: local.hour() * 60 + local.minute(),
                requester: ledger.requester.clone(),
                requester_org: ledger.requester_org.clone(),
            },
            privilege: None,
            consents: Vec::new(),
            study: None,
            contracts: self.contracts_between(
                &self.config.did,
                ledger.requester_org.as_deref().unwrap_or_default(),
            ),
            custodian: CustodianInput::new(&self.config.did, custodian),
            token: None,
        }
    }

    /// Records a deny made before policy could be asked, and returns the error to send.
    pub async fn deny_unasked(
        &self,
        ledger: &Ledger,
        reason: String,
    ) -> Result<GatewayError, GatewayError> {
        let decision = Decision::deny(reason);
        self.record(ledger, &decision, 0).await?;
        Ok(GatewayError::Denied {
            decision_id: ledger.decision_id.clone(),
            reasons: decision.reasons,
            check: None,
            policy: None,
        })
    }
}

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
