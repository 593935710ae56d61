//! A batch's transaction on PostgreSQL, with its changes held back and sent together.
//!
//! Why: sent one by one, every insert and remove is a round trip to the server, and a
//! visibility batch of 1,000 events makes about 7,000 of them (a leaf, four or five index
//! entries and a duplicate check per event), so that ingest ran at a twentieth of its
//! speed on the embedded file. Here every change of a batch waits in memory, in one layer
//! for the closure running now and one for the closures of the batch that succeeded, and
//! goes to the server in one statement per layer when the batch commits, or earlier when a
//! read needs the server to hold it (a scan, a tree's first or last entry, a count the
//! layers cannot tell). A key read back is answered from the layers.
//!
//! A closure that fails drops its layer. If part of that layer was already sent (a read
//! needed it), the transaction goes back to a savepoint taken just before, so that the
//! closure leaves nothing, as on the embedded file.
//!
//! Counts: each change remembers whether the server held the key before the batch touched
//! it, when the closure read the key first (`insert`, `remove`); a blind write
//! (`WriteTx::put`) does not know, and a count that needs one is taken after sending.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use postgres::types::ToSql;

use crate::error::StoreError;
use crate::pg_conn::Conn;
use crate::table::Entry;
use crate::write::{TxOps, Visit};

/// Rows per statement when a layer is sent: bounds one statement's parameters.
const ROWS_PER_STATEMENT: usize = 8192;

/// One row of a statement: tree, key, and the value (`None` removes the key).
type Row<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// One change waiting to be sent.
struct Change {
    /// The value to store; `None` removes the key.
    value: Option<Vec<u8>>,
    /// Whether the server held the key before this batch changed it, when known.
    existed: Option<bool>,
}

/// Changes by tree, then key.
type Layer = HashMap<String, BTreeMap<Vec<u8>, Change>>;

/// The open transaction of one batch (see the module docs).
pub(crate) struct BatchTx<'c> {
    conn: &'c mut Conn,
    /// Changes of the batch's closures that succeeded and are not sent yet.
    done: Layer,
    /// Changes of the closure running now that are not sent yet.
    current: Layer,
    /// Part of the running closure's changes were sent after `SAVEPOINT`.
    savepoint: bool,
}

impl<'c> BatchTx<'c> {
    /// The batch on `conn`, whose transaction is open.
    pub(crate) fn new(conn: &'c mut Conn) -> Self {
        BatchTx {
            conn,
            done: HashMap::new(),
            current: HashMap::new(),
            savepoint: false,
        }
    }

    /// The change waiting for `key`, the running closure's first.
    fn pending(&self, tree: &str, key: &[u8]) -> Option<&Change> {
        [&self.current, &self.done]
            .into_iter()
            .find_map(|layer| layer.get(tree).and_then(|t| t.get(key)))
    }

    /// Sends every waiting change: the batch's first, then the running closure's after a
    /// savepoint, so that a failing closure can still be taken back.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        if !self.done.is_empty() {
            send(self.conn, &self.done)?;
            self.done.clear();
        }
        if !self.current.is_empty() {
            if !self.savepoint {
                self.conn.execute("SAVEPOINT fedgate_write")?;
                self.savepoint = true;
            }
            send(self.conn, &self.current)?;
            self.current.clear();
        }
        Ok(())
    }
}

