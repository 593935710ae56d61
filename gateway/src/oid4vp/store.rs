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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn transaction(same_device: bool, ttl_ms: i64) -> Transaction {
        Transaction {
            domain: "clinical".into(),
            params: json!({}),
            nonce: "n".repeat(43),
            state: federation::client::random_token(),
            secret_sha256: digest("secret"),
            redirect_uri: same_device.then(|| "https://ehr.example/back".to_string()),
            response_mode: ResponseMode::DirectPost,
            encryption_key: None,
            dcql_query: json!({}),
            expires_ms: Utc::now().timestamp_millis() + ttl_ms,
            phase: Phase::Open,
            response_code_sha256: None,
            outcome: None,
        }
    }

    #[tokio::test]
    async fn answered_once_collected_once() {
        let db = crate::db::temporary().unwrap();
        let t = Transactions::open(&db);
        let tx = transaction(false, 60_000);
        t.insert("tx1", &tx).await.unwrap();
        assert_eq!(t.by_state(&tx.state).unwrap().unwrap().0, "tx1");
        // Before the answer: the secret learns it is pending, anything else nothing.
        assert_eq!(
            t.collect("tx1", Some("secret"), None).await.unwrap_err(),
            StoreError::Pending
        );
        assert_eq!(
            t.collect("tx1", Some("wrong"), None).await.unwrap_err(),
            StoreError::Unauthorized
        );
        t.claim("tx1").await.unwrap();
        assert_eq!(t.claim("tx1").await, Err(StoreError::AlreadyAnswered));
        t.finish(
            "tx1",
            Phase::Responding,
            json!({"kind": "declined", "error": "x"}),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            t.finish("tx1", Phase::Responding, json!({}), None).await,
            Err(StoreError::AlreadyAnswered)
        );
        assert_eq!(
            t.collect("tx1", Some("wrong"), None).await.unwrap_err(),
            StoreError::Unauthorized
        );
        assert_eq!(
            t.collect("tx1", Some("secret"), None).await.unwrap()["kind"],
            "declined"
        );
        assert_eq!(
            t.collect("tx1", Some("secret"), None).await.unwrap_err(),
            StoreError::Unknown
        );
        assert!(t.by_state(&tx.state).unwrap().is_none());
    }

    #[tokio::test]
    async fn same_device_needs_the_response_code() {
        let db = crate::db::temporary().unwrap();
        let t = Transactions::open(&db);
        t.insert("tx", &transaction(true, 60_000)).await.unwrap();
        t.claim("tx").await.unwrap();
        t.finish("tx", Phase::Responding, json!({"kind": "x"}), Some("code"))
            .await
            .unwrap();
        assert_eq!(
            t.collect("tx", Some("secret"), None).await.unwrap_err(),
            StoreError::Unauthorized
        );
        assert_eq!(
            t.collect("tx", None, Some("other")).await.unwrap_err(),
            StoreError::Unauthorized
        );
        assert!(t.collect("tx", None, Some("code")).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_concurrent_claims_exactly_one_succeeds() {
        let db = crate::db::temporary().unwrap();
        let t = Transactions::open(&db);
        t.insert("tx", &transaction(false, 60_000)).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move { t.claim("tx").await }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += usize::from(task.await.unwrap().is_ok());
        }
        assert_eq!(ok, 1);
    }

    #[tokio::test]
    async fn expired_transactions_are_refused_and_purged() {
        let db = crate::db::temporary().unwrap();
        let t = Transactions::open(&db);
        t.insert("old", &transaction(false, -1)).await.unwrap();
        t.insert("new", &transaction(false, 60_000)).await.unwrap();
        assert_eq!(t.claim("old").await, Err(StoreError::Expired));
        assert_eq!(t.purge_expired().await, Ok(1));
        assert_eq!(t.claim("old").await, Err(StoreError::Unknown));
        assert!(t.claim("new").await.is_ok());
    }
}
