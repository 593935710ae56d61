//! `gateway.toml`: one file, serde defaults, validated at load with a message naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use federation::credentials::CredentialKind;
use serde::{Deserialize, Serialize};
use service::http::{HttpLimits, ListenConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(flatten)]
    pub listen: ListenConfig,
    /// The organization's did:web (the custodian and the presentations' domain).
    pub did: String,
    /// Where this gateway is reachable; defaults to `http://<bound address>/` on loopback.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The organization's key (created 0600 on first start if missing).
    pub key_file: PathBuf,
    /// 32-byte secret for pseudonyms and the token vault (created 0600 if missing).
    pub secret_file: PathBuf,
    /// Embedded storage (nonces, outbox, consents, vault, and the embedded record store).
    pub data_dir: PathBuf,
    /// Where that state is kept: the embedded file in `data_dir` (the default), or a
    /// PostgreSQL schema that every replica of this gateway shares.
    #[serde(default)]
    pub storage: service::db::StorageConfig,
    /// Folder of Rego policies.
    pub policies: PathBuf,
    /// Bearer token (0600, at least 16 characters) for the admin endpoints (patient
    /// links). Without it those endpoints refuse every call; there is no default.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub dev_mode: bool,
    #[serde(default = "default_challenge_ttl")]
    pub challenge_ttl_secs: u64,
    #[serde(default = "default_outbox_max")]
    pub outbox_max_events: usize,
    #[serde(default)]
    pub records: RecordsConfig,
    #[serde(default)]
    pub custodian: CustodianSettings,
    /// Differential privacy of research aggregates: budgets, age bands, value bounds.
    #[serde(default)]
    pub research: ResearchSettings,
    /// The federation's signed manifest: trusted issuers, members (the did:web allow-map)
    /// and contracts. When set, `trust`, `did_web` and `contracts` below are not used.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// Issuers trusted per type, when no signed registry is configured.
    #[serde(default)]
    pub trust: BTreeMap<CredentialKind, Vec<String>>,
    /// Issuers trusted per other credential type name, for the VC API verify endpoints
    /// only (access decisions take the three types alone), when no signed registry is
    /// configured. Without an entry, such a credential is verified without an
    /// issuer-trust check.
    #[serde(default)]
    pub trust_types: BTreeMap<String, Vec<String>>,
    /// did:web allow-map (DID → base URL) when no signed registry is configured.
    #[serde(default)]
    pub did_web: BTreeMap<String, String>,
    /// did:key issuers' registered origins (DID → base URL): their documents are decoded
    /// locally, and a credential's status list is fetched only from this origin.
    #[serde(default)]
    pub status_origins: BTreeMap<String, String>,
    /// Contexts, schemas and related resources bundled for the VC API verify endpoints
    /// (credentials of types beyond the three).
    #[serde(default)]
    pub bundle: service::config::BundleConfig,
    /// Data-sharing contracts when no signed registry is configured.
    #[serde(default)]
    pub contracts: Vec<serde_json::Value>,
    /// The federation's visibility log; without it events stay in the outbox.
    #[serde(default)]
    pub visibility: Option<crate::shipper::VisibilityConfig>,
    /// Issuers' revocation event streams to subscribe to.
    #[serde(default)]
    pub status_push: Vec<String>,
    #[serde(default = "default_status_ttl")]
    pub status_cache_ttl_secs: u64,
    #[serde(default)]
    pub limits: HttpLimits,
    /// Wall-clock limit of one policy decision, in milliseconds (1 to 10,000): a policy
    /// that runs longer is a deny. The default (50) suits a dedicated machine; a shared or
    /// starved one may need more.
    #[serde(default = "default_policy_time_limit")]
    pub policy_time_limit_ms: u64,
    /// Policy decisions remembered by input (0 to 1,000,000; 0 turns the cache off). A
    /// decision is reused only for the same domain and byte-identical input, decision time
    /// included (whole seconds), and never after a policy reload.
    #[serde(default = "default_policy_decision_cache")]
    pub policy_decision_cache_entries: usize,
    /// Megabytes (of stored JSON, 0 to 4,096; 0 turns it off) of the embedded store's
    /// records kept parsed for the next request about the same patient and data classes.
    /// An import makes every kept record stale at once; records larger than half of it
    /// are never kept. The parsed form takes a few times the stored size (8 MB by
    /// default).
    #[serde(default = "default_records_cache_mb")]
    pub records_cache_mb: usize,
    /// Megabytes (0 to 4,096; 0 turns it off) of tokenized pages kept for the next
    /// request that would make the same page: the same patient, data classes, page and
    /// obligations, recipient organization and domain, on the same day, from the embedded
    /// store's record as it is (an import makes every kept page stale). Each request is
    /// still verified, decided and recorded; a kept page spares the record's fetch and its
    /// tokenization (8 MB by default).
    #[serde(default = "default_answers_cache_mb")]
    pub answers_cache_mb: usize,
    /// What makes policy decisions: `"vm"` (default; each domain's decision rule compiled
    /// for regorus's VM, several times faster) or `"interpreter"` (regorus's interpreter,
    /// for a bundle written for it; see policies/README.md, "Fail closed under the VM").
    #[serde(default)]
    pub policy_engine: crate::policy::EngineKind,
}

