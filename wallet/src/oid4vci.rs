//! The wallet as an OpenID4VCI 1.0 client (pre-authorized code flow): reads an offer (by
//! value, or by reference from its `credential_offer_uri`), the issuer's metadata, gets an
//! access token for the code (and transaction code), a `c_nonce`, and the credential for a
//! key proof signed with the holder's did:key (`kid`). What comes back is stored only if
//! it verifies and is addressed to this holder ([`Wallet::import`]).
//!
//! Everything an issuer answers is untrusted input: answers are size-limited and parsed
//! with the federation's strict JSON rules; URLs it names are held to the outbound policy
//! (https; plain http only to loopback in dev mode); the metadata must name the offer's
//! issuer exactly; and text echoed from an error is cut to one printable line.

use chrono::Utc;
use federation::client::{loopback_only_http, try_http_client};
use federation::json::parse_strict;
use federation::verify::Verifier;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

use crate::error::{Result, WalletError};
use crate::holder::Wallet;
use crate::store::StoredCredential;

/// The pre-authorized code grant type.
const PRE_AUTHORIZED_GRANT: &str = "urn:ietf:params:oauth:grant-type:pre-authorized_code";
/// The `typ` of a key proof.
const PROOF_TYP: &str = "openid4vci-proof+jwt";
/// Largest issuer answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest text echoed from an issuer's error.
const MAX_ECHOED_CHARS: usize = 300;

/// The formats this wallet stores, in the order it prefers them.
const FORMATS: [&str; 3] = ["ldp_vc", "jwt_vc_json", "dc+sd-jwt"];

/// A credential offer, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialOffer {
    pub credential_issuer: String,
    pub configuration_ids: Vec<String>,
    pre_authorized_code: String,
    /// The transaction code's description, when the offer needs one.
    pub tx_code: Option<TxCode>,
    /// The authorization server the grant names (`authorization_server`), if any.
    pub authorization_server: Option<String>,
}

/// What the offer says of its transaction code.
#[derive(Debug, Clone, PartialEq)]
pub struct TxCode {
    pub length: Option<u64>,
    pub description: Option<String>,
}

/// What `receive` did: which configuration it asked for, and what it stored.
#[derive(Debug, Clone)]
pub struct Received {
    pub configuration_id: String,
    pub format: String,
    pub stored: StoredCredential,
}

fn bad_offer(m: &str) -> WalletError {
    WalletError::BadOffer(m.to_string())
}

/// Where the offer is: the object itself, or the URL it is served at.
#[derive(Debug, PartialEq)]
enum OfferSource {
    Value(Value),
    Reference(Url),
}

/// Reads `openid-credential-offer://?credential_offer=…` or `…?credential_offer_uri=…`
/// (any scheme: a QR code may carry another one), a bare `https://` offer URI, or the
/// offer's JSON.
fn offer_source(text: &str) -> Result<OfferSource> {
    let text = text.trim();
    if text.starts_with('{') {
        return parse_strict(text.as_bytes())
            .map(OfferSource::Value)
            .map_err(|e| bad_offer(&format!("the offer is not strict JSON: {}", e.summary())));
    }
    let url = Url::parse(text).map_err(|e| bad_offer(&format!("not an offer URL: {e}")))?;
    if matches!(url.scheme(), "https" | "http") && url.query().is_none() {
        return Ok(OfferSource::Reference(url));
    }
    let mut by_value = None;
    let mut by_reference = None;
    for (k, v) in url.query_pairs() {
        let slot = match k.as_ref() {
            "credential_offer" => &mut by_value,
            "credential_offer_uri" => &mut by_reference,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(bad_offer(&format!("{k} is repeated")));
        }
    }
    match (by_value, by_reference) {
        (Some(v), None) => parse_strict(v.as_bytes())
            .map(OfferSource::Value)
            .map_err(|e| {
                bad_offer(&format!(
                    "credential_offer is not strict JSON: {}",
                    e.summary()
                ))
            }),
        (None, Some(u)) => Url::parse(&u)
            .map(OfferSource::Reference)
            .map_err(|e| bad_offer(&format!("credential_offer_uri: {e}"))),
        (Some(_), Some(_)) => Err(bad_offer(
            "credential_offer and credential_offer_uri: an offer has one",
        )),
        (None, None) => Err(bad_offer(
            "no credential_offer or credential_offer_uri in the URL",
        )),
    }
}

