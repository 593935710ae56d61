//! One request through the gateway, top to bottom:
//! verify → decide → fetch → page → tokenize → record → respond.
//!
//! An answer says what it leaves out (an OperationOutcome entry, [`crate::outcome`]), and
//! one larger than the decision's `max_records` comes in pages ([`crate::paging`]).
//!
//! Every request that names a domain and carries a presentation gets a decision id and an
//! access event, whether it is allowed, denied by policy, or refused by verification.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use federation::credentials::{ConsentSubject, CredentialKind};
use federation::verify::VerifiedPresentation;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::outcome;
use crate::policy::{
    claims_of, holder_privilege, ConsentInput, CredentialInput, Decision, PrivilegeFacts,
};
use crate::records::{field, resource_type};
use crate::state::{GatewayState, NotServed};

/// Bytes an answer holds besides its entries: the Bundle's head and tail and the
/// OperationOutcome entry of its notes (a few hundred bytes each, in practice).
const ROOM_AFTER_ENTRIES: usize = 4096;

/// HL7 v3 PurposeOfUse codes this gateway understands (the federation's); anything else is
/// a client error.
pub use federation::events::PURPOSES;

/// The patient, named by the identifier the custodian knows them by.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

/// What a requester asks for, without the presentation: the body of
/// `POST /v1/exchange/{domain}` less `presentation`, which is also how an OpenID4VP
/// exchange starts ([`crate::oid4vp`]).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeParams {
    pub purpose: String,
    pub patient: PatientRef,
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub justification: Option<String>,
}

impl ExchangeRequest {
    /// The request without its presentation.
    pub fn params(&self) -> ExchangeParams {
        ExchangeParams {
            purpose: self.purpose.clone(),
            patient: self.patient.clone(),
            data_classes: self.data_classes.clone(),
            justification: self.justification.clone(),
        }
    }
}

/// An allowed decision, ready to be served: what the answer is fetched, tokenized and
/// recorded from.
pub struct Allowed {
    pub ledger: Ledger,
    pub decision: Decision,
    pub patient_id: String,
    /// DID of the presentation's holder (the requester).
    pub holder: String,
}

pub use crate::policy::requester_org;

pub use federation::verify::claimed_challenge;

/// Whether a consent names this patient at this custodian.
fn consent_is_about(c: &ConsentSubject, custodian: &str, patient: &PatientRef) -> bool {
    c.patient_identifiers
        .iter()
        .any(|i| i.custodian == custodian && i.system == patient.system && i.value == patient.value)
}

/// Checks what a requester asks for, before anything is verified or recorded.
pub fn check_params(domain: &str, req: &ExchangeParams) -> Result<(), GatewayError> {
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
    Ok(())
}

/// Fails closed before doing any work if the access could not be recorded.
pub fn check_outbox(state: &GatewayState) -> Result<(), GatewayError> {
    if !state.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full; refusing to serve unrecorded access".into(),
        ));
    }
    Ok(())
}

/// The ledger of a new request.
pub fn new_ledger(domain: &str, req: &ExchangeParams) -> Ledger {
    let mut ledger = Ledger::new(domain, &req.purpose, &req.data_classes);
    ledger.justification = req.justification.clone().filter(|j| !j.trim().is_empty());
    ledger
}

/// `POST /v1/exchange/{domain}`.
pub async fn exchange(
    state: &GatewayState,
    domain: &str,
    req: ExchangeRequest,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let params = req.params();
    check_params(domain, &params)?;
    let wants_jwe = accepts_jose(headers);
    check_outbox(state)?;
    let mut ledger = new_ledger(domain, &params);

    // verify (the challenge is spent with the event, in the request's one durable write)
    let vp = state
        .verify_presentation_spent_with_event(&mut ledger, &req.presentation)
        .await?;
    let challenge = ledger.challenge.clone();

    // decide, then fetch → tokenize → record → respond, one page at a time
    let answer = match decide(state, domain, &params, ledger, &vp).await {
        Ok(allowed) => serve(state, &allowed, wants_jwe).await,
        Err(e) => Err(e),
    };
    if let (Err(_), Some(challenge)) = (&answer, &challenge) {
        // Every way out after verification records an event, which spends the challenge;
        // this is for one that did not (a storage error), so the presentation is not good
        // for another try.
        state.spend_leftover(challenge).await;
    }
    answer
}

