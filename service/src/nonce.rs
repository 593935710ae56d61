//! Single-use challenges for presentations, for every verifier (gateway, issuer).
//!
//! A challenge is random, lives for a short time, and is accepted once: of two requests
//! replaying one presentation, exactly one can ever succeed.
//!
//! Why a challenge carries its own expiry under a MAC instead of being stored when issued:
//! issuing one then writes nothing. Stored, every challenge cost a durable write (an fsync
//! shared with whatever else was committing) before the holder even had it, a third of an
//! exchange's durable writes. What must be durable is only that a challenge was *used*:
//! consuming one records it, in one write transaction that first checks it is not there
//! (writes are serialized, also across replicas on PostgreSQL), so a replay is refused
//! after a restart as before. An unissued or altered challenge fails its MAC; an expired
//! one is refused by the expiry it carries. Replicas of one gateway share the key (derived
//! from the gateway's secret), so a challenge from one is answered at another.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Random bytes of a challenge: also its key in the used set.
const ID_LEN: usize = 16;
/// Bytes of the expiry (milliseconds since the epoch, big-endian).
const EXPIRY_LEN: usize = 8;
/// Bytes of the MAC kept (HMAC-SHA-256 truncated to 128 bits).
const TAG_LEN: usize = 16;
const LEN: usize = ID_LEN + EXPIRY_LEN + TAG_LEN;
/// Separates this MAC from any other made with a key derived alike.
const CONTEXT: &[u8] = b"fedgate challenge v1";
/// How long a used challenge is remembered past its expiry, so that a wall clock set back
/// by up to this much cannot make a purged, used challenge acceptable again.
const GRACE_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("unknown or already used challenge")]
    Unknown,
    #[error("the challenge has expired")]
    Expired,
    #[error("storage: {0}")]
    Storage(String),
}

#[derive(Clone)]
pub struct Nonces {
    /// Used challenges (by their random bytes), each with its expiry.
    tree: storage::Tree,
    ttl: Duration,
    key: Arc<Zeroizing<[u8; 32]>>,
    /// [`GRACE_MS`], shorter in tests.
    grace_ms: i64,
}

impl Nonces {
    /// `key` makes and checks the challenges' MACs: every process that must accept
    /// another's challenges holds the same one, and it never leaves them.
    pub fn new(tree: storage::Tree, ttl: Duration, key: [u8; 32]) -> Self {
        Nonces {
            tree,
            ttl,
            key: Arc::new(Zeroizing::new(key)),
            grace_ms: GRACE_MS,
        }
    }

    /// A fresh key, for a service whose challenges are answered only where they were
    /// issued: a restart makes the outstanding ones unknown, which a holder answers by
    /// asking again.
    pub fn random_key() -> [u8; 32] {
        use rand::RngCore as _;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    }

    fn mac(&self) -> Hmac<Sha256> {
        // A 32-byte key is zero-padded to the block size by HMAC itself; padding it here
        // makes the constructor infallible.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(self.key.as_slice());
        let mut mac = <Hmac<Sha256> as Mac>::new(&(*block).into());
        mac.update(CONTEXT);
        mac
    }

