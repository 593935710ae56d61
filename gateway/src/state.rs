//! The gateway's shared state: configuration, keys, verifier, policy, record source,
//! consents, vault, outbox and metrics, built once at start and shared by every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use federation::did::DidResolver;
use federation::keys::KeyPair;
use federation::registry::{ManifestSource, Registry, SignedManifest};
use federation::status::StatusCache;
use federation::trust::{StaticTrust, TrustSource};
use federation::verify::Verifier;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{GatewayConfig, RecordsConfig};
use crate::consents::ConsentStore;
use crate::error::StartError;
use crate::outbox::Outbox;
use crate::policy::{ContractInput, PolicyHolder};
use crate::records::RecordSource;
use crate::vault::Vault;
use service::nonce::Nonces;

pub struct GatewayState {
    pub config: GatewayConfig,
    pub key: KeyPair,
    pub verifier: Verifier,
    pub nonces: Nonces,
    pub outbox: Outbox,
    pub consents: ConsentStore,
    pub policy: Arc<PolicyHolder>,
    pub records: RecordSource,
    /// Shared with tokenization on the blocking pool.
    pub vault: Arc<Vault>,
    pub secret: [u8; 32],
    pub db: sled::Db,
    /// The admin endpoints' token; without one they refuse every call.
    pub(crate) admin: Option<service::admin::AdminToken>,
    trust_mode: TrustMode,
    pub(crate) metrics: PrometheusHandle,
}

/// Where trust, the allow-map and contracts come from.
enum TrustMode {
    /// From this gateway's configuration (a single organization trying fedgate out).
    Static { contracts: Vec<Value> },
    /// From the federation's signed manifest, followed live.
    Registry(Arc<Registry>),
}

