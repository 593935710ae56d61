//! The service's sled database: the Merkle log, the indexes over it, the latest signed
//! checkpoint, review notes and challenges.
//!
//! The log is the truth; everything in the `index` tree can be rebuilt from it. All index
//! entries live in that one tree under a one-byte tag so that the entries of a range of
//! leaves, and the `indexed` pointer saying how far indexing got, are written by one atomic
//! batch. Indexing is idempotent, so after a crash between an append and its indexing the
//! leaves past the pointer are simply indexed again at start.
//!
//! Index keys (strings are length-prefixed, so no value can run into the next part):
//! - `i` custodian id → leaf index: the exactly-once table (ids are unique per custodian,
//!   so that no organization can claim another's event ids first).
//! - `c` custodian, `r` patient_ref, `p` patient DID digest, each + leaf index → ().
//! - `q` event id + leaf index → (): break-glass events awaiting review.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use crate::merkle::{LogError, MerkleLog};

use crate::LogEntry;

const LOG_NAME: &str = "visibility";
const INDEXED_KEY: &[u8] = b"n";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";

const TAG_ID: u8 = b'i';
const TAG_CUSTODIAN: u8 = b'c';
const TAG_PATIENT_REF: u8 = b'r';
const TAG_PATIENT_DID: u8 = b'p';
const TAG_QUEUE: u8 = b'q';

/// Leaves read at a time while re-indexing.
const REINDEX_CHUNK: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for crate::VisibilityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Log(e) => e.into(),
            other => crate::VisibilityError::Storage(other.to_string()),
        }
    }
}

/// Which index a query walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    Custodian,
    PatientRef,
    PatientDid,
}

impl Index {
    fn tag(self) -> u8 {
        match self {
            Index::Custodian => TAG_CUSTODIAN,
            Index::PatientRef => TAG_PATIENT_REF,
            Index::PatientDid => TAG_PATIENT_DID,
        }
    }
}

/// A key: tag, then each part as u32 big-endian length and bytes.
fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| 4 + p.len()).sum::<usize>() + 8);
    k.push(tag);
    for p in parts {
        // Parts are bounded well below 4 GiB by the request limits.
        k.extend_from_slice(&(p.len() as u32).to_be_bytes());
        k.extend_from_slice(p);
    }
    k
}

fn key_at(tag: u8, parts: &[&[u8]], index: u64) -> Vec<u8> {
    let mut k = key(tag, parts);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn trailing_index(k: &[u8]) -> Result<u64, StoreError> {
    k.len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("index key without a leaf index".into()))
}

fn decode_u64(v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{}-byte counter", v.len())))
}

#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) db: sled::Db,
    pub(crate) log: MerkleLog,
    index: sled::Tree,
    meta: sled::Tree,
    notes: sled::Tree,
    pub(crate) nonces: sled::Tree,
}

