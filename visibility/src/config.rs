//! `visibility.toml`: one file, serde defaults, validated at load with a message naming the key.
//!
//! Membership comes either from the federation's signed registry (`[registry]`) or, for
//! small deployments and tests, from static tables (`members`, `auditors`, `trust`); never
//! from both, so that there is exactly one answer to "who may report events".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use federation::credentials::CredentialKind;
use service::http::{HttpLimits, ListenConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityConfig {
    /// Address, and optional TLS certificate and key.
    #[serde(flatten)]
    pub(crate) listen: ListenConfig,
    /// The service's did:web: the checkpoint origin, the note key name and the domain that
    /// presentations are bound to.
    pub(crate) did: String,
    /// The service's Ed25519 key (created 0600 on first start if missing).
    pub(crate) key_file: PathBuf,
    /// Embedded storage: the log, its indexes, challenges.
    pub(crate) data_dir: PathBuf,
    /// Where that state is kept: the embedded file in `data_dir` (the default), or a
    /// PostgreSQL schema that several visibility processes share (one log).
    #[serde(default)]
    pub(crate) storage: service::db::StorageConfig,
    /// Allows plain http to loopback peers (tests and the demo only).
    #[serde(default)]
    pub(crate) dev_mode: bool,
    /// The federation's signed manifest. When set, `members`, `auditors` and `trust` must
    /// be empty.
    #[serde(default)]
    pub(crate) registry: Option<RegistryConfig>,
    /// Static membership: member did:web → base URL of its DID document.
    #[serde(default)]
    pub members: BTreeMap<String, String>,
    /// Static membership: organizations whose staff may open auditor sessions.
    #[serde(default)]
    pub(crate) auditors: Vec<String>,
    /// Static trust: issuers trusted per credential type.
    #[serde(default)]
    pub(crate) trust: BTreeMap<CredentialKind, Vec<String>>,
    #[serde(default = "default_challenge_ttl")]
    pub(crate) challenge_ttl_secs: u64,
    #[serde(default = "default_session_ttl")]
    pub(crate) session_ttl_secs: u64,
    /// How often the background task looks for an unsigned tree size.
    #[serde(default = "default_checkpoint_interval")]
    pub(crate) checkpoint_interval_ms: u64,
    #[serde(default = "default_status_ttl")]
    pub(crate) status_cache_ttl_secs: u64,
    /// How long after a break-glass access its review is due; past it, a review still
    /// awaiting is overdue (highlighted on the dashboard, `review=overdue` in queries).
    #[serde(default = "default_review_deadline")]
    pub(crate) review_deadline_hours: u64,
    /// HTTP limits. Unlike the other services, `max_body_bytes` defaults to
    /// [`DEFAULT_MAX_BODY_BYTES`] (8 MiB), whether `[limits]` is absent or leaves it out:
    /// a batch JWS may be up to 4 MiB.
    #[serde(default = "default_limits", deserialize_with = "limits_with_defaults")]
    pub(crate) limits: HttpLimits,
    /// Also read access events from NATS JetStream (the stream is created if missing).
    /// `POST /v1/batches` keeps working beside it.
    #[serde(default)]
    pub(crate) nats: Option<service::eventbus::NatsConfig>,
}

/// The visibility service's default request body limit: room for the largest batch
/// ([`federation::wire::MAX_BATCH_JWS_BYTES`]) in its JSON envelope.
const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

fn default_limits() -> HttpLimits {
    HttpLimits {
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        ..HttpLimits::default()
    }
}

/// `[limits]` as written: keys left out take this service's defaults ([`default_limits`]),
/// not [`HttpLimits::default`], which `HttpLimits`' own `#[serde(default)]` would use.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLimits {
    max_body_bytes: Option<usize>,
    request_timeout_secs: Option<u64>,
    max_concurrent: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    body_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    max_requests_per_connection: Option<u64>,
}

fn limits_with_defaults<'de, D>(deserializer: D) -> Result<HttpLimits, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let written = PartialLimits::deserialize(deserializer)?;
    let d = default_limits();
    // No `..`: a field added to HttpLimits must be added here too.
    Ok(HttpLimits {
        max_body_bytes: written.max_body_bytes.unwrap_or(d.max_body_bytes),
        request_timeout_secs: written
            .request_timeout_secs
            .unwrap_or(d.request_timeout_secs),
        max_concurrent: written.max_concurrent.unwrap_or(d.max_concurrent),
        header_read_timeout_secs: written
            .header_read_timeout_secs
            .unwrap_or(d.header_read_timeout_secs),
        body_read_timeout_secs: written
            .body_read_timeout_secs
            .unwrap_or(d.body_read_timeout_secs),
        max_connections: written.max_connections.unwrap_or(d.max_connections),
        idle_timeout_secs: written.idle_timeout_secs.unwrap_or(d.idle_timeout_secs),
        max_requests_per_connection: written
            .max_requests_per_connection
            .unwrap_or(d.max_requests_per_connection),
    })
}