impl GatewayState {
    /// Builds the state: keys, storage, policies, record source, verifier.
    pub async fn new(
        config: GatewayConfig,
        public_url: reqwest::Url,
        metrics: PrometheusHandle,
    ) -> Result<Arc<Self>, StartError> {
        let admin = match &config.admin_token_file {
            Some(path) => Some(
                service::admin::AdminToken::load(path)
                    .map_err(|e| StartError::AdminToken(e.to_string()))?,
            ),
            None => None,
        };
        let key = KeyPair::load_or_create(&config.key_file, || {
            KeyPair::generate_did_web(&config.did, Default::default())
                .map(|k| k.with_purpose("gateway organization key"))
        })
        .map_err(StartError::Key)?;
        if key.did() != config.did {
            return Err(StartError::WrongKey {
                found: key.did().to_string(),
                configured: config.did.clone(),
            });
        }
        let secret = Vault::key_from_file(&config.secret_file).map_err(StartError::Secret)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let db = service::db::open(&config.data_dir.join("gateway.sled"))?;
        let nonces = Nonces::new(
            db.open_tree("nonces")?,
            Duration::from_secs(config.challenge_ttl_secs),
        );
        let outbox = Outbox::start(&db, config.outbox_max_events)?;
        let consents = ConsentStore::open(&db)?;
        let vault = Arc::new(Vault::open(db.open_tree("vault")?, secret));
        let records = match &config.records {
            RecordsConfig::Embedded => RecordSource::embedded(&config.data_dir.join("records"))?,
            RecordsConfig::Fhir { url } => RecordSource::fhir_server(url, config.dev_mode)?,
        };
        let policy = Arc::new(PolicyHolder::new(&config.policies));

        let resolver = Arc::new(DidResolver::new(config.dev_mode));
        let mut allow = HashMap::new();
        for (did, url) in &config.did_web {
            let url = reqwest::Url::parse(url).map_err(|e| StartError::Url {
                setting: format!("did_web {did}"),
                reason: e.to_string(),
            })?;
            allow.insert(did.clone(), url);
        }
        allow.insert(config.did.clone(), public_url);
        resolver.set_web_allow_map(allow);
        resolver.pin(key.did_document().map_err(StartError::DidDocument)?);
        let (trust, trust_mode): (Arc<dyn TrustSource>, TrustMode) = match &config.registry {
            Some(rc) => {
                let registry = Arc::new(Registry::journaled_in(
                    &db,
                    rc.governance.clone(),
                    config.dev_mode,
                )?);
                let source = if rc.is_url() {
                    ManifestSource::Url(reqwest::Url::parse(&rc.signed).map_err(|e| {
                        StartError::Url {
                            setting: "registry.signed".into(),
                            reason: e.to_string(),
                        }
                    })?)
                } else {
                    let path = std::path::PathBuf::from(&rc.signed);
                    // Start with the manifest in force when it is on disk; a bad one is
                    // logged and the gateway trusts nobody until a good one arrives.
                    match SignedManifest::load(&path).and_then(|m| registry.install(&m)) {
                        Ok(outcome) => tracing::info!(?outcome, "federation manifest installed"),
                        Err(e) => tracing::warn!(error = %e, "federation manifest refused"),
                    }
                    ManifestSource::File(path)
                };
                registry.apply_to(&resolver);
                registry.spawn_watch(
                    source,
                    Duration::from_secs(rc.poll_secs),
                    Some(resolver.clone()),
                );
                (registry.clone(), TrustMode::Registry(registry))
            }
            None => {
                let trust = StaticTrust::new();
                for (kind, issuers) in &config.trust {
                    for issuer in issuers {
                        trust.add(*kind, issuer);
                    }
                }
                (
                    Arc::new(trust),
                    TrustMode::Static {
                        contracts: config.contracts.clone(),
                    },
                )
            }
        };
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            Duration::from_secs(config.status_cache_ttl_secs),
            config.dev_mode,
        ));
        for url in &config.status_push {
            if let Ok(url) = reqwest::Url::parse(url) {
                status.spawn_push_listener(url);
            }
        }
        let verifier = Verifier::new(resolver, trust, status);
        Ok(Arc::new(GatewayState {
            trust_mode,
            config,
            key,
            verifier,
            nonces,
            outbox,
            consents,
            policy,
            records,
            vault,
            secret,
            db,
            admin,
            metrics,
        }))
    }

    /// The signed federation manifest in force, when the gateway follows one.
    pub fn registry(&self) -> Option<Arc<Registry>> {
        match &self.trust_mode {
            TrustMode::Registry(r) => Some(r.clone()),
            TrustMode::Static { .. } => None,
        }
    }

    /// Registry contracts from custodian to requester that have not expired.
    pub fn contracts_between(&self, custodian: &str, requester: &str) -> Vec<ContractInput> {
        let now = chrono::Utc::now();
        let contracts = match &self.trust_mode {
            TrustMode::Registry(r) => {
                return r
                    .contracts_between(custodian, requester)
                    .iter()
                    .map(ContractInput::from)
                    .collect()
            }
            TrustMode::Static { contracts } => contracts,
        };
        contracts
            .iter()
            .filter(|c| c["custodian"] == custodian && c["requester"] == requester)
            .filter(|c| {
                c["expires"]
                    .as_str()
                    .and_then(federation::time::parse)
                    .is_none_or(|e| e > now)
            })
            // A contract only grants: one that does not read as a contract grants nothing.
            .filter_map(|c| match ContractInput::deserialize(c) {
                Ok(contract) => Some(contract),
                Err(_) => {
                    tracing::warn!(
                        "a [[contracts]] entry of the configuration is not a contract; ignored"
                    );
                    None
                }
            })
            .collect()
    }

    /// The pseudonym of a patient in access events: keyed by this custodian's secret, so
    /// only the custodian can map it back (by recomputing it over its own patients).
    pub fn patient_ref(&self, patient_id: &str) -> String {
        crate::tokenize::keyed_pseudonym(&self.secret, "patient-ref", patient_id)
    }
}
