//! OpenID for Verifiable Credential Issuance 1.0 (final), pre-authorized code flow: the
//! protocol's parts that do not depend on the HTTP handlers (which are in `routes`).
//!
//! - credential configurations: one per type this office issues and per format
//!   (`{Type}_ldp` → `ldp_vc`, Data Integrity; `{Type}_jwt` → `jwt_vc_json`, VC-JOSE;
//!   `{Type}_sd_jwt` → `dc+sd-jwt`), and the two metadata documents;
//! - offers: the pre-authorized code, the transaction code, the offer URL and its QR code
//!   (PNG and SVG);
//! - the key proof (`openid4vci-proof+jwt`): its header, signature, audience, age and
//!   nonce, and the holder DID it proves (the did:key or did:jwk of `kid`, or the did:jwk
//!   of a `jwk`).
//!
//! Everything issued through here goes through the office's one issue path afterwards
//! (status index, record, revocation): this module decides only whether to issue.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use federation::credentials::{CredentialKind, ProofFormat};
use federation::did::{DidResolver, Relationship};
use federation::keys::KeyAlgorithm;
use serde_json::{json, Value};
use service::nonce::Nonces;
use ssi::jwk::{Algorithm, Params, JWK};

use crate::error::{IssuerError, ProtocolError};
use crate::offers::{Offer, Offers, Redeemed};

/// The pre-authorized code grant type (OpenID4VCI 1.0 §3.5).
pub(crate) const PRE_AUTHORIZED_GRANT: &str =
    "urn:ietf:params:oauth:grant-type:pre-authorized_code";
/// The `typ` of a key proof JWT (OpenID4VCI 1.0 Appendix F.1).
pub(crate) const PROOF_TYP: &str = "openid4vci-proof+jwt";
/// How old a key proof's `iat` may be, and how far ahead of this clock.
const PROOF_MAX_AGE_SECS: i64 = 300;
const PROOF_MAX_SKEW_SECS: i64 = 60;
/// Largest key proof read.
const MAX_PROOF_BYTES: usize = 16 * 1024;
/// Digits of a transaction code.
pub(crate) const TX_CODE_LENGTH: usize = 6;

/// One credential configuration: a type in one format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Configuration {
    pub(crate) id: String,
    pub(crate) type_name: String,
    pub(crate) format: ProofFormat,
}

/// The OpenID4VCI format identifier of a proof format.
pub(crate) fn format_name(format: ProofFormat) -> &'static str {
    match format {
        ProofFormat::DataIntegrity => "ldp_vc",
        ProofFormat::Jwt => "jwt_vc_json",
        ProofFormat::SdJwt => federation::sdjwt::MEDIA_TYPE,
    }
}

fn suffix(format: ProofFormat) -> &'static str {
    match format {
        ProofFormat::DataIntegrity => "ldp",
        ProofFormat::Jwt => "jwt",
        ProofFormat::SdJwt => "sd_jwt",
    }
}

/// The formats of an OpenID4VCI format name (`ldp_vc`, `jwt_vc_json`, `dc+sd-jwt`).
pub(crate) fn format_of_name(name: &str) -> Option<ProofFormat> {
    [
        ProofFormat::DataIntegrity,
        ProofFormat::Jwt,
        ProofFormat::SdJwt,
    ]
    .into_iter()
    .find(|f| format_name(*f) == name)
}

/// The formats offered for a type: the three types in every format, other types in the
/// W3C formats.
pub(crate) fn formats_for(type_name: &str) -> Vec<ProofFormat> {
    if CredentialKind::from_type_name(type_name).is_some() {
        vec![
            ProofFormat::DataIntegrity,
            ProofFormat::Jwt,
            ProofFormat::SdJwt,
        ]
    } else {
        vec![ProofFormat::DataIntegrity, ProofFormat::Jwt]
    }
}

pub(crate) fn configuration_id(type_name: &str, format: ProofFormat) -> String {
    format!("{type_name}_{}", suffix(format))
}

/// Every configuration of the types `type_names`, in a stable order.
pub(crate) fn configurations(type_names: &[String]) -> Vec<Configuration> {
    let mut out = Vec::new();
    for type_name in type_names {
        for format in formats_for(type_name) {
            out.push(Configuration {
                id: configuration_id(type_name, format),
                type_name: type_name.clone(),
                format,
            });
        }
    }
    out
}