/// Decides on a verified presentation (its ledger noted it already). A deny, or an allow
/// that cannot be served, is recorded here and returned as the error to send; an allow is
/// recorded when it is served ([`serve`]).
pub async fn decide(
    state: &GatewayState,
    domain: &str,
    req: &ExchangeParams,
    mut ledger: Ledger,
    vp: &VerifiedPresentation,
) -> Result<Allowed, GatewayError> {
    let patient_id = state
        .records
        .find_patient(&req.patient.system, &req.patient.value)
        .await;
    let patient_id = match patient_id {
        Ok(id) => id,
        Err(e) => {
            // Verified, but no decision could be made: recorded as a deny that says why.
            let error = GatewayError::record_source(e);
            let why = NotServed::RecordSource;
            return Err(state
                .record_not_served(&ledger, &Decision::deny(why.reason()), why, error)
                .await);
        }
    };
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
    let claims = claims_of::<ConsentSubject>(vp, CredentialKind::PatientConsent)
        .and_then(|consents| Ok((consents, holder_privilege(vp)?)));
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

    Ok(Allowed {
        ledger,
        decision,
        patient_id,
        holder: vp.holder.clone(),
    })
}

/// Serves the first page of an allowed decision: fetch → tokenize → record → respond.
pub async fn serve(
    state: &GatewayState,
    allowed: &Allowed,
    wants_jwe: bool,
) -> Result<Response, GatewayError> {
    let page = Page {
        ledger: &allowed.ledger,
        decision: &allowed.decision,
        patient_id: &allowed.patient_id,
        holder: &allowed.holder,
        number: 1,
        cursor: None,
    };
    answer(state, page, wants_jwe).await
}

/// `GET /v1/exchange/{domain}/pages/{cursor}?page=N`: a later page of a paged answer,
/// without a new presentation (see [`crate::paging`]).
pub async fn next_page(
    state: &GatewayState,
    domain: &str,
    cursor: &str,
    number: u32,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let proof = headers
        .get(crate::paging::PROOF_HEADER)
        .and_then(|v| v.to_str().ok());
    let grant = state
        .pages
        .redeem(
            &state.verifier.resolver,
            &state.config.did,
            cursor,
            number,
            proof,
        )
        .await
        .map_err(GatewayError::Page)?;
    if grant.domain != domain {
        return Err(GatewayError::Page(crate::paging::PageError::UnknownCursor));
    }
    if !state.outbox.has_room() {
        return Err(GatewayError::Unavailable(
            "the access-event outbox is full; refusing to serve unrecorded access".into(),
        ));
    }
    let ledger = grant.ledger.follow_up();
    let page = Page {
        ledger: &ledger,
        decision: &grant.decision,
        patient_id: &grant.patient_id,
        holder: &grant.holder,
        number,
        cursor: Some(cursor),
    };
    answer(state, page, accepts_jose(headers)).await
}

/// One page of an allowed decision's answer.
struct Page<'a> {
    ledger: &'a Ledger,
    decision: &'a Decision,
    patient_id: &'a str,
    holder: &'a str,
    /// From 1.
    number: u32,
    /// The decision's cursor, once issued (on page 1 it is issued here if more follow).
    cursor: Option<&'a str>,
}

/// Resources of one page besides the patient's own: `max_records` less the Patient.
fn per_page(max_records: Option<u32>, with_patient: bool) -> usize {
    let max = max_records.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    max.saturating_sub(usize::from(with_patient)).max(1)
}

