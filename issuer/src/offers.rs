//! OpenID4VCI state in the issuer's database: credential offers with their pre-authorized
//! codes, and the access tokens those codes were exchanged for. (The `c_nonce`s of the
//! nonce endpoint are single-use challenges of `service::nonce`, in their own tree.)
//!
//! Trees (owned here, opened nowhere else):
//! - `oid4vci_offers`: SHA-256 of the pre-authorized code (hex) → [`Offer`] (JSON);
//! - `oid4vci_offer_uris`: the random id of an offer served by reference → code hash;
//! - `oid4vci_tokens`: SHA-256 of an access token (hex) → [`Token`] (JSON).
//!
//! Codes and tokens are kept as hashes only: a copy of the database redeems nothing. Every
//! state change (a code redeemed, a wrong transaction code counted, a token spent) is one
//! durable write, so single use holds across a restart and between concurrent requests.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use service::db::{Db, Tree};
use sha2::{Digest, Sha256};

use crate::error::IssuerError;

/// A credential offered, waiting for its holder's wallet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Offer {
    /// Shown to the admin; names the offer in logs (never the code).
    pub(crate) id: String,
    /// The credential configurations the wallet may ask for (one credential is issued).
    pub(crate) configuration_ids: Vec<String>,
    /// The unsigned credential; `credentialSubject.id` is set from the proof's key when
    /// the offer names no subject.
    pub(crate) credential: Value,
    /// The holder DID the proof key must belong to, when the office knows it.
    #[serde(default)]
    pub(crate) subject: Option<String>,
    /// A mover's old credential, revoked when the new one is issued.
    #[serde(default)]
    pub(crate) replaces: Option<String>,
    /// SHA-256 (hex) of the transaction code, when one is required.
    #[serde(default)]
    pub(crate) tx_code_hash: Option<String>,
    #[serde(default)]
    pub(crate) tx_code_length: usize,
    /// Wrong transaction codes still allowed before the offer is burnt.
    pub(crate) tries_left: u32,
    pub(crate) expires_at: DateTime<Utc>,
    /// The offer object (with the code), served by reference until the code is redeemed.
    #[serde(default)]
    pub(crate) by_reference: Option<(String, Value)>,
}

/// An access token: what it may be spent on, once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Token {
    pub(crate) offer: Offer,
    pub(crate) expires_at: DateTime<Utc>,
}

/// What the token endpoint decided about a code.
#[derive(Debug, PartialEq)]
pub(crate) enum Redeemed {
    /// The code was good: it is spent, and this token stands for it.
    Token(Box<Offer>),
    /// No such code, or it was spent, burnt or expired.
    UnknownCode,
    /// A transaction code was required and none was given.
    TxCodeMissing,
    /// A transaction code was given for an offer without one.
    TxCodeUnexpected,
    /// The transaction code was wrong (this many tries remain; 0: the offer is burnt).
    TxCodeWrong(u32),
}

pub(crate) fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn storage(e: serde_json::Error) -> IssuerError {
    IssuerError::Storage(e.to_string())
}

#[derive(Clone)]
pub(crate) struct Offers {
    db: Db,
    offers: Tree,
    uris: Tree,
    tokens: Tree,
}

impl Offers {
    pub(crate) fn new(db: &Db) -> Self {
        Offers {
            db: db.clone(),
            offers: db.tree("oid4vci_offers"),
            uris: db.tree("oid4vci_offer_uris"),
            tokens: db.tree("oid4vci_tokens"),
        }
    }

    /// Stores a new offer under its code; durable when this returns.
    pub(crate) async fn insert(&self, code: &str, offer: &Offer) -> Result<(), IssuerError> {
        let (offers, uris) = (self.offers.clone(), self.uris.clone());
        let key = hash(code);
        let value = serde_json::to_vec(offer).map_err(storage)?;
        let uri = offer.by_reference.as_ref().map(|(id, _)| id.clone());
        self.db
            .write(move |tx| {
                if tx.get(&offers, key.as_bytes())?.is_some() {
                    return Err(IssuerError::Conflict("offer code collision".into()));
                }
                tx.insert(&offers, key.as_bytes(), &value)?;
                if let Some(uri) = uri {
                    tx.insert(&uris, uri.as_bytes(), key.as_bytes())?;
                }
                Ok(())
            })
            .await
    }

