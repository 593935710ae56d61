//! The registry a service holds: the manifest in force, installed only forward (no
//! rollback, no equivocation, governance changes adopted only under the governance already
//! held), journaled on disk, refreshed from its source, and read as the trust source of the
//! verification pipeline. Apart from the signed manifest, which any tool can verify without
//! holding anything.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use chrono::Utc;

use crate::credentials::CredentialKind;
use crate::did::DidResolver;
use crate::registry::manifest::{Contract, Governance, Manifest, Member, Role};
use crate::registry::signed::{io_error, SignedManifest};
use crate::registry::{RegistryError, MAX_MANIFEST_BYTES};
use crate::trust::TrustSource;
use crate::verify::Check;

/// What [`Registry::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    Installed {
        version: u64,
    },
    /// The same manifest is already in force.
    Unchanged {
        version: u64,
    },
}

/// Where a watcher reads the signed manifest from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    File(PathBuf),
    Url(reqwest::Url),
}

impl fmt::Display for ManifestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestSource::File(p) => write!(f, "{}", p.display()),
            ManifestSource::Url(u) => write!(f, "{u}"),
        }
    }
}

struct State {
    /// The governance the next manifest must satisfy: the configured one until a manifest
    /// is installed, then the one that manifest names.
    governance: Governance,
    manifest: Option<Arc<Manifest>>,
}

/// The manifest in force at a service, swapped atomically when a newer one verifies.
pub struct Registry {
    state: RwLock<State>,
    /// Serializes installs, so the governance a manifest was verified under is still the one
    /// in force when it is swapped in.
    install_lock: Mutex<()>,
    dev_mode: bool,
    /// Every manifest installed (version → signed JSON), replayed at start: a restart
    /// keeps the governance adopted since the configuration was written, and the version
    /// floor that refuses rollbacks.
    journal: Option<Box<dyn Journal>>,
}

/// Where a service keeps the manifests it installed, across restarts (its database).
pub trait Journal: Send + Sync {
    /// Every entry kept, in version order.
    fn entries(&self) -> Result<Vec<Vec<u8>>, JournalError>;
    /// Keeps `entry` as `version`, on disk before it returns.
    fn keep(&self, version: u64, entry: &[u8]) -> Result<(), JournalError>;
}

/// A journal's storage failed; the message names what.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub Box<dyn std::error::Error + Send + Sync>);

impl Registry {
    /// A registry trusting `governance` (from the service's configuration). `dev_mode`
    /// accepts manifests with plain http URLs to loopback hosts.
    pub fn new(governance: Governance, dev_mode: bool) -> Self {
        Registry {
            state: RwLock::new(State {
                governance,
                manifest: None,
            }),
            install_lock: Mutex::new(()),
            dev_mode,
            journal: None,
        }
    }

