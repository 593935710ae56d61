//! The durable access-event outbox.
//!
//! Every decision's event is written here, and fsynced, before the response leaves: an
//! access that cannot be recorded is not served. Writes are group-committed by one task:
//! concurrent requests share a single fsync, and none is acknowledged before it.
//! When the outbox holds its configured maximum, new exchanges are refused (503) rather
//! than served unrecorded; it drains as the shipper delivers events.
//!
//! On the NATS path an event goes through a second stage: once the stream has stored it,
//! it moves to the `published` tree (it is recorded, so it no longer counts against the
//! bound) and stays there until the log's receipt for it is kept.

use federation::events::AccessEvent;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("the access-event outbox is full; refusing to serve unrecorded access")]
    Full,
    #[error("the access-event outbox is unavailable: {0}")]
    Storage(String),
    /// The event's free text is outside what events may carry; it is not recorded, so
    /// the access is not served.
    #[error("the access event cannot be recorded: {0}")]
    Invalid(federation::events::EventTextError),
}

type Pending = (AccessEvent, oneshot::Sender<Result<(), OutboxError>>);

#[derive(Clone)]
pub struct Outbox {
    tree: sled::Tree,
    /// Handed to NATS JetStream, waiting for the log's receipt.
    published: sled::Tree,
    max_events: usize,
    tx: mpsc::Sender<Pending>,
}