    /// Issues a fresh challenge and its expiry. Nothing is written.
    pub fn issue(&self) -> (String, DateTime<Utc>) {
        use rand::RngCore as _;
        let expires = Utc::now()
            + chrono::Duration::from_std(self.ttl)
                .unwrap_or_else(|_| chrono::Duration::seconds(120));
        let mut bytes = [0u8; LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes[..ID_LEN]);
        bytes[ID_LEN..ID_LEN + EXPIRY_LEN]
            .copy_from_slice(&expires.timestamp_millis().to_be_bytes());
        let mut mac = self.mac();
        mac.update(&bytes[..ID_LEN + EXPIRY_LEN]);
        let tag = mac.finalize().into_bytes();
        bytes[ID_LEN + EXPIRY_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        (federation::b64::encode(&bytes), expires)
    }

    /// The random bytes and expiry of a challenge this key made, or `Unknown`.
    fn open(&self, challenge: &str) -> Result<([u8; ID_LEN], i64), NonceError> {
        if challenge.len() > 2 * LEN {
            return Err(NonceError::Unknown);
        }
        let bytes = federation::b64::decode(challenge).map_err(|_| NonceError::Unknown)?;
        let bytes = <[u8; LEN]>::try_from(bytes.as_slice()).map_err(|_| NonceError::Unknown)?;
        let (signed, tag) = bytes.split_at(ID_LEN + EXPIRY_LEN);
        let mut mac = self.mac();
        mac.update(signed);
        // Constant time: the comparison tells nothing about how much of a guess was right.
        mac.verify_truncated_left(tag)
            .map_err(|_| NonceError::Unknown)?;
        let (id, expires) = signed.split_at(ID_LEN);
        let id = <[u8; ID_LEN]>::try_from(id).map_err(|_| NonceError::Unknown)?;
        let expires = <[u8; EXPIRY_LEN]>::try_from(expires)
            .map(i64::from_be_bytes)
            .map_err(|_| NonceError::Unknown)?;
        Ok((id, expires))
    }

    /// Whether `challenge` was issued here, has not expired and was not used (a cheap
    /// check before costly verification).
    pub fn is_outstanding(&self, challenge: &str) -> Result<bool, NonceError> {
        let Ok((id, expires)) = self.open(challenge) else {
            return Ok(false);
        };
        if expires < Utc::now().timestamp_millis() {
            return Ok(false);
        }
        self.tree
            .contains_key(&id)
            .map(|used| !used)
            .map_err(|e| NonceError::Storage(e.to_string()))
    }

    /// Checks a challenge without using it up: issued here, not expired, not used yet (a
    /// read, no write). What it returns records the use in a write of the caller's own
    /// ([`Unspent::spend`]): a request that ends in one durable write anyway (the
    /// gateway's exchange, whose access event is written before it answers) records the
    /// use in that same transaction instead of paying for a second one.
    pub fn check(&self, challenge: &str) -> Result<Unspent, NonceError> {
        let (id, expires) = self.open(challenge)?;
        if expires < Utc::now().timestamp_millis() {
            return Err(NonceError::Expired);
        }
        let unspent = Unspent {
            tree: self.tree.clone(),
            id,
            expires,
        };
        if unspent.is_spent()? {
            return Err(NonceError::Unknown);
        }
        Ok(unspent)
    }

    /// Consumes a challenge: succeeds once, and only before it expires. That it was used
    /// is on disk before this returns, so a restart cannot make it acceptable again.
    pub async fn consume(&self, challenge: &str) -> Result<(), NonceError> {
        let (id, expires) = self.open(challenge)?;
        if expires < Utc::now().timestamp_millis() {
            return Err(NonceError::Expired);
        }
        Unspent {
            tree: self.tree.clone(),
            id,
            expires,
        }
        .spend_alone()
        .await
    }

    /// Forgets used challenges expired for longer than the grace period (run
    /// periodically); returns how many.
    pub async fn purge_expired(&self) -> Result<usize, NonceError> {
        let now = Utc::now().timestamp_millis().saturating_sub(self.grace_ms);
        let tree = self.tree.clone();
        self.tree
            .db()
            .write(move |tx| {
                let mut expired = Vec::new();
                tx.scan(&tree, .., |key, value| {
                    let gone = <[u8; 8]>::try_from(value)
                        .map(i64::from_be_bytes)
                        .map(|e| e < now)
                        .unwrap_or(true);
                    if gone {
                        expired.push(key.to_vec());
                    }
                    std::ops::ControlFlow::Continue(())
                })?;
                for key in &expired {
                    tx.remove(&tree, key)?;
                }
                Ok(expired.len())
            })
            .await
            .map_err(|e: storage::StoreError| NonceError::Storage(e.to_string()))
    }
}

/// A challenge found good and unused by [`Nonces::check`], not yet recorded as used.
///
/// Whoever holds one must spend it in the write that ends the request, or on its own
/// ([`Unspent::spend_alone`]) when the request ends without one. Of two requests holding
/// the same challenge, exactly one spend succeeds: a spend is a write that first checks
/// the challenge is not there, and writes run one at a time (across replicas too).
#[derive(Clone)]
pub struct Unspent {
    tree: storage::Tree,
    id: [u8; ID_LEN],
    expires: i64,
}

impl std::fmt::Debug for Unspent {
    /// Without the random bytes: with the MAC they would be the challenge itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unspent")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Unspent {
    /// Records the use in `tx`; false (and nothing written) when it was already used, in
    /// which case the caller's whole transaction should fail: the request was a replay.
    pub fn spend(&self, tx: &mut storage::WriteTx<'_>) -> Result<bool, storage::StoreError> {
        if tx.get(&self.tree, &self.id)?.is_some() {
            return Ok(false);
        }
        tx.insert(&self.tree, &self.id, &self.expires.to_be_bytes())?;
        Ok(true)
    }

