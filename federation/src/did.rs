//! DID resolution that never fetches an arbitrary URL.
//!
//! - did:key and did:jwk are decoded locally (a did:jwk is the DID of a bare JWK, which an
//!   OpenID4VCI wallet may prove possession of instead of naming a DID).
//! - did:web is resolved only through an allow-map (DID → base URL), filled from
//!   configuration and, once there is one, from the federation's signed registry. A DID that
//!   is not in the map is refused before any network I/O: a credential must not be able to
//!   make a gateway connect to an address of the credential author's choosing.
//! - Every other method is refused.
//!
//! ssi's verifiers take a resolver; we never hand them a network-capable one. The pipeline
//! resolves every DID it needs first (here), then gives ssi a `StaticDids` holding only
//! those documents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use ssi::dids::{DIDResolver, DID};
use ssi::jwk::JWK;

/// Largest DID document we are willing to read.
const MAX_DID_DOCUMENT_BYTES: usize = 64 * 1024;
/// Most did:key documents kept decoded. A did:key document is a pure function of the DID,
/// so it never goes stale; the bound only stops a stream of fresh holders from growing the
/// map without end.
const MAX_CACHED_DID_KEYS: usize = 4096;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DidError {
    #[error("{0:?} is not a DID")]
    NotADid(String),
    #[error("DID method of {0:?} is not accepted (did:key, did:jwk and did:web only)")]
    UnsupportedMethod(String),
    #[error("invalid did:key {did:?}: {reason}")]
    InvalidDidKey { did: String, reason: String },
    #[error("invalid did:jwk {did:?}: {reason}")]
    InvalidDidJwk { did: String, reason: String },
    #[error("did:web {0:?} is not in the federation's allow-map; it is never fetched")]
    NotAllowed(String),
    #[error("could not fetch the DID document of {did:?}: {reason}")]
    Fetch { did: String, reason: String },
    #[error("DID document of {did:?} is invalid: {reason}")]
    InvalidDocument { did: String, reason: String },
    /// The fetched document is not strict JSON ([`crate::json`]): its keys could be read
    /// differently by another resolver. Named without quoting the document.
    #[error("DID document of {did:?} is not strict JSON: {}", .source.summary())]
    NotStrictJson {
        did: String,
        source: crate::json::StrictJsonError,
    },
    #[error("verification method {0:?} is not in its DID document")]
    UnknownVerificationMethod(String),
    #[error("verification method {vm:?} is not authorized for {relationship}")]
    NotAuthorized { vm: String, relationship: String },
    #[error("verification method {vm:?} has no usable public key: {reason}")]
    BadKey { vm: String, reason: String },
}

/// How a verification method may be used (DID Core verification relationships).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    /// Issuing credentials.
    AssertionMethod,
    /// Signing presentations (proving control of the DID).
    Authentication,
}

impl Relationship {
    fn property(self) -> &'static str {
        match self {
            Relationship::AssertionMethod => "assertionMethod",
            Relationship::Authentication => "authentication",
        }
    }
}

/// The DID part of a DID URL (`did:x:y#frag` → `did:x:y`).
pub fn did_of(did_url: &str) -> &str {
    did_url.split(['#', '?']).next().unwrap_or(did_url)
}

/// Resolves did:key locally and did:web only through its allow-map.
pub struct DidResolver {
    web_allow: RwLock<HashMap<String, reqwest::Url>>,
    /// Documents known without fetching (e.g. this service's own DID).
    pinned: RwLock<HashMap<String, Arc<Value>>>,
    /// did:web documents fetched, with when: each is used for `ttl`, then fetched again.
    cache: Mutex<HashMap<String, (Instant, Arc<Value>)>>,
    /// did:key documents already decoded (no TTL: they cannot change).
    key_docs: Mutex<HashMap<String, Arc<Value>>>,
    /// Public keys of did:key verification methods already decoded, by method id: like
    /// the documents they come from, a pure function of the DID.
    key_jwks: Mutex<HashMap<String, JWK>>,
    ttl: Duration,
    dev_mode: bool,
    client: reqwest::Client,
}

impl DidResolver {
    /// `dev_mode` allows plain http to loopback addresses (tests and the demo).
    pub fn new(dev_mode: bool) -> Self {
        DidResolver {
            web_allow: RwLock::new(HashMap::new()),
            pinned: RwLock::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            key_docs: Mutex::new(HashMap::new()),
            key_jwks: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(300),
            dev_mode,
            client: crate::client::http_client(),
        }
    }

