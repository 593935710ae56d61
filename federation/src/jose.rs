//! Compact JWS for VC-JOSE credentials (`vc+jwt`), presentations (`vp+jwt`) and status lists.
//!
//! The header is read before anything is trusted, as RFC 7515 and VC-JOSE-COSE say:
//! - `alg` must be `EdDSA` or `Ed25519` (RFC 9864's fully specified name for the same
//!   signature) over an Ed25519 key, or `ES256` over a P-256 key; never `none`, never an
//!   HMAC, and not `ES384` (fedgate neither makes nor resolves P-384 keys);
//! - the key is named by `kid` only (a DID URL): headers that would let the token carry or
//!   point at its own key (`jwk`, `jku`, `x5u`, `x5c`) are refused;
//! - `crit` is refused, since this verifier processes no extension parameter it could name,
//!   and so is `b64` other than `true` (an unencoded payload, RFC 7797);
//! - any other parameter is ignored (RFC 7515 §4: parameters not understood and not
//!   listed in `crit` must be ignored), except where a caller asks for a closed list (the
//!   federation manifest's own signatures).
//!
//! Header and payload are read with the strict JSON reader ([`crate::json`]): a signed
//! document with a key twice, a lone surrogate or invalid UTF-8 means different things to
//! different readers, and is refused before anything in it is read.

use std::fmt;

use serde_json::Value;
use ssi::jwk::{Algorithm, JWK};

use crate::json::StrictJsonError;
use crate::keys::KeyPair;

/// Largest compact JWS accepted (credentials are small; status lists are ~22 KB encoded).
pub(crate) const MAX_JWS_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JoseError {
    #[error("not a compact JWS (three base64url parts)")]
    NotCompact,
    /// Larger than the limit the caller decoded with (`MAX_JWS_BYTES` for [`decode`]).
    #[error("JWS is larger than the accepted size")]
    TooLarge,
    #[error("JWS header is not valid: {0}")]
    BadHeader(String),
    /// The protected header or the payload is not strict JSON (see [`crate::json`]). The
    /// message names what is wrong without quoting the input.
    #[error("JWS {part} is not strict JSON: {}", .source.summary())]
    Json {
        part: JwsPart,
        source: StrictJsonError,
    },
    #[error("JWS alg {0:?} is not accepted (EdDSA, Ed25519 or ES256 only)")]
    AlgorithmNotAccepted(String),
    #[error("JWS header {0:?} is not accepted")]
    ForbiddenHeader(String),
    /// `crit` names extension parameters this verifier must understand and does not.
    #[error("JWS header crit names parameters this verifier does not process: {0:?}")]
    UnknownCritical(Vec<String>),
    #[error("JWS has no kid naming a DID verification method")]
    MissingKid,
    #[error("JWS payload is not a JSON object: {0}")]
    BadPayload(String),
    #[error("JWS signature does not verify: {0}")]
    BadSignature(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl JoseError {
    /// Whether the token is malformed (not a compact JWS, or its header or payload is not
    /// a strict JSON object), as opposed to well-formed but refused (a hostile header, a
    /// bad signature).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            JoseError::NotCompact
                | JoseError::TooLarge
                | JoseError::BadHeader(_)
                | JoseError::Json { .. }
                | JoseError::BadPayload(_)
        )
    }
}

/// The two JSON parts of a JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsPart {
    Header,
    Payload,
}

impl fmt::Display for JwsPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwsPart::Header => "protected header",
            JwsPart::Payload => "payload",
        })
    }
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct DecodedJws {
    pub(crate) alg: Algorithm,
    pub kid: String,
    pub typ: Option<String>,
    pub payload: Value,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

/// A protected header that passed [`read_protected_header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtectedHeader {
    pub(crate) alg: Algorithm,
    /// A DID URL (`did:...#...`).
    pub(crate) kid: String,
    typ: Option<String>,
}

fn b64(s: &str) -> Result<Vec<u8>, JoseError> {
    crate::b64::decode(s).map_err(|_| JoseError::NotCompact)
}

/// Header names every caller accepts; `alg` and `kid` are also required.
const REQUIRED_HEADERS: [&str; 2] = ["alg", "kid"];

/// Header parameters that would let a token carry or point at its own key: always refused.
const KEY_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Which header parameters besides `alg` and `kid` a caller lets through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OtherHeaders<'a> {
    /// Only these (a format fedgate alone writes, such as the federation manifest).
    Only(&'a [&'a str]),
    /// Any parameter that is not refused outright, ignored unless read (RFC 7515 §4).
    Ignored,
}

