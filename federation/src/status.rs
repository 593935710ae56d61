//! W3C Bitstring Status Lists and IETF Token Status Lists: the issuer's lists and the
//! verifier's cache of lists.
//!
//! An office keeps one set of revocation bits and publishes it in two forms at one URL:
//! a Bitstring Status List credential (`vc+jwt`, for Data Integrity and VC-JOSE
//! credentials) and, to a client that asks for `application/statuslist+jwt`, a Token Status
//! List (draft-ietf-oauth-status-list, for SD-JWT VCs). The same index names the same
//! credential in both. The two differ in bit order: the Bitstring list counts from the
//! most significant bit of each byte, the Token Status List from the least significant.
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

/// The JWS `typ` of a Token Status List.
pub const TOKEN_LIST_TYP: &str = "statuslist+jwt";
/// The media type a Token Status List is served and asked for with.
pub const TOKEN_LIST_MEDIA_TYPE: &str = "application/statuslist+jwt";

impl Bitstring {
    /// The Token Status List `lst` of these bits (one bit per entry): the bits of entry `i`
    /// are bit `i % 8` of byte `i / 8` counted from the least significant bit, the reverse
    /// of this list's order; then DEFLATE in the ZLIB format, then base64url.
    pub fn encode_token_list(&self) -> Result<String, StatusError> {
        use std::io::Write;
        let lsb_first: Vec<u8> = self.0.iter().map(|b| b.reverse_bits()).collect();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&lsb_first)
            .and_then(|_| z.finish())
            .map(|bytes| crate::b64::encode(&bytes))
            .map_err(|e| StatusError::Invalid(e.to_string()))
    }

    /// Decodes a Token Status List `lst` of 1-bit entries into a bitstring (in this type's
    /// order), refusing anything that inflates beyond 16 MiB.
    pub fn decode_token_list(lst: &str) -> Result<Self, StatusError> {
        let z = crate::b64::decode(lst)
            .map_err(|_| StatusError::Invalid("lst is not base64url".into()))?;
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(z.as_slice())
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|_| StatusError::Invalid("lst is not zlib".into()))?;
        if out.len() as u64 > MAX_DECODED_BYTES {
            return Err(StatusError::Invalid("list too large".into()));
        }
        Ok(Bitstring(out.into_iter().map(u8::reverse_bits).collect()))
    }
}

/// The signed Token Status List (`statuslist+jwt`) of `bits`, published at `uri`, valid
/// (`exp`) and to be cached (`ttl`) for `valid_for`.
pub fn sign_token_list(
    key: &crate::keys::KeyPair,
    uri: &str,
    bits: &Bitstring,
    valid_for: chrono::Duration,
) -> Result<String, StatusError> {
    let now = Utc::now();
    let payload = json!({
        "iss": key.did(),
        "sub": uri,
        "iat": now.timestamp(),
        "exp": (now + valid_for).timestamp(),
        "ttl": valid_for.num_seconds(),
        "status_list": { "bits": 1, "lst": bits.encode_token_list()? },
    });
    crate::jose::sign(&payload, key, TOKEN_LIST_TYP)
        .map_err(|e| StatusError::Invalid(e.to_string()))
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
    /// Token Status Lists, by URI (which may be a Bitstring list's URL too).
    token_lists: Mutex<HashMap<String, CachedList>>,
}

impl StatusCache {
    pub fn new(resolver: Arc<DidResolver>, ttl: Duration, dev_mode: bool) -> Self {
        StatusCache {
            resolver,
            client: crate::client::http_client(),
            ttl,
            dev_mode,
            lists: Mutex::new(HashMap::new()),
            token_lists: Mutex::new(HashMap::new()),
        }
    }

