//! The signed manifest: a JWS in General JSON Serialization with one signature per
//! governance key, its protected headers, co-signing, verification against a threshold of
//! pinned governance keys, and the bounded, atomic file reads and writes of signed files.
//! Apart from the manifest's own rules, which hold whoever signed it.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read as _;
use std::path::Path;

use crate::b64::encode as b64;
use serde::{Deserialize, Serialize};
use ssi::jwk::Algorithm;

use crate::jose::{self, JoseError};
use crate::keys::{KeyAlgorithm, KeyPair};
use crate::registry::manifest::{governance_key_jwk, sorted, Governance, Manifest};
use crate::registry::{ManifestPart, RegistryError, MAX_MANIFEST_BYTES, MAX_SIGNATURES};

pub(super) fn unb64(s: &str) -> Option<Vec<u8>> {
    crate::b64::decode(s).ok()
}

/// One signature of a [`SignedManifest`]. Unprotected headers are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwsSignature {
    pub(super) protected: String,
    pub(super) signature: String,
}

/// A manifest with its governance signatures, as stored and exchanged:
/// `{"payload": b64url(manifest), "signatures": [{"protected": …, "signature": …}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub(super) payload: String,
    pub(super) signatures: Vec<JwsSignature>,
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
    let header = jose::read_protected_header(protected, jose::OtherHeaders::Only(&[])).map_err(
        |e| match e {
            JoseError::Json { source, .. } => RegistryError::NotStrictJson {
                part: ManifestPart::Header(index),
                source,
            },
            JoseError::NotCompact => bad("not base64url".into()),
            other => bad(other.to_string()),
        },
    )?;
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

pub(super) fn io_error(path: &Path, e: impl fmt::Display) -> RegistryError {
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
