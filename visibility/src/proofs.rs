//! Checkpoints and proofs.
//!
//! A checkpoint is signed inside the database write that appends the leaves it covers
//! ([`Signer::checkpoint_in`]), from the tree as that write sees it, and stored by the
//! same write; it is made public only once the write's commit is on disk. So a note
//! handed out always names leaves that survive a crash, and, since the one writer thread
//! runs writes one after another, the checkpoints stored only ever grow and the service
//! can never be made to sign two different roots for one size.

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
use storage::WriteTx;

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

/// What signs checkpoints: the service's DID and its Ed25519 key. Cheap to clone into a
/// database write.
#[derive(Clone)]
pub(crate) struct Signer {
    did: String,
    key: SigningKey,
}

impl Signer {
    pub(crate) fn new(did: &str, key: SigningKey) -> Self {
        Signer {
            did: did.to_string(),
            key,
        }
    }

    /// An Ed25519 signature by the checkpoint key over `bytes` (evidence packages).
    pub(crate) fn sign_bytes(&self, bytes: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.key.sign(bytes).to_bytes()
    }

    /// The cursor key, derived from the signing key.
    pub(crate) fn cursor_key(&self) -> [u8; 32] {
        crate::query::cursor_key(&self.key.to_bytes())
    }

    /// Signs a checkpoint for the log as the write `tx` sees it, and stores it in `tx`.
    pub(crate) fn checkpoint_in(
        &self,
        store: &Store,
        tx: &mut WriteTx<'_>,
    ) -> Result<Published, VisibilityError> {
        let (size, root) = store.log.root_in(tx)?;
        let note = Checkpoint::new(&self.did, size, root).sign(&self.did, &self.key)?;
        store.put_checkpoint_in(tx, &note)?;
        Ok(Published { size, root, note })
    }
}

