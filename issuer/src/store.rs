//! Issued credentials and the revocation bitstring, in the issuer's database
//! (`<data_dir>/issuer.redb`).
//!
//! Trees (owned here, opened nowhere else):
//! - `credentials`: credential id → [`Record`] (JSON);
//! - `by_subject`: subject DID, NUL, credential id → ();
//! - `status_index`: list index (u32 BE) → credential id; reserves random indexes;
//! - `status`: `revocation` → the bitstring; `generation` → u64 BE, bumped per revocation.
//!
//! Every change is one write of the database: it is on disk (fdatasync) when the call
//! returns, and it is all or nothing. A mover's "issue the new privilege, revoke the old"
//! is one such write, so no reader ever sees both valid or neither, and the writer runs
//! writes one at a time, so two issuances never reserve the same status list index.

use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, Utc};
use federation::credentials::{CredentialKind, ProofFormat};
use federation::status::{Bitstring, LIST_BITS};
use rand::Rng;
use serde::{Deserialize, Serialize};
use service::db::{Db, Schema, StoreError, Tree};

use crate::error::IssuerError;

/// The layout of the issuer's database.
pub(crate) const SCHEMA: Schema = Schema {
    name: "issuer",
    version: 1,
};

/// The database's name in `data_dir` (`issuer.redb`; an earlier fedgate's `issuer.sled`
/// beside it is refused).
const DB_NAME: &str = "issuer";

/// What the office keeps about a credential it issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    pub(crate) id: String,
    /// The fedgate type; none for a credential of another type (its `types` say which).
    pub(crate) kind: Option<CredentialKind>,
    /// The credential's `type` values, for a credential of another type than the three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) types: Vec<String>,
    pub(crate) subject: String,
    pub(crate) format: ProofFormat,
    pub(crate) status_index: u32,
    pub(crate) issued_at: DateTime<Utc>,
    #[serde(default)]
    pub(crate) revoked_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) replaced_by: Option<String>,
    #[serde(default)]
    pub(crate) replaces: Option<String>,
    pub(crate) credential: serde_json::Value,
}

#[derive(Clone)]
pub(crate) struct Store {
    db: Db,
    trees: Trees,
}

/// The store's trees, cloned into each write. (Writes are closures over them, not helpers
/// taking a write transaction: the issuer reaches the database only through `service::db`,
/// as the crate map allows.)
#[derive(Clone)]
struct Trees {
    credentials: Tree,
    by_subject: Tree,
    status_index: Tree,
    status: Tree,
}

const BITS_KEY: &[u8] = b"revocation";
const GENERATION_KEY: &[u8] = b"generation";

/// Random picks tried before looking for a free index in order.
const RANDOM_PICKS: usize = 64;

