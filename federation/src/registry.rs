//! The federation's signed trust registry.
//!
//! A manifest states, verifiably, who the members are (and where each member's did:web
//! document is served), which issuers are trusted for which credential type, and which
//! custodian shares which data domains with which requester. It travels as a JWS in General
//! JSON Serialization (RFC 7515 §7.2.1) carrying one signature per governance key, so that
//! governance members can co-sign one after the other.
//!
//! Governance is pinned by the verifier: a service is configured with a threshold and the
//! governance keys, and accepts a manifest only when at least `threshold` distinct configured
//! keys signed it. A manifest may name new governance; a [`Registry`] adopts it only after
//! that manifest verified under the governance already held, so a manifest can never appoint
//! the governors that approve it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use crate::b64::encode as b64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ssi::jwk::{Algorithm, JWK};

use crate::credentials::{CredentialKind, Domain};
use crate::did::DidResolver;
use crate::error::ParseError;
use crate::jose::{self, JoseError};
use crate::keys::{KeyAlgorithm, KeyPair};
use crate::trust::TrustSource;
use crate::verify::Check;

/// Largest signed manifest read from a file or fetched from a URL.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// Most signatures one signed manifest may carry (each costs a verification).
pub const MAX_SIGNATURES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest field {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("not a federation manifest: {0}")]
    Malformed(String),
    #[error("not a signed federation manifest: {0}")]
    MalformedJws(String),
    /// Bytes of the signed manifest (its file, its payload, a protected header) that are
    /// not strict JSON ([`crate::json`]): refused before anything in them is read.
    #[error("{part} is not strict JSON: {source}")]
    NotStrictJson {
        part: ManifestPart,
        source: crate::json::StrictJsonError,
    },
    #[error("signature #{index}: protected header refused: {reason}")]
    BadHeader { index: usize, reason: String },
    #[error("manifest is signed by {0}, which is not a governance key; refusing it")]
    UnknownSigner(String),
    #[error("signature by {kid} does not verify: {reason}")]
    BadSignature { kid: String, reason: String },
    #[error("{have} valid governance signature(s), {need} required")]
    BelowThreshold { have: u32, need: u32 },
    #[error("manifest version {offered} is older than version {held} in force (rollback)")]
    Rollback { held: u64, offered: u64 },
    #[error("another manifest with version {version} is already in force (equivocation)")]
    Equivocation { version: u64 },
    #[error("{0} has already signed this manifest")]
    AlreadySigned(String),
    #[error("the signed file carries another manifest (version {signed}), not version {offered}")]
    PayloadMismatch { signed: u64, offered: u64 },
    #[error("{0} is not a governance key (governance keys are did:key)")]
    NotGovernanceKey(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("signed manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("fetching the manifest failed: {0}")]
    Fetch(String),
    #[error("the registry state is unavailable")]
    Poisoned,
    #[error("the manifest journal could not be written: {0}")]
    Journal(String),
    #[error("the manifest journal could not be opened: {0}")]
    JournalOpen(#[source] sled::Error),
    #[error("the manifest journal could not be read: {0}")]
    JournalRead(#[source] sled::Error),
}

fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// Why one value of a manifest (a member's DID, a URL, a governance key) is refused; the
/// manifest error names the field it was found in.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("{0:?} is not a did:web")]
    NotDidWeb(String),
    #[error("{0:?} is not a valid did:web")]
    BadDidWeb(String),
    #[error("{url:?} is not a URL: {reason}")]
    NotUrl { url: String, reason: String },
    #[error("{0:?} must not carry credentials")]
    UrlCredentials(String),
    #[error("{0:?} must be https (plain http only to a loopback host in dev mode)")]
    NotHttps(String),
    #[error("{0:?} is not a did:key verification method (did:key:z…#z…)")]
    NotDidKeyMethod(String),
    #[error("{method:?}: {reason}")]
    BadKey { method: String, reason: String },
    #[error("{0:?} is not an Ed25519 or P-256 key")]
    KeyType(String),
}

/// Which bytes of a signed manifest a [`RegistryError::NotStrictJson`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestPart {
    /// The JWS JSON serialization as stored or fetched.
    SignedFile,
    /// The manifest itself (the signed payload).
    Manifest,
    /// The protected header of signature #n.
    Header(usize),
}

impl fmt::Display for ManifestPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestPart::SignedFile => f.write_str("the signed manifest"),
            ManifestPart::Manifest => f.write_str("the manifest"),
            ManifestPart::Header(i) => write!(f, "the protected header of signature #{i}"),
        }
    }
}

impl RegistryError {
    /// The check of the verification pipeline ([`crate::verify`]) a refused manifest
    /// failed, named as a refused credential's would be; `None` for what is no
    /// verification failure (I/O, rollback, journal).
    pub fn check(&self) -> Option<Check> {
        match self {
            RegistryError::Malformed(_)
            | RegistryError::MalformedJws(_)
            | RegistryError::NotStrictJson { .. }
            | RegistryError::TooLarge => Some(Check::Format),
            RegistryError::BadHeader { .. }
            | RegistryError::UnknownSigner(_)
            | RegistryError::BadSignature { .. }
            | RegistryError::BelowThreshold { .. } => Some(Check::Proof),
            RegistryError::Invalid { .. } => Some(Check::Schema),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The manifest
// ---------------------------------------------------------------------------------------

/// What a member does in the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Custodian,
    Requester,
    CredentialingOffice,
    ConsentRegistry,
    Irb,
    ResearchNetwork,
    Auditor,
    Visibility,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Custodian,
        Role::Requester,
        Role::CredentialingOffice,
        Role::ConsentRegistry,
        Role::Irb,
        Role::ResearchNetwork,
        Role::Auditor,
        Role::Visibility,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Custodian => "custodian",
            Role::Requester => "requester",
            Role::CredentialingOffice => "credentialing-office",
            Role::ConsentRegistry => "consent-registry",
            Role::Irb => "irb",
            Role::ResearchNetwork => "research-network",
            Role::Auditor => "auditor",
            Role::Visibility => "visibility",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                ParseError::new("role", s, format!("one of {}", names.join(", ")))
            })
    }
}

/// Where a member's services answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<String>,
}

impl Endpoints {
    fn is_empty(&self) -> bool {
        self.gateway.is_none() && self.issuer.is_none() && self.visibility.is_none()
    }
}

/// One organization of the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    /// The organization's did:web.
    pub did: String,
    pub name: String,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Endpoints::is_empty")]
    pub endpoints: Endpoints,
    /// Where the member's `/.well-known/did.json` is served; fills the did:web allow-map.
    pub base_url: String,
}