/// The JOSE `alg` of this office's key.
fn jose_alg(alg: KeyAlgorithm) -> &'static str {
    match alg {
        KeyAlgorithm::Ed25519 => "EdDSA",
        KeyAlgorithm::P256 => "ES256",
    }
}

fn cryptosuite(alg: KeyAlgorithm) -> &'static str {
    match alg {
        KeyAlgorithm::Ed25519 => "eddsa-rdfc-2022",
        KeyAlgorithm::P256 => "ecdsa-rdfc-2019",
    }
}

/// Key proof algorithms accepted from wallets.
pub(crate) const PROOF_ALGS: [&str; 3] = ["ES256", "EdDSA", "Ed25519"];

/// A readable name for a type (`ClinicianPrivilegeCredential` → `Clinician Privilege`).
fn display_name(type_name: &str) -> String {
    let bare = type_name.strip_suffix("Credential").unwrap_or(type_name);
    let mut out = String::new();
    for (i, c) in bare.chars().enumerate() {
        if i > 0 && c.is_uppercase() {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `/.well-known/openid-credential-issuer` (OpenID4VCI 1.0 §12.2).
pub(crate) fn issuer_metadata(
    issuer: &str,
    office_name: &str,
    key_alg: KeyAlgorithm,
    configurations: &[Configuration],
    context_of: impl Fn(&str) -> Vec<String>,
) -> Value {
    let mut supported = serde_json::Map::new();
    for c in configurations {
        let display = json!([{"name": display_name(&c.type_name), "locale": "en"}]);
        let proofs = json!({"jwt": {"proof_signing_alg_values_supported": PROOF_ALGS}});
        let types = json!(["VerifiableCredential", c.type_name]);
        let entry = match c.format {
            ProofFormat::DataIntegrity => json!({
                "format": "ldp_vc",
                "scope": c.type_name,
                "cryptographic_binding_methods_supported": ["did:key", "did:jwk"],
                "credential_signing_alg_values_supported": [cryptosuite(key_alg)],
                "proof_types_supported": proofs,
                "credential_definition": {
                    "@context": context_of(&c.type_name),
                    "type": types,
                },
                "credential_metadata": {"display": display},
            }),
            ProofFormat::Jwt => json!({
                "format": "jwt_vc_json",
                "scope": c.type_name,
                "cryptographic_binding_methods_supported": ["did:key", "did:jwk"],
                "credential_signing_alg_values_supported": [jose_alg(key_alg)],
                "proof_types_supported": proofs,
                "credential_definition": {"type": types},
                "credential_metadata": {"display": display},
            }),
            ProofFormat::SdJwt => {
                let vct = CredentialKind::from_type_name(&c.type_name)
                    .map(|kind| federation::sdjwt::vct(issuer, kind));
                json!({
                    "format": federation::sdjwt::MEDIA_TYPE,
                    "scope": c.type_name,
                    "vct": vct,
                    "cryptographic_binding_methods_supported": ["jwk"],
                    "credential_signing_alg_values_supported": [jose_alg(key_alg)],
                    "proof_types_supported": proofs,
                    "credential_metadata": {"display": display},
                })
            }
        };
        supported.insert(c.id.clone(), entry);
    }
    json!({
        "credential_issuer": issuer,
        "credential_endpoint": format!("{issuer}/oid4vci/credential"),
        "nonce_endpoint": format!("{issuer}/oid4vci/nonce"),
        "display": [{"name": office_name, "locale": "en"}],
        "credential_configurations_supported": supported,
    })
}

/// `/.well-known/oauth-authorization-server` (RFC 8414, with OpenID4VCI 1.0 §12.3): the
/// credential issuer is its own authorization server, for the pre-authorized code only.
pub(crate) fn authorization_server_metadata(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oid4vci/token"),
        "grant_types_supported": [PRE_AUTHORIZED_GRANT],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "pre-authorized_grant_anonymous_access_supported": true,
    })
}

/// The OpenID4VCI state of an issuer: offers and tokens, the `c_nonce`s, and the resolver
/// for `kid`s (did:key only; did:jwk is decoded here).
#[derive(Clone)]
pub(crate) struct Oid4vci {
    pub(crate) offers: Offers,
    pub(crate) nonces: Nonces,
    resolver: Arc<DidResolver>,
}

/// What the admin gets back for an offer: everything the holder needs, once.
pub(crate) struct MadeOffer {
    pub(crate) answer: Value,
}

/// What a new offer is for.
pub(crate) struct OfferSpec {
    pub(crate) credential: Value,
    pub(crate) configuration_ids: Vec<String>,
    pub(crate) subject: Option<String>,
    pub(crate) replaces: Option<String>,
    pub(crate) tx_code: bool,
    pub(crate) tries: u32,
    pub(crate) ttl: chrono::Duration,
}

impl Oid4vci {
    pub(crate) fn new(db: &service::db::Db, resolver: Arc<DidResolver>, nonce_ttl: u64) -> Self {
        Oid4vci {
            offers: Offers::new(db),
            nonces: Nonces::new(
                db.tree("oid4vci_nonces"),
                std::time::Duration::from_secs(nonce_ttl),
                // c_nonces are answered only by this issuer: a restart makes the
                // outstanding ones unknown, and a wallet asks for a new one (`invalid_nonce`).
                Nonces::random_key(),
            ),
            resolver,
        }
    }

    /// Makes and stores an offer: a fresh pre-authorized code (and transaction code), the
    /// offer object by value and by reference, and its QR codes.
    pub(crate) async fn make_offer(
        &self,
        issuer: &str,
        spec: OfferSpec,
    ) -> Result<MadeOffer, IssuerError> {
        let code = federation::client::random_token();
        let tx_code = spec.tx_code.then(random_digits);
        let uri_id = uuid::Uuid::new_v4().simple().to_string();
        let offer_id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let mut grant = json!({"pre-authorized_code": code});
        if tx_code.is_some() {
            grant["tx_code"] = json!({
                "input_mode": "numeric",
                "length": TX_CODE_LENGTH,
                "description": "The code the credentialing office gave you with this offer",
            });
        }
        let object = json!({
            "credential_issuer": issuer,
            "credential_configuration_ids": spec.configuration_ids,
            "grants": {PRE_AUTHORIZED_GRANT: grant},
        });
        let expires_at = Utc::now() + spec.ttl;
        let offer = Offer {
            id: offer_id.clone(),
            configuration_ids: spec.configuration_ids,
            credential: spec.credential,
            subject: spec.subject,
            replaces: spec.replaces,
            tx_code_hash: tx_code.as_deref().map(crate::offers::hash),
            tx_code_length: tx_code.as_ref().map_or(0, String::len),
            tries_left: spec.tries,
            expires_at,
            by_reference: Some((uri_id.clone(), object.clone())),
        };
        self.offers.insert(&code, &offer).await?;
        tracing::info!(offer = %offer_id, "credential offer made");
        let by_value = offer_url("credential_offer", &object.to_string());
        let uri = format!("{issuer}/oid4vci/offers/{uri_id}");
        let by_reference = offer_url("credential_offer_uri", &uri);
        let (png, svg) = qr(&by_value)?;
        use base64::Engine as _;
        Ok(MadeOffer {
            answer: json!({
                "offerId": offer_id,
                "credentialOffer": object,
                "credentialOfferUrl": by_value,
                "credentialOfferUri": uri,
                "credentialOfferUriUrl": by_reference,
                "txCode": tx_code,
                "expiresAt": federation::time::rfc3339(expires_at),
                "qrPng": base64::engine::general_purpose::STANDARD.encode(png),
                "qrSvg": svg,
            }),
        })
    }

    /// The token endpoint: spends the code for an access token.
    pub(crate) async fn token(
        &self,
        code: &str,
        tx_code: Option<&str>,
        ttl: chrono::Duration,
    ) -> Result<Value, IssuerError> {
        let token = federation::client::random_token();
        let refused = |m: &str| ProtocolError::bad("invalid_grant", m);
        match self.offers.redeem(code, tx_code, &token, ttl).await? {
            Redeemed::Token(offer) => {
                tracing::info!(offer = %offer.id, "pre-authorized code redeemed");
                Ok(json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": ttl.num_seconds(),
                }))
            }
            Redeemed::UnknownCode => {
                Err(refused("the pre-authorized code is unknown, used, void or expired").into())
            }
            Redeemed::TxCodeMissing => {
                Err(ProtocolError::bad("invalid_request", "this offer needs its tx_code").into())
            }
            Redeemed::TxCodeUnexpected => Err(ProtocolError::bad(
                "invalid_request",
                "this offer has no transaction code: send no tx_code",
            )
            .into()),
            Redeemed::TxCodeWrong(0) => Err(refused(
                "wrong tx_code; no tries remain: the offer is void, ask the office for a new one",
            )
            .into()),
            Redeemed::TxCodeWrong(left) => {
                Err(refused(&format!("wrong tx_code ({left} tries remain)")).into())
            }
        }
    }

    /// Checks a key proof for `audience` (this issuer's identifier), spends its nonce,
    /// and returns the holder DID it proves.
    pub(crate) async fn check_proof(
        &self,
        jwt: &str,
        audience: &str,
    ) -> Result<String, ProtocolError> {
        let proof = read_proof(jwt)?;
        let (key, holder) = self.proof_key(&proof.key).await?;
        verify_signature(&proof, &key)?;
        check_claims(&proof.payload, audience, Utc::now())?;
        let nonce = proof
            .payload
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                // OpenID4VCI 1.0 §8.3.1.2: a proof without a c_nonce is an invalid proof.
                invalid_proof("the key proof has no nonce: get a c_nonce from the nonce endpoint")
            })?;
        self.nonces.consume(nonce).await.map_err(|e| match e {
            service::nonce::NonceError::Storage(m) => {
                ProtocolError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m)
            }
            _ => invalid_nonce(
                "the key proof's nonce is unknown, used or expired: get a new c_nonce",
            ),
        })?;
        Ok(holder)
    }

    async fn proof_key(&self, key: &ProofKey) -> Result<(JWK, String), ProtocolError> {
        match key {
            ProofKey::Jwk(jwk) => {
                let did = did_jwk(jwk)?;
                Ok((jwk.as_ref().clone(), did))
            }
            ProofKey::Kid(kid) => {
                let did = federation::did::did_of(kid).to_string();
                if did.starts_with("did:jwk:") {
                    if !kid.ends_with("#0") {
                        return Err(invalid_proof("a did:jwk kid names its key #0"));
                    }
                    let jwk = federation::did::local_public_key(&did)
                        .map_err(|e| invalid_proof(&format!("kid: {e}")))?;
                    return Ok((jwk, did));
                }
                if !did.starts_with("did:key:") {
                    return Err(invalid_proof(
                        "kid must be a did:key or did:jwk verification method",
                    ));
                }
                let (jwk, _) = self
                    .resolver
                    .public_key(kid, Relationship::Authentication)
                    .await
                    .map_err(|e| invalid_proof(&format!("kid: {e}")))?;
                Ok((jwk, did))
            }
        }
    }
}

