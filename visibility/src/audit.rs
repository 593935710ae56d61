//! Who may read the log's contents, and how.
//!
//! - Challenges: single-use, short-lived, consumed by an atomic remove after the
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
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use federation::credentials::{CredentialKind, PresentationBinding};
use federation::events::{AccessEvent, Outcome};
use federation::verify::VerifiedPresentation;
use service::http::StrictJson;

use crate::merkle::Leaves;
use crate::store::{Index, Store};
use crate::{leaf_bytes, LogEntry, VisibilityError, VisibilityState};

/// Most events one query returns.
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;
/// Most leaves one query examines; past this it returns a cursor to continue from.
const MAX_SCAN: usize = 100_000;
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
pub(crate) async fn challenge(State(s): AppState) -> Result<Json<Value>, VisibilityError> {
    let (challenge, expires) = s.challenges.issue().await?;
    Ok(Json(json!({
        "challenge": challenge,
        "domain": s.config.did,
        "expiresAt": federation::time::rfc3339(expires),
    })))
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

/// An auditor's session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    auditor: String,
    organization: String,
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
    fn check(&self, headers: &HeaderMap) -> Result<Session, VisibilityError> {
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

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    patient_ref: Option<String>,
    patient_did_digest: Option<String>,
    custodian: Option<String>,
    requester: Option<String>,
    purpose: Option<String>,
    decision: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    /// Cursor: only leaves below this index (the `next` of a previous answer).
    before: Option<u64>,
}

/// The filters of an events query, parsed.
#[derive(Debug, Default)]
struct Filter {
    patient_ref: Option<String>,
    patient_did_digest: Option<String>,
    custodian: Option<String>,
    requester: Option<String>,
    purpose: Option<String>,
    decision: Option<Outcome>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl Filter {
    fn parse(q: EventsQuery) -> Result<(Self, usize, u64), VisibilityError> {
        let time =
            |name: &str, v: Option<String>| -> Result<Option<DateTime<Utc>>, VisibilityError> {
                v.map(|t| {
                    federation::time::parse(&t).ok_or_else(|| {
                        VisibilityError::bad_request(
                            "invalid-query",
                            format!("{name} must be an RFC 3339 date-time"),
                        )
                    })
                })
                .transpose()
            };
        let decision = match q.decision.as_deref() {
            None => None,
            Some("allow") => Some(Outcome::Allow),
            Some("deny") => Some(Outcome::Deny),
            Some(_) => {
                return Err(VisibilityError::bad_request(
                    "invalid-query",
                    "decision must be allow or deny",
                ))
            }
        };
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(VisibilityError::bad_request(
                "invalid-query",
                format!("limit must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let filter = Filter {
            from: time("from", q.from)?,
            to: time("to", q.to)?,
            patient_ref: q.patient_ref,
            patient_did_digest: q.patient_did_digest,
            custodian: q.custodian,
            requester: q.requester,
            purpose: q.purpose,
            decision,
        };
        Ok((filter, limit, q.before.unwrap_or(u64::MAX)))
    }

    fn matches(&self, e: &AccessEvent) -> bool {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        eq(&self.custodian, Some(&e.custodian))
            && eq(&self.patient_ref, e.patient_ref.as_ref())
            && self
                .patient_did_digest
                .as_ref()
                .is_none_or(|d| e.patient_did_digests.contains(d))
            && self.requester.as_ref().is_none_or(|r| {
                e.requester.as_ref() == Some(r) || e.requester_org.as_ref() == Some(r)
            })
            && eq(&self.purpose, Some(&e.purpose))
            && self.decision.is_none_or(|d| e.decision == d)
            && self.from.is_none_or(|f| e.time >= f)
            && self.to.is_none_or(|t| e.time <= t)
    }
}

/// Events matching `filter`, newest first, and the cursor to continue from when the
/// answer was cut by `limit` or by the scan bound. Read from one snapshot: the index and
/// the leaves it points at agree.
fn find_events(
    s: &VisibilityState,
    filter: &Filter,
    limit: usize,
    before: u64,
) -> Result<(Vec<Value>, Option<u64>), VisibilityError> {
    let snapshot = s.store.db.read()?;
    let view = s.store.log.view(&snapshot)?;
    let mut found = Vec::new();
    let mut next = None;
    let mut scanned = 0usize;
    let mut failed: Option<VisibilityError> = None;
    let mut visit = |index: u64| -> ControlFlow<()> {
        if scanned >= MAX_SCAN {
            next = Some(index + 1);
            return ControlFlow::Break(());
        }
        scanned += 1;
        match Store::entry_in(&view, index) {
            Ok(LogEntry::Access { event }) if filter.matches(&event) => {
                found.push(json!({"leafIndex": index, "event": event}));
                if found.len() == limit {
                    next = Some(index);
                    return ControlFlow::Break(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                failed = Some(e.into());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    let walked = if let Some(d) = &filter.patient_did_digest {
        s.store
            .lookup(&snapshot, Index::PatientDid, d, before, &mut visit)
    } else if let Some(r) = &filter.patient_ref {
        s.store
            .lookup(&snapshot, Index::PatientRef, r, before, &mut visit)
    } else if let Some(c) = &filter.custodian {
        s.store
            .lookup(&snapshot, Index::Custodian, c, before, &mut visit)
    } else {
        for index in (0..view.size().min(before)).rev() {
            if visit(index).is_break() {
                break;
            }
        }
        Ok(())
    };
    walked?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok((found, next))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, VisibilityError> {
    q.map(|Query(q)| q)
        .map_err(|e| VisibilityError::bad_request("invalid-query", e.body_text()))
}

/// `GET /v1/audit/events`.
/// Access events, newest first, filtered (auditor session).
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(EventsQuery),
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{events, next}`", body = Object),
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
    let (filter, limit, before) = Filter::parse(query(q)?)?;
    let (events, next) = find_events(&s, &filter, limit, before)?;
    Ok(Json(json!({"events": events, "next": next})))
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
    let (filter, limit, before) = Filter::parse(query(q)?)?;
    let (events, next) = find_events(&s, &filter, limit, before)?;
    // find_events serialized these AccessEvents itself, so reading them back succeeds; if
    // it ever did not, the export fails rather than leave an event out of an audit.
    let entries = events
        .iter()
        .map(|found| {
            let e = serde_json::from_value::<AccessEvent>(found["event"].clone())
                // The category only: serde's message may quote the event's values.
                .map_err(|e| {
                    VisibilityError::Storage(format!(
                        "an event in the log does not read back ({:?})",
                        e.classify()
                    ))
                })?;
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
    if let Some(next) = next {
        let mut params: Vec<&str> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("before="))
            .collect();
        let cursor = format!("before={next}");
        params.push(&cursor);
        bundle["link"] = json!([{
            "relation": "next",
            "url": format!("{}?{}", uri.path(), params.join("&")),
        }]);
    }
    Ok((
        [(header::CONTENT_TYPE, "application/fhir+json")],
        Json(bundle),
    ))
}

/// `GET /v1/audit/reviews`: break-glass events awaiting review, oldest first.
/// Break-glass events awaiting review (auditor session).
#[utoipa::path(get, path = "/v1/audit/reviews", tag = "audit",
    security(("auditorSession" = [])),
    responses((status = 200, description = "`{reviews: [{leafIndex, event}]}`", body = Object),
        (status = 401, description = "No auditor session", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json")))]
pub(crate) async fn reviews(
    State(s): AppState,
    headers: HeaderMap,
) -> Result<Json<Value>, VisibilityError> {
    s.sessions.check(&headers)?;
    let mut out = Vec::new();
    for index in s.store.review_queue(MAX_LIMIT)? {
        if let LogEntry::Access { event } = s.store.entry(index)? {
            out.push(json!({"leafIndex": index, "event": event}));
        }
    }
    Ok(Json(json!({ "reviews": out })))
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
            if !store.is_queued_in(tx, &id)? {
                return Err(VisibilityError::NotFound(
                    "no break-glass event awaiting review has this id".into(),
                ));
            }
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
    let (events, next) = find_events(&s, &filter, MAX_LIMIT, u64::MAX)?;
    Ok(Json(json!({
        "events": events,
        "truncated": next.is_some(),
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

    #[test]
    fn query_parameters_are_checked() {
        let parse = |q: &str| {
            let q: EventsQuery = serde_urlencoded_like(q);
            Filter::parse(q)
        };
        assert!(parse("limit=0").is_err());
        assert!(parse("limit=1001").is_err());
        assert!(parse("decision=maybe").is_err());
        assert!(parse("from=yesterday").is_err());
        let (f, limit, before) = parse("decision=deny&limit=5&before=9").unwrap();
        assert_eq!((f.decision, limit, before), (Some(Outcome::Deny), 5, 9));
    }

    fn serde_urlencoded_like(q: &str) -> EventsQuery {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        Query::<EventsQuery>::try_from_uri(&uri).unwrap().0
    }
}
