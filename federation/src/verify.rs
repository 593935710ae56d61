//! The one verification pipeline. Issuer, gateway, wallet and visibility all call it.
//!
//! ssi checks a proof's signature; everything else a relying party needs is done here, and
//! each failure names its [`Check`]:
//!
//! | check            | credential                                              | presentation                      |
//! |------------------|---------------------------------------------------------|-----------------------------------|
//! | `format`         | a JWT, an enveloped JWT or a Data Integrity document; strict JSON (also its status list, its signer's did:web document); VC Data Model 2.0 shape (context, ids as URLs, issuer string or object, names, related resources) | same |
//! | `proof`          | accepted alg/suite; key is the issuer's, listed under `assertionMethod`; signature; every proof of a set, each chained proof over the proofs it names | key is the holder's, under `authentication`; signature |
//! | `validity`       | validFrom / validUntil (and JWT `nbf`/`exp`/`iat`) with clock skew | JWT `exp`/`iat`/`nbf`, proof `expires`  |
//! | `challenge`      |                                                          | nonce / proof.challenge           |
//! | `domain`         |                                                          | aud / proof.domain = verifier DID |
//! | `schema`         | the type's JSON Schema                                   |                                   |
//! | `issuer-trust`   | issuer trusted for the type (consent: or self-issued)    |                                   |
//! | `status`         | Bitstring Status List (privileges must have one)         |                                   |
//! | `holder-binding` |                                                          | each credential bound to the holder |
//! | `disclosure`     | SD-JWT VC: each disclosure's digest is in the SD-JWT, once; `_sd_alg` sha-256; no disclosure named `_sd` or `...` | |
//!
//! An SD-JWT VC ([`Verifier::verify_sd_jwt_presentation`]; also a single one wherever one
//! credential is verified) runs the same checks, named the same way: `format` (framing,
//! `typ dc+sd-jwt`, a vct the pipeline knows), `proof` (the issuer's key under
//! `assertionMethod`, the signature), `disclosure`, `validity` (`nbf`/`exp`/`iat`),
//! `schema` (the disclosed claims against the type's schema, `required` and `minItems` not
//! enforced: a claim left undisclosed is not missing), `issuer-trust` (the issuer trusted
//! for the type; the vct on the issuer's registered origin), `status` (Token Status List),
//! `holder-binding` (`cnf.jwk` is an `authentication` key of the holder DID, `sub` or a
//! study's `sponsor`; the key binding JWT present, of `typ kb+jwt`, signed by that key,
//! over this presentation's `sd_hash`, at most five minutes old), `domain` (its `aud`) and
//! `challenge` (its `nonce`).
//!
//! Every embedded credential goes through the full credential pipeline; an error then also
//! names the credential's position in the presentation.
//!
//! Two profiles share the table. An access decision ([`Verifier::verify_credential`],
//! [`Verifier::verify_presentation`]) takes only fedgate's three types, each with its
//! schema and its trust rule, and a presentation must name its holder and be bound to it.
//! The VC API's verify endpoints ([`Verifier::verify_any_credential`],
//! [`Verifier::verify_any_presentation`]) take any VC Data Model 2.0 credential: format,
//! proof, validity and status run for every type; `schema` runs for the three types and for
//! a `credentialSchema` this service bundles; `issuer-trust` for the three types and for
//! other types trust is configured for; a presentation's holder is optional there.
//!
//! A [`ProofCache`] remembers credentials whose proof and schema already checked out, keyed
//! by the SHA-256 of the credential exactly as received: a clinician presents the same
//! privilege on every request, and its signature (for Data Integrity, its RDF
//! canonicalization) is the most expensive part of the pipeline. Everything that can change
//! between two requests is checked every time: validity period, issuer trust, status,
//! holder binding, and whether the signer's DID document is still the one the proof was
//! checked against.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::cache::Generations;
use crate::credentials::{
    unwrap_enveloped, CredentialKind, PresentationBinding, ProofFormat, StatusEntry,
};
use crate::did::{did_of, DidResolver, Relationship, StaticDids};
use crate::kind::KindError;
use crate::status::{StatusCache, StatusError};
use crate::trust::TrustSource;

/// Most credentials one presentation may carry.
pub const MAX_EMBEDDED_CREDENTIALS: usize = 16;

/// `validFrom` and `validUntil` as read from a credential.
type ValidityPeriod = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The checks of the pipeline, named in every failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Format,
    Proof,
    Validity,
    Challenge,
    Domain,
    Schema,
    IssuerTrust,
    Status,
    HolderBinding,
    Disclosure,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Format => "format",
            Check::Proof => "proof",
            Check::Validity => "validity",
            Check::Challenge => "challenge",
            Check::Domain => "domain",
            Check::Schema => "schema",
            Check::IssuerTrust => "issuer-trust",
            Check::Status => "status",
            Check::HolderBinding => "holder-binding",
            Check::Disclosure => "disclosure",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed verification: which check, why, and which embedded credential (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyError {
    pub check: Check,
    pub detail: String,
    /// Position of the failing credential inside a presentation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<usize>,
}

impl VerifyError {
    fn new(check: Check, detail: impl Into<String>) -> Self {
        VerifyError {
            check,
            detail: detail.into(),
            credential: None,
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.credential {
            Some(i) => write!(
                f,
                "check {} failed for credential #{i}: {}",
                self.check, self.detail
            ),
            None => write!(f, "check {} failed: {}", self.check, self.detail),
        }
    }
}

impl std::error::Error for VerifyError {}

/// A credential that passed every check. Only these claims may reach policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedCredential {
    pub id: Option<String>,
    pub kind: CredentialKind,
    pub format: ProofFormat,
    pub issuer: String,
    /// The verified `credentialSubject` (shared with the proof cache: a cached credential's
    /// subject is not copied for every request that presents it).
    pub subject: Arc<Value>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub status: Option<StatusEntry>,
    /// SHA-256 of the secured credential as presented.
    pub digest: String,
    pub checks: Vec<Check>,
    /// The DID the credential is bound to, when the format binds it to a key (SD-JWT VC:
    /// `sub`, or a study's `sponsor`); None for Data Integrity and VC-JOSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// What was disclosed: None when the format discloses everything (Data Integrity,
    /// VC-JOSE); the claim paths of the disclosures received for an SD-JWT VC. `subject`
    /// then holds only what was disclosed (and the claims that are always visible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disclosed: Option<Vec<crate::sdjwt::ClaimPath>>,
}

/// A credential of any type that passed every check that applies to it (the VC API's
/// verify endpoints). Nothing of it reaches policy: access decisions take only a
/// [`VerifiedCredential`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedAnyCredential {
    pub id: Option<String>,
    /// Its `type` values.
    pub types: Vec<String>,
    /// Its fedgate type, when it has one of the three.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<CredentialKind>,
    pub format: ProofFormat,
    /// The issuer's id (`issuer`, or `issuer.id`).
    pub issuer: String,
    pub subject: Arc<Value>,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub status: Option<StatusEntry>,
    pub digest: String,
    pub checks: Vec<Check>,
    /// What the credential carries that was not checked (a related resource this service
    /// does not bundle).
    pub warnings: Vec<String>,
}

/// A presentation of any credentials that passed every check that applies to it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedAnyPresentation {
    pub id: Option<String>,
    /// The holder, when the presentation names one.
    pub holder: Option<String>,
    pub format: ProofFormat,
    pub credentials: Vec<VerifiedAnyCredential>,
    pub checks: Vec<Check>,
    pub digest: String,
}

/// How much of the pipeline a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// An access decision: one of fedgate's three types.
    Access,
    /// The VC API: any VC Data Model 2.0 credential.
    Any,
}

/// The JWT registered claims (RFC 7519) of a `vc+jwt`, read beside the credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct JwtTimes {
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

/// Most proofs one document may carry (a proof set or chain).
const MAX_PROOFS: usize = 8;

/// A presentation that passed every check, with its verified credentials.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedPresentation {
    pub id: Option<String>,
    pub holder: String,
    pub format: ProofFormat,
    pub credentials: Vec<VerifiedCredential>,
    pub checks: Vec<Check>,
}

impl VerifiedPresentation {
    /// The presentation several SD-JWT VCs make together (an OpenID4VP `vp_token`), each
    /// verified on its own with [`Verifier::verify_sd_jwt_presentation`]: every one must be
    /// bound to `holder` (its key binding JWT is the holder's proof), and together they
    /// must pass the holder binding rule of a presentation (a consent granted to the
    /// holder, the holder's organization or study).
    pub fn from_credentials(
        holder: &str,
        credentials: Vec<VerifiedCredential>,
    ) -> Result<Self, VerifyError> {
        if credentials.is_empty() {
            return Err(VerifyError::new(Check::Format, "no credential"));
        }
        if credentials.len() > MAX_EMBEDDED_CREDENTIALS {
            return Err(VerifyError::new(
                Check::Format,
                format!("more than {MAX_EMBEDDED_CREDENTIALS} credentials"),
            ));
        }
        for (i, c) in credentials.iter().enumerate() {
            if c.holder.as_deref() != Some(holder) {
                return Err(VerifyError {
                    check: Check::HolderBinding,
                    detail: "the credential is bound to another holder".into(),
                    credential: Some(i),
                });
            }
        }
        check_holder_binding(holder, &credentials)?;
        let format = credentials
            .first()
            .map(|c| c.format)
            .unwrap_or(ProofFormat::SdJwt);
        Ok(VerifiedPresentation {
            id: None,
            holder: holder.to_string(),
            format,
            credentials,
            checks: vec![
                Check::Format,
                Check::Proof,
                Check::Validity,
                Check::Challenge,
                Check::Domain,
                Check::HolderBinding,
            ],
        })
    }

    pub fn of_kind(&self, kind: CredentialKind) -> impl Iterator<Item = &VerifiedCredential> {
        self.credentials.iter().filter(move |c| c.kind == kind)
    }
}

/// The verifier: resolver, trust and status, shared by a service behind an `Arc`.
pub struct Verifier {
    pub resolver: Arc<DidResolver>,
    pub trust: Arc<dyn TrustSource>,
    pub status: Arc<StatusCache>,
    skew: chrono::Duration,
    /// Credentials whose proof and schema already checked out.
    pub proofs: ProofCache,
    /// Contexts, schemas and related resources bundled by configuration.
    bundle: crate::bundle::Bundle,
    /// Ed25519 public keys already decompressed, by their bytes.
    ed25519_keys: Mutex<HashMap<[u8; 32], ed25519_dalek::VerifyingKey>>,
}

/// Most parsed Ed25519 keys a verifier keeps (holders' and issuers' keys).
const MAX_PARSED_KEYS: usize = 4096;

const DI_SUITES: [&str; 2] = ["eddsa-rdfc-2022", "ecdsa-rdfc-2019"];

/// SHA-256 of a credential or presentation as received: the compact JWS string, or the
/// JSON serialization of the object (what the Data Integrity check itself verifies).
fn sha256_of(v: &Value) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    match v {
        Value::String(s) => Sha256::digest(s.as_bytes()).into(),
        other => Sha256::digest(serde_json::to_vec(other).unwrap_or_default()).into(),
    }
}

fn digest_of(v: &Value) -> String {
    hex::encode(sha256_of(v))
}

/// Entries a [`ProofCache`] holds by default: two credentials for each of a few thousand
/// active holders, at a few KiB each.
const DEFAULT_PROOF_CACHE_ENTRIES: usize = 4096;
/// How long a cached proof is trusted by default before it is checked again in full.
const DEFAULT_PROOF_CACHE_TTL: Duration = Duration::from_secs(300);

/// What a checked proof established: the credential (without its proof) is what the
/// issuer signed, with a key its DID document lists under `assertionMethod`, and it is
/// valid against its type's schema.
struct Proven {
    format: ProofFormat,
    credential: Value,
    /// The credential's `credentialSubject` (Null without one), handed out shared.
    subject: Arc<Value>,
    /// A JWT's registered time claims, checked on every verification like validUntil.
    times: JwtTimes,
    /// The verification method that signed, and the DID document it was found in.
    signer: String,
    signer_doc: Arc<Value>,
    at: Instant,
    /// The data model check's warnings, kept once every check passed: like the schema's,
    /// its result depends only on the credential's bytes and this verifier's bundle, so a
    /// cached proof stands for it too.
    data_model: std::sync::OnceLock<Vec<String>>,
}

