//! SMART Backend Services: how the gateway authenticates to the organization's FHIR server.
//!
//! The token endpoint is discovered from `{fhir base}/.well-known/smart-configuration`
//! (or configured). The gateway asks it for an access token with the `client_credentials`
//! grant, authenticating with a client assertion: a JWT it signs with its own private key
//! (ES384 or RS384; `iss` = `sub` = the client id, `aud` = the token endpoint, a unique
//! `jti`, `exp` four minutes ahead, the key's `kid` in the header). The public half is
//! registered with the authorization server beforehand (`fedgate records smart-key`).
//!
//! The token is kept, shared by every exchange, until shortly before `expires_in` runs
//! out; one exchange fetches a new one while the others wait for it. A token the FHIR
//! server answers 401 to is dropped and replaced once. The granted `scope` must cover
//! every scope asked for: a server that grants less fails closed, naming what is missing.
//!
//! The key file is read once at start and must be readable by its owner only (0600).
//! Neither the key, the assertion nor the access token is ever logged or put in an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use josekit::jwk::KeyPair as _;
use josekit::jws::JwsSigner;
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;

use super::RecordError;

/// The client assertion type of RFC 7523 (SMART Backend Services).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// What a gateway asks for when `scopes` is not configured: read and search of every type.
pub const DEFAULT_SCOPES: &str = "system/*.rs";
/// How long a client assertion is valid (SMART: at most five minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);
/// Lifetime assumed for a token whose response states none.
const DEFAULT_EXPIRES_IN: u64 = 300;
/// Longest lifetime believed (a day), whatever the server says.
const MAX_EXPIRES_IN: u64 = 24 * 3600;
/// Largest discovery document or token response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest access token accepted (it goes into a header of every request).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SigningAlgorithm {
    /// ECDSA on P-384 with SHA-384 (preferred).
    #[default]
    ES384,
    /// RSASSA-PKCS1-v1_5 with SHA-384, a key of at least 2048 bits.
    RS384,
}

