//! The manifest itself: members and their roles and endpoints, trusted issuers, contracts,
//! the visibility service, governance, and the rules a manifest must satisfy before anyone
//! signs or reads it. Its own file because signing and holding a manifest both build on it,
//! while it knows nothing of signatures.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use ssi::jwk::JWK;

use crate::credentials::{CredentialKind, Domain};
use crate::error::ParseError;
use crate::registry::{invalid, ManifestPart, RegistryError, ValueError, MAX_MANIFEST_BYTES};

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
    const ALL: [Role; 8] = [
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
    pub(crate) fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        match &self.expires {
            None => false,
            Some(t) => crate::time::parse(t).is_none_or(|t| t <= now),
        }
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

    pub(super) fn allows(&self, kid: &str) -> bool {
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
pub(super) fn sorted(value: Value) -> Value {
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
pub(super) fn governance_key_jwk(vm: &str) -> Result<JWK, ValueError> {
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
