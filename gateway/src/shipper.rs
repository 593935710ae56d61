//! Delivers the outbox to the federation's visibility log, and checks the log.
//!
//! Batches are signed with the organization's key; the log answers with receipts and a
//! signed checkpoint. An event leaves the outbox only once a receipt for it has been
//! stored. Each new checkpoint must be consistent with the last one this gateway accepted
//! (RFC 6962 consistency proof): a log that rewrote history is an alarm — a metric and an
//! error line — and its checkpoint is not adopted.

use std::sync::Arc;
use std::time::Duration;

use federation::checkpoint::{self, NoteVerifier};
use federation::did::{DidResolver, Relationship};
use federation::events::AccessEvent;
use federation::keys::KeyPair;
use federation::log;
use federation::visibility::{leaf_bytes, LogEntry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::outbox::Outbox;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityConfig {
    /// Base URL of the visibility service.
    pub endpoint: String,
    /// Its DID: a federation member, whose key signs the log's checkpoints.
    pub did: String,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

/// Events per batch: the visibility service's maximum (1,000 events per batch; a batch JWS
/// may be up to 4 MiB, far more than 1,000 typical events need).
fn default_batch() -> usize {
    1000
}
fn default_interval() -> u64 {
    200
}

/// A receipt: where an event sits in the log, and the checkpoint that covers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub event_id: String,
    pub leaf_index: u64,
    pub tree_size: u64,
    pub checkpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("visibility service unreachable: {0}")]
    Unreachable(String),
    #[error("visibility service refused the batch ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("visibility answer unusable: {0}")]
    BadAnswer(String),
    #[error("the log is inconsistent with an earlier checkpoint: {0}")]
    Inconsistent(String),
    #[error("storage: {0}")]
    Storage(String),
}

pub struct Shipper {
    outbox: Outbox,
    key: KeyPair,
    config: VisibilityConfig,
    resolver: Arc<DidResolver>,
    client: reqwest::Client,
    receipts: sled::Tree,
    state: sled::Tree,
    dev_mode: bool,
}

const LAST_CHECKPOINT: &[u8] = b"last_checkpoint";

#[derive(Serialize, Deserialize)]
struct Accepted {
    size: u64,
    root: String,
}

impl Shipper {
    pub fn new(
        db: &sled::Db,
        outbox: Outbox,
        key: KeyPair,
        config: VisibilityConfig,
        resolver: Arc<DidResolver>,
        dev_mode: bool,
    ) -> Result<Self, ShipError> {
        let storage = |e: sled::Error| ShipError::Storage(e.to_string());
        Ok(Shipper {
            receipts: db.open_tree("receipts").map_err(storage)?,
            state: db.open_tree("log_state").map_err(storage)?,
            outbox,
            key,
            config,
            resolver,
            client: federation::http::http_client(),
            dev_mode,
        })
    }

