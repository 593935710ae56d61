//! `POST /v1/batches`: a member organization reports its access events.
//!
//! The batch is a compact JWS (`typ` `fedgate-batch+jwt`) by a key under the member's
//! `assertionMethod`, over `{"custodian": <member DID>, "events": [...]}`. An organization
//! reports only its own accesses: the signer, the batch's custodian and every event's
//! custodian must be one DID; every event's id must be a UUID and its free text must pass
//! [`federation::events::check_free_text`] (reasons from the closed vocabulary, nothing
//! identifier-shaped). Any violation refuses the whole batch before anything is appended,
//! naming the first offending event by position (and by id once the id is known to be a
//! UUID, safe to echo). Each event is logged exactly once: an event already in the log is
//! answered with its existing leaf index.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use federation::did::{did_of, DidError, Relationship};
use federation::events::AccessEvent;
use federation::jose::{self, JoseError};
use federation::verify::Check;
use service::http::StrictJson;

use federation::wire::{
    leaf_bytes, BatchPayload, BatchRequest, BatchResponse, LogEntry, Receipt, ReceiptsRequest,
    ReceiptsResponse, BATCH_TYP, MAX_BATCH_EVENTS, MAX_BATCH_JWS_BYTES,
};

use federation::log::{leaf_hash, Hash};

use crate::merkle::Leaves;
use crate::proofs::Published;
use crate::{VisibilityError, VisibilityState};

const MAX_PATIENT_REF_BYTES: usize = 256;
const MAX_DIGESTS: usize = 16;
/// Serde messages may quote input; they are cut before being echoed.
const MAX_ECHO_CHARS: usize = 200;

