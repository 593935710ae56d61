//! Encrypting a response to the requester (JWE, ECDH-ES + A256GCM).
//!
//! The recipient key is the presentation holder's key-agreement key, derived from its
//! did:key, so only the person who proved control of that DID can read the records.

use josekit::jwe::{self, JweHeader};
use josekit::jwk::Jwk;

#[derive(Debug, thiserror::Error)]
pub enum JweError {
    #[error("{0}")]
    Key(String),
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("decryption failed")]
    Decrypt,
}

fn to_jwk(v: serde_json::Value) -> Result<Jwk, JweError> {
    match v {
        serde_json::Value::Object(map) => {
            Jwk::from_map(map).map_err(|e| JweError::Key(e.to_string()))
        }
        _ => Err(JweError::Key("not a JWK".into())),
    }
}

/// Encrypts `payload` for the holder of `did` as a compact JWE.
pub fn encrypt_for(did: &str, payload: &[u8]) -> Result<String, JweError> {
    let public = federation::keys::agreement::public_jwk_for_did(did)
        .map_err(|e| JweError::Key(e.to_string()))?;
    let jwk = to_jwk(public)?;
    let encrypter = jwe::ECDH_ES
        .encrypter_from_jwk(&jwk)
        .map_err(|e| JweError::Key(e.to_string()))?;
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    header.set_content_type("application/fhir+json");
    jwe::serialize_compact(payload, &header, &encrypter)
        .map_err(|e| JweError::Encrypt(e.to_string()))
}

/// Decrypts a compact JWE with the holder's key (the requester side; used by tests and the
/// demo, and by any client that holds the key).
pub fn decrypt_with(holder: &federation::keys::KeyPair, token: &str) -> Result<Vec<u8>, JweError> {
    let private = holder
        .agreement_private_jwk()
        .map_err(|e| JweError::Key(e.to_string()))?;
    let jwk = to_jwk(private)?;
    let decrypter = jwe::ECDH_ES
        .decrypter_from_jwk(&jwk)
        .map_err(|e| JweError::Key(e.to_string()))?;
    let (payload, _) =
        jwe::deserialize_compact(token, &decrypter).map_err(|_| JweError::Decrypt)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::keys::{KeyAlgorithm, KeyPair};

    #[test]
    fn only_the_holder_can_open_it() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::P256] {
            let holder = KeyPair::generate_did_key(alg).unwrap();
            let other = KeyPair::generate_did_key(alg).unwrap();
            let jwe = encrypt_for(holder.did(), b"{\"resourceType\":\"Bundle\"}").unwrap();
            assert_eq!(
                decrypt_with(&holder, &jwe).unwrap(),
                b"{\"resourceType\":\"Bundle\"}"
            );
            assert!(decrypt_with(&other, &jwe).is_err());
        }
        assert!(encrypt_for("did:web:org.example", b"x").is_err());
    }
}