impl Member {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A data-sharing agreement: `custodian` shares `domains` with `requester` for `purposes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Contract {
    pub custodian: String,
    pub requester: String,
    pub domains: Vec<Domain>,
    /// HL7 PurposeOfUse codes, e.g. TREAT, HRESCH.
    pub purposes: Vec<String>,
    /// RFC 3339; absent means the contract does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl Contract {
    /// Whether the contract has expired at `now`. An unreadable date counts as expired.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        match &self.expires {
            None => false,
            Some(t) => crate::time::parse(t).is_none_or(|t| t <= now),
        }
    }

    pub fn covers(&self, domain: Domain, purpose: &str) -> bool {
        self.domains.contains(&domain) && self.purposes.iter().any(|p| p == purpose)
    }
}

/// The federation's shared visibility service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VisibilityService {
    pub did: String,
    pub endpoint: String,
}

/// Who may approve a manifest: `threshold` distinct signatures out of `keys` (verification
/// method ids of did:key governance keys). Services configure it; manifests carry the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Governance {
    pub threshold: u32,
    pub keys: Vec<String>,
}

impl Governance {
    /// Threshold between 1 and the number of keys; every key a distinct did:key method.
    pub fn validate(&self) -> Result<(), RegistryError> {
        self.validate_at("governance")
    }

    fn validate_at(&self, prefix: &str) -> Result<(), RegistryError> {
        if self.threshold == 0 {
            return Err(invalid(format!("{prefix}.threshold"), "must be at least 1"));
        }
        if usize::try_from(self.threshold).unwrap_or(usize::MAX) > self.keys.len() {
            return Err(invalid(
                format!("{prefix}.threshold"),
                format!(
                    "{} exceeds the number of governance keys ({})",
                    self.threshold,
                    self.keys.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let field = || format!("{prefix}.keys[{i}]");
            governance_key_jwk(key).map_err(|reason| invalid(field(), reason))?;
            if !seen.insert(key.as_str()) {
                return Err(invalid(field(), "duplicate governance key"));
            }
        }
        Ok(())
    }

    fn allows(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k == kid)
    }
}

/// The registry document all members agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// The federation's name.
    pub federation: String,
    /// Increases with every change; holders refuse anything older than what they hold.
    pub version: u64,
    pub issued_at: String,
    #[serde(default)]
    pub members: Vec<Member>,
    #[serde(default)]
    pub trusted_issuers: BTreeMap<CredentialKind, Vec<String>>,
    #[serde(default)]
    pub contracts: Vec<Contract>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<VisibilityService>,
    pub governance: Governance,
}

impl Manifest {
    /// An empty manifest at version 1, issued now.
    pub fn new(federation: &str, governance: Governance) -> Self {
        Manifest {
            federation: federation.to_string(),
            version: 1,
            issued_at: crate::time::rfc3339(Utc::now()),
            members: Vec::new(),
            trusted_issuers: BTreeMap::new(),
            contracts: Vec::new(),
            visibility: None,
            governance,
        }
    }

    /// Moves to the next version, issued now (after an edit).
    pub fn bump_version(&mut self) -> Result<(), RegistryError> {
        self.version = self
            .version
            .checked_add(1)
            .ok_or_else(|| invalid("version", "cannot be increased any further"))?;
        self.issued_at = crate::time::rfc3339(Utc::now());
        Ok(())
    }

    /// Parses a manifest with the strict JSON rules (no duplicate keys, bounded depth, no
    /// unknown fields). Does not [`validate`](Self::validate).
    pub fn from_json(bytes: &[u8]) -> Result<Self, RegistryError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge);
        }
        let value =
            crate::json::parse_strict(bytes).map_err(|source| RegistryError::NotStrictJson {
                part: ManifestPart::Manifest,
                source,
            })?;
        serde_json::from_value(value).map_err(|e| RegistryError::Malformed(e.to_string()))
    }

    /// The signed form of the manifest: JSON with object keys sorted and no whitespace, so
    /// that equal manifests have equal bytes.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, RegistryError> {
        let value = serde_json::to_value(self).map_err(|e| RegistryError::Sign(e.to_string()))?;
        serde_json::to_vec(&sorted(value)).map_err(|e| RegistryError::Sign(e.to_string()))
    }

    /// Checks the manifest's rules; the error names the offending field. `dev_mode` allows
    /// plain http URLs to loopback hosts.
    pub fn validate(&self, dev_mode: bool) -> Result<(), RegistryError> {
        if self.federation.trim().is_empty() {
            return Err(invalid("federation", "must not be empty"));
        }
        if self.version == 0 {
            return Err(invalid("version", "must be 1 or more"));
        }
        if crate::time::parse(&self.issued_at).is_none() {
            return Err(invalid("issuedAt", "must be an RFC 3339 date-time"));
        }
        let mut dids = HashSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let field = |name: &str| format!("members[{i}].{name}");
            check_did_web(&m.did).map_err(|r| invalid(field("did"), r))?;
            if !dids.insert(m.did.as_str()) {
                return Err(invalid(field("did"), format!("{} is listed twice", m.did)));
            }
            if m.name.trim().is_empty() {
                return Err(invalid(field("name"), "must not be empty"));
            }
            if m.roles.is_empty() {
                return Err(invalid(field("roles"), "a member needs at least one role"));
            }
            let mut roles = HashSet::new();
            if let Some(dup) = m.roles.iter().find(|r| !roles.insert(**r)) {
                return Err(invalid(field("roles"), format!("{dup} is listed twice")));
            }
            check_url(&m.base_url, dev_mode).map_err(|r| invalid(field("baseUrl"), r))?;
            let endpoints = [
                ("gateway", &m.endpoints.gateway),
                ("issuer", &m.endpoints.issuer),
                ("visibility", &m.endpoints.visibility),
            ];
            for (name, url) in endpoints {
                if let Some(url) = url {
                    check_url(url, dev_mode)
                        .map_err(|r| invalid(field(&format!("endpoints.{name}")), r))?;
                }
            }
        }
        let member = |field: String, did: &str| {
            if dids.contains(did) {
                Ok(())
            } else {
                Err(invalid(field, format!("{did} is not a member")))
            }
        };
        for (kind, issuers) in &self.trusted_issuers {
            let mut seen = HashSet::new();
            for (j, issuer) in issuers.iter().enumerate() {
                let field = format!("trustedIssuers.{kind}[{j}]");
                member(field.clone(), issuer)?;
                if !seen.insert(issuer.as_str()) {
                    return Err(invalid(field, format!("{issuer} is listed twice")));
                }
            }
        }
        for (i, c) in self.contracts.iter().enumerate() {
            let field = |name: &str| format!("contracts[{i}].{name}");
            member(field("custodian"), &c.custodian)?;
            member(field("requester"), &c.requester)?;
            if c.custodian == c.requester {
                return Err(invalid(
                    field("requester"),
                    "custodian and requester must be different organizations",
                ));
            }
            if c.domains.is_empty() {
                return Err(invalid(field("domains"), "must name at least one domain"));
            }
            if c.purposes.is_empty() {
                return Err(invalid(field("purposes"), "must name at least one purpose"));
            }
            for (j, p) in c.purposes.iter().enumerate() {
                if !is_purpose_code(p) {
                    return Err(invalid(
                        format!("contracts[{i}].purposes[{j}]"),
                        format!("{p:?} is not an HL7 PurposeOfUse code (e.g. TREAT, HRESCH)"),
                    ));
                }
            }
            if let Some(t) = &c.expires {
                if crate::time::parse(t).is_none() {
                    return Err(invalid(field("expires"), "must be an RFC 3339 date-time"));
                }
            }
        }
        if let Some(v) = &self.visibility {
            member("visibility.did".into(), &v.did)?;
            check_url(&v.endpoint, dev_mode).map_err(|r| invalid("visibility.endpoint", r))?;
        }
        self.governance.validate_at("governance")
    }
}

/// A copy of `value` with every object's keys in sorted order, whatever map type
/// serde_json was built with.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn check_did_web(did: &str) -> Result<(), ValueError> {
    let Some(rest) = did.strip_prefix("did:web:") else {
        return Err(ValueError::NotDidWeb(did.to_string()));
    };
    let ok_segment = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '%'))
    };
    if rest.split(':').all(ok_segment) {
        Ok(())
    } else {
        Err(ValueError::BadDidWeb(did.to_string()))
    }
}

fn check_url(s: &str, dev_mode: bool) -> Result<(), ValueError> {
    let url = reqwest::Url::parse(s).map_err(|e| ValueError::NotUrl {
        url: s.to_string(),
        reason: e.to_string(),
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ValueError::UrlCredentials(s.to_string()));
    }
    crate::client::loopback_only_http(&url, dev_mode)
        .map_err(|_| ValueError::NotHttps(s.to_string()))
}

fn is_purpose_code(p: &str) -> bool {
    let mut chars = p.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && p.len() <= 32
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// The public key of a governance key, decoded locally from its did:key method id
/// (`did:key:z…#z…`). Only Ed25519 and P-256 keys are accepted.
fn governance_key_jwk(vm: &str) -> Result<JWK, ValueError> {
    let not_did_key = || ValueError::NotDidKeyMethod(vm.to_string());
    let bad_key = |e: &dyn fmt::Display| ValueError::BadKey {
        method: vm.to_string(),
        reason: e.to_string(),
    };
    let (did, fragment) = vm.split_once('#').ok_or_else(not_did_key)?;
    let msid = did.strip_prefix("did:key:").ok_or_else(not_did_key)?;
    // A did:key has exactly one method, named by the key itself; refusing other fragments
    // keeps one key from being counted under two names.
    if fragment != msid || !msid.starts_with('z') {
        return Err(not_did_key());
    }
    let (_, bytes) = multibase::decode(msid).map_err(|e| bad_key(&e))?;
    let encoded = ssi::multicodec::MultiEncoded::new(&bytes).map_err(|e| bad_key(&e))?;
    match (encoded.codec(), encoded.data().len()) {
        (ssi::multicodec::ED25519_PUB, 32) | (ssi::multicodec::P256_PUB, 33) => {}
        _ => return Err(ValueError::KeyType(vm.to_string())),
    }
    JWK::from_multicodec(encoded).map_err(|e| bad_key(&e))
}

/// The verification method id of a governance key given as a did:key DID or method id.
pub fn governance_key_id(key: &str) -> Result<String, RegistryError> {
    let vm = match key.split_once('#') {
        Some(_) => key.to_string(),
        None => {
            let msid = key.strip_prefix("did:key:").unwrap_or_default();
            format!("{key}#{msid}")
        }
    };
    governance_key_jwk(&vm).map_err(|reason| invalid("governance key", reason))?;
    Ok(vm)
}

// ---------------------------------------------------------------------------------------
// The signed manifest (JWS General JSON Serialization)
// ---------------------------------------------------------------------------------------

fn unb64(s: &str) -> Option<Vec<u8>> {
    crate::b64::decode(s).ok()
}

/// One signature of a [`SignedManifest`]. Unprotected headers are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwsSignature {
    protected: String,
    signature: String,
}

