//! The visibility log's storage: an RFC 6962 Merkle tree stored in the service's database
//! (the `storage` crate). The hashing and the proof verifiers are `federation::log`'s,
//! shared with gateways and auditors.
//!
//! Storage layout, per log name `N` (three trees, written together by one write):
//! - `fedgate.log/N/leaves`: leaf index (u64 big-endian) → leaf data.
//! - `fedgate.log/N/nodes`: the hash of every complete subtree. Node (level, index) covers
//!   leaves `[index << level, (index + 1) << level)`; level 0 holds the leaf hashes. Nodes
//!   are grouped in tiles of [`TILE_WIDTH`] consecutive nodes of one level: key (level u8,
//!   index / 256 as u64 big-endian) → up to 256 × 32 bytes. A node, once written, never
//!   changes (a partial tile only grows), so a reader that saw a size finds every node that
//!   size needs.
//! - `fedgate.log/N/meta`: `size` → the number of leaves (u64 big-endian).
//!
//! Appending computes the new leaf hashes and the parents they complete from the tree's
//! right edge (O(log n) stored nodes), then rewrites only the last tile of each level.
//! Tiles rather than one record per node, because the database's cost is mostly per
//! record: three records per leaf appended at about a third of the rate of one. Any root
//! or proof at any size ≤ the current size is assembled from O(log² n) stored nodes;
//! nothing is rehashed from the leaves.
//!
//! Appends run inside a database write ([`MerkleLog::append_in`]), so that a caller can
//! append and record what goes with the new leaves in one atomic, durable commit; the one
//! writer thread runs writes one after another, so two appends can never both build on
//! the same size. Reads take one snapshot ([`MerkleLog::view`]): a root, a proof and the
//! size they are for always agree.

use std::ops::Range;

use federation::log::{empty_root, leaf_hash, node_hash, split_point, Hash, MAX_LEVEL};
use storage::{Db, Snapshot, StoreError, Tree, WriteTx};

const SIZE_KEY: &[u8] = b"size";

/// Nodes per tile.
pub const TILE_WIDTH: u64 = 256;
const TILE_BYTES: usize = TILE_WIDTH as usize * 32;

/// Errors of the stored log. Requests outside the log are typed so that the HTTP layer can
/// answer them as client errors.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log name must not be empty")]
    EmptyName,
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {requested} is larger than the log ({size} leaves)")]
    SizeTooLarge { requested: u64, size: u64 },
    #[error("consistency proof asked from size {old} to the smaller size {new}")]
    OldAfterNew { old: u64, new: u64 },
    #[error("consistency proof asked from the empty tree")]
    EmptyOldTree,
    #[error("the log cannot hold more leaves")]
    Full,
    #[error("log storage: {0}")]
    Storage(#[from] StoreError),
    #[error("log storage is corrupt: {0}")]
    Corrupt(String),
}

/// Leaves to append, hashed before the database's writer sees them.
#[derive(Debug, Clone, Default)]
pub struct Leaves {
    data: Vec<Vec<u8>>,
    hashes: Vec<Hash>,
}

impl Leaves {
    pub fn new(data: Vec<Vec<u8>>) -> Self {
        let hashes = data.iter().map(|d| leaf_hash(d)).collect();
        Leaves { data, hashes }
    }

    /// Leaves whose hashes the caller computed with [`leaf_hash`] (crate-private: a wrong
    /// hash would corrupt the log).
    pub(crate) fn hashed(data: Vec<Vec<u8>>, hashes: Vec<Hash>) -> Self {
        Leaves { data, hashes }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The data of the leaf at `pos` in this batch.
    pub fn get(&self, pos: usize) -> Option<&[u8]> {
        self.data.get(pos).map(Vec::as_slice)
    }
}

/// An append-only RFC 6962 Merkle tree stored in a [`Db`]. Clones share the same log.
#[derive(Debug, Clone)]
pub struct MerkleLog {
    leaves: Tree,
    nodes: Tree,
    meta: Tree,
}

fn tile_key(level: u32, tile: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    // Levels never exceed 63, so the byte holds them.
    key[0] = level as u8;
    key[1..].copy_from_slice(&tile.to_be_bytes());
    key
}

fn decode_size(value: Option<Vec<u8>>) -> Result<u64, LogError> {
    match value {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| LogError::Corrupt(format!("size record has {} bytes", v.len()))),
    }
}