    #[cfg(test)]
    fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Replaces the did:web allow-map (DID → base URL of its `/.well-known/did.json`).
    pub fn set_web_allow_map(&self, map: HashMap<String, reqwest::Url>) {
        if let Ok(mut guard) = self.web_allow.write() {
            *guard = map;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    pub fn allow_web(&self, did: &str, base: reqwest::Url) {
        if let Ok(mut guard) = self.web_allow.write() {
            guard.insert(did.to_string(), base);
        }
        // A document fetched from the old address must not outlive the change.
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(did);
        }
    }

    /// The registered base URL of a did:web member, if any.
    pub fn web_base(&self, did: &str) -> Option<reqwest::Url> {
        self.web_allow.read().ok()?.get(did_of(did)).cloned()
    }

    /// Makes a document known without fetching it (a service's own DID).
    pub fn pin(&self, doc: Value) {
        if let Some(id) = doc.get("id").and_then(Value::as_str) {
            if let Ok(mut guard) = self.pinned.write() {
                guard.insert(id.to_string(), Arc::new(doc.clone()));
            }
        }
    }

    /// Resolves a DID to its document (JSON).
    pub(crate) async fn resolve(&self, did: &str) -> Result<Arc<Value>, DidError> {
        let did = did_of(did);
        let mut parts = did.splitn(3, ':');
        let (scheme, method) = (parts.next(), parts.next());
        if scheme != Some("did") || parts.next().is_none() {
            return Err(DidError::NotADid(did.to_string()));
        }
        if let Some(doc) = self.pinned.read().ok().and_then(|p| p.get(did).cloned()) {
            return Ok(doc);
        }
        match method {
            Some("key") => self.resolve_key(did).await,
            Some("jwk") => resolve_did_jwk(did).map(Arc::new),
            Some("web") => self.resolve_web(did).await,
            _ => Err(DidError::UnsupportedMethod(did.to_string())),
        }
    }

    /// Decodes a did:key once; later resolutions of the same DID share the document, which
    /// spares the hot path a multicodec decode and a JSON round trip per holder and
    /// self-issued consent.
    async fn resolve_key(&self, did: &str) -> Result<Arc<Value>, DidError> {
        if let Some(doc) = self.key_docs.lock().ok().and_then(|m| m.get(did).cloned()) {
            return Ok(doc);
        }
        // Only documents that decoded are kept: a refused DID is refused again every time.
        let doc = Arc::new(resolve_did_key(did).await?);
        if let Ok(mut docs) = self.key_docs.lock() {
            if docs.len() >= MAX_CACHED_DID_KEYS {
                // Starting over is cheap (decoding is local) and keeps the bound strict.
                docs.clear();
            }
            docs.insert(did.to_string(), doc.clone());
        }
        Ok(doc)
    }

    /// How long a fetched did:web document is used before it is fetched again.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn resolve_web(&self, did: &str) -> Result<Arc<Value>, DidError> {
        let base = self
            .web_allow
            .read()
            .ok()
            .and_then(|m| m.get(did).cloned())
            .ok_or_else(|| DidError::NotAllowed(did.to_string()))?;
        if let Some(doc) = self.cached(did) {
            return Ok(doc);
        }
        let url = base
            .join(".well-known/did.json")
            .map_err(|e| DidError::Fetch {
                did: did.to_string(),
                reason: e.to_string(),
            })?;
        crate::client::loopback_only_http(&url, self.dev_mode).map_err(|e| DidError::Fetch {
            did: did.to_string(),
            reason: e.to_string(),
        })?;
        let fetch_err = |reason: String| DidError::Fetch {
            did: did.to_string(),
            reason,
        };
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| fetch_err(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch_err(format!("HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fetch_err(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DID_DOCUMENT_BYTES {
                return Err(fetch_err("document too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let doc = crate::json::parse_strict(&body).map_err(|source| DidError::NotStrictJson {
            did: did.to_string(),
            source,
        })?;
        if doc.get("id").and_then(Value::as_str) != Some(did) {
            return Err(DidError::InvalidDocument {
                did: did.to_string(),
                reason: "its id is not the DID that was asked for".into(),
            });
        }
        let doc = Arc::new(doc);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(did.to_string(), (Instant::now(), doc.clone()));
        }
        Ok(doc)
    }

    fn cached(&self, did: &str) -> Option<Arc<Value>> {
        let cache = self.cache.lock().ok()?;
        let (at, doc) = cache.get(did)?;
        (at.elapsed() < self.ttl).then(|| doc.clone())
    }

    /// Whether `key` is the public key of one of `did`'s verification methods listed for
    /// `relationship` (an SD-JWT's `cnf.jwk` names a key, not a method).
    pub async fn key_is_listed(
        &self,
        did: &str,
        key: &JWK,
        relationship: Relationship,
    ) -> Result<bool, DidError> {
        let doc = self.resolve(did).await?;
        let want = key.to_public().params;
        let listed: Vec<String> = doc
            .get(relationship.property())
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(|m| method_id(&doc, m)).collect())
            .unwrap_or_default();
        Ok(listed.iter().any(|vm| {
            find_verification_method(&doc, vm)
                .and_then(|method| method_public_jwk(vm, method).ok())
                .is_some_and(|jwk| jwk.params == want)
        }))
    }

    /// Resolves the DID of `vm` and returns the method's public key, after checking the
    /// method is listed for `relationship`. ssi does not check relationships; we must.
    pub async fn public_key(
        &self,
        vm: &str,
        relationship: Relationship,
    ) -> Result<(JWK, Arc<Value>), DidError> {
        let doc = self.resolve(did_of(vm)).await?;
        let method = find_verification_method(&doc, vm)
            .ok_or_else(|| DidError::UnknownVerificationMethod(vm.to_string()))?;
        if !has_relationship(&doc, vm, relationship) {
            return Err(DidError::NotAuthorized {
                vm: vm.to_string(),
                relationship: relationship.property().to_string(),
            });
        }
        // A did:key method's key is decoded once (multibase, multicodec, JWK): holders and
        // self-issuing patients sign request after request with the same key.
        let immutable = did_of(vm).starts_with("did:key:");
        if immutable {
            if let Some(jwk) = self.key_jwks.lock().ok().and_then(|m| m.get(vm).cloned()) {
                return Ok((jwk, doc));
            }
        }
        let jwk = method_public_jwk(vm, method)?;
        if immutable {
            if let Ok(mut jwks) = self.key_jwks.lock() {
                if jwks.len() >= MAX_CACHED_DID_KEYS {
                    jwks.clear();
                }
                jwks.insert(vm.to_string(), jwk.clone());
            }
        }
        Ok((jwk, doc))
    }
}

/// Parses a DID as the federation accepts one, without I/O: DID syntax, and either a
/// did:key holding an Ed25519 or P-256 public key that decodes, or a did:web whose
/// method-specific id is a host name (with an optional `%3A` port) and path segments, as
/// the did:web specification defines it. Anything else can never resolve here.
pub fn parse_did(did: &str) -> Result<(), DidError> {
    if DID::new(did.as_bytes()).is_err() {
        return Err(DidError::NotADid(did.to_string()));
    }
    if did.starts_with("did:key:") {
        decode_did_key(did).map(|_| ())
    } else if did.starts_with("did:jwk:") {
        did_jwk_key(did).map(|_| ())
    } else if let Some(msid) = did.strip_prefix("did:web:") {
        if is_did_web_id(msid) {
            Ok(())
        } else {
            Err(DidError::NotADid(did.to_string()))
        }
    } else {
        Err(DidError::UnsupportedMethod(did.to_string()))
    }
}

/// `host[%3Aport](:segment)*`, each host label alphanumeric with inner hyphens, each path
/// segment unreserved characters and never `.` or `..`.
fn is_did_web_id(msid: &str) -> bool {
    let mut segments = msid.split(':');
    let host = segments.next().unwrap_or_default();
    let (name, port) = match host.find("%3A").or_else(|| host.find("%3a")) {
        Some(i) => (&host[..i], Some(&host[i + 3..])),
        None => (host, None),
    };
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    (1..=253).contains(&name.len())
        && name.split('.').all(label_ok)
        && port_ok
        && segments.all(segment_ok)
}

/// The multicodec bytes of a did:key that holds a key we verify with.
fn decode_did_key(did: &str) -> Result<Vec<u8>, DidError> {
    let invalid = |reason: String| DidError::InvalidDidKey {
        did: did.to_string(),
        reason,
    };
    // ssi decodes any multicodec into a document; accept only the two key types we verify,
    // with keys that parse (a valid curve point of the right length).
    let msid = did.strip_prefix("did:key:").unwrap_or_default();
    if !msid.starts_with('z') {
        return Err(invalid("not base58btc multibase".into()));
    }
    let (_, bytes) = multibase::decode(msid).map_err(|e| invalid(e.to_string()))?;
    let encoded = ssi::multicodec::MultiEncoded::new(&bytes).map_err(|e| invalid(e.to_string()))?;
    match (encoded.codec(), encoded.data().len()) {
        (ssi::multicodec::ED25519_PUB, 32) | (ssi::multicodec::P256_PUB, 33) => {}
        (codec, len) => {
            return Err(invalid(format!(
                "multicodec 0x{codec:x} with {len} bytes is not an Ed25519 or P-256 public key"
            )))
        }
    }
    JWK::from_multicodec(encoded).map_err(|e| invalid(e.to_string()))?;
    Ok(bytes)
}

/// The public key a did:jwk holds: base64url of a strict JSON JWK, Ed25519 or P-256, public
/// only (a private member means the key has leaked into an identifier, and is refused).
fn did_jwk_key(did: &str) -> Result<JWK, DidError> {
    let invalid = |reason: &str| DidError::InvalidDidJwk {
        did: did.to_string(),
        reason: reason.to_string(),
    };
    let msid = did.strip_prefix("did:jwk:").unwrap_or_default();
    let bytes = crate::b64::decode(msid).map_err(|_| invalid("not base64url"))?;
    let json = crate::json::parse_strict(&bytes).map_err(|e| invalid(e.summary()))?;
    let obj = json
        .as_object()
        .ok_or_else(|| invalid("not a JSON object"))?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| obj.contains_key(*m))
    {
        return Err(invalid("it holds private key material"));
    }
    let jwk: JWK = serde_json::from_value(json.clone()).map_err(|_| invalid("not a JWK"))?;
    match &jwk.params {
        ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" && p.public_key.0.len() == 32 => {
            ed25519_dalek::VerifyingKey::from_bytes(
                p.public_key
                    .0
                    .as_slice()
                    .try_into()
                    .map_err(|_| invalid("bad Ed25519 key"))?,
            )
            .map_err(|_| invalid("the Ed25519 key is not a curve point"))?;
        }
        ssi::jwk::Params::EC(p) if p.curve.as_deref() == Some("P-256") => {
            // Checks that the point is on the curve.
            ssi::jwk::p256_parse(&jwk_p256_sec1(p).ok_or_else(|| invalid("incomplete P-256 key"))?)
                .map_err(|_| invalid("the P-256 key is not a curve point"))?;
        }
        _ => return Err(invalid("only Ed25519 and P-256 keys are accepted")),
    }
    Ok(jwk)
}

