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
//! - `store`: the database (`<data_dir>/visibility.redb`, the `storage` crate: each write
//!   is on disk when it returns): the Merkle log, the indexes over it (rebuilt from the
//!   log when behind), the latest checkpoint, review notes.
//! - `ingest`: `POST /v1/batches`: signature, membership and custodian checks, exactly
//!   once appends; `POST /v1/receipts`: where already-logged events sit.
//! - [`merkle`]: the RFC 6962 Merkle tree in the database that holds the log.
//! - `bus`: the same batches read from NATS JetStream, when `[nats]` is configured.
//! - `proofs`: checkpoint signing (in the write of every append, and in the background),
//!   the checkpoint and proof endpoints.
//! - `audit`: challenges, auditor sessions, event queries and one leaf with its proof, the
//!   break-glass review queue and its decisions, and patients' history.
//! - `query`: the events' filters (checked once), cursors, and the walk over the log.
//! - `export`: the events as CSV, and signed evidence packages.
//! - [`evidence`]: the evidence package's format and its offline verification.
//! - `stats`: the figures behind the dashboard's charts.
//! - `dashboard`: the auditor web dashboard (`GET /dashboard`) and the patient's page
//!   (`/dashboard/patient`), static pages on the auditor and patient APIs.
//! - `error`: the module's error enum, mapped to problem+json once.

mod audit;
mod bus;
mod config;
mod dashboard;
mod error;
pub mod evidence;
mod export;
mod ingest;
pub mod merkle;
mod proofs;
mod query;
mod stats;
mod store;

pub use config::VisibilityConfig;
pub use error::{OpenError, RunError, VisibilityError};
pub use store::SCHEMA;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::{Json, Router};
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
use proofs::{Published, Signer};
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
    /// Signs checkpoints, inside the writes that append.
    signer: Signer,
    /// The verifier for this service's checkpoints, as peers build it from the DID document.
    note_verifier: NoteVerifier,
    store: Store,
    verifier: Verifier,
    membership: Membership,
    /// The checkpoint in force: replaced only by a larger one, once that is on disk.
    latest: RwLock<Arc<Published>>,
    challenges: audit::Challenges,
    sessions: audit::Sessions,
    /// This process's metrics (`/metrics`).
    metrics: service::metrics::PrometheusHandle,
    /// The MAC key of page cursors (`query`).
    cursor_key: [u8; 32],
    /// When this process last took a new checkpoint in force (Unix seconds).
    checkpoint_time: std::sync::atomic::AtomicI64,
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
        // An earlier fedgate's `visibility.sled` beside it is refused, naming it.
        let db = service::db::open_configured(
            &config.storage,
            &config.data_dir,
            store::DB_NAME,
            SCHEMA,
            service::db::VISIBILITY_CACHE_BYTES,
        )?;
        let store = Store::open(db)?;
        let signer = Signer::new(&config.did, signing_key);
        let cursor_key = signer.cursor_key();
        let latest = proofs::initial_checkpoint(&store, &signer, &note_verifier)?;

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let (trust, membership): (Arc<dyn TrustSource>, Membership) = match &config.registry {
            Some(rc) => {
                let registry = Arc::new(
                    service::db::journaled_registry(
                        &store.db,
                        rc.governance.clone(),
                        config.dev_mode,
                    )
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
            // Answered only here (sessions live in this process too): a restart makes the
            // outstanding challenges unknown, and the auditor's wallet asks again.
            audit::Challenges::random_key(),
        );
        let sessions = audit::Sessions::new(Duration::from_secs(config.session_ttl_secs));
        Ok(Arc::new(VisibilityState {
            config,
            key,
            signer,
            note_verifier,
            store,
            verifier,
            membership,
            latest: RwLock::new(Arc::new(latest)),
            challenges,
            sessions,
            metrics: service::metrics::recorder(),
            cursor_key,
            checkpoint_time: std::sync::atomic::AtomicI64::new(chrono::Utc::now().timestamp()),
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
        routes!(readyz),
        routes!(metrics_handler),
        routes!(ingest::post_batch),
        routes!(ingest::post_receipts),
        routes!(proofs::get_checkpoint),
        routes!(proofs::inclusion),
        routes!(proofs::consistency),
        routes!(audit::challenge),
        routes!(audit::open_session),
        routes!(audit::events),
        routes!(audit::leaf),
        routes!(audit::export),
        routes!(export::csv),
        routes!(export::evidence),
        routes!(stats::stats),
        routes!(audit::reviews),
        routes!(audit::review_decisions),
        routes!(audit::resolve),
        routes!(audit::notes),
        routes!(audit::patient_history),
        routes!(dashboard::page),
        routes!(dashboard::file),
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

/// Readiness: the database can be read and written (no failed commit stopped it).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{database}`", body = Object),
        (status = 503, description = "The database refuses writes", body = Object,
            content_type = "application/problem+json")))]
async fn readyz(State(s): AppState) -> axum::response::Response {
    service::db::readyz_response(&s.store.db)
}

/// Prometheus metrics: this process's appends (`fedgate_log_appended_total`), the size of
/// the checkpoint it serves and when it took it in force
/// (`fedgate_log_checkpoint_timestamp_seconds`), and its database's commits, pool and
/// write-lock waits (with PostgreSQL storage, how long this process waited for the
/// others' appends).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics (text exposition format 0.0.4)", body = String,
        content_type = "text/plain")))]
