//! Answers larger than the decision's `max_records` come in pages, never cut short.
//!
//! The first answer carries page 1 and a `next` link holding a cursor: 256 random bits
//! naming what this gateway remembers of the decision (its grant and obligations, the
//! patient, the requester). A later page is fetched without a new presentation, until
//! the cursor expires (ten minutes, or the break-glass expiry if sooner), by the same
//! requester only: the request carries a `fedgate-page-proof` header, a compact JWS
//! (`typ` `fedgate-page+jwt`) signed with a key of the requester's DID (authentication)
//! over `{"aud": <gateway DID>, "cursor", "page", "iat"}`, issued within the last two
//! minutes. Every page is recorded as its own access event of the same decision before it
//! is sent.
//!
//! Cursors live in this process's memory: a restart, or another replica behind a load
//! balancer, answers "unknown or expired", and the requester asks again with a new
//! presentation. A forged, expired or unknown cursor gets the same 404; a proof by another
//! requester a 403; no proof a 401.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use federation::did::{did_of, DidResolver, Relationship};
use serde::Deserialize;

use crate::ledger::Ledger;
use crate::policy::Decision;

/// How long a cursor lasts, at most.
pub const CURSOR_TTL: Duration = Duration::from_secs(600);
/// How old a page proof may be (and how far ahead of this clock), in seconds.
pub const PROOF_WINDOW_SECS: i64 = 120;
/// Cursors held at once; the oldest goes first.
pub const MAX_CURSORS: usize = 10_000;
/// The `typ` of a page proof.
pub const PROOF_TYP: &str = "fedgate-page+jwt";
/// The header carrying it.
pub const PROOF_HEADER: &str = "fedgate-page-proof";

/// Why a page was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("a page request needs a fedgate-page-proof header signed by the requester")]
    MissingProof,
    #[error("the page proof is not valid: {0}")]
    BadProof(String),
    #[error("unknown or expired cursor")]
    UnknownCursor,
    #[error("the cursor was issued to another requester")]
    WrongRequester,
    #[error("page {0} is beyond the last page")]
    NoSuchPage(u32),
}

/// What is remembered of a paged decision.
#[derive(Clone)]
pub struct Grant {
    pub ledger: Ledger,
    pub decision: Decision,
    pub patient_id: String,
    /// DID of the requester (the presentation's holder).
    pub holder: String,
    pub domain: String,
    pub pages: u32,
    expires: Instant,
}

/// The cursors of this process.
#[derive(Default)]
pub struct Pages {
    grants: Mutex<HashMap<String, Grant>>,
}

impl Pages {
    /// Remembers a paged decision and returns its cursor.
    pub fn issue(
        &self,
        ledger: &Ledger,
        decision: &Decision,
        patient_id: &str,
        holder: &str,
        pages: u32,
    ) -> String {
        let mut ttl = CURSOR_TTL;
        if let Some(expiry) = decision
            .expires_at
            .as_deref()
            .and_then(federation::time::parse)
        {
            let left = (expiry - Utc::now()).to_std().unwrap_or_default();
            ttl = ttl.min(left);
        }
        let cursor = federation::client::random_token();
        let grant = Grant {
            ledger: ledger.clone(),
            decision: decision.clone(),
            patient_id: patient_id.to_string(),
            holder: holder.to_string(),
            domain: ledger.domain.clone(),
            pages,
            expires: Instant::now() + ttl,
        };
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        grants.retain(|_, g| g.expires > now);
        if grants.len() >= MAX_CURSORS {
            if let Some(oldest) = grants
                .iter()
                .min_by_key(|(_, g)| g.expires)
                .map(|(c, _)| c.clone())
            {
                grants.remove(&oldest);
            }
        }
        grants.insert(cursor.clone(), grant);
        cursor
    }

