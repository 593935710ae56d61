//! OpenID for Verifiable Presentations 1.0: an exchange that starts with an authorization
//! request instead of a ready presentation (docs/openid4vp.md).
//!
//! 1. The requester (a clinician's EHR) posts what it asks for (the body of
//!    `POST /v1/exchange/{domain}` without `presentation`) to
//!    `POST /v1/oid4vp/{domain}/requests`, and gets an authorization request URL
//!    (`openid4vp://?client_id=…&request_uri=…`, also as a QR code), a transaction id and a
//!    secret of its own.
//! 2. The wallet fetches the signed request object at `request_uri` (`typ`
//!    `oauth-authz-req+jwt`, signed with the gateway's DID key; `client_id`
//!    `decentralized_identifier:<gateway DID>`), with a nonce, a state and a DCQL query
//!    derived from the domain's policy ([`dcql`]).
//! 3. The wallet posts `vp_token` (or `response`, a JWE to the transaction's ephemeral key,
//!    for `direct_post.jwt`) to `POST /v1/oid4vp/responses`. There the gateway verifies,
//!    records a refusal, and decides, with the same pipeline and policy as
//!    `POST /v1/exchange/{domain}`; a deny is recorded there. It answers the wallet
//!    `{"redirect_uri": "…#response_code=…"}` (same device) or `{}` (cross device).
//! 4. The requester collects at `POST /v1/oid4vp/transactions/{id}/result`, once, with the
//!    response code (same device) or its secret (cross device). Only then are the records
//!    fetched, tokenized, recorded and sent: no patient data waits in the gateway.
//!
//! Transactions live in the gateway's database (so every replica sharing it honours them),
//! expire after `challenge_ttl_secs`, and change state only in write transactions: of two
//! responses to one request, or two collections, exactly one gets through.

pub mod dcql;
pub mod store;

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::Utc;
use federation::credentials::{CredentialKind, PresentationBinding, ProofFormat};
use federation::verify::{VerifiedPresentation, VerifyError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::exchange::{self, Allowed, ExchangeParams, PatientRef};
use crate::ledger::Ledger;
use crate::state::GatewayState;
use dcql::QueryFormat;
pub use store::{Phase, ResponseMode, Transaction, Transactions};

/// The client identifier prefix: the gateway is named by its DID, and signs its requests
/// with a key of that DID (no X.509 certificate needed).
pub const CLIENT_ID_PREFIX: &str = "decentralized_identifier:";
/// The `typ` of a signed request object (RFC 9101).
pub const REQUEST_TYP: &str = "oauth-authz-req+jwt";
/// The audience of a request object for a wallet found by its URL scheme.
pub const SELF_ISSUED_AUD: &str = "https://self-issued.me/v2";
/// The URL scheme of an authorization request to any wallet.
pub const SCHEME: &str = "openid4vp://";
/// The formats asked for (and verified), in order of preference.
pub const FORMATS: &[QueryFormat] = &[
    QueryFormat::SdJwt,
    QueryFormat::JwtVcJson,
    QueryFormat::LdpVc,
];
/// Largest form body at the response endpoint, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;
/// Presentations in one `vp_token`, at most.
const MAX_PRESENTATIONS: usize = 16;

/// How a requester starts an exchange: what it asks for, and how the wallet answers.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub purpose: String,
    pub patient: PatientRef,
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub justification: Option<String>,
    /// `direct_post.jwt` (default: the response is encrypted to the gateway) or
    /// `direct_post`.
    #[serde(default)]
    pub response_mode: Option<ResponseMode>,
    /// Same-device flow: where the wallet sends the user back, with `#response_code=…`
    /// appended (an https URL, or http on loopback). Absent: cross-device.
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

/// The answer to a started exchange.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Started {
    pub transaction_id: String,
    /// Shown to nobody but the requester: with the transaction id, it collects the result.
    pub requester_secret: String,
    /// `openid4vp://?client_id=…&request_uri=…`.
    pub authorization_request: String,
    pub client_id: String,
    pub request_uri: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The authorization request as a QR code: an SVG document.
    pub qr_svg: String,
    /// The same QR code as a PNG, `data:image/png;base64,…`.
    pub qr_png: String,
}