/// The uncompressed SEC1 encoding of a P-256 JWK's point.
fn jwk_p256_sec1(p: &ssi::jwk::ECParams) -> Option<Vec<u8>> {
    let (x, y) = (p.x_coordinate.as_ref()?, p.y_coordinate.as_ref()?);
    if x.0.len() != 32 || y.0.len() != 32 {
        return None;
    }
    let mut out = vec![4u8];
    out.extend_from_slice(&x.0);
    out.extend_from_slice(&y.0);
    Some(out)
}

/// The DID document of a did:jwk (did:jwk method specification): one `#0` method, a
/// `JsonWebKey2020` holding the key, under every signing relationship.
fn resolve_did_jwk(did: &str) -> Result<Value, DidError> {
    if DID::new(did.as_bytes()).is_err() {
        return Err(DidError::NotADid(did.to_string()));
    }
    let jwk = did_jwk_key(did)?;
    let vm = format!("{did}#0");
    Ok(serde_json::json!({
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/suites/jws-2020/v1"
        ],
        "id": did,
        "verificationMethod": [{
            "id": vm,
            "type": "JsonWebKey2020",
            "controller": did,
            "publicKeyJwk": jwk.to_public(),
        }],
        "assertionMethod": [vm],
        "authentication": [vm],
        "capabilityInvocation": [vm],
        "capabilityDelegation": [vm],
    }))
}