/// A bounded cache of proven credentials, keyed by the SHA-256 of the credential as
/// received, with a TTL.
///
/// Only a credential that passed every credential check is ever inserted, so no failure
/// can be remembered as a success; a credential that differs in a single byte has another
/// key and is checked in full. Eviction: [`Generations`].
pub struct ProofCache {
    entries: Generations<Arc<Proven>>,
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    proof_checks: AtomicU64,
}

/// Counters of a [`ProofCache`], for metrics, benches and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProofCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Credential proofs checked in full (signature work done).
    pub proof_checks: u64,
    entries: usize,
}

impl ProofCache {
    /// A cache of at most `capacity` credentials, each trusted for at most `ttl`.
    /// A capacity of 0 disables caching (every proof is checked in full).
    fn new(capacity: usize, ttl: Duration) -> Self {
        ProofCache {
            entries: Generations::new(capacity),
            ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            proof_checks: AtomicU64::new(0),
        }
    }

    /// No caching: every credential's proof is checked in full.
    pub fn disabled() -> Self {
        Self::new(0, Duration::ZERO)
    }

    pub fn stats(&self) -> ProofCacheStats {
        ProofCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            proof_checks: self.proof_checks.load(Ordering::Relaxed),
            entries: self.entries.len(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<Proven>> {
        self.entries.get(key, |p| p.at.elapsed() < self.ttl)
    }

    fn insert(&self, key: [u8; 32], proven: Arc<Proven>) {
        self.entries.insert(key, proven);
    }
}

impl Default for ProofCache {
    fn default() -> Self {
        Self::new(DEFAULT_PROOF_CACHE_ENTRIES, DEFAULT_PROOF_CACHE_TTL)
    }
}

/// A malformed token (not a compact JWS; header or payload not a strict JSON object) fails
/// `format`; a well-formed one with a hostile header or a bad signature fails `proof`.
fn jose_check(e: &crate::jose::JoseError) -> Check {
    if e.is_malformed() {
        Check::Format
    } else {
        Check::Proof
    }
}

fn jose_error(e: crate::jose::JoseError) -> VerifyError {
    VerifyError::new(jose_check(&e), e.to_string())
}

/// The signer's key could not be established: `proof`, unless its DID document is not
/// strict JSON, which is refused as every signed document is, with `format`.
fn did_error(e: crate::did::DidError) -> VerifyError {
    let check = match e {
        crate::did::DidError::NotStrictJson { .. } => Check::Format,
        _ => Check::Proof,
    };
    VerifyError::new(check, e.to_string())
}

/// The status could not be established: `status`, unless the list credential is not
/// strict JSON, which is refused as every signed document is, with `format`.
fn status_error(e: StatusError) -> VerifyError {
    let check = match e {
        StatusError::NotStrictJson(_) => Check::Format,
        _ => Check::Status,
    };
    VerifyError::new(check, e.to_string())
}

/// The challenge a presentation claims to answer (JWT `nonce`, Data Integrity
/// `proof.challenge`), read before the signature is checked so that a verifier can look it
/// up among its own.
///
/// It is read only after the checks [`Verifier::verify_presentation`] makes first: the
/// JWS is decoded with the header rules every credential gets and its `typ` checked, a
/// Data Integrity presentation's type and proof entry are checked. A hostile header (`alg:
/// none`, an embedded key, a path as `kid`) thus fails `proof`, a malformed presentation
/// `format`, exactly as verification would name them; only a presentation that passes
/// these and names no challenge fails `challenge`.
pub fn claimed_challenge(presentation: &Value) -> Result<String, VerifyError> {
    let none = no_challenge;
    match presentation {
        Value::String(jwt) => {
            let decoded = crate::jose::decode(jwt).map_err(jose_error)?;
            check_vp_typ(decoded.typ.as_deref())?;
            str_field(&decoded.payload, "nonce")
                .map(str::to_string)
                .ok_or_else(none)
        }
        Value::Object(_) => {
            check_vp_type(presentation)?;
            let proofs = di_proofs(presentation, "authentication")?;
            proofs
                .first()
                .and_then(|proof| str_field(proof, "challenge"))
                .map(str::to_string)
                .ok_or_else(none)
        }
        _ => Err(VerifyError::new(
            Check::Format,
            "a presentation is a JWT string or a JSON object",
        )),
    }
}

fn no_challenge() -> VerifyError {
    VerifyError::new(Check::Challenge, "the presentation answers no challenge")
}

/// What a presentation's challenge and domain must be.
#[derive(Clone, Copy)]
enum Bound<'a> {
    /// This challenge and this domain.
    To(&'a PresentationBinding),
    /// This domain, and a challenge: whichever the presentation answers (every proof the
    /// same one), which the caller checks against those it issued.
    Answering { domain: &'a str },
}

impl Bound<'_> {
    fn domain(&self) -> &str {
        match self {
            Bound::To(binding) => &binding.domain,
            Bound::Answering { domain } => domain,
        }
    }

    /// `answered`: the challenge of a JWT's payload or of one proof; `first`: that of the
    /// presentation's first proof (a JWT's own).
    fn check_challenge(
        &self,
        answered: Option<&str>,
        first: Option<&str>,
        wrong: &str,
    ) -> Result<(), VerifyError> {
        match self {
            Bound::To(binding) if answered != Some(binding.challenge.as_str()) => {
                Err(VerifyError::new(Check::Challenge, wrong))
            }
            Bound::Answering { .. } if answered.is_none() => Err(no_challenge()),
            Bound::Answering { .. } if answered != first => Err(VerifyError::new(
                Check::Challenge,
                "the proofs of a presentation answer different challenges",
            )),
            _ => Ok(()),
        }
    }
}

/// A credential or presentation as it travels, from bytes (a file, a message): a compact
/// JWS, or a JSON document (a Data Integrity object, or a JSON string holding a JWT) read
/// with the strict JSON reader. Bytes that are neither fail `format`, before any value in
/// them is read; what is returned goes to [`Verifier::verify_credential`] or
/// [`Verifier::verify_presentation`].
pub fn read_secured(bytes: &[u8]) -> Result<Value, VerifyError> {
    let format = |detail: String| VerifyError::new(Check::Format, detail);
    let text = std::str::from_utf8(bytes)
        .map_err(|_| format("a credential is UTF-8 text".into()))?
        .trim();
    if text.starts_with('{') || text.starts_with('"') {
        crate::json::parse_strict(text.as_bytes())
            .map_err(|e| format(format!("not strict JSON: {}", e.summary())))
    } else {
        // A compact JWS, read strictly when it is verified.
        Ok(Value::String(text.to_string()))
    }
}

fn check_vp_typ(typ: Option<&str>) -> Result<(), VerifyError> {
    if matches!(typ, Some("vp+jwt" | "vp-ld+jwt")) {
        Ok(())
    } else {
        Err(VerifyError::new(Check::Format, "typ must be vp+jwt"))
    }
}

fn check_vp_type(vp: &Value) -> Result<(), VerifyError> {
    if has_type(vp, "VerifiablePresentation") {
        Ok(())
    } else {
        Err(VerifyError::new(
            Check::Format,
            "not a VerifiablePresentation",
        ))
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The ids a proof's `previousProof` names (a string or a list of strings).
fn previous_proofs(proof: &Value) -> Result<Vec<&str>, VerifyError> {
    match proof.get("previousProof") {
        None => Ok(Vec::new()),
        Some(Value::String(id)) => Ok(vec![id.as_str()]),
        Some(Value::Array(ids)) if !ids.is_empty() && ids.iter().all(Value::is_string) => {
            Ok(ids.iter().filter_map(Value::as_str).collect())
        }
        Some(_) => Err(VerifyError::new(
            Check::Proof,
            "previousProof must be a proof id or a list of them",
        )),
    }
}

/// Reads the Data Integrity proofs of a document (one, or a set), refusing anything
/// unexpected: each must be a `DataIntegrityProof` of an accepted cryptosuite for
/// `purpose`; in a chain, each `previousProof` must name another proof of the set by its
/// `id` (DI 1.0 §2.1.2).
fn di_proofs<'a>(doc: &'a Value, purpose: &str) -> Result<Vec<&'a Value>, VerifyError> {
    let proofs: Vec<&Value> = match doc.get("proof") {
        Some(p @ Value::Object(_)) => vec![p],
        Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
        Some(Value::Array(_)) => return Err(VerifyError::new(Check::Proof, "an empty proof set")),
        _ => return Err(VerifyError::new(Check::Format, "no proof")),
    };
    if proofs.len() > MAX_PROOFS {
        return Err(VerifyError::new(
            Check::Proof,
            format!("more than {MAX_PROOFS} proofs"),
        ));
    }
    for proof in &proofs {
        if !proof.is_object() {
            return Err(VerifyError::new(Check::Proof, "a proof is not an object"));
        }
        if str_field(proof, "type") != Some("DataIntegrityProof") {
            return Err(VerifyError::new(
                Check::Proof,
                format!(
                    "proof type {:?} is not accepted (DataIntegrityProof)",
                    str_field(proof, "type").unwrap_or("")
                ),
            ));
        }
        let suite = str_field(proof, "cryptosuite").unwrap_or("");
        if !DI_SUITES.contains(&suite) {
            return Err(VerifyError::new(
                Check::Proof,
                format!("cryptosuite {suite:?} is not accepted (eddsa-rdfc-2022, ecdsa-rdfc-2019)"),
            ));
        }
        if str_field(proof, "proofPurpose") != Some(purpose) {
            return Err(VerifyError::new(
                Check::Proof,
                format!("proof purpose must be {purpose}"),
            ));
        }
    }
    let ids: Vec<Option<&str>> = proofs.iter().map(|p| str_field(p, "id")).collect();
    for (i, id) in ids.iter().enumerate() {
        if id.is_some() && ids[..i].contains(id) {
            return Err(VerifyError::new(
                Check::Proof,
                "two proofs have the same id",
            ));
        }
    }
    for (i, proof) in proofs.iter().enumerate() {
        for previous in previous_proofs(proof)? {
            let found = ids
                .iter()
                .enumerate()
                .any(|(j, id)| j != i && *id == Some(previous));
            if !found {
                return Err(VerifyError::new(
                    Check::Proof,
                    "previousProof names no other proof of the set",
                ));
            }
        }
    }
    Ok(proofs)
}

/// Whether the bytes `s` stands for, once its `%XX` escapes are decoded, are UTF-8.
fn percent_decodes_to_utf8(s: &str) -> bool {
    if !s.contains('%') {
        return true;
    }
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let bytes = s.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Refuses what ssi cannot take without panicking:
/// - a string whose percent-encoded octets are not UTF-8: iref panics when it compares such
///   an IRI (an `@context` entry, say) with another;
/// - a number without a decimal point that is not a 64-bit integer (`1e3`,
///   `18446744073709551616`): json-number cannot write it back when ssi converts the
///   document for JSON-LD.
fn check_json_for_ssi(v: &Value) -> Result<(), VerifyError> {
    let refuse = |what: &str| Err(VerifyError::new(Check::Format, what.to_string()));
    match v {
        Value::String(s) if !percent_decodes_to_utf8(s) => {
            refuse("a string percent-encodes bytes that are not UTF-8")
        }
        Value::Number(n) if !(n.is_i64() || n.is_u64() || n.to_string().contains('.')) => {
            refuse("a number is neither a 64-bit integer nor written with a decimal point")
        }
        Value::Array(items) => items.iter().try_for_each(check_json_for_ssi),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if percent_decodes_to_utf8(k) {
                check_json_for_ssi(v)
            } else {
                refuse("a key percent-encodes bytes that are not UTF-8")
            }
        }),
        _ => Ok(()),
    }
}

/// Refuses date-times that ssi would read with xsd-types before the pipeline checks them:
/// xsd-types panics on some forms its grammar admits (a year of fewer than four digits),
/// and the pipeline accepts RFC 3339 only in any case.
fn check_dates(document: &Value) -> Result<(), VerifyError> {
    let proofs: Vec<&Value> = match document.get("proof") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(p) => vec![p],
        None => Vec::new(),
    };
    let mut fields = vec![
        (Some(document), "validFrom"),
        (Some(document), "validUntil"),
    ];
    for proof in proofs {
        fields.push((Some(proof), "created"));
        fields.push((Some(proof), "expires"));
    }
    for (holder, key) in fields {
        match holder.and_then(|h| h.get(key)) {
            None => {}
            Some(Value::String(s)) if crate::time::parse(s).is_some() => {}
            Some(_) => {
                return Err(VerifyError::new(
                    Check::Validity,
                    format!("{key} is not an RFC 3339 date-time"),
                ))
            }
        }
    }
    Ok(())
}