/// An error of a wallet-facing endpoint, as OAuth 2.0 and OpenID4VP write them.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn invalid_request(description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: description.into(),
        }
    }

    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        // A wallet reads OAuth error JSON only: kept as it is, not made problem+json.
        response
            .extensions_mut()
            .insert(service::http::ProtocolErrorBody);
        response
    }
}

/// What the wallet's response came to.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed: served (fetched, tokenized, recorded) when collected.
    Allowed {
        ledger: Box<Ledger>,
        /// The decision without its policy digest (`Decision` reads none back).
        decision: Value,
        policy_digest: String,
        patient_id: String,
        holder: String,
    },
    /// Refused by verification or denied by policy (recorded already).
    Refused {
        decision_id: String,
        reasons: Vec<String>,
        check: Option<String>,
        policy: Option<String>,
    },
    /// Verified, but no decision could be made or recorded.
    Failed { detail: String },
    /// The wallet answered with an error; nothing was verified.
    Declined { error: String },
}

impl Outcome {
    pub fn allowed(a: Allowed) -> Outcome {
        let mut decision = serde_json::to_value(&a.decision).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut decision {
            fields.remove("policy_digest");
        }
        Outcome::Allowed {
            ledger: Box::new(a.ledger),
            decision,
            policy_digest: a.decision.policy_digest,
            patient_id: a.patient_id,
            holder: a.holder,
        }
    }

    pub fn refused(e: GatewayError) -> Outcome {
        match e {
            GatewayError::Denied {
                decision_id,
                reasons,
                check,
                policy,
            } => Outcome::Refused {
                decision_id,
                reasons,
                check,
                policy,
            },
            other => Outcome::Failed {
                detail: other.to_string(),
            },
        }
    }

    pub fn into_allowed(self) -> Option<Allowed> {
        let Outcome::Allowed {
            ledger,
            decision,
            policy_digest,
            patient_id,
            holder,
        } = self
        else {
            return None;
        };
        let mut decision: crate::policy::Decision = serde_json::from_value(decision).ok()?;
        decision.policy_digest = policy_digest;
        Some(Allowed {
            ledger: *ledger,
            decision,
            patient_id,
            holder,
        })
    }
}