async fn metrics_handler(State(s): AppState) -> axum::response::Response {
    metrics::gauge!("fedgate_log_checkpoint_size").set(s.refreshed().size as f64);
    metrics::gauge!("fedgate_log_checkpoint_timestamp_seconds")
        .set(s.checkpoint_time.load(std::sync::atomic::Ordering::Relaxed) as f64);
    s.store.db.record_metrics();
    service::metrics::response(&s.metrics)
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
/// Background tasks are stopped before returning, whether serving ended well or not;
/// the database closes when the last handle on it is dropped (every write was on disk
/// when it returned).
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
    drop(state);
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::events::AccessEvent;
    use std::path::Path;

    const DID: &str = "did:web:visibility.test";
    const CUSTODIAN: &str = "did:web:hospital-a.test";
    /// Bounds every test that waits on the database: a hang fails instead of stalling.
    const BOUND: Duration = Duration::from_secs(60);

    fn config(dir: &Path) -> VisibilityConfig {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndid = \"{DID}\"\nkey_file = \"visibility.key.json\"\n\
             data_dir = \"data\"\ndev_mode = true\n"
        );
        let mut cfg = VisibilityConfig::from_toml(&text).unwrap();
        cfg.resolve_paths(dir);
        cfg.validate("visibility.toml").unwrap();
        cfg
    }

    fn event(i: usize) -> AccessEvent {
        AccessEvent {
            id: format!("01900000-0000-7000-8000-{i:012x}"),
            patient_ref: Some(format!("ref-{}", i % 4)),
            ..test_support::allowed_event(CUSTODIAN)
        }
    }

    #[tokio::test]
    async fn a_restart_keeps_the_log_its_size_root_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let events: Vec<AccessEvent> = (0..25).map(event).collect();
        let (size, root, note) = tokio::time::timeout(BOUND, async {
            let state = VisibilityState::open(cfg.clone()).unwrap();
            ingest::append_events(&state, CUSTODIAN, events[..10].to_vec())
                .await
                .unwrap();
            let last = ingest::append_events(&state, CUSTODIAN, events[10..].to_vec())
                .await
                .unwrap();
            assert_eq!(last.tree_size, 25);
            let size = state.store.size().unwrap();
            (size, state.store.log.root(size).unwrap(), last.checkpoint)
        })
        .await
        .expect("appending hung");
        assert!(dir.path().join("data").join("visibility.redb").is_file());
        // The state (and with it the last database handle) is gone: the file reopens.
        let state = VisibilityState::open(cfg).unwrap();
        assert_eq!(state.store.size().unwrap(), size);
        assert_eq!(state.store.log.root(size).unwrap(), root);
        assert_eq!(state.latest().note, note, "the same checkpoint is served");
        // Every event is still known, once.
        let again = tokio::time::timeout(
            BOUND,
            ingest::append_events(&state, CUSTODIAN, events.clone()),
        )
        .await
        .expect("appending hung")
        .unwrap();
        assert!(again.receipts.iter().all(|r| r.duplicate));
        assert_eq!(again.tree_size, 25);
        assert_eq!(state.store.size().unwrap(), 25);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_overlapping_batches_store_each_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = VisibilityState::open(config(dir.path())).unwrap();
        let pool: Vec<AccessEvent> = (0..60).map(event).collect();
        // 16 batches of 15 events, each overlapping its neighbours, some in reverse.
        let run = async {
            let tasks: Vec<_> = (0..16usize)
                .map(|t| {
                    let state = state.clone();
                    let mut batch: Vec<AccessEvent> = pool[t * 3..t * 3 + 15].to_vec();
                    if t % 2 == 1 {
                        batch.reverse();
                        // The same event twice in one batch is one leaf too.
                        batch.push(batch[0].clone());
                    }
                    tokio::spawn(async move {
                        ingest::append_events(&state, CUSTODIAN, batch)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.unwrap());
            }
            answers
        };
        let answers = tokio::time::timeout(BOUND, run)
            .await
            .expect("concurrent ingestion hung");
        let used = 15 * 3 + 15;
        assert_eq!(state.store.size().unwrap(), used as u64);
        let mut leaf_of: HashMap<String, u64> = HashMap::new();
        for answer in &answers {
            for r in &answer.receipts {
                assert!(
                    r.leaf_index < answer.tree_size,
                    "the checkpoint handed out covers the receipt"
                );
                let first = *leaf_of.entry(r.event_id.clone()).or_insert(r.leaf_index);
                assert_eq!(first, r.leaf_index, "one event, one leaf");
            }
        }
        assert_eq!(leaf_of.len(), used);
        let mut leaves: Vec<u64> = leaf_of.values().copied().collect();
        leaves.sort_unstable();
        assert_eq!(leaves, (0..used as u64).collect::<Vec<_>>());
        for (id, index) in &leaf_of {
            match state.store.entry(*index).unwrap() {
                LogEntry::Access { event } => assert_eq!(&event.id, id),
                other => panic!("leaf {index} is {other:?}"),
            }
        }
        assert_eq!(state.latest().size, used as u64);
    }

    #[tokio::test]
    async fn an_earlier_sled_database_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let sled_dir = dir.path().join("data").join("visibility.sled");
        std::fs::create_dir_all(&sled_dir).unwrap();
        std::fs::write(sled_dir.join("db"), b"not looked at").unwrap();
        let ran = tokio::time::timeout(BOUND, run(cfg, std::future::pending(), None))
            .await
            .expect("the refused start hung");
        let e = ran.expect_err("the service started beside a sled database");
        assert!(matches!(e, RunError::Open(OpenError::Database(_))), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains(&sled_dir.display().to_string()),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        assert!(!dir.path().join("data").join("visibility.redb").exists());
        assert!(
            sled_dir.join("db").is_file(),
            "the old database is left alone"
        );
    }
}
