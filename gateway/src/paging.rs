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
//! What a cursor names is kept in the gateway's database (this module's two trees), not in
//! the process: every replica of the gateway sharing that database honours a cursor
//! another replica issued, and a restart keeps it. The database holds the SHA-256 of each
//! cursor, never the cursor itself. At most [`MAX_CURSORS`] are held (the one expiring
//! soonest goes first); expired ones are purged as new ones are issued and by
//! [`Pages::purge_expired`], which the gateway runs every minute. A forged, expired or
//! unknown cursor gets the same 404; a proof by another requester a 403; no proof a 401.
//! Expiry is wall-clock time, as every replica reads it: replicas' clocks must agree to
//! within seconds (NTP), which cursors lasting minutes tolerate.

use std::ops::ControlFlow;
use std::time::Duration;

use chrono::Utc;
use federation::did::{did_of, DidResolver, Relationship};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use storage::{StoreError, WriteTx};

use crate::db::{Db, Tree};
use crate::ledger::Ledger;
use crate::policy::Decision;

/// How long a cursor lasts, at most.
pub const CURSOR_TTL: Duration = Duration::from_secs(600);
/// How old a page proof may be (and how far ahead of this clock), in seconds.
pub const PROOF_WINDOW_SECS: i64 = 120;
/// Cursors held at once; the one expiring soonest goes first.
pub const MAX_CURSORS: usize = 10_000;
/// The `typ` of a page proof.
pub const PROOF_TYP: &str = "fedgate-page+jwt";
/// The header carrying it.
pub const PROOF_HEADER: &str = "fedgate-page-proof";

/// The trees this module owns: each grant by the SHA-256 of its cursor, and an index of
/// the grants by expiry (`expires_ms` big-endian, then the cursor's digest; empty values),
/// so that purging and making room read only what they remove.
const GRANTS: &str = "page_grants";
const BY_EXPIRY: &str = "page_grants_by_expiry";
/// Expired grants removed by one write at most: a purge after a long quiet spell does not
/// hold the database's one writer for long; the rest go at the next write.
const PURGE_BATCH: usize = 1_000;

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
    /// The cursors' storage failed: nothing is known about the cursor either way.
    #[error("paged answers are unavailable: {0}")]
    Storage(String),
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        PageError::Storage(e.to_string())
    }
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
    /// Milliseconds since the Unix epoch.
    expires_ms: u64,
}

/// A grant as the database holds it. The decision is kept as JSON without its policy
/// digest, which is kept beside it: `Decision` reads no digest (only the engine sets
/// one, never a policy's output), and the pages of a decision are recorded with it.
#[derive(Serialize, Deserialize)]
struct Stored {
    ledger: Ledger,
    decision: Value,
    policy_digest: String,
    patient_id: String,
    holder: String,
    domain: String,
    pages: u32,
    expires_ms: u64,
}

impl Grant {
    fn to_bytes(&self) -> Result<Vec<u8>, PageError> {
        let encode = |e: serde_json::Error| PageError::Storage(e.to_string());
        let mut decision = serde_json::to_value(&self.decision).map_err(encode)?;
        if let Value::Object(fields) = &mut decision {
            fields.remove("policy_digest");
        }
        serde_json::to_vec(&Stored {
            ledger: self.ledger.clone(),
            decision,
            policy_digest: self.decision.policy_digest.clone(),
            patient_id: self.patient_id.clone(),
            holder: self.holder.clone(),
            domain: self.domain.clone(),
            pages: self.pages,
            expires_ms: self.expires_ms,
        })
        .map_err(encode)
    }

    /// `None` for an entry that does not read as a grant (written by another version):
    /// its cursor is unknown, and the requester asks again with a new presentation.
    fn from_bytes(bytes: &[u8]) -> Option<Grant> {
        let stored: Stored = serde_json::from_slice(bytes).ok()?;
        let mut decision: Decision = serde_json::from_value(stored.decision).ok()?;
        decision.policy_digest = stored.policy_digest;
        Some(Grant {
            ledger: stored.ledger,
            decision,
            patient_id: stored.patient_id,
            holder: stored.holder,
            domain: stored.domain,
            pages: stored.pages,
            expires_ms: stored.expires_ms,
        })
    }
}

/// The cursors of this gateway, in its database: shared by every replica of it.
#[derive(Clone)]
pub struct Pages {
    db: Db,
    grants: Tree,
    by_expiry: Tree,
}

impl Pages {
    /// The cursors kept in the gateway's database.
    pub fn open(db: &Db) -> Pages {
        Pages {
            db: db.clone(),
            grants: db.tree(GRANTS),
            by_expiry: db.tree(BY_EXPIRY),
        }
    }