/// The did:jwk of a public key (`did:jwk:` + base64url of its JSON, members in the order
/// RFC 7638 lists them, no private members).
pub fn did_jwk_of(jwk: &JWK) -> Result<String, DidError> {
    let public = jwk.to_public();
    let value = match &public.params {
        ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => serde_json::json!({
            "crv": "Ed25519", "kty": "OKP", "x": crate::b64::encode(&p.public_key.0)
        }),
        ssi::jwk::Params::EC(p) if p.curve.as_deref() == Some("P-256") => {
            let (x, y) = p
                .x_coordinate
                .as_ref()
                .zip(p.y_coordinate.as_ref())
                .ok_or_else(|| DidError::InvalidDidJwk {
                    did: String::new(),
                    reason: "incomplete P-256 key".into(),
                })?;
            serde_json::json!({
                "crv": "P-256", "kty": "EC",
                "x": crate::b64::encode(&x.0), "y": crate::b64::encode(&y.0)
            })
        }
        _ => {
            return Err(DidError::InvalidDidJwk {
                did: String::new(),
                reason: "only Ed25519 and P-256 keys are accepted".into(),
            })
        }
    };
    let json = serde_json::to_vec(&value).map_err(|e| DidError::InvalidDidJwk {
        did: String::new(),
        reason: e.to_string(),
    })?;
    Ok(format!("did:jwk:{}", crate::b64::encode(&json)))
}

