//! The federation's visibility service: an append-only RFC 6962 log of every access
//! decision, with signed checkpoints, proofs, an auditor API and patients' own history.
//!
//! Gateways post signed batches of [`AccessEvent`]s; each event is appended exactly once
//! and answered with a receipt (its leaf index) and a checkpoint signed by the service's
//! did:web key, so a gateway can prove later that its events are in the log and anyone can
//! check that the log only ever grew. Events carry no PHI; nothing here logs their content.
//!
//! Map of the modules:
//! - [`config`]: `visibility.toml`, validated at load.
//! - [`store`]: the sled database: the Merkle log, the indexes over it (rebuilt from the
//!   log when behind), the latest checkpoint, review notes.
//! - [`ingest`]: `POST /v1/batches`: signature, membership and custodian checks, exactly
//!   once appends; `POST /v1/receipts`: where already-logged events sit.
//! - [`merkle`]: the RFC 6962 Merkle tree in sled that holds the log.
//! - [`bus`]: the same batches read from NATS JetStream, when `[nats]` is configured.
//! - [`proofs`]: checkpoint signing (after every append and in the background), the
//!   checkpoint and proof endpoints.
//! - [`audit`]: challenges, auditor sessions, event queries, the break-glass review queue,
//!   and patients' history.
//! - [`dashboard`]: the auditor web dashboard (`GET /dashboard`), a static page on the
//!   auditor API.
//! - [`error`]: the module's error enum, mapped to problem+json once.

pub mod audit;
pub mod bus;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod ingest;
pub mod merkle;
pub mod proofs;
pub mod store;

pub use config::VisibilityConfig;
pub use error::VisibilityError;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

use federation::checkpoint::NoteVerifier;
use federation::did::DidResolver;
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::registry::{ManifestSource, Registry, Role, SignedManifest};
use federation::status::StatusCache;
use federation::trust::{StaticTrust, TrustSource};
use federation::verify::Verifier;

use federation::wire::{leaf_bytes, LogEntry};
use proofs::Published;
use store::Store;

/// Who belongs to the federation.
enum Membership {
    Static {
        members: HashSet<String>,
        auditors: HashSet<String>,
    },
    Registry(Arc<Registry>),
}

/// Shared state of the service.
pub struct VisibilityState {
    pub config: VisibilityConfig,
    pub key: KeyPair,
    signing_key: SigningKey,
    /// The verifier for this service's checkpoints, as peers build it from the DID document.
    pub note_verifier: NoteVerifier,
    pub store: Store,
    pub verifier: Verifier,
    membership: Membership,
    /// Serializes appends and checkpoint signing: checkpoints are monotonic and each one
    /// is published only after the leaves it covers are on disk.
    writer: tokio::sync::Mutex<()>,
    latest: RwLock<Arc<Published>>,
    challenges: audit::Challenges,
    sessions: audit::Sessions,
}