/// A manifest with its governance signatures, as stored and exchanged:
/// `{"payload": b64url(manifest), "signatures": [{"protected": …, "signature": …}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    payload: String,
    signatures: Vec<JwsSignature>,
}

/// A manifest that passed verification, and the governance keys whose signatures counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub signers: Vec<String>,
}

/// Reads a protected header with the header check of every JWS ([`jose::read_protected_header`]):
/// strict JSON, `alg` EdDSA or ES256, `kid` a DID URL, and here nothing else, not even
/// `typ`. Headers that would let a signature bring its own key (`jwk`, `jku`, `x5u`, `x5c`)
/// or change processing (`crit`, `b64`) are refused along with anything unexpected. A
/// governance key is moreover a did:key.
fn read_protected(index: usize, protected: &str) -> Result<(Algorithm, String), RegistryError> {
    let bad = |reason: String| RegistryError::BadHeader { index, reason };
    let header = jose::read_protected_header(protected, &[]).map_err(|e| match e {
        JoseError::Json { source, .. } => RegistryError::NotStrictJson {
            part: ManifestPart::Header(index),
            source,
        },
        JoseError::NotCompact => bad("not base64url".into()),
        other => bad(other.to_string()),
    })?;
    if !header.kid.starts_with("did:key:") {
        return Err(bad("no kid naming a did:key verification method".into()));
    }
    Ok((header.alg, header.kid))
}

fn jws_alg_name(alg: KeyAlgorithm) -> &'static str {
    match alg {
        KeyAlgorithm::Ed25519 => "EdDSA",
        KeyAlgorithm::P256 => "ES256",
    }
}

impl SignedManifest {
    /// Signs `manifest` with each key (did:key governance keys). The manifest is checked
    /// first with the lenient (dev) URL rule; verifiers check it again with their own.
    pub fn sign(manifest: &Manifest, keys: &[&KeyPair]) -> Result<Self, RegistryError> {
        manifest.validate(true)?;
        let mut signed = SignedManifest {
            payload: b64(&manifest.canonical_bytes()?),
            signatures: Vec::new(),
        };
        for key in keys {
            signed.add_signature(key)?;
        }
        Ok(signed)
    }

