//! The wallet as an OpenID4VP 1.0 client: answering a verifier's authorization request.
//!
//! 1. Read `openid4vp://?client_id=…&request_uri=…` and fetch the request object.
//! 2. Check it before anything is signed: `typ` `oauth-authz-req+jwt`, a signature by a key
//!    of the DID the `client_id` names (`decentralized_identifier:<DID>`, the only client
//!    identifier prefix this wallet answers), the same `client_id` inside, `response_type`
//!    `vp_token`, a `direct_post` or `direct_post.jwt` response mode, a nonce, a state and an
//!    https `response_uri` (http on loopback in development mode).
//! 3. Match the DCQL query's credential queries to stored credentials: the holder's
//!    privilege at the verifier's organization, and the consents of the patient the user
//!    names; `credential_sets` say which queries must be answered. A W3C credential answers
//!    a query when one of its `type_values` alternatives is wholly among its expanded types;
//!    an SD-JWT VC, when its `vct` is among the `vct_values`.
//! 4. Present each in a presentation bound to the nonce and the full client identifier,
//!    and post them (encrypted to the verifier's key for `direct_post.jwt`).

use base64::Engine as _;
use chrono::Utc;
use federation::client::{loopback_only_http, try_http_client};
use federation::credentials::{CredentialKind, PresentationBinding, ProofFormat};
use federation::did::{did_of, DidResolver, Relationship};
use serde_json::{json, Value};

use crate::error::{Result, WalletError};
use crate::holder::Wallet;
use crate::store::StoredCredential;

pub use reqwest::Url;

/// The only client identifier prefix answered.
pub const CLIENT_ID_PREFIX: &str = "decentralized_identifier:";
const REQUEST_TYP: &str = "oauth-authz-req+jwt";
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const FEDGATE_TYPE_BASE: &str = "https://w3id.org/fedgate#";
/// The contexts that define the types of fedgate's W3C credentials, and what they
/// expand `VerifiableCredential` to.
const CREDENTIALS_V2: &str = "https://www.w3.org/ns/credentials/v2";
const FEDGATE_CONTEXT: &str = "https://w3id.org/fedgate/v1";
const VC_TYPE_IRI: &str = "https://www.w3.org/2018/credentials#VerifiableCredential";

fn bad(m: impl Into<String>) -> WalletError {
    WalletError::Oid4vp(m.into())
}

/// A checked request object.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client_id: String,
    /// The verifier's DID.
    pub verifier: String,
    pub nonce: String,
    pub state: String,
    pub response_uri: Url,
    pub response_mode: String,
    pub dcql_query: Value,
    /// How a `direct_post.jwt` response is encrypted.
    pub encryption: Option<ResponseEncryption>,
    /// The request object's claims, as signed.
    pub claims: Value,
}

/// How a `direct_post.jwt` response is encrypted (OpenID4VP 1.0 §8.3): ECDH-ES to `key`,
/// one of the verifier's `client_metadata.jwks`, with the content encryption `enc`.
#[derive(Debug, Clone)]
pub struct ResponseEncryption {
    pub key: Value,
    pub enc: String,
}

/// The content encryptions a response can be sent with, in order of preference.
const RESPONSE_ENCS: [&str; 3] = ["A128GCM", "A256GCM", "A192GCM"];