impl Outbox {
    /// Opens the outbox and starts its committer task (needs a tokio runtime).
    pub fn start(db: &sled::Db, max_events: usize) -> Result<Self, OutboxError> {
        let tree = db
            .open_tree("outbox")
            .map_err(|e| OutboxError::Storage(e.to_string()))?;
        let published = db
            .open_tree("outbox_published")
            .map_err(|e| OutboxError::Storage(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Pending>(4096);
        tokio::spawn(committer(db.clone(), tree.clone(), rx));
        Ok(Outbox {
            tree,
            published,
            max_events,
            tx,
        })
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Events handed to NATS that have no receipt yet.
    pub fn awaiting_len(&self) -> usize {
        self.published.len()
    }

    /// Events without a receipt, wherever they wait.
    pub fn unconfirmed_len(&self) -> usize {
        self.len() + self.awaiting_len()
    }

    /// Whether a new exchange may start (there is room for its event).
    pub fn has_room(&self) -> bool {
        self.tree.len() < self.max_events
    }

    /// Appends an event; returns once it is on disk.
    ///
    /// Every event passes here, so this is where its free text is brought inside the
    /// event vocabulary (reasons outside it withheld, the justification scrubbed of
    /// identifier-shaped text) and checked exactly as the visibility service will check
    /// it: an event the log would refuse is never recorded, and never blocks a batch.
    pub async fn append(&self, mut event: AccessEvent) -> Result<(), OutboxError> {
        if !self.has_room() {
            return Err(OutboxError::Full);
        }
        let changed = federation::events::confine_free_text(&mut event);
        if changed > 0 {
            // Counts only: what was withheld is exactly what must not be logged.
            tracing::warn!(
                decision_id = %event.decision_id,
                changed,
                "access-event free text withheld or scrubbed to fit the event vocabulary"
            );
        }
        federation::events::check_free_text(&event).map_err(OutboxError::Invalid)?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send((event, done))
            .await
            .map_err(|_| OutboxError::Storage("committer stopped".into()))?;
        wait.await
            .map_err(|_| OutboxError::Storage("committer stopped".into()))?
    }

    /// The oldest `limit` events, in id (time) order.
    pub fn pending(&self, limit: usize) -> Vec<AccessEvent> {
        oldest(&self.tree, limit)
    }

    /// The oldest `limit` published events still waiting for a receipt.
    pub fn awaiting(&self, limit: usize) -> Vec<AccessEvent> {
        oldest(&self.published, limit)
    }

    /// Moves events the stream has stored to the published stage. The copy is on disk
    /// before the original goes, so a crash in between leaves the event in both stages:
    /// it is published again, and the stream and the log both drop the duplicate.
    pub async fn mark_published(&self, events: &[AccessEvent]) -> Result<(), OutboxError> {
        let storage = |e: sled::Error| OutboxError::Storage(e.to_string());
        let mut copy = sled::Batch::default();
        for event in events {
            let bytes =
                serde_json::to_vec(event).map_err(|e| OutboxError::Storage(e.to_string()))?;
            copy.insert(event.id.as_bytes(), bytes);
        }
        self.published.apply_batch(copy).map_err(storage)?;
        self.published.flush_async().await.map_err(storage)?;
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        self.acknowledge(&ids).await
    }

    /// Removes published events whose receipts are kept.
    pub async fn confirm(&self, ids: &[String]) -> Result<(), OutboxError> {
        remove(&self.published, ids).await
    }

    pub fn get(&self, id: &str) -> Option<AccessEvent> {
        let v = self.tree.get(id.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Removes delivered events.
    pub async fn acknowledge(&self, ids: &[String]) -> Result<(), OutboxError> {
        remove(&self.tree, ids).await
    }
}

fn oldest(tree: &sled::Tree, limit: usize) -> Vec<AccessEvent> {
    tree.iter()
        .values()
        .flatten()
        .filter_map(|v| serde_json::from_slice::<AccessEvent>(&v).ok())
        // An event queued before the event vocabulary existed would be refused by the log
        // every time it is sent, and the outbox would fill: it is brought inside the
        // vocabulary as it leaves, the same way every time, so its leaf stays one.
        .map(|mut event| {
            federation::events::confine_free_text(&mut event);
            event
        })
        .take(limit)
        .collect()
}

async fn remove(tree: &sled::Tree, ids: &[String]) -> Result<(), OutboxError> {
    let mut batch = sled::Batch::default();
    for id in ids {
        batch.remove(id.as_bytes());
    }
    tree.apply_batch(batch)
        .map_err(|e| OutboxError::Storage(e.to_string()))?;
    tree.flush_async()
        .await
        .map_err(|e| OutboxError::Storage(e.to_string()))?;
    Ok(())
}

async fn committer(db: sled::Db, tree: sled::Tree, mut rx: mpsc::Receiver<Pending>) {
    let mut batch_waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        batch_waiters.clear();
        let mut batch = sled::Batch::default();
        let push =
            |(event, done): Pending, batch: &mut sled::Batch| match serde_json::to_vec(&event) {
                Ok(bytes) => {
                    batch.insert(event.id.as_bytes(), bytes);
                    Some(done)
                }
                Err(e) => {
                    let _ = done.send(Err(OutboxError::Storage(e.to_string())));
                    None
                }
            };
        batch_waiters.extend(push(first, &mut batch));
        // Take whatever else is already waiting: one fsync for all of it.
        while batch_waiters.len() < 1024 {
            match rx.try_recv() {
                Ok(p) => batch_waiters.extend(push(p, &mut batch)),
                Err(_) => break,
            }
        }
        let result = tree
            .apply_batch(batch)
            .map_err(|e| OutboxError::Storage(e.to_string()));
        let result = match result {
            Ok(()) => db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| OutboxError::Storage(e.to_string())),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "outbox write failed");
        }
        for done in batch_waiters.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use federation::events;

    /// An event written before the vocabulary existed (a verification detail quoting an
    /// identifier) leaves the outbox inside the vocabulary, and the same at every read.
    #[tokio::test]
    async fn events_queued_before_the_vocabulary_leave_inside_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let outbox = super::Outbox::start(&db, 10).unwrap();
        let mut event: super::AccessEvent = serde_json::from_value(serde_json::json!({
            "id": "0190c3a0-0000-7000-8000-000000000001",
            "time": "2026-11-01T10:00:00Z",
            "custodian": "did:web:hospital-a.example",
            "domain": "clinical",
            "purpose": "TREAT",
            "decision": "deny",
            "decisionId": "0190c3a0-0000-7000-8000-000000000001",
        }))
        .unwrap();
        event.reasons =
            vec!["presentation: schema check failed: \"999-77-0001\" is not valid".into()];
        assert!(events::check_free_text(&event).is_err());
        outbox
            .tree
            .insert(event.id.as_bytes(), serde_json::to_vec(&event).unwrap())
            .unwrap();
        let first = outbox.pending(10);
        assert_eq!(first.len(), 1);
        assert_eq!(events::check_free_text(&first[0]), Ok(()));
        assert!(
            !first[0].reasons.concat().contains("999"),
            "{:?}",
            first[0].reasons
        );
        assert_eq!(first, outbox.pending(10));
    }

    /// What the gateway accepts and decides on is what its events may carry: a purpose,
    /// domain or identifier class the gateway knows but the event vocabulary does not would
    /// make every such event unrecordable (the exchange fails closed, 503).
    #[test]
    fn the_gateways_closed_sets_are_inside_the_event_vocabulary() {
        for p in crate::exchange::PURPOSES {
            assert!(events::PURPOSES.contains(&p), "{p}");
        }
        for d in crate::policy::DOMAINS {
            assert!(events::DOMAINS.contains(&d), "{d}");
        }
        let mut gateway = crate::policy::IDENTIFIER_CLASSES.to_vec();
        let mut event = events::IDENTIFIER_CLASSES.to_vec();
        gateway.sort_unstable();
        event.sort_unstable();
        assert_eq!(gateway, event);
        // Exhaustive: a new check does not compile here until it is listed below.
        let _listed = |c: federation::Check| {
            use federation::Check::*;
            match c {
                Format | Proof | Validity | Challenge | Domain | Schema | IssuerTrust | Status
                | HolderBinding => (),
            }
        };
        for check in [
            federation::Check::Format,
            federation::Check::Proof,
            federation::Check::Validity,
            federation::Check::Challenge,
            federation::Check::Domain,
            federation::Check::Schema,
            federation::Check::IssuerTrust,
            federation::Check::Status,
            federation::Check::HolderBinding,
        ] {
            assert!(
                events::VERIFICATION_CHECKS.contains(&check.as_str()),
                "{check}"
            );
        }
    }
}
