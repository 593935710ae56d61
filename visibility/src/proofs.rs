//! Checkpoints and proofs.
//!
//! A checkpoint is signed for a tree size only while holding the writer lock, stored, and
//! made public only after the database is flushed: a note handed out always names leaves
//! that survive a crash, so the service can never be made to sign two different roots for
//! one size.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use serde_json::{json, Value};

use federation::checkpoint::{self, Checkpoint, NoteError, NoteVerifier};
use federation::log::Hash;

use crate::error::CheckpointError;
use crate::store::Store;
use crate::{AppState, VisibilityError, VisibilityState};

/// The checkpoint in force: the largest size signed and durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) size: u64,
    root: Hash,
    pub(crate) note: String,
}

/// Proof that the caller holds the writer lock.
pub(crate) struct WriterGuard<'a> {
    _held: tokio::sync::MutexGuard<'a, ()>,
}

/// Reads the stored checkpoint and checks it against the log; signs one for the current
/// size when there is none or the log has grown past it. Refuses a log that is behind or
/// disagrees with its own last checkpoint: serving it would fork the log.
pub(crate) fn initial_checkpoint(
    store: &Store,
    did: &str,
    key: &SigningKey,
    verifier: &NoteVerifier,
) -> Result<Published, CheckpointError> {
    let size = store.size()?;
    if let Some(note) = store.checkpoint()? {
        match checkpoint::open(&note, std::slice::from_ref(verifier)) {
            Ok(cp) => {
                if cp.origin != did {
                    tracing::warn!("stored checkpoint has another origin; signing anew");
                } else if cp.size > size {
                    return Err(CheckpointError::LostEntries {
                        size,
                        checkpoint: cp.size,
                    });
                } else {
                    let root = store.log.root(cp.size)?;
                    if root != cp.root {
                        return Err(CheckpointError::Rewritten { size: cp.size });
                    }
                    if cp.size == size {
                        return Ok(Published { size, root, note });
                    }
                }
            }
            Err(NoteError::NoKnownSignature | NoteError::BadSignature { .. }) => {
                tracing::warn!("stored checkpoint is signed by another key; signing anew");
            }
            Err(e) => return Err(CheckpointError::Unreadable(e)),
        }
    }
    let published = sign(store, did, key, size).map_err(CheckpointError::Sign)?;
    store.put_checkpoint(&published.note)?;
    store.db.flush()?;
    Ok(published)
}

fn sign(
    store: &Store,
    did: &str,
    key: &SigningKey,
    size: u64,
) -> Result<Published, VisibilityError> {
    let root = store.log.root(size)?;
    let note = Checkpoint::new(did, size, root).sign(did, key)?;
    Ok(Published { size, root, note })
}

impl VisibilityState {
    pub(crate) async fn lock_writer(&self) -> WriterGuard<'_> {
        WriterGuard {
            _held: self.writer.lock().await,
        }
    }

    /// The checkpoint in force.
    pub(crate) fn latest(&self) -> Arc<Published> {
        match self.latest.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Signs, stores and flushes a checkpoint for the log's current size, then publishes
    /// it. Nothing is signed when the size has not changed.
    pub(crate) async fn publish(
        &self,
        _guard: &WriterGuard<'_>,
    ) -> Result<Arc<Published>, VisibilityError> {
        let current = self.latest();
        let size = self.store.size()?;
        if size == current.size {
            // Entries appended by a request that failed before flushing may still be in
            // memory only: flush, so that whatever a caller learns from them is durable.
            self.store.db.flush_async().await?;
            return Ok(current);
        }
        if size < current.size {
            return Err(VisibilityError::Storage(format!(
                "the log shrank from {} to {size}",
                current.size
            )));
        }
        let published = sign(&self.store, &self.config.did, &self.signing_key, size)?;
        self.store.put_checkpoint(&published.note)?;
        self.store.db.flush_async().await?;
        let published = Arc::new(published);
        match self.latest.write() {
            Ok(mut l) => *l = published.clone(),
            Err(poisoned) => *poisoned.into_inner() = published.clone(),
        }
        Ok(published)
    }
}

/// Signs a checkpoint at least once per `interval` while the log grows (appends sign their
/// own; this covers any size left unsigned), and purges expired challenges and sessions.
pub(crate) async fn checkpointer(state: Weak<VisibilityState>, interval: Duration) {
    // tokio refuses a zero period; the configuration's lower bound is kept here too.
    let interval = interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let purge_every = (60_000 / interval.as_millis().max(1)).max(1) as u64;
    let mut ticks = 0u64;
    loop {
        ticker.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        ticks = ticks.wrapping_add(1);
        let guard = state.lock_writer().await;
        if let Err(e) = state.store.catch_up() {
            tracing::error!(error = %e, "indexing failed");
        }
        if let Err(e) = state.publish(&guard).await {
            tracing::error!(error = %e, "checkpoint signing failed");
        }
        drop(guard);
        if ticks.is_multiple_of(purge_every) {
            state.challenges.purge_expired();
            state.sessions.purge_expired();
        }
    }
}