/// The response encryption a request's `client_metadata` asks for: an EC key of its `jwks`
/// meant for encryption with ECDH-ES (its `use` and `alg`, where given, say so), and the
/// first content encryption of `encrypted_response_enc_values_supported` this wallet has
/// (A128GCM when the verifier lists none, the default).
pub fn response_encryption(client_metadata: Option<&Value>) -> Result<ResponseEncryption> {
    let key = client_metadata
        .and_then(|m| m.pointer("/jwks/keys"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|k| {
            let field = |f: &str| k.get(f).and_then(Value::as_str);
            field("kty") == Some("EC")
                && field("use").is_none_or(|u| u == "enc")
                && field("alg").is_none_or(|a| a == "ECDH-ES")
        })
        .ok_or_else(|| {
            bad("direct_post.jwt without an EC key for ECDH-ES in client_metadata.jwks")
        })?;
    let enc = match client_metadata.and_then(|m| m.get("encrypted_response_enc_values_supported")) {
        None => "A128GCM",
        Some(listed) => {
            let listed = listed
                .as_array()
                .ok_or_else(|| bad("encrypted_response_enc_values_supported is not an array"))?;
            RESPONSE_ENCS
                .into_iter()
                .find(|e| listed.iter().any(|l| l.as_str() == Some(e)))
                .ok_or_else(|| {
                    bad("none of the verifier's response content encryptions is supported")
                })?
        }
    };
    Ok(ResponseEncryption {
        key: key.clone(),
        enc: enc.to_string(),
    })
}

/// Reads `openid4vp://?client_id=…&request_uri=…`.
pub fn parse_url(url: &str) -> Result<(String, Url)> {
    let url = Url::parse(url.trim()).map_err(|e| bad(format!("not a URL: {e}")))?;
    if url.scheme() != "openid4vp" {
        return Err(bad("not an openid4vp:// authorization request"));
    }
    let mut client_id = None;
    let mut request_uri = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "client_id" => client_id = Some(v.into_owned()),
            "request_uri" => request_uri = Some(v.into_owned()),
            "request" => return Err(bad("requests by value are not answered: only request_uri")),
            _ => {}
        }
    }
    let client_id = client_id.ok_or_else(|| bad("no client_id"))?;
    let request_uri = request_uri.ok_or_else(|| bad("no request_uri"))?;
    let request_uri = Url::parse(&request_uri).map_err(|e| bad(format!("request_uri: {e}")))?;
    Ok((client_id, request_uri))
}