fn subject_key(subject: &str, id: &str) -> Vec<u8> {
    let mut k = subject.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn encode(rec: &Record) -> Result<Vec<u8>, IssuerError> {
    serde_json::to_vec(rec).map_err(|e| IssuerError::Storage(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Record, IssuerError> {
    serde_json::from_slice(bytes).map_err(|e| IssuerError::Storage(e.to_string()))
}

fn generation_of(stored: Option<Vec<u8>>) -> u64 {
    stored
        .and_then(|g| <[u8; 8]>::try_from(g.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn bits_of(stored: Option<Vec<u8>>) -> Bitstring {
    match stored {
        Some(b) => Bitstring::from_bytes(b),
        None => Bitstring::new(),
    }
}

fn not_found(id: &str) -> IssuerError {
    IssuerError::NotFound(format!("credential {id}"))
}

fn exists(id: &str) -> IssuerError {
    IssuerError::Conflict(format!("credential {id} exists"))
}

fn list_full() -> IssuerError {
    IssuerError::Conflict("the status list is full; start a new list".into())
}

impl Trees {
    fn of(db: &Db) -> Trees {
        Trees {
            credentials: db.tree("credentials"),
            by_subject: db.tree("by_subject"),
            status_index: db.tree("status_index"),
            status: db.tree("status"),
        }
    }
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/issuer.redb`.
    pub(crate) fn open(
        data_dir: &Path,
        storage: &service::db::StorageConfig,
    ) -> Result<Self, IssuerError> {
        let opened = service::db::open_configured(
            storage,
            data_dir,
            DB_NAME,
            SCHEMA,
            service::db::CACHE_BYTES,
        );
        match opened {
            Ok(db) => Ok(Store::with_db(db)),
            // The earlier sled database holds issued credentials and revocations: moving
            // it away would un-revoke them, so the generic advice does not fit.
            Err(StoreError::Folder { path }) if path.extension().is_some_and(|e| e == "sled") => {
                Err(IssuerError::EarlierDatabase { path })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The database, for readiness checks.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn with_db(db: Db) -> Self {
        Store {
            trees: Trees::of(&db),
            db,
        }
    }

    /// Reserves a random, unused status list index, durably. Random allocation keeps a
    /// credential's position from revealing when it was issued.
    pub(crate) async fn allocate_index(&self, credential_id: &str) -> Result<u32, IssuerError> {
        self.allocate_index_below(credential_id, LIST_BITS as u32)
            .await
    }

    async fn allocate_index_below(
        &self,
        credential_id: &str,
        size: u32,
    ) -> Result<u32, IssuerError> {
        if size == 0 {
            return Err(list_full());
        }
        let (tree, id) = (self.trees.status_index.clone(), credential_id.to_string());
        self.db
            .write(move |tx| {
                let mut rng = rand::thread_rng();
                // Random picks first; then (a nearly full list) the first free index from
                // a random start, wrapping around.
                let start = rng.gen_range(0..size);
                let picks: Vec<u32> = (0..RANDOM_PICKS).map(|_| rng.gen_range(0..size)).collect();
                let in_order = (start..size).chain(0..start);
                for (n, index) in picks.into_iter().chain(in_order).enumerate() {
                    if n == RANDOM_PICKS && tx.len(&tree)? >= u64::from(size) {
                        break;
                    }
                    let key = index.to_be_bytes();
                    if tx.get(&tree, &key)?.is_none() {
                        tx.insert(&tree, &key, id.as_bytes())?;
                        return Ok(index);
                    }
                }
                Err(list_full())
            })
            .await
    }

    /// Gives back an index reserved for `credential_id` that was never issued (signing or
    /// storing failed). An index that names another credential is left alone.
    pub(crate) async fn release_index(
        &self,
        index: u32,
        credential_id: &str,
    ) -> Result<(), IssuerError> {
        let (trees, id) = (self.trees.clone(), credential_id.to_string());
        self.db
            .write(move |tx| {
                let key = index.to_be_bytes();
                if let Some(bytes) = tx.get(&trees.credentials, id.as_bytes())? {
                    if decode(&bytes)?.status_index == index {
                        // Issued after all: the index stays taken.
                        return Ok(());
                    }
                }
                if tx.get(&trees.status_index, &key)?.as_deref() == Some(id.as_bytes()) {
                    tx.remove(&trees.status_index, &key)?;
                }
                Ok(())
            })
            .await
    }

    /// Stores a new credential's record and its subject index entry; durable when this
    /// returns. A credential with the same id is a conflict, and nothing is written.
    pub(crate) async fn insert(&self, rec: &Record) -> Result<(), IssuerError> {
        let (trees, value) = (self.trees.clone(), encode(rec)?);
        let (id, subject) = (rec.id.clone(), subject_key(&rec.subject, &rec.id));
        self.db
            .write(move |tx| {
                if tx.get(&trees.credentials, id.as_bytes())?.is_some() {
                    return Err(exists(&id));
                }
                tx.insert(&trees.credentials, id.as_bytes(), &value)?;
                tx.insert(&trees.by_subject, &subject, &[])?;
                Ok(())
            })
            .await
    }

    pub(crate) fn get(&self, id: &str) -> Result<Record, IssuerError> {
        let bytes = self
            .trees
            .credentials
            .get(id.as_bytes())?
            .ok_or_else(|| not_found(id))?;
        decode(&bytes)
    }

    /// Revokes `id` and, when `replacement` is given, stores it in the same write; durable
    /// when this returns. Returns the revoked record.
    pub(crate) async fn revoke(
        &self,
        id: &str,
        replacement: Option<&Record>,
    ) -> Result<Record, IssuerError> {
        let trees = self.trees.clone();
        let id = id.to_string();
        let replacement = match replacement {
            Some(new) => Some((
                new.id.clone(),
                encode(new)?,
                subject_key(&new.subject, &new.id),
            )),
            None => None,
        };
        self.db
            .write(move |tx| {
                let bytes = tx
                    .get(&trees.credentials, id.as_bytes())?
                    .ok_or_else(|| not_found(&id))?;
                let mut rec = decode(&bytes)?;
                if rec.revoked_at.is_some() {
                    return Err(IssuerError::Conflict(format!(
                        "credential {id} is already revoked"
                    )));
                }
                let mut bits = bits_of(tx.get(&trees.status, BITS_KEY)?);
                if !bits.set(rec.status_index as usize, true) {
                    // A stored list shorter than the index: a revocation must not leave
                    // the credential valid on the list.
                    return Err(StoreError::unreadable(trees.status.name()).into());
                }
                tx.insert(&trees.status, BITS_KEY, bits.as_bytes())?;
                let generation = generation_of(tx.get(&trees.status, GENERATION_KEY)?);
                tx.insert(
                    &trees.status,
                    GENERATION_KEY,
                    &(generation + 1).to_be_bytes(),
                )?;
                rec.revoked_at = Some(Utc::now());
                if let Some((new_id, value, subject)) = &replacement {
                    if tx.get(&trees.credentials, new_id.as_bytes())?.is_some() {
                        return Err(exists(new_id));
                    }
                    tx.insert(&trees.credentials, new_id.as_bytes(), value)?;
                    tx.insert(&trees.by_subject, subject, &[])?;
                    rec.replaced_by = Some(new_id.clone());
                }
                tx.insert(&trees.credentials, id.as_bytes(), &encode(&rec)?)?;
                Ok(rec)
            })
            .await
    }

    /// The credentials issued to `subject`, oldest first, as of one moment.
    pub(crate) fn by_subject(&self, subject: &str) -> Result<Vec<Record>, IssuerError> {
        // Every key of the subject lies in [subject NUL, subject 0x01).
        let (mut from, mut to) = (subject.as_bytes().to_vec(), subject.as_bytes().to_vec());
        from.push(0);
        to.push(1);
        let snapshot = self.db.read()?;
        let mut ids = Vec::new();
        snapshot.scan(
            &self.trees.by_subject,
            from.as_slice()..to.as_slice(),
            |key, _| {
                ids.push(String::from_utf8_lossy(&key[from.len()..]).into_owned());
                ControlFlow::Continue(())
            },
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let bytes = snapshot
                .get(&self.trees.credentials, id.as_bytes())?
                .ok_or_else(|| not_found(id))?;
            out.push(decode(&bytes)?);
        }
        out.sort_by_key(|r| r.issued_at);
        Ok(out)
    }

    /// The revocation bitstring and its generation (bumped by every revocation), read
    /// together.
    pub(crate) fn bits(&self) -> Result<(Bitstring, u64), IssuerError> {
        let snapshot = self.db.read()?;
        let bits = bits_of(snapshot.get(&self.trees.status, BITS_KEY)?);
        let generation = generation_of(snapshot.get(&self.trees.status, GENERATION_KEY)?);
        Ok((bits, generation))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    fn rec(id: &str, subject: &str, index: u32) -> Record {
        Record {
            id: id.into(),
            kind: Some(CredentialKind::ClinicianPrivilege),
            types: Vec::new(),
            subject: subject.into(),
            format: ProofFormat::Jwt,
            status_index: index,
            issued_at: Utc::now(),
            revoked_at: None,
            replaced_by: None,
            replaces: None,
            credential: serde_json::json!("x"),
        }
    }

    fn temporary() -> Store {
        Store::with_db(Db::temporary(SCHEMA).unwrap())
    }

    /// Bounds a test's work: a hang in the writer fails it instead of stalling the run.
    async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), work)
            .await
            .expect("the store did not answer within 60 s")
    }

    #[tokio::test]
    async fn mover_revokes_old_and_stores_new_atomically() {
        let store = temporary();
        let i1 = store.allocate_index("a").await.unwrap();
        store.insert(&rec("a", "did:key:z1", i1)).await.unwrap();
        let i2 = store.allocate_index("b").await.unwrap();
        assert_ne!(i1, i2);
        let old = store
            .revoke("a", Some(&rec("b", "did:key:z1", i2)))
            .await
            .unwrap();
        assert_eq!(old.replaced_by.as_deref(), Some("b"));
        let (bits, gen) = store.bits().unwrap();
        assert_eq!(bits.get(i1 as usize), Some(true));
        assert_eq!(bits.get(i2 as usize), Some(false));
        assert_eq!(gen, 1);
        let all = store.by_subject("did:key:z1").unwrap();
        assert_eq!(all.len(), 2);
        // Revoking twice is a conflict, and a missing credential is not found.
        assert!(matches!(
            store.revoke("a", None).await,
            Err(IssuerError::Conflict(_))
        ));
        assert!(matches!(
            store.revoke("zz", None).await,
            Err(IssuerError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_mover_keeps_nothing_of_its_write() {
        let store = temporary();
        let (ia, ib) = (
            store.allocate_index("a").await.unwrap(),
            store.allocate_index("b").await.unwrap(),
        );
        store.insert(&rec("a", "did:key:z1", ia)).await.unwrap();
        store.insert(&rec("b", "did:key:z2", ib)).await.unwrap();
        // The replacement's id is taken: the old credential must stay unrevoked.
        let err = store
            .revoke("a", Some(&rec("b", "did:key:z1", 7)))
            .await
            .unwrap_err();
        assert!(matches!(err, IssuerError::Conflict(_)), "{err}");
        assert_eq!(store.get("a").unwrap().revoked_at, None);
        assert_eq!(store.get("b").unwrap().subject, "did:key:z2");
        let (bits, gen) = store.bits().unwrap();
        assert_eq!((bits.get(ia as usize), gen), (Some(false), 0));
        assert_eq!(store.by_subject("did:key:z1").unwrap().len(), 1);
        // The same id issued twice is a conflict too, and the first record stays.
        let err = store.insert(&rec("a", "did:key:z9", 9)).await.unwrap_err();
        assert!(matches!(err, IssuerError::Conflict(_)), "{err}");
        assert_eq!(store.get("a").unwrap().status_index, ia);
        assert!(store.by_subject("did:key:z9").unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_index_is_released_only_when_its_credential_was_never_issued() {
        let store = temporary();
        let issued = store.allocate_index_below("a", 2).await.unwrap();
        store.insert(&rec("a", "did:key:z1", issued)).await.unwrap();
        let failed = store.allocate_index_below("b", 2).await.unwrap();
        assert!(matches!(
            store.allocate_index_below("c", 2).await,
            Err(IssuerError::Conflict(_))
        ));
        store.release_index(issued, "a").await.unwrap();
        store.release_index(failed, "a").await.unwrap();
        assert!(store.allocate_index_below("c", 2).await.is_err());
        store.release_index(failed, "b").await.unwrap();
        assert_eq!(store.allocate_index_below("c", 2).await.unwrap(), failed);
    }

    #[tokio::test]
    async fn a_restart_keeps_credentials_revocations_and_reserved_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let (ia, ib) = bounded(async {
            let store = Store::open(dir.path(), &Default::default()).unwrap();
            let ia = store.allocate_index_below("a", 8).await.unwrap();
            store.insert(&rec("a", "did:key:z1", ia)).await.unwrap();
            let ib = store.allocate_index_below("b", 8).await.unwrap();
            store.insert(&rec("b", "did:key:z1", ib)).await.unwrap();
            for id in ["c", "d", "e", "f", "g"] {
                store.allocate_index_below(id, 8).await.unwrap();
            }
            store.revoke("a", None).await.unwrap();
            (ia, ib)
        })
        .await;
        assert!(dir.path().join("issuer.redb").is_file());
        // Every handle is dropped: the file reopens at once.
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        assert!(store.get("a").unwrap().revoked_at.is_some());
        assert_eq!(store.get("b").unwrap().status_index, ib);
        assert_eq!(store.by_subject("did:key:z1").unwrap().len(), 2);
        let (bits, gen) = store.bits().unwrap();
        assert_eq!(bits.get(ia as usize), Some(true));
        assert_eq!(bits.get(ib as usize), Some(false));
        assert_eq!(gen, 1);
        // Seven of eight indexes were reserved before the restart: the next one is the
        // eighth, and then the list is full.
        let next = bounded(store.allocate_index_below("h", 8)).await.unwrap();
        assert!(next < 8 && next != ia && next != ib);
        assert!(matches!(
            bounded(store.allocate_index_below("i", 8)).await,
            Err(IssuerError::Conflict(_))
        ));
        store.revoke("b", None).await.unwrap();
        assert_eq!(store.bits().unwrap().1, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_issuance_allocates_distinct_indexes() {
        let store = temporary();
        // A list of 64 filled by 64 concurrent issuances: every one gets its own index.
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("small-{i}");
                let index = store.allocate_index_below(&id, 64).await?;
                store.insert(&rec(&id, "did:key:z1", index)).await?;
                Ok::<_, IssuerError>(index)
            }));
        }
        let mut small = HashSet::new();
        for task in bounded(futures::future::join_all(tasks)).await {
            assert!(small.insert(task.unwrap().unwrap()));
        }
        assert_eq!(small, (0..64).collect::<HashSet<u32>>());
        assert!(matches!(
            store.allocate_index_below("one-more", 64).await,
            Err(IssuerError::Conflict(_))
        ));
        // And on the real list.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.allocate_index(&format!("full-{i}")).await
            }));
        }
        let mut full = HashSet::new();
        for task in bounded(futures::future::join_all(tasks)).await {
            assert!(full.insert(task.unwrap().unwrap()));
        }
        assert_eq!(full.len(), 200);
    }

    #[test]
    fn an_earlier_sled_database_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("issuer.sled");
        std::fs::create_dir(&legacy).unwrap();
        std::fs::write(legacy.join("db"), b"sled").unwrap();
        let err = Store::open(dir.path(), &Default::default()).err().unwrap();
        let message = err.to_string();
        assert!(
            matches!(err, IssuerError::EarlierDatabase { .. }),
            "{message}"
        );
        assert!(message.contains(&legacy.display().to_string()), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!dir.path().join("issuer.redb").exists());
    }

    #[test]
    fn a_database_in_use_is_a_one_line_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let _open = Store::open(dir.path(), &Default::default()).unwrap();
        let err = Store::open(dir.path(), &Default::default()).err().unwrap();
        let message = err.to_string();
        assert!(matches!(err, IssuerError::Database(_)), "{message}");
        assert!(message.contains("issuer.redb"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