impl TxOps for BatchTx<'_> {
    fn get(&mut self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending(tree, key) {
            Some(change) => Ok(change.value.clone()),
            None => self.conn.get(tree, key),
        }
    }

    fn get_many(&mut self, tree: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut ask = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.pending(tree, key) {
                Some(change) => out.push(change.value.clone()),
                None => {
                    out.push(None);
                    ask.push(i);
                }
            }
        }
        if !ask.is_empty() {
            let wanted: Vec<&[u8]> = ask.iter().filter_map(|&i| keys.get(i).copied()).collect();
            let mut found = self.conn.get_many(tree, &wanted)?;
            for i in ask {
                if let (Some(slot), Some(key)) = (out.get_mut(i), keys.get(i)) {
                    *slot = found.remove(*key);
                }
            }
        }
        Ok(out)
    }

    fn set(&mut self, tree: &str, key: &[u8], value: Option<&[u8]>, seen: Option<bool>) {
        // The server's state of the key has not changed since an earlier change of this
        // batch that is still waiting: what that one knew still holds.
        let existed = match self.pending(tree, key) {
            Some(earlier) => earlier.existed,
            None => seen,
        };
        let change = Change {
            value: value.map(<[u8]>::to_vec),
            existed,
        };
        self.current
            .entry(tree.to_string())
            .or_default()
            .insert(key.to_vec(), change);
    }

    fn len(&mut self, tree: &str) -> Result<u64, StoreError> {
        // What the waiting changes add or take away, if each one knows.
        let mut delta: Option<i64> = Some(0);
        let current = self.current.get(tree);
        let done = self.done.get(tree);
        let waiting = current
            .into_iter()
            .flatten()
            .chain(
                done.into_iter()
                    .flatten()
                    .filter(|(k, _)| !current.is_some_and(|c| c.contains_key(*k))),
            )
            .map(|(_, change)| change);
        for change in waiting {
            delta = match (delta, change.existed) {
                (Some(d), Some(existed)) => {
                    Some(d + i64::from(change.value.is_some()) - i64::from(existed))
                }
                _ => None,
            };
        }
        let delta = match delta {
            Some(d) => d,
            None => {
                self.flush()?;
                0
            }
        };
        let stored = i64::try_from(self.conn.len(tree)?).unwrap_or(i64::MAX);
        Ok(u64::try_from(stored.saturating_add(delta)).unwrap_or(0))
    }

    fn end(&mut self, tree: &str, last: bool) -> Result<Option<Entry>, StoreError> {
        self.flush()?;
        self.conn.end(tree, last)
    }

    fn scan_range(
        &mut self,
        tree: &str,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        f: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.flush()?;
        self.conn.scan(tree, bounds, reverse, f)
    }

    fn job_end(&mut self, keep: bool) -> Result<(), StoreError> {
        let current = std::mem::take(&mut self.current);
        if keep {
            for (tree, changes) in current {
                self.done.entry(tree).or_default().extend(changes);
            }
            if self.savepoint {
                self.savepoint = false;
                self.conn.execute("RELEASE SAVEPOINT fedgate_write")?;
            }
        } else if self.savepoint {
            self.savepoint = false;
            self.conn
                .execute("ROLLBACK TO SAVEPOINT fedgate_write; RELEASE SAVEPOINT fedgate_write")?;
        }
        Ok(())
    }
}