use federation::registry::RegistryConfig;

fn default_challenge_ttl() -> u64 {
    120
}
fn default_session_ttl() -> u64 {
    3600
}
fn default_checkpoint_interval() -> u64 {
    1000
}
fn default_status_ttl() -> u64 {
    300
}
fn default_review_deadline() -> u64 {
    72
}

use service::config::ConfigError;

impl VisibilityConfig {
    /// Reads and validates a config file. Relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        service::config::load(path)
    }

    /// The `[storage]` section.
    pub fn storage(&self) -> &service::db::StorageConfig {
        &self.storage
    }

    /// Parses without validating or resolving paths.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Makes relative file paths relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        <Self as service::config::ServiceConfig>::resolve_paths(self, base)
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        <Self as service::config::ServiceConfig>::validate(self, path)
    }
}

impl service::config::ServiceConfig for VisibilityConfig {
    fn resolve_paths(&mut self, base: &Path) {
        service::config::resolve(base, &mut self.key_file);
        service::config::resolve(base, &mut self.data_dir);
        service::config::resolve_listen(base, &mut self.listen);
        if let Some(reg) = self.registry.as_mut() {
            reg.resolve_path(base);
        }
        if let Some(nats) = self.nats.as_mut() {
            nats.resolve_paths(base);
        }
        self.storage.resolve_paths(base);
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_string(),
            key,
            message,
        };
        self.storage.validate(path)?;
        if !(1..=24 * 366).contains(&self.review_deadline_hours) {
            return Err(invalid(
                "review_deadline_hours",
                "must be between 1 and 8784 (a year)".into(),
            ));
        }
        if !self.did.starts_with("did:web:") || self.did.len() <= "did:web:".len() {
            return Err(invalid("did", "must be a did:web".into()));
        }
        // The DID is the note key name: it must fit on a signature line.
        if self
            .did
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '+')
        {
            return Err(invalid(
                "did",
                "must not contain spaces, control characters or '+'".into(),
            ));
        }
        let url_rule = |key, url: &str| -> Result<(), ConfigError> {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| invalid(key, format!("{url}: {e}")))?;
            federation::client::loopback_only_http(&parsed, self.dev_mode)
                .map_err(|e| invalid(key, e.to_string()))
        };
        match &self.registry {
            Some(reg) => {
                if !self.members.is_empty() || !self.auditors.is_empty() || !self.trust.is_empty() {
                    return Err(invalid(
                        "registry",
                        "is set: `members`, `auditors` and `trust` come from the manifest and must be left out".into(),
                    ));
                }
                reg.governance
                    .validate()
                    .map_err(|e| invalid("registry.governance", e.to_string()))?;
                if reg.poll_secs == 0 {
                    return Err(invalid("registry.poll_secs", "must be at least 1".into()));
                }
                if reg.is_url() {
                    url_rule("registry.signed", &reg.signed)?;
                }
            }
            None => {
                for (did, url) in &self.members {
                    if !did.starts_with("did:web:") {
                        return Err(invalid("members", format!("{did} is not a did:web")));
                    }
                    url_rule("members", url)?;
                }
                for did in &self.auditors {
                    if !did.starts_with("did:") {
                        return Err(invalid("auditors", format!("{did} is not a DID")));
                    }
                }
                for issuers in self.trust.values() {
                    if let Some(bad) = issuers.iter().find(|d| !d.starts_with("did:")) {
                        return Err(invalid("trust", format!("{bad} is not a DID")));
                    }
                }
            }
        }
        if let Some(nats) = &self.nats {
            nats.validate("nats", self.dev_mode)
                .map_err(|e| invalid("nats", e.to_string()))?;
        }
        if !(1..=3600).contains(&self.challenge_ttl_secs) {
            return Err(invalid(
                "challenge_ttl_secs",
                "must be between 1 and 3600".into(),
            ));
        }
        if !(1..=86_400).contains(&self.session_ttl_secs) {
            return Err(invalid(
                "session_ttl_secs",
                "must be between 1 and 86400".into(),
            ));
        }
        if !(10..=60_000).contains(&self.checkpoint_interval_ms) {
            return Err(invalid(
                "checkpoint_interval_ms",
                "must be between 10 and 60000 (at least one checkpoint a minute)".into(),
            ));
        }
        if self.status_cache_ttl_secs == 0 {
            return Err(invalid(
                "status_cache_ttl_secs",
                "must be at least 1".into(),
            ));
        }
        self.limits
            .validate()
            .map_err(|e| invalid("limits", e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:0"
did = "did:web:visibility.test"
key_file = "visibility.key.json"
data_dir = "data"
dev_mode = true
"#;

    fn check(extra: &str) -> Result<VisibilityConfig, String> {
        let mut cfg =
            VisibilityConfig::from_toml(&format!("{BASE}{extra}")).map_err(|e| e.to_string())?;
        cfg.resolve_paths(Path::new("/etc/fedgate"));
        cfg.validate("visibility.toml").map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn static_membership_and_relative_paths() {
        let cfg = check(
            r#"
auditors = ["did:web:auditor.test"]
[members]
"did:web:hospital-a.test" = "http://127.0.0.1:9000/"
[trust]
ClinicianPrivilegeCredential = ["did:web:office.test"]
"#,
        )
        .unwrap();
        assert_eq!(cfg.key_file, Path::new("/etc/fedgate/visibility.key.json"));
        assert_eq!(cfg.data_dir, Path::new("/etc/fedgate/data"));
        assert_eq!(cfg.members.len(), 1);
        assert_eq!(cfg.challenge_ttl_secs, 120);
        assert_eq!(cfg.checkpoint_interval_ms, 1000);
        assert_eq!(cfg.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(
            cfg.limits.max_concurrent,
            HttpLimits::default().max_concurrent
        );
    }

    #[test]
    fn limits_default_to_room_for_the_largest_batch() {
        const { assert!(DEFAULT_MAX_BODY_BYTES > federation::wire::MAX_BATCH_JWS_BYTES) };
        // A [limits] table that leaves max_body_bytes out still gets this service's default.
        let cfg = check("[limits]\nrequest_timeout_secs = 5\n").unwrap();
        assert_eq!(cfg.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(cfg.limits.request_timeout_secs, 5);
        assert_eq!(
            cfg.limits.header_read_timeout_secs,
            HttpLimits::default().header_read_timeout_secs
        );
        let cfg = check("[limits]\nmax_body_bytes = 65536\n").unwrap();
        assert_eq!(cfg.limits.max_body_bytes, 65536);
        assert!(check("[limits]\nmax_body = 1\n")
            .unwrap_err()
            .contains("max_body"));
        assert!(check("[limits]\nmax_body_bytes = 0\n")
            .unwrap_err()
            .contains("limits"));
    }

    #[test]
    fn refusals_name_the_key() {
        let err = |extra: &str| check(extra).unwrap_err();
        assert!(err("colour = \"red\"\n").contains("colour"));
        assert!(err("challenge_ttl_secs = 0\n").contains("challenge_ttl_secs"));
        assert!(err("[members]\n\"did:key:z6Mk\" = \"http://127.0.0.1:1/\"\n").contains("members"));
        assert!(
            err("[members]\n\"did:web:x.test\" = \"http://example.org/\"\n").contains("members")
        );
        let both = r#"
auditors = ["did:web:auditor.test"]
[registry]
signed = "manifest.signed.json"
governance = { threshold = 1, keys = ["did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK#z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"] }
"#;
        assert!(err(both).contains("registry"));
        let mut cfg = VisibilityConfig::from_toml(BASE).unwrap();
        cfg.did = "did:web:has space".into();
        assert!(cfg.validate("v").is_err());
        cfg.did = "did:key:z6Mk".into();
        assert!(cfg.validate("v").is_err());
    }

    #[test]
    fn registry_file_is_relative_to_the_config() {
        let cfg = check(
            r#"
[registry]
signed = "manifest.signed.json"
governance = { threshold = 1, keys = ["did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK#z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"] }
"#,
        )
        .unwrap();
        let reg = cfg.registry.unwrap();
        assert_eq!(reg.signed, "/etc/fedgate/manifest.signed.json");
        assert_eq!(reg.poll_secs, 10);
    }
}
