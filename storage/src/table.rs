//! What reads and writes share: which tree (by name), the redb table behind it, and walking
//! a range of keys.

use std::ops::{Bound, ControlFlow, RangeBounds};

use redb::ReadableTable;

use crate::error::StoreError;

/// The tree in which each service's schema version is kept.
pub(crate) const TABLE_OF_SCHEMAS: &str = "fedgate_schema";

pub(crate) type Definition<'a> = redb::TableDefinition<'a, &'static [u8], &'static [u8]>;
pub(crate) type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Anything that names a tree: a [`crate::Tree`], or its name.
pub trait Named {
    fn name(&self) -> &str;
}

impl Named for str {
    fn name(&self) -> &str {
        self
    }
}

impl Named for String {
    fn name(&self) -> &str {
        self
    }
}

/// The redb table of the tree called `name`.
pub(crate) fn definition(name: &str) -> Definition<'_> {
    redb::TableDefinition::new(name)
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

/// Walks `range` of a table (read or write side), forwards or backwards.
pub(crate) fn scan_table<'a, T>(
    table: &T,
    range: impl RangeBounds<&'a [u8]> + 'a,
    reverse: bool,
    mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
) -> Result<(), StoreError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
        (range.start_bound().cloned(), range.end_bound().cloned());
    if empty_range(&bounds) {
        return Ok(());
    }
    let iter = table.range::<&[u8]>(bounds)?;
    type Guard<'g> = redb::AccessGuard<'g, &'static [u8]>;
    let mut visit = |entry: Result<(Guard<'_>, Guard<'_>), redb::StorageError>| {
        let (k, v) = entry?;
        Ok::<_, StoreError>(f(k.value(), v.value()))
    };
    if reverse {
        for entry in iter.rev() {
            if visit(entry)?.is_break() {
                break;
            }
        }
    } else {
        for entry in iter {
            if visit(entry)?.is_break() {
                break;
            }
        }
    }
    Ok(())
}

/// redb panics on a range whose start is after its end; such a range holds nothing.
fn empty_range(bounds: &(Bound<&[u8]>, Bound<&[u8]>)) -> bool {
    match bounds {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        _ => false,
    }
}

/// The range of every key that starts with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
        }
    }
    (Bound::Included(prefix.to_vec()), Bound::Unbounded)
}