/// Verifies a Data Integrity document with ssi, off the async runtime (RDF canonicalization
/// costs milliseconds of CPU) and with a resolver that knows only `did_doc`.
///
/// Every proof of a set is verified (DI 1.0 §2.1.1). A proof that names a `previousProof`
/// is verified, as §4.5 says, over the document with `proof` set to the proofs it names:
/// they are part of what it signed, so it cannot be moved onto another chain.
async fn verify_di(
    document: &Value,
    did_doc: Arc<Value>,
    presentation: bool,
    loader: ssi::json_ld::ContextLoader,
) -> Result<(), VerifyError> {
    use ssi::claims::data_integrity::{AnySuite, DataIntegrity};
    // ssi panics on these inputs (caught by the blocking pool, but a panic on input all
    // the same): they are refused first.
    check_json_for_ssi(document)?;
    check_dates(document)?;
    let format_err = |e: &dyn fmt::Display| VerifyError::new(Check::Format, e.to_string());
    let mut unsecured = document.clone();
    let proofs = match unsecured.as_object_mut().and_then(|o| o.remove("proof")) {
        Some(Value::Array(a)) => a,
        Some(p) => vec![p],
        None => return Err(VerifyError::new(Check::Format, "no proof")),
    };
    // One document per proof (the one proof ssi then verifies), with the claims it signed
    // when it is chained.
    let mut units = Vec::with_capacity(proofs.len());
    for proof in &proofs {
        let previous = previous_proofs(proof)?;
        let chained: Vec<Value> = proofs
            .iter()
            .filter(|p| str_field(p, "id").is_some_and(|id| previous.contains(&id)))
            .cloned()
            .collect();
        let mut single = unsecured.clone();
        single["proof"] = proof.clone();
        let json = serde_json::to_vec(&single).map_err(|e| format_err(&e))?;
        let claims = (!chained.is_empty()).then(|| {
            let mut claims = unsecured.clone();
            claims["proof"] = Value::Array(chained);
            claims
        });
        units.push((json, claims));
    }
    let task = move || -> Result<(), VerifyError> {
        let format_err = |e: &dyn fmt::Display| VerifyError::new(Check::Format, e.to_string());
        let resolver = ssi::dids::VerificationMethodDIDResolver::<
            _,
            ssi::verification_methods::AnyMethod,
        >::new(StaticDids::new([did_doc.as_ref()]));
        let params = ssi::claims::VerificationParameters::from_resolver(resolver)
            .with_json_ld_loader(loader);
        for (json, claims) in units {
            let outcome = if presentation {
                let mut vp: DataIntegrity<
                    ssi::claims::vc::v2::syntax::JsonPresentation<Value>,
                    AnySuite,
                > = ssi::claims::data_integrity::from_json_slice(&json)
                    .map_err(|e| format_err(&e))?;
                if let Some(claims) = claims {
                    vp.claims = serde_json::from_value(claims).map_err(|e| format_err(&e))?;
                }
                futures::executor::block_on(vp.verify(&params))
            } else {
                let mut vc: DataIntegrity<ssi::claims::vc::v2::JsonCredential, AnySuite> =
                    ssi::claims::data_integrity::from_json_slice(&json)
                        .map_err(|e| format_err(&e))?;
                if let Some(claims) = claims {
                    vc.claims = serde_json::from_value(claims).map_err(|e| format_err(&e))?;
                }
                futures::executor::block_on(vc.verify(&params))
            };
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(ssi::claims::Invalid::Claims(e))) => {
                    return Err(VerifyError::new(Check::Validity, e.to_string()))
                }
                Ok(Err(e)) => return Err(VerifyError::new(Check::Proof, e.to_string())),
                Err(e) => return Err(VerifyError::new(Check::Proof, e.to_string())),
            }
        }
        Ok(())
    };
    tokio::task::spawn_blocking(task)
        .await
        .map_err(|e| VerifyError::new(Check::Proof, format!("verification aborted: {e}")))?
}