async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Vec<u8>> {
    let mut resp = resp;
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| bad(format!("reading the answer: {}", e.without_url())))?
    {
        if bytes.len() + chunk.len() > max {
            return Err(bad("the answer is too large"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Fetches and checks the request object of an `openid4vp://` URL.
pub async fn fetch_request(
    url: &str,
    resolver: &DidResolver,
    dev_mode: bool,
) -> Result<AuthorizationRequest> {
    let (client_id, request_uri) = parse_url(url)?;
    loopback_only_http(&request_uri, dev_mode)?;
    let client = try_http_client()?;
    let resp = client
        .get(request_uri.clone())
        .header("accept", "application/oauth-authz-req+jwt")
        .send()
        .await
        .map_err(|e| bad(format!("request_uri unreachable: {}", e.without_url())))?;
    if !resp.status().is_success() {
        return Err(bad(format!("request_uri answered {}", resp.status())));
    }
    let bytes = read_limited(resp, MAX_REQUEST_BYTES).await?;
    let jwt = String::from_utf8(bytes).map_err(|_| bad("the request object is not text"))?;
    check_request(jwt.trim(), &client_id, resolver, dev_mode).await
}

/// Checks a request object against the `client_id` it was fetched for.
pub async fn check_request(
    jwt: &str,
    client_id: &str,
    resolver: &DidResolver,
    dev_mode: bool,
) -> Result<AuthorizationRequest> {
    let verifier = client_id
        .strip_prefix(CLIENT_ID_PREFIX)
        .filter(|d| crate::gateway::is_did(d))
        .ok_or_else(|| bad("client_id must be decentralized_identifier:<DID>"))?;
    let jws = federation::jose::decode_with_limit(jwt, MAX_REQUEST_BYTES)
        .map_err(|e| bad(format!("request object: {e}")))?;
    if jws.typ.as_deref() != Some(REQUEST_TYP) {
        return Err(bad("the request object's typ is not oauth-authz-req+jwt"));
    }
    if did_of(&jws.kid) != verifier {
        return Err(bad(
            "the request object is signed by another DID than its client_id",
        ));
    }
    let key = match resolver
        .public_key(&jws.kid, Relationship::AssertionMethod)
        .await
    {
        Ok((key, _)) => key,
        Err(_) => {
            resolver
                .public_key(&jws.kid, Relationship::Authentication)
                .await
                .map_err(|e| bad(format!("the verifier's key: {e}")))?
                .0
        }
    };
    jws.verify(&key)
        .map_err(|_| bad("the request object's signature does not verify"))?;
    let c = jws.payload;
    let text = |k: &str| c.get(k).and_then(Value::as_str);
    if text("client_id") != Some(client_id) {
        return Err(bad("the request object names another client_id"));
    }
    if text("response_type") != Some("vp_token") {
        return Err(bad("response_type must be vp_token"));
    }
    let mode = text("response_mode").unwrap_or_default();
    if !matches!(mode, "direct_post" | "direct_post.jwt") {
        return Err(bad("response_mode must be direct_post or direct_post.jwt"));
    }
    if let Some(exp) = c.get("exp").and_then(Value::as_i64) {
        if exp < Utc::now().timestamp() {
            return Err(bad("the request has expired"));
        }
    }
    let nonce = text("nonce").filter(|n| n.len() >= 16 && n.len() <= 256);
    let nonce = nonce.ok_or_else(|| bad("no usable nonce"))?;
    let state = text("state").ok_or_else(|| bad("no state"))?;
    let response_uri = text("response_uri")
        .and_then(|u| Url::parse(u).ok())
        .ok_or_else(|| bad("no response_uri"))?;
    loopback_only_http(&response_uri, dev_mode)?;
    let dcql = c
        .get("dcql_query")
        .filter(|q| q.get("credentials").is_some_and(Value::is_array))
        .ok_or_else(|| bad("no dcql_query"))?
        .clone();
    for q in dcql["credentials"].as_array().into_iter().flatten() {
        if matches!(
            query_format(q),
            Some(ProofFormat::Jwt | ProofFormat::DataIntegrity)
        ) {
            type_values(q)?;
        }
    }
    let encryption = if mode == "direct_post.jwt" {
        Some(response_encryption(c.get("client_metadata"))?)
    } else {
        None
    };
    Ok(AuthorizationRequest {
        client_id: client_id.to_string(),
        verifier: verifier.to_string(),
        nonce: nonce.to_string(),
        state: state.to_string(),
        response_uri,
        response_mode: mode.to_string(),
        dcql_query: dcql,
        encryption,
        claims: c,
    })
}

/// The kind an SD-JWT VC query asks for, from its `vct_values`.
fn query_kind(q: &Value) -> Option<CredentialKind> {
    let names: Vec<&str> = q
        .pointer("/meta/vct_values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|v| v.rsplit_once("/vct/").map(|(_, t)| t))
        .collect();
    CredentialKind::ALL
        .into_iter()
        .find(|k| names.contains(&k.type_name()))
}

/// The `meta.type_values` of a `jwt_vc_json` or `ldp_vc` credential query (OpenID4VP 1.0
/// Appendix B.1.1): alternatives, each a set of fully expanded type IRIs.
///
/// The member is REQUIRED and is "a non-empty array of string arrays", each inner array
/// non-empty. Anything else (missing, empty, an empty alternative, a non-string type) makes
/// the query malformed: [`check_request`] refuses the request, and such a query matches no
/// credential. An empty alternative in particular is never read as "any type will do".
fn type_values(q: &Value) -> Result<Vec<Vec<&str>>> {
    let malformed = || {
        bad("a jwt_vc_json or ldp_vc credential query's meta.type_values must be a non-empty array of non-empty arrays of type IRIs")
    };
    q.pointer("/meta/type_values")
        .and_then(Value::as_array)
        .filter(|alternatives| !alternatives.is_empty())
        .ok_or_else(malformed)?
        .iter()
        .map(|alternative| {
            alternative
                .as_array()
                .filter(|types| !types.is_empty())
                .ok_or_else(malformed)?
                .iter()
                .map(|t| t.as_str().ok_or_else(malformed))
                .collect()
        })
        .collect()
}

/// Whether a W3C credential whose fully expanded types are `types` answers a query: at
/// least one alternative of its `type_values` must be wholly among them, whatever their
/// order and whatever other types the credential has. A malformed `type_values` answers
/// nothing.
fn types_asked(q: &Value, types: &[String]) -> bool {
    type_values(q).is_ok_and(|alternatives| {
        alternatives
            .iter()
            .any(|wanted| wanted.iter().all(|t| types.iter().any(|have| have == t)))
    })
}

/// The fully expanded `type` values of a W3C credential document, as JSON-LD processing
/// with its `@context` gives them (what `type_values` is matched against):
/// `VerifiableCredential` is defined by the VC Data Model 2.0 context and fedgate's
/// credential types by fedgate's (both protected, so no later context redefines them);
/// a type already written as an IRI, or a term neither context defines, is kept as
/// written (as Appendix B.1.1 has it for a type no `@context` defines; the VC Data Model
/// 2.0 context's `@vocab` is not applied to it).
fn expanded_types(doc: &Value) -> Vec<String> {
    let contexts: Vec<&str> = match doc.get("@context") {
        Some(Value::String(c)) => vec![c.as_str()],
        Some(Value::Array(cs)) => cs.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    federation::verify::type_names(doc)
        .into_iter()
        .map(|t| {
            if t == "VerifiableCredential" && contexts.contains(&CREDENTIALS_V2) {
                VC_TYPE_IRI.to_string()
            } else if CredentialKind::from_type_name(&t).is_some()
                && contexts.contains(&FEDGATE_CONTEXT)
            {
                format!("{FEDGATE_TYPE_BASE}{t}")
            } else {
                t
            }
        })
        .collect()
}

/// The fully expanded types of a stored `jwt_vc_json` or `ldp_vc` credential: read from a
/// VC-JOSE JWT's payload (bare or enveloped) or from the Data Integrity document. The
/// credential was verified when it was imported; only its `@context` and `type` are read.
fn stored_types(c: &StoredCredential) -> Vec<String> {
    let jwt = match &c.credential {
        Value::String(jwt) => jwt.as_str(),
        doc => match federation::credentials::unwrap_enveloped(doc) {
            Some(jwt) => jwt,
            None => return expanded_types(doc),
        },
    };
    federation::jose::decode(jwt)
        .map(|d| expanded_types(&d.payload))
        .unwrap_or_default()
}

fn query_format(q: &Value) -> Option<ProofFormat> {
    match q.get("format").and_then(Value::as_str)? {
        "jwt_vc_json" => Some(ProofFormat::Jwt),
        "ldp_vc" => Some(ProofFormat::DataIntegrity),
        "dc+sd-jwt" => Some(ProofFormat::SdJwt),
        _ => None,
    }
}

fn lists(v: &Value, key: &str, item: &str) -> bool {
    v.get(key)
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(item)))
}

/// Whether an SD-JWT VC of type `vct` answers a query: DCQL's `vct_values` lists the
/// types it allows, and a fedgate type of another office's vct is not one of them.
fn vct_asked(q: &Value, vct: Option<&str>) -> bool {
    match (q.get("meta"), vct) {
        (Some(meta), Some(vct)) => lists(meta, "vct_values", vct),
        _ => false,
    }
}

/// The `vct` of a stored SD-JWT VC (from its issuer-signed payload).
fn vct_of(c: &StoredCredential) -> Option<String> {
    let claims = federation::sdjwt::revealed_claims(c.credential.as_str()?).ok()?;
    claims.get("vct").and_then(Value::as_str).map(String::from)
}

/// The stored credentials that answer one credential query.
fn matching<'a>(
    q: &Value,
    held: &'a [StoredCredential],
    holder: &str,
    verifier: &str,
    patient: Option<&str>,
) -> Vec<&'a StoredCredential> {
    let Some(format) = query_format(q) else {
        return Vec::new();
    };
    let now = Utc::now();
    let mut out: Vec<&StoredCredential> = held
        .iter()
        .filter(|c| c.format == format && !c.withdrawn && c.is_current(now))
        .filter(|c| match format {
            ProofFormat::SdJwt => {
                query_kind(q) == Some(c.kind) && vct_asked(q, vct_of(c).as_deref())
            }
            ProofFormat::Jwt | ProofFormat::DataIntegrity => types_asked(q, &stored_types(c)),
        })
        .filter(|c| match c.kind {
            CredentialKind::ClinicianPrivilege => {
                c.claims.get("id").and_then(Value::as_str) == Some(holder)
                    && c.claims
                        .get("privileges")
                        .and_then(Value::as_array)
                        .is_some_and(|ps| {
                            ps.iter().any(|p| {
                                p.get("facility").and_then(Value::as_str) == Some(verifier)
                            })
                        })
            }
            CredentialKind::PatientConsent => {
                patient.is_some()
                    && c.claims.get("id").and_then(Value::as_str) == patient
                    && lists(&c.claims, "custodians", verifier)
            }
            CredentialKind::ResearchStudy => false,
        })
        .collect();
    let multiple = q.get("multiple").and_then(Value::as_bool).unwrap_or(false);
    if !multiple {
        out.truncate(1);
    }
    out
}

/// What a wallet sends: the `vp_token`, query id → presentations.
pub async fn build_vp_token(
    wallet: &Wallet,
    request: &AuthorizationRequest,
    patient: Option<&str>,
) -> Result<Value> {
    let held = wallet.list()?;
    let queries: Vec<&Value> = request.dcql_query["credentials"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let query = |id: &str| -> Option<&Value> {
        queries
            .iter()
            .find(|q| q.get("id").and_then(Value::as_str) == Some(id))
            .copied()
    };
    let answer = |id: &str| -> Vec<&StoredCredential> {
        query(id)
            .map(|q| matching(q, &held, wallet.did(), &request.verifier, patient))
            .unwrap_or_default()
    };
    // The queries to answer: for each credential set, the first option all of whose
    // queries this wallet can answer; without sets, every query it can.
    let mut chosen: Vec<String> = Vec::new();
    match request
        .dcql_query
        .get("credential_sets")
        .and_then(Value::as_array)
    {
        Some(sets) => {
            for set in sets {
                let required = set.get("required").and_then(Value::as_bool).unwrap_or(true);
                let option = set
                    .get("options")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_array)
                    .find(|ids| {
                        ids.iter()
                            .all(|id| id.as_str().is_some_and(|id| !answer(id).is_empty()))
                    });
                match option {
                    Some(ids) => {
                        chosen.extend(ids.iter().filter_map(Value::as_str).map(String::from))
                    }
                    None if required => {
                        return Err(bad(
                            "no stored credential answers a required part of the request",
                        ))
                    }
                    None => {}
                }
            }
        }
        None => {
            for q in &queries {
                if let Some(id) = q.get("id").and_then(Value::as_str) {
                    if !answer(id).is_empty() {
                        chosen.push(id.to_string());
                    }
                }
            }
        }
    }
    if chosen.is_empty() {
        return Err(bad("no stored credential answers the request"));
    }
    let binding = PresentationBinding {
        challenge: request.nonce.clone(),
        domain: request.client_id.clone(),
    };
    let mut token = serde_json::Map::new();
    for id in chosen {
        let mut presentations = Vec::new();
        for c in answer(&id) {
            let format = c.format;
            let presentation = match (format, c.credential.as_str()) {
                // Selective disclosure: only the claims the query names, and a key-binding
                // JWT over the full client_id and the nonce.
                (ProofFormat::SdJwt, Some(sd_jwt)) => {
                    let paths: Vec<federation::sdjwt::ClaimPath> = query(&id)
                        .and_then(|q| q.get("claims"))
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.get("path").and_then(Value::as_array).cloned())
                        .collect();
                    Value::String(
                        federation::sdjwt::present(
                            sd_jwt,
                            &paths,
                            &request.client_id,
                            &request.nonce,
                            wallet.key(),
                        )
                        .map_err(|e| bad(format!("presenting an SD-JWT VC: {e}")))?,
                    )
                }
                _ => {
                    wallet
                        .present_with(std::slice::from_ref(&c.credential), &binding, format)
                        .await?
                }
            };
            presentations.push(presentation);
        }
        token.insert(id, Value::Array(presentations));
    }
    Ok(Value::Object(token))
}

/// Encrypts the response parameters to the verifier's key (ECDH-ES, the chosen `enc`).
fn encrypt(params: &Value, encryption: &ResponseEncryption) -> Result<String> {
    use josekit::jwe::{self, JweHeader};
    let Value::Object(map) = encryption.key.clone() else {
        return Err(bad("the verifier's key is not a JWK"));
    };
    let jwk = josekit::jwk::Jwk::from_map(map).map_err(|e| bad(format!("verifier key: {e}")))?;
    let encrypter = jwe::ECDH_ES
        .encrypter_from_jwk(&jwk)
        .map_err(|e| bad(format!("verifier key: {e}")))?;
    let mut header = JweHeader::new();
    header.set_content_encryption(&encryption.enc);
    if let Some(kid) = jwk.key_id() {
        header.set_key_id(kid);
    }
    let payload = serde_json::to_vec(params).map_err(|e| bad(e.to_string()))?;
    jwe::serialize_compact(&payload, &header, &encrypter).map_err(|e| bad(e.to_string()))
}

/// Posts the response (or an `error`) to the request's `response_uri`; returns the
/// verifier's JSON answer (`{"redirect_uri"}` or `{}`).
pub async fn post_response(
    request: &AuthorizationRequest,
    vp_token: Option<&Value>,
    error: Option<&str>,
    dev_mode: bool,
) -> Result<Value> {
    let mut params = json!({ "state": request.state });
    if let Some(t) = vp_token {
        params["vp_token"] = t.clone();
    }
    if let Some(e) = error {
        params["error"] = json!(e);
    }
    let form: Vec<(String, String)> = match &request.encryption {
        Some(encryption) => vec![("response".into(), encrypt(&params, encryption)?)],
        None => {
            let mut f = vec![("state".to_string(), request.state.clone())];
            if let Some(t) = vp_token {
                f.push(("vp_token".into(), t.to_string()));
            }
            if let Some(e) = error {
                f.push(("error".into(), e.to_string()));
            }
            f
        }
    };
    loopback_only_http(&request.response_uri, dev_mode)?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let resp = try_http_client()?
        .post(request.response_uri.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| bad(format!("response_uri unreachable: {}", e.without_url())))?;
    let status = resp.status();
    let bytes = read_limited(resp, MAX_ANSWER_BYTES).await?;
    let answer: Value = federation::json::parse_strict(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let error = answer["error"].as_str().unwrap_or("error");
        let description: String = answer["error_description"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(300)
            .collect();
        return Err(bad(format!(
            "the verifier refused the response ({status}): {error}: {description}"
        )));
    }
    Ok(answer)
}

/// Decodes the base64url part of a compact token (for tests and diagnostics).
pub fn decode_part(part: &str) -> Option<Value> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Answers the authorization request at `url`: fetch and check it, present what its
/// DCQL query asks of the stored credentials (consents of `patient` only), post.
pub async fn respond(
    wallet: &Wallet,
    url: &str,
    resolver: &DidResolver,
    patient: Option<&str>,
    dev_mode: bool,
) -> Result<Value> {
    let request = fetch_request(url, resolver, dev_mode).await?;
    let token = build_vp_token(wallet, &request, patient).await?;
    post_response(&request, Some(&token), None, dev_mode).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_by_reference_are_read() {
        let (client_id, uri) = parse_url(
            "openid4vp://?client_id=decentralized_identifier%3Adid%3Aweb%3Ag.example&request_uri=https%3A%2F%2Fg.example%2Fr%2F1",
        )
        .unwrap();
        assert_eq!(client_id, "decentralized_identifier:did:web:g.example");
        assert_eq!(uri.as_str(), "https://g.example/r/1");
        assert!(
            parse_url("https://g.example/?client_id=x&request_uri=https://g.example/r").is_err()
        );
        assert!(parse_url("openid4vp://?client_id=x&request=eyJ...").is_err());
        assert!(parse_url("openid4vp://?client_id=x").is_err());
    }

    #[test]
    fn responses_are_encrypted_as_the_verifier_asks() {
        let key = |extra: Value| {
            let mut k = json!({"kty": "EC", "crv": "P-256", "x": "x", "y": "y"});
            k.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            k
        };
        // No list: the default, A128GCM.
        let meta = json!({"jwks": {"keys": [key(json!({}))]}});
        let e = response_encryption(Some(&meta)).unwrap();
        assert_eq!(e.enc, "A128GCM");
        // The verifier's list, whatever its order: the first this wallet has.
        let meta = json!({"jwks": {"keys": [key(json!({}))]},
            "encrypted_response_enc_values_supported": ["A256CBC-HS512", "A256GCM"]});
        assert_eq!(response_encryption(Some(&meta)).unwrap().enc, "A256GCM");
        let meta = json!({"jwks": {"keys": [key(json!({}))]},
            "encrypted_response_enc_values_supported": ["A256CBC-HS512"]});
        assert!(response_encryption(Some(&meta)).is_err());
        // A signing key, or one for another algorithm, is passed over.
        let meta = json!({"jwks": {"keys": [
            key(json!({"use": "sig", "kid": "s"})),
            key(json!({"alg": "ECDH-ES+A128KW", "kid": "w"})),
            key(json!({"use": "enc", "alg": "ECDH-ES", "kid": "e"})),
        ]}});
        assert_eq!(response_encryption(Some(&meta)).unwrap().key["kid"], "e");
        let meta = json!({"jwks": {"keys": [key(json!({"use": "sig"}))]}});
        assert!(response_encryption(Some(&meta)).is_err());
        assert!(response_encryption(None).is_err());
    }

    #[test]
    fn queries_name_their_kind_and_format() {
        let q = serde_json::json!({
            "format": "jwt_vc_json",
            "meta": {"type_values": [["https://www.w3.org/2018/credentials#VerifiableCredential",
                "https://w3id.org/fedgate#PatientConsentCredential"]]},
        });
        let consent = json!({
            "@context": [CREDENTIALS_V2, FEDGATE_CONTEXT],
            "type": ["VerifiableCredential", "PatientConsentCredential"],
        });
        assert!(types_asked(&q, &expanded_types(&consent)));
        assert_eq!(query_format(&q), Some(ProofFormat::Jwt));
        let q = serde_json::json!({
            "format": "dc+sd-jwt",
            "meta": {"vct_values": ["https://office.example/vct/ClinicianPrivilegeCredential"]},
        });
        assert_eq!(query_kind(&q), Some(CredentialKind::ClinicianPrivilege));
        assert_eq!(query_format(&q), Some(ProofFormat::SdJwt));
        assert_eq!(
            query_kind(&serde_json::json!({"meta": {"vct_values": ["urn:x"]}})),
            None
        );
        // The type of the query, but of another office: not what was asked.
        assert!(vct_asked(
            &q,
            Some("https://office.example/vct/ClinicianPrivilegeCredential")
        ));
        assert!(!vct_asked(
            &q,
            Some("https://other.example/vct/ClinicianPrivilegeCredential")
        ));
        assert!(!vct_asked(&q, None));
    }

    const VC: &str = "https://www.w3.org/2018/credentials#VerifiableCredential";
    const PRIVILEGE: &str = "https://w3id.org/fedgate#ClinicianPrivilegeCredential";
    const CONSENT: &str = "https://w3id.org/fedgate#PatientConsentCredential";
    const OTHER: &str = "https://example.org#OtherCredential";

    fn w3c_query(type_values: Value) -> Value {
        json!({"id": "privilege", "format": "ldp_vc", "meta": {"type_values": type_values}})
    }

    /// A privilege as fedgate issues it: the VC Data Model 2.0 context and fedgate's.
    fn privilege_doc() -> Value {
        json!({
            "@context": [CREDENTIALS_V2, FEDGATE_CONTEXT],
            "type": ["VerifiableCredential", "ClinicianPrivilegeCredential"],
            "issuer": "did:web:office.example",
            "credentialSubject": {"id": "did:web:holder.example"},
        })
    }

    fn stored(credential: Value, format: ProofFormat) -> StoredCredential {
        StoredCredential {
            id: "urn:uuid:1".into(),
            kind: CredentialKind::ClinicianPrivilege,
            format,
            issuer: "did:web:office.example".into(),
            subject: "did:web:holder.example".into(),
            summary: String::new(),
            valid_from: None,
            valid_until: None,
            imported_at: Utc::now(),
            digest: String::new(),
            claims: json!({"id": "did:web:holder.example",
                "privileges": [{"facility": "did:web:gateway.example"}]}),
            credential,
            withdrawn: false,
            withdrawn_at: None,
            withdrawal_sent_to: Vec::new(),
            registered_with: Vec::new(),
        }
    }

    fn presented(q: &Value, held: &[StoredCredential]) -> usize {
        matching(
            q,
            held,
            "did:web:holder.example",
            "did:web:gateway.example",
            None,
        )
        .len()
    }

    #[test]
    fn types_are_expanded_with_the_credentials_contexts() {
        assert_eq!(expanded_types(&privilege_doc()), [VC, PRIVILEGE]);
        // Without fedgate's context its type names are not fedgate's IRIs; an IRI or an
        // undefined term is kept as written.
        let doc = json!({
            "@context": CREDENTIALS_V2,
            "type": ["VerifiableCredential", "ClinicianPrivilegeCredential", OTHER],
        });
        assert_eq!(
            expanded_types(&doc),
            [VC, "ClinicianPrivilegeCredential", OTHER]
        );
    }

    #[test]
    fn a_credential_answers_an_alternative_wholly_among_its_types() {
        let types = expanded_types(&privilege_doc());
        // Every type of the one alternative, in any order.
        assert!(types_asked(&w3c_query(json!([[VC, PRIVILEGE]])), &types));
        assert!(types_asked(&w3c_query(json!([[PRIVILEGE, VC]])), &types));
        assert!(types_asked(&w3c_query(json!([[PRIVILEGE]])), &types));
        // One fedgate type is not enough when the alternative names another the
        // credential does not have.
        assert!(!types_asked(
            &w3c_query(json!([[VC, PRIVILEGE, OTHER]])),
            &types
        ));
        assert!(!types_asked(&w3c_query(json!([[VC, CONSENT]])), &types));
        // Short names are not expanded IRIs.
        assert!(!types_asked(
            &w3c_query(json!([[
                "VerifiableCredential",
                "ClinicianPrivilegeCredential"
            ]])),
            &types
        ));
        // A later alternative answers when the first does not.
        assert!(types_asked(
            &w3c_query(json!([[VC, PRIVILEGE, OTHER], [VC, PRIVILEGE]])),
            &types
        ));
        assert!(!types_asked(
            &w3c_query(json!([[VC, PRIVILEGE, OTHER], [VC, CONSENT]])),
            &types
        ));
    }

    #[test]
    fn a_malformed_type_values_is_refused_and_matches_nothing() {
        let types = expanded_types(&privilege_doc());
        for malformed in [
            Value::Null,
            json!([]),
            json!([[]]),
            json!([[VC, PRIVILEGE], []]),
            json!([VC, PRIVILEGE]),
            json!([[VC, 7]]),
            json!({"0": [VC]}),
        ] {
            let q = w3c_query(malformed.clone());
            assert!(type_values(&q).is_err(), "{malformed}");
            assert!(!types_asked(&q, &types), "{malformed}");
        }
        let no_meta = json!({"id": "privilege", "format": "jwt_vc_json"});
        assert!(type_values(&no_meta).is_err());
        assert!(!types_asked(&no_meta, &types));
    }

    #[test]
    fn stored_credentials_are_matched_by_their_own_types() {
        let jwt = |doc: &Value| {
            let part =
                |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            let header =
                json!({"alg": "ES256", "kid": "did:web:office.example#k", "typ": "vc+jwt"});
            format!("{}.{}.c2ln", part(&header), part(doc))
        };
        let ldp = stored(privilege_doc(), ProofFormat::DataIntegrity);
        let bare = stored(Value::String(jwt(&privilege_doc())), ProofFormat::Jwt);
        let enveloped = stored(
            federation::credentials::embed_credential(&Value::String(jwt(&privilege_doc()))),
            ProofFormat::Jwt,
        );
        for c in [&ldp, &bare, &enveloped] {
            assert_eq!(stored_types(c), [VC, PRIVILEGE]);
        }
        let held = [ldp, bare];
        let ask = |format: &str, type_values: Value| json!({"id": "privilege", "format": format, "meta": {"type_values": type_values}});
        assert_eq!(
            presented(&ask("ldp_vc", json!([[VC, PRIVILEGE]])), &held),
            1
        );
        assert_eq!(
            presented(&ask("jwt_vc_json", json!([[VC, PRIVILEGE]])), &held),
            1
        );
        assert_eq!(
            presented(&ask("ldp_vc", json!([[VC, PRIVILEGE, OTHER]])), &held),
            0
        );
        assert_eq!(
            presented(
                &ask(
                    "jwt_vc_json",
                    json!([[VC, PRIVILEGE, OTHER], [PRIVILEGE, VC]])
                ),
                &held
            ),
            1
        );
        assert_eq!(presented(&ask("ldp_vc", json!([[]])), &held), 0);
        // A stored credential whose types cannot be read answers nothing.
        let unreadable = [stored(Value::String("not-a-jwt".into()), ProofFormat::Jwt)];
        assert_eq!(
            presented(&ask("jwt_vc_json", json!([[VC, PRIVILEGE]])), &unreadable),
            0
        );
    }
}