    pub fn receipt(&self, event_id: &str) -> Option<Receipt> {
        let v = self.receipts.get(event_id.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    pub fn receipt_count(&self) -> usize {
        self.receipts.len()
    }

    /// Runs forever: ships, backs off on failure, recovers by itself.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let idle = Duration::from_millis(self.config.interval_ms);
            let mut backoff = idle;
            loop {
                match self.ship_once().await {
                    Ok(0) => {
                        backoff = idle;
                        tokio::time::sleep(idle).await;
                    }
                    Ok(_) => backoff = idle,
                    Err(e) => {
                        metrics::counter!("fedgate_shipper_failures_total").increment(1);
                        if let ShipError::Inconsistent(_) = e {
                            metrics::counter!("fedgate_log_inconsistency_total").increment(1);
                            tracing::error!(error = %e, "ALARM: visibility log inconsistent");
                        } else {
                            tracing::warn!(error = %e, "shipping access events failed; will retry");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ShipError> {
        let base = reqwest::Url::parse(&self.config.endpoint)
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        let url = base
            .join(path)
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        federation::http::loopback_only_http(&url, self.dev_mode)
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        Ok(url)
    }

    async fn note_verifier(&self) -> Result<NoteVerifier, ShipError> {
        let vm = format!("{}#key-1", self.config.did);
        let (jwk, _) = self
            .resolver
            .public_key(&vm, Relationship::AssertionMethod)
            .await
            .map_err(|e| ShipError::BadAnswer(e.to_string()))?;
        let raw = okp_bytes(&jwk.params)
            .ok_or_else(|| ShipError::BadAnswer("the log's key is not Ed25519".into()))?;
        NoteVerifier::new(&self.config.did, raw).map_err(|e| ShipError::BadAnswer(e.to_string()))
    }

    async fn get_json(&self, path: &str) -> Result<Value, ShipError> {
        let resp = self
            .client
            .get(self.url(path)?)
            .send()
            .await
            .map_err(|e| ShipError::Unreachable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(ShipError::BadAnswer(format!(
                "{path}: HTTP {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| ShipError::BadAnswer(e.without_url().to_string()))
    }

    fn hashes(v: &Value) -> Result<Vec<log::Hash>, ShipError> {
        v["proof"]
            .as_array()
            .ok_or_else(|| ShipError::BadAnswer("proof missing".into()))?
            .iter()
            .map(|h| {
                let bytes = hex::decode(h.as_str().unwrap_or_default())
                    .map_err(|e| ShipError::BadAnswer(e.to_string()))?;
                <log::Hash>::try_from(bytes.as_slice())
                    .map_err(|_| ShipError::BadAnswer("proof hash length".into()))
            })
            .collect()
    }

    /// Ships one batch; returns how many events left the outbox.
    pub async fn ship_once(&self) -> Result<usize, ShipError> {
        let events: Vec<AccessEvent> = self.outbox.pending(self.config.batch_size);
        if events.is_empty() {
            return Ok(0);
        }
        let payload = json!({"custodian": self.key.did(), "events": events});
        let jws = federation::jose::sign(&payload, &self.key, "fedgate-batch+jwt")
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        let resp = self
            .client
            .post(self.url("v1/batches")?)
            .json(&json!({"batch": jws}))
            .send()
            .await
            .map_err(|e| ShipError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            return Err(ShipError::Refused {
                status,
                detail: body["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        let note = body["checkpoint"]
            .as_str()
            .ok_or_else(|| ShipError::BadAnswer("no checkpoint".into()))?
            .to_string();
        let verifier = self.note_verifier().await?;
        let cp = checkpoint::open(&note, std::slice::from_ref(&verifier))
            .map_err(|e| ShipError::BadAnswer(format!("checkpoint: {e}")))?;
        self.check_consistency(cp.size, &cp.root).await?;

        let receipts = body["receipts"]
            .as_array()
            .ok_or_else(|| ShipError::BadAnswer("no receipts".into()))?;
        let mut stored = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            let (Some(id), Some(index)) = (r["eventId"].as_str(), r["leafIndex"].as_u64()) else {
                return Err(ShipError::BadAnswer("malformed receipt".into()));
            };
            let Some(event) = events.iter().find(|e| e.id == id) else {
                return Err(ShipError::BadAnswer("receipt for an event not sent".into()));
            };
            // Spot-check inclusion of the first and last event of every batch.
            if i == 0 || i + 1 == receipts.len() {
                let proof = self
                    .get_json(&format!(
                        "v1/proofs/inclusion?index={index}&size={}",
                        cp.size
                    ))
                    .await?;
                let leaf = log::leaf_hash(&leaf_bytes(&LogEntry::Access {
                    event: event.clone(),
                }));
                log::verify_inclusion(&leaf, index, cp.size, &Self::hashes(&proof)?, &cp.root)
                    .map_err(|e| ShipError::Inconsistent(format!("inclusion of {id}: {e}")))?;
            }
            let receipt = Receipt {
                event_id: id.to_string(),
                leaf_index: index,
                tree_size: cp.size,
                checkpoint: note.clone(),
            };
            let bytes =
                serde_json::to_vec(&receipt).map_err(|e| ShipError::Storage(e.to_string()))?;
            self.receipts
                .insert(id.as_bytes(), bytes)
                .map_err(|e| ShipError::Storage(e.to_string()))?;
            stored.push(id.to_string());
        }
        if stored.len() != events.len() {
            return Err(ShipError::BadAnswer(format!(
                "{} receipts for {} events",
                stored.len(),
                events.len()
            )));
        }
        self.receipts
            .flush_async()
            .await
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        self.outbox
            .acknowledge(&stored)
            .await
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        metrics::counter!("fedgate_events_shipped_total").increment(stored.len() as u64);
        Ok(stored.len())
    }

    /// Accepts a checkpoint only if it extends the last accepted one.
    async fn check_consistency(&self, size: u64, root: &log::Hash) -> Result<(), ShipError> {
        let last: Option<Accepted> = self
            .state
            .get(LAST_CHECKPOINT)
            .map_err(|e| ShipError::Storage(e.to_string()))?
            .and_then(|v| serde_json::from_slice(&v).ok());
        if let Some(last) = last {
            let old_root: log::Hash = hex::decode(&last.root)
                .ok()
                .and_then(|b| b.as_slice().try_into().ok())
                .ok_or_else(|| ShipError::Storage("stored checkpoint unreadable".into()))?;
            if size < last.size {
                return Err(ShipError::Inconsistent(format!(
                    "the log shrank from {} to {size}",
                    last.size
                )));
            }
            if size == last.size {
                if &old_root != root {
                    return Err(ShipError::Inconsistent("same size, different root".into()));
                }
            } else if last.size > 0 {
                let proof = self
                    .get_json(&format!(
                        "v1/proofs/consistency?old={}&new={size}",
                        last.size
                    ))
                    .await?;
                log::verify_consistency(last.size, size, &old_root, root, &Self::hashes(&proof)?)
                    .map_err(|e| ShipError::Inconsistent(e.to_string()))?;
            }
        }
        let accepted = serde_json::to_vec(&Accepted {
            size,
            root: hex::encode(root),
        })
        .map_err(|e| ShipError::Storage(e.to_string()))?;
        self.state
            .insert(LAST_CHECKPOINT, accepted)
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        Ok(())
    }
}

fn okp_bytes(params: &ssi::jwk::Params) -> Option<[u8; 32]> {
    match params {
        ssi::jwk::Params::OKP(p) if p.curve == "Ed25519" => {
            p.public_key.0.as_slice().try_into().ok()
        }
        _ => None,
    }
}