// One value per gateway, read once at start: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "lowercase")]
pub enum RecordsConfig {
    /// The embedded FHIR store, the file `data_dir/records` (`fedgate records import`).
    #[default]
    Embedded,
    /// The organization's own FHIR R4 server.
    Fhir {
        url: String,
        /// `[records.auth]`: SMART Backend Services access tokens.
        #[serde(default)]
        auth: Option<crate::records::smart::SmartSettings>,
        /// Mutual TLS: the client certificate chain (PEM)...
        #[serde(default)]
        client_cert: Option<PathBuf>,
        /// ...and its private key (PEM, mode 0600).
        #[serde(default)]
        client_key: Option<PathBuf>,
        /// `_count` of searches (the server may page smaller).
        #[serde(default = "default_page_size")]
        page_size: usize,
        /// Use Patient `$everything` where the server's CapabilityStatement declares it;
        /// `false` reads by type searches only.
        #[serde(default = "default_true")]
        everything: bool,
    },
}

fn default_page_size() -> usize {
    crate::records::DEFAULT_PAGE_SIZE
}

impl RecordsConfig {
    /// How the gateway authenticates to its FHIR server (nothing for the embedded store).
    pub fn fhir_auth(&self) -> crate::records::smart::FhirAuth {
        use crate::records::smart::{ClientTls, FhirAuth};
        match self {
            RecordsConfig::Embedded => FhirAuth::default(),
            RecordsConfig::Fhir {
                auth,
                client_cert,
                client_key,
                ..
            } => FhirAuth {
                smart: auth.clone(),
                tls: client_cert
                    .clone()
                    .zip(client_key.clone())
                    .map(|(cert_file, key_file)| ClientTls {
                        cert_file,
                        key_file,
                    }),
            },
        }
    }
}

pub use federation::registry::RegistryConfig;

/// The custodian's own settings, passed to policy as `input.custodian`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustodianSettings {
    #[serde(default)]
    pub shifts: Vec<Shift>,
    #[serde(default = "default_break_glass")]
    pub break_glass_minutes: u32,
    #[serde(default = "default_min_cell")]
    pub min_cell_size: u32,
    #[serde(default = "default_max_records")]
    pub max_records: u32,
    /// Offset of the custodian's local time from UTC, for shift windows.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// A consent the patient issued themselves (issuer = subject DID) speaks for the
    /// patient only once this custodian has linked that DID to the patient
    /// (`POST /v1/patient-links`, e.g. at portal registration); until then it grants
    /// nothing, enrols nobody in research, and opens no access history. Turning this off
    /// trusts the identifiers in the consent on the patient's word.
    #[serde(default = "default_true")]
    pub require_patient_links: bool,
}

fn default_true() -> bool {
    true
}

impl Default for CustodianSettings {
    fn default() -> Self {
        CustodianSettings {
            shifts: Vec::new(),
            break_glass_minutes: default_break_glass(),
            min_cell_size: default_min_cell(),
            max_records: default_max_records(),
            utc_offset_minutes: 0,
            require_patient_links: true,
        }
    }
}