impl CredentialOffer {
    fn from_value(offer: &Value) -> Result<Self> {
        let issuer = offer
            .get("credential_issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_offer("no credential_issuer"))?;
        let ids: Vec<String> = offer
            .get("credential_configuration_ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if ids.is_empty() {
            return Err(bad_offer("no credential_configuration_ids"));
        }
        let grant = offer
            .pointer("/grants")
            .and_then(|g| g.get(PRE_AUTHORIZED_GRANT))
            .ok_or_else(|| {
                bad_offer("the offer has no pre-authorized code (the authorization code flow is not supported)")
            })?;
        let code = grant
            .get("pre-authorized_code")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad_offer("no pre-authorized_code"))?;
        let tx_code = grant.get("tx_code").map(|t| TxCode {
            length: t.get("length").and_then(Value::as_u64),
            description: t.get("description").and_then(Value::as_str).map(sanitize),
        });
        let authorization_server = match grant.get("authorization_server") {
            None => None,
            Some(Value::String(server)) => Some(server.clone()),
            Some(_) => return Err(bad_offer("authorization_server is not a string")),
        };
        Ok(CredentialOffer {
            credential_issuer: issuer.to_string(),
            configuration_ids: ids,
            pre_authorized_code: code.to_string(),
            tx_code,
            authorization_server,
        })
    }
}

/// An HTTP client for one issuer, held to the outbound policy.
struct Client {
    http: reqwest::Client,
    dev_mode: bool,
}

impl Client {
    fn url(&self, text: &str) -> Result<Url> {
        let url = Url::parse(text).map_err(|e| WalletError::IssuerProtocol {
            url: sanitize(text),
            reason: format!("not a URL: {e}"),
        })?;
        loopback_only_http(&url, self.dev_mode)?;
        Ok(url)
    }

    async fn get(&self, url: &Url) -> Result<Value> {
        let req = self.http.get(url.clone());
        self.send(url, req).await
    }