impl Store {
    /// Opens the database and brings the indexes up to the log.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = service::db::open(path)?;
        let store = Store {
            log: MerkleLog::open(&db, LOG_NAME)?,
            index: db.open_tree("visibility/index")?,
            meta: db.open_tree("visibility/meta")?,
            notes: db.open_tree("visibility/review-notes")?,
            nonces: db.open_tree("visibility/challenges")?,
            db,
        };
        store.catch_up()?;
        Ok(store)
    }

    pub(crate) fn size(&self) -> Result<u64, StoreError> {
        Ok(self.log.size()?)
    }

    /// How many leaves the indexes cover.
    fn indexed(&self) -> Result<u64, StoreError> {
        match self.index.get(INDEXED_KEY)? {
            None => Ok(0),
            Some(v) => decode_u64(&v),
        }
    }

    /// Indexes the leaves the log holds beyond the `indexed` pointer (after a crash or a
    /// failed indexing). Cheap when there is nothing to do.
    pub(crate) fn catch_up(&self) -> Result<(), StoreError> {
        let size = self.size()?;
        let mut at = self.indexed()?;
        if at > size {
            return Err(StoreError::Corrupt(format!(
                "indexes cover {at} leaves but the log has {size}"
            )));
        }
        if at < size {
            tracing::warn!(from = at, to = size, "indexing leaves left unindexed");
        }
        while at < size {
            let end = size.min(at.saturating_add(REINDEX_CHUNK));
            let entries = (at..end)
                .map(|i| self.entry(i))
                .collect::<Result<Vec<_>, _>>()?;
            self.index_entries(at, &entries)?;
            at = end;
        }
        Ok(())
    }

    /// The parsed entry at leaf `index`.
    pub(crate) fn entry(&self, index: u64) -> Result<LogEntry, StoreError> {
        let bytes = self.log.leaf(index)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("leaf {index} is not a log entry: {e}")))
    }

    /// Appends entries (already serialized as `leaves`) and indexes them. The caller holds
    /// the service's writer lock and flushes before promising anything.
    pub(crate) fn append(
        &self,
        entries: &[LogEntry],
        leaves: &[Vec<u8>],
    ) -> Result<Range<u64>, StoreError> {
        self.catch_up()?;
        let range = self.log.append_batch(leaves)?;
        self.index_entries(range.start, entries)?;
        Ok(range)
    }

    /// Writes the index entries of `entries`, the first at leaf `start`, and moves the
    /// `indexed` pointer past them, in one atomic batch.
    fn index_entries(&self, start: u64, entries: &[LogEntry]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        // Queue keys inserted by this batch, which a later review in the same batch removes.
        let mut queued: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, entry) in (start..).zip(entries) {
            match entry {
                LogEntry::Access { event } => {
                    let custodian = event.custodian.as_bytes();
                    batch.insert(
                        key(TAG_ID, &[custodian, event.id.as_bytes()]),
                        &index.to_be_bytes(),
                    );
                    batch.insert(key_at(TAG_CUSTODIAN, &[custodian], index), &[]);
                    if let Some(r) = &event.patient_ref {
                        batch.insert(key_at(TAG_PATIENT_REF, &[r.as_bytes()], index), &[]);
                    }
                    let digests: HashSet<&String> = event.patient_did_digests.iter().collect();
                    for d in digests {
                        batch.insert(key_at(TAG_PATIENT_DID, &[d.as_bytes()], index), &[]);
                    }
                    if event.break_glass && event.review_required {
                        let k = key_at(TAG_QUEUE, &[event.id.as_bytes()], index);
                        batch.insert(k.clone(), &[]);
                        queued.push((event.id.clone(), k));
                    }
                }
                LogEntry::Review { event_id, .. } => {
                    for k in self.queue_keys(event_id)? {
                        batch.remove(k);
                    }
                    for (_, k) in queued.iter().filter(|(id, _)| id == event_id) {
                        batch.remove(k.clone());
                    }
                }
            }
        }
        let end = start.saturating_add(entries.len() as u64);
        batch.insert(INDEXED_KEY, &end.to_be_bytes());
        self.index.apply_batch(batch)?;
        Ok(())
    }

    /// The leaf index of the event `id` reported by `custodian`, if logged.
    pub(crate) fn existing(&self, custodian: &str, id: &str) -> Result<Option<u64>, StoreError> {
        self.index
            .get(key(TAG_ID, &[custodian.as_bytes(), id.as_bytes()]))?
            .map(|v| decode_u64(&v))
            .transpose()
    }

    /// Leaf indexes under `value` in `index`, newest first, below `before`.
    pub(crate) fn lookup(
        &self,
        index: Index,
        value: &str,
        before: u64,
    ) -> impl Iterator<Item = Result<u64, StoreError>> {
        let start = key(index.tag(), &[value.as_bytes()]);
        let end = key_at(index.tag(), &[value.as_bytes()], before);
        self.index
            .range(start..end)
            .rev()
            .map(|r| trailing_index(&r?.0))
    }

    fn queue_keys(&self, event_id: &str) -> Result<Vec<sled::IVec>, StoreError> {
        self.index
            .scan_prefix(key(TAG_QUEUE, &[event_id.as_bytes()]))
            .keys()
            .map(|k| k.map_err(StoreError::from))
            .collect()
    }

    /// Whether `event_id` awaits review.
    pub(crate) fn is_queued(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(!self.queue_keys(event_id)?.is_empty())
    }

    /// Leaf indexes of the events awaiting review, oldest first, at most `limit`.
    pub(crate) fn review_queue(&self, limit: usize) -> Result<Vec<u64>, StoreError> {
        let mut out = self
            .index
            .scan_prefix([TAG_QUEUE])
            .keys()
            .map(|k| trailing_index(&k?))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    /// Keeps a review note's text, which the log holds only as a digest.
    pub(crate) fn put_note(
        &self,
        event_id: &str,
        note_digest: &str,
        record: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.notes.insert(
            key(TAG_QUEUE, &[event_id.as_bytes(), note_digest.as_bytes()]),
            bytes,
        )?;
        Ok(())
    }

    /// The review notes kept for `event_id`.
    pub(crate) fn notes(&self, event_id: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        self.notes
            .scan_prefix(key(TAG_QUEUE, &[event_id.as_bytes()]))
            .values()
            .map(|v| {
                let v = v?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    pub(crate) fn checkpoint(&self) -> Result<Option<String>, StoreError> {
        match self.meta.get(CHECKPOINT_KEY)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt("stored checkpoint is not UTF-8".into())),
        }
    }

    pub(crate) fn put_checkpoint(&self, note: &str) -> Result<(), StoreError> {
        self.meta.insert(CHECKPOINT_KEY, note.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::events::{AccessEvent, Outcome};

    fn event(custodian: &str, patient: &str, break_glass: bool) -> AccessEvent {
        AccessEvent {
            id: AccessEvent::new_id(),
            time: chrono::Utc::now(),
            custodian: custodian.into(),
            requester_org: None,
            requester: Some("did:key:z6Mkrequester".into()),
            patient_ref: Some(patient.into()),
            patient_did_digests: vec![federation::events::patient_did_digest("did:key:zpatient")],
            domain: "clinical".into(),
            purpose: "TREAT".into(),
            data_classes: vec![],
            record_count: 1,
            decision: Outcome::Allow,
            decision_id: "d".into(),
            reasons: vec![],
            policy_digest: String::new(),
            credential_ids: vec![],
            failed_check: None,
            break_glass,
            justification: None,
            review_required: break_glass,
            expires_at: None,
            privacy: None,
        }
    }

    fn append(store: &Store, entries: Vec<LogEntry>) -> Range<u64> {
        let leaves: Vec<Vec<u8>> = entries.iter().map(crate::leaf_bytes).collect();
        store.append(&entries, &leaves).unwrap()
    }

    #[test]
    fn indexes_follow_the_log_and_survive_a_lost_indexing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let a = event("did:web:a.test", "ref-1", false);
        let b = event("did:web:b.test", "ref-1", true);
        let c = event("did:web:a.test", "ref-2", false);
        {
            let store = Store::open(&path).unwrap();
            append(
                &store,
                vec![
                    LogEntry::Access { event: a.clone() },
                    LogEntry::Access { event: b.clone() },
                ],
            );
            assert_eq!(store.existing("did:web:a.test", &a.id).unwrap(), Some(0));
            // Ids are per custodian.
            assert_eq!(store.existing("did:web:b.test", &a.id).unwrap(), None);
            assert!(store.is_queued(&b.id).unwrap());
            // Simulate a crash between the append and its indexing.
            let entry = LogEntry::Access { event: c.clone() };
            store
                .log
                .append_batch(&[crate::leaf_bytes(&entry)])
                .unwrap();
            store.db.flush().unwrap();
        }
        // sled releases its file lock from a background thread after the Db is dropped:
        // wait for it (bounded) rather than race it.
        let started = std::time::Instant::now();
        let store = loop {
            match Store::open(&path) {
                Ok(store) => break store,
                Err(_) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("the store could not be reopened: {e}"),
            }
        };
        assert_eq!(store.indexed().unwrap(), 3);
        assert_eq!(store.existing("did:web:a.test", &c.id).unwrap(), Some(2));
        let by_ref: Vec<u64> = store
            .lookup(Index::PatientRef, "ref-1", u64::MAX)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(by_ref, vec![1, 0]);
        let by_a: Vec<u64> = store
            .lookup(Index::Custodian, "did:web:a.test", 2)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(by_a, vec![0], "`before` is exclusive");
        // A custodian whose name is a prefix of another's does not see its events.
        assert_eq!(
            store
                .lookup(Index::Custodian, "did:web:a.tes", u64::MAX)
                .count(),
            0
        );
        assert_eq!(store.review_queue(10).unwrap(), vec![1]);
        append(
            &store,
            vec![LogEntry::Review {
                event_id: b.id.clone(),
                resolved_by: "did:key:zauditor".into(),
                note_digest: "00".into(),
                time: chrono::Utc::now(),
            }],
        );
        assert!(store.review_queue(10).unwrap().is_empty());
    }

    #[test]
    fn a_review_in_the_same_batch_clears_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let b = event("did:web:b.test", "ref", true);
        append(
            &store,
            vec![
                LogEntry::Access { event: b.clone() },
                LogEntry::Review {
                    event_id: b.id.clone(),
                    resolved_by: "did:key:zauditor".into(),
                    note_digest: "00".into(),
                    time: chrono::Utc::now(),
                },
            ],
        );
        assert!(!store.is_queued(&b.id).unwrap());
    }
}