    /// Drops a cached list, so the next check fetches it again.
    pub fn invalidate(&self, url: &str) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.remove(url);
        }
        if let Ok(mut lists) = self.token_lists.lock() {
            lists.remove(url);
        }
    }

    fn invalidate_all(&self) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.clear();
        }
        if let Ok(mut lists) = self.token_lists.lock() {
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
        let text = self.fetch_text(url, issuer, "application/vc+jwt").await?;
        self.verify_list(text.trim(), url).await
    }

    /// Fetches a status list's body: only from the issuer's registered origin, plain HTTP
    /// only to loopback in dev mode, at most `MAX_JWS_BYTES`.
    async fn fetch_text(
        &self,
        url: &str,
        issuer: &str,
        accept: &str,
    ) -> Result<String, StatusError> {
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
            .header(reqwest::header::ACCEPT, accept)
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
        String::from_utf8(body).map_err(|_| StatusError::Invalid("status list is not UTF-8".into()))
    }

    /// Checks the Token Status List entry `idx` of `uri` for a credential of `issuer` (an
    /// SD-JWT VC's `status.status_list`); any doubt is an error (fail closed). The list is
    /// fetched with the rule the Bitstring lists follow (the issuer's registered origin),
    /// must be signed by the issuer, name `uri` as its `sub` and hold 1-bit entries.
    pub(crate) async fn check_token(
        &self,
        uri: &str,
        idx: u64,
        issuer: &str,
    ) -> Result<(), StatusError> {
        let cached = self.token_lists.lock().ok().and_then(|lists| {
            lists
                .get(uri)
                .filter(|l| l.fetched.elapsed() < self.ttl)
                .map(|l| (l.bits.clone(), l.issuer.clone(), l.valid_until))
        });
        let (bits, list_issuer, valid_until) = match cached {
            Some(c) => c,
            None => {
                let text = self.fetch_text(uri, issuer, TOKEN_LIST_MEDIA_TYPE).await?;
                let fetched = self.verify_token_list(text.trim(), uri).await?;
                let out = (
                    fetched.bits.clone(),
                    fetched.issuer.clone(),
                    fetched.valid_until,
                );
                if let Ok(mut lists) = self.token_lists.lock() {
                    lists.insert(uri.to_string(), fetched);
                }
                out
            }
        };
        if list_issuer != issuer {
            return Err(StatusError::Invalid(
                "the list is signed by another issuer than the credential".into(),
            ));
        }
        if valid_until.is_some_and(|t| t < Utc::now()) {
            return Err(StatusError::Unavailable(
                "the status list has expired".into(),
            ));
        }
        let index = usize::try_from(idx)
            .map_err(|_| StatusError::Invalid("index beyond the list".into()))?;
        match bits.get(index) {
            Some(false) => Ok(()),
            Some(true) => Err(StatusError::Revoked),
            None => Err(StatusError::Invalid("index beyond the list".into())),
        }
    }

    async fn verify_token_list(&self, jws: &str, uri: &str) -> Result<CachedList, StatusError> {
        let invalid = |e: String| StatusError::Invalid(e);
        let decoded = crate::jose::decode(jws).map_err(|e| match e {
            crate::jose::JoseError::Json { source, .. } => StatusError::NotStrictJson(source),
            other => invalid(other.to_string()),
        })?;
        if decoded.typ.as_deref() != Some(TOKEN_LIST_TYP) {
            return Err(invalid("typ is not statuslist+jwt".into()));
        }
        let list = &decoded.payload;
        let issuer = did_of(&decoded.kid).to_string();
        if list
            .get("iss")
            .is_some_and(|i| i.as_str() != Some(issuer.as_str()))
        {
            return Err(invalid(
                "list signed by a key of another DID than its iss".into(),
            ));
        }
        let (key, _) = self
            .resolver
            .public_key(&decoded.kid, Relationship::AssertionMethod)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        decoded.verify(&key).map_err(|e| invalid(e.to_string()))?;
        if list.get("sub").and_then(Value::as_str) != Some(uri) {
            return Err(invalid("not the status list at this URI (sub)".into()));
        }
        let status_list = list
            .get("status_list")
            .ok_or_else(|| invalid("no status_list".into()))?;
        if status_list.get("bits").and_then(Value::as_u64) != Some(1) {
            return Err(invalid("only 1-bit status lists are read".into()));
        }
        let lst = status_list
            .get("lst")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("status_list has no lst".into()))?;
        let valid_until = match list.get("exp") {
            None => None,
            Some(v) => Some(
                v.as_i64()
                    .and_then(|s| DateTime::from_timestamp(s, 0))
                    .ok_or_else(|| invalid("exp is not a NumericDate".into()))?,
            ),
        };
        Ok(CachedList {
            fetched: Instant::now(),
            bits: Arc::new(Bitstring::decode_token_list(lst)?),
            issuer,
            purpose: "revocation".into(),
            valid_until,
        })
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
    fn token_status_list_counts_bits_from_the_least_significant() {
        let mut bits = Bitstring::new();
        assert!(bits.set(0, true));
        assert!(bits.set(9, true));
        assert!(bits.set(42, true));
        let lst = bits.encode_token_list().unwrap();
        // Inflate by hand: the spec's byte layout, not this type's.
        let z = crate::b64::decode(&lst).unwrap();
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(z.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), LIST_BITS / 8);
        // Index 0 is bit 0 (0x01) of byte 0; index 9 is bit 1 (0x02) of byte 1; index 42
        // is bit 2 (0x04) of byte 5. The Bitstring list has 0x80, 0x40 and 0x20 there.
        assert_eq!(raw[0], 0x01);
        assert_eq!(raw[1], 0x02);
        assert_eq!(raw[5], 0x04);
        assert_eq!(bits.as_bytes()[0], 0x80);
        assert_eq!(bits.as_bytes()[1], 0x40);
        assert_eq!(bits.as_bytes()[5], 0x20);
        // The spec's own example (draft-ietf-oauth-status-list §4.1): statuses
        // 1 0 0 1 1 1 0 1 | 1 1 0 0 0 1 0 1 are bytes 0xB9 0xA3.
        let spec = {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut z, &[0xB9, 0xA3]).unwrap();
            crate::b64::encode(&z.finish().unwrap())
        };
        let back = Bitstring::decode_token_list(&spec).unwrap();
        let statuses: Vec<bool> = (0..16).map(|i| back.get(i).unwrap()).collect();
        let expected = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1].map(|b| b == 1);
        assert_eq!(statuses, expected);
        // And a round trip.
        let again = Bitstring::decode_token_list(&lst).unwrap();
        assert_eq!(again, bits);
        assert!(Bitstring::decode_token_list("!!").is_err());
        assert!(Bitstring::decode_token_list("AAAA").is_err());
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