    async fn send(&self, url: &Url, req: reqwest::RequestBuilder) -> Result<Value> {
        let unreachable = |e: reqwest::Error| WalletError::IssuerUnreachable {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        };
        let mut resp = req
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(protocol(url, "the answer is larger than 1 MiB"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status == StatusCode::OK {
            return parse_strict(&bytes)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| protocol(url, "the answer is not a JSON object"));
        }
        Err(refusal(url, status, &bytes))
    }
}

fn protocol(url: &Url, reason: &str) -> WalletError {
    WalletError::IssuerProtocol {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// An OAuth-style refusal (`{error, error_description}`), or problem details.
fn refusal(url: &Url, status: StatusCode, bytes: &[u8]) -> WalletError {
    let doc = parse_strict(bytes).ok().filter(Value::is_object);
    let text = |key: &str| {
        doc.as_ref()
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .map(sanitize)
    };
    WalletError::IssuerRefused {
        url: url.to_string(),
        status: status.as_u16(),
        error: text("error")
            .or_else(|| text("title"))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
        description: text("error_description")
            .or_else(|| text("detail"))
            .unwrap_or_default(),
    }
}

/// Cuts issuer-supplied text to one short line of printable characters.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ECHOED_CHARS)
        .collect();
    if text.chars().count() > MAX_ECHOED_CHARS {
        out.push('…');
    }
    out
}

/// The well-known URL `name` of an issuer identifier (RFC 8414 §3: inserted between the
/// host and the path).
fn well_known(issuer: &Url, name: &str) -> Result<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut url = issuer.clone();
    url.set_path(&format!("/.well-known/{name}{path}"));
    url.set_query(None);
    Ok(url)
}

impl Wallet {
    /// Receives the credential an offer stands for (see the module's description), in
    /// `format` when given (`ldp_vc`, `jwt_vc_json`, `dc+sd-jwt`), else the first the offer
    /// lists of the formats this wallet prefers.
    pub async fn receive(
        &self,
        offer: &str,
        tx_code: Option<&str>,
        format: Option<&str>,
        verifier: &Verifier,
        dev_mode: bool,
    ) -> Result<Received> {
        let client = Client {
            http: try_http_client()?,
            dev_mode,
        };
        let offer = match offer_source(offer)? {
            OfferSource::Value(v) => v,
            OfferSource::Reference(url) => {
                loopback_only_http(&url, dev_mode)?;
                client.get(&url).await?
            }
        };
        let offer = CredentialOffer::from_value(&offer)?;
        if offer.tx_code.is_some() && tx_code.is_none() {
            return Err(WalletError::TxCodeNeeded);
        }
        let issuer = client.url(&offer.credential_issuer)?;
        let metadata = client
            .get(&well_known(&issuer, "openid-credential-issuer")?)
            .await?;
        // OpenID4VCI 1.0 §12.2.2: the metadata is this issuer's only if it names it exactly.
        if metadata.get("credential_issuer").and_then(Value::as_str)
            != Some(offer.credential_issuer.as_str())
        {
            return Err(protocol(
                &issuer,
                "its metadata names another credential_issuer than the offer",
            ));
        }
        let (configuration_id, format) = pick(&offer, &metadata, format)?;
        let endpoint = |key: &str| {
            metadata
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| protocol(&issuer, &format!("its metadata has no {key}")))
                .and_then(|u| client.url(u))
        };
        let credential_endpoint = endpoint("credential_endpoint")?;
        let nonce_endpoint = endpoint("nonce_endpoint")?;
        let server_id = authorization_server(&offer, &metadata)?;
        let authorization_server = client.url(&server_id)?;
        let as_metadata = client
            .get(&well_known(
                &authorization_server,
                "oauth-authorization-server",
            )?)
            .await?;
        // RFC 8414 §3.3: metadata that names another issuer than the one asked for must not
        // be used.
        if as_metadata.get("issuer").and_then(Value::as_str) != Some(server_id.as_str()) {
            return Err(protocol(
                &authorization_server,
                "its metadata names another issuer than the authorization server asked for",
            ));
        }
        let token_endpoint = as_metadata
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol(&authorization_server, "its metadata has no token_endpoint"))
            .and_then(|u| client.url(u))?;

        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", PRE_AUTHORIZED_GRANT)
            .append_pair("pre-authorized_code", &offer.pre_authorized_code);
        if let Some(code) = tx_code {
            form.append_pair("tx_code", code);
        }
        let token = client
            .send(
                &token_endpoint,
                client
                    .http
                    .post(token_endpoint.clone())
                    .header(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-www-form-urlencoded"),
                    )
                    .body(form.finish()),
            )
            .await?;
        let access_token = token
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| protocol(&token_endpoint, "no access_token"))?
            .to_string();

        let nonce = client
            .send(&nonce_endpoint, client.http.post(nonce_endpoint.clone()))
            .await?;
        let c_nonce = nonce
            .get("c_nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol(&nonce_endpoint, "no c_nonce"))?;
        let proof = federation::jose::sign(
            &json!({
                "aud": offer.credential_issuer,
                "iat": Utc::now().timestamp(),
                "nonce": c_nonce,
            }),
            self.key(),
            PROOF_TYP,
        )
        .map_err(|e| WalletError::Sign(federation::credentials::IssueError::Sign(e.to_string())))?;
        let authorization = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| protocol(&token_endpoint, "the access_token is not a header value"))?;
        let answer = client
            .send(
                &credential_endpoint,
                client
                    .http
                    .post(credential_endpoint.clone())
                    .header(AUTHORIZATION, authorization)
                    .json(&json!({
                        "credential_configuration_id": configuration_id,
                        "proofs": {"jwt": [proof]},
                    })),
            )
            .await?;
        let credential = match answer.pointer("/credentials").and_then(Value::as_array) {
            Some(list) if list.len() == 1 => {
                list[0].get("credential").cloned().ok_or_else(|| {
                    protocol(&credential_endpoint, "credentials[0] has no credential")
                })?
            }
            Some(_) => {
                return Err(protocol(
                    &credential_endpoint,
                    "one credential was asked for, and not one came",
                ))
            }
            None if answer.get("transaction_id").is_some() => {
                return Err(protocol(
                    &credential_endpoint,
                    "the issuer deferred the credential (deferred issuance is not supported)",
                ))
            }
            None => return Err(protocol(&credential_endpoint, "no credentials")),
        };
        let stored = self.import(credential, verifier).await?;
        Ok(Received {
            configuration_id,
            format,
            stored,
        })
    }
}

