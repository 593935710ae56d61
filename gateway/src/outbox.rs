//! The durable access-event outbox.
//!
//! Every decision's event is written here, and on disk (the commit's `fdatasync`
//! returned), before the response leaves: an access that cannot be recorded is not
//! served. Concurrent appends share one commit (the database's group commit), and none is
//! acknowledged before it. When the outbox holds its configured maximum, new exchanges are
//! refused (503) rather than served unrecorded; it drains as the shipper delivers events.
//! The bound is checked in the same write that appends, so it holds under any concurrency.
//!
//! On the NATS path an event goes through a second stage: once the stream has stored it,
//! it moves to the `published` tree (it is recorded, so it no longer counts against the
//! bound) and stays there until the log's receipt for it is kept.
//!
//! Replicas of one gateway (processes with one configuration sharing one database) share
//! this one outbox: each appends to it, the bound holds across them (writes run one at a
//! time across replicas), and readiness reports the shared outbox at every replica. Each
//! replica's shipper ships it, so a shipper first claims the batch it is about to hand
//! on ([`Outbox::claim`]): events another live shipper claimed are skipped, a claim ends
//! in the write that removes its event, and the claims of a replica that stopped lapse
//! with their lease, after which another replica ships those events.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Duration;

use federation::events::AccessEvent;
use rand::RngCore as _;
use service::nonce::Unspent;
use storage::{Snapshot, StoreError, WriteTx};

use crate::db::{Db, Tree};

/// The trees this module owns.
const PENDING_TREE: &str = "outbox";
const PUBLISHED_TREE: &str = "outbox_published";
/// Claims: event id → the claiming shipper's [`ClaimId`] (16 bytes) and the end of its
/// lease (milliseconds since the Unix epoch, 8 bytes big-endian). A tree of its own rather
/// than a field of each entry: a claim, and each renewal of it, writes 24 bytes per event
/// instead of rewriting the event, and the outbox's bound keeps counting events only.
const CLAIMS_TREE: &str = "outbox_claims";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error("the access-event outbox is full; refusing to serve unrecorded access")]
    Full,
    #[error("the access-event outbox is unavailable: {0}")]
    Storage(String),
    /// The challenge the event's write was to spend was used first by another request:
    /// nothing of the write is kept.
    #[error("unknown or already used challenge")]
    Replayed,
    /// The event's free text is outside what events may carry; it is not recorded, so
    /// the access is not served.
    #[error("the access event cannot be recorded: {0}")]
    Invalid(federation::events::EventTextError),
}

impl From<StoreError> for OutboxError {
    fn from(e: StoreError) -> Self {
        OutboxError::Storage(e.to_string())
    }
}

/// Which stage an event waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Not yet handed to the log (or to the stream).
    Pending,
    /// Handed to NATS JetStream, waiting for the log's receipt.
    Published,
}

/// Who holds a claim: one random id per shipper, so per process, never reused (a
/// restarted process does not inherit the claims of the one before; they expire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimId([u8; 16]);

impl ClaimId {
    pub fn random() -> ClaimId {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        ClaimId(id)
    }
}

/// A claim as the claims tree holds it.
struct Claim {
    by: ClaimId,
    until_ms: u64,
}

impl Claim {
    fn to_bytes(&self) -> [u8; 24] {
        let mut bytes = [0u8; 24];
        bytes[..16].copy_from_slice(&self.by.0);
        bytes[16..].copy_from_slice(&self.until_ms.to_be_bytes());
        bytes
    }

    /// `None` for a value that is not a claim: no claim, so the event is shipped.
    fn from_bytes(bytes: &[u8]) -> Option<Claim> {
        let by: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let until: [u8; 8] = bytes.get(16..)?.try_into().ok()?;
        Some(Claim {
            by: ClaimId(by),
            until_ms: u64::from_be_bytes(until),
        })
    }
}