impl VisibilityState {
    /// Loads (or creates) the key, opens storage, installs the registry's manifest and
    /// makes sure a checkpoint for the current size is signed. Background tasks are
    /// started by [`VisibilityState::spawn_tasks`].
    pub fn open(config: VisibilityConfig) -> Result<Arc<Self>, String> {
        config
            .validate("visibility config")
            .map_err(|e| e.to_string())?;
        let key = KeyPair::load_or_create(&config.key_file, || {
            KeyPair::generate_did_web(&config.did, KeyAlgorithm::Ed25519)
                .map(|k| k.with_purpose("visibility checkpoints"))
        })
        .map_err(|e| e.to_string())?;
        if key.did() != config.did {
            return Err(format!(
                "key_file belongs to {}, not to the configured did {}",
                key.did(),
                config.did
            ));
        }
        let signing_key = key
            .ed25519_signing_key()
            .ok_or("the visibility key must be an Ed25519 key (checkpoints are Ed25519 notes)")?;
        let note_verifier =
            NoteVerifier::from_signing_key(&config.did, &signing_key).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("data_dir {}: {e}", config.data_dir.display()))?;
        let store =
            Store::open(&config.data_dir.join("visibility.sled")).map_err(|e| e.to_string())?;
        let latest = proofs::initial_checkpoint(&store, &config.did, &signing_key, &note_verifier)
            .map_err(|e| e.to_string())?;

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let (trust, membership): (Arc<dyn TrustSource>, Membership) = match &config.registry {
            Some(rc) => {
                let registry = Arc::new(
                    Registry::journaled_in(&store.db, rc.governance.clone(), config.dev_mode)
                        .map_err(|e| e.to_string())?,
                );
                if !rc.is_url() {
                    // A bad manifest on disk is logged: the service then admits nobody
                    // until a good one arrives.
                    match SignedManifest::load(std::path::Path::new(&rc.signed))
                        .and_then(|m| registry.install(&m))
                    {
                        Ok(outcome) => tracing::info!(?outcome, "federation manifest installed"),
                        Err(e) => tracing::warn!(error = %e, "federation manifest refused"),
                    }
                }
                registry.apply_to(&resolver);
                (registry.clone(), Membership::Registry(registry))
            }
            None => {
                let mut allow = HashMap::new();
                for (did, url) in &config.members {
                    let url =
                        reqwest::Url::parse(url).map_err(|e| format!("members {did}: {e}"))?;
                    allow.insert(did.clone(), url);
                }
                resolver.set_web_allow_map(allow);
                let trust = StaticTrust::new();
                for (kind, issuers) in &config.trust {
                    for issuer in issuers {
                        trust.add(*kind, issuer);
                    }
                }
                (
                    Arc::new(trust),
                    Membership::Static {
                        members: config.members.keys().cloned().collect(),
                        auditors: config.auditors.iter().cloned().collect(),
                    },
                )
            }
        };
        resolver.pin(key.did_document().map_err(|e| e.to_string())?);
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            Duration::from_secs(config.status_cache_ttl_secs),
            config.dev_mode,
        ));
        let verifier = Verifier::new(resolver, trust, status);
        let challenges = audit::Challenges::new(
            store.nonces.clone(),
            Duration::from_secs(config.challenge_ttl_secs),
        );
        let sessions = audit::Sessions::new(Duration::from_secs(config.session_ttl_secs));
        Ok(Arc::new(VisibilityState {
            config,
            key,
            signing_key,
            note_verifier,
            store,
            verifier,
            membership,
            writer: tokio::sync::Mutex::new(()),
            latest: RwLock::new(Arc::new(latest)),
            challenges,
            sessions,
        }))
    }

    /// Starts the background checkpointer and, with a registry, the manifest watcher.
    /// Both end when the state is dropped; callers may abort them earlier.
    pub fn spawn_tasks(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(proofs::checkpointer(
            Arc::downgrade(self),
            Duration::from_millis(self.config.checkpoint_interval_ms),
        ))];
        tasks.extend(bus::spawn(self));
        if let (Membership::Registry(registry), Some(rc)) =
            (&self.membership, &self.config.registry)
        {
            let source = if rc.is_url() {
                match reqwest::Url::parse(&rc.signed) {
                    Ok(url) => ManifestSource::Url(url),
                    Err(e) => {
                        tracing::error!(error = %e, "registry.signed is not a URL");
                        return tasks;
                    }
                }
            } else {
                ManifestSource::File(rc.signed.clone().into())
            };
            tasks.push(registry.spawn_watch(
                source,
                Duration::from_secs(rc.poll_secs),
                Some(self.verifier.resolver.clone()),
            ));
        }
        tasks
    }

    /// Whether `did` is a member organization of the federation.
    pub fn is_member(&self, did: &str) -> bool {
        match &self.membership {
            Membership::Static { members, .. } => members.contains(did),
            Membership::Registry(r) => r.member(did).is_some(),
        }
    }

    /// Whether `did` is an organization whose staff may audit.
    pub fn is_auditor_org(&self, did: &str) -> bool {
        match &self.membership {
            Membership::Static { auditors, .. } => auditors.contains(did),
            Membership::Registry(r) => r.member(did).is_some_and(|m| m.has_role(Role::Auditor)),
        }
    }
}

type AppState = State<Arc<VisibilityState>>;

pub fn router(state: Arc<VisibilityState>) -> Router {
    let limits = state.config.limits.clone();
    let router = Router::new()
        .route("/.well-known/did.json", get(did_document))
        .route("/v1/keys", get(inventory))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/batches", post(ingest::post_batch))
        .route("/v1/receipts", post(ingest::post_receipts))
        .route("/v1/checkpoint", get(proofs::get_checkpoint))
        .route("/v1/proofs/inclusion", get(proofs::inclusion))
        .route("/v1/proofs/consistency", get(proofs::consistency))
        .route("/v1/challenges", post(audit::challenge))
        .route("/v1/audit/sessions", post(audit::open_session))
        .route("/v1/audit/events", get(audit::events))
        .route("/v1/audit/export", get(audit::export))
        .route("/v1/audit/reviews", get(audit::reviews))
        .route("/v1/audit/reviews/{event_id}/resolve", post(audit::resolve))
        .route("/v1/audit/reviews/{event_id}/notes", get(audit::notes))
        .route("/v1/patients/history", post(audit::patient_history))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        .fallback(service::http::problem_fallback)
        .with_state(state);
    service::http::common_layers(router, &limits)
}

async fn did_document(State(s): AppState) -> Result<Json<Value>, VisibilityError> {
    s.key
        .did_document()
        .map(Json)
        .map_err(|e| VisibilityError::Signing(e.to_string()))
}

async fn inventory(State(s): AppState) -> Json<Value> {
    Json(json!({
        "keys": [s.key.info()],
        "checkpointVerifierKey": s.note_verifier.vkey(),
    }))
}

/// Runs the service until `shutdown` resolves. Binding happens first so that a port of 0
/// works; the bound address is sent on `ready` once the service answers.
pub async fn run(
    config: VisibilityConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), String> {
    let listener = service::http::bind(&config.listen).map_err(|e| e.to_string())?;
    let listen = config.listen.clone();
    let limits = config.limits.clone();
    let state = VisibilityState::open(config)?;
    let tasks = state.spawn_tasks();
    let app = router(state.clone());
    let served = service::http::serve_on(listener, app, &listen, &limits, shutdown, ready)
        .await
        .map_err(|e| e.to_string());
    for task in tasks {
        task.abort();
        // An aborted task reports a cancellation; nothing else can come back.
        let _ = task.await;
    }
    // Whatever is still in memory reaches the disk before the database is closed.
    let flushed = state.store.db.flush_async().await.map(|_| ());
    drop(state);
    served?;
    flushed.map_err(|e| e.to_string())
}