impl Verifier {
    pub fn new(
        resolver: Arc<DidResolver>,
        trust: Arc<dyn TrustSource>,
        status: Arc<StatusCache>,
    ) -> Self {
        // The proof cache never trusts a proof for longer than the resolver trusts the
        // DID document it was checked against.
        let ttl = DEFAULT_PROOF_CACHE_TTL.min(resolver.ttl());
        Verifier {
            resolver,
            trust,
            status,
            skew: chrono::Duration::seconds(crate::time::DEFAULT_SKEW_SECS),
            proofs: ProofCache::new(DEFAULT_PROOF_CACHE_ENTRIES, ttl),
            bundle: crate::bundle::Bundle::empty(),
            ed25519_keys: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the signature of a compact JWS that `decoded` came from, with `key`.
    ///
    /// EdDSA over an Ed25519 key is checked here with the key parsed once per verifier:
    /// decompressing the public key costs about a quarter of a verification, and the same
    /// holders and issuers sign request after request. The check is the one ssi makes
    /// (ed25519-dalek's `verify`). Every other key type goes through [`DecodedJws::verify`].
    ///
    /// [`DecodedJws::verify`]: crate::jose::DecodedJws::verify
    fn verify_jws(
        &self,
        jwt: &str,
        decoded: &crate::jose::DecodedJws,
        key: &ssi::jwk::JWK,
    ) -> Result<(), VerifyError> {
        use ed25519_dalek::Verifier as _;
        let proof_err = |detail: &str| VerifyError::new(Check::Proof, detail.to_string());
        let okp = match &key.params {
            ssi::jwk::Params::OKP(p)
                if p.curve == "Ed25519"
                    && decoded.alg == ssi::jwk::Algorithm::EdDSA
                    && key
                        .algorithm
                        .is_none_or(|a| a == ssi::jwk::Algorithm::EdDSA) =>
            {
                p
            }
            _ => {
                return decoded
                    .verify(key)
                    .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))
            }
        };
        let key_bytes: [u8; 32] = okp
            .public_key
            .0
            .as_slice()
            .try_into()
            .map_err(|_| proof_err("an Ed25519 public key has 32 bytes"))?;
        let cached = self
            .ed25519_keys
            .lock()
            .ok()
            .and_then(|m| m.get(&key_bytes).copied());
        let verifying = match cached {
            Some(k) => k,
            None => {
                let k = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)
                    .map_err(|_| proof_err("the Ed25519 public key is not a curve point"))?;
                if let Ok(mut m) = self.ed25519_keys.lock() {
                    if m.len() >= MAX_PARSED_KEYS {
                        m.clear();
                    }
                    m.insert(key_bytes, k);
                }
                k
            }
        };
        // `decoded` came from this very string, so its last dot separates the signing
        // input from the signature.
        let (signing_input, signature) = jwt
            .rsplit_once('.')
            .ok_or_else(|| proof_err("not a compact JWS"))?;
        let signature: [u8; 64] = {
            crate::b64::decode(signature)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| proof_err("an Ed25519 signature has 64 bytes"))?
        };
        verifying
            .verify(
                signing_input.as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&signature),
            )
            .map_err(|_| proof_err("JWS signature does not verify"))
    }

    /// Contexts, schemas and related resources this verifier knows beyond fedgate's own.
    pub fn with_bundle(mut self, bundle: crate::bundle::Bundle) -> Self {
        self.bundle = bundle;
        self
    }

    /// Replaces the proof cache (size, TTL, or [`ProofCache::disabled`]).
    pub fn with_proof_cache(mut self, cache: ProofCache) -> Self {
        self.proofs = cache;
        self
    }

    /// Checks the proof of a credential as it travels (JWT string, enveloped JWT, or DI
    /// object): format, algorithm or suite, the key's place in the issuer's DID document,
    /// signature.
    async fn prove(&self, input: &Value) -> Result<Proven, VerifyError> {
        let (format, (credential, times, signer, signer_doc)) = match input {
            Value::String(jwt) => (ProofFormat::Jwt, self.check_jwt_credential(jwt).await?),
            Value::Object(_) => match unwrap_enveloped(input) {
                Some(jwt) => (ProofFormat::Jwt, self.check_jwt_credential(jwt).await?),
                None => {
                    let (credential, signer, doc) = self.check_di_credential(input).await?;
                    (
                        ProofFormat::DataIntegrity,
                        (credential, JwtTimes::default(), signer, doc),
                    )
                }
            },
            _ => {
                return Err(VerifyError::new(
                    Check::Format,
                    "a credential is a JWT string or a JSON object",
                ))
            }
        };
        let subject = Arc::new(
            credential
                .get("credentialSubject")
                .cloned()
                .unwrap_or(Value::Null),
        );
        Ok(Proven {
            format,
            credential,
            subject,
            times,
            signer,
            signer_doc,
            at: Instant::now(),
            data_model: std::sync::OnceLock::new(),
        })
    }

    /// A cached proof still holds if the signer's DID resolves, right now, to the very
    /// document the proof was checked against: a rotated or withdrawn key, a did:web
    /// dropped from the allow-map or a refetched document that changed all make it a miss,
    /// and the full check then reports what is wrong.
    async fn still_proven(&self, key: &[u8; 32]) -> Option<Arc<Proven>> {
        let proven = self.proofs.get(key)?;
        let doc = self.resolver.resolve(did_of(&proven.signer)).await.ok()?;
        (Arc::ptr_eq(&doc, &proven.signer_doc) || doc == proven.signer_doc).then_some(proven)
    }

    /// The key `vm` names, which must be the `issuer`'s own and listed under its
    /// `assertionMethod`; with the DID document it was found in.
    async fn issuer_key(
        &self,
        vm: &str,
        issuer: &str,
    ) -> Result<(ssi::jwk::JWK, Arc<Value>), VerifyError> {
        if did_of(vm) != issuer {
            return Err(VerifyError::new(
                Check::Proof,
                "signed with a key that does not belong to the issuer",
            ));
        }
        self.resolver
            .public_key(vm, Relationship::AssertionMethod)
            .await
            .map_err(did_error)
    }

    /// Verifies one credential as it travels (JWT string, enveloped JWT, or DI object) for
    /// an access decision: it must be of one of fedgate's three types.
    pub async fn verify_credential(
        &self,
        input: &Value,
    ) -> Result<VerifiedCredential, VerifyError> {
        if let Some(sd_jwt) = as_sd_jwt(input) {
            return self.verify_sd_jwt(sd_jwt, None).await;
        }
        let v = self.verify_as(input, Profile::Access).await?;
        let kind = v.kind.ok_or_else(|| {
            VerifyError::new(Check::Format, "not one of fedgate's credential types")
        })?;
        Ok(VerifiedCredential {
            id: v.id,
            kind,
            format: v.format,
            issuer: v.issuer,
            subject: v.subject,
            valid_from: v.valid_from,
            valid_until: v.valid_until,
            status: v.status,
            digest: v.digest,
            checks: v.checks,
            holder: None,
            disclosed: None,
        })
    }

    /// Verifies a VC Data Model 2.0 credential of any type (the VC API's verify endpoint):
    /// format, proof, validity and status for every type; schema and issuer trust where
    /// they apply (see the module documentation).
    pub async fn verify_any_credential(
        &self,
        input: &Value,
    ) -> Result<VerifiedAnyCredential, VerifyError> {
        if let Some(sd_jwt) = as_sd_jwt(input) {
            // An SD-JWT VC is one of fedgate's types by its vct, or it is refused.
            let v = self.verify_sd_jwt(sd_jwt, None).await?;
            return Ok(VerifiedAnyCredential {
                id: v.id,
                types: vec!["VerifiableCredential".into(), v.kind.type_name().into()],
                kind: Some(v.kind),
                format: v.format,
                issuer: v.issuer,
                subject: v.subject,
                valid_from: v.valid_from,
                valid_until: v.valid_until,
                status: v.status,
                digest: v.digest,
                checks: v.checks,
                warnings: Vec::new(),
            });
        }
        self.verify_as(input, Profile::Any).await
    }

    /// One SD-JWT VC presentation (issuer-signed JWT ~ disclosures ~ KB-JWT): every check of
    /// the table plus `disclosure`; the KB-JWT is mandatory, its `aud` must be `audience`
    /// and its `nonce` `nonce`. The verified subject carries only what was disclosed.
    pub async fn verify_sd_jwt_presentation(
        &self,
        presentation: &str,
        audience: &str,
        nonce: &str,
    ) -> Result<VerifiedCredential, VerifyError> {
        self.verify_sd_jwt(presentation.trim(), Some((audience, nonce)))
            .await
    }

    /// An SD-JWT VC, as a presentation (`binding`: the KB-JWT is required and bound to this
    /// audience and nonce) or as a credential (no binding: a KB-JWT, if any, is checked
    /// except for its audience and nonce).
    async fn verify_sd_jwt(
        &self,
        input: &str,
        binding: Option<(&str, &str)>,
    ) -> Result<VerifiedCredential, VerifyError> {
        use crate::sdjwt::{self, KbError, SdJwtError};
        let sd_error = |e: SdJwtError| match e {
            SdJwtError::Disclosure(_) => VerifyError::new(Check::Disclosure, e.to_string()),
            other => VerifyError::new(Check::Format, other.to_string()),
        };
        let parts = sdjwt::split(input).map_err(sd_error)?;
        let digest = hex::encode(sha256_of(&Value::String(input.to_string())));
        let decoded = crate::jose::decode(parts.jwt).map_err(jose_error)?;
        if decoded.typ.as_deref() != Some(sdjwt::MEDIA_TYPE) {
            return Err(VerifyError::new(Check::Format, "typ must be dc+sd-jwt"));
        }
        let payload = &decoded.payload;
        let issuer = match payload.get("iss") {
            Some(Value::String(iss)) if iss.starts_with("did:") => iss.clone(),
            _ => return Err(VerifyError::new(Check::Format, "iss must be a DID")),
        };
        let vct =
            str_field(payload, "vct").ok_or_else(|| VerifyError::new(Check::Format, "no vct"))?;
        let kind = sdjwt::kind_of_vct(vct).ok_or_else(|| {
            VerifyError::new(Check::Format, "the vct names none of fedgate's types")
        })?;
        let (key, _) = self.issuer_key(&decoded.kid, &issuer).await?;
        self.proofs.proof_checks.fetch_add(1, Ordering::Relaxed);
        self.verify_jws(parts.jwt, &decoded, &key)?;
        let mut checks = vec![Check::Format, Check::Proof];

        let revealed = sdjwt::reveal(payload, &parts.disclosures).map_err(sd_error)?;
        checks.push(Check::Disclosure);
        let claims = &revealed.claims;

        let time = |claim: &str| {
            claims
                .get(claim)
                .map(|v| {
                    v.as_i64().ok_or_else(|| {
                        VerifyError::new(Check::Validity, format!("{claim} is not an integer"))
                    })
                })
                .transpose()
        };
        let times = JwtTimes {
            iat: time("iat")?,
            nbf: time("nbf")?,
            exp: time("exp")?,
        };
        let credential = sdjwt::credential_of_claims(kind, claims);
        let (valid_from, valid_until) = self.check_validity(&credential, &times)?;
        checks.push(Check::Validity);

        crate::schema::check_disclosed(kind, &credential)
            .map_err(|e| VerifyError::new(Check::Schema, e.to_string()))?;
        checks.push(Check::Schema);

        let subject = Arc::new(
            credential
                .get("credentialSubject")
                .cloned()
                .unwrap_or(Value::Null),
        );
        let self_issued_consent =
            kind == CredentialKind::PatientConsent && str_field(&subject, "id") == Some(&issuer);
        if !self_issued_consent && !self.trust.is_trusted(kind, &issuer) {
            return Err(VerifyError::new(
                Check::IssuerTrust,
                format!("{issuer} is not trusted to issue {kind}"),
            ));
        }
        // The vct is the issuer's word for the type: it must be served from the issuer's
        // registered origin, the rule status lists follow (a self-issued consent, which
        // has no office, is exempt).
        if !self_issued_consent {
            let registered = self.resolver.web_base(&issuer);
            let vct_origin = reqwest::Url::parse(vct).ok().map(|u| u.origin());
            if registered
                .map(|b| b.origin())
                .is_none_or(|o| Some(o) != vct_origin)
            {
                return Err(VerifyError::new(
                    Check::IssuerTrust,
                    "the vct is not on the issuer's registered origin",
                ));
            }
        }
        checks.push(Check::IssuerTrust);

        // Holder binding: the key the KB-JWT must be signed with is `cnf.jwk`, and it
        // must be an authentication key of the holder's DID.
        let holder = match kind {
            CredentialKind::ResearchStudy => str_field(&subject, "sponsor"),
            _ => str_field(claims, "sub"),
        }
        .filter(|h| h.starts_with("did:"))
        .ok_or_else(|| {
            VerifyError::new(Check::HolderBinding, "the credential names no holder DID")
        })?
        .to_string();
        let cnf = cnf_key(claims)?;
        let listed = self
            .resolver
            .key_is_listed(&holder, &cnf, Relationship::Authentication)
            .await
            .map_err(|e| VerifyError::new(Check::HolderBinding, e.to_string()))?;
        if !listed {
            return Err(VerifyError::new(
                Check::HolderBinding,
                "cnf.jwk is not an authentication key of the holder's DID",
            ));
        }
        match (parts.kb, binding) {
            (None, Some(_)) => {
                return Err(VerifyError::new(
                    Check::HolderBinding,
                    "the presentation has no key binding JWT",
                ))
            }
            (None, None) => {}
            (Some(kb), binding) => {
                let now = Utc::now().timestamp();
                sdjwt::check_key_binding(
                    kb,
                    parts.presented,
                    &cnf,
                    binding,
                    now,
                    self.skew.num_seconds(),
                )
                .map_err(|e| {
                    let check = match e {
                        KbError::Malformed(_) => Check::Format,
                        KbError::Signature | KbError::SdHash => Check::HolderBinding,
                        KbError::Audience => Check::Domain,
                        KbError::Nonce => Check::Challenge,
                        KbError::Time => Check::Validity,
                    };
                    VerifyError::new(check, e.to_string())
                })?;
            }
        }
        checks.push(Check::HolderBinding);
        if binding.is_some() {
            checks.extend([Check::Challenge, Check::Domain]);
        }

        match claims.get("status") {
            Some(status) => {
                let list = status.get("status_list");
                let idx = list.and_then(|l| l.get("idx")).and_then(Value::as_u64);
                let uri = list.and_then(|l| l.get("uri")).and_then(Value::as_str);
                let (Some(idx), Some(uri)) = (idx, uri) else {
                    return Err(VerifyError::new(
                        Check::Status,
                        "status is not a Token Status List reference {idx, uri}",
                    ));
                };
                self.status
                    .check_token(uri, idx, &issuer)
                    .await
                    .map_err(status_error)?;
                checks.push(Check::Status);
            }
            None if kind == CredentialKind::ClinicianPrivilege => {
                return Err(VerifyError::new(
                    Check::Status,
                    "a privilege credential must carry a revocation status",
                ))
            }
            None => {}
        }

        Ok(VerifiedCredential {
            id: str_field(&credential, "id").map(str::to_string),
            kind,
            format: ProofFormat::SdJwt,
            issuer,
            subject,
            valid_from,
            valid_until,
            status: None,
            digest,
            checks,
            holder: Some(holder),
            disclosed: Some(revealed.paths),
        })
    }

    async fn verify_as(
        &self,
        input: &Value,
        profile: Profile,
    ) -> Result<VerifiedAnyCredential, VerifyError> {
        let key = sha256_of(input);
        let digest = hex::encode(key);
        let cached = self.still_proven(&key).await;
        let hit = cached.is_some();
        let proven = match cached {
            Some(p) => {
                self.proofs.hits.fetch_add(1, Ordering::Relaxed);
                p
            }
            None => {
                self.proofs.misses.fetch_add(1, Ordering::Relaxed);
                Arc::new(self.prove(input).await?)
            }
        };
        let format = proven.format;
        let credential = &proven.credential;
        let mut checks = vec![Check::Format, Check::Proof];
        let warnings = match proven.data_model.get() {
            Some(warnings) if hit => warnings.clone(),
            _ => check_data_model(credential, &self.bundle)?,
        };
        let types = type_names(credential);
        let kind = match CredentialKind::of_credential(credential) {
            Ok(kind) => Some(kind),
            Err(KindError::Unknown(_)) if profile == Profile::Any => None,
            Err(e) => return Err(VerifyError::new(Check::Format, e.to_string())),
        };
        let issuer = issuer_id(credential)?.to_string();

        let (valid_from, valid_until) = self.check_validity(credential, &proven.times)?;
        checks.push(Check::Validity);

        // The schema result depends only on the credential's bytes and the schemas this
        // verifier holds, so a cached proof also stands for it.
        let mut schema_checked = false;
        if let Some(kind) = kind {
            if !hit {
                crate::schema::check(kind, credential)
                    .map_err(|e| VerifyError::new(Check::Schema, e.to_string()))?;
            }
            schema_checked = true;
        }
        if credential.get("credentialSchema").is_some() {
            if !hit {
                check_credential_schemas(credential, &self.bundle)?;
            }
            schema_checked = true;
        }
        if schema_checked {
            checks.push(Check::Schema);
        }

        let subject = proven.subject.clone();
        match kind {
            Some(kind) => {
                let self_issued_consent = kind == CredentialKind::PatientConsent
                    && str_field(&subject, "id") == Some(&issuer);
                if !self_issued_consent && !self.trust.is_trusted(kind, &issuer) {
                    return Err(VerifyError::new(
                        Check::IssuerTrust,
                        format!("{issuer} is not trusted to issue {kind}"),
                    ));
                }
                checks.push(Check::IssuerTrust);
            }
            None => match self.trust.is_trusted_for_types(&types, &issuer) {
                None => {}
                Some(true) => checks.push(Check::IssuerTrust),
                Some(false) => {
                    return Err(VerifyError::new(
                        Check::IssuerTrust,
                        format!("{issuer} is not trusted to issue this credential type"),
                    ))
                }
            },
        }

        let status = match credential.get("credentialStatus") {
            Some(Value::Array(entries)) if entries.len() > 1 => {
                return Err(VerifyError::new(
                    Check::Status,
                    "more than one credentialStatus entry is not supported",
                ))
            }
            Some(Value::Array(entries)) => match entries.first() {
                Some(entry) => Some(status_entry(entry)?),
                None => None,
            },
            Some(entry) => Some(status_entry(entry)?),
            None => None,
        };
        match &status {
            Some(entry) => {
                self.status
                    .check(entry, &issuer)
                    .await
                    .map_err(status_error)?;
                checks.push(Check::Status);
            }
            None if kind == Some(CredentialKind::ClinicianPrivilege) => {
                return Err(VerifyError::new(
                    Check::Status,
                    "a privilege credential must carry a revocation status",
                ))
            }
            None => {}
        }

        // Remembered only now that every check passed: a failure is never cached, and
        // credentials nobody trusts cannot crowd out the ones in use.
        if !hit {
            // A fresh `Proven`, never shared before this: the cell is empty.
            let _ = proven.data_model.set(warnings.clone());
            self.proofs.insert(key, proven.clone());
        }
        Ok(VerifiedAnyCredential {
            id: str_field(credential, "id").map(str::to_string),
            types,
            kind,
            format,
            issuer,
            subject,
            valid_from,
            valid_until,
            status,
            digest,
            checks,
            warnings,
        })
    }

    /// Returns the credential (the payload without its JWT registered claims), those
    /// claims' times, the signing method and the DID document it was found in.
    async fn check_jwt_credential(
        &self,
        jwt: &str,
    ) -> Result<(Value, JwtTimes, String, Arc<Value>), VerifyError> {
        let decoded = crate::jose::decode(jwt).map_err(jose_error)?;
        if let Some(typ) = decoded.typ.as_deref() {
            if !matches!(typ, "vc+jwt" | "vc-ld+jwt") {
                return Err(VerifyError::new(
                    Check::Format,
                    format!("typ {typ:?} is not a credential"),
                ));
            }
        }
        if decoded.payload.get("vc").is_some() {
            return Err(VerifyError::new(
                Check::Format,
                "VC Data Model 1.1 JWT (`vc` claim) is not supported",
            ));
        }
        let issuer = issuer_id(&decoded.payload)?;
        let (key, did_doc) = self.issuer_key(&decoded.kid, issuer).await?;
        self.proofs.proof_checks.fetch_add(1, Ordering::Relaxed);
        self.verify_jws(jwt, &decoded, &key)?;
        let mut credential = decoded.payload;
        let times = take_registered_claims(&mut credential)?;
        Ok((credential, times, decoded.kid, did_doc))
    }

    /// Returns the credential without its proofs, the signing method and its DID document.
    /// Every proof of a set must verify, each by a key of the issuer's listed under
    /// `assertionMethod`.
    async fn check_di_credential(
        &self,
        doc: &Value,
    ) -> Result<(Value, String, Arc<Value>), VerifyError> {
        let proofs = di_proofs(doc, "assertionMethod")?;
        let issuer = issuer_id(doc)?;
        let mut signer: Option<(String, Arc<Value>)> = None;
        for proof in &proofs {
            let vm = str_field(proof, "verificationMethod").unwrap_or_default();
            let (_, did_doc) = self.issuer_key(vm, issuer).await?;
            if signer.is_none() {
                signer = Some((vm.to_string(), did_doc));
            }
        }
        let (vm, did_doc) = signer.ok_or_else(|| VerifyError::new(Check::Format, "no proof"))?;
        self.proofs.proof_checks.fetch_add(1, Ordering::Relaxed);
        verify_di(doc, did_doc.clone(), false, self.bundle.loader()).await?;
        let mut credential = doc.clone();
        if let Some(obj) = credential.as_object_mut() {
            obj.remove("proof");
        }
        Ok((credential, vm, did_doc))
    }

    fn check_validity(
        &self,
        credential: &Value,
        times: &JwtTimes,
    ) -> Result<ValidityPeriod, VerifyError> {
        let now = Utc::now();
        let parse = |key: &str| -> Result<Option<DateTime<Utc>>, VerifyError> {
            match credential.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => crate::time::parse(s).map(Some).ok_or_else(|| {
                    VerifyError::new(
                        Check::Validity,
                        format!("{key} is not an RFC 3339 date-time with a time zone"),
                    )
                }),
                Some(_) => Err(VerifyError::new(
                    Check::Validity,
                    format!("{key} is not a date-time string"),
                )),
            }
        };
        let from = parse("validFrom")?;
        let until = parse("validUntil")?;
        if let (Some(f), Some(u)) = (from, until) {
            if u < f {
                return Err(VerifyError::new(
                    Check::Validity,
                    "validUntil is before validFrom",
                ));
            }
        }
        if from.is_some_and(|f| f > now + self.skew) {
            return Err(VerifyError::new(Check::Validity, "not yet valid"));
        }
        if until.is_some_and(|u| u + self.skew < now) {
            return Err(VerifyError::new(Check::Validity, "expired"));
        }
        let (now, skew) = (now.timestamp(), self.skew.num_seconds());
        if times.nbf.is_some_and(|t| t > now + skew) {
            return Err(VerifyError::new(Check::Validity, "not yet valid (nbf)"));
        }
        if times.exp.is_some_and(|t| t.saturating_add(skew) < now) {
            return Err(VerifyError::new(Check::Validity, "expired (exp)"));
        }
        if times.iat.is_some_and(|t| t > now + skew) {
            return Err(VerifyError::new(
                Check::Validity,
                "issued in the future (iat)",
            ));
        }
        Ok((from, until))
    }

    /// Verifies a presentation bound to `binding`, every credential in it, and that each
    /// credential belongs to the holder: what an access decision takes.
    pub async fn verify_presentation(
        &self,
        input: &Value,
        binding: &PresentationBinding,
    ) -> Result<VerifiedPresentation, VerifyError> {
        let (verified, _) = self.verify_bound(input, Bound::To(binding)).await?;
        Ok(verified)
    }

    /// As [`Verifier::verify_presentation`], bound to `domain` and to whichever challenge
    /// the presentation answers, which is returned with it: for a verifier that issued
    /// many challenges and checks the answered one against them after this (so that a
    /// forged presentation cannot spend somebody else's). The presentation is read once,
    /// where [`claimed_challenge`] and then [`Verifier::verify_presentation`] read it twice.
    pub async fn verify_presentation_answering(
        &self,
        input: &Value,
        domain: &str,
    ) -> Result<(VerifiedPresentation, String), VerifyError> {
        let (verified, vp) = self
            .verify_bound(input, Bound::Answering { domain })
            .await?;
        let answered = match verified.format {
            ProofFormat::DataIntegrity => di_proofs(&vp, "authentication")?
                .first()
                .and_then(|proof| str_field(proof, "challenge")),
            _ => str_field(&vp, "nonce"),
        };
        let challenge = answered.ok_or_else(no_challenge)?.to_string();
        Ok((verified, challenge))
    }

    /// A presentation bound as `bound`, its credentials and their holder binding; with the
    /// presentation as read (a JWT's payload).
    async fn verify_bound(
        &self,
        input: &Value,
        bound: Bound<'_>,
    ) -> Result<(VerifiedPresentation, Value), VerifyError> {
        let (format, vp, holder) = self
            .check_presentation(input, Some(bound), Profile::Access)
            .await?;
        let holder = holder.unwrap_or_default();
        let embedded = embedded_credentials(&vp)?;
        let mut credentials = Vec::with_capacity(embedded.len());
        for (i, vc) in embedded.into_iter().enumerate() {
            let verified = self.verify_credential(vc).await.map_err(|mut e| {
                e.credential = Some(i);
                e
            })?;
            credentials.push(verified);
        }
        check_holder_binding(&holder, &credentials)?;
        let verified = VerifiedPresentation {
            id: str_field(&vp, "id").map(str::to_string),
            holder,
            format,
            credentials,
            checks: vec![
                Check::Format,
                Check::Proof,
                Check::Validity,
                Check::Challenge,
                Check::Domain,
                Check::HolderBinding,
            ],
        };
        Ok((verified, vp))
    }

    /// Verifies a presentation of credentials of any type (the VC API's verify endpoint):
    /// its proof (by the holder's key when it names a holder), its validity, the challenge
    /// and domain when the caller gives them, and every credential as
    /// [`Verifier::verify_any_credential`] does. Holder binding is an access rule, not
    /// checked here.
    pub async fn verify_any_presentation(
        &self,
        input: &Value,
        binding: Option<&PresentationBinding>,
    ) -> Result<VerifiedAnyPresentation, VerifyError> {
        let digest = digest_of(input);
        let (format, vp, holder) = self
            .check_presentation(input, binding.map(Bound::To), Profile::Any)
            .await?;
        let embedded = embedded_credentials(&vp)?;
        let mut credentials = Vec::with_capacity(embedded.len());
        for (i, vc) in embedded.into_iter().enumerate() {
            let verified = self.verify_any_credential(vc).await.map_err(|mut e| {
                e.credential = Some(i);
                e
            })?;
            credentials.push(verified);
        }
        let mut checks = vec![Check::Format, Check::Proof, Check::Validity];
        if binding.is_some() {
            checks.extend([Check::Challenge, Check::Domain]);
        }
        Ok(VerifiedAnyPresentation {
            id: str_field(&vp, "id").map(str::to_string),
            holder,
            format,
            credentials,
            checks,
            digest,
        })
    }

    /// The presentation's own checks; returns it (a JWT's payload) and its holder.
    async fn check_presentation(
        &self,
        input: &Value,
        binding: Option<Bound<'_>>,
        profile: Profile,
    ) -> Result<(ProofFormat, Value, Option<String>), VerifyError> {
        let (format, vp) = match input {
            Value::String(jwt) => (
                ProofFormat::Jwt,
                self.check_jwt_presentation(jwt, binding, profile).await?,
            ),
            Value::Object(_) => (
                ProofFormat::DataIntegrity,
                self.check_di_presentation(input, binding, profile).await?,
            ),
            _ => {
                return Err(VerifyError::new(
                    Check::Format,
                    "a presentation is a JWT string or a JSON object",
                ))
            }
        };
        let holder = holder_id(&vp)?.map(str::to_string);
        Ok((format, vp, holder))
    }

    /// The key that signed a presentation: the holder's when it names one (always, for an
    /// access decision), under `authentication`.
    fn presentation_signer(vp: &Value, vm: &str, profile: Profile) -> Result<(), VerifyError> {
        match holder_id(vp)? {
            Some(holder) if did_of(vm) != holder => Err(VerifyError::new(
                Check::Proof,
                "signed with a key that does not belong to the holder",
            )),
            Some(_) => Ok(()),
            None if profile == Profile::Access => Err(VerifyError::new(
                Check::Format,
                "holder must be a DID string",
            )),
            None => Ok(()),
        }
    }

    async fn check_jwt_presentation(
        &self,
        jwt: &str,
        binding: Option<Bound<'_>>,
        profile: Profile,
    ) -> Result<Value, VerifyError> {
        let decoded = crate::jose::decode(jwt).map_err(jose_error)?;
        check_vp_typ(decoded.typ.as_deref())?;
        let vp = &decoded.payload;
        if vp.get("vp").is_some() {
            return Err(VerifyError::new(
                Check::Format,
                "VC Data Model 1.1 JWT (`vp` claim) is not supported",
            ));
        }
        check_vp_type(vp)?;
        Self::presentation_signer(vp, &decoded.kid, profile)?;
        if let Some(iss) = vp.get("iss") {
            if iss.as_str().is_none() || iss.as_str() != holder_id(vp)? {
                return Err(VerifyError::new(
                    Check::Format,
                    "iss is not the presentation's holder",
                ));
            }
        }
        let (key, _) = self
            .resolver
            .public_key(&decoded.kid, Relationship::Authentication)
            .await
            .map_err(did_error)?;
        self.verify_jws(jwt, &decoded, &key)?;
        let now = Utc::now().timestamp();
        let skew = self.skew.num_seconds();
        let time = |claim: &str| -> Result<Option<i64>, VerifyError> {
            vp.get(claim).map(|v| numeric_date(claim, v)).transpose()
        };
        match time("exp")? {
            Some(exp) if exp.saturating_add(skew) >= now => {}
            Some(_) => return Err(VerifyError::new(Check::Validity, "presentation expired")),
            None if profile == Profile::Access => {
                return Err(VerifyError::new(Check::Validity, "presentation has no exp"))
            }
            None => {}
        }
        if time("iat")?.is_some_and(|iat| iat > now + skew) {
            return Err(VerifyError::new(
                Check::Validity,
                "presentation issued in the future",
            ));
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now + skew) {
            return Err(VerifyError::new(
                Check::Validity,
                "presentation not yet valid (nbf)",
            ));
        }
        if let Some(binding) = binding {
            let nonce = str_field(vp, "nonce");
            binding.check_challenge(nonce, nonce, "nonce is not this verifier's challenge")?;
            let domain = binding.domain();
            let aud_ok = match vp.get("aud") {
                Some(Value::String(a)) => a == domain,
                Some(Value::Array(a)) => a.len() == 1 && a[0] == domain,
                _ => false,
            };
            if !aud_ok {
                return Err(VerifyError::new(
                    Check::Domain,
                    "aud is not this verifier's DID",
                ));
            }
        }
        Ok(decoded.payload)
    }

    async fn check_di_presentation(
        &self,
        vp: &Value,
        binding: Option<Bound<'_>>,
        profile: Profile,
    ) -> Result<Value, VerifyError> {
        check_vp_type(vp)?;
        let proofs = di_proofs(vp, "authentication")?;
        let mut did_doc = None;
        for proof in &proofs {
            let vm = str_field(proof, "verificationMethod").unwrap_or_default();
            Self::presentation_signer(vp, vm, profile)?;
            // Without a holder, every proof of a set is by one DID's keys.
            if let Some(first) = proofs
                .first()
                .and_then(|p| str_field(p, "verificationMethod"))
            {
                if did_of(first) != did_of(vm) {
                    return Err(VerifyError::new(
                        Check::Proof,
                        "the proofs of a presentation are by more than one DID",
                    ));
                }
            }
            let (_, doc) = self
                .resolver
                .public_key(vm, Relationship::Authentication)
                .await
                .map_err(did_error)?;
            did_doc.get_or_insert(doc);
        }
        let did_doc = did_doc.ok_or_else(|| VerifyError::new(Check::Format, "no proof"))?;
        verify_di(vp, did_doc, true, self.bundle.loader()).await?;
        for proof in &proofs {
            if let Some(expires) = str_field(proof, "expires") {
                let t = crate::time::parse(expires).ok_or_else(|| {
                    VerifyError::new(Check::Validity, "proof expires is not a date-time")
                })?;
                if t + self.skew < Utc::now() {
                    return Err(VerifyError::new(
                        Check::Validity,
                        "presentation proof expired",
                    ));
                }
            }
        }
        if let Some(binding) = binding {
            let first = proofs.first().and_then(|p| str_field(p, "challenge"));
            let domain = binding.domain();
            for proof in &proofs {
                binding.check_challenge(
                    str_field(proof, "challenge"),
                    first,
                    "proof challenge is not this verifier's",
                )?;
                let domain_ok = match proof.get("domain") {
                    Some(Value::String(d)) => d == domain,
                    Some(Value::Array(a)) => a.len() == 1 && a[0] == domain,
                    _ => false,
                };
                if !domain_ok {
                    return Err(VerifyError::new(
                        Check::Domain,
                        "proof domain is not this verifier's DID",
                    ));
                }
            }
        }
        Ok(vp.clone())
    }
}

