//! Who may read the log's contents, and how.
//!
//! - Challenges: single-use, short-lived (`service::nonce`), recorded as used once the
//!   presentation answering one verified (a forged presentation cannot burn somebody
//!   else's challenge; of two replays exactly one gets through).
//! - Auditor sessions: a presentation by a holder with a verified privilege credential of
//!   role `auditor` at an auditor organization opens a bearer session. Sessions live in
//!   memory only (a restart logs auditors out) and are looked up by the token's digest.
//! - Queries walk an index when a patient or custodian is given, newest first.
//! - Break-glass reviews: resolving one appends a `review` leaf carrying the note's digest;
//!   the note itself is kept beside the log, for auditors.
//! - Patients: a presentation by the patient's DID returns the events naming it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use federation::credentials::{CredentialKind, PresentationBinding};
use federation::verify::VerifiedPresentation;
use service::http::StrictJson;

use crate::merkle::Leaves;
use crate::query::{
    find_events, found_json, query, read_back, EventsQuery, Filter, Parsed, ReviewState, MAX_LIMIT,
};
use crate::store::Store;
use crate::{leaf_bytes, LogEntry, VisibilityError, VisibilityState};

/// Open sessions held at once; beyond it, new ones are refused until some expire.
const MAX_SESSIONS: usize = 10_000;
const MAX_NOTE_CHARS: usize = 4000;
const AUDITOR_ROLE: &str = "auditor";

type AppState = State<Arc<VisibilityState>>;

// ---------------------------------------------------------------------------------------
// Challenges
// ---------------------------------------------------------------------------------------

/// Single-use challenges, shared with the gateway.
pub(crate) use service::nonce::Nonces as Challenges;

use federation::verify::claimed_challenge;

impl VisibilityState {
    /// Verifies a presentation bound to one of this service's challenges, then consumes
    /// the challenge.
    async fn verify_bound_presentation(
        &self,
        presentation: &Value,
    ) -> Result<VerifiedPresentation, VisibilityError> {
        // A presentation that fails the checks made before its challenge is read is
        // refused naming the check verification would name (`proof` for a hostile header).
        let challenge = claimed_challenge(presentation)?;
        if !self.challenges.is_outstanding(&challenge)? {
            return Err(VisibilityError::Unauthorized(
                "unknown or already used challenge".into(),
            ));
        }
        let binding = PresentationBinding {
            challenge: challenge.clone(),
            domain: self.config.did.clone(),
        };
        let verified = self
            .verifier
            .verify_presentation(presentation, &binding)
            .await?;
        self.challenges.consume(&challenge).await?;
        Ok(verified)
    }
}

/// `POST /v1/challenges`: a single-use challenge for an auditor's or a patient's presentation.
#[utoipa::path(post, path = "/v1/challenges", tag = "audit",
    responses((status = 200, description = "`{challenge, domain, expiresAt}`", body = Object),
        service::openapi::Unavailable))]
pub(crate) async fn challenge(State(s): AppState) -> Json<Value> {
    let (challenge, expires) = s.challenges.issue();
    Json(json!({
        "challenge": challenge,
        "domain": s.config.did,
        "expiresAt": federation::time::rfc3339(expires),
    }))
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

/// An auditor's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) auditor: String,
    pub(crate) organization: String,
    expires: DateTime<Utc>,
}

pub(crate) struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Sessions {
            by_digest: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // Entries are inserted and removed whole, so a poisoned map is still consistent.
        self.by_digest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session and returns its bearer token and expiry.
    fn open(
        &self,
        auditor: &str,
        organization: &str,
    ) -> Result<(String, DateTime<Utc>), VisibilityError> {
        let now = Utc::now();
        let expires = now
            + chrono::Duration::from_std(self.ttl).unwrap_or_else(|_| chrono::Duration::hours(1));
        let token = federation::client::random_token();
        let mut map = self.map();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return Err(VisibilityError::Unavailable(
                    "too many open sessions; try again later".into(),
                ));
            }
        }
        map.insert(
            token_digest(&token),
            Session {
                auditor: auditor.to_string(),
                organization: organization.to_string(),
                expires,
            },
        );
        Ok((token, expires))
    }

    /// The session a request's `Authorization: Bearer` token opens.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<Session, VisibilityError> {
        let unauthorized =
            || VisibilityError::Unauthorized("an auditor session token is required".into());
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        let digest = token_digest(token);
        let mut map = self.map();
        let session = map.get(&digest).cloned().ok_or_else(unauthorized)?;
        if session.expires <= Utc::now() {
            map.remove(&digest);
            return Err(VisibilityError::Unauthorized(
                "the session has expired".into(),
            ));
        }
        Ok(session)
    }

    pub(crate) fn purge_expired(&self) {
        let now = Utc::now();
        self.map().retain(|_, s| s.expires > now);
    }
}