fn echo(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Reads the payload and applies the rules that need no key: size, shape, custodians,
/// field bounds.
fn check_payload(signer_did: &str, payload: Value) -> Result<BatchPayload, VisibilityError> {
    // The count is checked before the events are parsed, so an oversized batch costs little.
    let count = payload
        .get("events")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    if count > MAX_BATCH_EVENTS {
        return Err(VisibilityError::TooLarge(format!(
            "a batch carries at most {MAX_BATCH_EVENTS} events, this one {count}"
        )));
    }
    let batch: BatchPayload = serde_json::from_value(payload).map_err(|e| {
        VisibilityError::unprocessable("invalid-batch", echo(&format!("batch payload: {e}")))
    })?;
    if batch.custodian != signer_did {
        return Err(VisibilityError::forbidden(
            "custodian-mismatch",
            "the batch's custodian is not the organization that signed it",
        ));
    }
    for (i, event) in batch.events.iter().enumerate() {
        if event.custodian != batch.custodian {
            return Err(VisibilityError::forbidden(
                "custodian-mismatch",
                format!("event #{i}: an organization reports only its own accesses"),
            ));
        }
        check_event(event).map_err(|reason| {
            VisibilityError::unprocessable("invalid-event", format!("event #{i}: {reason}"))
        })?;
        // The id is a UUID by now: safe to name, so the reporter finds the event.
        federation::events::check_free_text(event).map_err(|reason| {
            VisibilityError::unprocessable(
                "invalid-event",
                format!("event #{i} ({}): {reason}", event.id),
            )
        })?;
    }
    Ok(batch)
}

fn check_event(event: &AccessEvent) -> Result<(), &'static str> {
    // Ids are UUIDs (the gateway's are v7): a refusal can name one without echoing
    // arbitrary input, and the reviews' paths can address every logged event.
    if !federation::events::is_event_id(&event.id) {
        return Err("id must be a UUID (8-4-4-4-12 hex digits)");
    }
    if event
        .patient_ref
        .as_ref()
        .is_some_and(|r| r.is_empty() || r.len() > MAX_PATIENT_REF_BYTES)
    {
        return Err("patientRef must have 1 to 256 bytes");
    }
    if event.patient_did_digests.len() > MAX_DIGESTS {
        return Err("at most 16 patientDidDigests");
    }
    let is_digest = |d: &String| {
        d.len() == 64
            && d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !event.patient_did_digests.iter().all(is_digest) {
        return Err("patientDidDigests must be lowercase hex SHA-256 digests");
    }
    Ok(())
}

/// Verifies a batch JWS completely: format, type, membership, key, signature, payload.
pub(crate) async fn verify_batch(
    state: &VisibilityState,
    jws: &str,
) -> Result<BatchPayload, VisibilityError> {
    let decoded = jose::decode_with_limit(jws, MAX_BATCH_JWS_BYTES).map_err(|e| match e {
        JoseError::TooLarge => VisibilityError::TooLarge(format!(
            "a batch JWS is at most {MAX_BATCH_JWS_BYTES} bytes; send smaller batches"
        )),
        // Header and payload were read with the strict JSON reader: a batch whose events
        // another reader could see differently is refused here, before any is looked at.
        other => VisibilityError::BadBatch {
            check: if other.is_malformed() {
                Check::Format
            } else {
                Check::Proof
            },
            detail: other.to_string(),
        },
    })?;
    if decoded.typ.as_deref() != Some(BATCH_TYP) {
        return Err(VisibilityError::bad_request(
            "invalid-batch",
            format!("the JWS typ must be {BATCH_TYP}"),
        ));
    }
    let signer = did_of(&decoded.kid).to_string();
    if !state.is_member(&signer) {
        return Err(VisibilityError::forbidden(
            "not-a-member",
            format!("{signer} is not a member of the federation"),
        ));
    }
    let (key, _) = state
        .verifier
        .resolver
        .public_key(&decoded.kid, Relationship::AssertionMethod)
        .await
        .map_err(|e| match e {
            DidError::Fetch { .. } => VisibilityError::Unavailable(e.to_string()),
            DidError::NotAllowed(_) => VisibilityError::forbidden("not-a-member", e.to_string()),
            other => VisibilityError::forbidden("bad-signature", other.to_string()),
        })?;
    decoded
        .verify(&key)
        .map_err(|e| VisibilityError::forbidden("bad-signature", e.to_string()))?;
    check_payload(&signer, decoded.payload)
}

/// Where a receipt's leaf is: already in the log, or at a position of this append.
enum Slot {
    Logged(u64),
    New(usize),
}

/// What the write of [`append_events`] did.
struct Appended {
    /// Per event, in order: its id, where its leaf is, whether it was logged before.
    slots: Vec<(String, Slot, bool)>,
    /// The indexes of the leaves appended (empty when every event was logged before).
    range: std::ops::Range<u64>,
    /// The checkpoint signed for the log this write left, when it appended.
    published: Option<Published>,
}

/// Appends the events not yet logged and returns one receipt per event, in order, with the
/// checkpoint covering them. Durable before it returns.
///
/// Which events are new is decided inside the database write that appends them, with
/// their index entries and the checkpoint over them: writes run one after another, so of
/// two requests carrying one event exactly one appends it, and the other gets its leaf.
pub(crate) async fn append_events(
    state: &VisibilityState,
    custodian: &str,
    events: Vec<AccessEvent>,
) -> Result<BatchResponse, VisibilityError> {
    // Serializing and hashing happen here, not on the database's writer thread.
    let prepared: Vec<(String, LogEntry, Vec<u8>, Hash)> = events
        .into_iter()
        .map(|event| {
            let id = event.id.clone();
            let entry = LogEntry::Access { event };
            let leaf = leaf_bytes(&entry);
            let hash = leaf_hash(&leaf);
            (id, entry, leaf, hash)
        })
        .collect();
    let (store, signer) = (state.store.clone(), state.signer.clone());
    let owner = custodian.to_string();
    let appended = state
        .store
        .db
        .write(move |tx| -> Result<Appended, VisibilityError> {
            let mut slots: Vec<(String, Slot, bool)> = Vec::with_capacity(prepared.len());
            let mut entries = Vec::new();
            let mut leaves: Vec<Vec<u8>> = Vec::new();
            let mut hashes: Vec<Hash> = Vec::new();
            let mut in_batch: HashMap<String, usize> = HashMap::new();
            // Which events are logged already, in one read rather than one per event.
            let ids: Vec<&str> = prepared.iter().map(|(id, ..)| id.as_str()).collect();
            let logged = store.existing_many_in(tx, &owner, &ids)?;
            for ((id, entry, leaf, hash), logged) in prepared.into_iter().zip(logged) {
                let same_content = |held: &[u8]| {
                    if held == leaf.as_slice() {
                        Ok(())
                    } else {
                        Err(VisibilityError::Conflict(format!(
                            "event {} is already logged with other content",
                            echo(&id)
                        )))
                    }
                };
                if let Some(index) = logged {
                    same_content(&store.log.leaf_in(tx, index)?)?;
                    slots.push((id, Slot::Logged(index), true));
                } else if let Some(&pos) = in_batch.get(&id) {
                    same_content(&leaves[pos])?;
                    slots.push((id, Slot::New(pos), true));
                } else {
                    in_batch.insert(id.clone(), leaves.len());
                    slots.push((id, Slot::New(leaves.len()), false));
                    entries.push(entry);
                    leaves.push(leaf);
                    hashes.push(hash);
                }
            }
            if leaves.is_empty() {
                return Ok(Appended {
                    slots,
                    range: 0..0,
                    published: None,
                });
            }
            let leaves = Leaves::hashed(leaves, hashes);
            let range = store.append_in(tx, &entries, &leaves)?;
            let published = signer.checkpoint_in(&store, tx)?;
            Ok(Appended {
                slots,
                range,
                published: Some(published),
            })
        })
        .await?;
    let Appended {
        slots,
        range,
        published,
    } = appended;
    let published = match published {
        Some(p) => {
            metrics::counter!("fedgate_log_appended_total").increment(range.end - range.start);
            tracing::info!(
                custodian,
                appended = range.end - range.start,
                tree_size = p.size,
                "batch appended"
            );
            state.install(p)
        }
        // Every event was logged before: a checkpoint covering their leaves.
        None => {
            let needed = slots
                .iter()
                .filter_map(|(_, slot, _)| match slot {
                    Slot::Logged(index) => Some(index + 1),
                    Slot::New(_) => None,
                })
                .max()
                .unwrap_or(0);
            state.covering(needed).await?
        }
    };
    let receipts = slots
        .into_iter()
        .map(|(event_id, slot, duplicate)| Receipt {
            event_id,
            leaf_index: match slot {
                Slot::Logged(index) => index,
                Slot::New(pos) => range.start + pos as u64,
            },
            duplicate,
        })
        .collect();
    Ok(BatchResponse {
        receipts,
        tree_size: published.size,
        checkpoint: published.note.clone(),
    })
}

/// `POST /v1/receipts`: where a custodian's events sit in the log, for reporters whose
/// events arrive by another path (NATS) and so got no receipt in an HTTP answer.
///
/// `POST /v1/receipts`.
#[utoipa::path(post, path = "/v1/receipts", tag = "log",
    request_body(content = Object, description = "`{custodian, events: [{id, leafHash}]}` (federation::wire)"),
    responses((status = 200, description = "`{receipts, conflicts, treeSize, checkpoint}`", body = Object),
        service::openapi::JsonBodyErrors))]
