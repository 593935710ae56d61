//! The privacy budget each study has spent at this custodian, in micro-ε.
//!
//! A check-and-debit is one write of the gateway's database: the study's counter is read,
//! checked against the total and raised inside the write, and the database runs one write
//! at a time, so two queries of one study can never both spend the last of its budget.
//! The write returns once it is on disk, so an answer never leaves on budget that a crash
//! could give back. What a study may spend in total is not stored: it is worked out per
//! query from the configuration and the study credential, so that lowering it takes effect
//! at once.

use storage::StoreError;

use crate::db::{Db, Tree};

/// The tree this module owns.
const TREE: &str = "research_budget";

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("privacy budget storage: {0}")]
    Storage(#[from] StoreError),
    #[error("privacy budget storage holds an unreadable entry")]
    Corrupt,
}

/// The outcome of a check-and-debit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debit {
    /// Debited and on disk; `left` is what remains of the total.
    Spent { left: u64 },
    /// Nothing debited: `charge` is more than the `left` of the total.
    Refused { left: u64 },
}

#[derive(Clone)]
pub struct BudgetStore {
    db: Db,
    tree: Tree,
}

impl BudgetStore {
    pub fn open(db: &Db) -> Self {
        BudgetStore {
            db: db.clone(),
            tree: db.tree(TREE),
        }
    }

    /// Micro-ε the study has spent at this custodian.
    pub fn spent(&self, study: &str) -> Result<u64, BudgetError> {
        decode(self.tree.get(study.as_bytes())?.as_deref())
    }

    /// Debits `charge` micro-ε from the study's budget of `total` if it fits, atomically;
    /// on disk when it returns.
    pub async fn debit(&self, study: &str, charge: u64, total: u64) -> Result<Debit, BudgetError> {
        let (tree, key) = (self.tree.clone(), study.as_bytes().to_vec());
        self.db
            .write(move |tx| {
                let spent = decode(tx.get(&tree, &key)?.as_deref())?;
                let left = total.saturating_sub(spent);
                if charge > left {
                    return Ok(Debit::Refused { left });
                }
                let next = spent.checked_add(charge).ok_or(BudgetError::Corrupt)?;
                tx.insert(&tree, &key, &next.to_be_bytes())?;
                Ok(Debit::Spent {
                    left: left - charge,
                })
            })
            .await
    }
}

fn decode(value: Option<&[u8]>) -> Result<u64, BudgetError> {
    match value {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes)
            .map(u64::from_be_bytes)
            .map_err(|_| BudgetError::Corrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debits_stop_at_the_total_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::db::open(dir.path()).unwrap();
            let store = BudgetStore::open(&db);
            assert_eq!(store.spent("urn:fedgate:study:a").unwrap(), 0);
            let r = store.debit("urn:fedgate:study:a", 400, 1000).await.unwrap();
            assert_eq!(r, Debit::Spent { left: 600 });
            let r = store.debit("urn:fedgate:study:a", 600, 1000).await.unwrap();
            assert_eq!(r, Debit::Spent { left: 0 });
            let r = store.debit("urn:fedgate:study:a", 1, 1000).await.unwrap();
            assert_eq!(r, Debit::Refused { left: 0 });
            // Studies do not share a budget.
            let r = store.debit("urn:fedgate:study:b", 1, 1000).await.unwrap();
            assert_eq!(r, Debit::Spent { left: 999 });
            // A total lowered below what was spent leaves nothing.
            let r = store.debit("urn:fedgate:study:b", 1, 0).await.unwrap();
            assert_eq!(r, Debit::Refused { left: 0 });
        }
        // The file is closed with its last handle: it reopens at once.
        let db = crate::db::open(dir.path()).unwrap();
        let store = BudgetStore::open(&db);
        assert_eq!(store.spent("urn:fedgate:study:a").unwrap(), 1000);
        assert_eq!(store.spent("urn:fedgate:study:b").unwrap(), 1);
    }

    /// Debits from many threads at once, on a file (each one committed): exactly as many
    /// are granted as the total holds, and the total is never passed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_debits_never_overspend() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let store = BudgetStore::open(&db);
        let run = async {
            let mut tasks = Vec::new();
            for _ in 0..40 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    s.debit("urn:fedgate:study:c", 70, 1000).await.unwrap()
                }));
            }
            let mut granted = 0;
            for t in tasks {
                if matches!(t.await.unwrap(), Debit::Spent { .. }) {
                    granted += 1;
                }
            }
            granted
        };
        let granted = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("40 debits did not finish within 60 s");
        assert_eq!(granted, 14);
        assert_eq!(store.spent("urn:fedgate:study:c").unwrap(), 980);
    }

    #[tokio::test]
    async fn an_unreadable_entry_fails_closed() {
        let db = crate::db::temporary().unwrap();
        db.tree(TREE).insert(b"s", &[1u8, 2]).await.unwrap();
        let store = BudgetStore::open(&db);
        assert!(matches!(store.spent("s"), Err(BudgetError::Corrupt)));
        assert!(matches!(
            store.debit("s", 1, 10).await,
            Err(BudgetError::Corrupt)
        ));
        assert_eq!(db.tree(TREE).get(b"s").unwrap(), Some(vec![1u8, 2]));
    }
}
