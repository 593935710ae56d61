//! W3C Bitstring Status Lists: the issuer's list and the verifier's cache of lists.
//!
//! The issuer publishes a signed list credential (a `vc+jwt`) at a stable URL. Verifiers
//! fetch it, check who signed it, and cache it for a TTL. A revocation is also pushed to
//! subscribers as a server-sent event; the event is only a hint to drop the cached list and
//! fetch the signed one again, so a forged push can cause a refetch but never a change of
//! status.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::credentials::StatusEntry;
use crate::did::{did_of, DidResolver, Relationship};

/// Entries per list: the spec's minimum, which gives herd privacy.
pub const LIST_BITS: usize = 131_072;
/// Largest decompressed list accepted from anyone (16 MiB = 134 M entries).
const MAX_DECODED_BYTES: u64 = 16 * 1024 * 1024;

/// A bitstring; index 0 is the most significant bit of the first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitstring(Vec<u8>);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("the credential has been revoked")]
    Revoked,
    #[error("status list unavailable: {0}")]
    Unavailable(String),
    #[error("status list invalid: {0}")]
    Invalid(String),
    /// The list credential's header or payload is not strict JSON ([`crate::json`]).
    #[error("status list credential is not strict JSON: {}", .0.summary())]
    NotStrictJson(crate::json::StrictJsonError),
}

impl Default for Bitstring {
    fn default() -> Self {
        Self::new()
    }
}

impl Bitstring {
    pub fn new() -> Self {
        Bitstring(vec![0; LIST_BITS / 8])
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Bitstring(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn get(&self, index: usize) -> Option<bool> {
        let byte = self.0.get(index / 8)?;
        Some(byte & (0x80 >> (index % 8)) != 0)
    }

    pub fn set(&mut self, index: usize, value: bool) -> bool {
        match self.0.get_mut(index / 8) {
            Some(byte) => {
                let mask = 0x80 >> (index % 8);
                if value {
                    *byte |= mask
                } else {
                    *byte &= !mask
                }
                true
            }
            None => false,
        }
    }

    /// GZIP, then multibase base64url (`u` prefix), as the spec's `encodedList`.
    pub fn encode(&self) -> Result<String, StatusError> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&self.0)
            .and_then(|_| gz.finish())
            .map(|bytes| format!("u{}", crate::b64::encode(&bytes)))
            .map_err(|e| StatusError::Invalid(e.to_string()))
    }

    /// Decodes an `encodedList`, refusing anything that inflates beyond 16 MiB.
    pub fn decode(encoded: &str) -> Result<Self, StatusError> {
        let b64 = encoded
            .strip_prefix('u')
            .ok_or_else(|| StatusError::Invalid("encodedList is not multibase base64url".into()))?;
        let gz = crate::b64::decode(b64)
            .map_err(|_| StatusError::Invalid("encodedList is not base64url".into()))?;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|_| StatusError::Invalid("encodedList is not gzip".into()))?;
        if out.len() as u64 > MAX_DECODED_BYTES {
            return Err(StatusError::Invalid("list too large".into()));
        }
        Ok(Bitstring(out))
    }
}

/// The unsigned status list credential for `bits`, published at `url`.
pub fn list_credential(
    issuer: &str,
    url: &str,
    bits: &Bitstring,
    valid_for: chrono::Duration,
) -> Result<Value, StatusError> {
    let now = Utc::now();
    Ok(json!({
        "@context": [crate::context::CREDENTIALS_V2],
        "id": url,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer,
        "validFrom": crate::time::rfc3339(now),
        "validUntil": crate::time::rfc3339(now + valid_for),
        "credentialSubject": {
            "id": format!("{url}#list"),
            "type": "BitstringStatusList",
            "statusPurpose": "revocation",
            "encodedList": bits.encode()?,
        }
    }))
}

/// Signs a status list credential as a `vc+jwt` (cheap to verify on every refresh).
pub fn sign_list(list: &Value, key: &crate::keys::KeyPair) -> Result<String, StatusError> {
    crate::jose::sign(list, key, "vc+jwt").map_err(|e| StatusError::Invalid(e.to_string()))
}

struct CachedList {
    fetched: Instant,
    bits: Arc<Bitstring>,
    issuer: String,
    purpose: String,
    valid_until: Option<DateTime<Utc>>,
}