/// A presentation bound to a challenge of this service.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresentationRequest {
    /// A VP: a compact JWS (`vp+jwt`) or a Data Integrity JSON object.
    presentation: Value,
}

/// `POST /v1/audit/sessions`: an auditor opens a session (privilege at an auditor
/// organization).
#[utoipa::path(post, path = "/v1/audit/sessions", tag = "audit",
    request_body = PresentationRequest,
    responses((status = 200, description = "`{token, expiresAt}`", body = Object),
        (status = 403, description = "Not an auditor", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        service::openapi::JsonBodyErrors))]
pub(crate) async fn open_session(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationRequest>,
) -> Result<Json<Value>, VisibilityError> {
    let vp = s.verify_bound_presentation(&req.presentation).await?;
    let organization = vp
        .of_kind(CredentialKind::ClinicianPrivilege)
        .filter(|c| c.subject.get("id").and_then(Value::as_str) == Some(vp.holder.as_str()))
        .filter(|c| c.subject.get("role").and_then(Value::as_str) == Some(AUDITOR_ROLE))
        .filter_map(|c| c.subject.get("organization").and_then(Value::as_str))
        .find(|org| s.is_auditor_org(org))
        .ok_or_else(|| {
            VisibilityError::forbidden(
                "not-an-auditor",
                "the presentation carries no auditor privilege at an auditor organization",
            )
        })?
        .to_string();
    let (token, expires) = s.sessions.open(&vp.holder, &organization)?;
    tracing::info!(organization = %organization, "auditor session opened");
    Ok(Json(json!({
        "token": token,
        "expiresAt": federation::time::rfc3339(expires),
    })))
}

// ---------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------