impl Outcome {
    fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The gateway's client identifier.
pub fn client_id(state: &GatewayState) -> String {
    format!("{CLIENT_ID_PREFIX}{}", state.config.did)
}

fn endpoint(state: &GatewayState, path: &str) -> String {
    let mut url = state.public_url.clone();
    url.set_path(path);
    url.set_query(None);
    url.to_string()
}

/// The vct values accepted for `kind`: one per issuer trusted for it, under the base URL
/// that issuer is reached at (its `[did_web]` entry, else its did:web host).
fn vct_values(state: &GatewayState, kind: CredentialKind) -> Vec<String> {
    let issuers: Vec<String> = match state.registry() {
        Some(r) => r
            .current()
            .and_then(|m| m.trusted_issuers.get(&kind).cloned())
            .unwrap_or_default(),
        None => state.config.trust.get(&kind).cloned().unwrap_or_default(),
    };
    let mut out: Vec<String> = issuers
        .iter()
        .filter_map(|did| issuer_base(state, did))
        .map(|base| format!("{}/vct/{}", base.trim_end_matches('/'), kind.type_name()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn issuer_base(state: &GatewayState, did: &str) -> Option<String> {
    if let Some(url) = state.verifier.resolver.web_base(did) {
        return Some(url.to_string());
    }
    let host = did.strip_prefix("did:web:")?;
    let mut parts = host.split(':');
    let authority = parts.next()?.replace("%3A", ":");
    let path: Vec<&str> = parts.collect();
    Some(if path.is_empty() {
        format!("https://{authority}")
    } else {
        format!("https://{authority}/{}", path.join("/"))
    })
}

fn redirect_ok(uri: &str, dev_mode: bool) -> bool {
    let Ok(url) = reqwest::Url::parse(uri) else {
        return false;
    };
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    uri.len() <= 2048
        && url.fragment().is_none()
        && (url.scheme() == "https" || (url.scheme() == "http" && (loopback || dev_mode)))
}

/// `POST /v1/oid4vp/{domain}/requests`.
pub async fn start(
    state: &GatewayState,
    domain: &str,
    req: StartRequest,
) -> Result<Started, GatewayError> {
    let params = ExchangeParams {
        purpose: req.purpose,
        patient: req.patient,
        data_classes: req.data_classes,
        justification: req.justification,
    };
    exchange::check_params(domain, &params)?;
    if let Some(uri) = &req.redirect_uri {
        if !redirect_ok(uri, state.config.dev_mode) {
            return Err(GatewayError::bad_request(
                "invalid-redirect-uri",
                "redirect_uri must be an absolute https URL without a fragment",
            ));
        }
    }
    // The query is made now, from the policies in force: a request fetched later asks
    // what was asked when the exchange started.
    let claims = dcql::domain_claims(&state.config.policies, domain)
        .map_err(|e| GatewayError::Unavailable(format!("OpenID4VP: {e}")))?;
    let query = dcql::query(&claims, FORMATS, |kind| vct_values(state, kind));
    let mode = req.response_mode.unwrap_or(ResponseMode::DirectPostJwt);
    let transaction_id = federation::client::random_token();
    let secret = federation::client::random_token();
    let tx_state = federation::client::random_token();
    let encryption_key = match mode {
        ResponseMode::DirectPost => None,
        ResponseMode::DirectPostJwt => Some(
            ephemeral_key(&tx_state)
                .map_err(|e| GatewayError::Internal(format!("ephemeral key: {e}")))?,
        ),
    };
    let ttl =
        chrono::Duration::seconds(i64::try_from(state.config.challenge_ttl_secs).unwrap_or(120));
    let expires = Utc::now() + ttl;
    let tx = Transaction {
        domain: domain.to_string(),
        params: serde_json::to_value(&params).map_err(|e| GatewayError::Internal(e.to_string()))?,
        nonce: federation::client::random_token(),
        state: tx_state.clone(),
        secret_sha256: store::digest(&secret),
        redirect_uri: req.redirect_uri,
        response_mode: mode,
        encryption_key,
        dcql_query: query,
        expires_ms: expires.timestamp_millis(),
        phase: Phase::Open,
        response_code_sha256: None,
        outcome: None,
    };
    state
        .oid4vp
        .insert(&transaction_id, &tx)
        .await
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
    let client_id = client_id(state);
    let request_uri = endpoint(state, &format!("/v1/oid4vp/requests/{tx_state}"));
    let authorization_request = format!(
        "{SCHEME}?client_id={}&request_uri={}",
        urlencoding(&client_id),
        urlencoding(&request_uri)
    );
    let (qr_svg, qr_png) =
        qr(&authorization_request).map_err(|e| GatewayError::Internal(format!("QR code: {e}")))?;
    Ok(Started {
        transaction_id,
        requester_secret: secret,
        authorization_request,
        client_id,
        request_uri,
        expires_at: federation::time::rfc3339(expires),
        qr_svg,
        qr_png,
    })
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn urlencoding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The authorization request as a QR code: SVG text and a PNG data URL.
pub fn qr(text: &str) -> Result<(String, String), service::qr::QrError> {
    let qr = service::qr::encode(text)?;
    Ok((
        qr.svg,
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(qr.png)
        ),
    ))
}

/// A fresh P-256 key for ECDH-ES, as a private JWK named `kid`.
fn ephemeral_key(kid: &str) -> Result<Value, josekit::JoseError> {
    let pair = josekit::jwk::alg::ec::EcKeyPair::generate(josekit::jwk::alg::ec::EcCurve::P256)?;
    let mut jwk = pair.to_jwk_key_pair();
    jwk.set_key_id(kid);
    jwk.set_key_use("enc");
    jwk.set_algorithm("ECDH-ES");
    Ok(Value::Object(jwk.as_ref().clone()))
}

fn public_of(private: &Value) -> Value {
    let mut public = private.clone();
    if let Value::Object(map) = &mut public {
        map.remove("d");
    }
    public
}

/// `GET /v1/oid4vp/requests/{state}`: the signed request object.
pub async fn request_object(state: &GatewayState, tx_state: &str) -> Result<String, OAuthError> {
    let (_, tx) = state
        .oid4vp
        .by_state(tx_state)
        .map_err(|e| {
            OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                e.to_string(),
            )
        })?
        .ok_or_else(|| {
            OAuthError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_uri",
                "unknown or expired request",
            )
        })?;
    if tx.phase != Phase::Open || tx.is_expired() {
        return Err(OAuthError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_uri",
            "unknown or expired request",
        ));
    }
    let mut client_metadata = json!({
        "vp_formats_supported": {
            "dc+sd-jwt": {
                "sd-jwt_alg_values": ["EdDSA", "ES256"],
                "kb-jwt_alg_values": ["EdDSA", "ES256"],
            },
            "jwt_vc_json": {"alg_values": ["EdDSA", "ES256"]},
            "ldp_vc": {
                "proof_type_values": ["DataIntegrityProof"],
                "cryptosuite_values": ["eddsa-rdfc-2022", "ecdsa-rdfc-2019"],
            },
        },
    });
    if let Some(key) = &tx.encryption_key {
        client_metadata["jwks"] = json!({"keys": [public_of(key)]});
        client_metadata["encrypted_response_enc_values_supported"] = json!(["A128GCM", "A256GCM"]);
    }
    let now = Utc::now().timestamp();
    // No `iss`: OpenID4VP does not ask for it, and wallets read it differently (the
    // DID, or the prefixed client_id); the signer is named by `kid` alone.
    let claims = json!({
        "aud": SELF_ISSUED_AUD,
        "client_id": client_id(state),
        "response_type": "vp_token",
        "response_mode": tx.response_mode.as_str(),
        "response_uri": endpoint(state, "/v1/oid4vp/responses"),
        "nonce": tx.nonce,
        "state": tx.state,
        "iat": now,
        "exp": tx.expires_ms / 1000,
        "dcql_query": tx.dcql_query,
        "client_metadata": client_metadata,
    });
    federation::jose::sign(&claims, &state.key, REQUEST_TYP).map_err(|e| {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    })
}

/// The parameters of an authorization response, once decrypted.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseForm {
    #[serde(default)]
    pub vp_token: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
}