pub(crate) async fn post_receipts(
    State(s): State<Arc<VisibilityState>>,
    StrictJson(req): StrictJson<ReceiptsRequest>,
) -> Result<Json<ReceiptsResponse>, VisibilityError> {
    if req.events.len() > MAX_BATCH_EVENTS {
        return Err(VisibilityError::TooLarge(format!(
            "ask for at most {MAX_BATCH_EVENTS} receipts at once"
        )));
    }
    let mut found = Vec::new();
    let mut conflicts = Vec::new();
    // One snapshot: the index entry and the leaf it points at agree.
    let snapshot = s.store.db.read()?;
    let view = s.store.log.view(&snapshot)?;
    for q in &req.events {
        let hash: federation::log::Hash = hex::decode(&q.leaf_hash)
            .ok()
            .and_then(|b| b.as_slice().try_into().ok())
            .ok_or_else(|| {
                VisibilityError::unprocessable("invalid-hash", "leafHash must be 64 hex digits")
            })?;
        let Some(index) = s.store.existing_at(&snapshot, &req.custodian, &q.id)? else {
            continue;
        };
        if leaf_hash(&view.leaf(index)?) == hash {
            found.push((q.id.clone(), index));
        } else {
            conflicts.push(q.id.clone());
        }
    }
    drop(view);
    drop(snapshot);
    // Taken after the lookups: checkpoints only grow, so this one is the newest and covers
    // every leaf published before it; a leaf appended but not yet covered is left out and
    // asked for again.
    let published = s.latest();
    let receipts = found
        .into_iter()
        .filter(|(_, index)| *index < published.size)
        .map(|(event_id, leaf_index)| Receipt {
            event_id,
            leaf_index,
            duplicate: true,
        })
        .collect();
    Ok(Json(ReceiptsResponse {
        receipts,
        conflicts,
        tree_size: published.size,
        checkpoint: published.note.clone(),
    }))
}

