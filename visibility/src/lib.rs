//! The federation's visibility service: an append-only RFC 6962 log of every access
//! decision, with signed checkpoints, proofs, an auditor API and patients' own history.
//!
//! Gateways post signed batches of [`AccessEvent`]s; each event is appended exactly once
//! and answered with a receipt (its leaf index) and a checkpoint signed by the service's
//! did:web key, so a gateway can prove later that its events are in the log and anyone can
//! check that the log only ever grew. Events carry no PHI; nothing here logs their content.
//!
//! Map of the modules:
//! - `config`: `visibility.toml`, validated at load.
//! - `store`: the sled database: the Merkle log, the indexes over it (rebuilt from the
//!   log when behind), the latest checkpoint, review notes.
//! - `ingest`: `POST /v1/batches`: signature, membership and custodian checks, exactly
//!   once appends; `POST /v1/receipts`: where already-logged events sit.
//! - [`merkle`]: the RFC 6962 Merkle tree in sled that holds the log.
//! - `bus`: the same batches read from NATS JetStream, when `[nats]` is configured.
//! - `proofs`: checkpoint signing (after every append and in the background), the
//!   checkpoint and proof endpoints.
//! - `audit`: challenges, auditor sessions, event queries, the break-glass review queue,
//!   and patients' history.
//! - `dashboard`: the auditor web dashboard (`GET /dashboard`), a static page on the
//!   auditor API.
//! - `error`: the module's error enum, mapped to problem+json once.

mod audit;
mod bus;
mod config;
mod dashboard;
mod error;
mod ingest;
pub mod merkle;
mod proofs;
mod store;

pub use config::VisibilityConfig;
pub use error::{OpenError, RunError, VisibilityError};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use utoipa_axum::routes;

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
    config: VisibilityConfig,
    key: KeyPair,
    signing_key: SigningKey,
    /// The verifier for this service's checkpoints, as peers build it from the DID document.
    note_verifier: NoteVerifier,
    store: Store,
    verifier: Verifier,
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
    /// started by `VisibilityState::spawn_tasks`.
    pub fn open(config: VisibilityConfig) -> Result<Arc<Self>, OpenError> {
        config.validate("visibility config")?;
        let key = KeyPair::load_or_create(&config.key_file, || {
            KeyPair::generate_did_web(&config.did, KeyAlgorithm::Ed25519)
                .map(|k| k.with_purpose("visibility checkpoints"))
        })
        .map_err(OpenError::Key)?;
        if key.did() != config.did {
            return Err(OpenError::KeyMismatch {
                found: key.did().to_string(),
                configured: config.did.clone(),
            });
        }
        let signing_key = key.ed25519_signing_key().ok_or(OpenError::NotEd25519)?;
        let note_verifier = NoteVerifier::from_signing_key(&config.did, &signing_key)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = Store::open(&config.data_dir.join("visibility.sled"))?;
        let latest = proofs::initial_checkpoint(&store, &config.did, &signing_key, &note_verifier)?;

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let (trust, membership): (Arc<dyn TrustSource>, Membership) = match &config.registry {
            Some(rc) => {
                let registry = Arc::new(
                    Registry::journaled_in(&store.db, rc.governance.clone(), config.dev_mode)
                        .map_err(|e| OpenError::Registry(e.to_string()))?,
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
                    let url = reqwest::Url::parse(url).map_err(|source| OpenError::Member {
                        did: did.clone(),
                        source,
                    })?;
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
        resolver.pin(key.did_document().map_err(OpenError::DidDocument)?);
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
    fn spawn_tasks(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
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
    fn is_member(&self, did: &str) -> bool {
        match &self.membership {
            Membership::Static { members, .. } => members.contains(did),
            Membership::Registry(r) => r.member(did).is_some(),
        }
    }

    /// Whether `did` is an organization whose staff may audit.
    fn is_auditor_org(&self, did: &str) -> bool {
        match &self.membership {
            Membership::Static { auditors, .. } => auditors.contains(did),
            Membership::Registry(r) => r.member(did).is_some_and(|m| m.has_role(Role::Auditor)),
        }
    }
}

type AppState = State<Arc<VisibilityState>>;

/// Every route of the visibility service, each with its OpenAPI operation: the router and
/// the document at `/openapi.json` are both built from this list.
pub fn routes() -> service::openapi::Routes<Arc<VisibilityState>> {
    vec![
        routes!(did_document),
        routes!(inventory),
        routes!(healthz),
        routes!(ingest::post_batch),
        routes!(ingest::post_receipts),
        routes!(proofs::get_checkpoint),
        routes!(proofs::inclusion),
        routes!(proofs::consistency),
        routes!(audit::challenge),
        routes!(audit::open_session),
        routes!(audit::events),
        routes!(audit::export),
        routes!(audit::reviews),
        routes!(audit::resolve),
        routes!(audit::notes),
        routes!(audit::patient_history),
        routes!(dashboard::page),
        routes!(dashboard::script),
        routes!(dashboard::style),
    ]
}

/// The security scheme of the auditor endpoints: the bearer token of an auditor session
/// (`POST /v1/audit/sessions`).
const AUDITOR_SESSION: &str = "auditorSession";

fn base_document() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let mut doc = service::openapi::base(
        "fedgate visibility",
        env!("CARGO_PKG_VERSION"),
        "The federation's visibility service: an append-only RFC 6962 log of every access \
         decision, with signed checkpoints and proofs, the auditor API and dashboard, and \
         patients' own history. Errors are RFC 9457 problem+json.",
    );
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            AUDITOR_SESSION,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    doc
}

pub fn router(state: Arc<VisibilityState>) -> Router {
    let limits = state.config.limits.clone();
    let (router, _) = service::openapi::document(base_document(), routes());
    let router = router
        .fallback(service::http::problem_fallback)
        .with_state(state);
    service::http::common_layers(router, &limits)
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// This service's DID document (did:web).
#[utoipa::path(get, path = "/.well-known/did.json", tag = "identity",
    responses((status = 200, description = "DID document", body = Object)))]
async fn did_document(State(s): AppState) -> Result<Json<Value>, VisibilityError> {
    s.key
        .did_document()
        .map(Json)
        .map_err(|e| VisibilityError::Signing(e.to_string()))
}

/// This service's keys, and the checkpoint verifier key (C2SP note verifier).
#[utoipa::path(get, path = "/v1/keys", tag = "identity",
    responses((status = 200, description = "`{keys, checkpointVerifierKey}`", body = Object)))]
async fn inventory(State(s): AppState) -> Json<Value> {
    Json(json!({
        "keys": [s.key.info()],
        "checkpointVerifierKey": s.note_verifier.vkey(),
    }))
}

/// Runs the service until `shutdown` resolves. Binding happens first (see
/// [`service::start`]); the bound address is sent on `ready` once the service answers.
/// Background tasks are stopped and the database flushed before returning, whether
/// serving ended well or not.
pub async fn run(
    config: VisibilityConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), RunError> {
    let bound = service::start::Bound::bind(&config.listen, None)?;
    let limits = config.limits.clone();
    let state = VisibilityState::open(config)?;
    let tasks = state.spawn_tasks();
    let served = bound
        .serve(router(state.clone()), &limits, shutdown, ready)
        .await;
    for task in tasks {
        task.abort();
        // An aborted task reports a cancellation; nothing else can come back.
        let _ = task.await;
    }
    // Whatever is still in memory reaches the disk before the database is closed.
    let flushed = state.store.db.flush_async().await;
    drop(state);
    served?;
    flushed.map_err(RunError::Flush)?;
    Ok(())
}