    /// Spends it in a write of its own (on disk before this returns).
    pub async fn spend_alone(&self) -> Result<(), NonceError> {
        let this = self.clone();
        let fresh = self
            .tree
            .db()
            .write(move |tx| this.spend(tx))
            .await
            .map_err(|e: storage::StoreError| NonceError::Storage(e.to_string()))?;
        if fresh {
            Ok(())
        } else {
            Err(NonceError::Unknown)
        }
    }

    /// Whether its use is recorded (a read).
    pub fn is_spent(&self) -> Result<bool, NonceError> {
        self.tree
            .contains_key(&self.id)
            .map_err(|e| NonceError::Storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: storage::Schema = storage::Schema {
        name: "test",
        version: 1,
    };

    fn nonces(db: &storage::Db, tree: &str, ttl: Duration) -> Nonces {
        Nonces::new(db.tree(tree), ttl, [7u8; 32])
    }

    #[tokio::test]
    async fn a_challenge_is_used_once_and_expires() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        let (c, expires) = n.issue();
        assert!(c.len() >= 32);
        assert!(expires > Utc::now());
        assert_eq!(n.is_outstanding(&c), Ok(true));
        assert_eq!(n.consume(&c).await, Ok(()));
        assert_eq!(n.is_outstanding(&c), Ok(false));
        assert_eq!(n.consume(&c).await, Err(NonceError::Unknown));
        assert_eq!(n.consume("never-issued").await, Err(NonceError::Unknown));
        assert_eq!(n.consume("").await, Err(NonceError::Unknown));
        assert_eq!(n.is_outstanding("never-issued"), Ok(false));

        let short = nonces(&db, "s", Duration::from_millis(0));
        let (c, _) = short.issue();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(short.is_outstanding(&c), Ok(false));
        assert_eq!(short.consume(&c).await, Err(NonceError::Expired));
    }

    #[tokio::test]
    async fn issuing_writes_nothing_and_challenges_differ() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        let issued: std::collections::HashSet<String> = (0..100).map(|_| n.issue().0).collect();
        assert_eq!(issued.len(), 100);
        assert_eq!(db.tree("n").len().unwrap(), 0);
    }