/// The identifier of the authorization server to redeem the code at (OpenID4VCI 1.0 §4.1.1,
/// §12.2.4): the one the grant names, which must be one of the metadata's
/// `authorization_servers`; else the first of those; else the credential issuer itself.
fn authorization_server(offer: &CredentialOffer, metadata: &Value) -> Result<String> {
    let listed: Vec<&str> = metadata
        .get("authorization_servers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match (&offer.authorization_server, listed.first()) {
        (Some(named), _) if listed.contains(&named.as_str()) => Ok(named.clone()),
        (Some(named), _) => Err(WalletError::IssuerProtocol {
            url: offer.credential_issuer.clone(),
            reason: format!(
                "the offer names the authorization server {}, which its metadata does not list",
                sanitize(named)
            ),
        }),
        (None, Some(first)) => Ok((*first).to_string()),
        (None, None) => Ok(offer.credential_issuer.clone()),
    }
}

/// The configuration to ask for: offered, described in the metadata, in a format this
/// wallet stores (`wanted` when given), the preferred format first.
fn pick(
    offer: &CredentialOffer,
    metadata: &Value,
    wanted: Option<&str>,
) -> Result<(String, String)> {
    let formats: Vec<&str> = match wanted {
        Some(f) if FORMATS.contains(&f) => vec![f],
        Some(f) => {
            return Err(WalletError::InvalidRequest(format!(
                "format {f:?} is not one this wallet stores (ldp_vc, jwt_vc_json, dc+sd-jwt)"
            )))
        }
        None => FORMATS.to_vec(),
    };
    let configurations = metadata.get("credential_configurations_supported");
    for want in formats {
        for id in &offer.configuration_ids {
            let format = configurations
                .and_then(|c| c.get(id))
                .and_then(|c| c.get("format"))
                .and_then(Value::as_str);
            if format == Some(want) {
                return Ok((id.clone(), want.to_string()));
            }
        }
    }
    Err(bad_offer(
        "the offer has no credential in a format this wallet stores (or the one asked for)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer_json() -> Value {
        json!({
            "credential_issuer": "https://office.example",
            "credential_configuration_ids": ["ClinicianPrivilegeCredential_jwt", "ClinicianPrivilegeCredential_ldp"],
            "grants": {PRE_AUTHORIZED_GRANT: {
                "pre-authorized_code": "abc",
                "tx_code": {"input_mode": "numeric", "length": 6, "description": "from\nthe office"}
            }}
        })
    }

    #[test]
    fn offers_are_read_by_value_and_by_reference() {
        let by_value = format!(
            "openid-credential-offer://?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("credential_offer", &offer_json().to_string())
                .finish()
        );
        let OfferSource::Value(v) = offer_source(&by_value).unwrap() else {
            panic!("by value")
        };
        let offer = CredentialOffer::from_value(&v).unwrap();
        assert_eq!(offer.credential_issuer, "https://office.example");
        assert_eq!(offer.pre_authorized_code, "abc");
        let tx = offer.tx_code.unwrap();
        assert_eq!(tx.length, Some(6));
        assert_eq!(tx.description.as_deref(), Some("from the office"));
        let by_ref = "openid-credential-offer://?credential_offer_uri=https%3A%2F%2Foffice.example%2Foid4vci%2Foffers%2F1";
        assert_eq!(
            offer_source(by_ref).unwrap(),
            OfferSource::Reference(Url::parse("https://office.example/oid4vci/offers/1").unwrap())
        );
        assert!(matches!(
            offer_source("https://office.example/o/1").unwrap(),
            OfferSource::Reference(_)
        ));
        for bad in [
            "openid-credential-offer://?x=1",
            "openid-credential-offer://?credential_offer=%7B&credential_offer=%7B",
            "not a url",
            "{\"a\":1,\"a\":2}",
        ] {
            assert!(
                matches!(offer_source(bad), Err(WalletError::BadOffer(_))),
                "{bad}"
            );
        }
        let mut no_grant = offer_json();
        no_grant["grants"] = json!({"authorization_code": {}});
        assert!(CredentialOffer::from_value(&no_grant).is_err());
    }

    #[test]
    fn the_preferred_format_offered_and_described_is_picked() {
        let offer = CredentialOffer::from_value(&offer_json()).unwrap();
        let metadata = json!({"credential_configurations_supported": {
            "ClinicianPrivilegeCredential_jwt": {"format": "jwt_vc_json"},
            "ClinicianPrivilegeCredential_ldp": {"format": "ldp_vc"},
        }});
        assert_eq!(
            pick(&offer, &metadata, None).unwrap().0,
            "ClinicianPrivilegeCredential_ldp"
        );
        assert_eq!(
            pick(&offer, &metadata, Some("jwt_vc_json")).unwrap().0,
            "ClinicianPrivilegeCredential_jwt"
        );
        assert!(pick(&offer, &metadata, Some("dc+sd-jwt")).is_err());
        assert!(pick(&offer, &metadata, Some("mso_mdoc")).is_err());
    }

    #[test]
    fn the_authorization_server_is_the_one_the_grant_names_among_those_listed() {
        let mut offer = CredentialOffer::from_value(&offer_json()).unwrap();
        assert_eq!(offer.authorization_server, None);
        // None listed: the credential issuer is its own authorization server.
        assert_eq!(
            authorization_server(&offer, &json!({})).unwrap(),
            "https://office.example"
        );
        let two =
            json!({"authorization_servers": ["https://as-1.example", "https://as-2.example/t"]});
        assert_eq!(
            authorization_server(&offer, &two).unwrap(),
            "https://as-1.example"
        );
        let mut named = offer_json();
        named["grants"][PRE_AUTHORIZED_GRANT]["authorization_server"] =
            json!("https://as-2.example/t");
        offer = CredentialOffer::from_value(&named).unwrap();
        assert_eq!(
            authorization_server(&offer, &two).unwrap(),
            "https://as-2.example/t"
        );
        // A server the metadata does not list is never asked.
        let err = authorization_server(
            &offer,
            &json!({"authorization_servers": ["https://as-1.example"]}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not list"), "{err}");
        assert!(authorization_server(&offer, &json!({})).is_err());
        named["grants"][PRE_AUTHORIZED_GRANT]["authorization_server"] = json!(1);
        assert!(CredentialOffer::from_value(&named).is_err());
    }

    #[test]
    fn well_known_urls_insert_before_the_path() {
        let u = Url::parse("https://office.example/tenant").unwrap();
        assert_eq!(
            well_known(&u, "openid-credential-issuer").unwrap().as_str(),
            "https://office.example/.well-known/openid-credential-issuer/tenant"
        );
        let u = Url::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            well_known(&u, "oauth-authorization-server")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/.well-known/oauth-authorization-server"
        );
    }
}