/// Where the log is read from: a snapshot, or the write appending to it (which sees its
/// own changes and those of the writes committed before it).
trait Source {
    fn get(&mut self, tree: &Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

impl Source for &Snapshot {
    fn get(&mut self, tree: &Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Snapshot::get(self, tree, key)
    }
}

impl Source for &mut WriteTx<'_> {
    fn get(&mut self, tree: &Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        WriteTx::get(self, tree, key)
    }
}

/// Reads nodes from `source`, keeping the last tile read of each level: the nodes a root
/// or a proof needs cluster in a few tiles per level.
struct Nodes<'l, S> {
    log: &'l MerkleLog,
    source: S,
    tiles: Vec<Option<(u64, Vec<u8>)>>,
}

impl<'l, S: Source> Nodes<'l, S> {
    fn new(log: &'l MerkleLog, source: S) -> Self {
        Nodes {
            log,
            source,
            tiles: vec![None; MAX_LEVEL as usize + 1],
        }
    }

    fn size(&mut self) -> Result<u64, LogError> {
        decode_size(self.source.get(&self.log.meta, SIZE_KEY)?)
    }

    /// The stored tile (`level`, `tile`), empty if there is none.
    fn tile(&mut self, level: u32, tile: u64) -> Result<&[u8], LogError> {
        let slot = self
            .tiles
            .get_mut(level as usize)
            .ok_or_else(|| LogError::Corrupt(format!("level {level} out of range")))?;
        if slot.as_ref().is_none_or(|(t, _)| *t != tile) {
            let bytes = self
                .source
                .get(&self.log.nodes, &tile_key(level, tile))?
                .unwrap_or_default();
            *slot = Some((tile, bytes));
        }
        Ok(slot.as_ref().map(|(_, b)| b.as_slice()).unwrap_or_default())
    }

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, LogError> {
        let missing = || LogError::Corrupt(format!("node ({level}, {index}) is missing"));
        let at = (index % TILE_WIDTH) as usize * 32;
        let tile = self.tile(level, index / TILE_WIDTH)?;
        tile.get(at..at + 32)
            .and_then(|h| Hash::try_from(h).ok())
            .ok_or_else(missing)
    }

    /// MTH(D[lo:hi]) for a non-empty range within the stored size.
    fn subtree_hash(&mut self, lo: u64, hi: u64) -> Result<Hash, LogError> {
        let n = hi
            .checked_sub(lo)
            .filter(|&n| n > 0)
            .ok_or_else(|| LogError::Corrupt(format!("empty subtree [{lo}, {hi})")))?;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let level = n.trailing_zeros();
            return self.node(level, lo >> level);
        }
        let k = split_point(n);
        let left = self.subtree_hash(lo, lo + k)?;
        let right = self.subtree_hash(lo + k, hi)?;
        Ok(node_hash(&left, &right))
    }

    fn root(&mut self, size: u64) -> Result<Hash, LogError> {
        if size == 0 {
            return Ok(empty_root());
        }
        self.subtree_hash(0, size)
    }
}

impl MerkleLog {
    /// Opens (or creates) the log `name` in `db`.
    pub fn open(db: &Db, name: &str) -> Result<Self, LogError> {
        if name.is_empty() {
            return Err(LogError::EmptyName);
        }
        let log = MerkleLog {
            leaves: db.tree(&format!("fedgate.log/{name}/leaves")),
            nodes: db.tree(&format!("fedgate.log/{name}/nodes")),
            meta: db.tree(&format!("fedgate.log/{name}/meta")),
        };
        // Appends are atomic, so the last leaf must sit right below the recorded size; if
        // not, the trees were changed behind the log's back and no proof could be trusted.
        let snapshot = db.read()?;
        let size = decode_size(snapshot.get(&log.meta, SIZE_KEY)?)?;
        let last = match snapshot.last(&log.leaves)? {
            None => None,
            Some((k, _)) => Some(
                <[u8; 8]>::try_from(k.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| LogError::Corrupt("leaf key is not 8 bytes".into()))?,
            ),
        };
        let expected = size.checked_sub(1);
        if last != expected {
            return Err(LogError::Corrupt(format!(
                "size is {size} but the last leaf is {last:?}"
            )));
        }
        Ok(log)
    }