/// `POST /v1/oid4vp/responses`: the wallet's answer.
pub async fn respond(state: &GatewayState, form: ResponseForm) -> Result<Value, OAuthError> {
    let (tx_id, tx, form) = match form.response.as_deref() {
        Some(jwe) => decrypt_response(state, jwe)?,
        None => {
            let tx_state = form
                .state
                .as_deref()
                .ok_or_else(|| OAuthError::invalid_request("state is missing"))?;
            let (id, tx) = open_transaction(state, tx_state)?;
            if tx.response_mode != ResponseMode::DirectPost {
                return Err(OAuthError::invalid_request(
                    "this request asked for response_mode direct_post.jwt",
                ));
            }
            (id, tx, form)
        }
    };
    if let Some(error) = form.error.as_deref() {
        // The wallet declined (the user said no, or nothing fits): nothing was verified.
        let error = error
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        // `error_description` is the wallet's text: not kept, not echoed.
        let outcome = Outcome::Declined { error };
        state
            .oid4vp
            .finish(&tx_id, Phase::Open, outcome.to_value(), None)
            .await
            .map_err(|e| store_error(&e))?;
        return Ok(json!({}));
    }
    let token = form
        .vp_token
        .as_deref()
        .ok_or_else(|| OAuthError::invalid_request("vp_token is missing"))?;
    let token: Value = federation::json::parse_strict(token.as_bytes())
        .map_err(|_| OAuthError::invalid_request("vp_token is not a JSON object"))?;
    let Value::Object(token) = token else {
        return Err(OAuthError::invalid_request("vp_token is not a JSON object"));
    };

    exchange::check_outbox(state).map_err(|e| {
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
    })?;
    let params: ExchangeParams = serde_json::from_value(tx.params.clone()).map_err(|_| {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "unreadable transaction",
        )
    })?;
    let mut ledger = exchange::new_ledger(&tx.domain, &params);
    let binding = PresentationBinding {
        challenge: tx.nonce.clone(),
        domain: client_id(state),
    };

    // verify: every presentation of every answered query, bound to this request
    let claims = dcql::domain_claims(&state.config.policies, &tx.domain).map_err(|e| {
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
    })?;
    let asked: Vec<String> = tx.dcql_query["credentials"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|q| q["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let count: usize = token
        .values()
        .map(|v| v.as_array().map_or(1, Vec::len))
        .sum();
    if count == 0 || count > MAX_PRESENTATIONS {
        return Err(OAuthError::invalid_request(format!(
            "vp_token must hold 1 to {MAX_PRESENTATIONS} presentations"
        )));
    }
    let mut verified: Vec<VerifiedPresentation> = Vec::new();
    let mut sd_jwts: Vec<federation::verify::VerifiedCredential> = Vec::new();
    for (id, presentations) in &token {
        if !asked.contains(id) {
            return Err(OAuthError::invalid_request(format!(
                "vp_token answers {:?}, which the request did not ask",
                id.chars().take(64).collect::<String>()
            )));
        }
        let Some((kind, format)) = dcql::parse_query_id(id) else {
            return Err(OAuthError::invalid_request("unknown credential query id"));
        };
        let Some(presentations) = presentations.as_array() else {
            return Err(OAuthError::invalid_request(
                "each vp_token value must be an array of presentations",
            ));
        };
        if presentations.is_empty()
            || (presentations.len() > 1 && kind != CredentialKind::PatientConsent)
        {
            return Err(OAuthError::invalid_request(format!(
                "{id}: one presentation expected"
            )));
        }
        for p in presentations {
            let shape_ok = match format {
                QueryFormat::JwtVcJson => p.is_string(),
                QueryFormat::LdpVc => p.is_object(),
                QueryFormat::SdJwt => p.is_string(),
            };
            if !shape_ok {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "vp_formats_not_supported",
                    format!("{id}: not a {} presentation", format.as_str()),
                ));
            }
            if let (QueryFormat::SdJwt, Some(sd_jwt)) = (format, p.as_str()) {
                // The key-binding JWT's aud is the full client_id, its nonce the request's.
                let credential = match state
                    .verifier
                    .verify_sd_jwt_presentation(sd_jwt, &binding.domain, &binding.challenge)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => return Err(refused(state, &mut ledger, &e).await),
                };
                if credential.kind != kind {
                    let e = verify_error(
                        federation::verify::Check::Format,
                        format!("{id}: an SD-JWT VC of another type than asked"),
                    );
                    return Err(refused(state, &mut ledger, &e).await);
                }
                sd_jwts.push(credential);
                continue;
            }
            let vp = match state.verifier.verify_presentation(p, &binding).await {
                Ok(vp) => vp,
                Err(e) => return Err(refused(state, &mut ledger, &e).await),
            };
            let expected = match format {
                QueryFormat::JwtVcJson => ProofFormat::Jwt,
                _ => ProofFormat::DataIntegrity,
            };
            if vp.format != expected
                || vp
                    .credentials
                    .iter()
                    .any(|c| c.kind != kind || c.format != expected)
            {
                let e = verify_error(
                    federation::verify::Check::Format,
                    format!("{id}: a presentation holds another type or format than asked"),
                );
                return Err(refused(state, &mut ledger, &e).await);
            }
            verified.push(vp);
        }
    }
    if let Some(holder) = sd_jwts.first().and_then(|c| c.holder.clone()) {
        match VerifiedPresentation::from_credentials(&holder, sd_jwts) {
            Ok(vp) => verified.push(vp),
            Err(e) => return Err(refused(state, &mut ledger, &e).await),
        }
    } else if !sd_jwts.is_empty() {
        let e = verify_error(
            federation::verify::Check::HolderBinding,
            "an SD-JWT VC without a holder",
        );
        return Err(refused(state, &mut ledger, &e).await);
    }
    let vp = match merge(verified, &claims) {
        Ok(vp) => vp,
        Err(e) => return Err(refused(state, &mut ledger, &e).await),
    };
    ledger.note_presentation(&vp);

    // Single use: of two responses that verified, one claims the transaction.
    if let Err(e) = state.oid4vp.claim(&tx_id).await {
        let refusal = state
            .refuse(
                &ledger,
                "challenge",
                "the request was already answered".into(),
            )
            .await;
        drop(refusal);
        return Err(store_error(&e));
    }

    // decide
    let outcome = match exchange::decide(state, &tx.domain, &params, ledger, &vp).await {
        Ok(allowed) => Outcome::allowed(allowed),
        Err(e) => Outcome::refused(e),
    };
    let code = tx
        .redirect_uri
        .as_ref()
        .map(|_| federation::client::random_token());
    state
        .oid4vp
        .finish(
            &tx_id,
            Phase::Responding,
            outcome.to_value(),
            code.as_deref(),
        )
        .await
        .map_err(|e| store_error(&e))?;
    Ok(match (&tx.redirect_uri, code) {
        (Some(uri), Some(code)) => json!({"redirect_uri": format!("{uri}#response_code={code}")}),
        _ => json!({}),
    })
}