/// Writes `layer` in as few statements as its size allows: keys known to be new by COPY,
/// other upserts and deletes, and each tree's count moved by the keys that appeared or went.
/// Changes that know whether their key existed move the counts by what they know; the
/// others are compared with the table in the statement's snapshot, before it writes, which
/// costs an index probe each.
///
/// Why COPY for new keys: they are most of a visibility batch (a leaf and its index
/// entries per event), and a plain insert needs neither the conflict check of an upsert
/// nor the statement executor's per-row work; the server's bulk insert path takes them
/// (measured in docs/performance.md). A key sent as new that exists fails the statement on
/// its primary key, and with it the batch: the caller's promise was wrong, and nothing is
/// overwritten.
fn send(conn: &mut Conn, layer: &Layer) -> Result<(), StoreError> {
    let mut new: Vec<(&str, &[u8], &[u8])> = Vec::new();
    let mut known: Vec<Row<'_>> = Vec::new();
    let mut unknown: Vec<Row<'_>> = Vec::new();
    let mut deltas: BTreeMap<&str, i64> = BTreeMap::new();
    for (tree, changes) in layer {
        for (key, change) in changes {
            let row = (tree.as_str(), key.as_slice(), change.value.as_deref());
            match (change.existed, change.value.as_deref()) {
                // Made and removed again before it was sent: nothing to tell the server.
                (Some(false), None) => {}
                (Some(false), Some(value)) => {
                    *deltas.entry(tree.as_str()).or_default() += 1;
                    new.push((tree.as_str(), key.as_slice(), value));
                }
                (Some(existed), _) => {
                    let d = i64::from(change.value.is_some()) - i64::from(existed);
                    *deltas.entry(tree.as_str()).or_default() += d;
                    known.push(row);
                }
                (None, _) => unknown.push(row),
            }
        }
    }
    if !new.is_empty() {
        conn.copy_new(&new)?;
    }
    for chunk in known.chunks(ROWS_PER_STATEMENT) {
        let (trees, keys, values) = columns(chunk);
        let params: [&(dyn ToSql + Sync); 3] = [&trees, &keys, &values];
        conn.run(
            "WITH rows AS (
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS r(tree, key, value)
             ),
             put AS (
                 INSERT INTO {t} (tree, key, value)
                 SELECT tree, key, value FROM rows WHERE value IS NOT NULL
                 ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value
             )
             DELETE FROM {t} t USING rows r
             WHERE r.value IS NULL AND t.tree = r.tree AND t.key = r.key",
            &params,
        )?;
    }
    deltas.retain(|_, d| *d != 0);
    if !deltas.is_empty() {
        let trees: Vec<&str> = deltas.keys().copied().collect();
        let moved: Vec<i64> = deltas.values().copied().collect();
        let params: [&(dyn ToSql + Sync); 2] = [&trees, &moved];
        conn.run(
            "INSERT INTO {c} (tree, n) SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (tree) DO UPDATE SET n = {c}.n + EXCLUDED.n",
            &params,
        )?;
    }
    for chunk in unknown.chunks(ROWS_PER_STATEMENT) {
        let (trees, keys, values) = columns(chunk);
        let params: [&(dyn ToSql + Sync); 3] = [&trees, &keys, &values];
        conn.run(
            "WITH rows AS (
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS r(tree, key, value)
             ),
             old AS (
                 SELECT r.tree, r.key FROM rows r
                 JOIN {t} t ON t.tree = r.tree AND t.key = r.key
             ),
             put AS (
                 INSERT INTO {t} (tree, key, value)
                 SELECT tree, key, value FROM rows WHERE value IS NOT NULL
                 ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value
             ),
             gone AS (
                 DELETE FROM {t} t USING rows r
                 WHERE r.value IS NULL AND t.tree = r.tree AND t.key = r.key
             ),
             delta AS (
                 SELECT r.tree, sum(CASE
                     WHEN r.value IS NOT NULL AND o.key IS NULL THEN 1
                     WHEN r.value IS NULL AND o.key IS NOT NULL THEN -1
                     ELSE 0 END)::bigint AS d
                 FROM rows r LEFT JOIN old o ON o.tree = r.tree AND o.key = r.key
                 GROUP BY r.tree
             ),
             counted AS (
                 INSERT INTO {c} (tree, n) SELECT tree, d FROM delta WHERE d <> 0
                 ON CONFLICT (tree) DO UPDATE SET n = {c}.n + EXCLUDED.n
             )
             SELECT 1",
            &params,
        )?;
    }
    Ok(())
}

/// A statement's three array parameters.
type Columns<'a> = (Vec<&'a str>, Vec<&'a [u8]>, Vec<Option<&'a [u8]>>);

fn columns<'a>(rows: &[Row<'a>]) -> Columns<'a> {
    (
        rows.iter().map(|r| r.0).collect(),
        rows.iter().map(|r| r.1).collect(),
        rows.iter().map(|r| r.2).collect(),
    )
}