/// fetch → (page) → tokenize → record → respond, for one page of an allowed decision.
async fn answer(
    state: &GatewayState,
    page: Page<'_>,
    wants_jwe: bool,
) -> Result<Response, GatewayError> {
    let Page {
        ledger,
        decision,
        patient_id,
        holder,
        number,
        cursor,
    } = page;
    let recipient = ledger.requester_org.clone().unwrap_or_default();
    let question = crate::answers::Question {
        patient_id,
        data_classes: &decision.data_classes,
        obligations: &decision.obligations,
        recipient_org: &recipient,
        domain: &ledger.domain,
        page: number,
        time: ledger.time,
    };
    // The record's generation, read before the record (a page made from a newer record
    // is kept under an older generation, never the reverse), when its pages can be kept.
    let generation = match state.answers.is_enabled() {
        true => match state.records.generation() {
            Ok(generation) => generation,
            Err(e) => {
                let error = GatewayError::record_source(e);
                return Err(state
                    .record_not_served(ledger, decision, NotServed::RecordSource, error)
                    .await);
            }
        },
        false => None,
    };

    // fetch, or the page kept from an earlier request that made the same one
    let page = match generation.and_then(|g| state.answers.get(&question, g)) {
        Some(kept) => Made::Kept(kept),
        None => Made::Fresh(fetch_page(state, ledger, decision, patient_id, number).await?),
    };
    let (total, pages) = match &page {
        Made::Kept(kept) => (kept.total, kept.pages),
        Made::Fresh(fresh) => (fresh.total, fresh.pages),
    };
    let mut notes = outcome::dropped_classes(&ledger.data_classes, &decision.data_classes);
    notes.extend(outcome::redacted_classes(&decision.obligations.redact));

    // page
    let cursor = match cursor {
        Some(c) => Some(c.to_string()),
        None if pages > 1 => match state
            .pages
            .issue(ledger, decision, patient_id, holder, pages)
            .await
        {
            Ok(cursor) => Some(cursor),
            // Page 1 is not served without the cursor to the rest: it would look complete.
            Err(e) => {
                return Err(state
                    .record_not_served(
                        ledger,
                        decision,
                        NotServed::Preparation,
                        GatewayError::Page(e),
                    )
                    .await)
            }
        },
        None => None,
    };

    // The Bundle around the entries, so that they can be written where they are tokenized.
    let mut links = Vec::new();
    let page_url = |n: u32| -> String {
        let mut url = state.public_url.clone();
        url.set_path(&format!(
            "/v1/exchange/{}/pages/{}",
            ledger.domain,
            cursor.as_deref().unwrap_or_default()
        ));
        url.set_query(Some(&format!("page={n}")));
        url.to_string()
    };
    if cursor.is_some() {
        links.push(json!({"relation": "self", "url": page_url(number)}));
        if number < pages {
            links.push(json!({"relation": "next", "url": page_url(number + 1)}));
        }
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "identifier": {"system": "urn:fedgate:decision", "value": ledger.decision_id},
        "meta": {"lastUpdated": federation::time::rfc3339(Utc::now())},
        "total": total,
        "entry": [],
    });
    if !links.is_empty() {
        bundle["link"] = json!(links);
    }
    let bundle_error = |e: crate::bundle::BundleError| GatewayError::Internal(e.to_string());
    // A kept page's size is known: room for it and what follows it (the outcome entry,
    // the Bundle's tail), so that the answer is written without growing it again.
    let capacity = match &page {
        Made::Kept(kept) => kept.entries.len().saturating_add(ROOM_AFTER_ENTRIES),
        Made::Fresh(_) => 0,
    };
    let mut body = match crate::bundle::BundleWriter::new(&bundle, capacity) {
        Ok(body) => body,
        Err(e) => {
            return Err(state
                .record_not_served(ledger, decision, NotServed::Preparation, bundle_error(e))
                .await)
        }
    };

    let count = match page {
        Made::Kept(kept) => {
            body.append(&kept.entries, kept.entry_count);
            notes.extend(kept.notes.iter().cloned());
            kept.count
        }
        Made::Fresh(fresh) => {
            // Kept only when the page can be, and not larger than the cache takes.
            let keep_up_to = generation.map_or(0, |_| state.answers.largest());
            let made = tokenize_page(state, ledger, decision, patient_id, body, fresh, keep_up_to);
            let (written, page_notes, answer) = match made.await {
                Ok(made) => made,
                Err(error) => {
                    return Err(state
                        .record_not_served(ledger, decision, NotServed::Preparation, error)
                        .await)
                }
            };
            body = written;
            notes.extend(page_notes);
            let count = answer.count;
            if let (Some(generation), true) = (generation, answer.entry_count > 0) {
                state.answers.insert(&question, generation, answer);
            }
            count
        }
    };
    if decision.obligations.shift_dates {
        notes.push(outcome::Note {
            code: "informational",
            diagnostics: "every date is shifted by one offset for this patient and recipient: \
                          intervals are exact, calendar dates are not"
                .into(),
            expression: None,
        });
    }

    // record
    state.record(ledger, decision, count).await?;

    // respond
    if let Some(entry) = outcome::entry(&notes) {
        body.entry(&entry).map_err(bundle_error)?;
    }
    respond_bytes(ledger, decision, body.finish(), wants_jwe.then_some(holder))
}

/// A page to serve: kept from an earlier request that made the same one, or cut from the
/// record now.
enum Made {
    Kept(std::sync::Arc<crate::answers::Answer>),
    Fresh(FreshPage),
}

/// One page of the patient's record, cut and its references marked, before tokenization.
struct FreshPage {
    /// From 1.
    number: u32,
    resources: Vec<Value>,
    /// Patient resources heading the page.
    patients: usize,
    /// Resources of the whole answer.
    total: usize,
    pages: u32,
    /// Provenance withheld, references to resources not served.
    notes: Vec<outcome::Note>,
}

