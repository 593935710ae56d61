//! The wallet's side of a gateway: asking for a challenge, registering and withdrawing
//! consents.
//!
//! Everything a gateway answers is untrusted input. Answers are size-limited, parsed with
//! the federation's strict JSON rules, and validated before anything is signed over them;
//! a refusal is read as RFC 9457 problem details, and text echoed from it is cut and
//! stripped of control characters so that a gateway cannot rewrite the user's terminal.

use chrono::{DateTime, Utc};
use federation::client::{loopback_only_http, try_http_client};
use federation::credentials::PresentationBinding;
use federation::json::parse_strict as parse_strict_json;
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Result, WalletError};

/// Re-exported so that callers need no direct reqwest dependency to build a client.
pub use reqwest::Url;

/// Largest gateway answer read.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Longest text echoed from a gateway's problem document.
const MAX_ECHOED_CHARS: usize = 300;
const MIN_CHALLENGE_CHARS: usize = 16;
const MAX_CHALLENGE_CHARS: usize = 256;
const MAX_DID_CHARS: usize = 2048;

/// A gateway's challenge: the nonce to sign over and the DID the gateway speaks as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    challenge: String,
    pub(crate) domain: String,
    expires_at: DateTime<Utc>,
}

impl Challenge {
    /// Validates a gateway's answer to `POST /v1/challenges`.
    fn from_answer(answer: &Value) -> Result<Self> {
        let bad = |m: &str| WalletError::BadChallenge(m.to_string());
        let field = |key: &str| answer.get(key).and_then(Value::as_str);
        let challenge = field("challenge").ok_or_else(|| bad("no challenge string"))?;
        let len = challenge.chars().count();
        if !(MIN_CHALLENGE_CHARS..=MAX_CHALLENGE_CHARS).contains(&len) {
            return Err(bad(&format!(
                "the challenge has {len} characters, not {MIN_CHALLENGE_CHARS} to {MAX_CHALLENGE_CHARS}"
            )));
        }
        if !challenge.chars().all(is_url_safe) {
            return Err(bad("the challenge has characters that are not URL-safe"));
        }
        let domain = field("domain").ok_or_else(|| bad("no domain string"))?;
        if !is_did(domain) {
            return Err(bad("the domain is not a DID"));
        }
        let expires_at = field("expiresAt")
            .ok_or_else(|| bad("no expiresAt"))
            .and_then(|s| {
                federation::time::parse(s).ok_or_else(|| bad("expiresAt is not RFC 3339"))
            })?;
        if expires_at <= Utc::now() {
            return Err(bad("the challenge has already expired"));
        }
        Ok(Challenge {
            challenge: challenge.to_string(),
            domain: domain.to_string(),
            expires_at,
        })
    }

    /// What the presentation is bound to.
    pub(crate) fn binding(&self) -> PresentationBinding {
        PresentationBinding {
            challenge: self.challenge.clone(),
            domain: self.domain.clone(),
        }
    }
}

/// RFC 3986 unreserved characters: a challenge travels in URLs and headers unescaped.
fn is_url_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')
}

/// `did:<method>:<method-specific-id>` with the characters DID Core allows.
pub(crate) fn is_did(s: &str) -> bool {
    let mut parts = s.splitn(3, ':');
    let (Some("did"), Some(method), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    s.len() <= MAX_DID_CHARS
        && !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !id.is_empty()
        && !id.ends_with(':')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'%'))
}

/// Cuts gateway-supplied text to one short line of printable characters.
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

/// A client for one gateway, rooted at its base URL.
#[derive(Clone)]
pub struct GatewayClient {
    base: Url,
    client: reqwest::Client,
    dev_mode: bool,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("base", &self.base.as_str())
            .field("dev_mode", &self.dev_mode)
            .finish_non_exhaustive()
    }
}

impl GatewayClient {
    /// A client with the federation's outbound policy: https always; plain http only to a
    /// loopback host and only when `dev_mode` is set.
    pub fn new(base: Url, dev_mode: bool) -> Result<Self> {
        Self::with_client(base, try_http_client()?, dev_mode)
    }

    /// As [`GatewayClient::new`] with a prepared client (e.g. with extra trust roots).
    fn with_client(mut base: Url, client: reqwest::Client, dev_mode: bool) -> Result<Self> {
        loopback_only_http(&base, dev_mode)?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(WalletError::InvalidRequest(
                "the gateway URL must not carry a query or fragment".into(),
            ));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(WalletError::InvalidRequest(
                "the gateway URL must not carry credentials".into(),
            ));
        }
        // Endpoints are joined below the base path, so it must end with a slash.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(GatewayClient {
            base,
            client,
            dev_mode,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `POST /v1/challenges`: a fresh challenge, validated (not yet matched to a facility).
    pub(crate) async fn challenge(&self) -> Result<Challenge> {
        let answer = self
            .post("v1/challenges", &json!({}), StatusCode::OK)
            .await?;
        Challenge::from_answer(&answer)
    }

    /// `POST /v1/consents` with a patient's presentation of a consent (201 expected).
    pub(crate) async fn register_consent(&self, vp: &Value) -> Result<Value> {
        self.post(
            "v1/consents",
            &json!({ "presentation": vp }),
            StatusCode::CREATED,
        )
        .await
    }

