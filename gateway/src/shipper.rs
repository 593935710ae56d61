//! Delivers the outbox to the federation's visibility log, and checks the log.
//!
//! Batches are signed with the organization's key; the log answers with receipts and a
//! signed checkpoint. An event leaves the outbox only once a receipt for it has been
//! stored. Each new checkpoint must be consistent with the last one this gateway accepted
//! (RFC 6962 consistency proof): a log that rewrote history is an alarm — a metric and an
//! error line — and its checkpoint is not adopted.
//!
//! Two transports (`[visibility] transport`): `https` posts batches to the service, whose
//! answer carries the receipts; `nats` publishes each event to JetStream (see
//! [`service::eventbus`]), moves it to the outbox's published stage once the stream has
//! it, and a second loop then collects its receipt from `POST /v1/receipts`. Both end the
//! same way: a receipt checked against a consistent checkpoint, kept on disk.
//!
//! Replicas of one gateway share its database, so its outbox, receipts and adopted
//! checkpoint, and each runs a shipper. Each round a shipper claims the batch it hands on
//! (on the NATS path also the published events whose receipts it asks for) in one write:
//! events another live shipper claimed are skipped, so replicas ship different batches
//! side by side rather than the same one twice. A claim is taken under a random id of
//! this process and lasts a lease (a minute, or three intervals if longer), renewed each
//! round by its holder and ended by the write that keeps the receipts; the claims of a
//! replica that stopped lapse, and another ships those events (the log keeps one leaf per
//! event id, so that re-send is harmless). Answers of replicas may come back in either
//! order: a checkpoint is adopted only in a write that finds the one it was checked
//! against, so every adopted checkpoint extends the one before it, whoever adopted each.
//! The incident state behind the metrics is per process, like the metrics themselves.

use backon::BackoffBuilder as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use federation::checkpoint::{self, NoteVerifier};
use federation::did::{DidResolver, Relationship};
use federation::events::AccessEvent;
use federation::keys::KeyPair;
use federation::log;
use federation::wire::{self, leaf_bytes, BatchResponse, LogEntry, ReceiptsResponse, BATCH_TYP};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use service::eventbus::{self, NatsConfig};
use storage::StoreError;

use crate::db::{Db, Tree};
use crate::outbox::{ClaimId, Outbox, Stage as OutboxStage};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityConfig {
    /// Base URL of the visibility service (batches on the HTTPS path; receipts and proofs
    /// on both).
    pub endpoint: String,
    /// Its DID: a federation member, whose key signs the log's checkpoints.
    pub did: String,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How long the shipper sleeps when the outbox is empty.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// How long the shipper waits after a batch short of `batch_size`, so that the events
    /// of a busy gateway leave in batches of many rather than of one or two: each batch
    /// costs a signature, a request and a durable write of its receipts on both sides.
    /// It delays an event by no more than this (and never more than an idle outbox
    /// does, `interval_ms`); 0 ships again at once.
    #[serde(default = "default_linger")]
    pub linger_ms: u64,
    /// How events travel: `https` (the default, straight to the service) or `nats`.
    #[serde(default)]
    pub transport: Transport,
    /// The JetStream server and stream, with `transport = "nats"`.
    #[serde(default)]
    pub nats: Option<NatsConfig>,
    /// Other gateways (base URLs) whose last adopted checkpoint this one compares with its
    /// own, to catch a log that shows members different histories (see `gossip`).
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default = "default_gossip_interval")]
    pub gossip_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Https,
    Nats,
}

/// Events per batch: the visibility service's maximum (1,000 events per batch; a batch JWS
/// may be up to 4 MiB, far more than 1,000 typical events need).
fn default_batch() -> usize {
    1000
}
fn default_interval() -> u64 {
    200
}
fn default_linger() -> u64 {
    20
}
fn default_gossip_interval() -> u64 {
    60_000
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
    #[error("visibility service refused ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("visibility answer unusable: {0}")]
    BadAnswer(String),
    #[error("the log is inconsistent with an earlier checkpoint: {0}")]
    Inconsistent(String),
    #[error("storage: {0}")]
    Storage(String),
    /// Other shippers over the same database (replicas) kept adopting checkpoints while
    /// this one checked its answer against the last; nothing was kept, the batch goes
    /// again.
    #[error("the adopted checkpoint kept moving while an answer was checked; will retry")]
    Contended,
}

pub struct Shipper {
    outbox: Outbox,
    key: KeyPair,
    config: VisibilityConfig,
    resolver: Arc<DidResolver>,
    client: reqwest::Client,
    db: Db,
    receipts: Tree,
    state: Tree,
    dev_mode: bool,
    bus: Option<Bus>,
    /// This shipper's claims on outbox events: random per process, so that replicas
    /// sharing the database never take each other's claims for their own.
    claim_id: ClaimId,
    /// How long a claim holds (see [`claim_lease`]).
    lease: Duration,
    /// Whether the log disagrees with us since the last adopted checkpoint: one incident
    /// lasts until a checkpoint passes every check again, however many retries, and
    /// whatever each retry finds wrong (a forged root first, a bad proof after the next
    /// append).
    in_incident: AtomicBool,
}

