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
    tree: sled::Tree,
    ttl: Duration,
}

impl Nonces {
    pub fn new(tree: sled::Tree, ttl: Duration) -> Self {
        Nonces { tree, ttl }
    }

    /// Issues a fresh challenge and its expiry.
    pub fn issue(&self) -> Result<(String, DateTime<Utc>), NonceError> {
        let challenge = federation::client::random_token();
        let expires = Utc::now()
            + chrono::Duration::from_std(self.ttl)
                .unwrap_or_else(|_| chrono::Duration::seconds(120));
        self.tree
            .insert(
                challenge.as_bytes(),
                &expires.timestamp_millis().to_be_bytes(),
            )
            .map_err(|e| NonceError::Storage(e.to_string()))?;
        Ok((challenge, expires))
    }

    /// Whether `challenge` is outstanding (a cheap check before costly verification).
    pub fn is_outstanding(&self, challenge: &str) -> Result<bool, NonceError> {
        self.tree
            .contains_key(challenge.as_bytes())
            .map_err(|e| NonceError::Storage(e.to_string()))
    }

    /// Consumes a challenge: succeeds once, and only before it expires.
    pub fn consume(&self, challenge: &str) -> Result<(), NonceError> {
        let old = self
            .tree
            .remove(challenge.as_bytes())
            .map_err(|e| NonceError::Storage(e.to_string()))?
            .ok_or(NonceError::Unknown)?;
        let expires = <[u8; 8]>::try_from(old.as_ref())
            .map(i64::from_be_bytes)
            .map_err(|_| NonceError::Unknown)?;
        if expires < Utc::now().timestamp_millis() {
            return Err(NonceError::Expired);
        }
        Ok(())
    }

    /// Drops expired challenges (run periodically).
    pub fn purge_expired(&self) -> usize {
        let now = Utc::now().timestamp_millis();
        let mut removed = 0;
        for (key, value) in self.tree.iter().flatten() {
            let expired = <[u8; 8]>::try_from(value.as_ref())
                .map(i64::from_be_bytes)
                .map(|e| e < now)
                .unwrap_or(true);
            if expired && self.tree.remove(key).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_is_used_once_and_expires() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let n = Nonces::new(db.open_tree("n").unwrap(), Duration::from_secs(60));
        let (c, _) = n.issue().unwrap();
        assert!(c.len() >= 32);
        assert_eq!(n.is_outstanding(&c), Ok(true));
        assert_eq!(n.consume(&c), Ok(()));
        assert_eq!(n.consume(&c), Err(NonceError::Unknown));
        assert_eq!(n.consume("never-issued"), Err(NonceError::Unknown));
        let short = Nonces::new(db.open_tree("s").unwrap(), Duration::from_millis(0));
        let (c, _) = short.issue().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.consume(&c), Err(NonceError::Expired));
        let (_, _) = short.issue().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.purge_expired(), 1);
    }
}