/// The public key of a DID that holds its key in its name (did:key, did:jwk), decoded
/// locally; any other DID is refused (its keys live in a document).
pub fn local_public_key(did: &str) -> Result<JWK, DidError> {
    let did = did_of(did);
    if did.starts_with("did:key:") {
        let bytes = decode_did_key(did)?;
        let encoded =
            ssi::multicodec::MultiEncoded::new(&bytes).map_err(|e| DidError::InvalidDidKey {
                did: did.to_string(),
                reason: e.to_string(),
            })?;
        JWK::from_multicodec(encoded).map_err(|e| DidError::InvalidDidKey {
            did: did.to_string(),
            reason: e.to_string(),
        })
    } else if did.starts_with("did:jwk:") {
        did_jwk_key(did)
    } else {
        Err(DidError::UnsupportedMethod(did.to_string()))
    }
}

async fn resolve_did_key(did: &str) -> Result<Value, DidError> {
    let invalid = |reason: String| DidError::InvalidDidKey {
        did: did.to_string(),
        reason,
    };
    let parsed = DID::new(did.as_bytes()).map_err(|_| invalid("not a valid DID".into()))?;
    decode_did_key(did)?;
    let out = ssi::dids::DIDKey
        .resolve_representation(parsed, Default::default())
        .await
        .map_err(|e| invalid(e.to_string()))?;
    serde_json::from_slice(&out.document).map_err(|e| invalid(e.to_string()))
}

/// The DID document of a key's own DID: decoded for did:key, built for did:web.
pub(crate) async fn document_for_key(key: &crate::keys::KeyPair) -> Result<Value, DidError> {
    if key.did().starts_with("did:key:") {
        resolve_did_key(key.did()).await
    } else {
        key.did_document().map_err(|e| DidError::InvalidDocument {
            did: key.did().to_string(),
            reason: e.to_string(),
        })
    }
}

fn absolute_id(doc: &Value, id: &str) -> String {
    if let Some(frag) = id.strip_prefix('#') {
        let did = doc.get("id").and_then(Value::as_str).unwrap_or_default();
        format!("{did}#{frag}")
    } else {
        id.to_string()
    }
}

fn method_id(doc: &Value, m: &Value) -> Option<String> {
    match m {
        Value::String(s) => Some(absolute_id(doc, s)),
        Value::Object(o) => o
            .get("id")
            .and_then(Value::as_str)
            .map(|s| absolute_id(doc, s)),
        _ => None,
    }
}

/// The verification method object with this id, looked up in `verificationMethod` and in
/// embedded methods of the relationships.
fn find_verification_method<'a>(doc: &'a Value, vm: &str) -> Option<&'a Value> {
    let lists = [
        "verificationMethod",
        "assertionMethod",
        "authentication",
        "keyAgreement",
    ];
    lists
        .iter()
        .filter_map(|l| doc.get(*l).and_then(Value::as_array))
        .flatten()
        .filter(|m| m.is_object())
        .find(|m| method_id(doc, m).as_deref() == Some(vm))
}

/// Whether `vm` is listed (by reference or embedded) under `relationship`.
fn has_relationship(doc: &Value, vm: &str, relationship: Relationship) -> bool {
    doc.get(relationship.property())
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .any(|m| method_id(doc, m).as_deref() == Some(vm))
        })
        .unwrap_or(false)
}