/// The SD-JWT a credential travels as, if it is one: a string with a `~` (a compact JWS
/// has none).
fn as_sd_jwt(input: &Value) -> Option<&str> {
    input.as_str().map(str::trim).filter(|s| s.contains('~'))
}

/// An SD-JWT's `cnf.jwk` (RFC 7800): a public Ed25519 or P-256 key.
fn cnf_key(claims: &Value) -> Result<ssi::jwk::JWK, VerifyError> {
    let bad = |d: &str| VerifyError::new(Check::HolderBinding, d.to_string());
    let jwk = claims
        .get("cnf")
        .and_then(|c| c.get("jwk"))
        .and_then(Value::as_object)
        .ok_or_else(|| bad("the credential has no cnf.jwk"))?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(bad("cnf.jwk holds private key material"));
    }
    let jwk: ssi::jwk::JWK = serde_json::from_value(Value::Object(jwk.clone()))
        .map_err(|_| bad("cnf.jwk is not a JWK"))?;
    match &jwk.params {
        ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => Ok(jwk),
        ssi::jwk::Params::EC(p) if p.curve.as_deref() == Some("P-256") => Ok(jwk),
        _ => Err(bad("cnf.jwk is not an Ed25519 or P-256 key")),
    }
}

/// The credentials a presentation carries (at least one, at most
/// [`MAX_EMBEDDED_CREDENTIALS`]).
fn embedded_credentials(vp: &Value) -> Result<Vec<&Value>, VerifyError> {
    let embedded: Vec<&Value> = match vp.get("verifiableCredential") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ (Value::Object(_) | Value::String(_))) => vec![v],
        _ => Vec::new(),
    };
    if embedded.is_empty() {
        return Err(VerifyError::new(
            Check::Format,
            "the presentation carries no credential",
        ));
    }
    if embedded.len() > MAX_EMBEDDED_CREDENTIALS {
        return Err(VerifyError::new(
            Check::Format,
            format!("more than {MAX_EMBEDDED_CREDENTIALS} credentials"),
        ));
    }
    Ok(embedded)
}