    /// Adds one governance signature over the same payload (co-signing).
    pub fn add_signature(&mut self, key: &KeyPair) -> Result<(), RegistryError> {
        let vm = key.verification_method();
        if !key.did().starts_with("did:key:") || governance_key_jwk(vm).is_err() {
            return Err(RegistryError::NotGovernanceKey(vm.to_string()));
        }
        if self.signers().iter().any(|s| s == vm) {
            return Err(RegistryError::AlreadySigned(vm.to_string()));
        }
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(RegistryError::MalformedJws(format!(
                "more than {MAX_SIGNATURES} signatures"
            )));
        }
        let header = serde_json::json!({ "alg": jws_alg_name(key.algorithm()), "kid": vm });
        let header =
            serde_json::to_vec(&sorted(header)).map_err(|e| RegistryError::Sign(e.to_string()))?;
        let protected = b64(&header);
        let input = format!("{protected}.{}", self.payload);
        let signature = ssi::claims::jws::sign_bytes(
            key.algorithm().jws_algorithm(),
            input.as_bytes(),
            key.jwk(),
        )
        .map_err(|e| RegistryError::Sign(e.to_string()))?;
        self.signatures.push(JwsSignature {
            protected,
            signature: b64(&signature),
        });
        Ok(())
    }

    /// The key ids the signatures claim, unverified (for display and duplicate checks).
    pub fn signers(&self) -> Vec<String> {
        self.signatures
            .iter()
            .enumerate()
            .filter_map(|(i, s)| read_protected(i, &s.protected).ok().map(|(_, kid)| kid))
            .collect()
    }

    pub fn signature_count(&self) -> usize {
        self.signatures.len()
    }

    /// The manifest inside, parsed but neither verified nor validated. For display only.
    pub fn unverified_manifest(&self) -> Result<Manifest, RegistryError> {
        let bytes = unb64(&self.payload)
            .ok_or_else(|| RegistryError::MalformedJws("payload is not base64url".into()))?;
        Manifest::from_json(&bytes)
    }

    /// Whether this carries exactly `manifest` (same content, whatever the byte layout).
    pub fn carries(&self, manifest: &Manifest) -> Result<bool, RegistryError> {
        Ok(self.unverified_manifest()?.canonical_bytes()? == manifest.canonical_bytes()?)
    }

    /// Verifies against the pinned `governance` and returns the validated manifest (strict
    /// URL rule: https only). See [`verify_detailed`](Self::verify_detailed).
    pub fn verify(&self, governance: &Governance) -> Result<Manifest, RegistryError> {
        self.verify_detailed(governance, false).map(|v| v.manifest)
    }

    /// Verifies against the pinned `governance`, never against the governance the manifest
    /// names. Every signature must come from a governance key and verify (one unknown or bad
    /// signature refuses the whole manifest); at least `threshold` distinct keys must have
    /// signed; then the payload is parsed and validated.
    pub fn verify_detailed(
        &self,
        governance: &Governance,
        dev_mode: bool,
    ) -> Result<VerifiedManifest, RegistryError> {
        // A pinned threshold of 0 would accept an unsigned manifest.
        governance.validate()?;
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(RegistryError::MalformedJws(format!(
                "more than {MAX_SIGNATURES} signatures"
            )));
        }
        let payload = unb64(&self.payload)
            .ok_or_else(|| RegistryError::MalformedJws("payload is not base64url".into()))?;
        let mut valid = BTreeSet::new();
        for (index, sig) in self.signatures.iter().enumerate() {
            let (alg, kid) = read_protected(index, &sig.protected)?;
            if !governance.allows(&kid) {
                return Err(RegistryError::UnknownSigner(kid));
            }
            let bad = |reason: String| RegistryError::BadSignature {
                kid: kid.clone(),
                reason,
            };
            let key = governance_key_jwk(&kid).map_err(|e| bad(e.to_string()))?;
            let key_alg = match &key.params {
                ssi::jwk::Params::OKP(_) => Algorithm::EdDSA,
                _ => Algorithm::ES256,
            };
            if key_alg != alg {
                return Err(bad("alg does not match the key's type".into()));
            }
            let signature = unb64(&sig.signature)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("signature is not base64url".into()))?;
            let input = format!("{}.{}", sig.protected, self.payload);
            ssi::claims::jws::verify_bytes(alg, input.as_bytes(), &key, &signature)
                .map_err(|e| bad(e.to_string()))?;
            valid.insert(kid);
        }
        let have = u32::try_from(valid.len()).unwrap_or(u32::MAX);
        if have < governance.threshold {
            return Err(RegistryError::BelowThreshold {
                have,
                need: governance.threshold,
            });
        }
        let manifest = Manifest::from_json(&payload)?;
        manifest.validate(dev_mode)?;
        Ok(VerifiedManifest {
            manifest,
            signers: valid.into_iter().collect(),
        })
    }

    /// Parses a signed manifest (strict JSON, size-limited). Nothing is verified.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RegistryError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::TooLarge);
        }
        let value =
            crate::json::parse_strict(bytes).map_err(|source| RegistryError::NotStrictJson {
                part: ManifestPart::SignedFile,
                source,
            })?;
        serde_json::from_value(value).map_err(|e| RegistryError::MalformedJws(e.to_string()))
    }

    pub fn to_json_pretty(&self) -> Result<Vec<u8>, RegistryError> {
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|e| RegistryError::Sign(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Reads a signed manifest file (at most [`MAX_MANIFEST_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        Self::from_json(&read_limited(path)?)
    }

    /// Writes pretty JSON, replacing the file in one rename so that a watcher never reads
    /// a half-written manifest.
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        write_atomically(path, &self.to_json_pretty()?)
    }
}

fn io_error(path: &Path, e: impl fmt::Display) -> RegistryError {
    RegistryError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads at most [`MAX_MANIFEST_BYTES`] from a file, refusing anything longer.
pub fn read_limited(path: &Path) -> Result<Vec<u8>, RegistryError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(RegistryError::TooLarge);
    }
    Ok(bytes)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .ok_or_else(|| io_error(path, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // Best effort: the temporary file is garbage either way.
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(path, e));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The registry a service holds
// ---------------------------------------------------------------------------------------

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
    signed: Option<Arc<SignedManifest>>,
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
    journal: Option<sled::Tree>,
}

impl Registry {
    /// A registry trusting `governance` (from the service's configuration). `dev_mode`
    /// accepts manifests with plain http URLs to loopback hosts.
    pub fn new(governance: Governance, dev_mode: bool) -> Self {
        Registry {
            state: RwLock::new(State {
                governance,
                manifest: None,
                signed: None,
            }),
            install_lock: Mutex::new(()),
            dev_mode,
            journal: None,
        }
    }

    /// [`Registry::with_journal`] on the `manifest_journal` tree of a service's database.
    pub fn journaled_in(
        db: &sled::Db,
        governance: Governance,
        dev_mode: bool,
    ) -> Result<Self, RegistryError> {
        let journal = db
            .open_tree("manifest_journal")
            .map_err(RegistryError::JournalOpen)?;
        Ok(Registry::with_journal(governance, dev_mode, journal))
    }

    /// [`Registry::new`] that keeps every installed manifest in `journal` and first
    /// replays what it holds, in version order, each verified under the governance in
    /// force at its turn (starting from the configured one): nothing in the journal is
    /// trusted for being there. Replay stops at the first entry that does not verify.
    pub fn with_journal(governance: Governance, dev_mode: bool, journal: sled::Tree) -> Self {
        let registry = Registry::new(governance, dev_mode);
        let mut replayed = 0u32;
        for entry in journal.iter().values() {
            let verdict = entry
                .map_err(RegistryError::JournalRead)
                // Read as a fetched manifest is: strict JSON, size-limited.
                .and_then(|bytes| SignedManifest::from_json(&bytes))
                .and_then(|signed| registry.install(&signed));
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
        Registry {
            journal: Some(journal),
            ..registry
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// The governance the next manifest must satisfy.
    pub fn governance(&self) -> Option<Governance> {
        self.state.read().ok().map(|s| s.governance.clone())
    }

    /// The manifest in force, if any.
    pub fn current(&self) -> Option<Arc<Manifest>> {
        self.state.read().ok().and_then(|s| s.manifest.clone())
    }

    /// The signed form of the manifest in force (to pass on to peers).
    pub fn current_signed(&self) -> Option<Arc<SignedManifest>> {
        self.state.read().ok().and_then(|s| s.signed.clone())
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
                .insert(version.to_be_bytes(), bytes)
                .and_then(|_| journal.flush())
                .map_err(|e| RegistryError::Journal(e.to_string()))?;
        }
        let mut state = self.state.write().map_err(|_| RegistryError::Poisoned)?;
        state.governance = manifest.governance.clone();
        state.manifest = Some(Arc::new(manifest));
        state.signed = Some(Arc::new(signed.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::did::DidError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn roles_parse_by_name_and_an_unknown_one_lists_them_all() {
        assert_eq!("irb".parse::<Role>(), Ok(Role::Irb));
        let err = "janitor".parse::<Role>().unwrap_err();
        assert_eq!(err.value, "janitor");
        assert_eq!(
            err.to_string(),
            "unknown role \"janitor\" (one of custodian, requester, credentialing-office, \
             consent-registry, irb, research-network, auditor, visibility)"
        );
        assert!("jwt".parse::<crate::credentials::ProofFormat>().is_ok());
        assert_eq!(
            "cbor"
                .parse::<crate::credentials::ProofFormat>()
                .unwrap_err()
                .to_string(),
            "unknown proof format \"cbor\" (data-integrity or jwt)"
        );
    }

    const OFFICE: &str = "did:web:office.test";
    const HOSPITAL_A: &str = "did:web:hospital-a.test";
    const HOSPITAL_B: &str = "did:web:hospital-b.test";

    fn keys(n: usize) -> Vec<KeyPair> {
        (0..n)
            .map(|i| {
                let alg = if i % 2 == 0 {
                    KeyAlgorithm::Ed25519
                } else {
                    KeyAlgorithm::P256
                };
                KeyPair::generate_did_key(alg).unwrap()
            })
            .collect()
    }

    fn governance(threshold: u32, keys: &[KeyPair]) -> Governance {
        Governance {
            threshold,
            keys: keys
                .iter()
                .map(|k| k.verification_method().to_string())
                .collect(),
        }
    }

    fn member(did: &str, roles: &[Role]) -> Member {
        let host = did.trim_start_matches("did:web:");
        Member {
            did: did.to_string(),
            name: host.to_string(),
            roles: roles.to_vec(),
            endpoints: Endpoints {
                gateway: Some(format!("https://{host}/gateway")),
                ..Endpoints::default()
            },
            base_url: format!("https://{host}"),
        }
    }

    fn manifest(version: u64, gov: Governance) -> Manifest {
        let mut m = Manifest::new("test federation", gov);
        m.version = version;
        // Fixed, so that two manifests built for one version are the same document even
        // when a second ticks between them.
        m.issued_at = "2026-03-01T10:00:00Z".into();
        m.members = vec![
            member(OFFICE, &[Role::CredentialingOffice]),
            member(HOSPITAL_A, &[Role::Custodian, Role::Requester]),
            member(HOSPITAL_B, &[Role::Custodian]),
        ];
        m.trusted_issuers
            .insert(CredentialKind::ClinicianPrivilege, vec![OFFICE.into()]);
        m.contracts.push(Contract {
            custodian: HOSPITAL_B.into(),
            requester: HOSPITAL_A.into(),
            domains: vec![Domain::Clinical],
            purposes: vec!["TREAT".into()],
            expires: None,
        });
        m
    }

    fn tamper(signed: &SignedManifest, edit: impl FnOnce(&mut Value)) -> SignedManifest {
        let mut payload: Value = serde_json::from_slice(&unb64(&signed.payload).unwrap()).unwrap();
        edit(&mut payload);
        SignedManifest {
            payload: b64(&serde_json::to_vec(&payload).unwrap()),
            signatures: signed.signatures.clone(),
        }
    }

    #[test]
    fn two_of_three_is_accepted() {
        let k = keys(3);
        let gov = governance(2, &k);
        let m = manifest(1, gov.clone());
        let signed = SignedManifest::sign(&m, &[&k[0], &k[2]]).unwrap();
        let verified = signed.verify_detailed(&gov, false).unwrap();
        assert_eq!(verified.manifest, m);
        assert_eq!(verified.signers.len(), 2);
        // Co-signing one by one gives the same result, P-256 key included.
        let mut one_by_one = SignedManifest::sign(&m, &[&k[1]]).unwrap();
        one_by_one.add_signature(&k[2]).unwrap();
        assert_eq!(one_by_one.verify(&gov).unwrap(), m);
    }

    #[test]
    fn one_of_three_is_below_threshold() {
        let k = keys(3);
        let gov = governance(2, &k);
        let signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[1]]).unwrap();
        assert_eq!(
            signed.verify(&gov).unwrap_err(),
            RegistryError::BelowThreshold { have: 1, need: 2 }
        );
        let unsigned = SignedManifest::sign(&manifest(1, gov.clone()), &[]).unwrap();
        assert_eq!(
            unsigned.verify(&gov).unwrap_err(),
            RegistryError::BelowThreshold { have: 0, need: 2 }
        );
    }

    #[test]
    fn duplicate_signatures_of_one_key_count_once() {
        let k = keys(3);
        let gov = governance(2, &k);
        let mut signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0]]).unwrap();
        assert_eq!(
            signed.add_signature(&k[0]).unwrap_err(),
            RegistryError::AlreadySigned(k[0].verification_method().into())
        );
        // Smuggled in by hand, a copy still counts once.
        let copy = signed.signatures[0].clone();
        signed.signatures.push(copy);
        assert_eq!(
            signed.verify(&gov).unwrap_err(),
            RegistryError::BelowThreshold { have: 1, need: 2 }
        );
    }

    #[test]
    fn unknown_signer_is_refused() {
        let k = keys(3);
        let outsider = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let gov = governance(2, &k);
        let signed =
            SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0], &k[1], &outsider]).unwrap();
        assert_eq!(
            signed.verify(&gov).unwrap_err(),
            RegistryError::UnknownSigner(outsider.verification_method().into())
        );
    }

    #[test]
    fn a_manifest_cannot_appoint_its_own_governors() {
        let pinned = keys(3);
        let usurpers = keys(2);
        // The manifest names the usurpers as governance and is signed by them.
        let m = manifest(1, governance(2, &usurpers));
        let signed = SignedManifest::sign(&m, &[&usurpers[0], &usurpers[1]]).unwrap();
        assert!(matches!(
            signed.verify(&governance(2, &pinned)).unwrap_err(),
            RegistryError::UnknownSigner(_)
        ));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let k = keys(3);
        let gov = governance(2, &k);
        let signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0], &k[1]]).unwrap();
        let forged = tamper(&signed, |p| {
            p["members"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "did": "did:web:evil.test", "name": "Evil", "roles": ["custodian"],
                    "baseUrl": "https://evil.test"
                }));
        });
        assert!(matches!(
            forged.verify(&gov).unwrap_err(),
            RegistryError::BadSignature { .. }
        ));
        // A truncated signature also fails.
        let mut truncated = signed.clone();
        truncated.signatures[0].signature.truncate(20);
        assert!(matches!(
            truncated.verify(&gov).unwrap_err(),
            RegistryError::BadSignature { .. }
        ));
    }

    #[test]
    fn hostile_protected_headers_are_refused() {
        let k = keys(2);
        let gov = governance(1, &k);
        let signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0]]).unwrap();
        let with_header = |h: Value| SignedManifest {
            payload: signed.payload.clone(),
            signatures: vec![JwsSignature {
                protected: b64(&serde_json::to_vec(&h).unwrap()),
                signature: signed.signatures[0].signature.clone(),
            }],
        };
        let kid = k[0].verification_method();
        for extra in ["jwk", "jku", "x5u", "x5c", "crit", "b64", "typ"] {
            let mut h = serde_json::json!({"alg": "EdDSA", "kid": kid});
            h[extra] = serde_json::json!("x");
            assert!(
                matches!(
                    with_header(h).verify(&gov).unwrap_err(),
                    RegistryError::BadHeader { index: 0, .. }
                ),
                "{extra}"
            );
        }
        for alg in ["none", "HS256", "RS256"] {
            let h = serde_json::json!({"alg": alg, "kid": kid});
            assert!(matches!(
                with_header(h).verify(&gov).unwrap_err(),
                RegistryError::BadHeader { .. }
            ));
        }
        // An Ed25519 key's signature relabelled ES256 is refused.
        let h = serde_json::json!({"alg": "ES256", "kid": kid});
        assert!(matches!(
            with_header(h).verify(&gov).unwrap_err(),
            RegistryError::BadSignature { .. }
        ));
        // Unprotected headers are not part of the accepted format.
        let mut raw = serde_json::to_value(&signed).unwrap();
        raw["signatures"][0]["header"] = serde_json::json!({"kid": kid});
        assert!(matches!(
            SignedManifest::from_json(&serde_json::to_vec(&raw).unwrap()).unwrap_err(),
            RegistryError::MalformedJws(_)
        ));
    }

    /// A manifest whose governance key signed exactly these bytes.
    fn signed_over(header: &[u8], payload: &[u8], key: &KeyPair) -> SignedManifest {
        let protected = b64(header);
        let payload = b64(payload);
        let input = format!("{protected}.{payload}");
        let signature = ssi::claims::jws::sign_bytes(
            key.algorithm().jws_algorithm(),
            input.as_bytes(),
            key.jwk(),
        )
        .unwrap();
        SignedManifest {
            payload,
            signatures: vec![JwsSignature {
                protected,
                signature: b64(&signature),
            }],
        }
    }

    /// `doc` with `key` twice (`first` first), invalid UTF-8, a lone surrogate, or
    /// nesting beyond the limit.
    fn ambiguous(doc: &[u8], key: &str, first: &str) -> Vec<(&'static str, Vec<u8>)> {
        let text = std::str::from_utf8(doc).unwrap();
        let needle = format!("\"{key}\":");
        let at = text.find(&needle).unwrap();
        let member = |value: &[u8]| [b"{\"note\":", value, b",", &doc[1..]].concat();
        let deep = format!("{}{}", "[".repeat(80), "]".repeat(80));
        vec![
            (
                "duplicate key",
                format!("{}{needle}{first},{}", &text[..at], &text[at..]).into_bytes(),
            ),
            ("invalid UTF-8", member(b"\"\xff\"")),
            ("lone surrogate", member(br#""\udfff""#)),
            ("too deep", member(deep.as_bytes())),
        ]
    }

    #[test]
    fn manifests_signed_over_ambiguous_json_are_refused_as_format() {
        let k = keys(1);
        let gov = governance(1, &k);
        let payload = manifest(1, gov.clone()).canonical_bytes().unwrap();
        let kid = k[0].verification_method();
        let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
        // The same bytes, signed the same way, verify: what fails below is the JSON.
        signed_over(header.as_bytes(), &payload, &k[0])
            .verify(&gov)
            .unwrap();

        // "No contracts" first, the contracts second: a last-wins reader sees contracts.
        for (case, hostile) in ambiguous(&payload, "contracts", "[]") {
            let err = signed_over(header.as_bytes(), &hostile, &k[0])
                .verify(&gov)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::NotStrictJson {
                        part: ManifestPart::Manifest,
                        ..
                    }
                ),
                "{case}: {err}"
            );
            assert_eq!(err.check(), Some(Check::Format), "{case}");
        }
        // The protected header, read with the same check as every JWS header.
        for (case, hostile) in ambiguous(header.as_bytes(), "alg", "\"none\"") {
            let err = signed_over(&hostile, &payload, &k[0])
                .verify(&gov)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::NotStrictJson {
                        part: ManifestPart::Header(0),
                        ..
                    }
                ),
                "{case}: {err}"
            );
            assert_eq!(err.check(), Some(Check::Format), "{case}");
        }
        // The signed file as stored or fetched.
        let file = signed_over(header.as_bytes(), &payload, &k[0])
            .to_json_pretty()
            .unwrap();
        let file = String::from_utf8(file).unwrap().replacen(
            "\"payload\":",
            "\"payload\": \"e30\",\n  \"payload\":",
            1,
        );
        let err = SignedManifest::from_json(file.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::NotStrictJson {
                    part: ManifestPart::SignedFile,
                    ..
                }
            ),
            "{err}"
        );
        // A hostile header that is well-formed is a proof failure, as for credentials.
        let err = signed_over(
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","jwk":{{}}}}"#).as_bytes(),
            &payload,
            &k[0],
        )
        .verify(&gov)
        .unwrap_err();
        assert!(
            matches!(err, RegistryError::BadHeader { index: 0, .. }),
            "{err}"
        );
        assert_eq!(err.check(), Some(Check::Proof));
    }

    #[test]
    fn pinned_governance_must_be_sound() {
        let k = keys(2);
        let signed = SignedManifest::sign(&manifest(1, governance(1, &k)), &[]).unwrap();
        for gov in [
            governance(0, &k),
            governance(3, &k),
            Governance {
                threshold: 1,
                keys: vec!["did:web:gov.test#key-1".into()],
            },
            Governance {
                threshold: 1,
                keys: vec![
                    k[0].verification_method().into(),
                    k[0].verification_method().into(),
                ],
            },
        ] {
            assert!(matches!(
                signed.verify(&gov).unwrap_err(),
                RegistryError::Invalid { .. }
            ));
        }
        assert_eq!(
            governance_key_id(k[0].did()).unwrap(),
            k[0].verification_method()
        );
    }

    #[test]
    fn registry_refuses_rollback_and_equivocation_and_keeps_the_manifest() {
        let k = keys(3);
        let gov = governance(2, &k);
        let registry = Registry::new(gov.clone(), false);
        assert!(!registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));
        let v2 = SignedManifest::sign(&manifest(2, gov.clone()), &[&k[0], &k[1]]).unwrap();
        assert_eq!(
            registry.install(&v2).unwrap(),
            InstallOutcome::Installed { version: 2 }
        );
        assert!(registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));

        let mut older = manifest(1, gov.clone());
        older.trusted_issuers.clear();
        let v1 = SignedManifest::sign(&older, &[&k[0], &k[1]]).unwrap();
        assert_eq!(
            registry.install(&v1).unwrap_err(),
            RegistryError::Rollback {
                held: 2,
                offered: 1
            }
        );
        assert!(registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));
        assert_eq!(registry.current().unwrap().version, 2);

        // Same version, other signers: unchanged. Same version, other content: refused.
        let v2_again = SignedManifest::sign(&manifest(2, gov.clone()), &[&k[1], &k[2]]).unwrap();
        assert_eq!(
            registry.install(&v2_again).unwrap(),
            InstallOutcome::Unchanged { version: 2 }
        );
        let mut other = manifest(2, gov.clone());
        other.trusted_issuers.clear();
        let v2_other = SignedManifest::sign(&other, &[&k[0], &k[2]]).unwrap();
        assert_eq!(
            registry.install(&v2_other).unwrap_err(),
            RegistryError::Equivocation { version: 2 }
        );
        // A badly signed newer one is refused too.
        let v3 = SignedManifest::sign(&manifest(3, gov.clone()), &[&k[0]]).unwrap();
        assert!(matches!(
            registry.install(&v3).unwrap_err(),
            RegistryError::BelowThreshold { .. }
        ));
        assert!(registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));
        assert_eq!(registry.current().unwrap().version, 2);
    }

    #[test]
    fn governance_rotates_only_through_a_manifest_signed_by_the_old_governance() {
        let old = keys(3);
        let new = keys(2);
        let registry = Registry::new(governance(2, &old), false);
        // v1 hands governance to the new keys, approved by the old ones.
        let v1 =
            SignedManifest::sign(&manifest(1, governance(2, &new)), &[&old[0], &old[1]]).unwrap();
        registry.install(&v1).unwrap();
        assert_eq!(registry.governance().unwrap(), governance(2, &new));
        // From then on the old keys alone no longer count.
        let by_old =
            SignedManifest::sign(&manifest(2, governance(2, &new)), &[&old[0], &old[1]]).unwrap();
        assert!(matches!(
            registry.install(&by_old).unwrap_err(),
            RegistryError::UnknownSigner(_)
        ));
        let by_new =
            SignedManifest::sign(&manifest(2, governance(2, &new)), &[&new[0], &new[1]]).unwrap();
        assert_eq!(
            registry.install(&by_new).unwrap(),
            InstallOutcome::Installed { version: 2 }
        );
    }

    #[test]
    fn registry_queries() {
        let k = keys(1);
        let gov = governance(1, &k);
        let mut m = manifest(1, gov.clone());
        m.members[1].base_url = "https://hospital-a.test/fed".into();
        m.contracts.push(Contract {
            custodian: HOSPITAL_B.into(),
            requester: HOSPITAL_A.into(),
            domains: vec![Domain::Billing],
            purposes: vec!["HPAYMT".into()],
            expires: Some("2001-01-01T00:00:00Z".into()),
        });
        let registry = Registry::new(gov, false);
        registry
            .install(&SignedManifest::sign(&m, &[&k[0]]).unwrap())
            .unwrap();
        let contracts = registry.contracts_between(HOSPITAL_B, HOSPITAL_A);
        assert_eq!(contracts.len(), 1, "the expired contract is left out");
        assert!(contracts[0].covers(Domain::Clinical, "TREAT"));
        assert!(registry
            .contracts_between(HOSPITAL_A, HOSPITAL_B)
            .is_empty());
        assert_eq!(registry.member(OFFICE).unwrap().name, "office.test");
        assert!(registry.member("did:web:nobody.test").is_none());
        let custodians: Vec<String> = registry
            .members_with_role(Role::Custodian)
            .into_iter()
            .map(|m| m.did)
            .collect();
        assert_eq!(custodians, vec![HOSPITAL_A, HOSPITAL_B]);
        let map = registry.web_allow_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map[HOSPITAL_A].as_str(), "https://hospital-a.test/fed/");
        assert_eq!(map[OFFICE].as_str(), "https://office.test/");
        assert!(!registry.is_trusted(CredentialKind::ResearchStudy, OFFICE));
        assert!(!registry.is_trusted(CredentialKind::ClinicianPrivilege, HOSPITAL_A));
    }

    #[test]
    fn schema_violations_are_refused() {
        let k = keys(2);
        let gov = governance(1, &k);
        let good = manifest(1, gov.clone());
        good.validate(false).unwrap();

        let mut raw = serde_json::to_value(&good).unwrap();
        raw["extra"] = serde_json::json!(true);
        let err = Manifest::from_json(&serde_json::to_vec(&raw).unwrap()).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let mut raw = serde_json::to_value(&good).unwrap();
        raw["members"][0]["colour"] = serde_json::json!("red");
        assert!(Manifest::from_json(&serde_json::to_vec(&raw).unwrap()).is_err());
        let dup = br#"{"federation":"a","federation":"b"}"#;
        assert!(Manifest::from_json(dup).is_err());

        let field_of = |m: &Manifest, dev: bool| match m.validate(dev) {
            Err(RegistryError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        let mut m = good.clone();
        m.members[1].roles.clear();
        assert_eq!(field_of(&m, false), "members[1].roles");
        let mut m = good.clone();
        m.contracts[0].requester = "did:web:stranger.test".into();
        assert_eq!(field_of(&m, false), "contracts[0].requester");
        let mut m = good.clone();
        m.trusted_issuers.insert(
            CredentialKind::ResearchStudy,
            vec!["did:web:irb.test".into()],
        );
        assert_eq!(
            field_of(&m, false),
            "trustedIssuers.ResearchStudyCredential[0]"
        );
        let mut m = good.clone();
        m.members.push(member(OFFICE, &[Role::Auditor]));
        assert_eq!(field_of(&m, false), "members[3].did");
        let mut m = good.clone();
        m.members[0].did = "did:key:z6Mkabc".into();
        assert_eq!(field_of(&m, false), "members[0].did");
        let mut m = good.clone();
        m.version = 0;
        assert_eq!(field_of(&m, false), "version");
        let mut m = good.clone();
        m.governance.threshold = 3;
        assert_eq!(field_of(&m, false), "governance.threshold");
        let mut m = good.clone();
        m.contracts[0].purposes = vec!["treat me".into()];
        assert_eq!(field_of(&m, false), "contracts[0].purposes[0]");
        let mut m = good.clone();
        m.members[0].endpoints.issuer = Some("http://office.test/issuer".into());
        assert_eq!(field_of(&m, true), "members[0].endpoints.issuer");
        // Plain http to loopback: only in dev mode.
        let mut m = good.clone();
        m.members[0].base_url = "http://127.0.0.1:8443/".into();
        assert_eq!(field_of(&m, false), "members[0].baseUrl");
        m.validate(true).unwrap();
        let mut m = good;
        m.visibility = Some(VisibilityService {
            did: "did:web:elsewhere.test".into(),
            endpoint: "https://elsewhere.test".into(),
        });
        assert_eq!(field_of(&m, false), "visibility.did");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.signed.json");
        let k = keys(2);
        let gov = governance(2, &k);
        let m = manifest(4, gov.clone());
        let signed = SignedManifest::sign(&m, &[&k[0], &k[1]]).unwrap();
        signed.save(&path).unwrap();
        let back = SignedManifest::load(&path).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.verify(&gov).unwrap(), m);
        assert!(back.carries(&m).unwrap());
        assert_eq!(back.signers().len(), 2);
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        std::fs::write(&path, big).unwrap();
        assert_eq!(
            SignedManifest::load(&path).unwrap_err(),
            RegistryError::TooLarge
        );
    }

    #[tokio::test]
    async fn file_watcher_picks_up_a_newer_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.signed.json");
        let k = keys(3);
        let gov = governance(2, &k);
        SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0], &k[1]])
            .unwrap()
            .save(&path)
            .unwrap();
        let registry = Arc::new(Registry::new(gov.clone(), false));
        let resolver = Arc::new(DidResolver::new(false));
        let task = registry.spawn_watch(
            ManifestSource::File(path.clone()),
            Duration::from_millis(50),
            Some(resolver.clone()),
        );
        let wait_for = |version: u64| {
            let registry = registry.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while registry.current().map(|m| m.version) != Some(version) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .is_ok()
            }
        };
        assert!(wait_for(1).await, "v1 was not installed");
        assert!(resolver.web_base(HOSPITAL_A).is_some());

        // A refused file (below threshold) changes nothing.
        let mut bad = manifest(5, gov.clone());
        bad.members.pop();
        bad.contracts.clear();
        SignedManifest::sign(&bad, &[&k[2]])
            .unwrap()
            .save(&path)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(registry.current().unwrap().version, 1);

        let mut v2 = manifest(2, gov.clone());
        v2.members
            .push(member("did:web:newcomer.test", &[Role::Requester]));
        SignedManifest::sign(&v2, &[&k[1], &k[2]])
            .unwrap()
            .save(&path)
            .unwrap();
        assert!(wait_for(2).await, "v2 was not picked up");
        assert!(resolver.web_base("did:web:newcomer.test").is_some());
        task.abort();
    }

    #[tokio::test]
    async fn non_member_did_web_is_refused_without_any_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        let k = keys(1);
        let gov = governance(1, &k);
        let mut m = Manifest::new("loopback", gov.clone());
        m.members.push(Member {
            did: "did:web:member.test".into(),
            name: "Member".into(),
            roles: vec![Role::Custodian],
            endpoints: Endpoints::default(),
            base_url: format!("http://127.0.0.1:{port}/"),
        });
        let registry = Registry::new(gov, true);
        registry
            .install(&SignedManifest::sign(&m, &[&k[0]]).unwrap())
            .unwrap();
        let resolver = DidResolver::new(true);
        // Something configured before the registry is dropped from the map.
        resolver.allow_web(
            &format!("did:web:127.0.0.1%3A{port}"),
            reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
        );
        assert!(registry.apply_to(&resolver));
        let outsider = format!("did:web:127.0.0.1%3A{port}");
        assert_eq!(
            resolver.resolve(&outsider).await.unwrap_err(),
            DidError::NotAllowed(outsider.clone())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        // Control: a resolver that does allow that DID does reach the listener.
        let open = DidResolver::new(true);
        open.allow_web(
            &outsider,
            reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
        );
        assert!(open.resolve(&outsider).await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        server.abort();
    }
}

/// How a service follows the federation's manifest (the `[registry]` table of its config).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A file path (relative to the config file) or an https URL of the signed manifest.
    pub signed: String,
    /// The governance this service pins: k of these keys must sign a manifest.
    pub governance: Governance,
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
}

fn default_poll_secs() -> u64 {
    10
}

impl RegistryConfig {
    /// Whether `signed` names a URL rather than a file.
    pub fn is_url(&self) -> bool {
        self.signed.starts_with("https://") || self.signed.starts_with("http://")
    }

    /// Makes a relative manifest path relative to `base` (the config file's folder).
    pub fn resolve_path(&mut self, base: &Path) {
        if !self.is_url() && Path::new(&self.signed).is_relative() {
            self.signed = base.join(&self.signed).display().to_string();
        }
    }
}