/// The NATS side of the shipper: a lazily (re)connected JetStream context, and when each
/// waiting event was last published. That is kept in memory: only the shipper holding an
/// event's claim asks for its receipt, which is the one that published it unless it
/// stopped; after a restart or a takeover the clock starts again, so a lost publication is
/// repeated at most one period later.
struct Bus {
    config: NatsConfig,
    subject: String,
    js: tokio::sync::Mutex<Option<async_nats::jetstream::Context>>,
    published_at: std::sync::Mutex<HashMap<String, Instant>>,
}

/// A published event still without a receipt after this long is published again: the
/// stream drops it if it still remembers the id, and the log keeps one leaf either way.
const REPUBLISH_AFTER: Duration = Duration::from_secs(30);

/// How long a shipper's claim on outbox events holds, at least: longer than one round can
/// take (a batch post and three proof requests, each within the HTTP client's 15 s), so
/// that a live shipper's events are not routinely taken over and sent twice; and short
/// enough that the events of a replica that stopped reach the log a minute later.
const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// The lease of claims: [`CLAIM_LEASE`], or three idle intervals when that is longer, so
/// that a shipper waiting for receipts renews its claims before they lapse.
fn claim_lease(interval_ms: u64) -> Duration {
    CLAIM_LEASE.max(Duration::from_millis(interval_ms).saturating_mul(3))
}

/// Times an answer is checked again against a checkpoint another replica adopted while it
/// was being checked, before the round gives up (and the batch goes again).
const ADOPT_ATTEMPTS: usize = 5;

/// The loops the shipper runs: one on the HTTPS path, two on the NATS path (handing events
/// to the stream does not wait on the log's receipts).
#[derive(Clone, Copy, Debug)]
enum Stage {
    Ship,
    Publish,
    Confirm,
}

impl Stage {
    /// The metrics' label.
    fn name(self) -> &'static str {
        match self {
            Stage::Ship => "ship",
            Stage::Publish => "publish",
            Stage::Confirm => "confirm",
        }
    }
}

/// Largest answer read from the visibility service: receipts for a full batch and their
/// checkpoint, or a proof, are far smaller.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Reads an answer of the visibility service with the strict JSON reader: the receipts,
/// checkpoints and proofs in it decide which events leave the outbox, so they must mean
/// one thing only (no duplicate keys, valid UTF-8, no lone surrogates, bounded depth).
async fn read_strict_json<T: serde::de::DeserializeOwned>(
    mut resp: reqwest::Response,
) -> Result<T, ShipError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ShipError::BadAnswer(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ShipError::BadAnswer("answer too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let value = federation::json::parse_strict(&body)
        .map_err(|e| ShipError::BadAnswer(format!("not strict JSON: {}", e.summary())))?;
    serde_json::from_value(value).map_err(|e| ShipError::BadAnswer(e.to_string()))
}

/// The tree of the shipper's log state, and its key for the adopted checkpoint.
pub const LOG_STATE: &str = "log_state";
/// The tree of the receipts kept, by event id.
pub const RECEIPTS: &str = "receipts";
const LAST_CHECKPOINT: &[u8] = b"last_checkpoint";

/// The checkpoint later ones must extend: the last one whose whole answer passed every
/// check. The signed note is what peers compare (see [`crate::gossip`]); stores written
/// before it was kept have none until the next adoption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Adopted {
    pub size: u64,
    pub root: String,
    #[serde(default)]
    pub note: Option<String>,
}