    #[tokio::test]
    async fn an_altered_or_foreign_challenge_is_unknown() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        let (c, _) = n.issue();
        let bytes = federation::b64::decode(&c).unwrap();
        // Every byte flipped in turn: the random part, the expiry (pushed later), the MAC.
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let altered = federation::b64::encode(&altered);
            assert_eq!(n.is_outstanding(&altered), Ok(false), "byte {i}");
            assert_eq!(
                n.consume(&altered).await,
                Err(NonceError::Unknown),
                "byte {i}"
            );
        }
        // Shorter, longer, not base64url.
        assert_eq!(n.consume(&c[..c.len() - 2]).await, Err(NonceError::Unknown));
        assert_eq!(
            n.consume(&format!("{c}AAAA")).await,
            Err(NonceError::Unknown)
        );
        assert_eq!(
            n.consume(&c.replace(|_| true, "*")).await,
            Err(NonceError::Unknown)
        );
        assert_eq!(
            n.consume(&"A".repeat(100_000)).await,
            Err(NonceError::Unknown)
        );
        // Another key (another gateway) did not issue it.
        let other = Nonces::new(db.tree("n"), Duration::from_secs(60), [8u8; 32]);
        assert_eq!(other.consume(&c).await, Err(NonceError::Unknown));
        // The original still works once: the refusals above used nothing up.
        assert_eq!(n.consume(&c).await, Ok(()));
    }

    #[tokio::test]
    async fn a_used_challenge_stays_used_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = {
            let db = storage::Db::open(&path, SCHEMA).unwrap();
            let n = nonces(&db, "n", Duration::from_secs(60));
            let (c, _) = n.issue();
            assert_eq!(n.consume(&c).await, Ok(()));
            c
        };
        let db = storage::Db::open(&path, SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        assert_eq!(n.consume(&c).await, Err(NonceError::Unknown));
        // A replica holding the same key accepts what this one issued.
        let (fresh, _) = n.issue();
        let replica = nonces(&db, "n", Duration::from_secs(60));
        assert_eq!(replica.consume(&fresh).await, Ok(()));
        assert_eq!(n.consume(&fresh).await, Err(NonceError::Unknown));
    }

    #[tokio::test]
    async fn used_challenges_are_forgotten_only_past_their_grace() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let mut n = nonces(&db, "n", Duration::from_millis(30));
        let (c, _) = n.issue();
        assert_eq!(n.consume(&c).await, Ok(()));
        assert_eq!(n.purge_expired().await, Ok(0));
        tokio::time::sleep(Duration::from_millis(40)).await;
        // Expired, but within the grace: still remembered.
        assert_eq!(n.purge_expired().await, Ok(0));
        n.grace_ms = 0;
        assert_eq!(n.purge_expired().await, Ok(1));
        assert_eq!(db.tree("n").len().unwrap(), 0);
        // Expired and forgotten: refused by its expiry.
        assert_eq!(n.consume(&c).await, Err(NonceError::Expired));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_many_concurrent_consumes_exactly_one_succeeds() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        let (c, _) = n.issue();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (n, c) = (n.clone(), c.clone());
            tasks.push(tokio::spawn(async move { n.consume(&c).await }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap().is_ok());
        }
        assert_eq!(ok, 1);
    }

    #[derive(Debug)]
    enum TxError {
        Replay,
        Store,
    }

    impl From<storage::StoreError> for TxError {
        fn from(_: storage::StoreError) -> Self {
            TxError::Store
        }
    }

    /// A write of the caller's that spends the challenge beside an entry of its own, and
    /// fails whole on a replay.
    async fn write_spending(db: &storage::Db, u: &Unspent, key: &[u8]) -> Result<(), TxError> {
        let (u, other, key) = (u.clone(), db.tree("other"), key.to_vec());
        db.write(move |tx| {
            tx.insert(&other, &key, b"event")?;
            if !u.spend(tx)? {
                return Err(TxError::Replay);
            }
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_checked_challenge_is_spent_in_the_callers_write_once() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        let (c, _) = n.issue();
        // Checking writes nothing and can be repeated: two requests racing with one
        // presentation both get this far.
        let first = n.check(&c).unwrap();
        let second = n.check(&c).unwrap();
        assert_eq!(db.tree("n").len().unwrap(), 0);
        assert_eq!(first.is_spent(), Ok(false));
        assert!(!format!("{first:?}").contains(&c));

        write_spending(&db, &first, b"a").await.unwrap();
        assert_eq!(first.is_spent(), Ok(true));
        assert_eq!(
            db.tree("other").get(b"a").unwrap().as_deref(),
            Some(&b"event"[..])
        );
        // The other request loses, and nothing of its write is kept.
        assert!(matches!(
            write_spending(&db, &second, b"b").await,
            Err(TxError::Replay)
        ));
        assert_eq!(db.tree("other").get(b"b").unwrap(), None);
        assert_eq!(second.spend_alone().await, Err(NonceError::Unknown));
        // Once spent it is used for everyone else too.
        assert_eq!(n.check(&c).err(), Some(NonceError::Unknown));
        assert_eq!(n.consume(&c).await, Err(NonceError::Unknown));
        assert_eq!(n.is_outstanding(&c), Ok(false));

        // Checked like a consume: altered, unknown and expired challenges never get this far.
        let mut altered = federation::b64::decode(&c).unwrap();
        altered[0] ^= 1;
        assert_eq!(
            n.check(&federation::b64::encode(&altered)).err(),
            Some(NonceError::Unknown)
        );
        assert_eq!(n.check("never-issued").err(), Some(NonceError::Unknown));
        let short = nonces(&db, "s", Duration::from_millis(0));
        let (c, _) = short.issue();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(short.check(&c).err(), Some(NonceError::Expired));

        // A challenge spent on its own, after a request that ended without a write.
        let (c, _) = n.issue();
        let u = n.check(&c).unwrap();
        assert_eq!(u.spend_alone().await, Ok(()));
        assert_eq!(n.consume(&c).await, Err(NonceError::Unknown));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_many_concurrent_spends_exactly_one_succeeds() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = nonces(&db, "n", Duration::from_secs(60));
        let (c, _) = n.issue();
        let checked: Vec<Unspent> = (0..32).map(|_| n.check(&c).unwrap()).collect();
        let mut tasks = Vec::new();
        for (i, u) in checked.into_iter().enumerate() {
            let db = db.clone();
            let key: &'static [u8] = Box::leak(i.to_string().into_bytes().into_boxed_slice());
            tasks.push(tokio::spawn(
                async move { write_spending(&db, &u, key).await },
            ));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap().is_ok());
        }
        assert_eq!(ok, 1);
        assert_eq!(db.tree("other").len().unwrap(), 1);
    }
}