    /// `POST /v1/consents/withdrawals` with a patient's presentation of a consent (200
    /// expected).
    pub(crate) async fn withdraw_consent(&self, vp: &Value) -> Result<Value> {
        self.post(
            "v1/consents/withdrawals",
            &json!({ "presentation": vp }),
            StatusCode::OK,
        )
        .await
    }

    async fn post(&self, path: &str, body: &Value, expected: StatusCode) -> Result<Value> {
        let url = self
            .base
            .join(path)
            .map_err(|e| WalletError::InvalidRequest(format!("gateway URL: {e}")))?;
        loopback_only_http(&url, self.dev_mode)?;
        let unreachable = |e: reqwest::Error| WalletError::GatewayUnreachable {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        };
        let mut resp = self
            .client
            .post(url.clone())
            .header(
                ACCEPT,
                HeaderValue::from_static("application/json, application/problem+json"),
            )
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(self.protocol(&url, "the answer is larger than 256 KiB"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status == expected {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return parse_strict_json(&bytes)
                .map_err(|p| self.protocol(&url, &format!("the body is not JSON: {p}")));
        }
        if status.is_success() {
            return Err(self.protocol(&url, &format!("expected {expected}, got {status}")));
        }
        Err(problem(status, &bytes))
    }

    fn protocol(&self, url: &Url, reason: &str) -> WalletError {
        WalletError::GatewayProtocol {
            url: url.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Reads a refusal as RFC 9457 problem details; a body that is not one still yields the
/// status, with a detail saying so.
fn problem(status: StatusCode, bytes: &[u8]) -> WalletError {
    let reason = status.canonical_reason().unwrap_or("Error");
    let doc = parse_strict_json(bytes).ok().filter(Value::is_object);
    let text = |key: &str| {
        doc.as_ref()
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(sanitize)
    };
    let detail = match &doc {
        Some(_) => text("detail").unwrap_or_else(|| "no detail given".into()),
        None => "the gateway sent no problem details".into(),
    };
    WalletError::GatewayError {
        status: status.as_u16(),
        title: text("title").unwrap_or_else(|| reason.to_string()),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(challenge: &str, domain: &str) -> Value {
        json!({
            "challenge": challenge,
            "domain": domain,
            "expiresAt": federation::time::rfc3339(Utc::now() + chrono::Duration::minutes(5)),
        })
    }

    #[test]
    fn challenge_rules() {
        let ok = "abcdefghijklmnop_-.~0123";
        assert!(Challenge::from_answer(&answer(ok, "did:web:hospital-b.test")).is_ok());
        assert!(Challenge::from_answer(&answer(ok, "did:web:gw.test%3A8443")).is_ok());
        for bad in [
            "short",
            &"x".repeat(257),
            "has spaces in it here",
            "percent%20encoded_xx",
            "ünïcødé-characters-here",
        ] {
            let err = Challenge::from_answer(&answer(bad, "did:web:b.test")).unwrap_err();
            assert!(matches!(err, WalletError::BadChallenge(_)), "{bad}: {err}");
        }
        for domain in [
            "hospital-b",
            "did:web:",
            "did::x",
            "did:WEB:x",
            "did:web:a b",
        ] {
            let err = Challenge::from_answer(&answer(ok, domain)).unwrap_err();
            assert!(matches!(err, WalletError::BadChallenge(_)), "{domain}");
        }
        let mut expired = answer(ok, "did:web:b.test");
        expired["expiresAt"] = json!("2001-01-01T00:00:00Z");
        assert!(Challenge::from_answer(&expired).is_err());
        assert!(Challenge::from_answer(&json!({"challenge": 5})).is_err());
        assert!(Challenge::from_answer(&json!([])).is_err());
    }

    #[test]
    fn problems_are_read_and_sanitized() {
        let body = br#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"no\nway\u001b[31m"}"#;
        match problem(StatusCode::FORBIDDEN, body) {
            WalletError::GatewayError {
                status,
                title,
                detail,
            } => {
                assert_eq!(status, 403);
                assert_eq!(title, "Forbidden");
                assert_eq!(detail, "no way [31m");
            }
            other => panic!("{other}"),
        }
        match problem(StatusCode::BAD_GATEWAY, b"<html>") {
            WalletError::GatewayError { status, detail, .. } => {
                assert_eq!(status, 502);
                assert!(detail.contains("no problem details"));
            }
            other => panic!("{other}"),
        }
        let long = format!(r#"{{"detail":"{}"}}"#, "a".repeat(5000));
        let msg = problem(StatusCode::BAD_REQUEST, long.as_bytes()).to_string();
        assert!(msg.len() < 500);
    }

    #[test]
    fn base_url_policy() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(GatewayClient::new(url("http://127.0.0.1:1/"), true).is_ok());
        assert!(GatewayClient::new(url("http://127.0.0.1:1/"), false).is_err());
        assert!(GatewayClient::new(url("http://gw.example/"), true).is_err());
        assert!(GatewayClient::new(url("https://gw.example/?x=1"), false).is_err());
        assert!(GatewayClient::new(url("https://u:p@gw.example/"), false).is_err());
        let c = GatewayClient::new(url("https://gw.example/fedgate"), false).unwrap();
        assert_eq!(
            c.base().join("v1/challenges").unwrap().as_str(),
            "https://gw.example/fedgate/v1/challenges"
        );
    }
}
