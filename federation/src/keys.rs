//! Key pairs, key files and the crypto inventory.
//!
//! A key file holds one private key and the DID it controls. It is written with mode 0600
//! and refused on load when anyone but the owner can read it: a key that others could have
//! copied is not a key this process should sign with.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ssi::jwk::{Algorithm, JWK};

/// Signature algorithms fedgate issues and accepts. Nothing else is ever verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum KeyAlgorithm {
    /// EdDSA over Ed25519: the default for people, devices and organizations.
    #[default]
    #[serde(rename = "Ed25519")]
    Ed25519,
    /// ECDSA over P-256 (ES256), for holders whose hardware only does P-256.
    #[serde(rename = "P-256")]
    P256,
}

impl KeyAlgorithm {
    /// The JOSE `alg` this key signs with.
    pub(crate) fn jws_algorithm(self) -> Algorithm {
        match self {
            KeyAlgorithm::Ed25519 => Algorithm::EdDSA,
            KeyAlgorithm::P256 => Algorithm::ES256,
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            "p-256" | "p256" | "es256" => Ok(KeyAlgorithm::P256),
            other => Err(KeyError::UnsupportedAlgorithm(other.to_string())),
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::P256 => "P-256",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported key algorithm {0:?} (use Ed25519 or P-256)")]
    UnsupportedAlgorithm(String),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    TooOpen { path: String, mode: u32 },
    #[error("key file {path} is not a fedgate key file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("key file {0} already exists; refusing to overwrite a key")]
    Exists(String),
    #[error("{0} is not a valid did:web host")]
    BadWebHost(String),
}

/// Writes a new secret file (a key, a token, a presentation) readable by its owner only
/// (0600), and syncs it to disk. An existing file is never overwritten: `AlreadyExists`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads a secret file (a key, a seed, credentials), refusing one that group or others
/// can read or write: such a file may already have leaked, and starting with it would
/// hide that. The bytes are wiped from memory when dropped.
pub fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
    let display = path.display().to_string();
    let io = |source| KeyError::Io {
        path: display.clone(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: display,
                mode,
            });
        }
    }
    Ok(zeroize::Zeroizing::new(std::fs::read(path).map_err(io)?))
}

/// One private key and the DID verification method it stands for.
#[derive(Clone)]
pub struct KeyPair {
    jwk: JWK,
    meta: KeyInfo,
}

/// What the crypto inventory lists about a key: never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    did: String,
    pub verification_method: String,
    pub algorithm: KeyAlgorithm,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// Who uses the key, e.g. "issuer assertion", "holder", "governance".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyFile {
    #[serde(flatten)]
    info: KeyInfo,
    private_jwk: JWK,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private material, not even in debug output.
        f.debug_struct("KeyPair")
            .field("info", &self.meta)
            .finish_non_exhaustive()
    }
}

fn generate_jwk(alg: KeyAlgorithm) -> Result<JWK, KeyError> {
    match alg {
        KeyAlgorithm::Ed25519 => {
            JWK::generate_ed25519().map_err(|e| KeyError::Generate(e.to_string()))
        }
        KeyAlgorithm::P256 => Ok(JWK::generate_p256()),
    }
}

impl KeyPair {
    /// A new did:key (people and devices).
    pub fn generate_did_key(alg: KeyAlgorithm) -> Result<Self, KeyError> {
        let mut jwk = generate_jwk(alg)?;
        let vm = ssi::dids::DIDKey::generate_url(&jwk.to_public())
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .to_string();
        let did = vm.split('#').next().unwrap_or_default().to_string();
        jwk.key_id = Some(vm.clone());
        Ok(Self::from_parts(jwk, did, vm, alg))
    }

    /// A new key for an organization's did:web (verification method `#key-1`).
    pub fn generate_did_web(did: &str, alg: KeyAlgorithm) -> Result<Self, KeyError> {
        if !did.starts_with("did:web:") {
            return Err(KeyError::BadWebHost(did.to_string()));
        }
        let mut jwk = generate_jwk(alg)?;
        let vm = format!("{did}#key-1");
        jwk.key_id = Some(vm.clone());
        Ok(Self::from_parts(jwk, did.to_string(), vm, alg))
    }