/// `GET /v1/audit/events`.
/// Access events, newest first, filtered (auditor session). `next` is the leaf to continue
/// below (`before`), `cursor` the same as an opaque value bound to these filters.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(EventsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{events, next, cursor}`", body = Object),
        (status = 400, description = "Malformed parameters", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn events(
    State(s): AppState,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, VisibilityError> {
    s.sessions.check(&headers)?;
    let p = Parsed::new(&s, &query(q)?)?;
    let page = find_events(&s, &p.filter, p.limit, p.before)?;
    Ok(Json(page.to_json(&s, &p.filter)))
}

/// `GET /v1/audit/leaves/{index}`: one leaf of the log as it is stored (base64), the entry
/// it holds, and its inclusion proof in the checkpoint in force, for a client to verify
/// (auditor session). For a break-glass access, its review state and notes too.
#[utoipa::path(get, path = "/v1/audit/leaves/{index}", tag = "audit",
    params(("index" = u64, Path, description = "The leaf's index")),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{leafIndex, leaf, entry, treeSize, checkpoint, checkpointVerifierKey, proof}`",
            body = Object),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        service::openapi::BadParameter, service::openapi::NotFound))]
pub(crate) async fn leaf(
    State(s): AppState,
    headers: HeaderMap,
    Path(index): Path<String>,
) -> Result<Json<Value>, VisibilityError> {
    s.sessions.check(&headers)?;
    let index: u64 = index
        .parse()
        .ok()
        .filter(|_| index.len() <= 20 && index.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            VisibilityError::bad_request("invalid-parameter", "index must be a leaf index")
        })?;
    if index >= s.store.size()? {
        return Err(VisibilityError::NotFound("the log has no such leaf".into()));
    }
    // A leaf appended since the checkpoint in force gets one that covers it.
    let published = s.covering(index.saturating_add(1)).await?;
    let snapshot = s.store.db.read()?;
    let mut view = s.store.log.view(&snapshot)?;
    let bytes = view.leaf(index)?;
    let proof = view.inclusion_proof(index, published.size)?;
    let entry = Store::entry_in(&view, index)?;
    let mut out = json!({
        "leafIndex": index,
        "leaf": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "entry": entry,
        "treeSize": published.size,
        "checkpoint": published.note,
        "checkpointVerifierKey": s.note_verifier.vkey(),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    });
    if let LogEntry::Access { event } = &entry {
        let queued = s.store.is_queued_at(&snapshot, &event.id)?;
        if let Some(r) = s.review_state(event, queued, Utc::now()) {
            out["review"] = json!(r.as_str());
            out["reviewDue"] = json!(federation::time::rfc3339(s.review_due(event)));
            out["notes"] = json!(s.store.notes(&event.id)?);
        }
    }
    Ok(Json(out))
}

/// `GET /v1/audit/export`: the events `/v1/audit/events` would return (same filters, same
/// paging), as a FHIR R4 Bundle of type `collection` of AuditEvents
/// ([`federation::events::to_fhir_audit_event`]), newest first. When the answer was cut, the
/// Bundle's `next` link repeats the query with the cursor.
/// The same events as a FHIR R4 collection Bundle of AuditEvents (auditor session).
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", params(EventsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "FHIR Bundle (collection)", body = Object,
            content_type = "application/fhir+json"),
        (status = 400, description = "Malformed parameters", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn export(
    State(s): AppState,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<impl IntoResponse, VisibilityError> {
    s.sessions.check(&headers)?;
    let q = query(q)?;
    let p = Parsed::new(&s, &q)?;
    let page = find_events(&s, &p.filter, p.limit, p.before)?;
    let entries = page
        .events
        .iter()
        .map(|found| {
            let e = read_back(found)?;
            Ok(json!({
                "fullUrl": format!("urn:uuid:{}", e.id),
                "resource": federation::events::to_fhir_audit_event(&e),
            }))
        })
        .collect::<Result<Vec<Value>, VisibilityError>>()?;
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": federation::time::rfc3339(Utc::now()),
    });
    // FHIR JSON has no empty arrays: no match, no `entry`.
    if !entries.is_empty() {
        bundle["entry"] = json!(entries);
    }
    if let Some(next) = page.next {
        // The link continues the way the query was paged: by opaque cursor or by leaf.
        let mut params: Vec<String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("before=") && !p.starts_with("cursor="))
            .map(str::to_string)
            .collect();
        if q.cursor.is_some() {
            params.push(format!(
                "cursor={}",
                crate::query::encode_cursor(&s.cursor_key, &p.filter, next)
            ));
        } else {
            params.push(format!("before={next}"));
        }
        bundle["link"] = json!([{
            "relation": "next",
            "url": format!("{}?{}", uri.path(), params.join("&")),
        }]);
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/fhir+json"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit-events.fhir.json\"",
            ),
        ],
        Json(bundle),
    ))
}

/// Filters of the review queue.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReviewsQuery {
    /// The custodian organization's DID.
    custodian: Option<String>,
    /// The requester's organization.
    requester_org: Option<String>,
    /// `true`: only reviews past their deadline; `false`: only those before it.
    overdue: Option<String>,
}

/// `GET /v1/audit/reviews`: break-glass events awaiting review, oldest first, each with
/// its deadline (`reviewDue`) and whether it has passed (`overdue`).
/// Break-glass events awaiting review (auditor session).
#[utoipa::path(get, path = "/v1/audit/reviews", tag = "audit", params(ReviewsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{reviews: [{leafIndex, event, review, reviewDue, overdue}]}`", body = Object),
        (status = 400, description = "Malformed parameters", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn reviews(
    State(s): AppState,
    headers: HeaderMap,
    q: Result<Query<ReviewsQuery>, QueryRejection>,
) -> Result<Json<Value>, VisibilityError> {
    s.sessions.check(&headers)?;
    let q = query(q)?;
    // The same checks as the events' filters.
    let filter = Filter::from_query(&EventsQuery {
        custodian: q.custodian,
        requester_org: q.requester_org,
        ..EventsQuery::default()
    })?;
    let overdue = match q.overdue.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(VisibilityError::bad_request(
                "invalid-query",
                "overdue must be true or false",
            ))
        }
    };
    let now = Utc::now();
    let mut out = Vec::new();
    for index in s.store.review_queue(MAX_LIMIT)? {
        if let LogEntry::Access { event } = s.store.entry(index)? {
            let review = s.review_state(&event, true, now);
            let late = review == Some(ReviewState::Overdue);
            if !filter.matches(&event, review) || overdue.is_some_and(|o| o != late) {
                continue;
            }
            let mut item = found_json(&s, index, &event, review);
            item["overdue"] = json!(late);
            out.push(item);
        }
    }
    Ok(Json(json!({ "reviews": out })))
}

/// `GET /v1/audit/reviews/decisions`: every resolved review as CSV, one row per note
/// (event id, the event's time, custodian, requester organization and purpose when known,
/// who resolved it, when, the note and its digest in the log) (auditor session).
#[utoipa::path(get, path = "/v1/audit/reviews/decisions", tag = "audit",
    security(("auditorSession" = [])),
    responses((status = 200, description = "CSV", body = String, content_type = "text/csv"),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn review_decisions(
    State(s): AppState,
    headers: HeaderMap,
) -> Result<impl IntoResponse, VisibilityError> {
    s.sessions.check(&headers)?;
    let mut csv = crate::export::Csv::new(&[
        "eventId",
        "eventTime",
        "custodian",
        "requesterOrg",
        "purpose",
        "resolvedBy",
        "resolvedAt",
        "note",
        "noteDigest",
    ]);
    for note in s.store.all_notes(100_000)? {
        let text = |k: &str| {
            note.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let event = match note.get("eventLeaf").and_then(Value::as_u64) {
            Some(i) => match s.store.entry(i)? {
                LogEntry::Access { event } => Some(event),
                LogEntry::Review { .. } => None,
            },
            None => None,
        };
        csv.row(&[
            text("eventId"),
            event
                .as_ref()
                .map(|e| federation::time::rfc3339(e.time))
                .unwrap_or_default(),
            event
                .as_ref()
                .map(|e| e.custodian.clone())
                .unwrap_or_default(),
            event
                .as_ref()
                .and_then(|e| e.requester_org.clone())
                .unwrap_or_default(),
            event
                .as_ref()
                .map(|e| e.purpose.clone())
                .unwrap_or_default(),
            text("resolvedBy"),
            text("time"),
            text("note"),
            text("noteDigest"),
        ]);
    }
    Ok(csv.response("review-decisions.csv"))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveRequest {
    /// The reviewer's note (kept here; its digest goes into the log).
    note: String,
}

/// Resolve a break-glass review with a note (auditor session); the resolution is logged.
#[utoipa::path(post, path = "/v1/audit/reviews/{event_id}/resolve", tag = "audit",
    params(("event_id" = String, Path, description = "The break-glass event's id")),
    request_body = ResolveRequest, security(("auditorSession" = [])),
    responses((status = 200, description = "`{eventId, leafIndex, noteDigest, resolvedBy, time, treeSize, checkpoint}`",
            body = Object),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        service::openapi::JsonBodyErrors, service::openapi::NotFound))]

/// `POST /v1/audit/reviews/{event_id}/resolve`.
pub(crate) async fn resolve(
    State(s): AppState,
    headers: HeaderMap,
    Path(event_id): Path<String>,
    StrictJson(req): StrictJson<ResolveRequest>,
) -> Result<Json<Value>, VisibilityError> {
    let session = s.sessions.check(&headers)?;
    service::params::event_id("event_id", &event_id)?;
    let note = req.note.trim();
    if note.is_empty() || note.chars().count() > MAX_NOTE_CHARS {
        return Err(VisibilityError::unprocessable(
            "invalid-note",
            format!("the note must have 1 to {MAX_NOTE_CHARS} characters"),
        ));
    }
    let note_digest = hex::encode(Sha256::digest(note.as_bytes()));
    let time = Utc::now();
    let record = json!({
        "eventId": event_id,
        "note": note,
        "noteDigest": note_digest,
        "resolvedBy": session.auditor,
        // Serialized as in the leaf, so the review leaf can be recomputed from it.
        "time": time,
    });
    let entry = LogEntry::Review {
        event_id: event_id.clone(),
        resolved_by: session.auditor.clone(),
        note_digest: note_digest.clone(),
        time,
    };
    let leaves = Leaves::new(vec![leaf_bytes(&entry)]);
    let (store, signer, id, digest) = (
        s.store.clone(),
        s.signer.clone(),
        event_id.clone(),
        note_digest.clone(),
    );
    // One write: of two resolutions of one review exactly one finds it queued, and the
    // note, the review leaf, its index entries and the checkpoint over it are on disk
    // together.
    let (range, published) = s
        .store
        .db
        .write(move |tx| -> Result<_, VisibilityError> {
            let Some(leaf) = store.queued_leaf_in(tx, &id)? else {
                return Err(VisibilityError::NotFound(
                    "no break-glass event awaiting review has this id".into(),
                ));
            };
            let mut record = record;
            record["eventLeaf"] = json!(leaf);
            store.put_note_in(tx, &id, &digest, &record)?;
            let range = store.append_in(tx, &[entry], &leaves)?;
            let published = signer.checkpoint_in(&store, tx)?;
            Ok((range, published))
        })
        .await?;
    let published = s.install(published);
    tracing::info!(organization = %session.organization, "break-glass review resolved");
    Ok(Json(json!({
        "eventId": event_id,
        "leafIndex": range.start,
        "noteDigest": note_digest,
        "resolvedBy": session.auditor,
        "time": time,
        "treeSize": published.size,
        "checkpoint": published.note,
    })))
}

/// `GET /v1/audit/reviews/{event_id}/notes`: the notes kept for a review, resolved or
/// awaiting. An id that is no review (never break-glass, or unknown) is a 404: an empty
/// list would say the review exists.
#[utoipa::path(get, path = "/v1/audit/reviews/{event_id}/notes", tag = "audit",
    params(("event_id" = String, Path, description = "The break-glass event's id")),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{notes}`", body = Object),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        service::openapi::BadParameter, service::openapi::NotFound))]
pub(crate) async fn notes(
    State(s): AppState,
    headers: HeaderMap,
    Path(event_id): Path<String>,
) -> Result<Json<Value>, VisibilityError> {
    s.sessions.check(&headers)?;
    service::params::event_id("event_id", &event_id)?;
    let notes = s.store.notes(&event_id)?;
    if notes.is_empty() && !s.store.is_queued(&event_id)? {
        return Err(VisibilityError::NotFound(
            "no break-glass review has this event id".into(),
        ));
    }
    Ok(Json(json!({ "notes": notes })))
}

// ---------------------------------------------------------------------------------------
// Patients
// ---------------------------------------------------------------------------------------

/// `POST /v1/patients/history`: the events naming the presenting patient's DID, newest
/// first (at most [`MAX_LIMIT`]; `truncated` says when there are more).
#[utoipa::path(post, path = "/v1/patients/history", tag = "patients",
    request_body = PresentationRequest,
    responses((status = 200, description = "`{events, truncated}`", body = Object),
        service::openapi::JsonBodyErrors))]
pub(crate) async fn patient_history(
    State(s): AppState,
    StrictJson(req): StrictJson<PresentationRequest>,
) -> Result<Json<Value>, VisibilityError> {
    let vp = s.verify_bound_presentation(&req.presentation).await?;
    let digest = federation::events::patient_did_digest(&vp.holder);
    let filter = Filter {
        patient_did_digest: Some(digest),
        ..Filter::default()
    };
    let page = find_events(&s, &filter, MAX_LIMIT, u64::MAX)?;
    Ok(Json(json!({
        "events": page.events,
        "truncated": page.next.is_some(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_need_a_known_unexpired_bearer_token() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (token, _) = sessions.open("did:key:zA", "did:web:auditor.test").unwrap();
        let mut headers = HeaderMap::new();
        assert!(sessions.check(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(sessions.check(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert_eq!(sessions.check(&headers).unwrap().auditor, "did:key:zA");
        let expired = Sessions::new(Duration::from_millis(0));
        let (token, _) = expired.open("did:key:zA", "did:web:auditor.test").unwrap();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(expired.check(&headers).is_err());
    }
}