    /// The database the log is in.
    pub fn db(&self) -> &Db {
        self.leaves.db()
    }

    /// The log as of `snapshot`: every answer of the view is for that one state.
    pub fn view<'a>(&'a self, snapshot: &'a Snapshot) -> Result<LogView<'a>, LogError> {
        let mut nodes = Nodes::new(self, snapshot);
        let size = nodes.size()?;
        Ok(LogView {
            nodes,
            snapshot,
            size,
        })
    }

    /// The number of leaves.
    pub fn size(&self) -> Result<u64, LogError> {
        let snapshot = self.db().read()?;
        Ok(self.view(&snapshot)?.size())
    }

    /// The number of leaves, as the write `tx` sees it.
    pub fn size_in(&self, tx: &mut WriteTx<'_>) -> Result<u64, LogError> {
        Nodes::new(self, tx).size()
    }

    /// The data of leaf `index`, as the write `tx` sees it.
    pub fn leaf_in(&self, tx: &mut WriteTx<'_>, index: u64) -> Result<Vec<u8>, LogError> {
        let size = self.size_in(tx)?;
        if index >= size {
            return Err(LogError::IndexOutOfRange { index, size });
        }
        tx.get(&self.leaves, &index.to_be_bytes())?
            .ok_or_else(|| LogError::Corrupt(format!("leaf {index} is missing")))
    }

    /// The tree head of the whole log, as the write `tx` sees it.
    pub fn root_in(&self, tx: &mut WriteTx<'_>) -> Result<(u64, Hash), LogError> {
        let mut nodes = Nodes::new(self, tx);
        let size = nodes.size()?;
        Ok((size, nodes.root(size)?))
    }