    fn from_parts(jwk: JWK, did: String, vm: String, algorithm: KeyAlgorithm) -> Self {
        KeyPair {
            jwk,
            meta: KeyInfo {
                did,
                verification_method: vm,
                algorithm,
                created: Utc::now(),
                expires: None,
                purpose: String::new(),
            },
        }
    }

    pub fn with_purpose(mut self, purpose: &str) -> Self {
        self.meta.purpose = purpose.to_string();
        self
    }

    pub fn did(&self) -> &str {
        &self.meta.did
    }

    pub fn verification_method(&self) -> &str {
        &self.meta.verification_method
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.meta.algorithm
    }

    pub fn info(&self) -> &KeyInfo {
        &self.meta
    }

    /// The private JWK, for signing inside this crate only.
    pub(crate) fn jwk(&self) -> &JWK {
        &self.jwk
    }

    pub fn public_jwk(&self) -> JWK {
        self.jwk.to_public()
    }

    /// The raw Ed25519 signing key, for signers outside JOSE (checkpoint notes); `None` for
    /// P-256 keys.
    pub fn ed25519_signing_key(&self) -> Option<ed25519_dalek::SigningKey> {
        match &self.jwk.params {
            ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => {
                let seed: zeroize::Zeroizing<[u8; 32]> =
                    zeroize::Zeroizing::new(p.private_key.as_ref()?.0.as_slice().try_into().ok()?);
                Some(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            _ => None,
        }
    }

    /// `publicKeyMultibase` of this key (a Multikey), as used in DID documents.
    fn public_key_multibase(&self) -> Result<String, KeyError> {
        let encoded = self
            .jwk
            .to_public()
            .to_multicodec()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(multibase::encode(
            multibase::Base::Base58Btc,
            encoded.as_bytes(),
        ))
    }

    /// The DID document an organization publishes at `/.well-known/did.json`.
    pub fn did_document(&self) -> Result<serde_json::Value, KeyError> {
        let did = self.did();
        let vm = self.verification_method();
        Ok(serde_json::json!({
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
            "id": did,
            "verificationMethod": [{
                "id": vm,
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": self.public_key_multibase()?,
            }],
            "assertionMethod": [vm],
            "authentication": [vm],
        }))
    }

    /// Writes the key file with mode 0600, refusing to overwrite an existing key.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let display = path.display().to_string();
        let io = |source| KeyError::Io {
            path: display.clone(),
            source,
        };
        if path.exists() {
            return Err(KeyError::Exists(display));
        }
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
        }
        let body = serde_json::to_vec_pretty(&KeyFile {
            info: self.meta.clone(),
            private_jwk: self.jwk.clone(),
        })
        .map_err(|e| KeyError::Malformed {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        write_private(path, &body).map_err(io)
    }

    /// Loads a key file, refusing one that group or others can read or write.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let display = path.display().to_string();
        let bytes = read_private(path)?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| KeyError::Malformed {
            path: display.clone(),
            reason: e.to_string(),
        })?;
        let mut jwk = file.private_jwk;
        if !is_private(&jwk) {
            return Err(KeyError::Malformed {
                path: display,
                reason: "the key has no private part".into(),
            });
        }
        jwk.key_id = Some(file.info.verification_method.clone());
        Ok(KeyPair {
            jwk,
            meta: file.info,
        })
    }

    /// Loads the key at `path`, or generates one with `make` and saves it there.
    pub fn load_or_create(
        path: &Path,
        make: impl FnOnce() -> Result<KeyPair, KeyError>,
    ) -> Result<Self, KeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            let key = make()?;
            key.save(path)?;
            Ok(key)
        }
    }
}

/// Key agreement (ECDH-ES) keys for encrypting to a DID's holder.
///
/// An Ed25519 did:key has no key-agreement key of its own; the did:key spec derives the
/// X25519 key from it (Edwards → Montgomery). A P-256 key is used for ECDH as it is.
pub mod agreement {
    use super::*;
    use crate::b64::encode as b64;

    fn okp_x25519(x: &[u8], d: Option<&[u8]>) -> serde_json::Value {
        let mut jwk = serde_json::json!({"kty": "OKP", "crv": "X25519", "x": b64(x)});
        if let Some(d) = d {
            jwk["d"] = serde_json::json!(b64(d));
        }
        jwk
    }