fn verify_error(check: federation::verify::Check, detail: impl Into<String>) -> VerifyError {
    VerifyError {
        check,
        detail: detail.into(),
        credential: None,
    }
}

/// Records a verification failure as today's exchange does, and answers the wallet.
async fn refused(
    state: &GatewayState,
    ledger: &mut crate::ledger::Ledger,
    e: &VerifyError,
) -> OAuthError {
    let recorded = state.refuse_verification(ledger, e).await;
    if let GatewayError::Unavailable(d) = recorded {
        return OAuthError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", d);
    }
    OAuthError::invalid_request(format!("presentation refused: {} check failed", e.check))
}

fn store_error(e: &store::StoreError) -> OAuthError {
    match e {
        store::StoreError::Storage(d) => {
            OAuthError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", d.clone())
        }
        other => OAuthError::invalid_request(other.to_string()),
    }
}

/// The open transaction of `tx_state`.
fn open_transaction(
    state: &GatewayState,
    tx_state: &str,
) -> Result<(String, Transaction), OAuthError> {
    let (id, tx) = state
        .oid4vp
        .by_state(tx_state)
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| OAuthError::invalid_request("unknown or expired state"))?;
    if tx.is_expired() {
        return Err(OAuthError::invalid_request("the request has expired"));
    }
    if tx.phase != Phase::Open {
        return Err(OAuthError::invalid_request(
            "the request was already answered",
        ));
    }
    Ok((id, tx))
}