    /// [`Registry::new`] that keeps every installed manifest in `journal` and first
    /// replays what it holds, in version order, each verified under the governance in
    /// force at its turn (starting from the configured one): nothing in the journal is
    /// trusted for being there. Replay stops at the first entry that does not verify.
    pub fn with_journal(
        governance: Governance,
        dev_mode: bool,
        journal: Box<dyn Journal>,
    ) -> Result<Self, RegistryError> {
        let registry = Registry::new(governance, dev_mode);
        let mut replayed = 0u32;
        let entries = journal
            .entries()
            .map_err(|e| RegistryError::JournalRead(e.to_string()))?;
        for bytes in entries {
            // Read as a fetched manifest is: strict JSON, size-limited.
            let verdict =
                SignedManifest::from_json(&bytes).and_then(|signed| registry.install(&signed));
            match verdict {
                Ok(_) => replayed += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "a journaled federation manifest was refused; replay stops there");
                    break;
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                manifests = replayed,
                "federation manifests replayed from the journal"
            );
        }
        Ok(Registry {
            journal: Some(journal),
            ..registry
        })
    }

    /// The governance the next manifest must satisfy.
    pub fn governance(&self) -> Option<Governance> {
        self.state.read().ok().map(|s| s.governance.clone())
    }

    /// The manifest in force, if any.
    pub fn current(&self) -> Option<Arc<Manifest>> {
        self.state.read().ok().and_then(|s| s.manifest.clone())
    }

    /// Verifies `signed` under the governance held and puts it in force if it is newer.
    /// On any error the manifest in force stays.
    pub fn install(&self, signed: &SignedManifest) -> Result<InstallOutcome, RegistryError> {
        let _serial = self
            .install_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (governance, held) = {
            let state = self.state.read().map_err(|_| RegistryError::Poisoned)?;
            (state.governance.clone(), state.manifest.clone())
        };
        let manifest = signed.verify_detailed(&governance, self.dev_mode)?.manifest;
        if let Some(held) = &held {
            if manifest.version < held.version {
                return Err(RegistryError::Rollback {
                    held: held.version,
                    offered: manifest.version,
                });
            }
            if manifest.version == held.version {
                return if manifest.canonical_bytes()? == held.canonical_bytes()? {
                    Ok(InstallOutcome::Unchanged {
                        version: held.version,
                    })
                } else {
                    Err(RegistryError::Equivocation {
                        version: held.version,
                    })
                };
            }
        }
        let version = manifest.version;
        // Journaled before it is in force: a manifest acted on is one a restart replays.
        if let Some(journal) = &self.journal {
            let bytes =
                serde_json::to_vec(signed).map_err(|e| RegistryError::Journal(e.to_string()))?;
            journal
                .keep(version, &bytes)
                .map_err(|e| RegistryError::Journal(e.to_string()))?;
        }
        let mut state = self.state.write().map_err(|_| RegistryError::Poisoned)?;
        state.governance = manifest.governance.clone();
        state.manifest = Some(Arc::new(manifest));
        Ok(InstallOutcome::Installed { version })
    }

    pub fn member(&self, did: &str) -> Option<Member> {
        self.current()?
            .members
            .iter()
            .find(|m| m.did == did)
            .cloned()
    }

    pub fn members_with_role(&self, role: Role) -> Vec<Member> {
        self.current()
            .map(|m| {
                m.members
                    .iter()
                    .filter(|m| m.has_role(role))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The unexpired contracts under which `custodian` shares with `requester`.
    pub fn contracts_between(&self, custodian: &str, requester: &str) -> Vec<Contract> {
        let now = Utc::now();
        self.current()
            .map(|m| {
                m.contracts
                    .iter()
                    .filter(|c| c.custodian == custodian && c.requester == requester)
                    .filter(|c| !c.is_expired_at(now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Member DID → base URL of its DID document; empty without a manifest.
    pub fn web_allow_map(&self) -> HashMap<String, reqwest::Url> {
        let Some(manifest) = self.current() else {
            return HashMap::new();
        };
        manifest
            .members
            .iter()
            .filter_map(|m| {
                let mut url = reqwest::Url::parse(&m.base_url).ok()?;
                // Url::join drops the last path segment unless the base ends with '/'.
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                Some((m.did.clone(), url))
            })
            .collect()
    }

    /// Replaces the resolver's did:web allow-map with the members of the manifest in force,
    /// so that no other did:web is ever fetched. Without a manifest the resolver is left as
    /// configured and `false` is returned.
    pub fn apply_to(&self, resolver: &DidResolver) -> bool {
        if self.current().is_none() {
            return false;
        }
        resolver.set_web_allow_map(self.web_allow_map());
        true
    }

    /// Polls `source` every `interval`, installs newer manifests and, after each install,
    /// applies the allow-map to `resolver`. Refusals are logged and the manifest in force
    /// stays. The task ends when the registry is dropped.
    pub fn spawn_watch(
        self: &Arc<Self>,
        source: ManifestSource,
        interval: Duration,
        resolver: Option<Arc<DidResolver>>,
    ) -> tokio::task::JoinHandle<()> {
        let registry = Arc::downgrade(self);
        tokio::spawn(watch(registry, source, interval, resolver))
    }
}

async fn watch(
    registry: Weak<Registry>,
    source: ManifestSource,
    interval: Duration,
    resolver: Option<Arc<DidResolver>>,
) {
    let client = match &source {
        ManifestSource::Url(_) => Some(crate::client::http_client()),
        ManifestSource::File(_) => None,
    };
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The same bytes get the same verdict: skip them rather than verify them again.
    let mut last_digest: Option<Vec<u8>> = None;
    let mut last_error: Option<String> = None;
    if let (Some(r), Some(resolver)) = (registry.upgrade(), &resolver) {
        r.apply_to(resolver);
    }
    loop {
        ticker.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        let fetched = match &source {
            ManifestSource::File(path) => read_file(path).await,
            ManifestSource::Url(url) => match &client {
                Some(client) => fetch_url(client, url, registry.dev_mode).await,
                None => Err(RegistryError::Fetch("no HTTP client".into())),
            },
        };
        let result = fetched.and_then(|bytes| {
            let digest = {
                use sha2::{Digest, Sha256};
                Sha256::digest(&bytes).to_vec()
            };
            if last_digest.as_ref() == Some(&digest) {
                return Ok(None);
            }
            last_digest = Some(digest);
            registry
                .install(&SignedManifest::from_json(&bytes)?)
                .map(Some)
        });
        match result {
            Ok(Some(InstallOutcome::Installed { version })) => {
                last_error = None;
                tracing::info!(%source, version, "federation manifest installed");
                if let Some(resolver) = &resolver {
                    registry.apply_to(resolver);
                }
            }
            Ok(_) => last_error = None,
            Err(err) => {
                let message = err.to_string();
                // Logged once per distinct refusal, not on every poll.
                if last_error.as_deref() != Some(message.as_str()) {
                    // The check is named as for a refused credential (`format` for
                    // bytes that are not strict JSON, `proof` for a bad signature).
                    let check = err.check().map_or("none", Check::as_str);
                    tracing::warn!(%source, check, error = %message, "federation manifest refused");
                    last_error = Some(message);
                }
            }
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, RegistryError> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| io_error(path, e))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(RegistryError::TooLarge);
    }
    Ok(bytes)
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &reqwest::Url,
    dev_mode: bool,
) -> Result<Vec<u8>, RegistryError> {
    crate::client::loopback_only_http(url, dev_mode)
        .map_err(|e| RegistryError::Fetch(e.to_string()))?;
    let fetch = |e: reqwest::Error| RegistryError::Fetch(e.without_url().to_string());
    let mut resp = client.get(url.clone()).send().await.map_err(fetch)?;
    if !resp.status().is_success() {
        return Err(RegistryError::Fetch(format!("HTTP {}", resp.status())));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
    {
        return Err(RegistryError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(fetch)? {
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl TrustSource for Registry {
    fn is_trusted(&self, kind: CredentialKind, issuer: &str) -> bool {
        // No manifest, or an unreadable one, trusts nobody (fail closed).
        self.current().is_some_and(|m| {
            m.trusted_issuers
                .get(&kind)
                .is_some_and(|list| list.iter().any(|d| d == issuer))
        })
    }
}
