//! OpenID4VP transactions in the gateway's database: each by its id, and an index from
//! its `state` (which the wallet knows) to its id (which only the requester knows). Every
//! change of phase is a read and a write in one write transaction, so that replicas
//! sharing the database see one order: a transaction is answered once and collected once.
//! The requester's secret and the response code are kept as SHA-256 digests.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::db::{Db, Tree};

const TRANSACTIONS: &str = "oid4vp_transactions";
const STATES: &str = "oid4vp_states";

/// Hex SHA-256 of a secret.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unknown or expired transaction")]
    Unknown,
    #[error("the request has expired")]
    Expired,
    #[error("the request was already answered")]
    AlreadyAnswered,
    #[error("the wallet has not answered yet")]
    Pending,
    #[error("wrong requester secret or response code")]
    Unauthorized,
    #[error("OpenID4VP transactions are unavailable: {0}")]
    Storage(String),
}

impl From<storage::StoreError> for StoreError {
    fn from(e: storage::StoreError) -> Self {
        StoreError::Storage(e.to_string())
    }
}

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the wallet.
    Open,
    /// A response verified and is being decided.
    Responding,
    /// Decided; waiting for the requester.
    Responded,
}

/// How the wallet posts its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ResponseMode {
    /// `vp_token` and `state` as a form.
    #[serde(rename = "direct_post")]
    DirectPost,
    /// `response`: a JWE (ECDH-ES) to an ephemeral key of the transaction, holding them.
    #[serde(rename = "direct_post.jwt")]
    DirectPostJwt,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::DirectPost => "direct_post",
            ResponseMode::DirectPostJwt => "direct_post.jwt",
        }
    }
}

/// One exchange started by a requester. What it asks and what it came to are kept as
/// JSON (`super::Outcome`); this module reads only its phase, expiry and digests.
#[derive(Clone, Serialize, Deserialize)]
pub struct Transaction {
    pub domain: String,
    /// `crate::exchange::ExchangeParams`.
    pub params: Value,
    pub nonce: String,
    pub state: String,
    pub secret_sha256: String,
    pub redirect_uri: Option<String>,
    pub response_mode: ResponseMode,
    /// The private JWK responses are encrypted to (`direct_post.jwt`).
    pub encryption_key: Option<Value>,
    pub dcql_query: Value,
    /// Milliseconds since the Unix epoch.
    pub expires_ms: i64,
    pub phase: Phase,
    pub response_code_sha256: Option<String>,
    /// `super::Outcome`.
    pub outcome: Option<Value>,
}

impl Transaction {
    pub fn is_expired(&self) -> bool {
        self.expires_ms < Utc::now().timestamp_millis()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Transaction, StoreError> {
        serde_json::from_slice(bytes).map_err(|_| StoreError::Unknown)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Storage(e.to_string()))
    }
}

/// The transactions of this gateway (shared by its replicas through the database).
#[derive(Clone)]
pub struct Transactions {
    transactions: Tree,
    states: Tree,
}

impl Transactions {
    pub fn open(db: &Db) -> Transactions {
        Transactions {
            transactions: db.tree(TRANSACTIONS),
            states: db.tree(STATES),
        }
    }

    pub async fn insert(&self, id: &str, tx: &Transaction) -> Result<(), StoreError> {
        let (transactions, states) = (self.transactions.clone(), self.states.clone());
        let (id, state, bytes) = (id.to_string(), tx.state.clone(), tx.to_bytes()?);
        self.transactions
            .db()
            .write(move |w| -> Result<(), StoreError> {
                w.insert(&transactions, id.as_bytes(), &bytes)?;
                w.insert(&states, state.as_bytes(), id.as_bytes())?;
                Ok(())
            })
            .await
    }