/// Reads the same way from a snapshot and inside a write: claims are looked for in a
/// snapshot first, and taken inside a write.
enum Reader<'r, 't> {
    Snapshot(&'r Snapshot),
    Write(&'r mut WriteTx<'t>),
}

impl Reader<'_, '_> {
    fn scan(
        &mut self,
        tree: &Tree,
        f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        match self {
            Reader::Snapshot(snapshot) => snapshot.scan(tree, .., f),
            Reader::Write(tx) => tx.scan(tree, .., f),
        }
    }
}

/// What a look for claimable events found.
struct Claimable {
    /// The oldest events nobody else holds, with their keys, up to the limit asked.
    events: Vec<(Vec<u8>, AccessEvent)>,
    /// Keys of claims whose lease is over (their events may be gone).
    expired: Vec<Vec<u8>>,
}

#[derive(Clone)]
pub struct Outbox {
    db: Db,
    tree: Tree,
    /// Handed to NATS JetStream, waiting for the log's receipt.
    published: Tree,
    /// Which shipper is handing which event on, until when (see [`Outbox::claim`]).
    claims: Tree,
    max_events: usize,
}

impl Outbox {
    /// The outbox in the gateway's database, holding at most `max_events` unsent events.
    pub fn open(db: &Db, max_events: usize) -> Self {
        Outbox {
            db: db.clone(),
            tree: db.tree(PENDING_TREE),
            published: db.tree(PUBLISHED_TREE),
            claims: db.tree(CLAIMS_TREE),
            max_events,
        }
    }