    /// Remembers a paged decision and returns its cursor, once the grant is on disk.
    pub async fn issue(
        &self,
        ledger: &Ledger,
        decision: &Decision,
        patient_id: &str,
        holder: &str,
        pages: u32,
    ) -> Result<String, PageError> {
        let mut ttl = CURSOR_TTL;
        if let Some(expiry) = decision
            .expires_at
            .as_deref()
            .and_then(federation::time::parse)
        {
            let left = (expiry - Utc::now()).to_std().unwrap_or_default();
            ttl = ttl.min(left);
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let cursor = federation::client::random_token();
        let grant = Grant {
            ledger: ledger.clone(),
            decision: decision.clone(),
            patient_id: patient_id.to_string(),
            holder: holder.to_string(),
            domain: ledger.domain.clone(),
            pages,
            expires_ms: now_ms().saturating_add(ttl_ms),
        };
        let (bytes, digest, expires_ms) = (grant.to_bytes()?, digest(&cursor), grant.expires_ms);
        let pages = self.clone();
        self.db
            .write(move |tx| {
                pages.purge(tx, now_ms())?;
                // Room for one more: the grant expiring soonest goes (as many as needed if
                // the limit was ever lower than what is held).
                while tx.len(&pages.grants)? >= MAX_CURSORS as u64 {
                    let mut soonest = None;
                    tx.scan(&pages.by_expiry, .., |k, _| {
                        soonest = Some(k.to_vec());
                        ControlFlow::Break(())
                    })?;
                    let Some(key) = soonest else { break };
                    pages.remove(tx, &key)?;
                }
                tx.insert(&pages.grants, &digest, &bytes)?;
                tx.insert(&pages.by_expiry, &expiry_key(expires_ms, &digest), &[])?;
                Ok::<(), PageError>(())
            })
            .await?;
        Ok(cursor)
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
        let grant = self
            .grants
            .get(&digest(cursor))?
            .as_deref()
            .and_then(Grant::from_bytes)
            .filter(|g| g.expires_ms > now_ms())
            .ok_or(PageError::UnknownCursor)?;
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

    /// Removes expired grants (up to a bounded number per call); returns how many. Every
    /// replica may run it: the removals are idempotent.
    pub async fn purge_expired(&self) -> Result<usize, PageError> {
        let pages = self.clone();
        self.db
            .write(move |tx| pages.purge(tx, now_ms()).map_err(PageError::from))
            .await
    }

    /// Cursors held, live or not yet purged.
    pub fn len(&self) -> Result<u64, PageError> {
        Ok(self.grants.len()?)
    }

    pub fn is_empty(&self) -> Result<bool, PageError> {
        Ok(self.len()? == 0)
    }

    /// Removes, inside the caller's write, grants that expired by `now` (at most
    /// [`PURGE_BATCH`]).
    fn purge(&self, tx: &mut WriteTx<'_>, now: u64) -> Result<usize, StoreError> {
        let end = now.saturating_add(1).to_be_bytes();
        let mut expired = Vec::new();
        tx.scan(&self.by_expiry, ..&end[..], |k, _| {
            expired.push(k.to_vec());
            if expired.len() >= PURGE_BATCH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        for key in &expired {
            self.remove(tx, key)?;
        }
        Ok(expired.len())
    }

    /// Removes the grant of an index key, and the key.
    fn remove(&self, tx: &mut WriteTx<'_>, expiry_key: &[u8]) -> Result<(), StoreError> {
        tx.remove(&self.by_expiry, expiry_key)?;
        if let Some(digest) = expiry_key.get(8..) {
            tx.remove(&self.grants, digest)?;
        }
        Ok(())
    }
}

/// The key of a cursor's grant: its SHA-256, so that what the database holds cannot be
/// used as a cursor (a copy of the database, a backup).
fn digest(cursor: &str) -> [u8; 32] {
    Sha256::digest(cursor.as_bytes()).into()
}

fn expiry_key(expires_ms: u64, digest: &[u8; 32]) -> Vec<u8> {
    [&expires_ms.to_be_bytes()[..], &digest[..]].concat()
}

/// Wall-clock milliseconds: every replica reads the same expiry from the same grant.
fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
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
    use federation::keys::{KeyAlgorithm, KeyPair};

    use super::*;

    fn decision(expires_at: Option<String>) -> Decision {
        let mut d = Decision::deny("x");
        d.allow = true;
        d.expires_at = expires_at;
        d
    }

    #[tokio::test]
    async fn a_cursor_past_its_grant_is_unknown_and_the_oldest_make_room() {
        let pages = Pages::open(&crate::db::temporary().unwrap());
        let ledger = Ledger::new("clinical", "ETREAT", &[]);
        let resolver = DidResolver::new(true);
        // A break-glass grant that already ended: its cursor is dead on arrival.
        let past = federation::time::rfc3339(Utc::now() - chrono::Duration::minutes(1));
        let dead = pages
            .issue(&ledger, &decision(Some(past)), "p1", "did:key:z", 3)
            .await
            .unwrap();
        let live = pages
            .issue(&ledger, &decision(None), "p1", "did:key:z", 3)
            .await
            .unwrap();
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
        // The dead grant is purged (the live one was issued after it expired, and its
        // write purged it already); the database never holds a cursor itself.
        assert_eq!(pages.purge_expired().await.unwrap(), 0);
        assert_eq!(pages.len().unwrap(), 1);
        let mut held = Vec::new();
        pages
            .grants
            .scan(.., |k, v| {
                held.push((k.to_vec(), v.to_vec()));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(held[0].0, digest(&live));
        let text = String::from_utf8_lossy(&held[0].1);
        assert!(!text.contains(&live) && !text.contains(&dead));
    }

    /// Two replicas of one gateway share its database: a cursor issued by one is honoured
    /// by the other, for its requester only, with the decision as it was made (policy
    /// digest included), and expires for both at once.
    #[tokio::test]
    async fn a_cursor_issued_by_one_replica_is_honoured_by_another() {
        let db = crate::db::temporary().unwrap();
        let (a, b) = (Pages::open(&db), Pages::open(&db));
        let resolver = DidResolver::new(true);
        let holder = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let stranger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let gateway = "did:web:hospital-a.test";
        let mut ledger = Ledger::new("clinical", "TREAT", &["labs".to_string()]);
        ledger.patient_ref = Some("Patient/p1".into());
        let mut made = decision(None);
        made.policy_digest = "sha256:abc".into();
        made.obligations.max_records = Some(5);

        let cursor = a
            .issue(&ledger, &made, "p1", holder.did(), 3)
            .await
            .unwrap();
        let proof = sign_proof(&holder, gateway, &cursor, 2).unwrap();
        let grant = b
            .redeem(&resolver, gateway, &cursor, 2, Some(&proof))
            .await
            .unwrap();
        assert_eq!(grant.decision, made);
        assert_eq!(grant.decision.policy_digest, "sha256:abc");
        assert_eq!(
            (grant.patient_id.as_str(), grant.holder.as_str()),
            ("p1", holder.did())
        );
        assert_eq!((grant.domain.as_str(), grant.pages), ("clinical", 3));
        assert_eq!(grant.ledger.decision_id, ledger.decision_id);
        assert_eq!(grant.ledger.patient_ref, ledger.patient_ref);
        assert_eq!(grant.ledger.data_classes, ledger.data_classes);
        // Not single-use: the same page again, at the replica that issued it.
        assert!(a
            .redeem(&resolver, gateway, &cursor, 2, Some(&proof))
            .await
            .is_ok());
        // Another requester's proof, or a page past the last, is refused at either.
        let theirs = sign_proof(&stranger, gateway, &cursor, 2).unwrap();
        assert_eq!(
            b.redeem(&resolver, gateway, &cursor, 2, Some(&theirs))
                .await
                .err(),
            Some(PageError::WrongRequester)
        );
        let beyond = sign_proof(&holder, gateway, &cursor, 4).unwrap();
        assert_eq!(
            b.redeem(&resolver, gateway, &cursor, 4, Some(&beyond))
                .await
                .err(),
            Some(PageError::NoSuchPage(4))
        );

        // A break-glass grant ending in a moment: dead at both replicas once it has, and
        // purged by either.
        // (Expiry times are whole seconds: this one is one to two seconds away.)
        let soon = federation::time::rfc3339(Utc::now() + chrono::Duration::seconds(2));
        let short = b
            .issue(&ledger, &decision(Some(soon)), "p1", holder.did(), 2)
            .await
            .unwrap();
        let proof = sign_proof(&holder, gateway, &short, 2).unwrap();
        assert!(a
            .redeem(&resolver, gateway, &short, 2, Some(&proof))
            .await
            .is_ok());
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        for pages in [&a, &b] {
            assert_eq!(
                pages
                    .redeem(&resolver, gateway, &short, 2, Some(&proof))
                    .await
                    .err(),
                Some(PageError::UnknownCursor)
            );
        }
        assert_eq!(a.purge_expired().await.unwrap(), 1);
        assert_eq!(b.purge_expired().await.unwrap(), 0);
        assert_eq!(b.len().unwrap(), 1);
    }
}
