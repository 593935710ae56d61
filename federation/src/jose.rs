//! Compact JWS for VC-JOSE credentials (`vc+jwt`), presentations (`vp+jwt`) and status lists.
//!
//! The header is read before anything is trusted, and only a closed set of headers is
//! accepted: `alg` must be EdDSA or ES256 (never `none`, never an HMAC), the key is named by
//! `kid` only (a DID URL), and headers that would let the token carry or point at its own key
//! (`jwk`, `jku`, `x5u`, `x5c`) or change how it is processed (`crit`, `b64`) are refused.

use base64::Engine;
use serde_json::Value;
use ssi::jwk::{Algorithm, JWK};

use crate::keys::KeyPair;

/// Largest compact JWS accepted (credentials are small; status lists are ~22 KB encoded).
pub const MAX_JWS_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    #[error("not a compact JWS (three base64url parts)")]
    NotCompact,
    /// Larger than the limit the caller decoded with ([`MAX_JWS_BYTES`] for [`decode`]).
    #[error("JWS is larger than the accepted size")]
    TooLarge,
    #[error("JWS header is not valid: {0}")]
    BadHeader(String),
    #[error("JWS alg {0:?} is not accepted (EdDSA or ES256 only)")]
    AlgorithmNotAccepted(String),
    #[error("JWS header {0:?} is not accepted")]
    ForbiddenHeader(String),
    #[error("JWS has no kid naming a DID verification method")]
    MissingKid,
    #[error("JWS payload is not a JSON object: {0}")]
    BadPayload(String),
    #[error("JWS signature does not verify: {0}")]
    BadSignature(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct DecodedJws {
    pub alg: Algorithm,
    pub kid: String,
    pub typ: Option<String>,
    pub payload: Value,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn b64(s: &str) -> Result<Vec<u8>, JoseError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JoseError::NotCompact)
}

/// Splits and decodes a compact JWS, enforcing the header rules above and the
/// [`MAX_JWS_BYTES`] size limit.
pub fn decode(jws: &str) -> Result<DecodedJws, JoseError> {
    decode_with_limit(jws, MAX_JWS_BYTES)
}

/// As [`decode`], for callers whose tokens are legitimately larger (or must be smaller)
/// than [`MAX_JWS_BYTES`]: a token longer than `max_bytes` is refused with
/// [`JoseError::TooLarge`] before anything is decoded.
pub fn decode_with_limit(jws: &str, max_bytes: usize) -> Result<DecodedJws, JoseError> {
    if jws.len() > max_bytes {
        return Err(JoseError::TooLarge);
    }
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JoseError::NotCompact);
    };
    let header: Value =
        serde_json::from_slice(&b64(h)?).map_err(|e| JoseError::BadHeader(e.to_string()))?;
    let header = header
        .as_object()
        .ok_or_else(|| JoseError::BadHeader("not an object".into()))?;
    for (name, _) in header {
        match name.as_str() {
            "alg" | "kid" | "typ" | "cty" => {}
            other => return Err(JoseError::ForbiddenHeader(other.to_string())),
        }
    }
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = match alg_name {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        other => return Err(JoseError::AlgorithmNotAccepted(other.to_string())),
    };
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| k.starts_with("did:") && k.contains('#'))
        .ok_or(JoseError::MissingKid)?
        .to_string();
    let typ = header
        .get("typ")
        .and_then(Value::as_str)
        .map(str::to_string);
    let payload: Value =
        serde_json::from_slice(&b64(p)?).map_err(|e| JoseError::BadPayload(e.to_string()))?;
    if !payload.is_object() {
        return Err(JoseError::BadPayload("not an object".into()));
    }
    let signature = b64(s)?;
    if signature.is_empty() {
        return Err(JoseError::BadSignature("empty signature".into()));
    }
    Ok(DecodedJws {
        alg,
        kid,
        typ,
        payload,
        signing_input: format!("{h}.{p}").into_bytes(),
        signature,
    })
}

impl DecodedJws {
    /// Verifies the signature with `key`, which must be of the type `alg` names (an ES256
    /// token is never checked against an Ed25519 key or the reverse).
    pub fn verify(&self, key: &JWK) -> Result<(), JoseError> {
        let key_alg = match &key.params {
            ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => Algorithm::EdDSA,
            ssi::jwk::Params::EC(p) if p.curve.as_deref() == Some("P-256") => Algorithm::ES256,
            _ => return Err(JoseError::BadSignature("unsupported key type".into())),
        };
        if key_alg != self.alg {
            return Err(JoseError::BadSignature(
                "alg does not match the key's type".into(),
            ));
        }
        ssi::claims::jws::verify_bytes(self.alg, &self.signing_input, key, &self.signature)
            .map_err(|e| JoseError::BadSignature(e.to_string()))
    }

    /// A digest of the whole token, used to recognise a credential already verified.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(&self.signing_input);
        h.update(b".");
        h.update(&self.signature);
        hex::encode(h.finalize())
    }
}

