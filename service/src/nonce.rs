//! Single-use challenges for presentations, for every verifier (gateway, visibility).
//!
//! A challenge is random, lives for a short time, and is consumed by an atomic remove: of
//! two requests replaying one presentation, exactly one can ever succeed.

use std::time::Duration;

use chrono::{DateTime, Utc};

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
    tree: storage::Tree,
    ttl: Duration,
}

impl Nonces {
    pub fn new(tree: storage::Tree, ttl: Duration) -> Self {
        Nonces { tree, ttl }
    }

    /// Issues a fresh challenge and its expiry.
    pub async fn issue(&self) -> Result<(String, DateTime<Utc>), NonceError> {
        let challenge = federation::client::random_token();
        let expires = Utc::now()
            + chrono::Duration::from_std(self.ttl)
                .unwrap_or_else(|_| chrono::Duration::seconds(120));
        self.tree
            .insert(
                challenge.as_bytes(),
                &expires.timestamp_millis().to_be_bytes(),
            )
            .await
            .map_err(|e| NonceError::Storage(e.to_string()))?;
        Ok((challenge, expires))
    }

    /// Whether `challenge` is outstanding (a cheap check before costly verification).
    pub fn is_outstanding(&self, challenge: &str) -> Result<bool, NonceError> {
        self.tree
            .contains_key(challenge.as_bytes())
            .map_err(|e| NonceError::Storage(e.to_string()))
    }

    /// Consumes a challenge: succeeds once, and only before it expires. The remove is
    /// on disk before this returns, so a restart cannot bring a used challenge back.
    pub async fn consume(&self, challenge: &str) -> Result<(), NonceError> {
        let (tree, key) = (self.tree.clone(), challenge.as_bytes().to_vec());
        let old = self
            .tree
            .db()
            .write(move |tx| tx.remove(&tree, &key))
            .await
            .map_err(|e: storage::StoreError| NonceError::Storage(e.to_string()))?
            .ok_or(NonceError::Unknown)?;
        let expires = <[u8; 8]>::try_from(old.as_slice())
            .map(i64::from_be_bytes)
            .map_err(|_| NonceError::Unknown)?;
        if expires < Utc::now().timestamp_millis() {
            return Err(NonceError::Expired);
        }
        Ok(())
    }

    /// Drops expired challenges (run periodically); returns how many.
    pub async fn purge_expired(&self) -> Result<usize, NonceError> {
        let now = Utc::now().timestamp_millis();
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

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: storage::Schema = storage::Schema {
        name: "test",
        version: 1,
    };

    #[tokio::test]
    async fn a_challenge_is_used_once_and_expires() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = Nonces::new(db.tree("n"), Duration::from_secs(60));
        let (c, _) = n.issue().await.unwrap();
        assert!(c.len() >= 32);
        assert_eq!(n.is_outstanding(&c), Ok(true));
        assert_eq!(n.consume(&c).await, Ok(()));
        assert_eq!(n.consume(&c).await, Err(NonceError::Unknown));
        assert_eq!(n.consume("never-issued").await, Err(NonceError::Unknown));
        let short = Nonces::new(db.tree("s"), Duration::from_millis(0));
        let (c, _) = short.issue().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(short.consume(&c).await, Err(NonceError::Expired));
        let (_, _) = short.issue().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(short.purge_expired().await, Ok(1));
        assert_eq!(n.purge_expired().await, Ok(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_many_concurrent_consumes_exactly_one_succeeds() {
        let db = storage::Db::temporary(SCHEMA).unwrap();
        let n = Nonces::new(db.tree("n"), Duration::from_secs(60));
        let (c, _) = n.issue().await.unwrap();
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
}
