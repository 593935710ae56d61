//! The service's database (`<data_dir>/visibility.redb`): the Merkle log, the indexes over
//! it, the latest signed checkpoint, review notes and challenges.
//!
//! The log is the truth; everything in the `index` tree can be rebuilt from it. All index
//! entries live in that one tree under a one-byte tag. Appends and the index entries of
//! the appended leaves, with the `indexed` pointer saying how far indexing got, are
//! written by one database write ([`Store::append_in`]), so they are on disk together or
//! not at all. Indexing is idempotent, and the pointer is checked at start and before
//! every append: should it ever lag the log, the leaves past it are indexed again.
//!
//! Index keys (strings are length-prefixed, so no value can run into the next part):
//! - `i` custodian id → leaf index: the exactly-once table (ids are unique per custodian,
//!   so that no organization can claim another's event ids first).
//! - `c` custodian, `r` patient_ref, `p` patient DID digest, each + leaf index → ().
//! - `q` event id + leaf index → (): break-glass events awaiting review.

use std::collections::HashSet;
use std::ops::{Bound, ControlFlow, Range};

use service::db::{Db, Schema, StoreError as DbError, Tree};
use storage::{Snapshot, WriteTx};

use crate::merkle::{Leaves, LogError, LogView, MerkleLog};

use crate::LogEntry;

/// The layout of the visibility service's database.
pub const SCHEMA: Schema = Schema {
    name: "visibility",
    version: 1,
};
/// The database's name: `<data_dir>/visibility.redb`.
pub(crate) const DB_NAME: &str = "visibility";

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
    Db(#[from] DbError),
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

fn parse_entry(index: u64, bytes: &[u8]) -> Result<LogEntry, StoreError> {
    // serde's message may quote the leaf's content: the category only.
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "leaf {index} is not a log entry ({:?})",
            e.classify()
        ))
    })
}

#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) db: Db,
    pub(crate) log: MerkleLog,
    index: Tree,
    meta: Tree,
    notes: Tree,
    pub(crate) nonces: Tree,
}

impl Store {
    /// Opens the store in `db` and brings the indexes up to the log (blocking on the
    /// writes this takes: it runs once, at start).
    pub(crate) fn open(db: Db) -> Result<Self, StoreError> {
        let store = Store {
            log: MerkleLog::open(&db, LOG_NAME)?,
            index: db.tree("visibility/index"),
            meta: db.tree("visibility/meta"),
            notes: db.tree("visibility/review-notes"),
            nonces: db.tree("visibility/challenges"),
            db,
        };
        loop {
            let s = store.clone();
            if !store
                .db
                .write_blocking(move |tx| s.catch_up_in(tx, REINDEX_CHUNK))?
            {
                break;
            }
        }
        Ok(store)
    }

    pub(crate) fn size(&self) -> Result<u64, StoreError> {
        Ok(self.log.size()?)
    }

    /// How many leaves the indexes cover, as `tx` sees it.
    fn indexed_in(&self, tx: &mut WriteTx<'_>) -> Result<u64, StoreError> {
        match tx.get(&self.index, INDEXED_KEY)? {
            None => Ok(0),
            Some(v) => decode_u64(&v),
        }
    }

    /// Indexes at most `limit` of the leaves the log holds beyond the `indexed` pointer;
    /// returns whether some are left. Cheap when there is nothing to do.
    fn catch_up_in(&self, tx: &mut WriteTx<'_>, limit: u64) -> Result<bool, StoreError> {
        let size = self.log.size_in(tx)?;
        let at = self.indexed_in(tx)?;
        if at > size {
            return Err(StoreError::Corrupt(format!(
                "indexes cover {at} leaves but the log has {size}"
            )));
        }
        if at == size {
            return Ok(false);
        }
        tracing::warn!(from = at, to = size, "indexing leaves left unindexed");
        let end = size.min(at.saturating_add(limit.max(1)));
        let entries = (at..end)
            .map(|i| parse_entry(i, &self.log.leaf_in(tx, i)?))
            .collect::<Result<Vec<_>, _>>()?;
        // Idempotent: whatever changed the database may have left some of these entries.
        self.index_in(tx, at, &entries, false)?;
        Ok(end < size)
    }