/// A verifier's cache of status lists.
pub struct StatusCache {
    resolver: Arc<DidResolver>,
    client: reqwest::Client,
    ttl: Duration,
    dev_mode: bool,
    lists: Mutex<HashMap<String, CachedList>>,
}

impl StatusCache {
    pub fn new(resolver: Arc<DidResolver>, ttl: Duration, dev_mode: bool) -> Self {
        StatusCache {
            resolver,
            client: crate::client::http_client(),
            ttl,
            dev_mode,
            lists: Mutex::new(HashMap::new()),
        }
    }

    /// Drops a cached list, so the next check fetches it again.
    pub fn invalidate(&self, url: &str) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.remove(url);
        }
    }

    fn invalidate_all(&self) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.clear();
        }
    }

    /// Checks a credential's status entry; any doubt is an error (fail closed).
    pub(crate) async fn check(&self, entry: &StatusEntry, issuer: &str) -> Result<(), StatusError> {
        if entry.type_ != "BitstringStatusListEntry" {
            return Err(StatusError::Invalid(format!(
                "unsupported status type {:?}",
                entry.type_
            )));
        }
        let index: usize = entry
            .status_list_index
            .parse()
            .map_err(|_| StatusError::Invalid("statusListIndex is not a number".into()))?;
        let url = &entry.status_list_credential;
        let cached = self.lists.lock().ok().and_then(|lists| {
            lists
                .get(url)
                .filter(|l| l.fetched.elapsed() < self.ttl)
                .map(|l| {
                    (
                        l.bits.clone(),
                        l.issuer.clone(),
                        l.purpose.clone(),
                        l.valid_until,
                    )
                })
        });
        let (bits, list_issuer, purpose, valid_until) = match cached {
            Some(c) => c,
            None => {
                let fetched = self.fetch(url, issuer).await?;
                let out = (
                    fetched.bits.clone(),
                    fetched.issuer.clone(),
                    fetched.purpose.clone(),
                    fetched.valid_until,
                );
                if let Ok(mut lists) = self.lists.lock() {
                    lists.insert(url.clone(), fetched);
                }
                out
            }
        };
        if list_issuer != issuer {
            return Err(StatusError::Invalid(
                "the list is signed by another issuer than the credential".into(),
            ));
        }
        if purpose != entry.status_purpose {
            return Err(StatusError::Invalid("status purpose mismatch".into()));
        }
        if valid_until.is_some_and(|t| t < Utc::now()) {
            return Err(StatusError::Unavailable(
                "the status list has expired".into(),
            ));
        }
        match bits.get(index) {
            Some(false) => Ok(()),
            Some(true) => Err(StatusError::Revoked),
            None => Err(StatusError::Invalid("index beyond the list".into())),
        }
    }

    async fn fetch(&self, url: &str, issuer: &str) -> Result<CachedList, StatusError> {
        let unavailable = |e: String| StatusError::Unavailable(e);
        let parsed = reqwest::Url::parse(url).map_err(|e| StatusError::Invalid(e.to_string()))?;
        // A status URL is only fetched from the issuer's own, registered origin: a
        // credential must never steer a verifier to an address of its choosing.
        let base = self.resolver.web_base(issuer).ok_or_else(|| {
            StatusError::Invalid("the issuer has no registered endpoint for status lists".into())
        })?;
        if parsed.origin() != base.origin() {
            return Err(StatusError::Invalid(
                "status list URL is not on the issuer's registered origin".into(),
            ));
        }
        crate::client::loopback_only_http(&parsed, self.dev_mode)
            .map_err(|e| StatusError::Invalid(e.to_string()))?;
        let mut resp = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > crate::jose::MAX_JWS_BYTES {
                return Err(StatusError::Invalid("status list too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body)
            .map_err(|_| StatusError::Invalid("status list is not UTF-8".into()))?;
        self.verify_list(text.trim(), url).await
    }

    async fn verify_list(&self, jws: &str, url: &str) -> Result<CachedList, StatusError> {
        let invalid = |e: String| StatusError::Invalid(e);
        let decoded = crate::jose::decode(jws).map_err(|e| match e {
            crate::jose::JoseError::Json { source, .. } => StatusError::NotStrictJson(source),
            other => invalid(other.to_string()),
        })?;
        let list = &decoded.payload;
        let issuer = list
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("list has no issuer".into()))?;
        if did_of(&decoded.kid) != issuer {
            return Err(invalid("list signed by a key of another DID".into()));
        }
        let (key, _) = self
            .resolver
            .public_key(&decoded.kid, Relationship::AssertionMethod)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        decoded.verify(&key).map_err(|e| invalid(e.to_string()))?;
        let is_list = list
            .get("type")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t == "BitstringStatusListCredential"));
        if !is_list || list.get("id").and_then(Value::as_str) != Some(url) {
            return Err(invalid("not the status list credential at this URL".into()));
        }
        let subject = list
            .get("credentialSubject")
            .ok_or_else(|| invalid("list has no credentialSubject".into()))?;
        let encoded = subject
            .get("encodedList")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("list has no encodedList".into()))?;
        let purpose = subject
            .get("statusPurpose")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let valid_until = list
            .get("validUntil")
            .and_then(Value::as_str)
            .and_then(crate::time::parse);
        Ok(CachedList {
            fetched: Instant::now(),
            bits: Arc::new(Bitstring::decode(encoded)?),
            issuer: issuer.to_string(),
            purpose,
            valid_until,
        })
    }

    /// Subscribes to an issuer's revocation events (server-sent events) and drops the named
    /// lists from the cache as events arrive. Reconnects with backoff; after a reconnect
    /// every cached list is dropped, since events may have been missed meanwhile.
    pub fn spawn_push_listener(
        self: &Arc<Self>,
        events_url: reqwest::Url,
    ) -> tokio::task::JoinHandle<()> {
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default();
            let retry = backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times();
            let mut backoff = retry.build();
            loop {
                if crate::client::loopback_only_http(&events_url, cache.dev_mode).is_err() {
                    tracing::warn!("status push URL refused; not subscribing");
                    return;
                }
                match client.get(events_url.clone()).send().await {
                    Ok(mut resp) if resp.status().is_success() => {
                        cache.invalidate_all();
                        backoff = retry.build();
                        let mut pending = String::new();
                        while let Ok(Some(chunk)) = resp.chunk().await {
                            pending.push_str(&String::from_utf8_lossy(&chunk));
                            if pending.len() > 64 * 1024 {
                                pending.clear();
                            }
                            while let Some(pos) = pending.find('\n') {
                                let line: String = pending.drain(..=pos).collect();
                                if let Some(data) = line.trim_end().strip_prefix("data:") {
                                    cache.handle_push(data.trim());
                                }
                            }
                        }
                    }
                    Ok(resp) => {
                        tracing::warn!(status = %resp.status(), "status push subscription refused")
                    }
                    Err(e) => tracing::debug!(error = %e.without_url(), "status push unavailable"),
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tokio::time::sleep(delay).await;
            }
        })
    }

    fn handle_push(&self, data: &str) {
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        match event.get("statusListCredential") {
            Some(Value::String(url)) => {
                tracing::info!("revocation pushed; dropping cached status list");
                self.invalidate(url);
            }
            // The publisher could not say which list changed (e.g. events were dropped).
            Some(_) => self.invalidate_all(),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitstring_round_trip_and_order() {
        let mut bits = Bitstring::new();
        assert_eq!(bits.as_bytes().len() * 8, LIST_BITS);
        assert!(bits.set(0, true));
        assert!(bits.set(42, true));
        assert!(!bits.set(LIST_BITS, true));
        assert_eq!(bits.as_bytes()[0], 0x80);
        let back = Bitstring::decode(&bits.encode().unwrap()).unwrap();
        assert_eq!(back.get(42), Some(true));
        assert_eq!(back.get(7), Some(false));
        assert_eq!(back.get(LIST_BITS), None);
    }

    #[test]
    fn malformed_and_huge_lists_are_refused() {
        assert!(Bitstring::decode("zabc").is_err());
        assert!(Bitstring::decode("u!!!").is_err());
        assert!(Bitstring::decode("uAAAA").is_err());
        // A gzip bomb: 32 MiB of zeros compresses to ~32 KiB.
        let big = Bitstring::from_bytes(vec![0; 32 * 1024 * 1024]);
        let enc = big.encode().unwrap();
        assert_eq!(
            Bitstring::decode(&enc).unwrap_err(),
            StatusError::Invalid("list too large".into())
        );
    }
}