/// A presentation's holder: a DID, as a string or an object with `id`; `None` without one.
fn holder_id(vp: &Value) -> Result<Option<&str>, VerifyError> {
    let bad = || VerifyError::new(Check::Format, "holder must be a DID string");
    let id = match vp.get("holder") {
        None => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).ok_or_else(bad)?,
        Some(_) => return Err(bad()),
    };
    if id.starts_with("did:") {
        Ok(Some(id))
    } else {
        Err(bad())
    }
}

/// A credential's issuer: a DID, as a string or as an object with `id` (VC Data Model 2.0
/// §4.7).
fn issuer_id(credential: &Value) -> Result<&str, VerifyError> {
    let bad = |detail: &str| VerifyError::new(Check::Format, detail.to_string());
    let id = match credential.get("issuer") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => o
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("an issuer object must have an id"))?,
        _ => {
            return Err(bad(
                "issuer must be a DID, as a string or an object with an id",
            ))
        }
    };
    if id.starts_with("did:") {
        Ok(id)
    } else {
        Err(bad("the issuer's id must be a DID"))
    }
}

/// A credential's `type` values.
pub fn type_names(credential: &Value) -> Vec<String> {
    match credential.get("type") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn status_entry(entry: &Value) -> Result<StatusEntry, VerifyError> {
    serde_json::from_value::<StatusEntry>(entry.clone())
        .map_err(|e| VerifyError::new(Check::Status, e.to_string()))
}

/// A JWT NumericDate (RFC 7519 §2): seconds, possibly with a fraction.
fn numeric_date(claim: &str, v: &Value) -> Result<i64, VerifyError> {
    let bad = || VerifyError::new(Check::Validity, format!("{claim} is not a NumericDate"));
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(f.floor() as i64),
        _ => Err(bad()),
    }
}

/// The JWT registered claims VC-JOSE-COSE lets a `vc+jwt` carry beside the credential.
const REGISTERED_CLAIMS: [&str; 6] = ["iss", "sub", "jti", "iat", "nbf", "exp"];

/// Checks and removes the registered claims of a `vc+jwt` payload, leaving the credential:
/// `iss` must be the issuer's id, `sub` a subject's id, `jti` the credential's id
/// (RFC 7519 §4.1, VC-JOSE-COSE §3.1.2); the times are returned, to be checked with the
/// clock skew every time the credential is verified.
fn take_registered_claims(payload: &mut Value) -> Result<JwtTimes, VerifyError> {
    let mismatch = |detail: &str| VerifyError::new(Check::Format, detail.to_string());
    if let Some(iss) = payload.get("iss") {
        if iss.as_str() != Some(issuer_id(payload)?) {
            return Err(mismatch("iss is not the credential's issuer"));
        }
    }
    if let Some(sub) = payload.get("sub") {
        let subjects: Vec<&Value> = match payload.get("credentialSubject") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(one) => vec![one],
            None => Vec::new(),
        };
        let named = sub.as_str().is_some_and(|sub| {
            subjects
                .iter()
                .any(|s| s.get("id").and_then(Value::as_str) == Some(sub))
        });
        if !named {
            return Err(mismatch("sub is not the id of the credential's subject"));
        }
    }
    if let Some(jti) = payload.get("jti") {
        if jti.as_str().is_none() || payload.get("id") != Some(jti) {
            return Err(mismatch("jti is not the credential's id"));
        }
    }
    let time = |claim: &str| {
        payload
            .get(claim)
            .map(|v| numeric_date(claim, v))
            .transpose()
    };
    let times = JwtTimes {
        iat: time("iat")?,
        nbf: time("nbf")?,
        exp: time("exp")?,
    };
    if let Some(obj) = payload.as_object_mut() {
        for claim in REGISTERED_CLAIMS {
            obj.remove(claim);
        }
    }
    Ok(times)
}

/// Whether `s` is an absolute URL (a DID, a `urn:`, an `https:` URL...), as VC Data Model
/// 2.0 requires of every `id`.
fn is_url(s: &str) -> bool {
    reqwest::Url::parse(s).is_ok()
}

/// A `name` or `description`: a string, a language value object
/// (`{"@value", "@language"?, "@direction"?}`), or a list of those (VC Data Model 2.0 §4.6,
/// §11.1).
fn is_international_string(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Object(o) => {
            o.get("@value").is_some_and(Value::is_string)
                && o.keys()
                    .all(|k| matches!(k.as_str(), "@value" | "@language" | "@direction"))
                && o.get("@language").is_none_or(Value::is_string)
                && o.get("@direction").is_none_or(Value::is_string)
        }
        Value::Array(a) => {
            !a.is_empty()
                && a.iter()
                    .all(|x| !x.is_array() && is_international_string(x))
        }
        _ => false,
    }
}

/// A property that is one object or a list of objects.
fn objects<'a>(v: Option<&'a Value>, name: &str) -> Result<Vec<&'a Value>, VerifyError> {
    let bad = || {
        VerifyError::new(
            Check::Format,
            format!("{name} must be an object or a list of objects"),
        )
    };
    match v {
        None => Ok(Vec::new()),
        Some(o @ Value::Object(_)) => Ok(vec![o]),
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => Ok(a.iter().collect()),
        Some(_) => Err(bad()),
    }
}

/// The shape VC Data Model 2.0 gives a credential, beyond what its proof established:
/// the base context first, `id`s as URLs, `name` and `description` as (language) strings,
/// a subject, and the digests of related resources this service bundles. Returns what was
/// carried without being checked.
fn check_data_model(
    credential: &Value,
    bundle: &crate::bundle::Bundle,
) -> Result<Vec<String>, VerifyError> {
    let format = |detail: String| VerifyError::new(Check::Format, detail);
    let first_context = match credential.get("@context") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match first_context {
        Some(crate::context::CREDENTIALS_V2) => {}
        Some("https://www.w3.org/2018/credentials/v1") => {
            return Err(format(
                "VC Data Model 1.1 credentials are not supported".into(),
            ))
        }
        _ => {
            return Err(format(format!(
                "the first @context must be {}",
                crate::context::CREDENTIALS_V2
            )))
        }
    }
    if let Some(id) = credential.get("id") {
        if !id.as_str().is_some_and(is_url) {
            return Err(format("id must be a URL".into()));
        }
    }
    if let Some(Value::Object(issuer)) = credential.get("issuer") {
        for key in ["name", "description"] {
            if issuer.get(key).is_some_and(|v| !is_international_string(v)) {
                return Err(format(format!(
                    "issuer {key} must be a string or language value"
                )));
            }
        }
    }
    for key in ["name", "description"] {
        if credential
            .get(key)
            .is_some_and(|v| !is_international_string(v))
        {
            return Err(format(format!(
                "{key} must be a string, a language value or a list of them"
            )));
        }
    }
    let subjects = objects(credential.get("credentialSubject"), "credentialSubject")?;
    if subjects.is_empty() {
        return Err(format("a credential must have a credentialSubject".into()));
    }
    for subject in &subjects {
        if let Some(id) = subject.get("id") {
            if !id.as_str().is_some_and(is_url) {
                return Err(format("credentialSubject id must be a URL".into()));
            }
        }
    }
    for name in [
        "credentialStatus",
        "credentialSchema",
        "refreshService",
        "termsOfUse",
        "evidence",
    ] {
        for entry in objects(credential.get(name), name)? {
            if let Some(id) = entry.get("id") {
                if !id.as_str().is_some_and(is_url) {
                    return Err(format(format!("{name} id must be a URL")));
                }
            }
            if name != "evidence" && entry.get("type").is_none() {
                return Err(format(format!("{name} must have a type")));
            }
        }
    }
    let mut warnings = Vec::new();
    for resource in objects(credential.get("relatedResource"), "relatedResource")? {
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| is_url(id))
            .ok_or_else(|| format("a relatedResource id must be a URL".into()))?;
        let Some(bytes) = bundle.resource(id) else {
            warnings.push(format!(
                "relatedResource {id} is not bundled: its digest was not checked"
            ));
            continue;
        };
        let digests = [
            (
                "digestSRI",
                crate::bundle::sri_matches as fn(&str, &[u8]) -> Option<bool>,
            ),
            ("digestMultibase", crate::bundle::multibase_matches),
        ];
        let mut checked = false;
        for (key, matches) in digests {
            if let Some(digest) = resource.get(key) {
                match digest.as_str().and_then(|d| matches(d, bytes)) {
                    Some(true) => checked = true,
                    Some(false) => {
                        return Err(format(format!(
                            "relatedResource {id}: {key} does not match the bundled resource"
                        )))
                    }
                    None => {
                        return Err(format(format!(
                            "relatedResource {id}: {key} is not a digest this verifier reads"
                        )))
                    }
                }
            }
        }
        if !checked {
            return Err(format(format!(
                "relatedResource {id} has no digestSRI or digestMultibase"
            )));
        }
    }
    Ok(warnings)
}