impl SigningAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::ES384 => "ES384",
            SigningAlgorithm::RS384 => "RS384",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[records.auth]`: the gateway as a SMART Backend Services client of its FHIR server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmartSettings {
    /// The client id the authorization server registered for this gateway.
    pub client_id: String,
    /// The private key (PEM, or a JWK with `d`), mode 0600.
    pub key_file: PathBuf,
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// The scopes asked for, space-separated (`system/Patient.rs system/Observation.rs`).
    #[serde(default = "default_scopes")]
    pub scopes: String,
    /// The token endpoint, when the FHIR server publishes no smart-configuration.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The `kid` of the assertions; by default the key file's JWK `kid`, else the key's
    /// RFC 7638 thumbprint (what `fedgate records smart-key` prints).
    #[serde(default)]
    pub kid: Option<String>,
}

fn default_scopes() -> String {
    DEFAULT_SCOPES.to_string()
}

impl SmartSettings {
    /// The first problem with these settings: the key (under `records.auth`) and what is
    /// wrong. URLs are checked by the caller, which knows the dev-mode rule.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.client_id.trim().is_empty() || self.client_id.chars().any(char::is_control) {
            return Some((
                "records.auth.client_id",
                "must be a non-empty client id".into(),
            ));
        }
        if let Err(e) = parse_scopes(&self.scopes) {
            return Some(("records.auth.scopes", e.to_string()));
        }
        if self.kid.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Some(("records.auth.kid", "must not be empty when set".into()));
        }
        None
    }
}

/// Mutual TLS towards the FHIR server (and its authorization server): the client
/// certificate chain and its private key, both PEM; the key file mode 0600.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// How the gateway authenticates to its FHIR server: neither, either or both.
#[derive(Debug, Clone, Default)]
pub struct FhirAuth {
    pub smart: Option<SmartSettings>,
    pub tls: Option<ClientTls>,
}

impl FhirAuth {
    /// The HTTP client of the FHIR source: the fedgate client rules, with the client
    /// certificate when mutual TLS is configured.
    pub fn http_client(&self) -> Result<reqwest::Client, SmartError> {
        let Some(tls) = &self.tls else {
            return Ok(federation::client::http_client());
        };
        let mut pem = std::fs::read(&tls.cert_file).map_err(|e| SmartError::ClientTls {
            file: tls.cert_file.display().to_string(),
            reason: e.to_string(),
        })?;
        let key = federation::keys::read_private(&tls.key_file).map_err(SmartError::KeyFile)?;
        pem.push(b'\n');
        pem.extend_from_slice(&key);
        let identity = reqwest::Identity::from_pem(&pem);
        zeroize::Zeroize::zeroize(&mut pem);
        let identity = identity.map_err(|e| SmartError::ClientTls {
            file: tls.cert_file.display().to_string(),
            reason: format!("not a PEM certificate and private key: {}", e.without_url()),
        })?;
        federation::client::http_client_builder()
            .identity(identity)
            .build()
            .map_err(|e| SmartError::ClientTls {
                file: tls.cert_file.display().to_string(),
                reason: e.without_url().to_string(),
            })
    }
}

/// Why the gateway could not authorize itself to its FHIR server. The messages name the
/// setting or the server's answer; never a key, an assertion or a token.
#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    #[error("records.auth.key_file: {0}")]
    KeyFile(#[source] federation::keys::KeyError),
    #[error("records.auth.key_file {file}: {reason}")]
    Key { file: String, reason: String },
    #[error("records.client_cert {file}: {reason}")]
    ClientTls { file: String, reason: String },
    #[error("{setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
    #[error("SMART discovery (.well-known/smart-configuration) failed: {0}; set records.auth.token_endpoint if the server publishes none")]
    Discovery(String),
    #[error("the FHIR server's authorization server does not support {0}")]
    Unsupported(String),
    #[error("the token request failed: {0}")]
    TokenRequest(String),
    /// The authorization server answered with an OAuth error (RFC 6749 §5.2).
    #[error("the authorization server refused the token request (HTTP {status}, {error}{}): {}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), hint(error))]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("the authorization server's token response is not valid: {0}")]
    BadTokenResponse(String),
    #[error("the authorization server granted `{granted}`, which lacks `{missing}`; grant the client that scope, or narrow records.auth.scopes")]
    MissingScope { missing: String, granted: String },
    /// The FHIR server refused a token just obtained (401 twice in a row).
    #[error("the FHIR server refused a fresh access token for the {what} (HTTP 401): it does not trust the authorization server's tokens (issuer, audience, signing key) or their lifetime (clocks)")]
    TokenRejected { what: &'static str },
    /// The FHIR server answered 403 to an authorized request: the token's scopes.
    #[error("the FHIR server refused the {what} (HTTP 403): the access token's scopes (`{granted}`) do not allow it")]
    Forbidden { what: &'static str, granted: String },
}

/// What an OAuth error code means for whoever runs the gateway.
fn hint(error: &str) -> &'static str {
    match error {
        "invalid_client" => "the client is unknown or revoked, or its assertion is not signed with the key registered for it (records.auth.client_id, key_file, kid)",
        "invalid_scope" => "the client is not allowed every scope asked for (records.auth.scopes)",
        "unauthorized_client" => "the client may not use the client_credentials grant",
        "invalid_grant" => "the authorization server refused the grant",
        "invalid_request" => "the authorization server did not accept the request's form",
        _ => "see the authorization server's log",
    }
}

/// An access token as kept and handed to requests. Its value is never printed.
#[derive(Clone)]
pub struct AccessToken {
    value: Arc<str>,
    generation: u64,
    scope: Arc<str>,
}

impl AccessToken {
    /// The bearer value, for the `Authorization` header only.
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// The scopes granted.
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"[redacted]")
            .field("generation", &self.generation)
            .field("scope", &self.scope)
            .finish()
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    token_endpoint: Option<reqwest::Url>,
    token: Option<Cached>,
}

/// The gateway's SMART Backend Services client of one FHIR server.
pub struct SmartClient {
    client_id: String,
    scopes: Vec<String>,
    algorithm: SigningAlgorithm,
    kid: String,
    signer: Box<dyn JwsSigner>,
    fhir_base: reqwest::Url,
    configured_endpoint: Option<reqwest::Url>,
    http: reqwest::Client,
    dev_mode: bool,
    generations: AtomicU64,
    state: tokio::sync::Mutex<State>,
}

impl fmt::Debug for SmartClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartClient")
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A private key read from a key file, ready to sign assertions.
struct LoadedKey {
    signer: Box<dyn JwsSigner>,
    kid: String,
}

impl SmartClient {
    /// Reads the key file (refused unless 0600) and checks the settings; nothing is asked
    /// of any server yet. `fhir_base` must end with `/`.
    pub fn new(
        settings: &SmartSettings,
        fhir_base: &reqwest::Url,
        http: reqwest::Client,
        dev_mode: bool,
    ) -> Result<SmartClient, SmartError> {
        if let Some((setting, reason)) = settings.problem() {
            return Err(SmartError::Setting { setting, reason });
        }
        let scopes = parse_scopes(&settings.scopes).map_err(|e| SmartError::Setting {
            setting: "records.auth.scopes",
            reason: e.to_string(),
        })?;
        let configured_endpoint = settings
            .token_endpoint
            .as_deref()
            .map(|u| endpoint_url(u, dev_mode))
            .transpose()
            .map_err(|e| SmartError::Setting {
                setting: "records.auth.token_endpoint",
                reason: e.to_string(),
            })?;
        let key = load_key(&settings.key_file, settings.algorithm)?;
        Ok(SmartClient {
            client_id: settings.client_id.clone(),
            scopes,
            algorithm: settings.algorithm,
            kid: settings.kid.clone().unwrap_or(key.kid),
            signer: key.signer,
            fhir_base: fhir_base.clone(),
            configured_endpoint,
            http,
            dev_mode,
            generations: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The `kid` the assertions carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A valid access token: the kept one, or a new one from the token endpoint (one
    /// request at a time; concurrent callers wait for it).
    pub async fn token(&self) -> Result<AccessToken, SmartError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.token {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        state.token = None;
        let endpoint = match (&self.configured_endpoint, &state.token_endpoint) {
            (Some(url), _) | (None, Some(url)) => url.clone(),
            (None, None) => {
                let url = self.discover().await?;
                state.token_endpoint = Some(url.clone());
                url
            }
        };
        let (token, expires_in) = self.request_token(&endpoint).await?;
        if expires_in > Duration::ZERO {
            // Renewed before the end: a token must outlive the exchange that took it.
            let margin = (expires_in / 5).min(Duration::from_secs(60));
            state.token = Some(Cached {
                token: token.clone(),
                refresh_at: Instant::now() + expires_in - margin,
            });
        }
        tracing::info!(
            client_id = %self.client_id,
            scope = %token.scope,
            expires_in_secs = expires_in.as_secs(),
            "SMART access token obtained"
        );
        Ok(token)
    }

    /// Forgets `token` (answered 401) unless another caller already replaced it.
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut state = self.state.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|c| c.token.generation == token.generation)
        {
            state.token = None;
        }
    }

    /// The token endpoint of `{fhir base}/.well-known/smart-configuration`, checked to
    /// take this client's authentication.
    async fn discover(&self) -> Result<reqwest::Url, SmartError> {
        let url = self
            .fhir_base
            .join(".well-known/smart-configuration")
            .map_err(|e| SmartError::Discovery(e.to_string()))?;
        federation::client::loopback_only_http(&url, self.dev_mode)
            .map_err(|e| SmartError::Discovery(e.to_string()))?;
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| SmartError::Discovery(e.without_url().to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(SmartError::Discovery(format!(
                "the FHIR server answered HTTP {}",
                status.as_u16()
            )));
        }
        let body = read_limited(resp)
            .await
            .map_err(|e| SmartError::Discovery(e.to_string()))?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| SmartError::Discovery(format!("not JSON: {e}")))?;
        let endpoint = doc["token_endpoint"]
            .as_str()
            .ok_or_else(|| SmartError::Discovery("no token_endpoint".into()))?;
        let endpoint = endpoint_url(endpoint, self.dev_mode)
            .map_err(|e| SmartError::Discovery(format!("token_endpoint {e}")))?;
        let listed = |key: &str| -> Option<Vec<String>> {
            doc[key].as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
        };
        if let Some(methods) = listed("token_endpoint_auth_methods_supported") {
            if !methods.iter().any(|m| m == "private_key_jwt") {
                return Err(SmartError::Unsupported(format!(
                    "private_key_jwt client authentication (it lists {})",
                    methods.join(", ")
                )));
            }
        }
        if let Some(algs) = listed("token_endpoint_auth_signing_alg_values_supported") {
            if !algs.iter().any(|a| a == self.algorithm.name()) {
                return Err(SmartError::Unsupported(format!(
                    "{} client assertions (it lists {}); set records.auth.algorithm",
                    self.algorithm,
                    algs.join(", ")
                )));
            }
        }
        Ok(endpoint)
    }

    /// A signed client assertion for `endpoint`.
    fn assertion(&self, endpoint: &reqwest::Url) -> Result<String, SmartError> {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ASSERTION_LIFETIME)
            .as_secs();
        let payload = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": endpoint.as_str(),
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = josekit::jws::JwsHeader::new();
        header.set_token_type("JWT");
        header.set_key_id(self.kid.clone());
        let bytes = serde_json::to_vec(&payload)
            .map_err(|e| SmartError::TokenRequest(format!("assertion: {e}")))?;
        josekit::jws::serialize_compact(&bytes, &header, self.signer.as_ref())
            .map_err(|e| SmartError::TokenRequest(format!("signing the assertion: {e}")))
    }

    async fn request_token(
        &self,
        endpoint: &reqwest::Url,
    ) -> Result<(AccessToken, Duration), SmartError> {
        federation::client::loopback_only_http(endpoint, self.dev_mode)
            .map_err(|e| SmartError::TokenRequest(e.to_string()))?;
        let assertion = zeroize::Zeroizing::new(self.assertion(endpoint)?);
        let asked = self.scopes.join(" ");
        let form = zeroize::Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("scope", &asked)
                .append_pair("client_assertion_type", ASSERTION_TYPE)
                .append_pair("client_assertion", &assertion)
                .finish(),
        );
        let resp = self
            .http
            .post(endpoint.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form.as_bytes().to_vec())
            .send()
            .await
            .map_err(|e| SmartError::TokenRequest(e.without_url().to_string()))?;
        let status = resp.status();
        let body = read_limited(resp)
            .await
            .map_err(|e| SmartError::TokenRequest(e.to_string()))?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let error = json
                .as_ref()
                .and_then(|j| j["error"].as_str())
                .map(|e| printable(e, 64))
                .unwrap_or_else(|| "no OAuth error".into());
            let description = json
                .as_ref()
                .and_then(|j| j["error_description"].as_str())
                .map(|d| printable(d, 200));
            return Err(SmartError::Refused {
                status: status.as_u16(),
                error,
                description,
            });
        }
        let json = json.ok_or_else(|| SmartError::BadTokenResponse("not JSON".into()))?;
        let value = json["access_token"]
            .as_str()
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
            .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| SmartError::BadTokenResponse("no usable access_token".into()))?;
        let token_type = json["token_type"].as_str().unwrap_or_default();
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err(SmartError::BadTokenResponse(format!(
                "token_type {:?}, not Bearer",
                printable(token_type, 32)
            )));
        }
        let expires_in = match &json["expires_in"] {
            Value::Null => DEFAULT_EXPIRES_IN,
            Value::Number(n) => n.as_u64().ok_or_else(|| {
                SmartError::BadTokenResponse("expires_in is not a whole number".into())
            })?,
            Value::String(s) => s.trim().parse().map_err(|_| {
                SmartError::BadTokenResponse("expires_in is not a whole number".into())
            })?,
            _ => {
                return Err(SmartError::BadTokenResponse(
                    "expires_in is not a whole number".into(),
                ))
            }
        }
        .min(MAX_EXPIRES_IN);
        // RFC 6749 §5.1: no `scope` means the scope asked for.
        let granted = match &json["scope"] {
            Value::Null => asked.clone(),
            Value::String(s) => printable(s, 4096),
            _ => return Err(SmartError::BadTokenResponse("scope is not a string".into())),
        };
        let granted_list: Vec<&str> = granted.split_whitespace().collect();
        if let Some(missing) = self
            .scopes
            .iter()
            .find(|s| !granted_list.iter().any(|g| covers(g, s)))
        {
            return Err(SmartError::MissingScope {
                missing: missing.clone(),
                granted,
            });
        }
        let token = AccessToken {
            value: Arc::from(value),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            scope: Arc::from(granted.as_str()),
        };
        Ok((token, Duration::from_secs(expires_in)))
    }
}

/// Why an authorization server's answer could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("{0}")]
    Read(reqwest::Error),
    #[error("the response exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// The body of `resp`, at most [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A server-provided text made safe to show: printable ASCII, at most `max` characters.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// Why a configured or discovered endpoint is not usable.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("is not a URL: {0}")]
    NotUrl(#[from] url::ParseError),
    #[error(transparent)]
    Scheme(#[from] federation::client::ClientError),
    #[error("must not have a fragment")]
    Fragment,
}

fn endpoint_url(u: &str, dev_mode: bool) -> Result<reqwest::Url, EndpointError> {
    let url = reqwest::Url::parse(u)?;
    federation::client::loopback_only_http(&url, dev_mode)?;
    if url.fragment().is_some() {
        return Err(EndpointError::Fragment);
    }
    Ok(url)
}

/// Why a scope list is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("must name at least one scope, e.g. \"system/*.rs\"")]
    Empty,
    #[error("{0:?} is not a scope (RFC 6749 §3.3)")]
    NotAScope(String),
}

/// The scopes of a space-separated list (RFC 6749 §3.3 characters), at least one.
pub fn parse_scopes(s: &str) -> Result<Vec<String>, ScopeError> {
    let scopes: Vec<String> = s
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if scopes.is_empty() {
        return Err(ScopeError::Empty);
    }
    for scope in &scopes {
        if !scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(ScopeError::NotAScope(scope.clone()));
        }
    }
    Ok(scopes)
}

/// Whether the granted scope `granted` allows all that `asked` does: the same text, or
/// the same context (`system`, `user`, `patient`), a type that is `*` or the same, and
/// permissions that include the ones asked (SMART v2 `cruds` letters, v1 `read`,
/// `write` and `*`). A scope with a query (`?category=...`) is covered only by itself or
/// by a scope without a query.
pub fn covers(granted: &str, asked: &str) -> bool {
    if granted == asked {
        return true;
    }
    let (Some(g), Some(a)) = (ResourceScope::parse(granted), ResourceScope::parse(asked)) else {
        return false;
    };
    g.context == a.context
        && (g.resource == "*" || g.resource == a.resource)
        && g.query.is_none_or(|q| a.query == Some(q))
        && a.permissions.iter().all(|p| g.permissions.contains(p))
}

struct ResourceScope<'a> {
    context: &'a str,
    resource: &'a str,
    permissions: Vec<char>,
    query: Option<&'a str>,
}

impl<'a> ResourceScope<'a> {
    fn parse(s: &'a str) -> Option<ResourceScope<'a>> {
        let (context, rest) = s.split_once('/')?;
        if !matches!(context, "system" | "user" | "patient") {
            return None;
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (resource, perms) = rest.split_once('.')?;
        if resource.is_empty() {
            return None;
        }
        let permissions = match perms {
            "read" => vec!['r', 's'],
            "write" => vec!['c', 'u', 'd'],
            "*" => vec!['c', 'r', 'u', 'd', 's'],
            v2 if !v2.is_empty() && v2.chars().all(|c| "cruds".contains(c)) => {
                // SMART v2: the letters in order, each at most once.
                let order: Vec<usize> = v2.chars().filter_map(|c| "cruds".find(c)).collect();
                if order.windows(2).any(|w| w[0] >= w[1]) {
                    return None;
                }
                v2.chars().collect()
            }
            _ => return None,
        };
        Some(ResourceScope {
            context,
            resource,
            permissions,
            query,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------

fn load_key(path: &Path, algorithm: SigningAlgorithm) -> Result<LoadedKey, SmartError> {
    let bytes = federation::keys::read_private(path).map_err(SmartError::KeyFile)?;
    let file = path.display().to_string();
    let bad = |reason: String| SmartError::Key {
        file: file.clone(),
        reason,
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| bad("neither PEM nor a JWK (not text)".into()))?
        .trim_start();
    let jwk = if text.starts_with("-----BEGIN") {
        let pair: Box<dyn josekit::jwk::KeyPair> = match algorithm {
            SigningAlgorithm::ES384 => Box::new(
                josekit::jws::ES384
                    .key_pair_from_pem(text)
                    .map_err(|_| bad("not a P-384 private key in PEM (algorithm ES384)".into()))?,
            ),
            SigningAlgorithm::RS384 => Box::new(
                josekit::jws::RS384
                    .key_pair_from_pem(text)
                    .map_err(|_| bad("not an RSA private key in PEM (algorithm RS384)".into()))?,
            ),
        };
        pair.to_jwk_key_pair()
    } else if text.starts_with('{') {
        josekit::jwk::Jwk::from_bytes(text.as_bytes()).map_err(|_| bad("not a JWK".into()))?
    } else {
        return Err(bad("neither PEM nor a JWK".into()));
    };
    if jwk.parameter("d").is_none() {
        return Err(bad("holds a public key; the private key is needed".into()));
    }
    let signer: Box<dyn JwsSigner> = match algorithm {
        SigningAlgorithm::ES384 => Box::new(
            josekit::jws::ES384
                .signer_from_jwk(&jwk)
                .map_err(|_| bad("not a P-384 private key usable for ES384 signatures".into()))?,
        ),
        SigningAlgorithm::RS384 => {
            Box::new(josekit::jws::RS384.signer_from_jwk(&jwk).map_err(|_| {
                bad("not an RSA private key of 2048 bits or more usable for RS384".into())
            })?)
        }
    };
    let kid = match jwk.key_id() {
        Some(kid) => kid.to_string(),
        None => thumbprint(&jwk).ok_or_else(|| bad("the key has no public parameters".into()))?,
    };
    Ok(LoadedKey { signer, kid })
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC or RSA key.
fn thumbprint(jwk: &josekit::jwk::Jwk) -> Option<String> {
    let p = |k: &str| jwk.parameter(k).and_then(Value::as_str);
    // The required members in lexicographic order, no whitespace (serde_json keeps the
    // order of a `json!` object only with preserve_order; written out instead).
    let canonical = match jwk.key_type() {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            Value::from(p("crv")?),
            Value::from(p("x")?),
            Value::from(p("y")?)
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            Value::from(p("e")?),
            Value::from(p("n")?)
        ),
        _ => return None,
    };
    Some(federation::b64::encode(&sha2::Sha256::digest(
        canonical.as_bytes(),
    )))
}

/// The public JWK Set of the private key in `private_jwk`: the JWK with its `kid` (the
/// thumbprint unless it has one), `alg` and `use`, to register with an authorization
/// server.
pub fn public_jwks(
    private_jwk: &josekit::jwk::Jwk,
    algorithm: SigningAlgorithm,
) -> Result<Value, KeyGenError> {
    let mut public = private_jwk.to_public_key()?;
    let kid = match private_jwk.key_id() {
        Some(kid) => kid.to_string(),
        None => thumbprint(private_jwk).ok_or(KeyGenError::NoPublicParameters)?,
    };
    public.set_key_id(kid);
    public.set_algorithm(algorithm.name());
    public.set_key_use("sig");
    let public: Value = serde_json::to_value(public.as_ref())?;
    Ok(serde_json::json!({ "keys": [public] }))
}

/// Why a client key or its JWK Set could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyGenError {
    #[error("the key has no public parameters")]
    NoPublicParameters,
    #[error(transparent)]
    Jose(#[from] josekit::JoseError),
    #[error("the JWK Set does not serialize: {0}")]
    Json(#[from] serde_json::Error),
}

/// A new ES384 (P-384) private key as PKCS#8 PEM, and its public JWK Set.
pub fn generate_es384_key() -> Result<(zeroize::Zeroizing<Vec<u8>>, Value), KeyGenError> {
    let pair = josekit::jws::ES384.generate_key_pair()?;
    let pem = zeroize::Zeroizing::new(pair.to_pem_private_key());
    let jwks = public_jwks(&pair.to_jwk_key_pair(), SigningAlgorithm::ES384)?;
    Ok((pem, jwks))
}

impl From<SmartError> for RecordError {
    fn from(e: SmartError) -> Self {
        RecordError::Auth(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn settings(key_file: PathBuf) -> SmartSettings {
        SmartSettings {
            client_id: "gw".into(),
            key_file,
            algorithm: SigningAlgorithm::ES384,
            scopes: DEFAULT_SCOPES.into(),
            token_endpoint: None,
            kid: None,
        }
    }

    fn base() -> reqwest::Url {
        reqwest::Url::parse("https://fhir.example/r4/").unwrap()
    }

    fn client(settings: &SmartSettings) -> Result<SmartClient, SmartError> {
        SmartClient::new(settings, &base(), reqwest::Client::new(), false)
    }

    fn write_key(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = generate_es384_key().unwrap();
        let path = write_key(dir.path(), "smart.pem", &pem, 0o644);
        let err = client(&settings(path.clone())).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(
                err,
                SmartError::KeyFile(federation::keys::KeyError::TooOpen { .. })
            ),
            "{err:?}"
        );
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains("records.auth.key_file"), "{message}");
        assert!(!message.contains("BEGIN"), "{message}");
        // Group-readable is as refused as world-readable; the owner's alone is taken.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(client(&settings(path.clone())).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        client(&settings(path)).unwrap();
    }

    #[test]
    fn pem_and_jwk_keys_of_both_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, jwks) = generate_es384_key().unwrap();
        let path = write_key(dir.path(), "es.pem", &pem, 0o600);
        let smart = client(&settings(path.clone())).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], smart.kid());
        assert_eq!(jwks["keys"][0]["alg"], "ES384");
        assert!(jwks["keys"][0].get("d").is_none(), "{jwks}");
        // An ES384 key is not an RS384 key, and the error says which was expected.
        let mut rs = settings(path);
        rs.algorithm = SigningAlgorithm::RS384;
        let err = client(&rs).unwrap_err().to_string();
        assert!(err.contains("RS384") && !err.contains("BEGIN"), "{err}");

        let pair = josekit::jws::RS384.generate_key_pair(2048).unwrap();
        let mut jwk = pair.to_jwk_key_pair();
        jwk.set_key_id("rsa-1");
        let path = write_key(dir.path(), "rs.jwk", jwk.to_string().as_bytes(), 0o600);
        let mut rs = settings(path);
        rs.algorithm = SigningAlgorithm::RS384;
        let smart = client(&rs).unwrap();
        assert_eq!(smart.kid(), "rsa-1");
        let assertion = smart
            .assertion(&reqwest::Url::parse("https://as.example/token").unwrap())
            .unwrap();
        let verifier = josekit::jws::RS384
            .verifier_from_jwk(&jwk.to_public_key().unwrap())
            .unwrap();
        let (payload, header) = josekit::jwt::decode_with_verifier(&assertion, &verifier).unwrap();
        assert_eq!(header.key_id(), Some("rsa-1"));
        assert_eq!(payload.issuer(), Some("gw"));
        assert_eq!(payload.subject(), Some("gw"));
        assert_eq!(payload.audience(), Some(vec!["https://as.example/token"]));
        let exp = payload.expires_at().unwrap();
        let ahead = exp.duration_since(SystemTime::now()).unwrap();
        assert!(ahead <= Duration::from_secs(300), "{ahead:?}");
        assert!(payload.jwt_id().is_some());

        // A public key alone cannot sign.
        let public = jwk.to_public_key().unwrap();
        let path = write_key(dir.path(), "pub.jwk", public.to_string().as_bytes(), 0o600);
        let mut rs = settings(path);
        rs.algorithm = SigningAlgorithm::RS384;
        assert!(client(&rs).unwrap_err().to_string().contains("public key"));
    }

    #[test]
    fn settings_are_checked_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = generate_es384_key().unwrap();
        let path = write_key(dir.path(), "k.pem", &pem, 0o600);
        let mut s = settings(path.clone());
        s.scopes = "  ".into();
        assert!(client(&s)
            .unwrap_err()
            .to_string()
            .contains("records.auth.scopes"));
        let mut s = settings(path.clone());
        s.token_endpoint = Some("http://as.example/token".into());
        let err = client(&s).unwrap_err().to_string();
        assert!(err.contains("records.auth.token_endpoint"), "{err}");
        let mut s = settings(path);
        s.client_id = String::new();
        assert!(client(&s).unwrap_err().to_string().contains("client_id"));
    }

    #[test]
    fn scope_coverage() {
        assert!(covers("system/*.rs", "system/Patient.rs"));
        assert!(covers("system/*.cruds", "system/Observation.rs"));
        assert!(covers("system/Patient.read", "system/Patient.rs"));
        assert!(covers("system/*.read", "system/Patient.read"));
        assert!(covers("system/Patient.rs", "system/Patient.r"));
        assert!(!covers("system/Observation.rs", "system/Patient.rs"));
        assert!(!covers("system/Patient.r", "system/Patient.rs"));
        assert!(!covers("patient/*.rs", "system/Patient.rs"));
        assert!(!covers(
            "system/Observation.rs?category=lab",
            "system/Observation.rs"
        ));
        assert!(covers(
            "system/Observation.rs",
            "system/Observation.rs?category=lab"
        ));
        assert!(!covers("system/*.sr", "system/Patient.rs"));
        assert!(covers("launch", "launch"));
        assert!(!covers("openid", "system/*.rs"));
        assert_eq!(
            parse_scopes("system/*.rs  system/Patient.r").unwrap().len(),
            2
        );
        assert!(parse_scopes("system/\"x\".rs").is_err());
    }

    #[test]
    fn tokens_and_errors_do_not_print_secrets() {
        let token = AccessToken {
            value: Arc::from("eyJ.secret.value"),
            generation: 1,
            scope: Arc::from("system/*.rs"),
        };
        assert!(!format!("{token:?}").contains("secret"));
        let refused = SmartError::Refused {
            status: 401,
            error: "invalid_client".into(),
            description: Some("client authentication failed".into()),
        };
        let message = refused.to_string();
        assert!(
            message.contains("invalid_client: client authentication failed"),
            "{message}"
        );
        assert!(message.contains("revoked"), "{message}");
    }
}
