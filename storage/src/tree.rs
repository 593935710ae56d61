//! A named tree of byte keys and values: one redb table.
//!
//! Reads on a `Tree` each see the database as of that call. Several reads that must agree
//! take one [`crate::Snapshot`]; writes go through [`crate::Db::write`].

use std::ops::{Bound, ControlFlow, RangeBounds};
use std::sync::Arc;

use crate::db::{prefix_range, Db};
use crate::error::StoreError;

/// The tree in which each service's schema version is kept.
pub(crate) const TABLE_OF_SCHEMAS: &str = "fedgate_schema";

pub(crate) type Definition<'a> = redb::TableDefinition<'a, &'static [u8], &'static [u8]>;
pub(crate) type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

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

    pub(crate) fn definition(&self) -> Definition<'_> {
        redb::TableDefinition::new(&self.name)
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

/// `(start, end)` bounds over owned keys, as bounds over borrowed ones.
pub(crate) fn borrowed<'a>(
    start: &'a Bound<Vec<u8>>,
    end: &'a Bound<Vec<u8>>,
) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        start.as_ref().map(Vec::as_slice),
        end.as_ref().map(Vec::as_slice),
    )
}