/// What an issuer checks of a credential of another type than fedgate's before signing it:
/// the VC Data Model 2.0 shape ([`Check::Format`]) and its `credentialSchema`s
/// ([`Check::Schema`]). Returns what is carried without being checked.
pub fn check_shape(
    credential: &Value,
    bundle: &crate::bundle::Bundle,
) -> Result<Vec<String>, VerifyError> {
    let warnings = check_data_model(credential, bundle)?;
    issuer_id(credential)?;
    if !type_names(credential)
        .iter()
        .any(|t| t == "VerifiableCredential")
    {
        return Err(VerifyError::new(
            Check::Format,
            "type does not include VerifiableCredential",
        ));
    }
    if credential.get("credentialSchema").is_some() {
        check_credential_schemas(credential, bundle)?;
    }
    Ok(warnings)
}

/// Checks a credential against each `credentialSchema` of type `JsonSchema` it names, with
/// the schemas this service bundles: a schema that is not bundled is never fetched, and the
/// credential is refused, since the check its issuer asked for cannot be made.
fn check_credential_schemas(
    credential: &Value,
    bundle: &crate::bundle::Bundle,
) -> Result<(), VerifyError> {
    let fail = |detail: String| VerifyError::new(Check::Schema, detail);
    for entry in objects(credential.get("credentialSchema"), "credentialSchema")? {
        let id = str_field(entry, "id").unwrap_or_default();
        match str_field(entry, "type") {
            Some("JsonSchema") => {}
            Some(other) => {
                return Err(fail(format!(
                    "credentialSchema type {other:?} is not supported (JsonSchema)"
                )))
            }
            None => return Err(fail("credentialSchema has no type".into())),
        }
        let validator = bundle.schema(id).ok_or_else(|| {
            fail(format!(
                "credentialSchema {id} is not bundled with this service (schemas are never fetched)"
            ))
        })?;
        if !validator.is_valid(credential) {
            let violations: Vec<String> = validator
                .iter_errors(credential)
                .take(5)
                .map(|e| {
                    let pointer = e.instance_path().to_string();
                    format!("{}: {e}", if pointer.is_empty() { "/" } else { &pointer })
                })
                .collect();
            return Err(fail(format!(
                "credentialSchema {id}: {}",
                violations.join("; ")
            )));
        }
    }
    Ok(())
}

fn has_type(v: &Value, ty: &str) -> bool {
    match v.get("type") {
        Some(Value::String(s)) => s == ty,
        Some(Value::Array(a)) => a.iter().any(|t| t == ty),
        _ => false,
    }
}

/// Each credential must belong to the holder:
/// - a privilege's subject is the holder;
/// - a study's sponsor is the holder;
/// - a consent is the holder's own (a patient presenting it), or its grantee is the holder,
///   the organization of a privilege the holder presented, or a study the holder presented.
fn check_holder_binding(
    holder: &str,
    credentials: &[VerifiedCredential],
) -> Result<(), VerifyError> {
    let orgs: Vec<&str> = credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::ClinicianPrivilege)
        .filter(|c| str_field(&c.subject, "id") == Some(holder))
        .filter_map(|c| str_field(&c.subject, "organization"))
        .collect();
    let studies: Vec<&str> = credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::ResearchStudy)
        .filter(|c| str_field(&c.subject, "sponsor") == Some(holder))
        .filter_map(|c| str_field(&c.subject, "id"))
        .collect();
    for (i, c) in credentials.iter().enumerate() {
        let fail = |detail: &str| VerifyError {
            check: Check::HolderBinding,
            detail: detail.to_string(),
            credential: Some(i),
        };
        let subject_id = str_field(&c.subject, "id");
        match c.kind {
            CredentialKind::ClinicianPrivilege => {
                if subject_id != Some(holder) {
                    return Err(fail("the privilege's subject is not the holder"));
                }
            }
            CredentialKind::ResearchStudy => {
                if str_field(&c.subject, "sponsor") != Some(holder) {
                    return Err(fail("the study's sponsor is not the holder"));
                }
            }
            CredentialKind::PatientConsent => {
                let grantee = c
                    .subject
                    .get("grantee")
                    .and_then(|g| g.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let bound = subject_id == Some(holder)
                    || grantee == holder
                    || orgs.contains(&grantee)
                    || studies.contains(&grantee);
                if !bound {
                    return Err(fail(
                        "the consent is granted neither to the holder nor to the holder's organization or study",
                    ));
                }
            }
        }
    }
    Ok(())
}

impl From<StatusError> for VerifyError {
    fn from(e: StatusError) -> Self {
        status_error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answered_challenge_must_be_one_and_the_same_across_proofs() {
        let answering = Bound::Answering {
            domain: "did:web:b",
        };
        assert!(answering
            .check_challenge(Some("c1"), Some("c1"), "wrong")
            .is_ok());
        let none = answering.check_challenge(None, None, "wrong").unwrap_err();
        assert_eq!(none.check, Check::Challenge);
        let split = answering
            .check_challenge(Some("c2"), Some("c1"), "wrong")
            .unwrap_err();
        assert_eq!(split.check, Check::Challenge);
        assert!(
            split.to_string().contains("different challenges"),
            "{split}"
        );
        let binding = PresentationBinding {
            challenge: "c1".into(),
            domain: "did:web:b".into(),
        };
        let to = Bound::To(&binding);
        assert!(to.check_challenge(Some("c1"), Some("c1"), "wrong").is_ok());
        let other = to
            .check_challenge(Some("c2"), Some("c2"), "wrong")
            .unwrap_err();
        assert_eq!(
            (other.check, other.detail.as_str()),
            (Check::Challenge, "wrong")
        );
        assert_eq!(to.domain(), answering.domain());
    }
    use crate::credentials::{self, StatusEntry};
    use crate::keys::{KeyAlgorithm, KeyPair};
    use crate::status::Bitstring;
    use crate::trust::StaticTrust;
    use serde_json::json;

    const OFFICE: &str = "did:web:office.cache.test";

    /// A credentialing office on loopback (DID document and signed status list) and a
    /// verifier that trusts it for privileges.
    struct Fixture {
        office: KeyPair,
        list_url: String,
        bits: Arc<Mutex<Bitstring>>,
        trust: Arc<StaticTrust>,
        verifier: Verifier,
    }

    async fn fixture() -> Fixture {
        let office = KeyPair::generate_did_web(OFFICE, KeyAlgorithm::Ed25519).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base =
            reqwest::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let list_url = format!("{base}status/revocation");
        let bits = Arc::new(Mutex::new(Bitstring::new()));
        let (key, url, served) = (office.clone(), list_url.clone(), bits.clone());
        let doc = office.did_document().unwrap();
        let app = axum::Router::new()
            .route(
                "/.well-known/did.json",
                axum::routing::get(move || {
                    let doc = doc.clone();
                    async move { axum::Json(doc) }
                }),
            )
            .route(
                "/status/revocation",
                axum::routing::get(move || {
                    let bits = served.lock().unwrap().clone();
                    let list = crate::status::list_credential(
                        key.did(),
                        &url,
                        &bits,
                        chrono::Duration::minutes(5),
                    )
                    .unwrap();
                    let signed = crate::status::sign_list(&list, &key).unwrap();
                    async move { signed }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let resolver = Arc::new(DidResolver::new(true));
        resolver.allow_web(OFFICE, base);
        let trust = Arc::new(StaticTrust::new().trust(CredentialKind::ClinicianPrivilege, OFFICE));
        let status = Arc::new(StatusCache::new(
            resolver.clone(),
            std::time::Duration::from_secs(60),
            true,
        ));
        let verifier = Verifier::new(resolver, trust.clone(), status);
        Fixture {
            office,
            list_url,
            bits,
            trust,
            verifier,
        }
    }

    impl Fixture {
        /// A privilege for `clinician` at status index `index`, valid until `until`.
        async fn privilege(
            &self,
            index: usize,
            until: DateTime<Utc>,
            format: ProofFormat,
        ) -> (Value, StatusEntry) {
            let status = StatusEntry::revocation(&self.list_url, index);
            let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
            let vc = credentials::unsigned_credential(
                CredentialKind::ClinicianPrivilege,
                OFFICE,
                json!({
                    "id": clinician.did(),
                    "name": "Dr. Cache",
                    "npi": "1234567893",
                    "role": "physician",
                    "specialty": "207R00000X",
                    "organization": "did:web:hospital-a.test",
                    "privileges": [{"facility": "did:web:hospital-b.test", "domains": ["clinical"], "actions": ["read"]}]
                }),
                Utc::now() - chrono::Duration::hours(2),
                Some(until),
                Some(&status),
            );
            let vc = credentials::issue(vc, &self.office, format).await.unwrap();
            (vc, status)
        }

        fn checks(&self) -> u64 {
            self.verifier.proofs.stats().proof_checks
        }
    }

    fn in_a_month() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(30)
    }

    #[tokio::test]
    async fn a_hit_skips_the_signature_work() {
        let f = fixture().await;
        for (i, format) in [ProofFormat::Jwt, ProofFormat::DataIntegrity]
            .into_iter()
            .enumerate()
        {
            let (vc, _) = f.privilege(10 + i, in_a_month(), format).await;
            let before = f.checks();
            let first = f.verifier.verify_credential(&vc).await.unwrap();
            assert_eq!(f.checks(), before + 1);
            let second = f.verifier.verify_credential(&vc).await.unwrap();
            assert_eq!(
                f.checks(),
                before + 1,
                "{format:?}: signature checked again"
            );
            assert_eq!(first.subject, second.subject);
            assert_eq!(first.digest, second.digest);
            assert_eq!(first.checks, second.checks);
        }
        let stats = f.verifier.proofs.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 2, 2));
    }

    #[tokio::test]
    async fn a_hit_answers_the_data_model_warnings_of_the_first_check() {
        let f = fixture().await;
        // A credential of a type beyond the three, pointing at a resource this verifier
        // has not bundled: a warning, not a failure.
        let vc = json!({
            "@context": ["https://www.w3.org/ns/credentials/v2"],
            "type": ["VerifiableCredential"],
            "issuer": OFFICE,
            "validFrom": crate::time::rfc3339(Utc::now() - chrono::Duration::hours(1)),
            "credentialSubject": {"id": "did:example:nurse"},
            "relatedResource": [{
                "id": "https://office.example/terms.json",
                "digestSRI": "sha384-ZGVmYXVsdA"
            }]
        });
        let vc = credentials::sign_document(vc, &f.office, ProofFormat::Jwt, None)
            .await
            .unwrap();
        let first = f.verifier.verify_any_credential(&vc).await.unwrap();
        assert_eq!(first.warnings.len(), 1, "{:?}", first.warnings);
        assert!(
            first.warnings[0].contains("not bundled"),
            "{:?}",
            first.warnings
        );
        let before = f.checks();
        let second = f.verifier.verify_any_credential(&vc).await.unwrap();
        assert_eq!(f.checks(), before, "a hit");
        assert_eq!(second.warnings, first.warnings);
        assert_eq!(second.checks, first.checks);
    }

    #[tokio::test]
    async fn a_tampered_credential_misses_and_its_failure_is_not_cached() {
        let f = fixture().await;
        let (vc, _) = f.privilege(20, in_a_month(), ProofFormat::Jwt).await;
        f.verifier.verify_credential(&vc).await.unwrap();
        let jwt = vc.as_str().unwrap();
        // Another payload under the same signature.
        let (head, rest) = jwt.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let mut claims: Value =
            serde_json::from_slice(&crate::b64::decode(payload).unwrap()).unwrap();
        claims["credentialSubject"]["role"] = json!("administrator");
        let forged = Value::String(format!(
            "{head}.{}.{sig}",
            crate::b64::encode(&serde_json::to_vec(&claims).unwrap())
        ));
        for attempt in 1..=2 {
            let before = f.checks();
            let err = f.verifier.verify_credential(&forged).await.unwrap_err();
            assert_eq!(err.check, Check::Proof, "attempt {attempt}");
            assert_eq!(f.checks(), before + 1, "attempt {attempt} was not checked");
        }

        let (di, _) = f
            .privilege(21, in_a_month(), ProofFormat::DataIntegrity)
            .await;
        f.verifier.verify_credential(&di).await.unwrap();
        let mut forged = di.clone();
        forged["credentialSubject"]["role"] = json!("administrator");
        let before = f.checks();
        let err = f.verifier.verify_credential(&forged).await.unwrap_err();
        assert_eq!(err.check, Check::Proof);
        assert_eq!(f.checks(), before + 1);
    }

    #[tokio::test]
    async fn an_expired_credential_is_refused_even_when_cached() {
        let mut f = fixture().await;
        let (vc, _) = f
            .privilege(
                30,
                Utc::now() - chrono::Duration::minutes(10),
                ProofFormat::Jwt,
            )
            .await;
        // Within a generous clock skew it is still valid, and gets cached.
        f.verifier.skew = chrono::Duration::hours(1);
        f.verifier.verify_credential(&vc).await.unwrap();
        let before = f.checks();
        f.verifier.skew = chrono::Duration::seconds(60);
        let err = f.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(
            (err.check, err.detail.as_str()),
            (Check::Validity, "expired")
        );
        assert_eq!(f.checks(), before, "the refusal came from the cached proof");
    }

    #[tokio::test]
    async fn jwt_time_claims_are_checked_even_when_cached() {
        let mut f = fixture().await;
        let (vc, _) = f.privilege(35, in_a_month(), ProofFormat::Jwt).await;
        let jwt = vc.as_str().unwrap();
        let mut payload = crate::jose::decode(jwt).unwrap().payload;
        let id = payload["id"].clone();
        let subject = payload["credentialSubject"]["id"].clone();
        payload["iss"] = json!(OFFICE);
        payload["sub"] = subject;
        payload["jti"] = id;
        payload["exp"] = json!((Utc::now() - chrono::Duration::minutes(10)).timestamp());
        let vc = json!(crate::jose::sign(&payload, &f.office, "vc+jwt").unwrap());
        // The registered claims do not fail the type's schema (no additional properties).
        f.verifier.skew = chrono::Duration::hours(1);
        let verified = f.verifier.verify_credential(&vc).await.unwrap();
        assert_eq!(verified.kind, CredentialKind::ClinicianPrivilege);
        let before = f.checks();
        f.verifier.skew = chrono::Duration::seconds(60);
        let err = f.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(
            (err.check, err.detail.as_str()),
            (Check::Validity, "expired (exp)")
        );
        assert_eq!(f.checks(), before, "the refusal came from the cached proof");
    }

    #[tokio::test]
    async fn access_decisions_take_only_the_three_types() {
        let f = fixture().await;
        let board = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let licence = json!({
            "@context": [crate::context::CREDENTIALS_V2],
            "id": "urn:uuid:6a1f0c3e-2b7d-4e51-8d0a-5f7e9c1b3a24",
            "type": ["VerifiableCredential", "LicenceCredential"],
            "issuer": {"id": board.did(), "name": "A board"},
            "credentialSubject": {"id": "did:web:staff.test:nurse", "licence": "RN-7"},
        });
        for format in [ProofFormat::Jwt, ProofFormat::DataIntegrity] {
            let mut doc = licence.clone();
            if format == ProofFormat::DataIntegrity {
                // No context defines `licence` or the type: only the base terms.
                doc["type"] = json!(["VerifiableCredential"]);
                doc["credentialSubject"] = json!({"id": "did:web:staff.test:nurse"});
            }
            let vc =
                crate::credentials::issue_any(doc, &board, format, &crate::bundle::Bundle::empty())
                    .await
                    .unwrap();
            let any = f.verifier.verify_any_credential(&vc).await.unwrap();
            assert_eq!(any.kind, None);
            assert_eq!(any.issuer, board.did());
            assert_eq!(
                any.checks,
                [Check::Format, Check::Proof, Check::Validity],
                "{format:?}"
            );
            let err = f.verifier.verify_credential(&vc).await.unwrap_err();
            assert_eq!(err.check, Check::Format, "{format:?}");
            assert!(err.detail.contains("unknown credential type"), "{err}");
            // Nor in a presentation, even one bound as an access decision wants.
            let binding = PresentationBinding {
                challenge: "c".into(),
                domain: "did:web:hospital-b.test".into(),
            };
            let holder = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
            let vp = credentials::present(&[vc], &holder, &binding, ProofFormat::Jwt)
                .await
                .unwrap();
            let err = f
                .verifier
                .verify_presentation(&vp, &binding)
                .await
                .unwrap_err();
            assert_eq!((err.check, err.credential), (Check::Format, Some(0)));
            let any = f
                .verifier
                .verify_any_presentation(&vp, Some(&binding))
                .await
                .unwrap();
            assert_eq!(any.holder.as_deref(), Some(holder.did()));
        }
    }

    #[tokio::test]
    async fn a_revoked_credential_is_refused_even_when_cached() {
        let f = fixture().await;
        let (vc, status) = f.privilege(40, in_a_month(), ProofFormat::Jwt).await;
        f.verifier.verify_credential(&vc).await.unwrap();
        let before = f.checks();
        f.bits.lock().unwrap().set(40, true);
        // What a revocation push does: the list is fetched again on the next check.
        f.verifier.status.invalidate(&status.status_list_credential);
        let err = f.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::Status);
        assert_eq!(f.checks(), before);
    }