    /// The offer object served at its `credential_offer_uri`, while its code is unspent
    /// and unexpired.
    pub(crate) fn by_reference(&self, uri_id: &str) -> Result<Option<Value>, IssuerError> {
        let Some(key) = self.uris.get(uri_id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.offers.get(&key)? else {
            return Ok(None);
        };
        let offer: Offer = serde_json::from_slice(&bytes).map_err(storage)?;
        if offer.expires_at <= Utc::now() {
            return Ok(None);
        }
        Ok(offer
            .by_reference
            .filter(|(id, _)| id == uri_id)
            .map(|(_, doc)| doc))
    }

    /// The token endpoint's one write: checks the code and the transaction code, and
    /// either spends the code for `token` (valid for `token_ttl`), counts a wrong
    /// transaction code (burning the offer at the last try), or changes nothing.
    pub(crate) async fn redeem(
        &self,
        code: &str,
        tx_code: Option<&str>,
        token: &str,
        token_ttl: chrono::Duration,
    ) -> Result<Redeemed, IssuerError> {
        let (offers, uris, tokens) = (self.offers.clone(), self.uris.clone(), self.tokens.clone());
        let key = hash(code);
        let tx_hash = tx_code.map(hash);
        let token_key = hash(token);
        self.db
            .write(move |tx| {
                let Some(bytes) = tx.get(&offers, key.as_bytes())? else {
                    return Ok(Redeemed::UnknownCode);
                };
                let mut offer: Offer = serde_json::from_slice(&bytes).map_err(storage)?;
                let now = Utc::now();
                let forget = |tx: &mut service::db::WriteTx<'_>, offer: &Offer| {
                    tx.remove(&offers, key.as_bytes())?;
                    if let Some((uri, _)) = &offer.by_reference {
                        tx.remove(&uris, uri.as_bytes())?;
                    }
                    Ok::<_, IssuerError>(())
                };
                if offer.expires_at <= now {
                    forget(tx, &offer)?;
                    return Ok(Redeemed::UnknownCode);
                }
                match (&offer.tx_code_hash, &tx_hash) {
                    (Some(_), None) => return Ok(Redeemed::TxCodeMissing),
                    (None, Some(_)) => return Ok(Redeemed::TxCodeUnexpected),
                    (Some(want), Some(got)) if !constant_time_eq(want, got) => {
                        offer.tries_left = offer.tries_left.saturating_sub(1);
                        if offer.tries_left == 0 {
                            forget(tx, &offer)?;
                        } else {
                            let value = serde_json::to_vec(&offer).map_err(storage)?;
                            tx.insert(&offers, key.as_bytes(), &value)?;
                        }
                        return Ok(Redeemed::TxCodeWrong(offer.tries_left));
                    }
                    _ => {}
                }
                forget(tx, &offer)?;
                offer.by_reference = None;
                let record = Token {
                    offer: offer.clone(),
                    expires_at: now + token_ttl,
                };
                let value = serde_json::to_vec(&record).map_err(storage)?;
                tx.insert(&tokens, token_key.as_bytes(), &value)?;
                Ok(Redeemed::Token(Box::new(offer)))
            })
            .await
    }

    /// The unexpired token `token` stands for, without spending it.
    pub(crate) fn token(&self, token: &str) -> Result<Option<Token>, IssuerError> {
        let Some(bytes) = self.tokens.get(hash(token).as_bytes())? else {
            return Ok(None);
        };
        let record: Token = serde_json::from_slice(&bytes).map_err(storage)?;
        Ok((record.expires_at > Utc::now()).then_some(record))
    }