/// `[research]`: how research aggregates are released (docs/privacy.md). Every ε is per
/// study at this custodian; a study credential's `epsilonBudget` can only lower the total.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResearchSettings {
    /// Total ε a study may spend here (sequential composition of its queries).
    #[serde(default = "default_epsilon_budget")]
    pub epsilon_budget: f64,
    /// ε charged to a query that states none.
    #[serde(default = "default_epsilon_per_query")]
    pub epsilon_per_query: f64,
    /// Most ε one query may state.
    #[serde(default = "default_epsilon_per_query_max")]
    pub epsilon_per_query_max: f64,
    /// Lower bounds of the age bands, ascending from 0; the last band is open ("90+" by
    /// default) and starts at 90 at the latest, so that ages over 89 are top-coded.
    #[serde(default = "default_age_bands")]
    pub age_bands: Vec<u32>,
    /// Clamping bounds per LOINC code, for the mean of an observation. A query may narrow
    /// them, not widen them.
    #[serde(default)]
    pub observation_bounds: BTreeMap<String, (f64, f64)>,
    /// For a code without bounds above, the query declares its own, each within
    /// ±`max_declared_bound`.
    #[serde(default = "default_max_declared_bound")]
    pub max_declared_bound: f64,
}

impl Default for ResearchSettings {
    fn default() -> Self {
        ResearchSettings {
            epsilon_budget: default_epsilon_budget(),
            epsilon_per_query: default_epsilon_per_query(),
            epsilon_per_query_max: default_epsilon_per_query_max(),
            age_bands: default_age_bands(),
            observation_bounds: BTreeMap::new(),
            max_declared_bound: default_max_declared_bound(),
        }
    }
}

fn default_epsilon_budget() -> f64 {
    5.0
}
fn default_epsilon_per_query() -> f64 {
    0.5
}
fn default_epsilon_per_query_max() -> f64 {
    1.0
}
fn default_age_bands() -> Vec<u32> {
    vec![0, 18, 45, 65, 90]
}
fn default_max_declared_bound() -> f64 {
    10_000.0
}

/// Most age bands a custodian may configure.
pub const MAX_AGE_BANDS: usize = 20;

/// A code as queries name them: 1 to 64 of ASCII letters, digits, `.`, `-`, `_`.
pub fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