    /// Indexes the leaves left unindexed (none, unless the database was changed behind
    /// the service's back), a chunk per write.
    pub(crate) async fn catch_up(&self) -> Result<(), StoreError> {
        // A read first: the background task calls this on every tick, and there is
        // normally nothing to do.
        let snapshot = self.db.read()?;
        let size = self.log.view(&snapshot)?.size();
        let indexed = match snapshot.get(&self.index, INDEXED_KEY)? {
            None => 0,
            Some(v) => decode_u64(&v)?,
        };
        drop(snapshot);
        if indexed == size {
            return Ok(());
        }
        loop {
            let s = self.clone();
            if !self
                .db
                .write(move |tx| s.catch_up_in(tx, REINDEX_CHUNK))
                .await?
            {
                return Ok(());
            }
        }
    }

    /// The parsed entry at leaf `index`, from `view`.
    pub(crate) fn entry_in(view: &LogView<'_>, index: u64) -> Result<LogEntry, StoreError> {
        parse_entry(index, &view.leaf(index)?)
    }

    /// The parsed entry at leaf `index`.
    pub(crate) fn entry(&self, index: u64) -> Result<LogEntry, StoreError> {
        parse_entry(index, &self.log.leaf(index)?)
    }

    /// Appends entries (already serialized and hashed as `leaves`) and indexes them, in
    /// the write `tx`: durable, with their index entries, when the write's `.await`
    /// returns; undone with the rest of the write if it fails.
    pub(crate) fn append_in(
        &self,
        tx: &mut WriteTx<'_>,
        entries: &[LogEntry],
        leaves: &Leaves,
    ) -> Result<Range<u64>, StoreError> {
        if entries.len() != leaves.len() {
            return Err(StoreError::Corrupt(format!(
                "{} entries but {} leaves",
                entries.len(),
                leaves.len()
            )));
        }
        while self.catch_up_in(tx, u64::MAX)? {}
        let range = self.log.append_in(tx, leaves)?;
        self.index_in(tx, range.start, entries, true)?;
        Ok(range)
    }