    fn ec_p256(params: &ssi::jwk::ECParams, private: bool) -> Option<serde_json::Value> {
        let mut jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(&params.x_coordinate.as_ref()?.0),
            "y": b64(&params.y_coordinate.as_ref()?.0),
        });
        if private {
            jwk["d"] = serde_json::json!(b64(&params.ecc_private_key.as_ref()?.0));
        }
        Some(jwk)
    }

    /// The public key-agreement JWK (josekit form) of a did:key holder.
    pub fn public_jwk_for_did(did: &str) -> Result<serde_json::Value, KeyError> {
        let bad = |r: &str| KeyError::Generate(format!("no key-agreement key for {did}: {r}"));
        let msid = did
            .strip_prefix("did:key:")
            .ok_or_else(|| bad("only did:key holders can receive encrypted responses"))?;
        let (_, bytes) = multibase::decode(msid).map_err(|e| bad(&e.to_string()))?;
        let encoded =
            ssi::multicodec::MultiEncoded::new(&bytes).map_err(|e| bad(&e.to_string()))?;
        let jwk = JWK::from_multicodec(encoded).map_err(|e| bad(&e.to_string()))?;
        match &jwk.params {
            ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => {
                let raw: [u8; 32] = p
                    .public_key
                    .0
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("bad Ed25519 key length"))?;
                let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw)
                    .map_err(|e| bad(&e.to_string()))?;
                if vk.is_weak() {
                    return Err(bad("weak key"));
                }
                Ok(okp_x25519(&vk.to_montgomery().to_bytes(), None))
            }
            ssi::jwk::Params::EC(p) => ec_p256(p, false).ok_or_else(|| bad("incomplete P-256 key")),
            _ => Err(bad("unsupported key type")),
        }
    }

    impl KeyPair {
        /// The private key-agreement JWK matching [`public_jwk_for_did`] (for decrypting).
        pub fn agreement_private_jwk(&self) -> Result<serde_json::Value, KeyError> {
            let bad = |r: &str| KeyError::Generate(format!("no key-agreement key: {r}"));
            match &self.jwk.params {
                ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => {
                    let seed: [u8; 32] = p
                        .private_key
                        .as_ref()
                        .ok_or_else(|| bad("no private key"))?
                        .0
                        .as_slice()
                        .try_into()
                        .map_err(|_| bad("bad Ed25519 key length"))?;
                    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                    let secret = zeroize::Zeroizing::new(sk.to_scalar_bytes());
                    Ok(okp_x25519(
                        &sk.verifying_key().to_montgomery().to_bytes(),
                        Some(secret.as_slice()),
                    ))
                }
                ssi::jwk::Params::EC(p) => {
                    ec_p256(p, true).ok_or_else(|| bad("incomplete P-256 key"))
                }
                _ => Err(bad("unsupported key type")),
            }
        }
    }
}

fn is_private(jwk: &JWK) -> bool {
    match &jwk.params {
        ssi::jwk::Params::OKP(p) => p.private_key.is_some(),
        ssi::jwk::Params::EC(p) => p.ecc_private_key.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        key.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = KeyPair::load(&path).unwrap();
        assert_eq!(back.did(), key.did());
        assert!(back.did().starts_with("did:key:z6Mk"));
        // Saving over an existing key is refused.
        assert!(matches!(key.save(&path), Err(KeyError::Exists(_))));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        KeyPair::generate_did_key(KeyAlgorithm::P256)
            .unwrap()
            .save(&path)
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn p256_did_key_and_debug_hides_private() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
        assert!(key.did().starts_with("did:key:zDn"));
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("\"d\""));
        assert!(!dbg.contains("ecc_private_key"));
    }

    #[test]
    fn did_web_document_lists_the_key() {
        let did = "did:web:127.0.0.1%3A8443";
        let key = KeyPair::generate_did_web(did, KeyAlgorithm::Ed25519).unwrap();
        let doc = key.did_document().unwrap();
        assert_eq!(doc["assertionMethod"][0], format!("{did}#key-1"));
        assert!(doc["verificationMethod"][0]["publicKeyMultibase"]
            .as_str()
            .unwrap()
            .starts_with("z6Mk"));
    }
}