    /// Events not yet handed on. A storage failure counts as full (see [`Outbox::has_room`]).
    pub fn len(&self) -> usize {
        count(&self.tree)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events handed to NATS that have no receipt yet.
    pub fn awaiting_len(&self) -> usize {
        count(&self.published)
    }

    /// Events without a receipt, wherever they wait.
    pub fn unconfirmed_len(&self) -> usize {
        self.len().saturating_add(self.awaiting_len())
    }

    /// Whether a new exchange may start (there is room for its event). An outbox that
    /// cannot be read has no room: the exchange fails closed.
    pub fn has_room(&self) -> bool {
        match self.tree.len() {
            Ok(n) => n < self.max_events as u64,
            Err(e) => {
                tracing::warn!(error = %e, "the outbox could not be read; refusing new exchanges");
                false
            }
        }
    }

    /// Appends an event; returns once it is on disk.
    ///
    /// Every event passes here, so this is where its free text is brought inside the
    /// event vocabulary (reasons outside it withheld, the justification scrubbed of
    /// identifier-shaped text) and checked exactly as the visibility service will check
    /// it: an event the log would refuse is never recorded, and never blocks a batch.
    pub async fn append(&self, event: AccessEvent) -> Result<(), OutboxError> {
        self.append_spending(event, None).await
    }

    /// [`Outbox::append`], recording in the same write that `challenge` was used: the
    /// event is kept only if the challenge was not used before, and then it is used.
    /// A request that would record its event anyway spends its challenge for free, and
    /// neither is ever on disk without the other.
    pub async fn append_spending(
        &self,
        mut event: AccessEvent,
        challenge: Option<&Unspent>,
    ) -> Result<(), OutboxError> {
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
        let bytes = serde_json::to_vec(&event).map_err(|e| OutboxError::Storage(e.to_string()))?;
        let (tree, max) = (self.tree.clone(), self.max_events as u64);
        let challenge = challenge.cloned();
        let result = self
            .db
            .write(move |tx| {
                // Checked again where it cannot race: the writer runs one write at a time.
                if tx.len(&tree)? >= max {
                    return Err(OutboxError::Full);
                }
                if let Some(challenge) = challenge {
                    if !challenge.spend(tx)? {
                        return Err(OutboxError::Replayed);
                    }
                }
                tx.insert(&tree, event.id.as_bytes(), &bytes)?;
                Ok(())
            })
            .await;
        if let Err(e @ OutboxError::Storage(_)) = &result {
            tracing::error!(error = %e, "outbox write failed");
        }
        result
    }

    /// Claims for `by` up to `limit` of the oldest events of `stage` that no other shipper
    /// holds (never claimed, claimed by a shipper whose lease is over, or already `by`'s,
    /// whose lease is renewed), until `lease` from now; returns them in id (time) order.
    ///
    /// Every replica of the gateway ships the one outbox of their shared database: a
    /// claim, taken in one write (writes run one at a time across replicas), is what keeps
    /// two live shippers from sending the same events. A claim ends with its event (in
    /// the write that removes it, [`Outbox::settle`]) or with its lease: the events of a
    /// shipper that stopped are shipped by another once the lease is over. (A re-send is
    /// safe, the log keeps one leaf per event id; it only must not be routine.) Leases
    /// are wall-clock time, so replicas' clocks must agree to well within a lease (NTP).
    pub(crate) async fn claim(
        &self,
        stage: Stage,
        by: ClaimId,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<AccessEvent>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Looked for in a snapshot first: a round with nothing to claim (an empty outbox,
        // or all of it held by other live shippers) costs no write, which every replica
        // would otherwise take a turn at several times a second.
        let snapshot = self.db.read()?;
        let found = self.claimable(&mut Reader::Snapshot(&snapshot), stage, by, now_ms(), 1)?;
        drop(snapshot);
        if found.events.is_empty() {
            return Ok(Vec::new());
        }
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let outbox = self.clone();
        let claimed = self
            .db
            .write(move |tx| {
                let now = now_ms();
                let found = outbox.claimable(&mut Reader::Write(tx), stage, by, now, limit)?;
                let claim = Claim {
                    by,
                    until_ms: now.saturating_add(lease_ms),
                }
                .to_bytes();
                for (key, _) in &found.events {
                    tx.insert(&outbox.claims, key, &claim)?;
                }
                // A claim left behind by an event removed without it (by an earlier
                // fedgate, which did not claim) would stay forever.
                for key in &found.expired {
                    if tx.get(&outbox.tree, key)?.is_none()
                        && tx.get(&outbox.published, key)?.is_none()
                    {
                        tx.remove(&outbox.claims, key)?;
                    }
                }
                Ok::<_, OutboxError>(found.events)
            })
            .await?;
        Ok(claimed
            .into_iter()
            .map(|(_, mut event)| {
                // As in `oldest`: an event queued before the vocabulary leaves inside it.
                federation::events::confine_free_text(&mut event);
                event
            })
            .collect())
    }

    /// The oldest events of `stage` that `by` may claim at `now`, up to `limit`.
    fn claimable(
        &self,
        reader: &mut Reader<'_, '_>,
        stage: Stage,
        by: ClaimId,
        now: u64,
        limit: usize,
    ) -> Result<Claimable, StoreError> {
        let mut held = HashSet::new();
        let mut expired = Vec::new();
        reader.scan(&self.claims, |key, value| {
            match Claim::from_bytes(value) {
                Some(c) if c.until_ms <= now => expired.push(key.to_vec()),
                Some(c) if c.by != by => {
                    held.insert(key.to_vec());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        })?;
        let mut events = Vec::new();
        reader.scan(self.stage_tree(stage), |key, value| {
            if !held.contains(key) {
                // An entry that does not read as an event is left where it is, as by
                // `oldest`.
                if let Ok(event) = serde_json::from_slice::<AccessEvent>(value) {
                    events.push((key.to_vec(), event));
                }
            }
            if events.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(Claimable { events, expired })
    }

    /// Claims held, live or expired (each for an event still in the outbox).
    pub fn claims_len(&self) -> usize {
        count(&self.claims)
    }

    fn stage_tree(&self, stage: Stage) -> &Tree {
        match stage {
            Stage::Pending => &self.tree,
            Stage::Published => &self.published,
        }
    }

    /// The oldest `limit` events, in id (time) order.
    pub fn pending(&self, limit: usize) -> Vec<AccessEvent> {
        oldest(&self.tree, limit)
    }

    /// The oldest `limit` published events still waiting for a receipt.
    pub fn awaiting(&self, limit: usize) -> Vec<AccessEvent> {
        oldest(&self.published, limit)
    }

    /// Moves events the stream has stored to the published stage, in one write: each is
    /// in exactly one stage at any moment, crash or not. Their claims stay: the shipper
    /// that published them asks for their receipts (and publishes again what the stream
    /// lost), unless its lease ends first.
    pub async fn mark_published(&self, events: &[AccessEvent]) -> Result<(), OutboxError> {
        let mut moved = Vec::with_capacity(events.len());
        for event in events {
            let bytes =
                serde_json::to_vec(event).map_err(|e| OutboxError::Storage(e.to_string()))?;
            moved.push((event.id.clone(), bytes));
        }
        let (tree, published) = (self.tree.clone(), self.published.clone());
        self.db
            .write(move |tx| {
                for (id, bytes) in &moved {
                    tx.insert(&published, id.as_bytes(), bytes)?;
                    tx.remove(&tree, id.as_bytes())?;
                }
                Ok(())
            })
            .await
    }

    /// Removes published events whose receipts are kept.
    pub async fn confirm(&self, ids: &[String]) -> Result<(), OutboxError> {
        self.remove_from(Stage::Published, ids).await
    }

    pub fn get(&self, id: &str) -> Option<AccessEvent> {
        let v = self.tree.get(id.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// Removes delivered events.
    pub async fn acknowledge(&self, ids: &[String]) -> Result<(), OutboxError> {
        self.remove_from(Stage::Pending, ids).await
    }

    async fn remove_from(&self, stage: Stage, ids: &[String]) -> Result<(), OutboxError> {
        let (outbox, ids) = (self.clone(), ids.to_vec());
        self.db
            .write(move |tx| outbox.settle(tx, stage, &ids).map_err(OutboxError::from))
            .await
    }

    /// Removes `ids` from `stage`, and their claims, inside the caller's write: the
    /// shipper removes delivered events in the same write that keeps their receipts.
    pub(crate) fn settle(
        &self,
        tx: &mut WriteTx<'_>,
        stage: Stage,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let tree = self.stage_tree(stage);
        for id in ids {
            tx.remove(tree, id.as_bytes())?;
            tx.remove(&self.claims, id.as_bytes())?;
        }
        Ok(())
    }
}

/// Wall-clock milliseconds, as every replica reads a lease.
fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Entries in `tree`; a storage failure is logged and counts as `usize::MAX` (full).
fn count(tree: &Tree) -> usize {
    match tree.len() {
        Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
        Err(e) => {
            tracing::warn!(error = %e, tree = tree.name(), "the outbox could not be read");
            usize::MAX
        }
    }
}

fn oldest(tree: &Tree, limit: usize) -> Vec<AccessEvent> {
    let mut out = Vec::new();
    if limit == 0 {
        return out;
    }
    let read = tree.scan(.., |_, v| {
        if let Ok(mut event) = serde_json::from_slice::<AccessEvent>(v) {
            // An event queued before the event vocabulary existed would be refused by the
            // log every time it is sent, and the outbox would fill: it is brought inside
            // the vocabulary as it leaves, the same way every time, so its leaf stays one.
            federation::events::confine_free_text(&mut event);
            out.push(event);
        }
        if out.len() >= limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    if let Err(e) = read {
        // Nothing is shipped this round; the shipper asks again.
        tracing::warn!(error = %e, tree = tree.name(), "the outbox could not be read");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(n: u32) -> AccessEvent {
        serde_json::from_value(serde_json::json!({
            "id": format!("0190c3a0-0000-7000-8000-{n:012}"),
            "time": "2026-11-01T10:00:00Z",
            "custodian": "did:web:hospital-a.example",
            "domain": "clinical",
            "purpose": "TREAT",
            "decision": "allow",
            "decisionId": format!("0190c3a0-0000-7000-8000-{n:012}"),
        }))
        .unwrap()
    }

    fn ids(events: &[AccessEvent]) -> Vec<String> {
        events.iter().map(|e| e.id.clone()).collect()
    }

    /// An append returns once the event is on disk: a restart finds every event in its
    /// stage, in order.
    #[tokio::test]
    async fn a_restart_keeps_the_outbox_and_its_stages() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(&crate::db::open(dir.path()).unwrap(), 10);
            for n in 0..4 {
                outbox.append(event(n)).await.unwrap();
            }
            outbox.mark_published(&[event(0), event(1)]).await.unwrap();
            outbox.acknowledge(&[event(2).id]).await.unwrap();
        }
        let outbox = Outbox::open(&crate::db::open(dir.path()).unwrap(), 10);
        assert_eq!(ids(&outbox.pending(10)), [event(3).id]);
        assert_eq!(ids(&outbox.awaiting(10)), [event(0).id, event(1).id]);
        assert_eq!(
            (
                outbox.len(),
                outbox.awaiting_len(),
                outbox.unconfirmed_len()
            ),
            (1, 2, 3)
        );
        outbox.confirm(&[event(0).id]).await.unwrap();
        assert_eq!(ids(&outbox.awaiting(10)), [event(1).id]);
        assert!(outbox.get(&event(3).id).is_some() && outbox.get(&event(0).id).is_none());
    }

    /// Shippers of replicas sharing one database claim disjoint batches, oldest first; a
    /// claim renews for its holder, goes with its event, follows it to the published
    /// stage, and lapses with its lease, when another shipper takes the event over. Claims
    /// free no room: the bound counts events.
    #[tokio::test]
    async fn claims_split_the_outbox_between_shippers_and_lapse_with_their_lease() {
        let db = crate::db::temporary().unwrap();
        let outbox = Outbox::open(&db, 6);
        for n in 0..6 {
            outbox.append(event(n)).await.unwrap();
        }
        let (a, b, c) = (ClaimId::random(), ClaimId::random(), ClaimId::random());
        let long = Duration::from_secs(60);
        let claim = |by, lease, limit| outbox.claim(Stage::Pending, by, lease, limit);
        let e = |n: u32| event(n).id;

        assert_eq!(ids(&claim(a, long, 2).await.unwrap()), [e(0), e(1)]);
        assert_eq!(ids(&claim(b, long, 2).await.unwrap()), [e(2), e(3)]);
        // The holder's own claims come back to it (renewed), with the next free event.
        assert_eq!(ids(&claim(a, long, 3).await.unwrap()), [e(0), e(1), e(4)]);
        assert_eq!(outbox.claims_len(), 5);
        assert!(!outbox.has_room());
        assert_eq!(outbox.append(event(6)).await, Err(OutboxError::Full));

        // An acknowledged event takes its claim along; the others stay held.
        outbox.acknowledge(&[e(2)]).await.unwrap();
        assert_eq!(outbox.claims_len(), 4);
        assert!(outbox.has_room());
        assert_eq!(ids(&claim(c, long, 10).await.unwrap()), [e(5)]);

        // b stops holding e3 (a lease that ends at once stands for one that ran out): c,
        // asking again, takes it over beside its own.
        assert_eq!(ids(&claim(b, Duration::ZERO, 10).await.unwrap()), [e(3)]);
        assert_eq!(ids(&claim(c, long, 10).await.unwrap()), [e(3), e(5)]);
        assert!(claim(b, long, 10).await.unwrap().is_empty());

        // Published, an event stays its publisher's until its receipt is kept.
        outbox.mark_published(&[event(0)]).await.unwrap();
        let published = |by| outbox.claim(Stage::Published, by, long, 10);
        assert!(published(c).await.unwrap().is_empty());
        assert_eq!(ids(&published(a).await.unwrap()), [e(0)]);
        outbox.confirm(&[e(0)]).await.unwrap();
        assert_eq!(outbox.claims_len(), 4);

        // A claim whose event went without it (removed by a fedgate that did not claim)
        // is dropped once its lease is over, by the next claim.
        assert_eq!(
            ids(&claim(a, Duration::ZERO, 10).await.unwrap()),
            [e(1), e(4)]
        );
        outbox.tree.remove(e(1).as_bytes()).await.unwrap();
        assert_eq!(ids(&claim(c, long, 10).await.unwrap()), [e(3), e(4), e(5)]);
        assert_eq!(outbox.claims_len(), 3);
        assert_eq!(outbox.claims.get(e(1).as_bytes()).unwrap(), None);
    }

    /// However many requests append at once, the outbox never holds more than its bound;
    /// the others are refused (the exchange fails closed), and published events no longer
    /// count against it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_full_outbox_refuses_appends_even_when_they_race() {
        let outbox = Outbox::open(&crate::db::temporary().unwrap(), 5);
        let run = async {
            let mut tasks = Vec::new();
            for n in 0..40 {
                let outbox = outbox.clone();
                tasks.push(tokio::spawn(async move { outbox.append(event(n)).await }));
            }
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        };
        let results = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("40 appends did not finish within 60 s");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
        assert!(results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(OutboxError::Full))));
        assert_eq!(outbox.len(), 5);
        assert!(!outbox.has_room());
        let moved = outbox.pending(2);
        outbox.mark_published(&moved).await.unwrap();
        assert!(outbox.has_room());
        outbox.append(event(100)).await.unwrap();
        outbox.append(event(101)).await.unwrap();
        assert_eq!(outbox.append(event(102)).await, Err(OutboxError::Full));
        assert_eq!(outbox.unconfirmed_len(), 7);
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use federation::events;

    /// An event written before the vocabulary existed (a verification detail quoting an
    /// identifier) leaves the outbox inside the vocabulary, and the same at every read.
    #[tokio::test]
    async fn events_queued_before_the_vocabulary_leave_inside_it() {
        let db = crate::db::temporary().unwrap();
        let outbox = super::Outbox::open(&db, 10);
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
            .insert(event.id.as_bytes(), &serde_json::to_vec(&event).unwrap())
            .await
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
                | HolderBinding | Disclosure => (),
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
            federation::Check::Disclosure,
        ] {
            assert!(
                events::VERIFICATION_CHECKS.contains(&check.as_str()),
                "{check}"
            );
        }
    }
}
