//! `issuer.toml`: one file, serde defaults, validated at load with a message naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use federation::credentials::{CredentialKind, ProofFormat};
use serde::Deserialize;
use service::http::{HttpLimits, ListenConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Address, and optional TLS certificate and key.
    #[serde(flatten)]
    pub(crate) listen: ListenConfig,
    /// The organization's DID: a did:web, whose base URL comes from `public_url`, or
    /// `did:key` for the did:key of `key_file` (or that did:key written out in full).
    pub(crate) did: String,
    /// Where this service is reachable; defaults to `http://<bound address>/` on loopback.
    #[serde(default)]
    pub(crate) public_url: Option<String>,
    /// The organization's signing key (created 0600 on first start if missing).
    pub(crate) key_file: PathBuf,
    /// Embedded storage.
    pub(crate) data_dir: PathBuf,
    /// Where that state is kept: the embedded file in `data_dir` (the default), or a
    /// PostgreSQL schema.
    #[serde(default)]
    pub(crate) storage: service::db::StorageConfig,
    /// File holding the admin bearer token (0600). Without it every admin call is refused:
    /// there is no default credential.
    #[serde(default)]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Allows plain http to loopback peers (tests and the demo only).
    #[serde(default)]
    pub(crate) dev_mode: bool,
    /// Credential types this office issues.
    #[serde(default = "all_kinds")]
    pub(crate) issues: Vec<CredentialKind>,
    /// Credential types beyond the three this office issues (the VC API's generic
    /// profile: licences, training, board certifications...).
    #[serde(default)]
    pub(crate) other_types: Vec<OtherType>,
    /// A test or sandbox office: a credential of any type is issued (the three types still
    /// only as `issues` lists them, against their schemas).
    #[serde(default)]
    pub(crate) issue_any_type: bool,
    /// Issuers trusted per other type name, for the verify endpoints (without an entry, a
    /// credential of such a type is verified without an issuer-trust check).
    #[serde(default)]
    pub(crate) trust_types: BTreeMap<String, Vec<String>>,
    /// Contexts, schemas and related resources bundled for issuing and verifying.
    #[serde(default)]
    pub(crate) bundle: service::config::BundleConfig,
    #[serde(default)]
    pub(crate) default_format: ProofFormat,
    #[serde(default = "default_validity_days")]
    pub(crate) credential_validity_days: i64,
    /// How long a signed status list stays valid (verifiers cache it for at most this).
    #[serde(default = "default_status_ttl")]
    pub(crate) status_list_ttl_secs: u64,
    /// Issuers trusted per type, for the verify endpoints.
    #[serde(default)]
    pub(crate) trust: BTreeMap<CredentialKind, Vec<String>>,
    /// did:web allow-map (DID → base URL) for the verify endpoints.
    #[serde(default)]
    pub(crate) did_web: BTreeMap<String, String>,
    /// did:key issuers' registered origins (DID → base URL) for the verify endpoints: a
    /// credential's status list is fetched only from there.
    #[serde(default)]
    pub(crate) status_origins: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) limits: HttpLimits,
    /// OpenID4VCI: offers, codes, tokens and nonces.
    #[serde(default)]
    pub(crate) oid4vci: Oid4vciConfig,
}

/// `[oid4vci]`: lifetimes and limits of the pre-authorized code flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Oid4vciConfig {
    /// How long an offer (its pre-authorized code) can be redeemed, unless the offer
    /// asks for less or more.
    #[serde(default = "default_offer_ttl")]
    pub(crate) offer_ttl_secs: u64,
    /// Wrong transaction codes allowed before the offer is void.
    #[serde(default = "default_tx_code_tries")]
    pub(crate) tx_code_tries: u32,
    /// Lifetime of an access token from the token endpoint.
    #[serde(default = "default_token_ttl")]
    pub(crate) token_ttl_secs: u64,
    /// Lifetime of a `c_nonce` from the nonce endpoint.
    #[serde(default = "default_token_ttl")]
    pub(crate) nonce_ttl_secs: u64,
}

impl Default for Oid4vciConfig {
    fn default() -> Self {
        Oid4vciConfig {
            offer_ttl_secs: default_offer_ttl(),
            tx_code_tries: default_tx_code_tries(),
            token_ttl_secs: default_token_ttl(),
            nonce_ttl_secs: default_token_ttl(),
        }
    }
}

fn default_offer_ttl() -> u64 {
    600
}
fn default_tx_code_tries() -> u32 {
    3
}
fn default_token_ttl() -> u64 {
    300
}

/// A credential type this office issues beyond the three.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OtherType {
    /// The `type` value, e.g. `TrainingCertificateCredential`.
    #[serde(rename = "type")]
    pub(crate) type_name: String,
    /// A schema URL of `[bundle.schemas]`: credentials of this type carry it as their
    /// `credentialSchema` and are checked against it on issue and on verify.
    #[serde(default)]
    pub(crate) schema: Option<String>,
    /// A context URL of `[bundle.contexts]`, added to `@context` when a request lacks it.
    #[serde(default)]
    pub(crate) context: Option<String>,
}