/// The public key of a Multikey or JsonWebKey2020 verification method.
pub fn method_public_jwk(vm: &str, method: &Value) -> Result<JWK, DidError> {
    let bad = |reason: String| DidError::BadKey {
        vm: vm.to_string(),
        reason,
    };
    let controller = method.get("controller").and_then(Value::as_str);
    if controller.is_some_and(|c| c != did_of(vm)) {
        return Err(bad("its controller is another DID".into()));
    }
    let mut jwk = if let Some(mb) = method.get("publicKeyMultibase").and_then(Value::as_str) {
        let (_, bytes) = multibase::decode(mb).map_err(|e| bad(e.to_string()))?;
        let encoded = ssi::multicodec::MultiEncoded::new(&bytes).map_err(|e| bad(e.to_string()))?;
        JWK::from_multicodec(encoded).map_err(|e| bad(e.to_string()))?
    } else if let Some(j) = method.get("publicKeyJwk") {
        serde_json::from_value::<JWK>(j.clone()).map_err(|e| bad(e.to_string()))?
    } else {
        return Err(bad("neither publicKeyMultibase nor publicKeyJwk".into()));
    };
    // A published key must never carry private material; drop anything that is not public.
    jwk = jwk.to_public();
    match &jwk.params {
        ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => {}
        ssi::jwk::Params::EC(p) if p.curve.as_deref() == Some("P-256") => {}
        _ => return Err(bad("only Ed25519 and P-256 keys are accepted".into())),
    }
    Ok(jwk)
}

/// An in-memory resolver over documents the pipeline has already resolved, handed to ssi
/// so that ssi can never reach the network.
#[derive(Clone, Default)]
pub(crate) struct StaticDids(Arc<HashMap<String, Vec<u8>>>);

impl StaticDids {
    pub(crate) fn new<'a>(docs: impl IntoIterator<Item = &'a Value>) -> Self {
        let map = docs
            .into_iter()
            .filter_map(|d| {
                let id = d.get("id")?.as_str()?.to_string();
                Some((id, serde_json::to_vec(d).ok()?))
            })
            .collect();
        StaticDids(Arc::new(map))
    }
}