    /// Appends `leaves` in the write `tx` and returns their indexes. Either the whole
    /// batch and every hash it completes is stored, or (when `tx`'s write fails) nothing
    /// is. Durable once the write's `.await` returns.
    pub fn append_in(&self, tx: &mut WriteTx<'_>, leaves: &Leaves) -> Result<Range<u64>, LogError> {
        if leaves.hashes.len() != leaves.data.len() {
            return Err(LogError::Corrupt(format!(
                "{} leaves but {} leaf hashes",
                leaves.data.len(),
                leaves.hashes.len()
            )));
        }
        let mut nodes = Nodes::new(self, &mut *tx);
        let start = nodes.size()?;
        let count = u64::try_from(leaves.len()).map_err(|_| LogError::Full)?;
        let end = start.checked_add(count).ok_or(LogError::Full)?;
        if end > 1u64 << MAX_LEVEL {
            return Err(LogError::Full);
        }
        if count == 0 {
            return Ok(start..start);
        }

        // The right edge of the tree: the roots of the complete subtrees of `start`,
        // lowest level last, which are the only nodes the new leaves combine with.
        let mut edge: Vec<(u32, Hash)> = Vec::with_capacity(64);
        for level in (0..=MAX_LEVEL).rev() {
            if (start >> level) & 1 == 1 {
                edge.push((level, nodes.node(level, (start >> level) - 1)?));
            }
        }

        // The new nodes of each level, in index order: level L gains the nodes
        // `start >> L .. end >> L`.
        let mut new_nodes: Vec<Vec<Hash>> = vec![Vec::new(); MAX_LEVEL as usize + 1];
        let mut push = |level: u32, hash: Hash| {
            new_nodes
                .get_mut(level as usize)
                .map(|nodes| nodes.push(hash))
                .ok_or_else(|| LogError::Corrupt(format!("level {level} out of range")))
        };
        for (index, &leaf) in (start..end).zip(&leaves.hashes) {
            let mut hash = leaf;
            push(0, hash)?;
            let (mut level, mut at) = (0u32, index);
            // A right child completes its parent; keep climbing while that happens.
            while at & 1 == 1 {
                let (left_level, left) = edge
                    .pop()
                    .ok_or_else(|| LogError::Corrupt("right edge shorter than size".into()))?;
                if left_level != level {
                    return Err(LogError::Corrupt("right edge out of order".into()));
                }
                hash = node_hash(&left, &hash);
                level += 1;
                at >>= 1;
                push(level, hash)?;
            }
            edge.push((level, hash));
        }

        let mut tiles: Vec<([u8; 9], Vec<u8>)> = Vec::new();
        for (level, hashes) in (0u32..).zip(&new_nodes) {
            if hashes.is_empty() {
                continue;
            }
            let first = start >> level;
            let mut tile = first / TILE_WIDTH;
            let kept = (first % TILE_WIDTH) as usize * 32;
            let mut buf = Vec::with_capacity(TILE_BYTES);
            if kept > 0 {
                let old = nodes.tile(level, tile)?;
                let prefix = old.get(..kept).ok_or_else(|| {
                    LogError::Corrupt(format!(
                        "tile ({level}, {tile}) has {} bytes, expected {kept}",
                        old.len()
                    ))
                })?;
                buf.extend_from_slice(prefix);
            }
            for hash in hashes {
                buf.extend_from_slice(hash);
                if buf.len() == TILE_BYTES {
                    tiles.push((tile_key(level, tile), std::mem::take(&mut buf)));
                    tile += 1;
                }
            }
            if !buf.is_empty() {
                tiles.push((tile_key(level, tile), buf));
            }
        }
        drop(nodes);

        // Blind writes: nothing here needs the value it replaces, and on PostgreSQL they
        // travel to the server together when the batch commits. Leaves past the size are
        // new by construction.
        for (index, data) in (start..end).zip(&leaves.data) {
            tx.put_new(&self.leaves, &index.to_be_bytes(), data)?;
        }
        for (key, tile) in &tiles {
            tx.put(&self.nodes, key, tile)?;
        }
        tx.put(&self.meta, SIZE_KEY, &end.to_be_bytes())?;
        Ok(start..end)
    }

    /// Appends `leaves` in a write of their own; durable when this returns.
    pub async fn append_batch(&self, leaves: Vec<Vec<u8>>) -> Result<Range<u64>, LogError> {
        let leaves = Leaves::new(leaves);
        let log = self.clone();
        self.db().write(move |tx| log.append_in(tx, &leaves)).await
    }

    /// The data of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, LogError> {
        let snapshot = self.db().read()?;
        self.view(&snapshot)?.leaf(index)
    }

    /// The tree head (MTH) of the first `size` leaves, for any size up to the current one.
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        let snapshot = self.db().read()?;
        self.view(&snapshot)?.root(size)
    }

    /// RFC 6962 §2.1.1 PATH(index, D[size]): the audit path, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        let snapshot = self.db().read()?;
        self.view(&snapshot)?.inclusion_proof(index, size)
    }

    /// RFC 6962 §2.1.2 PROOF(old, D[new]): the consistency proof, deepest node first.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        let snapshot = self.db().read()?;
        self.view(&snapshot)?.consistency_proof(old, new)
    }
}

/// The log as of one snapshot ([`MerkleLog::view`]).
pub struct LogView<'a> {
    nodes: Nodes<'a, &'a Snapshot>,
    snapshot: &'a Snapshot,
    size: u64,
}