fn all_kinds() -> Vec<CredentialKind> {
    CredentialKind::ALL.to_vec()
}
fn default_validity_days() -> i64 {
    365
}
fn default_status_ttl() -> u64 {
    300
}

use service::config::ConfigError;

impl IssuerConfig {
    /// Reads and validates a config file. Relative paths are taken from the file's folder.
    /// The `[storage]` section.
    pub fn storage(&self) -> &service::db::StorageConfig {
        &self.storage
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        service::config::load(path)
    }
}

impl service::config::ServiceConfig for IssuerConfig {
    fn resolve_paths(&mut self, base: &Path) {
        use service::config::resolve;
        resolve(base, &mut self.key_file);
        resolve(base, &mut self.data_dir);
        self.bundle.resolve_paths(base);
        if let Some(t) = self.admin_token_file.as_mut() {
            resolve(base, t);
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
        self.storage.validate(path)?;
        if !(self.did.starts_with("did:web:")
            || self.did == "did:key"
            || self.did.starts_with("did:key:"))
        {
            return Err(invalid(
                "did",
                "must be a did:web, or did:key (the did:key of key_file, made on first start)",
            ));
        }
        if self.did.starts_with("did:key:") {
            if federation::did::parse_did(&self.did).is_err() {
                return Err(invalid(
                    "did",
                    "is not a did:key that decodes (a did:web, or did = \"did:key\" for the did:key of key_file)",
                ));
            }
            // A did:key written out is a key that exists: never make another in its place.
            if !self.key_file.exists() {
                return Err(invalid(
                    "did",
                    "names a did:key but key_file does not exist (did = \"did:key\" makes a new key)",
                ));
            }
        }
        if let Some(u) = &self.public_url {
            let url = reqwest::Url::parse(u).map_err(|e| invalid("public_url", &e.to_string()))?;
            if url.scheme() != "https" && !(self.dev_mode && url.scheme() == "http") {
                return Err(invalid(
                    "public_url",
                    "must be https (http only in dev_mode)",
                ));
            }
        }
        if self.credential_validity_days < 1 {
            return Err(invalid("credential_validity_days", "must be at least 1"));
        }
        if self.status_list_ttl_secs < 1 {
            return Err(invalid("status_list_ttl_secs", "must be at least 1"));
        }
        for (did, url) in &self.did_web {
            if !did.starts_with("did:web:") {
                return Err(invalid("did_web", &format!("{did} is not a did:web")));
            }
            reqwest::Url::parse(url).map_err(|e| invalid("did_web", &format!("{did}: {e}")))?;
        }
        for (did, url) in &self.status_origins {
            if !did.starts_with("did:key:") {
                return Err(invalid(
                    "status_origins",
                    &format!("{did} is not a did:key"),
                ));
            }
            reqwest::Url::parse(url)
                .map_err(|e| invalid("status_origins", &format!("{did}: {e}")))?;
        }
        self.bundle.load(path)?;
        for other in &self.other_types {
            let name = other.type_name.as_str();
            if name.is_empty()
                || name == "VerifiableCredential"
                || CredentialKind::from_type_name(name).is_some()
            {
                return Err(invalid(
                    "other_types",
                    &format!("{name:?} is not a type beyond the three"),
                ));
            }
            if let Some(url) = &other.schema {
                if !self.bundle.schemas.contains_key(url) {
                    return Err(invalid(
                        "other_types",
                        &format!("{name}: schema {url} is not in [bundle.schemas]"),
                    ));
                }
            }
            if let Some(url) = &other.context {
                if !self.bundle.contexts.contains_key(url) {
                    return Err(invalid(
                        "other_types",
                        &format!("{name}: context {url} is not in [bundle.contexts]"),
                    ));
                }
            }
        }
        let o = &self.oid4vci;
        if !(1..=7 * 86_400).contains(&o.offer_ttl_secs) {
            return Err(invalid("oid4vci.offer_ttl_secs", "must be 1 to 604800"));
        }
        if !(1..=10).contains(&o.tx_code_tries) {
            return Err(invalid("oid4vci.tx_code_tries", "must be 1 to 10"));
        }
        if !(1..=3600).contains(&o.token_ttl_secs) {
            return Err(invalid("oid4vci.token_ttl_secs", "must be 1 to 3600"));
        }
        if !(1..=3600).contains(&o.nonce_ttl_secs) {
            return Err(invalid("oid4vci.nonce_ttl_secs", "must be 1 to 3600"));
        }
        // As the other services do: a bad limit is a config error at load, not at serve.
        self.limits
            .validate()
            .map_err(|e| invalid("limits", &e.to_string()))?;
        Ok(())
    }
}