/// Reads a base64url protected header with the rules of this module: strict JSON, an
/// object, never `jwk`, `jku`, `x5u`, `x5c` or `crit`, `b64` only as `true`, `alg` EdDSA,
/// Ed25519 or ES256, `kid` a DID URL, and other parameters as `others` says. The one
/// header check of fedgate: credentials, presentations, status lists and batches through
/// [`decode`], and the federation manifest's signatures (a closed list) directly.
pub(crate) fn read_protected_header(
    encoded: &str,
    others: OtherHeaders<'_>,
) -> Result<ProtectedHeader, JoseError> {
    let header = crate::json::parse_strict(&b64(encoded)?).map_err(|source| JoseError::Json {
        part: JwsPart::Header,
        source,
    })?;
    let header = header
        .as_object()
        .ok_or_else(|| JoseError::BadHeader("not an object".into()))?;
    if let Some(name) = KEY_HEADERS.iter().find(|n| header.contains_key(**n)) {
        return Err(JoseError::ForbiddenHeader((*name).to_string()));
    }
    match header.get("crit") {
        None => {}
        // RFC 7515 §4.1.11: a non-empty array of names; every one is an extension this
        // verifier would have to process, and it processes none.
        Some(Value::Array(names)) if !names.is_empty() && names.iter().all(Value::is_string) => {
            return Err(JoseError::UnknownCritical(
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            ))
        }
        Some(_) => return Err(JoseError::ForbiddenHeader("crit".into())),
    }
    if header.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err(JoseError::ForbiddenHeader("b64".into()));
    }
    if let OtherHeaders::Only(optional) = others {
        if let Some(other) = header.keys().find(|name| {
            !REQUIRED_HEADERS.contains(&name.as_str()) && !optional.contains(&name.as_str())
        }) {
            return Err(JoseError::ForbiddenHeader(other.to_string()));
        }
    }
    let alg = match header.get("alg") {
        // RFC 9864 deprecates the polymorphic `EdDSA` for the fully specified `Ed25519`;
        // both name the same signature here, checked against an Ed25519 key only.
        Some(Value::String(a)) if a == "EdDSA" || a == "Ed25519" => Algorithm::EdDSA,
        Some(Value::String(a)) if a == "ES256" => Algorithm::ES256,
        Some(Value::String(other)) => {
            return Err(JoseError::AlgorithmNotAccepted(other.to_string()))
        }
        _ => return Err(JoseError::AlgorithmNotAccepted(String::new())),
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
    Ok(ProtectedHeader { alg, kid, typ })
}

/// Splits and decodes a compact JWS, enforcing the header rules above and the
/// `MAX_JWS_BYTES` size limit.
pub fn decode(jws: &str) -> Result<DecodedJws, JoseError> {
    decode_with_limit(jws, MAX_JWS_BYTES)
}