/// Reads the stored checkpoint and checks it against the log; signs one for the current
/// size when there is none or the log has grown past it. Refuses a log that is behind or
/// disagrees with its own last checkpoint: serving it would fork the log. Runs at start,
/// before the service answers: it waits for its write on this thread.
pub(crate) fn initial_checkpoint(
    store: &Store,
    signer: &Signer,
    verifier: &NoteVerifier,
) -> Result<Published, CheckpointError> {
    // The checkpoint first, then the log: other processes sharing the database may append
    // meanwhile, and a log read first could look shorter than a checkpoint read after.
    let stored = store.checkpoint()?;
    let snapshot = store.db.read()?;
    let mut view = store.log.view(&snapshot)?;
    let size = view.size();
    if let Some(note) = stored {
        match checkpoint::open(&note, std::slice::from_ref(verifier)) {
            Ok(cp) => {
                if cp.origin != signer.did {
                    tracing::warn!("stored checkpoint has another origin; signing anew");
                } else if cp.size > size {
                    return Err(CheckpointError::LostEntries {
                        size,
                        checkpoint: cp.size,
                    });
                } else {
                    let root = view.root(cp.size)?;
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
    drop(view);
    drop(snapshot);
    let (store2, signer) = (store.clone(), signer.clone());
    store
        .db
        .write_blocking(move |tx| signer.checkpoint_in(&store2, tx))
        .map_err(CheckpointError::Sign)
}

impl VisibilityState {
    /// The checkpoint in force.
    pub(crate) fn latest(&self) -> Arc<Published> {
        match self.latest.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `published` (durable by now) the checkpoint in force, unless a larger one
    /// already is: the checkpoint served never goes back. Returns it.
    pub(crate) fn install(&self, published: Published) -> Arc<Published> {
        let published = Arc::new(published);
        let mut latest = match self.latest.write() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if published.size > latest.size {
            *latest = published.clone();
            self.checkpoint_time.store(
                chrono::Utc::now().timestamp(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        published
    }

    /// The checkpoint in force, after taking a larger one that another visibility process
    /// sharing the database has signed (PostgreSQL storage; with the embedded file this
    /// process is the only signer). A stored note that does not verify is left alone.
    pub(crate) fn refreshed(&self) -> Arc<Published> {
        if !self.store.db.is_postgres() {
            return self.latest();
        }
        match self.store.checkpoint() {
            Ok(Some(note)) => {
                if let Ok(cp) = checkpoint::open(&note, std::slice::from_ref(&self.note_verifier)) {
                    if cp.origin == self.signer.did && cp.size > self.latest().size {
                        self.install(Published {
                            size: cp.size,
                            root: cp.root,
                            note,
                        });
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the stored checkpoint failed"),
        }
        self.latest()
    }

    /// A checkpoint covering every leaf below `size` (at least): the one in force if it
    /// does, else one signed, stored and made durable for the log's current size.
    pub(crate) async fn covering(&self, size: u64) -> Result<Arc<Published>, VisibilityError> {
        let current = self.refreshed();
        if current.size >= size {
            return Ok(current);
        }
        self.publish().await
    }

    /// Signs and stores a checkpoint for the log's current size and publishes it once it
    /// is on disk. Nothing is signed when the size has not changed.
    pub(crate) async fn publish(&self) -> Result<Arc<Published>, VisibilityError> {
        let current = self.refreshed();
        let size = self.store.size()?;
        if size == current.size {
            return Ok(current);
        }
        if size < current.size {
            return Err(VisibilityError::Storage(format!(
                "the log shrank from {} to {size}",
                current.size
            )));
        }
        let (store, signer) = (self.store.clone(), self.signer.clone());
        let published = self
            .store
            .db
            .write(move |tx| signer.checkpoint_in(&store, tx))
            .await?;
        Ok(self.install(published))
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
        if let Err(e) = state.store.catch_up().await {
            tracing::error!(error = %e, "indexing failed");
        }
        if let Err(e) = state.publish().await {
            tracing::error!(error = %e, "checkpoint signing failed");
        }
        if ticks.is_multiple_of(purge_every) {
            if let Err(e) = state.challenges.purge_expired().await {
                tracing::error!(error = %e, "purging expired challenges failed");
            }
            state.sessions.purge_expired();
        }
    }
}

/// `GET /v1/checkpoint`: the signed note in force.
#[utoipa::path(get, path = "/v1/checkpoint", tag = "log",
    responses((status = 200, description = "A C2SP signed note", body = String, content_type = "text/plain")))]
pub(crate) async fn get_checkpoint(State(s): AppState) -> Response {
    let latest = s.refreshed();
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
    let snapshot = s.store.db.read()?;
    let proof = s
        .store
        .log
        .view(&snapshot)?
        .inclusion_proof(q.index, q.size)?;
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
    let snapshot = s.store.db.read()?;
    let proof = s
        .store
        .log
        .view(&snapshot)?
        .consistency_proof(q.old, q.new)?;
    Ok(Json(json!({
        "old": q.old,
        "new": q.new,
        "proof": hex_path(&proof),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SCHEMA;

    async fn store_with(dir: &std::path::Path, leaves: &[&[u8]]) -> Store {
        let db = service::db::open_service_db(dir, "visibility", SCHEMA).unwrap();
        let store = Store::open(db).unwrap();
        let leaves: Vec<Vec<u8>> = leaves.iter().map(|l| l.to_vec()).collect();
        store.log.append_batch(leaves).await.unwrap();
        // Raw leaves are not entries; keep the indexes from reading them.
        let n = store.size().unwrap();
        store
            .db
            .tree("visibility/index")
            .insert(b"n", &n.to_be_bytes())
            .await
            .unwrap();
        store
    }

    async fn put_checkpoint(store: &Store, note: &str) {
        let (s, note) = (store.clone(), note.to_string());
        store
            .db
            .write(move |tx| s.put_checkpoint_in(tx, &note))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_log_behind_or_unlike_its_checkpoint_is_refused() {
        let did = "did:web:visibility.test";
        let key = SigningKey::from_bytes(&[7; 32]);
        let signer = Signer::new(did, key.clone());
        let verifier = NoteVerifier::from_signing_key(did, &key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let original = store_with(dir.path(), &[b"a", b"b", b"c"]).await;
        let first = initial_checkpoint(&original, &signer, &verifier).unwrap();
        assert_eq!(first.size, 3);
        // Same size: the stored note is served as it is.
        assert_eq!(
            initial_checkpoint(&original, &signer, &verifier).unwrap(),
            first
        );

        let dir = tempfile::tempdir().unwrap();
        let shorter = store_with(dir.path(), &[b"a", b"b"]).await;
        put_checkpoint(&shorter, &first.note).await;
        let err = initial_checkpoint(&shorter, &signer, &verifier).unwrap_err();
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
        let rewritten = store_with(dir.path(), &[b"a", b"x", b"c", b"d"]).await;
        put_checkpoint(&rewritten, &first.note).await;
        let err = initial_checkpoint(&rewritten, &signer, &verifier).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Rewritten { size: 3 }),
            "{err}"
        );
        assert!(err.to_string().contains("rewritten"), "{err}");

        // A log that grew past its checkpoint gets a new one.
        let dir = tempfile::tempdir().unwrap();
        let grown = store_with(dir.path(), &[b"a", b"b", b"c", b"d"]).await;
        put_checkpoint(&grown, &first.note).await;
        let next = initial_checkpoint(&grown, &signer, &verifier).unwrap();
        assert_eq!(next.size, 4);
        assert_eq!(
            grown.checkpoint().unwrap().as_deref(),
            Some(next.note.as_str())
        );
    }
}