pub(crate) fn invalid_proof(m: &str) -> ProtocolError {
    ProtocolError::bad("invalid_proof", m)
}

fn invalid_nonce(m: &str) -> ProtocolError {
    ProtocolError::bad("invalid_nonce", m)
}

/// `openid-credential-offer://?<name>=<value>`.
fn offer_url(name: &str, value: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish();
    format!("openid-credential-offer://?{query}")
}

fn random_digits() -> String {
    use rand::Rng as _;
    let mut rng = rand::rngs::OsRng;
    (0..TX_CODE_LENGTH)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// The offer URL as a QR code: PNG and SVG.
pub(crate) fn qr(data: &str) -> Result<(Vec<u8>, String), IssuerError> {
    match service::qr::encode(data) {
        Ok(qr) => Ok((qr.png, qr.svg)),
        Err(e @ service::qr::QrError::TooLong(_)) => Err(IssuerError::Unprocessable(format!(
            "the offer does not fit a QR code: {e}"
        ))),
        Err(e) => Err(IssuerError::Storage(e.to_string())),
    }
}

/// How a key proof names its key.
#[derive(Debug)]
enum ProofKey {
    Kid(String),
    Jwk(Box<JWK>),
}

#[derive(Debug)]
struct Proof {
    alg: Algorithm,
    key: ProofKey,
    payload: Value,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

/// Splits a key proof and reads its header (OpenID4VCI 1.0 Appendix F.1): `typ`, an
/// asymmetric `alg` this issuer lists, exactly one of `kid` and `jwk` (`x5c` and other
/// key parameters are not supported), no `crit`.
fn read_proof(jwt: &str) -> Result<Proof, ProtocolError> {
    if jwt.len() > MAX_PROOF_BYTES {
        return Err(invalid_proof("the key proof is too large"));
    }
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_proof("the key proof is not a compact JWS"));
    };
    let b64 = |part: &str| {
        federation::b64::decode(part).map_err(|_| invalid_proof("the key proof is not base64url"))
    };
    let header = federation::json::parse_strict(&b64(h)?)
        .map_err(|e| invalid_proof(&format!("key proof header: {}", e.summary())))?;
    let header = header
        .as_object()
        .ok_or_else(|| invalid_proof("the key proof header is not an object"))?;
    match header.get("typ").and_then(Value::as_str) {
        Some(PROOF_TYP) => {}
        Some(_) => {
            return Err(invalid_proof(
                "the key proof's typ must be openid4vci-proof+jwt",
            ))
        }
        None => {
            return Err(invalid_proof(
                "the key proof has no typ (openid4vci-proof+jwt)",
            ))
        }
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("EdDSA" | "Ed25519") => Algorithm::EdDSA,
        Some("ES256") => Algorithm::ES256,
        Some(other) => {
            return Err(invalid_proof(&format!(
                "alg {other:?} is not accepted (ES256, EdDSA or Ed25519)"
            )))
        }
        None => return Err(invalid_proof("the key proof has no alg")),
    };
    if header.contains_key("crit") {
        return Err(invalid_proof("crit is not supported"));
    }
    for unsupported in ["x5c", "jku", "x5u", "key_attestation", "trust_chain"] {
        if header.contains_key(unsupported) {
            return Err(invalid_proof(&format!(
                "{unsupported} is not supported: name the key by kid (did:key, did:jwk) or jwk"
            )));
        }
    }
    let key = match (header.get("kid"), header.get("jwk")) {
        (Some(Value::String(kid)), None) if kid.starts_with("did:") && kid.contains('#') => {
            ProofKey::Kid(kid.clone())
        }
        (Some(_), None) => {
            return Err(invalid_proof(
                "kid must be a DID URL (did:key or did:jwk verification method)",
            ))
        }
        (None, Some(jwk @ Value::Object(members))) => {
            if members.contains_key("d") {
                return Err(invalid_proof("the jwk carries a private key"));
            }
            let jwk: JWK = serde_json::from_value(jwk.clone())
                .map_err(|_| invalid_proof("the jwk is not a JSON Web Key"))?;
            ProofKey::Jwk(Box::new(jwk))
        }
        (None, Some(_)) => return Err(invalid_proof("the jwk is not a JSON Web Key")),
        (Some(_), Some(_)) => return Err(invalid_proof("kid and jwk: name the key once")),
        (None, None) => return Err(invalid_proof("the key proof names no key (kid or jwk)")),
    };
    let payload = federation::json::parse_strict(&b64(p)?)
        .map_err(|e| invalid_proof(&format!("key proof payload: {}", e.summary())))?;
    if !payload.is_object() {
        return Err(invalid_proof("the key proof payload is not an object"));
    }
    let signature = b64(s)?;
    if signature.is_empty() {
        return Err(invalid_proof("the key proof is not signed"));
    }
    Ok(Proof {
        alg,
        key,
        payload,
        signing_input: format!("{h}.{p}").into_bytes(),
        signature,
    })
}

