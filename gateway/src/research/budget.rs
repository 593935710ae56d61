//! The privacy budget each study has spent at this custodian, in micro-ε.
//!
//! One small type in front of the storage engine (sled today), so that the engine can be
//! swapped: a check-and-debit is atomic (compare-and-swap on the study's counter) and
//! flushed to disk before it returns, so an answer never leaves on budget that a crash
//! could give back. What a study may spend in total is not stored: it is worked out per
//! query from the configuration and the study credential, so that lowering it takes effect
//! at once.

/// The tree this module owns.
const TREE: &str = "research_budget";

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("privacy budget storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("privacy budget storage holds an unreadable entry")]
    Corrupt,
    #[error("privacy budget storage: the flush to disk did not finish")]
    Interrupted,
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
    tree: sled::Tree,
}

impl BudgetStore {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(BudgetStore {
            tree: db.open_tree(TREE)?,
        })
    }

    /// Micro-ε the study has spent at this custodian.
    pub fn spent(&self, study: &str) -> Result<u64, BudgetError> {
        decode(self.tree.get(study.as_bytes())?.as_deref())
    }

    /// Debits `charge` micro-ε from the study's budget of `total` if it fits, atomically,
    /// and flushes before returning.
    pub async fn debit(&self, study: &str, charge: u64, total: u64) -> Result<Debit, BudgetError> {
        let key = study.as_bytes();
        let left = loop {
            let current = self.tree.get(key)?;
            let spent = decode(current.as_deref())?;
            let left = total.saturating_sub(spent);
            if charge > left {
                return Ok(Debit::Refused { left });
            }
            let next = spent.checked_add(charge).ok_or(BudgetError::Corrupt)?;
            match self
                .tree
                .compare_and_swap(key, current, Some(&next.to_be_bytes()[..]))?
            {
                Ok(()) => break left - charge,
                // Another query of the same study debited in between: read again.
                Err(_) => continue,
            }
        };
        // A blocking flush on the blocking pool: sled's `flush_async` has open deadlock
        // reports and was seen to hang here.
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || tree.flush())
            .await
            .map_err(|_| BudgetError::Interrupted)??;
        Ok(Debit::Spent { left })
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
        let path = dir.path().join("db");
        {
            let db = sled::open(&path).unwrap();
            let store = BudgetStore::open(&db).unwrap();
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
        // sled releases its lock asynchronously.
        let db = loop {
            match sled::open(&path) {
                Ok(db) => break db,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let store = BudgetStore::open(&db).unwrap();
        assert_eq!(store.spent("urn:fedgate:study:a").unwrap(), 1000);
        assert_eq!(store.spent("urn:fedgate:study:b").unwrap(), 1);
    }

    #[tokio::test]
    async fn concurrent_debits_never_overspend() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = BudgetStore::open(&db).unwrap();
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
        assert_eq!(granted, 14);
        assert_eq!(store.spent("urn:fedgate:study:c").unwrap(), 980);
    }

    #[test]
    fn an_unreadable_entry_fails_closed() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree(TREE)
            .unwrap()
            .insert("s", &[1u8, 2][..])
            .unwrap();
        let store = BudgetStore::open(&db).unwrap();
        assert!(matches!(store.spent("s"), Err(BudgetError::Corrupt)));
    }
}