/// Fetches the record and cuts page `number` from it. A failure is recorded as not served.
async fn fetch_page(
    state: &GatewayState,
    ledger: &Ledger,
    decision: &Decision,
    patient_id: &str,
    number: u32,
) -> Result<FreshPage, GatewayError> {
    let fetched = match state
        .records
        .patient_resources(patient_id, &decision.data_classes)
        .await
    {
        Ok(fetched) => fetched,
        Err(e) => {
            let error = GatewayError::record_source(e);
            return Err(state
                .record_not_served(ledger, decision, NotServed::RecordSource, error)
                .await);
        }
    };
    let mut notes = Vec::new();
    let provenance = fetched
        .iter()
        .filter(|r| resource_type(r) == Some("Provenance"))
        .count();
    if provenance > 0 {
        notes.push(outcome::Note::suppressed(format!(
            "{provenance} Provenance resource(s) withheld: provenance never leaves this gateway"
        )));
    }
    let (patient, mut rest): (Vec<Value>, Vec<Value>) = fetched
        .into_iter()
        .filter(|r| resource_type(r) != Some("Provenance"))
        .partition(|r| resource_type(r) == Some("Patient"));
    rest.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    let mut present = outcome::Present::of(&patient);
    present.add(&rest);
    let total = patient.len() + rest.len();

    let size = per_page(decision.obligations.max_records, !patient.is_empty());
    let pages = u32::try_from(rest.len().div_ceil(size).max(1)).unwrap_or(u32::MAX);
    let start = usize::try_from(number - 1)
        .unwrap_or(usize::MAX)
        .saturating_mul(size);
    let mut resources = patient;
    let patients = resources.len();
    resources.extend(rest.drain(start.min(rest.len())..).take(size));
    drop(rest);
    notes.extend(outcome::mark_withheld_references(
        &mut resources,
        &present,
        patient_id,
    ));
    Ok(FreshPage {
        number,
        resources,
        patients,
        total,
        pages,
        notes,
    })
}

/// Tokenizes `page` and writes its entries into `body` on the same thread, while the
/// resources are in that core's cache (the event is recorded holding only bytes). Returns
/// the body, the page's notes, and the page as [`crate::answers`] keeps it (its entries
/// copied only if they are at most `keep_up_to` bytes; else none).
async fn tokenize_page(
    state: &GatewayState,
    ledger: &Ledger,
    decision: &Decision,
    patient_id: &str,
    body: crate::bundle::BundleWriter,
    page: FreshPage,
    keep_up_to: usize,
) -> Result<
    (
        crate::bundle::BundleWriter,
        Vec<outcome::Note>,
        crate::answers::Answer,
    ),
    GatewayError,
> {
    let FreshPage {
        number,
        resources,
        patients,
        total,
        pages,
        mut notes,
    } = page;
    // The page is already cut to size.
    let mut obligations = decision.obligations.clone();
    obligations.max_records = None;
    let recipient = ledger.requester_org.clone().unwrap_or_default();
    let shift = decision
        .obligations
        .shift_dates
        .then(|| crate::dates::offset_days(&state.secret, patient_id, &recipient));
    let write = move |tokenized: crate::tokenize::Tokenized| {
        let mut body = body;
        let mark = body.mark();
        let mut resources = tokenized.resources;
        if let Some(days) = shift {
            crate::dates::shift(&mut resources, days);
        }
        let count = resources.len() as u64;
        // Each resource is dropped once written: the page and its JSON text are never
        // held whole together.
        for (i, r) in resources.into_iter().enumerate() {
            // The patient heads every page; on later pages it is there for context.
            let mode = if i < patients && number > 1 {
                "include"
            } else {
                "match"
            };
            body.resource(&r, mode)?;
        }
        let (entries, entry_count) = if body.bytes_since(mark) <= keep_up_to {
            body.written_since(mark)
        } else {
            (Vec::new(), 0)
        };
        let answer = crate::answers::Answer {
            entries,
            entry_count,
            count,
            total,
            pages,
            notes: Vec::new(),
        };
        Ok::<_, crate::bundle::BundleError>((body, tokenized.withheld, answer))
    };
    let (body, withheld, mut answer) = state
        .tokenize(
            resources,
            obligations,
            recipient,
            &ledger.domain,
            ledger.time,
            write,
        )
        .await?
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    notes.extend(outcome::withheld(&withheld));
    answer.notes.clone_from(&notes);
    Ok((body, notes, answer))
}

/// Order of the resources across pages: by type, then id (stable between fetches).
fn sort_key(r: &Value) -> (&str, &str) {
    (
        resource_type(r).unwrap_or_default(),
        r.as_object()
            .and_then(|o| field(o, "id"))
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

/// Whether the requester asked for an encrypted answer.
pub fn accepts_jose(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/jose"))
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
    drop(body);
    respond_bytes(ledger, decision, bytes, encrypt_to)
}

/// [`respond`] for an answer already serialized.
pub fn respond_bytes(
    ledger: &Ledger,
    decision: &Decision,
    bytes: Vec<u8>,
    encrypt_to: Option<&str>,
) -> Result<Response, GatewayError> {
    let mut response = match encrypt_to {
        Some(did) => {
            let jwe = crate::jwe::encrypt_for(did, &bytes).map_err(|e| {
                GatewayError::Unprocessable(format!("cannot encrypt the response: {e}"))
            })?;
            drop(bytes);
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