/// `POST /v1/batches`: a custodian's signed batch of access events, appended exactly once.
#[utoipa::path(post, path = "/v1/batches", tag = "log",
    request_body(content = Object, description = "`{batch}`: a batch signed by a member custodian (federation::wire)"),
    responses((status = 200, description = "A receipt per event and a signed checkpoint", body = Object),
        (status = 403, description = "Not a member custodian, or a bad signature", body = service::openapi::ProblemDoc,
            content_type = "application/problem+json"),
        service::openapi::JsonBodyErrors, service::openapi::Unavailable))]
pub(crate) async fn post_batch(
    State(s): State<Arc<VisibilityState>>,
    StrictJson(req): StrictJson<BatchRequest>,
) -> Result<Json<BatchResponse>, VisibilityError> {
    let batch = verify_batch(&s, &req.batch).await?;
    append_events(&s, &batch.custodian, batch.events)
        .await
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(custodian: &str) -> Value {
        json!({
            "id": AccessEvent::new_id(),
            "time": "2026-03-01T10:00:00Z",
            "custodian": custodian,
            "domain": "clinical",
            "purpose": "TREAT",
            "decision": "allow",
            "decisionId": "d-1",
        })
    }

    fn status(e: VisibilityError) -> u16 {
        use axum::response::IntoResponse;
        e.into_response().status().as_u16()
    }

    #[test]
    fn payload_rules() {
        let a = "did:web:a.test";
        let ok = check_payload(a, json!({"custodian": a, "events": [event(a), event(a)]})).unwrap();
        assert_eq!(ok.events.len(), 2);

        let too_many: Vec<Value> = (0..=MAX_BATCH_EVENTS).map(|_| event(a)).collect();
        let err = check_payload(a, json!({"custodian": a, "events": too_many})).unwrap_err();
        assert_eq!(status(err), 413);
        let max: Vec<Value> = (0..MAX_BATCH_EVENTS).map(|_| event(a)).collect();
        assert!(check_payload(a, json!({"custodian": a, "events": max})).is_ok());

        let err = check_payload(a, json!({"custodian": "did:web:b.test", "events": []}));
        assert_eq!(status(err.unwrap_err()), 403);
        let err = check_payload(
            a,
            json!({"custodian": a, "events": [event("did:web:b.test")]}),
        );
        assert_eq!(status(err.unwrap_err()), 403);

        let mut unknown = event(a);
        unknown["colour"] = json!("red");
        let err = check_payload(a, json!({"custodian": a, "events": [unknown]}));
        assert_eq!(status(err.unwrap_err()), 422);
        let err = check_payload(a, json!({"custodian": a, "events": [], "extra": 1}));
        assert_eq!(status(err.unwrap_err()), 422);

        let mut bad_digest = event(a);
        bad_digest["patientDidDigests"] = json!(["ABC"]);
        let err = check_payload(a, json!({"custodian": a, "events": [bad_digest]}));
        assert_eq!(status(err.unwrap_err()), 422);
        let mut empty_id = event(a);
        empty_id["id"] = json!("");
        let err = check_payload(a, json!({"custodian": a, "events": [empty_id]}));
        assert_eq!(status(err.unwrap_err()), 422);
        let mut path_id = event(a);
        path_id["id"] = json!("../../etc");
        let err = check_payload(a, json!({"custodian": a, "events": [path_id]}));
        assert_eq!(status(err.unwrap_err()), 422);
    }

    #[test]
    fn events_with_identifier_shaped_free_text_refuse_the_batch() {
        let a = "did:web:a.test";
        let mut ssn = event(a);
        ssn["reasons"] = json!(["denied by policy", "patient 123-45-6789 unknown"]);
        let id = ssn["id"].as_str().unwrap().to_string();
        let err = check_payload(a, json!({"custodian": a, "events": [event(a), ssn]})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("event #1 ({id})")), "{text}");
        assert!(text.contains("reasons[1]"), "{text}");
        assert!(
            !text.contains("6789"),
            "the refusal echoes the value: {text}"
        );
        assert_eq!(status(err), 422);

        let mut glass = event(a);
        glass["justification"] = json!("call his wife at 555-123-4567");
        let err = check_payload(a, json!({"custodian": a, "events": [glass]}));
        assert_eq!(status(err.unwrap_err()), 422);

        let mut fine = event(a);
        fine["reasons"] = json!(["consent permits TREAT for Observation"]);
        fine["justification"] = json!("unconscious patient in the ED");
        assert!(check_payload(a, json!({"custodian": a, "events": [fine]})).is_ok());
    }
}
