//! One PostgreSQL connection of a store, with its prepared statements: the reads and
//! writes that the readers, the writer and a batch's transaction (`pg_tx`) send.

use std::collections::HashMap;
use std::ops::{Bound, ControlFlow, RangeBounds};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, Statement};

use crate::error::StoreError;
use crate::table::Entry;
use crate::write::Visit;

/// Rows fetched per round trip while scanning.
pub(crate) const PAGE: i64 = 512;

/// One connection and its prepared statements.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) schema: String,
    pub(crate) statements: HashMap<String, Statement>,
}

/// Which bound a scan query has at each end.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Edge {
    None,
    Included,
    Excluded,
}

impl Conn {
    pub(crate) fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = sql
            .replace("{t}", &format!("\"{}\".fedgate_kv", self.schema))
            .replace("{c}", &format!("\"{}\".fedgate_counts", self.schema));
        let statement = self.client.prepare(&text)?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    pub(crate) fn get(&mut self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(
            "SELECT value FROM {t} WHERE tree = $1 AND key = $2",
            &[&tree, &key],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// The values at `keys` that are present, by key.
    pub(crate) fn get_many(
        &mut self,
        tree: &str,
        keys: &[&[u8]],
    ) -> Result<HashMap<Vec<u8>, Vec<u8>>, StoreError> {
        let rows = self.query(
            "SELECT key, value FROM {t} WHERE tree = $1 AND key = ANY($2)",
            &[&tree, &keys],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Runs a statement for its effect.
    pub(crate) fn run(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)?;
        Ok(())
    }

    /// The tree's entry count, kept by every insert and remove (migration 2).
    pub(crate) fn len(&mut self, tree: &str) -> Result<u64, StoreError> {
        let rows = self.query("SELECT n FROM {c} WHERE tree = $1", &[&tree])?;
        let n: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(crate) fn end(&mut self, tree: &str, last: bool) -> Result<Option<Entry>, StoreError> {
        let sql = if last {
            "SELECT key, value FROM {t} WHERE tree = $1 ORDER BY key DESC LIMIT 1"
        } else {
            "SELECT key, value FROM {t} WHERE tree = $1 ORDER BY key LIMIT 1"
        };
        let rows = self.query(sql, &[&tree])?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }

    /// One page of `range`, forwards or backwards.
    pub(crate) fn page(
        &mut self,
        tree: &str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let (lo_edge, lo) = edge(start);
        let (hi_edge, hi) = edge(end);
        let mut sql = String::from("SELECT key, value FROM {t} WHERE tree = $1");
        match lo_edge {
            Edge::None => {}
            Edge::Included => sql.push_str(" AND key >= $2"),
            Edge::Excluded => sql.push_str(" AND key > $2"),
        }
        match hi_edge {
            Edge::None => {}
            Edge::Included => sql.push_str(" AND key <= $3"),
            Edge::Excluded => sql.push_str(" AND key < $3"),
        }
        // Unused parameters are still typed, so that every variant takes the same four.
        if lo_edge == Edge::None {
            sql.push_str(" AND $2::bytea IS NOT DISTINCT FROM $2::bytea");
        }
        if hi_edge == Edge::None {
            sql.push_str(" AND $3::bytea IS NOT DISTINCT FROM $3::bytea");
        }
        sql.push_str(if reverse {
            " ORDER BY key DESC LIMIT $4"
        } else {
            " ORDER BY key LIMIT $4"
        });
        let rows = self.query(&sql, &[&tree, &lo, &hi, &PAGE])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Walks `range` page by page, calling `f` until it breaks.
    pub(crate) fn scan<'a>(
        &mut self,
        tree: &str,
        range: impl RangeBounds<&'a [u8]>,
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        walk(
            (range.start_bound().cloned(), range.end_bound().cloned()),
            reverse,
            |start, end| self.page(tree, start, end, reverse),
            &mut f,
        )
    }

    /// Inserts rows whose keys the table does not hold, by binary COPY (see `pg_tx::send`).
    /// A key that exists fails the COPY on the primary key: nothing is overwritten.
    pub(crate) fn copy_new(&mut self, rows: &[(&str, &[u8], &[u8])]) -> Result<(), StoreError> {
        let sql = format!(
            "COPY \"{}\".fedgate_kv (tree, key, value) FROM STDIN (FORMAT binary)",
            self.schema
        );
        let sink = self.client.copy_in(&sql)?;
        let mut writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::BYTEA, Type::BYTEA]);
        for (tree, key, value) in rows {
            writer.write(&[tree, key, value])?;
        }
        writer.finish()?;
        Ok(())
    }

    pub(crate) fn execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }
}

fn edge(bound: Bound<&[u8]>) -> (Edge, Vec<u8>) {
    match bound {
        Bound::Unbounded => (Edge::None, Vec::new()),
        Bound::Included(k) => (Edge::Included, k.to_vec()),
        Bound::Excluded(k) => (Edge::Excluded, k.to_vec()),
    }
}

/// Walks a range by pages fetched with `page(start, end)`, each starting past the last key
/// of the one before, and calls `f` on every entry until it breaks.
pub(crate) fn walk(
    bounds: (Bound<&[u8]>, Bound<&[u8]>),
    reverse: bool,
    mut page: impl FnMut(Bound<&[u8]>, Bound<&[u8]>) -> Result<Vec<Entry>, StoreError>,
    f: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let (start, end) = bounds;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (s, e) = match (&after, reverse) {
            (None, _) => (start, end),
            (Some(k), false) => (Bound::Excluded(k.as_slice()), end),
            (Some(k), true) => (start, Bound::Excluded(k.as_slice())),
        };
        let rows = page(s, e)?;
        let full = rows.len() as i64 == PAGE;
        for (k, v) in &rows {
            if f(k, v).is_break() {
                return Ok(());
            }
        }
        match rows.into_iter().last() {
            Some((k, _)) if full => after = Some(k),
            _ => return Ok(()),
        }
    }
}