/// Opens a `direct_post.jwt` response: the JWE names the transaction's key by `kid`.
fn decrypt_response(
    state: &GatewayState,
    jwe: &str,
) -> Result<(String, Transaction, ResponseForm), OAuthError> {
    let bad = |m: &str| OAuthError::invalid_request(m.to_string());
    if jwe.len() > MAX_RESPONSE_BYTES {
        return Err(bad("response too large"));
    }
    let header = jwe
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .ok_or_else(|| bad("response is not a compact JWE"))?;
    let kid = header["kid"]
        .as_str()
        .ok_or_else(|| bad("the JWE header names no kid"))?;
    let (id, tx) = open_transaction(state, kid)?;
    let key = tx
        .encryption_key
        .as_ref()
        .ok_or_else(|| bad("this request asked for response_mode direct_post"))?;
    let Value::Object(map) = key.clone() else {
        return Err(bad("no key"));
    };
    let jwk = josekit::jwk::Jwk::from_map(map).map_err(|_| bad("no key"))?;
    if header["alg"] != "ECDH-ES" {
        return Err(bad("the JWE alg must be ECDH-ES"));
    }
    if !matches!(header["enc"].as_str(), Some("A128GCM" | "A256GCM")) {
        return Err(bad("the JWE enc must be A128GCM or A256GCM"));
    }
    let decrypter = josekit::jwe::ECDH_ES
        .decrypter_from_jwk(&jwk)
        .map_err(|_| bad("no key"))?;
    let (payload, _) = josekit::jwe::deserialize_compact(jwe, &decrypter)
        .map_err(|_| bad("the response does not decrypt with this request's key"))?;
    let payload: Value = federation::json::parse_strict(&payload)
        .map_err(|_| bad("the decrypted response is not a JSON object"))?;
    let form = ResponseForm {
        vp_token: match &payload["vp_token"] {
            Value::Null => None,
            v => Some(v.to_string()),
        },
        state: payload["state"].as_str().map(str::to_string),
        response: None,
        error: payload["error"].as_str().map(str::to_string),
        error_description: None,
    };
    if form.state.as_deref().is_some_and(|s| s != tx.state) {
        return Err(bad("the response's state is not this request's"));
    }
    Ok((id, tx, form))
}