impl Adopted {
    /// Reads it from the gateway's `log_state` tree.
    pub fn load(state: &Tree) -> Result<Option<Adopted>, ShipError> {
        let bytes = state
            .get(LAST_CHECKPOINT)
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        Ok(bytes.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub fn root_hash(&self) -> Result<log::Hash, ShipError> {
        hex::decode(&self.root)
            .ok()
            .and_then(|b| b.as_slice().try_into().ok())
            .ok_or_else(|| ShipError::Storage("stored checkpoint unreadable".into()))
    }
}

impl Shipper {
    pub fn new(
        db: &Db,
        outbox: Outbox,
        key: KeyPair,
        config: VisibilityConfig,
        resolver: Arc<DidResolver>,
        dev_mode: bool,
    ) -> Result<Self, ShipError> {
        let bus = match (config.transport, &config.nats) {
            (Transport::Nats, Some(n)) => Some(Bus {
                subject: n.subject_for(key.did()),
                config: n.clone(),
                js: tokio::sync::Mutex::new(None),
                published_at: std::sync::Mutex::new(HashMap::new()),
            }),
            (Transport::Nats, None) => {
                return Err(ShipError::Storage(
                    "transport = \"nats\" needs [visibility.nats]".into(),
                ))
            }
            (Transport::Https, _) => None,
        };
        Ok(Shipper {
            lease: claim_lease(config.interval_ms),
            db: db.clone(),
            receipts: db.tree(RECEIPTS),
            state: db.tree(LOG_STATE),
            outbox,
            key,
            config,
            resolver,
            client: federation::client::http_client(),
            dev_mode,
            bus,
            claim_id: ClaimId::random(),
            in_incident: AtomicBool::new(false),
        })
    }

    pub fn receipt(&self, event_id: &str) -> Option<Receipt> {
        let v = self.receipts.get(event_id.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Receipts kept (a storage failure counts none).
    pub fn receipt_count(&self) -> usize {
        self.receipts
            .len()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Runs forever: ships, backs off on failure, recovers by itself.
    pub fn spawn(self: Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let stages = if self.bus.is_some() {
            vec![Stage::Publish, Stage::Confirm]
        } else {
            vec![Stage::Ship]
        };
        stages
            .into_iter()
            .map(|stage| tokio::spawn(self.clone().run(stage)))
            .collect()
    }

    async fn run(self: Arc<Self>, stage: Stage) {
        let idle = Duration::from_millis(self.config.interval_ms);
        let linger = Duration::from_millis(self.config.linger_ms).min(idle);
        // After a failure, wait longer each time (with jitter, so that gateways that lost
        // the log together do not come back together), up to 10 s; any success resets it.
        let retry = backon::ExponentialBuilder::default()
            .with_min_delay(idle)
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times();
        let mut backoff = retry.build();
        loop {
            let result = match stage {
                Stage::Ship => self.ship_once().await,
                Stage::Publish => self.publish_once().await,
                Stage::Confirm => self.confirm_once().await,
            };
            match result {
                Ok(0) => {
                    backoff = retry.build();
                    tokio::time::sleep(idle).await;
                }
                Ok(n) => {
                    backoff = retry.build();
                    metrics::histogram!("fedgate_shipper_batch_events", "stage" => stage.name())
                        .record(n as f64);
                    if n < self.config.batch_size && !linger.is_zero() {
                        tokio::time::sleep(linger).await;
                    }
                }
                Err(e) => {
                    metrics::counter!("fedgate_shipper_failures_total").increment(1);
                    if let ShipError::Inconsistent(_) = &e {
                        // The gauge stays up while the log disagrees; the counter counts
                        // incidents, not the retries of one.
                        metrics::gauge!("fedgate_log_inconsistent").set(1.0);
                        if !self.in_incident.swap(true, Ordering::SeqCst) {
                            metrics::counter!("fedgate_log_inconsistency_total").increment(1);
                        }
                        tracing::error!(error = %e, "ALARM: visibility log inconsistent");
                    } else {
                        tracing::warn!(error = %e, ?stage, "shipping access events failed; will retry");
                    }
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ShipError> {
        let base = reqwest::Url::parse(&self.config.endpoint)
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        let url = base
            .join(path)
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        federation::client::loopback_only_http(&url, self.dev_mode)
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        Ok(url)
    }

    pub(crate) async fn note_verifier(&self) -> Result<NoteVerifier, ShipError> {
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
            return Err(ShipError::Refused {
                status: resp.status().as_u16(),
                detail: path.split('?').next().unwrap_or_default().to_string(),
            });
        }
        read_strict_json(resp).await
    }

    /// POSTs JSON to the service; anything but 200 is a refusal naming its detail.
    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
    ) -> Result<T, ShipError> {
        let resp = self
            .client
            .post(self.url(path)?)
            .json(body)
            .send()
            .await
            .map_err(|e| ShipError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body: Value = read_strict_json(resp).await.unwrap_or(Value::Null);
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
        read_strict_json(resp).await
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

    /// A batch signed with the organization's key, as the service takes it.
    fn sign_batch(&self, events: &[AccessEvent]) -> Result<String, ShipError> {
        let payload = wire::BatchPayloadRef {
            custodian: self.key.did(),
            events,
        };
        federation::jose::sign(&payload, &self.key, BATCH_TYP)
            .map_err(|e| ShipError::Storage(e.to_string()))
    }

    /// Claims up to a batch of the oldest events of `stage` that no other live shipper
    /// holds (see [`Outbox::claim`]).
    async fn claim(&self, stage: OutboxStage) -> Result<Vec<AccessEvent>, ShipError> {
        self.outbox
            .claim(stage, self.claim_id, self.lease, self.config.batch_size)
            .await
            .map_err(|e| ShipError::Storage(e.to_string()))
    }

    /// HTTPS path: ships one batch; returns how many events left the outbox.
    pub async fn ship_once(&self) -> Result<usize, ShipError> {
        let events = self.claim(OutboxStage::Pending).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let batch = self.sign_batch(&events)?;
        let answer: BatchResponse = self
            .post_json("v1/batches", &wire::BatchRequestRef { batch: &batch })
            .await?;
        // Receipts short of the batch: none is kept and no event leaves the outbox; the
        // whole batch is sent again (the log keeps one leaf per event).
        if answer.receipts.len() != events.len() {
            return Err(ShipError::BadAnswer(format!(
                "{} receipts for {} events",
                answer.receipts.len(),
                events.len()
            )));
        }
        let stored = self
            .keep_receipts(
                &events,
                &answer.checkpoint,
                &answer.receipts,
                OutboxStage::Pending,
            )
            .await?;
        metrics::counter!("fedgate_events_shipped_total").increment(stored.len() as u64);
        Ok(stored.len())
    }

    /// NATS path, first stage: hands outbox events to the stream, each a signed batch of
    /// one with its id as the message id. Returns how many the stream stored.
    pub async fn publish_once(&self) -> Result<usize, ShipError> {
        let events = self.claim(OutboxStage::Pending).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let stored = self.publish(&events).await?;
        let moved: Vec<AccessEvent> = events
            .into_iter()
            .filter(|e| stored.contains(&e.id))
            .collect();
        self.outbox
            .mark_published(&moved)
            .await
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        metrics::counter!("fedgate_events_published_total").increment(moved.len() as u64);
        Ok(moved.len())
    }

    async fn publish(&self, events: &[AccessEvent]) -> Result<HashSet<String>, ShipError> {
        let Some(bus) = &self.bus else {
            return Err(ShipError::Unreachable(
                "no nats transport configured".into(),
            ));
        };
        let messages = events
            .iter()
            .map(|e| Ok((e.id.clone(), self.sign_batch(std::slice::from_ref(e))?)))
            .collect::<Result<Vec<_>, ShipError>>()?;
        let mut js = bus.js.lock().await;
        if js.is_none() {
            *js = Some(
                bus.config
                    .connect()
                    .await
                    .map_err(|e| ShipError::Unreachable(e.to_string()))?,
            );
        }
        let Some(context) = js.as_ref() else {
            return Err(ShipError::Unreachable("nats not connected".into()));
        };
        let stored = eventbus::publish_all(context, &bus.subject, messages)
            .await
            .map_err(|e| ShipError::Unreachable(e.to_string()))?;
        let now = Instant::now();
        if let Ok(mut at) = bus.published_at.lock() {
            for id in &stored {
                at.insert(id.clone(), now);
            }
        }
        Ok(stored.into_iter().collect())
    }

    /// NATS path, second stage: asks the log where the published events sit, checks the
    /// answer like a batch answer, keeps the receipts. Events still missing after
    /// [`REPUBLISH_AFTER`] are published again. Returns how many were confirmed.
    pub async fn confirm_once(&self) -> Result<usize, ShipError> {
        let events = self.claim(OutboxStage::Published).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let queries: Vec<Value> = events
            .iter()
            .map(|e| {
                let leaf = log::leaf_hash(&leaf_bytes(&LogEntry::Access { event: e.clone() }));
                json!({"id": e.id, "leafHash": hex::encode(leaf)})
            })
            .collect();
        let answer: ReceiptsResponse = self
            .post_json(
                "v1/receipts",
                &json!({"custodian": self.key.did(), "events": queries}),
            )
            .await?;
        if !answer.conflicts.is_empty() {
            return Err(ShipError::Inconsistent(format!(
                "{} event(s) logged with content this gateway did not send",
                answer.conflicts.len()
            )));
        }
        let stored = self
            .keep_receipts(
                &events,
                &answer.checkpoint,
                &answer.receipts,
                OutboxStage::Published,
            )
            .await?;
        metrics::counter!("fedgate_events_shipped_total").increment(stored.len() as u64);
        self.republish_stale(&events, &stored).await;
        Ok(stored.len())
    }

    async fn republish_stale(&self, events: &[AccessEvent], confirmed: &[String]) {
        let Some(bus) = &self.bus else { return };
        let confirmed: HashSet<&String> = confirmed.iter().collect();
        let stale: Vec<AccessEvent> = {
            let Ok(mut at) = bus.published_at.lock() else {
                return;
            };
            for id in &confirmed {
                at.remove(*id);
            }
            let now = Instant::now();
            // Events whose receipts another replica collected (it took them over while
            // this one was stalled) are never confirmed here: forgotten after a while.
            at.retain(|_, published| now.duration_since(*published) < REPUBLISH_AFTER * 20);
            events
                .iter()
                .filter(|e| !confirmed.contains(&e.id))
                .filter(|e| {
                    now.duration_since(*at.entry(e.id.clone()).or_insert(now)) >= REPUBLISH_AFTER
                })
                .cloned()
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        match self.publish(&stale).await {
            Ok(n) => tracing::warn!(
                events = n.len(),
                "published events still without a receipt were published again"
            ),
            Err(e) => tracing::warn!(error = %e, "publishing again failed; will retry"),
        }
    }

    /// Checks an answer from the log and keeps its receipts: the checkpoint's signature,
    /// its consistency with the last accepted one, each receipt naming an event that was
    /// sent and lying inside the checkpoint, and the inclusion of the first and last
    /// receipt. The receipts, the adopted checkpoint and the removal of their events from
    /// `stage` of the outbox are one write: an event leaves the outbox exactly when its
    /// receipt is kept. Returns the ids whose receipts are now on disk.
    async fn keep_receipts(
        &self,
        sent: &[AccessEvent],
        note: &str,
        receipts: &[wire::Receipt],
        stage: OutboxStage,
    ) -> Result<Vec<String>, ShipError> {
        let verifier = self.note_verifier().await?;
        let cp = checkpoint::open(note, std::slice::from_ref(&verifier))
            .map_err(|e| ShipError::BadAnswer(format!("checkpoint: {e}")))?;

        let by_id: HashMap<&str, &AccessEvent> = sent.iter().map(|e| (e.id.as_str(), e)).collect();
        let mut stored = Vec::with_capacity(receipts.len());
        let mut kept = Vec::with_capacity(receipts.len());
        for (i, r) in receipts.iter().enumerate() {
            let Some(event) = by_id.get(r.event_id.as_str()) else {
                return Err(ShipError::BadAnswer("receipt for an event not sent".into()));
            };
            if r.leaf_index >= cp.size {
                return Err(ShipError::BadAnswer("receipt beyond its checkpoint".into()));
            }
            // Spot-check inclusion of the first and last event of every answer.
            if i == 0 || i + 1 == receipts.len() {
                let proof = self
                    .get_json(&format!(
                        "v1/proofs/inclusion?index={}&size={}",
                        r.leaf_index, cp.size
                    ))
                    .await?;
                let leaf = log::leaf_hash(&leaf_bytes(&LogEntry::Access {
                    event: (*event).clone(),
                }));
                log::verify_inclusion(
                    &leaf,
                    r.leaf_index,
                    cp.size,
                    &Self::hashes(&proof)?,
                    &cp.root,
                )
                .map_err(|e| {
                    ShipError::Inconsistent(format!("inclusion of {}: {e}", r.event_id))
                })?;
            }
            let receipt = Receipt {
                event_id: r.event_id.clone(),
                leaf_index: r.leaf_index,
                tree_size: cp.size,
                checkpoint: note.to_string(),
            };
            let bytes =
                serde_json::to_vec(&receipt).map_err(|e| ShipError::Storage(e.to_string()))?;
            kept.push(bytes);
            stored.push(r.event_id.clone());
        }
        let adopted = serde_json::to_vec(&Adopted {
            size: cp.size,
            root: hex::encode(cp.root),
            note: Some(note.to_string()),
        })
        .map_err(|e| ShipError::Storage(e.to_string()))?;
        let kept: Arc<Vec<(String, Vec<u8>)>> =
            Arc::new(stored.iter().cloned().zip(kept).collect());
        let adopted = Arc::new(adopted);
        // Replicas adopt checkpoints into one shared `log_state`, each from its own
        // answers, which may cross: the checkpoint checked against is read again inside
        // the write, and when another shipper adopted one meanwhile, this answer is checked
        // again against that one. So every adopted checkpoint was proved to extend the one
        // before it, whichever replica adopted either.
        for _ in 0..ADOPT_ATTEMPTS {
            let last = Adopted::load(&self.state)?;
            self.check_consistency(last.as_ref(), cp.size, &cp.root)
                .await?;
            let checked = last.map(|l| (l.size, l.root));
            let (receipts_tree, state, outbox) = (
                self.receipts.clone(),
                self.state.clone(),
                self.outbox.clone(),
            );
            let (kept, adopted, size) = (kept.clone(), adopted.clone(), cp.size);
            let done = self
                .db
                .write(move |tx| {
                    let current = tx
                        .get(&state, LAST_CHECKPOINT)?
                        .and_then(|v| serde_json::from_slice::<Adopted>(&v).ok())
                        .map(|a| (a.size, a.root));
                    let adopt = if current == checked {
                        checked.as_ref().is_none_or(|(last, _)| size >= *last)
                    } else if checked.as_ref().is_some_and(|(last, _)| size <= *last) {
                        // This checkpoint is a prefix of the one checked against, which
                        // the one adopted since extends: consistent, and not adopted.
                        false
                    } else {
                        return Ok(false);
                    };
                    let ids: Vec<String> = kept.iter().map(|(id, _)| id.clone()).collect();
                    for (id, bytes) in kept.iter() {
                        tx.insert(&receipts_tree, id.as_bytes(), bytes)?;
                    }
                    if adopt {
                        tx.insert(&state, LAST_CHECKPOINT, &adopted)?;
                    }
                    outbox.settle(tx, stage, &ids)?;
                    Ok::<bool, StoreError>(true)
                })
                .await
                .map_err(|e| ShipError::Storage(e.to_string()))?;
            if done {
                self.adopted_now();
                return Ok(stored);
            }
        }
        Err(ShipError::Contended)
    }

    /// Checks that a checkpoint is consistent with `last`, the last adopted one: it
    /// extends it, or, when another replica adopted a later one first (their answers
    /// crossed), it is a prefix of it. A log that cannot prove the adopted checkpoint
    /// extends a smaller one it just signed has shrunk: inconsistent.
    async fn check_consistency(
        &self,
        last: Option<&Adopted>,
        size: u64,
        root: &log::Hash,
    ) -> Result<(), ShipError> {
        let Some(last) = last else {
            return Ok(());
        };
        let last_root = last.root_hash()?;
        if size >= last.size {
            return self.prove_extends(last.size, &last_root, size, root).await;
        }
        match self.prove_extends(size, root, last.size, &last_root).await {
            Err(ShipError::Refused { status, detail })
                if (400..500).contains(&status) && status != 408 && status != 429 =>
            {
                Err(ShipError::Inconsistent(format!(
                    "the log shrank from {} to {size}: it refused to prove the one extends the \
                     other ({status}, {detail})",
                    last.size
                )))
            }
            other => other,
        }
    }

    /// Asks the log to prove that the tree of `new_size` leaves with `new_root` extends the
    /// one of `old_size` with `old_root` (RFC 6962 consistency); any disagreement is
    /// [`ShipError::Inconsistent`].
    pub(crate) async fn prove_extends(
        &self,
        old_size: u64,
        old_root: &log::Hash,
        new_size: u64,
        new_root: &log::Hash,
    ) -> Result<(), ShipError> {
        if new_size < old_size {
            return Err(ShipError::Inconsistent(format!(
                "the log shrank from {old_size} to {new_size}"
            )));
        }
        if new_size == old_size {
            if old_root != new_root {
                return Err(ShipError::Inconsistent("same size, different root".into()));
            }
        } else if old_size > 0 {
            let proof = self
                .get_json(&format!(
                    "v1/proofs/consistency?old={old_size}&new={new_size}"
                ))
                .await?;
            log::verify_consistency(
                old_size,
                new_size,
                old_root,
                new_root,
                &Self::hashes(&proof)?,
            )
            .map_err(|e| ShipError::Inconsistent(e.to_string()))?;
        }
        Ok(())
    }

    /// The checkpoint adopted last, if any.
    pub(crate) fn adopted(&self) -> Result<Option<Adopted>, ShipError> {
        Adopted::load(&self.state)
    }

    /// A checked checkpoint was adopted (kept on disk, in the write that kept its
    /// receipts, only once the whole answer carrying it passed its checks): any incident
    /// is over.
    fn adopted_now(&self) {
        metrics::gauge!("fedgate_log_inconsistent").set(0.0);
        self.in_incident.store(false, Ordering::SeqCst);
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

/// Replicas: shippers of one gateway over one shared database, against a log that keeps
/// every batch it receives, re-sends included.
#[cfg(test)]
mod replica_tests {
    use std::sync::Mutex;

    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use federation::checkpoint::Checkpoint;
    use federation::keys::KeyAlgorithm;
    use federation::wire::{BatchPayload, BatchRequest};

    use super::*;

    const LOG_DID: &str = "did:web:log.test";
    const GATEWAY_DID: &str = "did:web:hospital-a.test";

    #[derive(Default)]
    struct Leaves {
        hashes: Vec<log::Hash>,
        index: HashMap<String, u64>,
        /// Every event id of every batch received, in order, re-sends included.
        received: Vec<String>,
        /// Batches received.
        batches: usize,
    }

    #[derive(Clone)]
    struct FakeLog {
        key: Arc<KeyPair>,
        leaves: Arc<Mutex<Leaves>>,
        base: reqwest::Url,
    }

    impl FakeLog {
        async fn start() -> FakeLog {
            let key = KeyPair::generate_did_web(LOG_DID, KeyAlgorithm::Ed25519).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = reqwest::Url::parse(&format!("http://{}/", listener.local_addr().unwrap()))
                .unwrap();
            let log = FakeLog {
                key: Arc::new(key),
                leaves: Arc::default(),
                base,
            };
            let app =
                Router::new()
                    .route(
                        "/.well-known/did.json",
                        get(|State(l): State<FakeLog>| async move {
                            Json(l.key.did_document().unwrap())
                        }),
                    )
                    .route("/v1/batches", post(batches))
                    .route("/v1/proofs/inclusion", get(inclusion))
                    .route("/v1/proofs/consistency", get(consistency))
                    .with_state(log.clone());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            log
        }

        fn received(&self) -> Vec<String> {
            self.leaves.lock().unwrap().received.clone()
        }

        fn size(&self) -> u64 {
            self.leaves.lock().unwrap().hashes.len() as u64
        }

        /// Loses every leaf from `size` on, as a log restored from an old backup would.
        fn truncate(&self, size: usize) {
            let mut leaves = self.leaves.lock().unwrap();
            leaves.hashes.truncate(size);
            leaves.index.retain(|_, i| *i < size as u64);
        }

        /// A shipper of hospital A's gateway (every replica has the same key and
        /// configuration) over `outbox`.
        fn shipper(&self, db: &Db, outbox: &Outbox, key: &KeyPair) -> Shipper {
            let resolver = Arc::new(DidResolver::new(true));
            resolver.allow_web(LOG_DID, self.base.clone());
            let config = VisibilityConfig {
                endpoint: self.base.to_string(),
                did: LOG_DID.into(),
                batch_size: 10,
                interval_ms: 10,
                linger_ms: 0,
                transport: Transport::Https,
                nats: None,
                peers: Vec::new(),
                gossip_interval_ms: default_gossip_interval(),
            };
            Shipper::new(db, outbox.clone(), key.clone(), config, resolver, true).unwrap()
        }
    }

    /// RFC 6962 MTH.
    fn root(leaves: &[log::Hash]) -> log::Hash {
        match leaves.len() {
            0 => log::empty_root(),
            1 => leaves[0],
            n => {
                let k = log::split_point(n as u64) as usize;
                log::node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
            }
        }
    }

    /// RFC 6962 PATH(m, D[n]).
    fn path(m: usize, leaves: &[log::Hash]) -> Vec<log::Hash> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let k = log::split_point(leaves.len() as u64) as usize;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(root(&leaves[..k]));
            p
        }
    }

    /// RFC 6962 SUBPROOF(m, D[n], b).
    fn subproof(m: usize, leaves: &[log::Hash], whole: bool) -> Vec<log::Hash> {
        let n = leaves.len();
        if m == n {
            return if whole {
                Vec::new()
            } else {
                vec![root(leaves)]
            };
        }
        let k = log::split_point(n as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &leaves[..k], whole);
            p.push(root(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(root(&leaves[..k]));
            p
        }
    }

    fn hex_proof(proof: Vec<log::Hash>) -> Json<Value> {
        Json(json!({"proof": proof.iter().map(hex::encode).collect::<Vec<_>>()}))
    }

    async fn batches(State(log): State<FakeLog>, Json(request): Json<BatchRequest>) -> Json<Value> {
        let payload = request.batch.split('.').nth(1).unwrap();
        let payload: BatchPayload =
            serde_json::from_slice(&federation::b64::decode(payload).unwrap()).unwrap();
        let mut leaves = log.leaves.lock().unwrap();
        leaves.batches += 1;
        let mut receipts = Vec::new();
        for event in payload.events {
            leaves.received.push(event.id.clone());
            let duplicate = leaves.index.contains_key(&event.id);
            let leaf_index = match leaves.index.get(&event.id) {
                Some(i) => *i,
                None => {
                    let leaf = log::leaf_hash(&leaf_bytes(&LogEntry::Access {
                        event: event.clone(),
                    }));
                    leaves.hashes.push(leaf);
                    let i = leaves.hashes.len() as u64 - 1;
                    leaves.index.insert(event.id.clone(), i);
                    i
                }
            };
            receipts.push(wire::Receipt {
                event_id: event.id,
                leaf_index,
                duplicate,
            });
        }
        let size = leaves.hashes.len() as u64;
        let signing = log.key.ed25519_signing_key().unwrap();
        let checkpoint = Checkpoint::new(LOG_DID, size, root(&leaves.hashes))
            .sign(LOG_DID, &signing)
            .unwrap();
        Json(json!(BatchResponse {
            receipts,
            tree_size: size,
            checkpoint,
        }))
    }

    async fn inclusion(
        State(log): State<FakeLog>,
        Query(q): Query<HashMap<String, usize>>,
    ) -> Result<Json<Value>, StatusCode> {
        let leaves = log.leaves.lock().unwrap();
        let (index, size) = (q["index"], q["size"]);
        if index >= size || size > leaves.hashes.len() {
            return Err(StatusCode::BAD_REQUEST);
        }
        Ok(hex_proof(path(index, &leaves.hashes[..size])))
    }

    async fn consistency(
        State(log): State<FakeLog>,
        Query(q): Query<HashMap<String, usize>>,
    ) -> Result<Json<Value>, StatusCode> {
        let leaves = log.leaves.lock().unwrap();
        let (old, new) = (q["old"], q["new"]);
        if old == 0 || old > new || new > leaves.hashes.len() {
            return Err(StatusCode::BAD_REQUEST);
        }
        Ok(hex_proof(subproof(old, &leaves.hashes[..new], true)))
    }

    fn event(n: u32) -> AccessEvent {
        serde_json::from_value(json!({
            "id": format!("0190c3a0-0000-7000-8000-{n:012}"),
            "time": "2026-11-01T10:00:00Z",
            "custodian": GATEWAY_DID,
            "domain": "clinical",
            "purpose": "TREAT",
            "decision": "allow",
            "decisionId": format!("0190c3a0-0000-7000-8000-{n:012}"),
        }))
        .unwrap()
    }

    /// Sorted, with re-sends: a list without duplicates says each went once.
    fn sorted(mut ids: Vec<String>) -> Vec<String> {
        ids.sort();
        ids
    }

    fn gateway_key() -> KeyPair {
        KeyPair::generate_did_web(GATEWAY_DID, KeyAlgorithm::Ed25519).unwrap()
    }

    /// Two replicas' shippers, rounds side by side over one outbox: each claims a batch
    /// the other does not hold, so between them every event is sent exactly once, every
    /// receipt is kept, and the claims are gone with the events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_shippers_over_one_database_ship_every_event_once() {
        let log = FakeLog::start().await;
        let db = crate::db::temporary().unwrap();
        let outbox = Outbox::open(&db, 1_000);
        let key = gateway_key();
        let (a, b) = (
            log.shipper(&db, &outbox, &key),
            log.shipper(&db, &outbox, &key),
        );
        for n in 0..95 {
            outbox.append(event(n)).await.unwrap();
        }
        let (mut by_a, mut by_b) = (0, 0);
        while !outbox.is_empty() {
            let (x, y) = tokio::join!(a.ship_once(), b.ship_once());
            by_a += x.unwrap();
            by_b += y.unwrap();
        }
        assert_eq!(by_a + by_b, 95);
        assert!(by_a > 0 && by_b > 0, "{by_a} and {by_b}: both shipped");
        let all: Vec<String> = (0..95).map(|n| event(n).id).collect();
        assert_eq!(sorted(log.received()), all);
        assert!(all.iter().all(|id| a.receipt(id).is_some()));
        assert_eq!(a.receipt_count(), 95);
        assert_eq!(outbox.claims_len(), 0);
        assert_eq!(a.adopted().unwrap().unwrap().size, 95);
    }

    /// The same with the shippers' own loops running while requests append: nothing is
    /// sent twice, nothing is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_running_shippers_share_the_outbox_while_it_fills() {
        let log = FakeLog::start().await;
        let db = crate::db::temporary().unwrap();
        let outbox = Outbox::open(&db, 1_000);
        let key = gateway_key();
        let a = Arc::new(log.shipper(&db, &outbox, &key));
        let b = Arc::new(log.shipper(&db, &outbox, &key));
        let loops: Vec<_> = a.clone().spawn().into_iter().chain(b.spawn()).collect();
        for n in 0..150 {
            outbox.append(event(n)).await.unwrap();
            if n % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        let drained = async {
            while !outbox.is_empty() || a.receipt_count() < 150 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), drained)
            .await
            .expect("150 events shipped within 60 s");
        for l in loops {
            l.abort();
        }
        let all: Vec<String> = (0..150).map(|n| event(n).id).collect();
        assert_eq!(sorted(log.received()), all);
        assert_eq!(outbox.claims_len(), 0);
    }

    /// A busy gateway's events leave in batches of many: after a batch short of its size,
    /// the shipper waits its linger, and what came meanwhile leaves in one batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_short_batch_the_shipper_lingers_for_more() {
        let log = FakeLog::start().await;
        let db = crate::db::temporary().unwrap();
        let outbox = Outbox::open(&db, 1_000);
        let key = gateway_key();
        let mut shipper = log.shipper(&db, &outbox, &key);
        // Long enough for nine appends on a loaded machine; the idle sleep is longer still,
        // so that only the linger can end the wait.
        shipper.config.linger_ms = 2_000;
        shipper.config.interval_ms = 30_000;
        outbox.append(event(0)).await.unwrap();
        let shipper = Arc::new(shipper);
        let loops = shipper.clone().spawn();
        let first = async {
            while shipper.receipt_count() < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), first)
            .await
            .expect("the first event shipped");
        let appends = (1..10).map(|n| {
            let outbox = outbox.clone();
            async move { outbox.append(event(n)).await.unwrap() }
        });
        futures::future::join_all(appends).await;
        let drained = async {
            while shipper.receipt_count() < 10 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .expect("ten events shipped");
        for l in loops {
            l.abort();
        }
        assert_eq!(log.received().len(), 10);
        assert_eq!(log.leaves.lock().unwrap().batches, 2);
    }

    /// A replica that claimed a batch and stopped: the other ships everything else at
    /// once, and that batch once the claim's lease is over, each event once.
    #[tokio::test]
    async fn a_stopped_shippers_claim_is_taken_over_after_its_lease() {
        let log = FakeLog::start().await;
        let db = crate::db::temporary().unwrap();
        let outbox = Outbox::open(&db, 1_000);
        let key = gateway_key();
        let mut stopped = log.shipper(&db, &outbox, &key);
        // Long enough for the other's rounds below on a loaded machine, short for a test.
        stopped.lease = Duration::from_secs(2);
        let live = log.shipper(&db, &outbox, &key);
        assert_eq!(live.lease, CLAIM_LEASE);
        for n in 0..25 {
            outbox.append(event(n)).await.unwrap();
        }
        let held = stopped.claim(OutboxStage::Pending).await.unwrap();
        assert_eq!(held.len(), 10);

        while live.ship_once().await.unwrap() > 0 {}
        assert_eq!(outbox.len(), 10);
        assert!(held.iter().all(|e| outbox.get(&e.id).is_some()));
        assert_eq!(log.received().len(), 15);

        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(live.ship_once().await.unwrap(), 10);
        assert!(outbox.is_empty());
        let all: Vec<String> = (0..25).map(|n| event(n).id).collect();
        assert_eq!(sorted(log.received()), all);
    }

    /// Answers that cross: one replica's answer (a smaller checkpoint) is kept after the
    /// other adopted a later one. It is proved a prefix of that one, its receipts are kept,
    /// and the later checkpoint stays adopted: no alarm. A log that really shrank still is
    /// one.
    #[tokio::test]
    async fn a_crossed_answer_is_no_alarm_but_a_shrunk_log_is() {
        let log = FakeLog::start().await;
        let db = crate::db::temporary().unwrap();
        let outbox = Outbox::open(&db, 1_000);
        let key = gateway_key();
        let (a, b) = (
            log.shipper(&db, &outbox, &key),
            log.shipper(&db, &outbox, &key),
        );
        for n in 0..20 {
            outbox.append(event(n)).await.unwrap();
        }
        let first = b.claim(OutboxStage::Pending).await.unwrap();
        let batch = b.sign_batch(&first).unwrap();
        let answer: BatchResponse = b
            .post_json("v1/batches", &wire::BatchRequestRef { batch: &batch })
            .await
            .unwrap();
        assert_eq!(answer.tree_size, 10);
        assert_eq!(a.ship_once().await.unwrap(), 10);
        assert_eq!(a.adopted().unwrap().unwrap().size, 20);

        let kept = b
            .keep_receipts(
                &first,
                &answer.checkpoint,
                &answer.receipts,
                OutboxStage::Pending,
            )
            .await
            .unwrap();
        assert_eq!(kept.len(), 10);
        assert!(outbox.is_empty());
        assert_eq!(b.adopted().unwrap().unwrap().size, 20);
        assert_eq!(b.receipt(&first[0].id).unwrap().tree_size, 10);

        // Leaves lost past 15, and a new event logged at 15: a checkpoint of 16 that the
        // log cannot prove the adopted 20 extends.
        log.truncate(15);
        outbox.append(event(20)).await.unwrap();
        assert!(matches!(
            a.ship_once().await,
            Err(ShipError::Inconsistent(_))
        ));
        assert_eq!(log.size(), 16);
        assert_eq!(a.adopted().unwrap().unwrap().size, 20);
        assert_eq!(outbox.len(), 1);
    }
}