impl DIDResolver for StaticDids {
    async fn resolve_representation<'a>(
        &'a self,
        did: &'a DID,
        _options: ssi::dids::resolution::Options,
    ) -> Result<ssi::dids::resolution::Output<Vec<u8>>, ssi::dids::resolution::Error> {
        match self.0.get(did.as_str()) {
            Some(bytes) => Ok(ssi::dids::resolution::Output::from_content(
                bytes.clone(),
                Some("application/did+ld+json".to_string()),
            )),
            None => Err(ssi::dids::resolution::Error::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyAlgorithm, KeyPair};

    #[tokio::test]
    async fn did_key_resolves_locally_with_relationships() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let r = DidResolver::new(false);
        let (jwk, doc) = r
            .public_key(key.verification_method(), Relationship::AssertionMethod)
            .await
            .unwrap();
        assert_eq!(jwk, key.public_jwk().to_public_with_kid_none());
        assert_eq!(doc["id"], key.did());
    }

    #[test]
    fn dids_parse_without_io() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        for ok in [
            key.did(),
            "did:web:hospital-a.example",
            "did:web:localhost%3A8443",
            "did:web:example.com:org:unit-1",
        ] {
            assert_eq!(parse_did(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "../../etc",
            "..%2f..%2fetc",
            "did:",
            "did:web:",
            "did:web:..%2f..%2fetc",
            "did:web:a..b",
            "did:web:-a.example",
            "did:web:a.example:..",
            "did:web:a.example%3Ahttp",
            "did:key:zNotBase58IlO0",
            "did:key:abc",
            "did:web:a.example/x",
            "did:web:a.example#frag",
        ] {
            assert!(
                matches!(
                    parse_did(bad),
                    Err(DidError::NotADid(_) | DidError::InvalidDidKey { .. })
                ),
                "{bad}: {:?}",
                parse_did(bad)
            );
        }
        assert!(matches!(
            parse_did("did:example:123"),
            Err(DidError::UnsupportedMethod(_))
        ));
    }

    #[tokio::test]
    async fn bad_did_keys_are_refused() {
        let r = DidResolver::new(false);
        // Wrong multicodec prefix (0x12 0x00 is not a key codec).
        let bogus = format!(
            "did:key:{}",
            multibase::encode(multibase::Base::Base58Btc, [0x12u8, 0x00, 1, 2, 3])
        );
        assert!(matches!(
            r.resolve(&bogus).await,
            Err(DidError::InvalidDidKey { .. })
        ));
        assert!(matches!(
            r.resolve("did:example:123").await,
            Err(DidError::UnsupportedMethod(_))
        ));
        assert!(matches!(r.resolve("nope").await, Err(DidError::NotADid(_))));
    }

    #[tokio::test]
    async fn unlisted_did_web_is_refused_without_io() {
        let r = DidResolver::new(true);
        // 169.254.169.254 would be a cloud metadata service: never contacted.
        let err = r.resolve("did:web:169.254.169.254").await.unwrap_err();
        assert_eq!(err, DidError::NotAllowed("did:web:169.254.169.254".into()));
    }

    #[test]
    fn relationship_check_reads_the_document() {
        let doc = serde_json::json!({
            "id": "did:web:a",
            "verificationMethod": [{"id": "#k1", "type": "Multikey", "controller": "did:web:a", "publicKeyMultibase": "z"}],
            "authentication": ["#k1"]
        });
        assert!(has_relationship(
            &doc,
            "did:web:a#k1",
            Relationship::Authentication
        ));
        assert!(!has_relationship(
            &doc,
            "did:web:a#k1",
            Relationship::AssertionMethod
        ));
        assert!(find_verification_method(&doc, "did:web:a#k1").is_some());
    }

    #[tokio::test]
    async fn did_key_documents_are_decoded_once() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let r = DidResolver::new(false);
        let a = r.resolve(key.did()).await.unwrap();
        let b = r.resolve(key.verification_method()).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn did_key_public_keys_are_decoded_once_and_relationships_still_checked() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::P256] {
            let key = KeyPair::generate_did_key(alg).unwrap();
            let r = DidResolver::new(false);
            let vm = key.verification_method();
            let want = key.public_jwk().to_public_with_kid_none();
            for _ in 0..2 {
                let (jwk, _) = r
                    .public_key(vm, Relationship::Authentication)
                    .await
                    .unwrap();
                assert_eq!(jwk, want, "{alg:?}");
            }
            assert_eq!(r.key_jwks.lock().unwrap().len(), 1);
            // Another method id of the same DID is not the cached one.
            let other = format!("{}#z6MkNotThisOne", key.did());
            assert!(matches!(
                r.public_key(&other, Relationship::Authentication).await,
                Err(DidError::UnknownVerificationMethod(_))
            ));
        }
        // The relationship is checked on every lookup, after the key is cached too: a
        // document that lists the method for assertions only never yields it to sign a
        // presentation.
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let r = DidResolver::new(false);
        let mut doc = (*r.resolve(key.did()).await.unwrap()).clone();
        doc.as_object_mut().unwrap().remove("authentication");
        r.pin(doc);
        let vm = key.verification_method();
        r.public_key(vm, Relationship::AssertionMethod)
            .await
            .unwrap();
        assert!(matches!(
            r.public_key(vm, Relationship::Authentication).await,
            Err(DidError::NotAuthorized { .. })
        ));
    }

    #[tokio::test]
    async fn did_web_documents_are_cached_for_the_ttl() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let key = KeyPair::generate_did_web("did:web:cached.test", KeyAlgorithm::Ed25519).unwrap();
        let doc = key.did_document().unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        let app = axum::Router::new().route(
            "/.well-known/did.json",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let r = DidResolver::new(true).with_ttl(Duration::from_millis(300));
        r.allow_web(key.did(), reqwest::Url::parse(&base).unwrap());
        let first = r.resolve(key.did()).await.unwrap();
        let second = r.resolve(key.did()).await.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        r.resolve(key.did()).await.unwrap();
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "fetched again after the TTL"
        );
        // A new address for the DID drops what came from the old one.
        r.allow_web(key.did(), reqwest::Url::parse(&base).unwrap());
        r.resolve(key.did()).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }

    trait NoKid {
        fn to_public_with_kid_none(&self) -> JWK;
    }
    impl NoKid for JWK {
        fn to_public_with_kid_none(&self) -> JWK {
            let mut j = self.to_public();
            j.key_id = None;
            j
        }
    }
}