    /// Spends a token: succeeds for one caller only; durable when this returns.
    pub(crate) async fn spend(&self, token: &str) -> Result<Option<Token>, IssuerError> {
        let tokens = self.tokens.clone();
        let key = hash(token);
        self.db
            .write(move |tx| {
                let Some(bytes) = tx.remove(&tokens, key.as_bytes())? else {
                    return Ok(None);
                };
                let record: Token = serde_json::from_slice(&bytes).map_err(storage)?;
                Ok((record.expires_at > Utc::now()).then_some(record))
            })
            .await
    }

    /// Puts back a token whose credential could not be issued (nothing was issued, so the
    /// holder may try again while it lasts).
    pub(crate) async fn restore(&self, token: &str, record: &Token) -> Result<(), IssuerError> {
        let tokens = self.tokens.clone();
        let key = hash(token);
        let value = serde_json::to_vec(record).map_err(storage)?;
        self.db
            .write(move |tx| {
                tx.insert(&tokens, key.as_bytes(), &value)?;
                Ok(())
            })
            .await
    }
}

/// Compares two hashes without an early exit (their length is public).
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offer(tx: Option<&str>, minutes: i64) -> Offer {
        Offer {
            id: "o1".into(),
            configuration_ids: vec!["ClinicianPrivilegeCredential_jwt".into()],
            credential: json!({}),
            subject: None,
            replaces: None,
            tx_code_hash: tx.map(hash),
            tx_code_length: tx.map_or(0, str::len),
            tries_left: 3,
            expires_at: Utc::now() + chrono::Duration::minutes(minutes),
            by_reference: Some(("u1".into(), json!({"x": 1}))),
        }
    }

    fn ttl() -> chrono::Duration {
        chrono::Duration::minutes(5)
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once_and_survives_a_restart_spent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db =
                service::db::open_service_db(dir.path(), "issuer", crate::store::SCHEMA).unwrap();
            let offers = Offers::new(&db);
            offers
                .insert("code", &offer(Some("123456"), 10))
                .await
                .unwrap();
            assert_eq!(offers.by_reference("u1").unwrap(), Some(json!({"x": 1})));
            let r = offers
                .redeem("code", Some("123456"), "tok", ttl())
                .await
                .unwrap();
            assert!(matches!(r, Redeemed::Token(_)));
            assert_eq!(offers.by_reference("u1").unwrap(), None);
            assert!(offers.token("tok").unwrap().is_some());
        }
        let db = service::db::open_service_db(dir.path(), "issuer", crate::store::SCHEMA).unwrap();
        let offers = Offers::new(&db);
        let again = offers
            .redeem("code", Some("123456"), "tok2", ttl())
            .await
            .unwrap();
        assert_eq!(again, Redeemed::UnknownCode);
        let spent = offers.spend("tok").await.unwrap();
        assert!(spent.is_some());
        assert!(offers.spend("tok").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wrong_transaction_codes_are_capped_and_expiry_refuses() {
        let db = Db::temporary(crate::store::SCHEMA).unwrap();
        let offers = Offers::new(&db);
        offers
            .insert("c", &offer(Some("111111"), 10))
            .await
            .unwrap();
        assert_eq!(
            offers.redeem("c", None, "t", ttl()).await.unwrap(),
            Redeemed::TxCodeMissing
        );
        for left in [2, 1, 0] {
            assert_eq!(
                offers
                    .redeem("c", Some("999999"), "t", ttl())
                    .await
                    .unwrap(),
                Redeemed::TxCodeWrong(left)
            );
        }
        // Burnt: even the right code no longer redeems it.
        assert_eq!(
            offers
                .redeem("c", Some("111111"), "t", ttl())
                .await
                .unwrap(),
            Redeemed::UnknownCode
        );
        offers.insert("old", &offer(None, -1)).await.unwrap();
        assert_eq!(
            offers.redeem("old", None, "t", ttl()).await.unwrap(),
            Redeemed::UnknownCode
        );
        offers.insert("plain", &offer(None, 10)).await.unwrap();
        assert_eq!(
            offers.redeem("plain", Some("1"), "t", ttl()).await.unwrap(),
            Redeemed::TxCodeUnexpected
        );
    }
}