impl ResearchSettings {
    /// The first problem with these settings: the key and what is wrong.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let eps_ok = |e: f64| (1e-6..=1e6).contains(&e);
        if !eps_ok(self.epsilon_budget) {
            return Some((
                "research.epsilon_budget",
                "a positive number of at least 0.000001".into(),
            ));
        }
        if !eps_ok(self.epsilon_per_query_max) || self.epsilon_per_query_max > self.epsilon_budget {
            return Some((
                "research.epsilon_per_query_max",
                "a positive number, at most epsilon_budget".into(),
            ));
        }
        if !eps_ok(self.epsilon_per_query) || self.epsilon_per_query > self.epsilon_per_query_max {
            return Some((
                "research.epsilon_per_query",
                "a positive number, at most epsilon_per_query_max".into(),
            ));
        }
        let b = &self.age_bands;
        if b.first() != Some(&0)
            || b.len() > MAX_AGE_BANDS
            || b.windows(2).any(|w| w[0] >= w[1])
            || b.last().is_some_and(|&top| top > 90)
        {
            return Some((
                "research.age_bands",
                "1 to 20 ascending lower bounds, the first 0, the last at most 90".into(),
            ));
        }
        if !(self.max_declared_bound.is_finite() && self.max_declared_bound > 0.0) {
            return Some(("research.max_declared_bound", "a positive number".into()));
        }
        for (code, (lo, hi)) in &self.observation_bounds {
            if !(is_code(code) && lo.is_finite() && hi.is_finite() && lo < hi) {
                return Some((
                    "research.observation_bounds",
                    format!("{code}: a code, and finite bounds, lower below upper"),
                ));
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    pub roles: Vec<String>,
    pub days: Vec<String>,
    pub from_minute: u32,
    pub to_minute: u32,
}

fn default_policy_decision_cache() -> usize {
    crate::policy::DEFAULT_DECISION_CACHE_ENTRIES
}
fn default_records_cache_mb() -> usize {
    8
}
fn default_answers_cache_mb() -> usize {
    8
}
fn default_policy_time_limit() -> u64 {
    u64::try_from(crate::policy::DEFAULT_TIME_LIMIT.as_millis()).unwrap_or(50)
}
fn default_challenge_ttl() -> u64 {
    120
}
fn default_outbox_max() -> usize {
    100_000
}
fn default_status_ttl() -> u64 {
    300
}
fn default_break_glass() -> u32 {
    60
}
fn default_min_cell() -> u32 {
    11
}
fn default_max_records() -> u32 {
    5000
}

pub use service::config::ConfigError;

impl GatewayConfig {
    /// `records_cache_mb` in bytes.
    pub fn records_cache_bytes(&self) -> usize {
        self.records_cache_mb.saturating_mul(1024 * 1024)
    }

    /// `answers_cache_mb` in bytes.
    pub fn answers_cache_bytes(&self) -> usize {
        self.answers_cache_mb.saturating_mul(1024 * 1024)
    }

    /// Reads and validates a config file. Relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        service::config::load(path)
    }
}

impl service::config::ServiceConfig for GatewayConfig {
    fn resolve_paths(&mut self, base: &Path) {
        use service::config::resolve;
        self.bundle.resolve_paths(base);
        if let Some(r) = self.registry.as_mut() {
            r.resolve_path(base);
        }
        if let Some(nats) = self.visibility.as_mut().and_then(|v| v.nats.as_mut()) {
            nats.resolve_paths(base);
        }
        if let Some(t) = self.admin_token_file.as_mut() {
            resolve(base, t);
        }
        if let RecordsConfig::Fhir {
            auth,
            client_cert,
            client_key,
            ..
        } = &mut self.records
        {
            if let Some(a) = auth.as_mut() {
                resolve(base, &mut a.key_file);
            }
            for f in [client_cert, client_key].into_iter().flatten() {
                resolve(base, f);
            }
        }
        for f in [
            &mut self.key_file,
            &mut self.secret_file,
            &mut self.data_dir,
            &mut self.policies,
        ] {
            resolve(base, f);
        }
        service::config::resolve_listen(base, &mut self.listen);
        self.storage.resolve_paths(base);
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_string(),
            key,
            message: message.to_string(),
        };
        self.bundle.load(path)?;
        self.storage.validate(path)?;
        if !self.did.starts_with("did:web:") {
            return Err(invalid("did", "must be a did:web"));
        }
        if self.challenge_ttl_secs == 0 || self.challenge_ttl_secs > 3600 {
            return Err(invalid("challenge_ttl_secs", "must be between 1 and 3600"));
        }
        if !(1..=10_000).contains(&self.policy_time_limit_ms) {
            return Err(invalid(
                "policy_time_limit_ms",
                "must be between 1 and 10000",
            ));
        }
        if self.policy_decision_cache_entries > 1_000_000 {
            return Err(invalid(
                "policy_decision_cache_entries",
                "must be between 0 and 1000000",
            ));
        }
        if self.records_cache_mb > 4096 {
            return Err(invalid("records_cache_mb", "must be between 0 and 4096"));
        }
        if self.answers_cache_mb > 4096 {
            return Err(invalid("answers_cache_mb", "must be between 0 and 4096"));
        }
        if self.outbox_max_events == 0 {
            return Err(invalid("outbox_max_events", "must be at least 1"));
        }
        if let Some((key, message)) = self.research.problem() {
            return Err(invalid(key, &message));
        }
        if self.custodian.min_cell_size == 0 {
            return Err(invalid("custodian.min_cell_size", "must be at least 1"));
        }
        for s in &self.custodian.shifts {
            if s.from_minute >= 24 * 60 || s.to_minute > 24 * 60 || s.from_minute >= s.to_minute {
                return Err(invalid(
                    "custodian.shifts",
                    "from_minute < to_minute, both within a day",
                ));
            }
        }
        let url_ok = |u: &str| {
            reqwest::Url::parse(u)
                .map(|url| url.scheme() == "https" || (self.dev_mode && url.scheme() == "http"))
                .unwrap_or(false)
        };
        if let Some(u) = &self.public_url {
            if !url_ok(u) {
                return Err(invalid(
                    "public_url",
                    "must be an https URL (http only in dev_mode)",
                ));
            }
        }
        if let RecordsConfig::Fhir {
            url,
            auth,
            client_cert,
            client_key,
            page_size,
            ..
        } = &self.records
        {
            if !(1..=10_000).contains(page_size) {
                return Err(invalid("records.page_size", "must be from 1 to 10000"));
            }
            if !url_ok(url) {
                return Err(invalid(
                    "records.url",
                    "must be an https URL (http only in dev_mode)",
                ));
            }
            if let Some(a) = auth {
                if let Some((key, message)) = a.problem() {
                    return Err(invalid(key, &message));
                }
                if a.token_endpoint.as_deref().is_some_and(|u| !url_ok(u)) {
                    return Err(invalid(
                        "records.auth.token_endpoint",
                        "must be an https URL (http only in dev_mode)",
                    ));
                }
            }
            match (client_cert, client_key) {
                (Some(_), None) => {
                    return Err(invalid(
                        "records.client_key",
                        "is required with client_cert (mutual TLS)",
                    ))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "records.client_cert",
                        "is required with client_key (mutual TLS)",
                    ))
                }
                _ => {}
            }
        }
        for (did, url) in &self.did_web {
            if !did.starts_with("did:web:") || !url_ok(url) {
                return Err(invalid(
                    "did_web",
                    &format!("{did}: a did:web and an https URL"),
                ));
            }
        }
        for (did, url) in &self.status_origins {
            if !did.starts_with("did:key:") || !url_ok(url) {
                return Err(invalid(
                    "status_origins",
                    &format!("{did}: a did:key and an https URL"),
                ));
            }
        }
        for u in &self.status_push {
            if !url_ok(u) {
                return Err(invalid("status_push", &format!("{u} is not an https URL")));
            }
        }
        if let Some(v) = &self.visibility {
            if !url_ok(&v.endpoint) {
                return Err(invalid(
                    "visibility.endpoint",
                    "must be an https URL (http only in dev_mode)",
                ));
            }
            if !v.did.starts_with("did:web:") {
                return Err(invalid("visibility.did", "must be a did:web"));
            }
            if v.batch_size == 0 || v.batch_size > 1000 {
                return Err(invalid(
                    "visibility.batch_size",
                    "must be between 1 and 1000",
                ));
            }
            if v.linger_ms > 1000 {
                return Err(invalid("visibility.linger_ms", "must be at most 1000"));
            }
            for peer in &v.peers {
                let url = reqwest::Url::parse(peer)
                    .map_err(|e| invalid("visibility.peers", &format!("{peer}: {e}")))?;
                federation::client::loopback_only_http(&url, self.dev_mode).map_err(|_| {
                    invalid(
                        "visibility.peers",
                        &format!(
                            "{peer}: must be an https URL (http only to loopback in dev_mode)"
                        ),
                    )
                })?;
                if !peer.ends_with('/') {
                    return Err(invalid(
                        "visibility.peers",
                        &format!("{peer}: must end with /"),
                    ));
                }
            }
            if v.gossip_interval_ms < 100 {
                return Err(invalid(
                    "visibility.gossip_interval_ms",
                    "must be at least 100",
                ));
            }
            match (&v.transport, &v.nats) {
                (crate::shipper::Transport::Nats, Some(n)) => n
                    .validate("visibility.nats", self.dev_mode)
                    .map_err(|e| invalid("visibility.nats", &e.to_string()))?,
                (crate::shipper::Transport::Nats, None) => {
                    return Err(invalid(
                        "visibility.nats",
                        "is required with transport = \"nats\"",
                    ))
                }
                (crate::shipper::Transport::Https, Some(_)) => {
                    return Err(invalid(
                        "visibility.transport",
                        "must be \"nats\" when [visibility.nats] is set",
                    ))
                }
                (crate::shipper::Transport::Https, None) => {}
            }
        }
        if let Some(r) = &self.registry {
            r.governance
                .validate()
                .map_err(|e| invalid("registry.governance", &e.to_string()))?;
            if r.is_url() && !url_ok(&r.signed) {
                return Err(invalid("registry.signed", "must be a file or an https URL"));
            }
        }
        self.limits
            .validate()
            .map_err(|e| invalid("limits", &e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service::config::ServiceConfig;

    fn with_visibility(dev_mode: bool, table: &str) -> Result<(), String> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndid = \"did:web:hospital-a.example\"\nkey_file = \"k\"\nsecret_file = \"s\"\ndata_dir = \"d\"\npolicies = \"p\"\ndev_mode = {dev_mode}\n[visibility]\nendpoint = \"https://visibility.example/\"\ndid = \"did:web:visibility.example\"\n{table}"
        );
        let config: GatewayConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate("gateway.toml").map_err(|e| e.to_string())
    }

    fn with_records(records: &str) -> Result<GatewayConfig, String> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndid = \"did:web:hospital-a.example\"\nkey_file = \"k\"\nsecret_file = \"s\"\ndata_dir = \"d\"\npolicies = \"p\"\n{records}"
        );
        let config: GatewayConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config.validate("gateway.toml").map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn records_auth_is_checked_with_the_key_named() {
        let fhir = "[records]\nsource = \"fhir\"\nurl = \"https://fhir.example/r4\"\n";
        let config = with_records(&format!(
            "{fhir}[records.auth]\nclient_id = \"gw\"\nkey_file = \"smart.pem\"\n"
        ))
        .unwrap();
        let auth = config.records.fhir_auth();
        let smart = auth.smart.unwrap();
        assert_eq!(smart.scopes, "system/*.rs");
        assert_eq!(
            smart.algorithm,
            crate::records::smart::SigningAlgorithm::ES384
        );
        assert!(auth.tls.is_none());
        let config = with_records(&format!(
            "{fhir}client_cert = \"c.pem\"\nclient_key = \"k.pem\"\n[records.auth]\nclient_id = \"gw\"\nkey_file = \"smart.jwk\"\nalgorithm = \"RS384\"\nscopes = \"system/Patient.rs system/Observation.rs\"\ntoken_endpoint = \"https://as.example/token\"\n"
        ))
        .unwrap();
        assert!(config.records.fhir_auth().tls.is_some());
        for (bad, key) in [
            ("[records.auth]\nclient_id = \"\"\nkey_file = \"k\"\n", "records.auth.client_id"),
            ("[records.auth]\nclient_id = \"gw\"\nkey_file = \"k\"\nscopes = \"\"\n", "records.auth.scopes"),
            ("[records.auth]\nclient_id = \"gw\"\nkey_file = \"k\"\ntoken_endpoint = \"http://as.example/t\"\n", "records.auth.token_endpoint"),
            ("[records.auth]\nclient_id = \"gw\"\nkey_file = \"k\"\nalgorithm = \"HS256\"\n", "expected `ES384` or `RS384`"),
            ("[records.auth]\nclient_id = \"gw\"\nkey_file = \"k\"\nsecret = \"x\"\n", "secret"),
            ("client_cert = \"c.pem\"\n", "records.client_key"),
        ] {
            let err = with_records(&format!("{fhir}{bad}")).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn policy_engine_is_the_vm_unless_the_interpreter_is_named() {
        use crate::policy::EngineKind;
        assert_eq!(with_records("").unwrap().policy_engine, EngineKind::Vm);
        let config = with_records("policy_engine = \"interpreter\"\n").unwrap();
        assert_eq!(config.policy_engine, EngineKind::Interpreter);
        let err = with_records("policy_engine = \"wasm\"\n").unwrap_err();
        assert!(err.contains("unknown variant `wasm`"), "{err}");
    }

    #[test]
    fn fhir_page_size_and_everything() {
        let fhir = "[records]\nsource = \"fhir\"\nurl = \"https://fhir.example/r4\"\n";
        let config = with_records(fhir).unwrap();
        let RecordsConfig::Fhir {
            page_size,
            everything,
            ..
        } = config.records
        else {
            panic!("a FHIR source");
        };
        assert_eq!((page_size, everything), (1000, true));
        let config = with_records(&format!("{fhir}page_size = 200\neverything = false\n")).unwrap();
        let RecordsConfig::Fhir {
            page_size,
            everything,
            ..
        } = config.records
        else {
            panic!("a FHIR source");
        };
        assert_eq!((page_size, everything), (200, false));
        for bad in ["page_size = 0\n", "page_size = 20000\n"] {
            let err = with_records(&format!("{fhir}{bad}")).unwrap_err();
            assert!(err.contains("records.page_size"), "{bad}: {err}");
        }
    }

    #[test]
    fn gossip_peers_are_gateways_over_https() {
        with_visibility(false, "peers = [\"https://gw-b.example/\"]").unwrap();
        with_visibility(true, "peers = [\"http://127.0.0.1:8080/\"]").unwrap();
        for (dev_mode, bad) in [
            (false, "peers = [\"http://gw-b.example/\"]"),
            (true, "peers = [\"http://10.0.0.7/\"]"),
            (false, "peers = [\"not a url\"]"),
            (false, "peers = [\"https://gw-b.example/base\"]"),
            (
                false,
                "peers = [\"https://gw-b.example/\"]\ngossip_interval_ms = 5",
            ),
        ] {
            let err = with_visibility(dev_mode, bad).unwrap_err();
            assert!(
                err.contains("visibility.peers") || err.contains("gossip"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_linger_is_at_most_a_second() {
        with_visibility(false, "linger_ms = 0").unwrap();
        with_visibility(false, "linger_ms = 1000").unwrap();
        let err = with_visibility(false, "linger_ms = 1001").unwrap_err();
        assert!(err.contains("visibility.linger_ms"), "{err}");
    }
}