/// As [`decode`], for callers whose tokens are legitimately larger (or must be smaller)
/// than `MAX_JWS_BYTES`: a token longer than `max_bytes` is refused with
/// [`JoseError::TooLarge`] before anything is decoded.
///
/// Header and payload are both read with [`crate::json::parse_strict`] before any value
/// in them is looked at.
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
    let ProtectedHeader { alg, kid, typ } = read_protected_header(h, OtherHeaders::Ignored)?;
    let payload = crate::json::parse_strict(&b64(p)?).map_err(|source| JoseError::Json {
        part: JwsPart::Payload,
        source,
    })?;
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
        // `h.p` is where the token starts: copied as it is, not formatted anew.
        signing_input: jws.as_bytes()[..h.len() + 1 + p.len()].to_vec(),
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
pub fn sign<T: serde::Serialize + ?Sized>(
    payload: &T,
    key: &KeyPair,
    typ: &str,
) -> Result<String, JoseError> {
    let header = serde_json::json!({
        "alg": match key.algorithm() {
            crate::keys::KeyAlgorithm::Ed25519 => "EdDSA",
            crate::keys::KeyAlgorithm::P256 => "ES256",
        },
        "kid": key.verification_method(),
        "typ": typ,
    });
    // The payload is written straight from its type: a batch of events is never built as
    // a JSON value first.
    let header = serde_json::to_vec(&header).map_err(|e| JoseError::Sign(e.to_string()))?;
    let payload = serde_json::to_vec(payload).map_err(|e| JoseError::Sign(e.to_string()))?;
    let signing_input = format!(
        "{}.{}",
        crate::b64::encode(&header),
        crate::b64::encode(&payload)
    );
    let sig = ssi::claims::jws::sign_bytes(
        key.algorithm().jws_algorithm(),
        signing_input.as_bytes(),
        key.jwk(),
    )
    .map_err(|e| JoseError::Sign(e.to_string()))?;
    Ok(format!("{signing_input}.{}", crate::b64::encode(&sig)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyAlgorithm;

    fn enc(v: &Value) -> String {
        crate::b64::encode(&serde_json::to_vec(v).unwrap())
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
    fn registered_and_unknown_headers_follow_rfc_7515() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let kid = key.verification_method().to_string();
        let payload = br#"{"a":1}"#;
        let with = |header: Value| signed_raw(&serde_json::to_vec(&header).unwrap(), payload, &key);
        // RFC 9864's fully specified name verifies like EdDSA, against an Ed25519 key only.
        let ed = decode(&with(serde_json::json!({"alg": "Ed25519", "kid": kid}))).unwrap();
        ed.verify(&key.public_jwk()).unwrap();
        let p256 = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
        assert!(ed.verify(&p256.public_jwk()).is_err());
        // Unknown parameters not named in crit are ignored, and so is b64: true.
        let extra = serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "vc+jwt",
            "cty": "vc", "x-vendor": {"a": 1}, "x5t#S256": "abc", "b64": true});
        decode(&with(extra))
            .unwrap()
            .verify(&key.public_jwk())
            .unwrap();
        // crit names an extension this verifier does not process: refused, as a forgery.
        let err = decode(&with(serde_json::json!({"alg": "EdDSA", "kid": kid,
            "crit": ["exp"], "exp": 1})))
        .unwrap_err();
        assert_eq!(err, JoseError::UnknownCritical(vec!["exp".into()]));
        assert!(!err.is_malformed());
        for crit in [serde_json::json!([]), serde_json::json!([1])] {
            let err = decode(&with(
                serde_json::json!({"alg": "EdDSA", "kid": kid, "crit": crit}),
            ));
            assert_eq!(err.unwrap_err(), JoseError::ForbiddenHeader("crit".into()));
        }
        // An unencoded payload, and the algorithms fedgate does not take.
        let err = decode(&with(
            serde_json::json!({"alg": "EdDSA", "kid": kid, "b64": false}),
        ));
        assert_eq!(err.unwrap_err(), JoseError::ForbiddenHeader("b64".into()));
        for alg in ["ES384", "HS512", "RS256", "EdDSA ", "ed25519"] {
            let err = decode(&with(serde_json::json!({"alg": alg, "kid": kid})));
            assert_eq!(
                err.unwrap_err(),
                JoseError::AlgorithmNotAccepted(alg.into())
            );
        }
        let err = decode(&with(serde_json::json!({"alg": ["EdDSA"], "kid": kid})));
        assert_eq!(
            err.unwrap_err(),
            JoseError::AlgorithmNotAccepted(String::new())
        );
        // A closed list (the manifest's) still refuses what it does not name.
        let h = enc(&serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "x"}));
        assert_eq!(
            read_protected_header(&h, OtherHeaders::Only(&[])).unwrap_err(),
            JoseError::ForbiddenHeader("typ".into())
        );
        assert!(read_protected_header(&h, OtherHeaders::Only(&["typ"])).is_ok());
    }

    /// A token whose key signed exactly these header and payload bytes.
    fn signed_raw(header: &[u8], payload: &[u8], key: &KeyPair) -> String {
        let b64 = |b: &[u8]| crate::b64::encode(b);
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = ssi::claims::jws::sign_bytes(
            key.algorithm().jws_algorithm(),
            input.as_bytes(),
            key.jwk(),
        )
        .unwrap();
        format!("{input}.{}", b64(&sig))
    }

    #[test]
    fn header_and_payload_are_read_strictly() {
        let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let kid = key.verification_method();
        let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"vc+jwt"}}"#);
        let ok = signed_raw(header.as_bytes(), br#"{"role":"nurse"}"#, &key);
        decode(&ok).unwrap().verify(&key.public_jwk()).unwrap();

        let payload_error =
            |payload: &[u8]| match decode(&signed_raw(header.as_bytes(), payload, &key))
                .unwrap_err()
            {
                JoseError::Json {
                    part: JwsPart::Payload,
                    source,
                } => source,
                other => panic!("{other:?}"),
            };
        assert_eq!(
            payload_error(br#"{"role":"nurse","role":"physician"}"#),
            StrictJsonError::DuplicateKey { key: "role".into() }
        );
        assert!(matches!(
            payload_error(b"{\"role\":\"nurse\xff\"}"),
            StrictJsonError::InvalidUtf8 { .. }
        ));
        assert_eq!(
            payload_error(br#"{"role":"\ud800"}"#),
            StrictJsonError::LoneSurrogate
        );
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(70), "]".repeat(70));
        assert_eq!(payload_error(deep.as_bytes()), StrictJsonError::TooDeep);

        // The header: `alg` twice reads as "none" to a first-wins reader.
        let twice = format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{kid}"}}"#);
        let err = decode(&signed_raw(twice.as_bytes(), b"{}", &key)).unwrap_err();
        assert!(
            matches!(
                err,
                JoseError::Json {
                    part: JwsPart::Header,
                    source: StrictJsonError::DuplicateKey { .. }
                }
            ),
            "{err:?}"
        );
        assert!(err.is_malformed());
        // The message names the problem without quoting the document.
        assert_eq!(
            err.to_string(),
            "JWS protected header is not strict JSON: an object key appears twice"
        );
        // Hostile but well-formed headers are not "malformed": they fail as forgeries.
        assert!(!JoseError::AlgorithmNotAccepted("none".into()).is_malformed());
        assert!(!JoseError::ForbiddenHeader("jwk".into()).is_malformed());
        assert!(!JoseError::MissingKid.is_malformed());
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