    #[tokio::test]
    async fn an_issuer_removed_from_trust_is_refused_even_when_cached() {
        let f = fixture().await;
        let (vc, _) = f.privilege(50, in_a_month(), ProofFormat::Jwt).await;
        f.verifier.verify_credential(&vc).await.unwrap();
        let before = f.checks();
        f.trust.remove(CredentialKind::ClinicianPrivilege, OFFICE);
        let err = f.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::IssuerTrust);
        assert_eq!(f.checks(), before);
        // Trusted again: still served from the cache.
        f.trust.add(CredentialKind::ClinicianPrivilege, OFFICE);
        f.verifier.verify_credential(&vc).await.unwrap();
        assert_eq!(f.checks(), before);
    }

    #[tokio::test]
    async fn a_changed_issuer_document_invalidates_the_cached_proof() {
        let f = fixture().await;
        let (vc, _) = f.privilege(60, in_a_month(), ProofFormat::Jwt).await;
        f.verifier.verify_credential(&vc).await.unwrap();
        // The office rotates its key: the old one is no longer in its document.
        let rotated = KeyPair::generate_did_web(OFFICE, KeyAlgorithm::Ed25519).unwrap();
        f.verifier.resolver.pin(rotated.did_document().unwrap());
        let before = f.checks();
        let err = f.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::Proof);
        assert_eq!(
            f.checks(),
            before + 1,
            "checked in full against the new document"
        );
    }

    #[tokio::test]
    async fn proofs_expire_after_the_ttl_and_a_disabled_cache_checks_every_time() {
        let f = fixture().await;
        let (vc, _) = f.privilege(70, in_a_month(), ProofFormat::Jwt).await;
        let verifier = Verifier::new(
            f.verifier.resolver.clone(),
            f.trust.clone(),
            f.verifier.status.clone(),
        )
        // A TTL long enough that two verifications on a loaded machine fit inside it.
        .with_proof_cache(ProofCache::new(16, Duration::from_secs(2)));
        verifier.verify_credential(&vc).await.unwrap();
        verifier.verify_credential(&vc).await.unwrap();
        assert_eq!(verifier.proofs.stats().proof_checks, 1);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        verifier.verify_credential(&vc).await.unwrap();
        assert_eq!(verifier.proofs.stats().proof_checks, 2);

        let uncached = Verifier::new(
            f.verifier.resolver.clone(),
            f.trust.clone(),
            f.verifier.status.clone(),
        )
        .with_proof_cache(ProofCache::disabled());
        for _ in 0..3 {
            uncached.verify_credential(&vc).await.unwrap();
        }
        assert_eq!(uncached.proofs.stats().proof_checks, 3);
        assert_eq!(uncached.proofs.stats().entries, 0);
    }

    #[tokio::test]
    async fn jws_signatures_are_checked_with_parsed_keys_and_other_keys_fall_back() {
        let f = fixture().await;
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::P256] {
            let signer = KeyPair::generate_did_key(alg).unwrap();
            let other = KeyPair::generate_did_key(alg).unwrap();
            let jws = crate::jose::sign(&json!({"a": 1}), &signer, "vc+jwt").unwrap();
            let decoded = crate::jose::decode(&jws).unwrap();
            // Twice: the second time with the key already parsed.
            for _ in 0..2 {
                f.verifier
                    .verify_jws(&jws, &decoded, &signer.public_jwk())
                    .unwrap();
            }
            let err = f
                .verifier
                .verify_jws(&jws, &decoded, &other.public_jwk())
                .unwrap_err();
            assert_eq!(err.check, Check::Proof, "{alg:?}");
            // The signature of another token over the same header and payload.
            let forged = format!(
                "{}.{}",
                jws.rsplit_once('.').unwrap().0,
                crate::jose::sign(&json!({"a": 2}), &signer, "vc+jwt")
                    .unwrap()
                    .rsplit_once('.')
                    .unwrap()
                    .1
            );
            let forged_decoded = crate::jose::decode(&forged).unwrap();
            let err = f
                .verifier
                .verify_jws(&forged, &forged_decoded, &signer.public_jwk())
                .unwrap_err();
            assert_eq!(err.check, Check::Proof, "{alg:?}");
        }
        // An EdDSA token is never checked against a P-256 key.
        let ed = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let p256 = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
        let jws = crate::jose::sign(&json!({"a": 1}), &ed, "vc+jwt").unwrap();
        let decoded = crate::jose::decode(&jws).unwrap();
        assert!(f
            .verifier
            .verify_jws(&jws, &decoded, &p256.public_jwk())
            .is_err());
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_what_is_used() {
        let cache = ProofCache::new(8, Duration::from_secs(60));
        let proven = || {
            Arc::new(Proven {
                format: ProofFormat::Jwt,
                credential: Value::Null,
                subject: Arc::new(Value::Null),
                times: JwtTimes::default(),
                signer: "did:key:z#z".into(),
                signer_doc: Arc::new(Value::Null),
                at: Instant::now(),
                data_model: std::sync::OnceLock::new(),
            })
        };
        let hot = [0xffu8; 32];
        cache.insert(hot, proven());
        for i in 0..100u8 {
            cache.insert([i; 32], proven());
            assert!(cache.stats().entries <= 8);
            // The hot entry is used between inserts, so it is never evicted.
            assert!(cache.get(&hot).is_some(), "hot entry evicted at {i}");
        }
        assert!(cache.get(&[0u8; 32]).is_none(), "old entry kept");
        assert!(cache.get(&[99u8; 32]).is_some());
    }

    #[test]
    fn percent_encoding_must_decode_to_utf8() {
        for ok in [
            "plain",
            "50% off",
            "%",
            "a%2",
            "%20",
            "caf%C3%A9",
            "%zz",
            "%E2%80%94",
        ] {
            assert!(percent_decodes_to_utf8(ok), "{ok}");
        }
        for bad in ["cr%dentials", "%C3", "%FF", "%C3%28", "ok%80"] {
            assert!(!percent_decodes_to_utf8(bad), "{bad}");
        }
        let doc = json!({"@context": ["https://www.w3.org/ns/cr%dentials/v2"]});
        assert_eq!(check_json_for_ssi(&doc).unwrap_err().check, Check::Format);
        let key = json!({"credentialSubject": {"%FF": 1}});
        assert_eq!(check_json_for_ssi(&key).unwrap_err().check, Check::Format);
    }

    #[test]
    fn numbers_must_be_64_bit_integers_or_decimals() {
        let parse = |n: &str| serde_json::from_str::<Value>(&format!("{{\"n\": {n}}}")).unwrap();
        for ok in [
            "0",
            "-1",
            "11",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "1.5e3",
        ] {
            assert!(check_json_for_ssi(&parse(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "1e3",
            "2E0",
            "1e-7",
            "18446744073709551616",
            "-9223372036854775809",
        ] {
            assert!(check_json_for_ssi(&parse(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_ssi_reads_must_be_rfc3339() {
        let good = json!({"validFrom": "2025-01-01T00:00:00Z", "proof": {"created": "2025-01-01T00:00:00.5+01:00"}});
        assert!(check_dates(&good).is_ok());
        for (key, bad) in [
            ("validFrom", json!({"validFrom": "1-11-29T00:00:00Z"})),
            ("validUntil", json!({"validUntil": 20250101})),
            (
                "created",
                json!({"proof": {"created": "-1-11-29T05:10:00Z"}}),
            ),
            ("expires", json!({"proof": {"expires": "2025-01-01"}})),
        ] {
            let e = check_dates(&bad).unwrap_err();
            assert_eq!(e.check, Check::Validity);
            assert!(e.detail.starts_with(key), "{e}");
        }
    }
}