    /// The transaction whose `state` this is.
    pub fn by_state(&self, state: &str) -> Result<Option<(String, Transaction)>, StoreError> {
        let Some(id) = self.states.get(state.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.transactions.get(&id)? else {
            return Ok(None);
        };
        let id = String::from_utf8(id).map_err(|_| StoreError::Unknown)?;
        Ok(Some((id, Transaction::from_bytes(&bytes)?)))
    }

    /// Changes a transaction in one write: `f` sees it and returns the result, or an error
    /// that leaves it as it was. `Ok(None)` from `f` removes it.
    async fn update<R: Send + 'static>(
        &self,
        id: &str,
        f: impl FnOnce(Transaction) -> Result<(Option<Transaction>, R), StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (transactions, states) = (self.transactions.clone(), self.states.clone());
        let id = id.to_string();
        self.transactions
            .db()
            .write(move |w| -> Result<R, StoreError> {
                let bytes = w
                    .get(&transactions, id.as_bytes())?
                    .ok_or(StoreError::Unknown)?;
                let tx = Transaction::from_bytes(&bytes)?;
                let state = tx.state.clone();
                let (next, result) = f(tx)?;
                match next {
                    Some(next) => {
                        w.insert(&transactions, id.as_bytes(), &next.to_bytes()?)?;
                    }
                    None => {
                        w.remove(&transactions, id.as_bytes())?;
                        w.remove(&states, state.as_bytes())?;
                    }
                }
                Ok(result)
            })
            .await
    }

    /// Open → responding: succeeds once.
    pub async fn claim(&self, id: &str) -> Result<(), StoreError> {
        self.update(id, |mut tx| {
            if tx.phase != Phase::Open {
                return Err(StoreError::AlreadyAnswered);
            }
            if tx.is_expired() {
                return Err(StoreError::Expired);
            }
            tx.phase = Phase::Responding;
            Ok((Some(tx), ()))
        })
        .await
    }

    /// `from` → responded, with the outcome and the digest of the response code.
    pub async fn finish(
        &self,
        id: &str,
        from: Phase,
        outcome: Value,
        code: Option<&str>,
    ) -> Result<(), StoreError> {
        let code = code.map(digest);
        self.update(id, move |mut tx| {
            if tx.phase != from {
                return Err(StoreError::AlreadyAnswered);
            }
            tx.phase = Phase::Responded;
            tx.outcome = Some(outcome);
            tx.response_code_sha256 = code;
            tx.encryption_key = None;
            Ok((Some(tx), ()))
        })
        .await
    }

    /// The outcome, once, to the requester: same device with the response code, cross
    /// device with the requester's secret. Before the wallet answered, the secret learns
    /// only that it is pending. A collected or expired transaction is gone.
    pub async fn collect(
        &self,
        id: &str,
        secret: Option<&str>,
        code: Option<&str>,
    ) -> Result<Value, StoreError> {
        let secret = secret.map(digest);
        let code = code.map(digest);
        let result = self
            .update(id, move |tx| {
                if tx.is_expired() {
                    return Ok((None, Err(StoreError::Expired)));
                }
                let secret_ok = secret.as_deref() == Some(tx.secret_sha256.as_str());
                let code_ok =
                    code.is_some() && code.as_deref() == tx.response_code_sha256.as_deref();
                if tx.phase != Phase::Responded {
                    return if secret_ok {
                        Err(StoreError::Pending)
                    } else {
                        Err(StoreError::Unauthorized)
                    };
                }
                let authorized = if tx.redirect_uri.is_some() {
                    code_ok
                } else {
                    secret_ok
                };
                if !authorized {
                    return Err(StoreError::Unauthorized);
                }
                let outcome = tx.outcome.clone().ok_or(StoreError::Unknown)?;
                Ok((None, Ok(outcome)))
            })
            .await?;
        result
    }

    /// Drops expired transactions (run periodically); returns how many.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = Utc::now().timestamp_millis();
        let (transactions, states) = (self.transactions.clone(), self.states.clone());
        self.transactions
            .db()
            .write(move |w| -> Result<usize, StoreError> {
                let mut expired = Vec::new();
                w.scan(&transactions, .., |key, value| {
                    if let Ok(tx) = Transaction::from_bytes(value) {
                        if tx.expires_ms < now {
                            expired.push((key.to_vec(), tx.state));
                        }
                    } else {
                        expired.push((key.to_vec(), String::new()));
                    }
                    std::ops::ControlFlow::Continue(())
                })?;
                for (key, state) in &expired {
                    w.remove(&transactions, key)?;
                    if !state.is_empty() {
                        w.remove(&states, state.as_bytes())?;
                    }
                }
                Ok(expired.len())
            })
            .await
    }
}