/// Checks the signature with `key`, whose type must be the one `alg` names.
fn verify_signature(proof: &Proof, key: &JWK) -> Result<(), ProtocolError> {
    let key_alg = match &key.params {
        Params::OKP(p) if p.curve == "Ed25519" => Algorithm::EdDSA,
        Params::EC(p) if p.curve.as_deref() == Some("P-256") => Algorithm::ES256,
        _ => return Err(invalid_proof("the key is not Ed25519 or P-256")),
    };
    if key_alg != proof.alg {
        return Err(invalid_proof("alg does not match the key's type"));
    }
    ssi::claims::jws::verify_bytes(proof.alg, &proof.signing_input, key, &proof.signature)
        .map_err(|_| invalid_proof("the key proof's signature does not verify"))
}

/// `aud` is this issuer, `iat` is recent, `exp` (if any) has not passed.
fn check_claims(payload: &Value, audience: &str, now: DateTime<Utc>) -> Result<(), ProtocolError> {
    let aud_ok = match payload.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(invalid_proof(&format!(
            "the key proof's aud must be this credential issuer ({audience})"
        )));
    }
    let now = now.timestamp();
    let iat = payload
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid_proof("the key proof has no iat (seconds since the epoch)"))?;
    if iat < now - PROOF_MAX_AGE_SECS {
        return Err(invalid_proof("the key proof is too old (iat)"));
    }
    if iat > now + PROOF_MAX_SKEW_SECS {
        return Err(invalid_proof("the key proof's iat is in the future"));
    }
    if let Some(exp) = payload.get("exp") {
        if exp.as_i64().is_none_or(|exp| exp <= now) {
            return Err(invalid_proof("the key proof has expired (exp)"));
        }
    }
    Ok(())
}

