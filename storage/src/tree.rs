//! A named tree of byte keys and values: one redb table.
//!
//! Reads on a `Tree` each see the database as of that call. Several reads that must agree
//! take one [`crate::Snapshot`]; writes go through [`crate::Db::write`].

use std::ops::{ControlFlow, RangeBounds};
use std::sync::Arc;

use crate::db::Db;
use crate::error::StoreError;
use crate::table::{borrowed, prefix_range, Entry, Named};

/// A named tree of one database. Clones are cheap.
#[derive(Clone)]
pub struct Tree {
    db: Db,
    name: Arc<str>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tree").field(&self.name).finish()
    }
}

impl Tree {
    pub(crate) fn new(db: Db, name: &str) -> Tree {
        Tree {
            db,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database this tree is in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.read()?.get(self, key)
    }

    pub fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    /// Calls `f` with each entry in `range`, in key order, until it breaks.
    pub fn scan<'a>(
        &self,
        range: impl RangeBounds<&'a [u8]> + 'a,
        f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.db.read()?.scan(self, range, f)
    }

    /// Every entry in `range`, in key order, at most `limit` of them.
    pub fn range<'a>(
        &self,
        range: impl RangeBounds<&'a [u8]> + 'a,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.scan(range, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(out)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let (start, end) = prefix_range(prefix);
        self.range(borrowed(&start, &end), usize::MAX)
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.range(.., usize::MAX)
    }

    pub fn first(&self) -> Result<Option<Entry>, StoreError> {
        self.db.read()?.first(self)
    }

    pub fn last(&self) -> Result<Option<Entry>, StoreError> {
        self.db.read()?.last(self)
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        self.db.read()?.len(self)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Sets `key` to `value`, durably (its own write; see [`Db::write`] to combine).
    pub async fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let (tree, key, value) = (self.clone(), key.to_vec(), value.to_vec());
        self.db
            .write(move |tx| tx.insert(&tree, &key, &value).map(|_| ()))
            .await
    }

    /// Removes `key`, durably.
    pub async fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let (tree, key) = (self.clone(), key.to_vec());
        self.db
            .write(move |tx| tx.remove(&tree, &key).map(|_| ()))
            .await
    }
}

impl Named for Tree {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Db {
    /// The tree called `name` (created by its first write; empty until then).
    pub fn tree(&self, name: &str) -> Tree {
        Tree::new(self.clone(), name)
    }
}