impl LogView<'_> {
    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The data of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, LogError> {
        if index >= self.size {
            return Err(LogError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        self.snapshot
            .get(&self.nodes.log.leaves, &index.to_be_bytes())?
            .ok_or_else(|| LogError::Corrupt(format!("leaf {index} is missing")))
    }

    /// The tree head (MTH) of the first `size` leaves, for any size up to the view's.
    pub fn root(&mut self, size: u64) -> Result<Hash, LogError> {
        self.check_size(size)?;
        self.nodes.root(size)
    }

    /// RFC 6962 §2.1.1 PATH(index, D[size]): the audit path, leaf side first.
    pub fn inclusion_proof(&mut self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(size)?;
        if index >= size {
            return Err(LogError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        let (mut lo, mut hi) = (0u64, size);
        while hi - lo > 1 {
            let k = split_point(hi - lo);
            if index < lo + k {
                proof.push(self.nodes.subtree_hash(lo + k, hi)?);
                hi = lo + k;
            } else {
                proof.push(self.nodes.subtree_hash(lo, lo + k)?);
                lo += k;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    /// RFC 6962 §2.1.2 PROOF(old, D[new]): the consistency proof, deepest node first.
    pub fn consistency_proof(&mut self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(new)?;
        if old > new {
            return Err(LogError::OldAfterNew { old, new });
        }
        if old == 0 {
            return Err(LogError::EmptyOldTree);
        }
        let mut proof = Vec::new();
        // SUBPROOF(m, D[lo:hi], whole_old_tree), unrolled.
        let (mut m, mut lo, mut hi, mut whole) = (old, 0u64, new, true);
        loop {
            let n = hi - lo;
            if m == n {
                if !whole {
                    proof.push(self.nodes.subtree_hash(lo, hi)?);
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                proof.push(self.nodes.subtree_hash(lo + k, hi)?);
                hi = lo + k;
            } else {
                proof.push(self.nodes.subtree_hash(lo, lo + k)?);
                m -= k;
                lo += k;
                whole = false;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    fn check_size(&self, requested: u64) -> Result<(), LogError> {
        if requested > self.size {
            return Err(LogError::SizeTooLarge {
                requested,
                size: self.size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::log::{verify_consistency, verify_inclusion};
    use storage::Schema;

    const SCHEMA: Schema = Schema {
        name: "merkle-test",
        version: 1,
    };

    fn temp_db() -> Db {
        Db::temporary(SCHEMA).unwrap()
    }

    fn data(i: u64) -> Vec<u8> {
        format!("event-{i}").into_bytes()
    }

    /// RFC 6962 §2.1 MTH, written straight from the definition.
    fn naive_root(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// A log with `n` leaves, appended in uneven batches so batch boundaries vary, and the
    /// root recorded after every single size.
    async fn build(n: u64) -> (Db, MerkleLog, Vec<Vec<u8>>, Vec<Hash>) {
        let db = temp_db();
        let log = MerkleLog::open(&db, "test").unwrap();
        let all: Vec<Vec<u8>> = (0..n).map(data).collect();
        let mut roots = vec![log.root(0).unwrap()];
        let mut i = 0usize;
        let mut step = 1usize;
        while i < all.len() {
            let end = (i + step).min(all.len());
            let range = log.append_batch(all[i..end].to_vec()).await.unwrap();
            assert_eq!(range, i as u64..end as u64);
            for s in (i + 1)..=end {
                roots.push(naive_root(&all[..s]));
            }
            assert_eq!(log.root(end as u64).unwrap(), roots[end]);
            i = end;
            step = step % 5 + 1;
        }
        (db, log, all, roots)
    }

    #[tokio::test]
    async fn rfc6962_reference_vectors() {
        let leaves: Vec<Vec<u8>> = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| hex::decode(s).unwrap())
        .collect();
        let roots = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let db = temp_db();
        let log = MerkleLog::open(&db, "rfc").unwrap();
        log.append_batch(leaves.clone()).await.unwrap();
        for (size, want) in roots.iter().enumerate() {
            assert_eq!(log.root(size as u64).unwrap(), h(want), "size {size}");
        }

        let inclusion = [
            (
                0u64,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, want) in inclusion {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(log.inclusion_proof(index, 8).unwrap(), want);
            verify_inclusion(
                &leaf_hash(&leaves[index as usize]),
                index,
                8,
                &want,
                &h(roots[8]),
            )
            .unwrap();
        }

        let consistency = [
            (
                2u64,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, want) in consistency {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(log.consistency_proof(old, 8).unwrap(), want);
            verify_consistency(old, 8, &h(roots[old as usize]), &h(roots[8]), &want).unwrap();
        }
    }

    #[tokio::test]
    async fn roots_match_naive_mth_for_every_size() {
        let (_db, log, all, roots) = build(70).await;
        for size in 0..=70u64 {
            assert_eq!(roots[size as usize], naive_root(&all[..size as usize]));
            assert_eq!(log.root(size).unwrap(), roots[size as usize], "size {size}");
        }
        assert_eq!(log.size().unwrap(), 70);
        for i in 0..70 {
            assert_eq!(log.leaf(i).unwrap(), data(i));
        }
    }

    #[tokio::test]
    async fn every_inclusion_proof_verifies_and_tampering_fails() {
        let (_db, log, all, roots) = build(70).await;
        for size in 1..=70u64 {
            let root = roots[size as usize];
            for index in 0..size {
                let lh = leaf_hash(&all[index as usize]);
                let proof = log.inclusion_proof(index, size).unwrap();
                verify_inclusion(&lh, index, size, &proof, &root)
                    .unwrap_or_else(|e| panic!("{index}/{size}: {e}"));

                // Wrong root, wrong leaf, other index.
                let mut bad_root = root;
                bad_root[0] ^= 1;
                assert!(verify_inclusion(&lh, index, size, &proof, &bad_root).is_err());
                let other = leaf_hash(b"not in the log");
                assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
                if size > 1 {
                    let swapped = (index + 1) % size;
                    assert!(
                        verify_inclusion(&lh, swapped, size, &proof, &root).is_err(),
                        "{index}->{swapped}/{size}"
                    );
                }
                // Every single flipped bit, a truncated and an extended proof.
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][31] ^= 0x80;
                    assert!(verify_inclusion(&lh, index, size, &bad, &root).is_err());
                }
                if !proof.is_empty() {
                    let short = &proof[..proof.len() - 1];
                    assert!(verify_inclusion(&lh, index, size, short, &root).is_err());
                }
                let mut long = proof.clone();
                long.push([7u8; 32]);
                assert!(verify_inclusion(&lh, index, size, &long, &root).is_err());
                if proof.len() >= 2 && proof[0] != proof[1] {
                    let mut swapped = proof.clone();
                    swapped.swap(0, 1);
                    assert!(verify_inclusion(&lh, index, size, &swapped, &root).is_err());
                }
            }
        }
    }

    #[tokio::test]
    async fn every_consistency_proof_verifies_and_tampering_fails() {
        let (_db, log, _all, roots) = build(40).await;
        for new in 1..=40u64 {
            for old in 1..=new {
                let (or, nr) = (roots[old as usize], roots[new as usize]);
                let proof = log.consistency_proof(old, new).unwrap();
                verify_consistency(old, new, &or, &nr, &proof)
                    .unwrap_or_else(|e| panic!("{old}->{new}: {e}"));

                let mut bad = or;
                bad[3] ^= 1;
                assert!(verify_consistency(old, new, &bad, &nr, &proof).is_err());
                let mut bad = nr;
                bad[3] ^= 1;
                assert!(verify_consistency(old, new, &or, &bad, &proof).is_err());
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 1;
                    assert!(verify_consistency(old, new, &or, &nr, &bad).is_err());
                }
                if !proof.is_empty() {
                    let short = &proof[..proof.len() - 1];
                    assert!(verify_consistency(old, new, &or, &nr, short).is_err());
                }
                let mut long = proof.clone();
                long.push([9u8; 32]);
                assert!(verify_consistency(old, new, &or, &nr, &long).is_err());
                if proof.len() >= 2 && proof[0] != proof[1] {
                    let mut swapped = proof.clone();
                    swapped.swap(0, 1);
                    assert!(verify_consistency(old, new, &or, &nr, &swapped).is_err());
                }
                // Same proof claimed for other sizes.
                if old > 1 {
                    let prev = roots[old as usize - 1];
                    assert!(verify_consistency(old - 1, new, &prev, &nr, &proof).is_err());
                }
                if old < new {
                    assert!(verify_consistency(new, old, &nr, &or, &proof).is_err());
                }
            }
        }
    }

    #[tokio::test]
    async fn tile_boundaries_on_several_levels() {
        let db = temp_db();
        let log = MerkleLog::open(&db, "tiles").unwrap();
        let all: Vec<Vec<u8>> = (0..1100).map(data).collect();
        let mut at = 0usize;
        // Batches that end before, on and after tile edges of levels 0, 1 and 2.
        for len in [1usize, 254, 1, 1, 255, 2, 253, 3, 200, 17, 1, 1, 11, 1] {
            log.append_batch(all[at..at + len].to_vec()).await.unwrap();
            at += len;
        }
        log.append_batch(all[at..].to_vec()).await.unwrap();
        let mut sizes = vec![
            1u64, 2, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 1100,
        ];
        sizes.extend((3..1100).step_by(97));
        for &size in &sizes {
            assert_eq!(
                log.root(size).unwrap(),
                naive_root(&all[..size as usize]),
                "size {size}"
            );
        }
        for &size in &sizes {
            let root = log.root(size).unwrap();
            for index in [0, size / 2, size.saturating_sub(257), size - 1] {
                let index = index.min(size - 1);
                let proof = log.inclusion_proof(index, size).unwrap();
                let lh = leaf_hash(&all[index as usize]);
                verify_inclusion(&lh, index, size, &proof, &root).unwrap();
            }
            for &old in sizes.iter().filter(|&&o| o <= size) {
                let proof = log.consistency_proof(old, size).unwrap();
                verify_consistency(old, size, &log.root(old).unwrap(), &root, &proof).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn older_roots_stay_what_they_were() {
        let db = temp_db();
        let log = MerkleLog::open(&db, "history").unwrap();
        let mut seen = vec![(0u64, log.root(0).unwrap())];
        for batch in 0..20u64 {
            let leaves: Vec<Vec<u8>> = (0..batch % 7 + 1).map(|i| data(batch * 100 + i)).collect();
            let range = log.append_batch(leaves).await.unwrap();
            seen.push((range.end, log.root(range.end).unwrap()));
        }
        for (size, root) in &seen {
            assert_eq!(log.root(*size).unwrap(), *root, "size {size}");
        }
    }

    #[tokio::test]
    async fn reopening_gives_the_same_roots_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let all: Vec<Vec<u8>> = (0..37).map(data).collect();
        let roots: Vec<Hash> = {
            let db = Db::open(&path, SCHEMA).unwrap();
            let log = MerkleLog::open(&db, "persist").unwrap();
            log.append_batch(all[..20].to_vec()).await.unwrap();
            (0..=20).map(|s| log.root(s).unwrap()).collect()
        };
        // The file is closed when the last handle is dropped: it reopens at once.
        let db = Db::open(&path, SCHEMA).unwrap();
        let log = MerkleLog::open(&db, "persist").unwrap();
        assert_eq!(log.size().unwrap(), 20);
        for (s, r) in roots.iter().enumerate() {
            assert_eq!(log.root(s as u64).unwrap(), *r);
        }
        log.append_batch(all[20..].to_vec()).await.unwrap();
        assert_eq!(log.root(37).unwrap(), naive_root(&all));
        // Logs of other names in the same db are independent.
        let other = MerkleLog::open(&db, "other").unwrap();
        assert_eq!(other.size().unwrap(), 0);
    }

    #[tokio::test]
    async fn out_of_range_requests_are_typed_errors() {
        let (db, log, _all, _roots) = build(10).await;
        assert!(matches!(
            log.inclusion_proof(10, 10),
            Err(LogError::IndexOutOfRange {
                index: 10,
                size: 10
            })
        ));
        assert!(matches!(
            log.inclusion_proof(0, 11),
            Err(LogError::SizeTooLarge {
                requested: 11,
                size: 10
            })
        ));
        assert!(matches!(
            log.inclusion_proof(0, 0),
            Err(LogError::IndexOutOfRange { .. })
        ));
        assert!(matches!(log.root(11), Err(LogError::SizeTooLarge { .. })));
        assert!(matches!(
            log.leaf(10),
            Err(LogError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            log.consistency_proof(5, 4),
            Err(LogError::OldAfterNew { old: 5, new: 4 })
        ));
        assert!(matches!(
            log.consistency_proof(0, 4),
            Err(LogError::EmptyOldTree)
        ));
        assert!(matches!(
            log.consistency_proof(3, 11),
            Err(LogError::SizeTooLarge { .. })
        ));
        assert!(log.consistency_proof(4, 4).unwrap().is_empty());
        assert!(log.consistency_proof(u64::MAX, u64::MAX).is_err());
        assert!(log.inclusion_proof(u64::MAX, u64::MAX).is_err());
        assert!(matches!(MerkleLog::open(&db, ""), Err(LogError::EmptyName)));
        // An empty batch appends nothing.
        assert_eq!(log.append_batch(Vec::new()).await.unwrap(), 10..10);
        assert_eq!(log.size().unwrap(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_handles_cannot_fork_the_tree() {
        let db = temp_db();
        let a = MerkleLog::open(&db, "shared").unwrap();
        let b = MerkleLog::open(&db, "shared").unwrap();
        let run = async {
            let tasks: Vec<_> = [a.clone(), b.clone(), a, b]
                .into_iter()
                .enumerate()
                .map(|(t, log)| {
                    tokio::spawn(async move {
                        for done in 0..25u64 {
                            log.append_batch(vec![data(t as u64 * 1000 + done)])
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("concurrent appends hung");
        let log = MerkleLog::open(&db, "shared").unwrap();
        assert_eq!(log.size().unwrap(), 100);
        let all: Vec<Vec<u8>> = (0..100).map(|i| log.leaf(i).unwrap()).collect();
        assert_eq!(log.root(100).unwrap(), naive_root(&all));
        let mut seen: Vec<&Vec<u8>> = all.iter().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100, "every append is stored exactly once");
    }

    #[tokio::test]
    async fn a_view_answers_for_its_own_size() {
        let db = temp_db();
        let log = MerkleLog::open(&db, "view").unwrap();
        log.append_batch((0..5).map(data).collect()).await.unwrap();
        let snapshot = db.read().unwrap();
        let mut view = log.view(&snapshot).unwrap();
        let root = view.root(5).unwrap();
        log.append_batch((5..9).map(data).collect()).await.unwrap();
        assert_eq!(view.size(), 5);
        assert_eq!(view.root(5).unwrap(), root);
        assert!(matches!(
            view.inclusion_proof(0, 9),
            Err(LogError::SizeTooLarge {
                requested: 9,
                size: 5
            })
        ));
        assert_eq!(log.size().unwrap(), 9);
        let all: Vec<Vec<u8>> = (0..9).map(data).collect();
        assert_eq!(log.root(9).unwrap(), naive_root(&all));
    }

    #[tokio::test]
    async fn a_failed_write_keeps_none_of_its_append() {
        let db = temp_db();
        let log = MerkleLog::open(&db, "undo").unwrap();
        log.append_batch((0..3).map(data).collect()).await.unwrap();
        let before = log.root(3).unwrap();
        let (l, leaves) = (log.clone(), Leaves::new((3..300).map(data).collect()));
        let failed = db
            .write(move |tx| {
                l.append_in(tx, &leaves)?;
                Err::<(), _>(LogError::Corrupt("refused after appending".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(log.size().unwrap(), 3);
        assert_eq!(log.root(3).unwrap(), before);
        // The next append starts where the log really ends.
        assert_eq!(log.append_batch(vec![data(3)]).await.unwrap(), 3..4);
        let all: Vec<Vec<u8>> = (0..4).map(data).collect();
        assert_eq!(log.root(4).unwrap(), naive_root(&all));
    }
}