/// The did:jwk of a public key (the same DID the federation's resolver decodes).
pub(crate) fn did_jwk(jwk: &JWK) -> Result<String, ProtocolError> {
    federation::did::did_jwk_of(jwk).map_err(|e| invalid_proof(&format!("jwk: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(header: Value, payload: Value, key: &JWK) -> String {
        let enc = |v: &Value| federation::b64::encode(&serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", enc(&header), enc(&payload));
        let alg = match &key.params {
            Params::EC(_) => Algorithm::ES256,
            _ => Algorithm::EdDSA,
        };
        let sig = ssi::claims::jws::sign_bytes(alg, input.as_bytes(), key).unwrap();
        format!("{input}.{}", federation::b64::encode(&sig))
    }

    fn claims(aud: &str) -> Value {
        json!({"aud": aud, "iat": Utc::now().timestamp(), "nonce": "n"})
    }

    #[test]
    fn proof_headers_are_read_strictly() {
        let key = JWK::generate_ed25519().unwrap();
        let vm = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK#z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        let ok = sign(
            json!({"typ": PROOF_TYP, "alg": "EdDSA", "kid": vm}),
            claims("https://o"),
            &key,
        );
        assert!(matches!(read_proof(&ok).unwrap().key, ProofKey::Kid(_)));
        for (header, why) in [
            (json!({"alg": "EdDSA", "kid": vm}), "typ"),
            (json!({"typ": "JWT", "alg": "EdDSA", "kid": vm}), "typ"),
            (json!({"typ": PROOF_TYP, "alg": "none", "kid": vm}), "alg"),
            (json!({"typ": PROOF_TYP, "alg": "HS256", "kid": vm}), "alg"),
            (json!({"typ": PROOF_TYP, "alg": "EdDSA"}), "names no key"),
            (
                json!({"typ": PROOF_TYP, "alg": "EdDSA", "kid": vm, "jwk": {}}),
                "once",
            ),
            (
                json!({"typ": PROOF_TYP, "alg": "EdDSA", "x5c": ["x"], "kid": vm}),
                "x5c",
            ),
        ] {
            let err = read_proof(&sign(header, claims("https://o"), &key)).unwrap_err();
            assert_eq!(err.code, "invalid_proof");
            assert!(err.description.contains(why), "{why}: {}", err.description);
        }
    }

    #[test]
    fn a_jwk_proof_names_its_did_jwk_and_verifies() {
        let key = JWK::generate_p256();
        let jwk = serde_json::to_value(key.to_public()).unwrap();
        let proof = read_proof(&sign(
            json!({"typ": PROOF_TYP, "alg": "ES256", "jwk": jwk}),
            claims("https://o"),
            &key,
        ))
        .unwrap();
        let ProofKey::Jwk(jwk) = &proof.key else {
            panic!("jwk")
        };
        verify_signature(&proof, jwk).unwrap();
        let did = did_jwk(jwk).unwrap();
        let back = federation::did::local_public_key(&did).unwrap();
        assert_eq!(did_jwk(&back).unwrap(), did);
        let other = JWK::generate_p256();
        assert!(verify_signature(&proof, &other.to_public()).is_err());
    }

    #[test]
    fn audience_and_age_are_checked() {
        let now = Utc::now();
        let t = now.timestamp();
        assert!(check_claims(&json!({"aud": "https://o", "iat": t}), "https://o", now).is_ok());
        assert!(check_claims(
            &json!({"aud": ["x", "https://o"], "iat": t}),
            "https://o",
            now
        )
        .is_ok());
        for bad in [
            json!({"aud": "https://other", "iat": t}),
            json!({"iat": t}),
            json!({"aud": "https://o"}),
            json!({"aud": "https://o", "iat": t - 3600}),
            json!({"aud": "https://o", "iat": t + 3600}),
            json!({"aud": "https://o", "iat": t, "exp": t - 1}),
        ] {
            assert_eq!(
                check_claims(&bad, "https://o", now).unwrap_err().code,
                "invalid_proof"
            );
        }
    }

    #[test]
    fn qr_codes_render() {
        let (png, svg) = qr("openid-credential-offer://?credential_offer=%7B%7D").unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        assert!(svg.contains("<svg"));
    }
}