/// One presentation of the credentials of several, of one holder.
fn merge(
    vps: Vec<VerifiedPresentation>,
    claims: &dcql::DomainClaims,
) -> Result<VerifiedPresentation, VerifyError> {
    let mut iter = vps.into_iter();
    let Some(mut first) = iter.next() else {
        return Err(verify_error(
            federation::verify::Check::Format,
            "no presentation",
        ));
    };
    for vp in iter {
        if vp.holder != first.holder {
            return Err(verify_error(
                federation::verify::Check::HolderBinding,
                "the presentations of one response have different holders",
            ));
        }
        first.credentials.extend(vp.credentials);
    }
    // Only the types the domain reads are kept. A Data Integrity or VC-JOSE credential
    // discloses all it holds, signed as a whole: what the policy input takes of it is
    // the closed set of the domain's declared claims (`dcql` tests), and no subject claim
    // reaches the access event.
    first.credentials.retain(|c| claims.contains_key(&c.kind));
    // A selectively disclosed credential may disclose more than was asked: what is beyond
    // the domain's declared claims is dropped here, before the ledger, the policy input
    // or the access event read anything, and `disclosed` says what remains.
    for c in &mut first.credentials {
        let Some(disclosed) = &c.disclosed else {
            continue;
        };
        let declared: Vec<&[Value]> = claims
            .get(&c.kind)
            .map(|p| p.iter().map(Vec::as_slice).collect())
            .unwrap_or_default();
        c.subject = Arc::new(dcql::retain(&c.subject, &declared).unwrap_or(Value::Null));
        let kept: Vec<dcql::ClaimPath> = disclosed
            .iter()
            .filter(|d| {
                declared
                    .iter()
                    .any(|p| d.starts_with(p) || p.starts_with(d))
            })
            .cloned()
            .collect();
        c.disclosed = Some(kept);
    }
    Ok(first)
}

/// What the requester sends to collect.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectRequest {
    /// Cross device: the secret the exchange was started with.
    #[serde(default)]
    pub requester_secret: Option<String>,
    /// Same device: the code the wallet's redirect carried.
    #[serde(default)]
    pub response_code: Option<String>,
}