/// Signs `payload` as a compact JWS with `typ`, naming the key by its verification method.
pub fn sign(payload: &Value, key: &KeyPair, typ: &str) -> Result<String, JoseError> {
    let header = serde_json::json!({
        "alg": match key.algorithm() {
            crate::keys::KeyAlgorithm::Ed25519 => "EdDSA",
            crate::keys::KeyAlgorithm::P256 => "ES256",
        },
        "kid": key.verification_method(),
        "typ": typ,
    });
    let enc = |v: &Value| -> Result<String, JoseError> {
        let bytes = serde_json::to_vec(v).map_err(|e| JoseError::Sign(e.to_string()))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    };
    let signing_input = format!("{}.{}", enc(&header)?, enc(payload)?);
    let sig = ssi::claims::jws::sign_bytes(
        key.algorithm().jws_algorithm(),
        signing_input.as_bytes(),
        key.jwk(),
    )
    .map_err(|e| JoseError::Sign(e.to_string()))?;
    Ok(format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyAlgorithm;

    fn enc(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn sign_and_verify_both_algorithms() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::P256] {
            let key = KeyPair::generate_did_key(alg).unwrap();
            let jws = sign(&serde_json::json!({"a": 1}), &key, "vc+jwt").unwrap();
            let d = decode(&jws).unwrap();
            assert_eq!(d.kid, key.verification_method());
            d.verify(&key.public_jwk()).unwrap();
            // The other key type never verifies it.
            let other = KeyPair::generate_did_key(match alg {
                KeyAlgorithm::Ed25519 => KeyAlgorithm::P256,
                KeyAlgorithm::P256 => KeyAlgorithm::Ed25519,
            })
            .unwrap();
            assert!(d.verify(&other.public_jwk()).is_err());
        }
    }

    #[test]
    fn hostile_headers_are_refused() {
        let p = enc(&serde_json::json!({"a": 1}));
        let case = |h: Value| decode(&format!("{}.{p}.AAAA", enc(&h)));
        assert_eq!(
            case(serde_json::json!({"alg": "none", "kid": "did:key:z#z"})).unwrap_err(),
            JoseError::AlgorithmNotAccepted("none".into())
        );
        assert_eq!(
            case(serde_json::json!({"alg": "HS256", "kid": "did:key:z#z"})).unwrap_err(),
            JoseError::AlgorithmNotAccepted("HS256".into())
        );
        for h in ["jwk", "jku", "x5u", "x5c", "crit", "b64"] {
            let mut header = serde_json::json!({"alg": "EdDSA", "kid": "did:key:z#z"});
            header[h] = serde_json::json!("x");
            assert_eq!(
                case(header).unwrap_err(),
                JoseError::ForbiddenHeader(h.into())
            );
        }
        assert_eq!(
            case(serde_json::json!({"alg": "EdDSA", "kid": "../../etc/passwd"})).unwrap_err(),
            JoseError::MissingKid
        );
        assert_eq!(decode("a.b").unwrap_err(), JoseError::NotCompact);
        assert_eq!(decode("a.b.c.d").unwrap_err(), JoseError::NotCompact);
    }

    #[test]
    fn size_limit_is_the_callers() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let filler = "x".repeat(MAX_JWS_BYTES);
        let big = sign(&serde_json::json!({ "filler": filler }), &key, "vc+jwt").unwrap();
        assert!(big.len() > MAX_JWS_BYTES);
        // The default limit refuses it; a larger one accepts it and it still verifies.
        assert_eq!(decode(&big).unwrap_err(), JoseError::TooLarge);
        let d = decode_with_limit(&big, 4 * MAX_JWS_BYTES).unwrap();
        d.verify(&key.public_jwk()).unwrap();
        // The limit is inclusive, and checked before anything is parsed.
        assert!(decode_with_limit(&big, big.len()).is_ok());
        assert_eq!(
            decode_with_limit(&big, big.len() - 1).unwrap_err(),
            JoseError::TooLarge
        );
        assert_eq!(
            decode_with_limit("not-a-jws", 3).unwrap_err(),
            JoseError::TooLarge
        );
        // A small token under a small limit decodes like `decode` does.
        let small = sign(&serde_json::json!({"a": 1}), &key, "vc+jwt").unwrap();
        assert_eq!(
            decode_with_limit(&small, small.len()).unwrap().digest(),
            decode(&small).unwrap().digest()
        );
    }

    #[test]
    fn tampered_payload_and_truncated_signature_fail() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let jws = sign(&serde_json::json!({"role": "nurse"}), &key, "vc+jwt").unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            enc(&serde_json::json!({"role": "physician"})),
            parts[2]
        );
        assert!(decode(&forged).unwrap().verify(&key.public_jwk()).is_err());
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert!(decode(&truncated)
            .map(|d| d.verify(&key.public_jwk()))
            .map_or(true, |r| r.is_err()));
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert!(decode(&stripped).is_err());
    }
}