/// `GET /v1/checkpoint`: the signed note in force.
#[utoipa::path(get, path = "/v1/checkpoint", tag = "log",
    responses((status = 200, description = "A C2SP signed note", body = String, content_type = "text/plain")))]
pub(crate) async fn get_checkpoint(State(s): AppState) -> Response {
    let latest = s.latest();
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        latest.note.clone(),
    )
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct InclusionQuery {
    /// The leaf's index.
    index: u64,
    /// The tree size the proof is for.
    size: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsistencyQuery {
    /// The older tree size.
    old: u64,
    /// The newer tree size.
    new: u64,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, VisibilityError> {
    q.map(|Query(q)| q)
        .map_err(|e| VisibilityError::bad_request("invalid-query", e.body_text()))
}

fn hex_path(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(hex::encode).collect()
}

/// `GET /v1/proofs/inclusion?index=I&size=S`.
#[utoipa::path(get, path = "/v1/proofs/inclusion", tag = "log", params(InclusionQuery),
    responses((status = 200, description = "`{index, size, proof}` (hex hashes)", body = Object),
        (status = 400, description = "Missing or malformed parameters, or beyond the tree",
            body = service::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn inclusion(
    State(s): AppState,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<Value>, VisibilityError> {
    let q = query(q)?;
    let proof = s.store.log.inclusion_proof(q.index, q.size)?;
    Ok(Json(json!({
        "index": q.index,
        "size": q.size,
        "proof": hex_path(&proof),
    })))
}

/// `GET /v1/proofs/consistency?old=A&new=B`.
#[utoipa::path(get, path = "/v1/proofs/consistency", tag = "log", params(ConsistencyQuery),
    responses((status = 200, description = "`{old, new, proof}` (hex hashes)", body = Object),
        (status = 400, description = "Missing or malformed parameters, or beyond the tree",
            body = service::openapi::ProblemDoc, content_type = "application/problem+json")))]
pub(crate) async fn consistency(
    State(s): AppState,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<Value>, VisibilityError> {
    let q = query(q)?;
    let proof = s.store.log.consistency_proof(q.old, q.new)?;
    Ok(Json(json!({
        "old": q.old,
        "new": q.new,
        "proof": hex_path(&proof),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(dir: &std::path::Path, leaves: &[&[u8]]) -> Store {
        let store = Store::open(&dir.join("db")).unwrap();
        let leaves: Vec<Vec<u8>> = leaves.iter().map(|l| l.to_vec()).collect();
        store.log.append_batch(&leaves).unwrap();
        store
    }

    #[test]
    fn a_log_behind_or_unlike_its_checkpoint_is_refused() {
        let did = "did:web:visibility.test";
        let key = SigningKey::from_bytes(&[7; 32]);
        let verifier = NoteVerifier::from_signing_key(did, &key).unwrap();
        // Raw leaves are not entries; keep the indexes from reading them.
        let mark_indexed = |s: &Store| {
            let n = s.size().unwrap();
            s.db.open_tree("visibility/index")
                .unwrap()
                .insert(b"n", &n.to_be_bytes())
                .unwrap();
        };
        let dir = tempfile::tempdir().unwrap();
        let original = store_with(dir.path(), &[b"a", b"b", b"c"]);
        mark_indexed(&original);
        let first = initial_checkpoint(&original, did, &key, &verifier).unwrap();
        assert_eq!(first.size, 3);
        // Same size: the stored note is served as it is.
        assert_eq!(
            initial_checkpoint(&original, did, &key, &verifier).unwrap(),
            first
        );

        let dir = tempfile::tempdir().unwrap();
        let shorter = store_with(dir.path(), &[b"a", b"b"]);
        mark_indexed(&shorter);
        shorter.put_checkpoint(&first.note).unwrap();
        let err = initial_checkpoint(&shorter, did, &key, &verifier).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::LostEntries {
                    size: 2,
                    checkpoint: 3
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("lost entries"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let rewritten = store_with(dir.path(), &[b"a", b"x", b"c", b"d"]);
        mark_indexed(&rewritten);
        rewritten.put_checkpoint(&first.note).unwrap();
        let err = initial_checkpoint(&rewritten, did, &key, &verifier).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Rewritten { size: 3 }),
            "{err}"
        );
        assert!(err.to_string().contains("rewritten"), "{err}");

        // A log that grew past its checkpoint gets a new one.
        let dir = tempfile::tempdir().unwrap();
        let grown = store_with(dir.path(), &[b"a", b"b", b"c", b"d"]);
        mark_indexed(&grown);
        grown.put_checkpoint(&first.note).unwrap();
        let next = initial_checkpoint(&grown, did, &key, &verifier).unwrap();
        assert_eq!(next.size, 4);
        assert_eq!(
            grown.checkpoint().unwrap().as_deref(),
            Some(next.note.as_str())
        );
    }
}