    /// Writes the index entries of `entries`, the first at leaf `start`, and moves the
    /// `indexed` pointer past them.
    ///
    /// `fresh`: the leaves were appended by this write, so no entry naming them exists
    /// (`put_new`; on PostgreSQL they are copied in without a check). The id key is new
    /// then too: duplicates were left out, under the same write. Re-indexing passes false
    /// and overwrites whatever is there.
    fn index_in(
        &self,
        tx: &mut WriteTx<'_>,
        start: u64,
        entries: &[LogEntry],
        fresh: bool,
    ) -> Result<(), StoreError> {
        let put = |tx: &mut WriteTx<'_>, key: &[u8], value: &[u8]| {
            if fresh {
                tx.put_new(&self.index, key, value)
            } else {
                tx.put(&self.index, key, value)
            }
        };
        for (index, entry) in (start..).zip(entries) {
            match entry {
                LogEntry::Access { event } => {
                    let custodian = event.custodian.as_bytes();
                    let at = index.to_be_bytes();
                    put(tx, &key(TAG_ID, &[custodian, event.id.as_bytes()]), &at)?;
                    put(tx, &key_at(TAG_CUSTODIAN, &[custodian], index), &[])?;
                    if let Some(r) = &event.patient_ref {
                        put(tx, &key_at(TAG_PATIENT_REF, &[r.as_bytes()], index), &[])?;
                    }
                    let digests: HashSet<&String> = event.patient_did_digests.iter().collect();
                    for d in digests {
                        put(tx, &key_at(TAG_PATIENT_DID, &[d.as_bytes()], index), &[])?;
                    }
                    if event.break_glass && event.review_required {
                        put(tx, &key_at(TAG_QUEUE, &[event.id.as_bytes()], index), &[])?;
                    }
                }
                LogEntry::Review { event_id, .. } => {
                    // The write sees its own changes: a queue entry made earlier in this
                    // batch is found and removed too.
                    for k in self.queue_keys_in(tx, event_id)? {
                        tx.remove(&self.index, &k)?;
                    }
                }
            }
        }
        let end = start.saturating_add(entries.len() as u64);
        tx.put(&self.index, INDEXED_KEY, &end.to_be_bytes())?;
        Ok(())
    }

    /// The leaf index of the event `id` reported by `custodian`, if logged.
    #[cfg(test)]
    pub(crate) fn existing(&self, custodian: &str, id: &str) -> Result<Option<u64>, StoreError> {
        self.index
            .get(&key(TAG_ID, &[custodian.as_bytes(), id.as_bytes()]))?
            .map(|v| decode_u64(&v))
            .transpose()
    }

    /// As [`Store::existing`], in `snapshot`.
    pub(crate) fn existing_at(
        &self,
        snapshot: &Snapshot,
        custodian: &str,
        id: &str,
    ) -> Result<Option<u64>, StoreError> {
        snapshot
            .get(
                &self.index,
                &key(TAG_ID, &[custodian.as_bytes(), id.as_bytes()]),
            )?
            .map(|v| decode_u64(&v))
            .transpose()
    }

    /// As [`Store::existing`] for many events of one custodian, as the write `tx` sees it,
    /// in one read (one round trip on PostgreSQL, where a loop is one per event).
    pub(crate) fn existing_many_in(
        &self,
        tx: &mut WriteTx<'_>,
        custodian: &str,
        ids: &[&str],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| key(TAG_ID, &[custodian.as_bytes(), id.as_bytes()]))
            .collect();
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        tx.get_many(&self.index, &keys)?
            .into_iter()
            .map(|v| v.map(|v| decode_u64(&v)).transpose())
            .collect()
    }

    /// Calls `f` with the leaf indexes under `value` in `index`, newest first, below
    /// `before`, until it breaks.
    pub(crate) fn lookup(
        &self,
        snapshot: &Snapshot,
        index: Index,
        value: &str,
        before: u64,
        mut f: impl FnMut(u64) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let start = key(index.tag(), &[value.as_bytes()]);
        let end = key_at(index.tag(), &[value.as_bytes()], before);
        let mut failed = None;
        snapshot.scan_rev(
            &self.index,
            (
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            ),
            |k, _| match trailing_index(k) {
                Ok(at) => f(at),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            },
        )?;
        failed.map_or(Ok(()), Err)
    }

    fn queue_keys_in(
        &self,
        tx: &mut WriteTx<'_>,
        event_id: &str,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(tx.keys_with_prefix(&self.index, &key(TAG_QUEUE, &[event_id.as_bytes()]))?)
    }

    /// Whether `event_id` awaits review.
    pub(crate) fn is_queued(&self, event_id: &str) -> Result<bool, StoreError> {
        let prefix = key(TAG_QUEUE, &[event_id.as_bytes()]);
        let mut found = false;
        self.index.scan(prefix.as_slice().., |k, _| {
            found = k.starts_with(&prefix);
            ControlFlow::Break(())
        })?;
        Ok(found)
    }

    /// Whether `event_id` awaits review, in `snapshot`.
    pub(crate) fn is_queued_at(
        &self,
        snapshot: &Snapshot,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let prefix = key(TAG_QUEUE, &[event_id.as_bytes()]);
        let mut found = false;
        snapshot.scan(&self.index, prefix.as_slice().., |k, _| {
            found = k.starts_with(&prefix);
            ControlFlow::Break(())
        })?;
        Ok(found)
    }

    /// The leaf of the break-glass event `event_id` awaiting review, as `tx` sees it.
    pub(crate) fn queued_leaf_in(
        &self,
        tx: &mut WriteTx<'_>,
        event_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.queue_keys_in(tx, event_id)?
            .first()
            .map(|k| trailing_index(k))
            .transpose()
    }

    /// Leaf indexes of the events awaiting review, oldest first, at most `limit`.
    pub(crate) fn review_queue(&self, limit: usize) -> Result<Vec<u64>, StoreError> {
        let mut out = self
            .index
            .scan_prefix(&[TAG_QUEUE])?
            .iter()
            .map(|(k, _)| trailing_index(k))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    /// Keeps a review note's text, which the log holds only as a digest, in the write `tx`.
    pub(crate) fn put_note_in(
        &self,
        tx: &mut WriteTx<'_>,
        event_id: &str,
        note_digest: &str,
        record: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.insert(
            &self.notes,
            &key(TAG_QUEUE, &[event_id.as_bytes(), note_digest.as_bytes()]),
            &bytes,
        )?;
        Ok(())
    }

    /// The review notes kept for `event_id`.
    pub(crate) fn notes(&self, event_id: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        self.notes
            .scan_prefix(&key(TAG_QUEUE, &[event_id.as_bytes()]))?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "a review note does not read back ({:?})",
                        e.classify()
                    ))
                })
            })
            .collect()
    }

    /// Every review note kept, in key order (by event id), at most `limit`.
    pub(crate) fn all_notes(&self, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut out = Vec::new();
        let mut failed = None;
        let prefix = [TAG_QUEUE];
        self.notes.scan(prefix.as_slice().., |k, v| {
            if !k.starts_with(&prefix) || out.len() >= limit {
                return ControlFlow::Break(());
            }
            match serde_json::from_slice(v) {
                Ok(note) => {
                    out.push(note);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(StoreError::Corrupt(format!(
                        "a review note does not read back ({:?})",
                        e.classify()
                    )));
                    ControlFlow::Break(())
                }
            }
        })?;
        failed.map_or(Ok(out), Err)
    }

    pub(crate) fn checkpoint(&self) -> Result<Option<String>, StoreError> {
        match self.meta.get(CHECKPOINT_KEY)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("stored checkpoint is not UTF-8".into())),
        }
    }

    /// Stores `note` as the latest checkpoint, in the write `tx`.
    pub(crate) fn put_checkpoint_in(
        &self,
        tx: &mut WriteTx<'_>,
        note: &str,
    ) -> Result<(), StoreError> {
        tx.insert(&self.meta, CHECKPOINT_KEY, note.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::events::AccessEvent;
    use std::ops::ControlFlow;

    fn event(custodian: &str, patient: &str, break_glass: bool) -> AccessEvent {
        AccessEvent {
            patient_ref: Some(patient.into()),
            patient_did_digests: vec![federation::events::patient_did_digest("did:key:zpatient")],
            break_glass,
            review_required: break_glass,
            ..test_support::allowed_event(custodian)
        }
    }

    fn open(path: &std::path::Path) -> Store {
        Store::open(Db::open(path, SCHEMA).unwrap()).unwrap()
    }

    async fn append(store: &Store, entries: Vec<LogEntry>) -> Range<u64> {
        let leaves = Leaves::new(entries.iter().map(crate::leaf_bytes).collect());
        let s = store.clone();
        store
            .db
            .write(move |tx| s.append_in(tx, &entries, &leaves))
            .await
            .unwrap()
    }

    fn lookup(store: &Store, index: Index, value: &str, before: u64) -> Vec<u64> {
        let snapshot = store.db.read().unwrap();
        let mut out = Vec::new();
        store
            .lookup(&snapshot, index, value, before, |at| {
                out.push(at);
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    }

    fn indexed(store: &Store) -> u64 {
        store
            .index
            .get(INDEXED_KEY)
            .unwrap()
            .map_or(0, |v| decode_u64(&v).unwrap())
    }

    #[tokio::test]
    async fn indexes_follow_the_log_and_survive_a_lost_indexing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("visibility.redb");
        let a = event("did:web:a.test", "ref-1", false);
        let b = event("did:web:b.test", "ref-1", true);
        let c = event("did:web:a.test", "ref-2", false);
        {
            let store = open(&path);
            append(
                &store,
                vec![
                    LogEntry::Access { event: a.clone() },
                    LogEntry::Access { event: b.clone() },
                ],
            )
            .await;
            assert_eq!(store.existing("did:web:a.test", &a.id).unwrap(), Some(0));
            // Ids are per custodian.
            assert_eq!(store.existing("did:web:b.test", &a.id).unwrap(), None);
            assert!(store.is_queued(&b.id).unwrap());
            // Simulate leaves appended without their indexing (which append_in makes one
            // write, so only a change behind the service's back can do this).
            let entry = LogEntry::Access { event: c.clone() };
            store
                .log
                .append_batch(vec![crate::leaf_bytes(&entry)])
                .await
                .unwrap();
            assert_eq!(indexed(&store), 2);
        }
        // The file is closed when the last handle is dropped: it reopens at once.
        let store = open(&path);
        assert_eq!(indexed(&store), 3);
        assert_eq!(store.existing("did:web:a.test", &c.id).unwrap(), Some(2));
        assert_eq!(
            lookup(&store, Index::PatientRef, "ref-1", u64::MAX),
            vec![1, 0]
        );
        assert_eq!(
            lookup(&store, Index::Custodian, "did:web:a.test", 2),
            vec![0],
            "`before` is exclusive"
        );
        // A custodian whose name is a prefix of another's does not see its events.
        assert!(lookup(&store, Index::Custodian, "did:web:a.tes", u64::MAX).is_empty());
        assert_eq!(store.review_queue(10).unwrap(), vec![1]);
        append(
            &store,
            vec![LogEntry::Review {
                event_id: b.id.clone(),
                resolved_by: "did:key:zauditor".into(),
                note_digest: "00".into(),
                time: chrono::Utc::now(),
            }],
        )
        .await;
        assert!(store.review_queue(10).unwrap().is_empty());
        assert!(!store.is_queued(&b.id).unwrap());
    }

    #[tokio::test]
    async fn a_review_in_the_same_batch_clears_the_queue() {
        let store = Store::open(Db::temporary(SCHEMA).unwrap()).unwrap();
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
        )
        .await;
        assert!(!store.is_queued(&b.id).unwrap());
        assert!(store.review_queue(10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_restart_keeps_the_log_its_size_root_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("visibility.redb");
        let events: Vec<AccessEvent> = (0..40)
            .map(|i| event("did:web:a.test", &format!("ref-{}", i % 3), i == 7))
            .collect();
        let (size, root, leaves) = {
            let store = open(&path);
            for chunk in events.chunks(9) {
                let entries = chunk
                    .iter()
                    .map(|e| LogEntry::Access { event: e.clone() })
                    .collect();
                append(&store, entries).await;
            }
            let size = store.size().unwrap();
            let leaves: Vec<Vec<u8>> = (0..size).map(|i| store.log.leaf(i).unwrap()).collect();
            (size, store.log.root(size).unwrap(), leaves)
        };
        assert_eq!(size, 40);
        let store = open(&path);
        assert_eq!(store.size().unwrap(), size);
        assert_eq!(store.log.root(size).unwrap(), root);
        for (i, leaf) in (0..).zip(&leaves) {
            assert_eq!(&store.log.leaf(i).unwrap(), leaf);
        }
        assert_eq!(indexed(&store), 40);
        assert_eq!(
            store.existing("did:web:a.test", &events[39].id).unwrap(),
            Some(39)
        );
        assert_eq!(store.review_queue(10).unwrap(), vec![7]);
        assert_eq!(lookup(&store, Index::PatientRef, "ref-1", 5), vec![4, 1]);
    }

    #[tokio::test]
    async fn the_background_catch_up_indexes_what_was_left() {
        let store = Store::open(Db::temporary(SCHEMA).unwrap()).unwrap();
        store.catch_up().await.unwrap();
        assert_eq!(indexed(&store), 0);
        let a = event("did:web:a.test", "ref-1", false);
        let entry = LogEntry::Access { event: a.clone() };
        store
            .log
            .append_batch(vec![crate::leaf_bytes(&entry)])
            .await
            .unwrap();
        assert_eq!(store.existing("did:web:a.test", &a.id).unwrap(), None);
        store.catch_up().await.unwrap();
        assert_eq!(indexed(&store), 1);
        assert_eq!(store.existing("did:web:a.test", &a.id).unwrap(), Some(0));
    }

    #[tokio::test]
    async fn a_failed_write_keeps_neither_leaves_nor_index_entries() {
        let store = Store::open(Db::temporary(SCHEMA).unwrap()).unwrap();
        let a = event("did:web:a.test", "ref-1", false);
        append(&store, vec![LogEntry::Access { event: a.clone() }]).await;
        let b = event("did:web:a.test", "ref-1", true);
        let entries = vec![LogEntry::Access { event: b.clone() }];
        let leaves = Leaves::new(entries.iter().map(crate::leaf_bytes).collect());
        let s = store.clone();
        let failed = store
            .db
            .write(move |tx| {
                s.append_in(tx, &entries, &leaves)?;
                Err::<(), _>(StoreError::Corrupt("refused after appending".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(store.size().unwrap(), 1);
        assert_eq!(indexed(&store), 1);
        assert_eq!(store.existing("did:web:a.test", &b.id).unwrap(), None);
        assert!(!store.is_queued(&b.id).unwrap());
        assert_eq!(
            lookup(&store, Index::PatientRef, "ref-1", u64::MAX),
            vec![0]
        );
    }
}