    /// The grant of `cursor` for page `page`, when it is live and `proof` is the
    /// requester's (a key of theirs that `resolver` finds), for `gateway`, this cursor and
    /// this page.
    pub async fn redeem(
        &self,
        resolver: &DidResolver,
        gateway: &str,
        cursor: &str,
        page: u32,
        proof: Option<&str>,
    ) -> Result<Grant, PageError> {
        let grant = {
            let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
            grants
                .get(cursor)
                .filter(|g| g.expires > Instant::now())
                .cloned()
                .ok_or(PageError::UnknownCursor)?
        };
        let proof = proof.ok_or(PageError::MissingProof)?;
        let signer = check_proof(resolver, gateway, proof, cursor, page).await?;
        if signer != grant.holder {
            return Err(PageError::WrongRequester);
        }
        if page < 2 || page > grant.pages {
            return Err(PageError::NoSuchPage(page));
        }
        Ok(grant)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofClaims {
    aud: String,
    cursor: String,
    page: u32,
    iat: i64,
}

/// Verifies a page proof and returns the DID that signed it.
async fn check_proof(
    resolver: &DidResolver,
    gateway: &str,
    proof: &str,
    cursor: &str,
    page: u32,
) -> Result<String, PageError> {
    let bad = |m: &str| PageError::BadProof(m.to_string());
    let jws = federation::jose::decode_with_limit(proof, 4096)
        .map_err(|e| PageError::BadProof(e.to_string()))?;
    if jws.typ.as_deref() != Some(PROOF_TYP) {
        return Err(bad("typ must be fedgate-page+jwt"));
    }
    let claims: ProofClaims = serde_json::from_value(jws.payload.clone())
        .map_err(|_| bad("claims must be exactly aud, cursor, page and iat"))?;
    if claims.aud != gateway {
        return Err(bad("aud is not this gateway"));
    }
    if claims.cursor != cursor || claims.page != page {
        return Err(bad("it was made for another cursor or page"));
    }
    if (Utc::now().timestamp() - claims.iat).abs() > PROOF_WINDOW_SECS {
        return Err(bad("iat is not within two minutes of now"));
    }
    let kid = jws.kid.as_str();
    let (key, _) = resolver
        .public_key(kid, Relationship::Authentication)
        .await
        .map_err(|e| PageError::BadProof(e.to_string()))?;
    jws.verify(&key)
        .map_err(|e| PageError::BadProof(e.to_string()))?;
    Ok(did_of(kid).to_string())
}

/// A page proof for `cursor`'s `page` at `gateway`, signed by `key` (the requester's).
pub fn sign_proof(
    key: &federation::keys::KeyPair,
    gateway: &str,
    cursor: &str,
    page: u32,
) -> Result<String, federation::jose::JoseError> {
    federation::jose::sign(
        &serde_json::json!({
            "aud": gateway,
            "cursor": cursor,
            "page": page,
            "iat": Utc::now().timestamp(),
        }),
        key,
        PROOF_TYP,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(expires_at: Option<String>) -> Decision {
        let mut d = Decision::deny("x");
        d.allow = true;
        d.expires_at = expires_at;
        d
    }

    #[tokio::test]
    async fn a_cursor_past_its_grant_is_unknown_and_the_oldest_make_room() {
        let pages = Pages::default();
        let ledger = Ledger::new("clinical", "ETREAT", &[]);
        let resolver = DidResolver::new(true);
        // A break-glass grant that already ended: its cursor is dead on arrival.
        let past = federation::time::rfc3339(Utc::now() - chrono::Duration::minutes(1));
        let dead = pages.issue(&ledger, &decision(Some(past)), "p1", "did:key:z", 3);
        let live = pages.issue(&ledger, &decision(None), "p1", "did:key:z", 3);
        assert_eq!(
            pages
                .redeem(&resolver, "did:web:g", &dead, 2, Some("x"))
                .await
                .err(),
            Some(PageError::UnknownCursor)
        );
        // A live cursor without a proof, or with a malformed one, is refused as such.
        assert_eq!(
            pages
                .redeem(&resolver, "did:web:g", &live, 2, None)
                .await
                .err(),
            Some(PageError::MissingProof)
        );
        assert!(matches!(
            pages
                .redeem(&resolver, "did:web:g", &live, 2, Some("a.b.c"))
                .await,
            Err(PageError::BadProof(_))
        ));
        assert_eq!(
            pages
                .redeem(&resolver, "did:web:g", "forged", 2, Some("x"))
                .await
                .err(),
            Some(PageError::UnknownCursor)
        );
        assert_ne!(dead, live);
        assert!(live.len() >= 43, "256 random bits");
    }
}