/// `POST /v1/oid4vp/transactions/{id}/result`.
pub async fn collect(
    state: &Arc<GatewayState>,
    tx_id: &str,
    req: CollectRequest,
    headers: &HeaderMap,
) -> Result<Response, GatewayError> {
    let outcome = state
        .oid4vp
        .collect(
            tx_id,
            req.requester_secret.as_deref(),
            req.response_code.as_deref(),
        )
        .await
        .map_err(|e| match e {
            store::StoreError::Pending => GatewayError::Pending,
            store::StoreError::Unauthorized => GatewayError::Oid4vpUnauthorized,
            store::StoreError::Storage(d) => GatewayError::Unavailable(d),
            _ => GatewayError::NotFound("an OpenID4VP transaction".into()),
        })?;
    let outcome: Outcome = serde_json::from_value(outcome)
        .map_err(|_| GatewayError::Internal("unreadable OpenID4VP outcome".into()))?;
    match outcome {
        Outcome::Allowed { .. } => {
            let allowed = outcome
                .into_allowed()
                .ok_or_else(|| GatewayError::Internal("unreadable decision".into()))?;
            exchange::check_outbox(state)?;
            exchange::serve(state, &allowed, exchange::accepts_jose(headers)).await
        }
        Outcome::Refused {
            decision_id,
            reasons,
            check,
            policy,
        } => Err(GatewayError::Denied {
            decision_id,
            reasons,
            check,
            policy,
        }),
        Outcome::Failed { detail } => Err(GatewayError::Unavailable(detail)),
        Outcome::Declined { error } => Err(GatewayError::Unprocessable(format!(
            "the wallet declined the request: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::verify::VerifiedCredential;

    fn credential(
        kind: CredentialKind,
        subject: Value,
        disclosed: Option<Vec<Value>>,
    ) -> VerifiedCredential {
        VerifiedCredential {
            id: None,
            kind,
            format: ProofFormat::SdJwt,
            issuer: "did:web:office.example".into(),
            subject: subject.into(),
            valid_from: None,
            valid_until: None,
            status: None,
            digest: "00".repeat(32),
            checks: Vec::new(),
            holder: Some("did:key:z6MkHolder".into()),
            disclosed: disclosed.map(|d| {
                d.into_iter()
                    .map(|p| p.as_array().cloned().unwrap_or_default())
                    .collect()
            }),
        }
    }

    fn presentation(credentials: Vec<VerifiedCredential>) -> VerifiedPresentation {
        VerifiedPresentation {
            id: None,
            holder: "did:key:z6MkHolder".into(),
            format: ProofFormat::SdJwt,
            credentials,
            checks: Vec::new(),
        }
    }

    /// A presentation that discloses more than the domain declared (the clinician's name
    /// and NPI): accepted, but what is beyond is gone before anything reads it, and
    /// `disclosed` no longer names it.
    #[test]
    fn claims_disclosed_beyond_the_query_are_dropped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let claims = dcql::domain_claims(&dir, "clinical").unwrap();
        let subject = json!({
            "id": "did:key:z6MkHolder", "name": "Dr. Who", "npi": "1234567893",
            "role": "physician", "specialty": "207R00000X", "organization": "did:web:a.example",
            "privileges": [{"facility": "did:web:b.example", "domains": ["clinical"], "actions": ["read"]}],
        });
        let disclosed = vec![
            json!(["name"]),
            json!(["npi"]),
            json!(["role"]),
            json!(["specialty"]),
            json!(["organization"]),
            json!(["privileges"]),
            json!(["privileges", 0]),
        ];
        let c = credential(CredentialKind::ClinicianPrivilege, subject, Some(disclosed));
        let study = credential(CredentialKind::ResearchStudy, json!({"id": "urn:x"}), None);
        let vp = merge(vec![presentation(vec![c, study])], &claims).unwrap();
        assert_eq!(
            vp.credentials.len(),
            1,
            "a type the domain does not read is dropped"
        );
        let c = &vp.credentials[0];
        assert!(c.subject.get("name").is_none() && c.subject.get("npi").is_none());
        assert_eq!(c.subject["role"], "physician");
        let kept = c.disclosed.clone().unwrap();
        assert!(
            !kept.iter().any(|p| p[0] == "name" || p[0] == "npi"),
            "{kept:?}"
        );
        assert!(kept.contains(&vec![json!("privileges"), json!(0)]));
        // And the policy input says what was disclosed.
        let privilege = crate::policy::holder_privilege(&vp).unwrap().unwrap();
        let input = crate::policy::CredentialInput::new(
            privilege.credential,
            crate::policy::PrivilegeFacts::from(&privilege.claims),
        );
        assert_eq!(input.disclosed, Some(kept));
    }

    #[test]
    fn presentations_of_two_holders_do_not_merge() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let claims = dcql::domain_claims(&dir, "clinical").unwrap();
        let mut other = presentation(Vec::new());
        other.holder = "did:key:z6MkOther".into();
        let e = merge(vec![presentation(Vec::new()), other], &claims).unwrap_err();
        assert_eq!(e.check, federation::verify::Check::HolderBinding);
    }

    #[test]
    fn the_qr_code_renders_as_svg_and_png() {
        let (svg, png) =
            qr("openid4vp://?client_id=x&request_uri=https%3A%2F%2Fg.example%2Fr").unwrap();
        assert!(svg.contains("<svg"));
        assert!(png.starts_with("data:image/png;base64,iVBORw0KGgo"));
    }
}
