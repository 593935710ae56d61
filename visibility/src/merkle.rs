//! The visibility log's storage: an RFC 6962 Merkle tree stored in sled. The hashing and
//! the proof verifiers are `federation::log`'s, shared with gateways and auditors.
//!
//! Storage layout, per log name `N` (three sled trees, written together in one transaction):
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
//! Tiles rather than one record per node, because sled's cost is mostly per record: three
//! records per leaf appended at about a third of the rate of one. Any root or proof at any size ≤ the
//! current size is assembled from O(log² n) stored nodes; nothing is rehashed from the
//! leaves.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use federation::log::{empty_root, leaf_hash, node_hash, split_point, Hash, MAX_LEVEL};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

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
    #[error("another writer appended to this log at the same time; retry")]
    Conflict,
    #[error("log storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("log storage is corrupt: {0}")]
    Corrupt(String),
}

/// An append-only RFC 6962 Merkle tree stored in sled. Clones share the same log.
#[derive(Debug, Clone)]
pub struct MerkleLog {
    leaves: sled::Tree,
    nodes: sled::Tree,
    meta: sled::Tree,
    /// Serializes appends through this handle and its clones; the transaction re-checks
    /// the size, so a handle opened separately on the same log gets `Conflict` instead of
    /// forking the tree.
    writer: Arc<Mutex<()>>,
}

fn tile_key(level: u32, tile: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    // Levels never exceed 63, so the byte holds them.
    key[0] = level as u8;
    key[1..].copy_from_slice(&tile.to_be_bytes());
    key
}

fn decode_size(value: Option<sled::IVec>) -> Result<u64, LogError> {
    match value {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| LogError::Corrupt(format!("size record has {} bytes", v.len()))),
    }
}

impl MerkleLog {
    /// Opens (or creates) the log `name` in `db`.
    pub fn open(db: &sled::Db, name: &str) -> Result<Self, LogError> {
        if name.is_empty() {
            return Err(LogError::EmptyName);
        }
        let log = MerkleLog {
            leaves: db.open_tree(format!("fedgate.log/{name}/leaves"))?,
            nodes: db.open_tree(format!("fedgate.log/{name}/nodes"))?,
            meta: db.open_tree(format!("fedgate.log/{name}/meta"))?,
            writer: Arc::new(Mutex::new(())),
        };
        // Appends are atomic, so the last leaf must sit right below the recorded size; if
        // not, the trees were changed behind the log's back and no proof could be trusted.
        let size = log.size()?;
        let last = match log.leaves.last()? {
            None => None,
            Some((k, _)) => Some(
                <[u8; 8]>::try_from(k.as_ref())
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

    /// The number of leaves.
    pub fn size(&self) -> Result<u64, LogError> {
        decode_size(self.meta.get(SIZE_KEY)?)
    }

    /// Appends `leaves` atomically and returns their indexes. Either the whole batch and
    /// every hash it completes is stored, or nothing is. Durability is the caller's:
    /// `db.flush()` before promising anything about the new entries.
    pub fn append_batch(&self, leaves: &[Vec<u8>]) -> Result<Range<u64>, LogError> {
        // The guard protects no data, so a panic elsewhere while holding it leaves nothing
        // inconsistent behind: a poisoned lock is still usable.
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.size()?;
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
                edge.push((level, self.node(level, (start >> level) - 1)?));
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
        let mut leaf_batch = sled::Batch::default();
        for (index, data) in (start..end).zip(leaves) {
            leaf_batch.insert(&index.to_be_bytes(), data.as_slice());
            let mut hash = leaf_hash(data);
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

        let mut node_batch = sled::Batch::default();
        for (level, nodes) in (0u32..).zip(&new_nodes) {
            if nodes.is_empty() {
                continue;
            }
            let first = start >> level;
            let mut tile = first / TILE_WIDTH;
            let kept = (first % TILE_WIDTH) as usize * 32;
            let mut buf = Vec::with_capacity(TILE_BYTES);
            if kept > 0 {
                // A longer tile means another handle appended since `start` was read; the
                // size check in the transaction turns that into `Conflict`.
                let old = self.nodes.get(tile_key(level, tile))?.unwrap_or_default();
                let prefix = old.get(..kept).ok_or_else(|| {
                    LogError::Corrupt(format!(
                        "tile ({level}, {tile}) has {} bytes, expected {kept}",
                        old.len()
                    ))
                })?;
                buf.extend_from_slice(prefix);
            }
            for hash in nodes {
                buf.extend_from_slice(hash);
                if buf.len() == TILE_BYTES {
                    node_batch.insert(&tile_key(level, tile), std::mem::take(&mut buf));
                    tile += 1;
                }
            }
            if !buf.is_empty() {
                node_batch.insert(&tile_key(level, tile), buf);
            }
        }

        let result = (&self.leaves, &self.nodes, &self.meta).transaction(|(l, n, m)| {
            let current =
                decode_size(m.get(SIZE_KEY)?).map_err(ConflictableTransactionError::Abort)?;
            if current != start {
                return Err(ConflictableTransactionError::Abort(LogError::Conflict));
            }
            l.apply_batch(&leaf_batch)?;
            n.apply_batch(&node_batch)?;
            m.insert(SIZE_KEY, &end.to_be_bytes())?;
            Ok(())
        });
        match result {
            Ok(()) => Ok(start..end),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(LogError::Storage(e)),
        }
    }

    /// The data of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, LogError> {
        let size = self.size()?;
        if index >= size {
            return Err(LogError::IndexOutOfRange { index, size });
        }
        self.leaves
            .get(index.to_be_bytes())?
            .map(|v| v.to_vec())
            .ok_or_else(|| LogError::Corrupt(format!("leaf {index} is missing")))
    }

    /// The tree head (MTH) of the first `size` leaves, for any size up to the current one.
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        self.subtree_hash(0, size)
    }

    /// RFC 6962 §2.1.1 PATH(index, D[size]): the audit path, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(size)?;
        if index >= size {
            return Err(LogError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        let (mut lo, mut hi) = (0u64, size);
        while hi - lo > 1 {
            let k = split_point(hi - lo);
            if index < lo + k {
                proof.push(self.subtree_hash(lo + k, hi)?);
                hi = lo + k;
            } else {
                proof.push(self.subtree_hash(lo, lo + k)?);
                lo += k;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    /// RFC 6962 §2.1.2 PROOF(old, D[new]): the consistency proof, deepest node first.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
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
                    proof.push(self.subtree_hash(lo, hi)?);
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                proof.push(self.subtree_hash(lo + k, hi)?);
                hi = lo + k;
            } else {
                proof.push(self.subtree_hash(lo, lo + k)?);
                m -= k;
                lo += k;
                whole = false;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    fn check_size(&self, requested: u64) -> Result<(), LogError> {
        let size = self.size()?;
        if requested > size {
            return Err(LogError::SizeTooLarge { requested, size });
        }
        Ok(())
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, LogError> {
        let missing = || LogError::Corrupt(format!("node ({level}, {index}) is missing"));
        let tile = self
            .nodes
            .get(tile_key(level, index / TILE_WIDTH))?
            .ok_or_else(missing)?;
        let at = (index % TILE_WIDTH) as usize * 32;
        tile.get(at..at + 32)
            .and_then(|h| Hash::try_from(h).ok())
            .ok_or_else(missing)
    }

    /// MTH(D[lo:hi]) for a non-empty range within the stored size.
    fn subtree_hash(&self, lo: u64, hi: u64) -> Result<Hash, LogError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::log::{verify_consistency, verify_inclusion};

    fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        (dir, db)
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
    fn build(
        n: u64,
    ) -> (
        tempfile::TempDir,
        sled::Db,
        MerkleLog,
        Vec<Vec<u8>>,
        Vec<Hash>,
    ) {
        let (dir, db) = temp_db();
        let log = MerkleLog::open(&db, "test").unwrap();
        let all: Vec<Vec<u8>> = (0..n).map(data).collect();
        let mut roots = vec![log.root(0).unwrap()];
        let mut i = 0usize;
        let mut step = 1usize;
        while i < all.len() {
            let end = (i + step).min(all.len());
            let range = log.append_batch(&all[i..end]).unwrap();
            assert_eq!(range, i as u64..end as u64);
            for s in (i + 1)..=end {
                roots.push(naive_root(&all[..s]));
            }
            assert_eq!(log.root(end as u64).unwrap(), roots[end]);
            i = end;
            step = step % 5 + 1;
        }
        (dir, db, log, all, roots)
    }

    #[test]
    fn rfc6962_reference_vectors() {
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
        let (_dir, db) = temp_db();
        let log = MerkleLog::open(&db, "rfc").unwrap();
        log.append_batch(&leaves).unwrap();
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

    #[test]
    fn roots_match_naive_mth_for_every_size() {
        let (_dir, _db, log, all, roots) = build(70);
        for size in 0..=70u64 {
            assert_eq!(roots[size as usize], naive_root(&all[..size as usize]));
            assert_eq!(log.root(size).unwrap(), roots[size as usize], "size {size}");
        }
        assert_eq!(log.size().unwrap(), 70);
        for i in 0..70 {
            assert_eq!(log.leaf(i).unwrap(), data(i));
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let (_dir, _db, log, all, roots) = build(70);
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

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let (_dir, _db, log, _all, roots) = build(40);
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

    #[test]
    fn tile_boundaries_on_several_levels() {
        let (_dir, db) = temp_db();
        let log = MerkleLog::open(&db, "tiles").unwrap();
        let all: Vec<Vec<u8>> = (0..1100).map(data).collect();
        let mut at = 0usize;
        // Batches that end before, on and after tile edges of levels 0, 1 and 2.
        for len in [1usize, 254, 1, 1, 255, 2, 253, 3, 200, 17, 1, 1, 11, 1] {
            log.append_batch(&all[at..at + len]).unwrap();
            at += len;
        }
        log.append_batch(&all[at..]).unwrap();
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

    #[test]
    fn older_roots_stay_what_they_were() {
        let (_dir, db) = temp_db();
        let log = MerkleLog::open(&db, "history").unwrap();
        let mut seen = vec![(0u64, log.root(0).unwrap())];
        for batch in 0..20u64 {
            let leaves: Vec<Vec<u8>> = (0..batch % 7 + 1).map(|i| data(batch * 100 + i)).collect();
            let range = log.append_batch(&leaves).unwrap();
            seen.push((range.end, log.root(range.end).unwrap()));
        }
        for (size, root) in &seen {
            assert_eq!(log.root(*size).unwrap(), *root, "size {size}");
        }
    }

    #[test]
    fn reopening_gives_the_same_roots_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let all: Vec<Vec<u8>> = (0..37).map(data).collect();
        let roots: Vec<Hash> = {
            let db = sled::open(&path).unwrap();
            let log = MerkleLog::open(&db, "persist").unwrap();
            log.append_batch(&all[..20]).unwrap();
            db.flush().unwrap();
            (0..=20).map(|s| log.root(s).unwrap()).collect()
        };
        let db = sled::open(&path).unwrap();
        let log = MerkleLog::open(&db, "persist").unwrap();
        assert_eq!(log.size().unwrap(), 20);
        for (s, r) in roots.iter().enumerate() {
            assert_eq!(log.root(s as u64).unwrap(), *r);
        }
        log.append_batch(&all[20..]).unwrap();
        assert_eq!(log.root(37).unwrap(), naive_root(&all));
        // Logs of other names in the same db are independent.
        let other = MerkleLog::open(&db, "other").unwrap();
        assert_eq!(other.size().unwrap(), 0);
    }

    #[test]
    fn out_of_range_requests_are_typed_errors() {
        let (_dir, db, log, _all, _roots) = build(10);
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
        assert_eq!(log.append_batch(&[]).unwrap(), 10..10);
        assert_eq!(log.size().unwrap(), 10);
    }

    #[test]
    fn concurrent_handles_cannot_fork_the_tree() {
        let (_dir, db) = temp_db();
        let a = MerkleLog::open(&db, "shared").unwrap();
        let b = MerkleLog::open(&db, "shared").unwrap();
        let threads: Vec<_> = [a.clone(), b.clone(), a, b]
            .into_iter()
            .enumerate()
            .map(|(t, log)| {
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 25 {
                        match log.append_batch(&[data(t as u64 * 1000 + done)]) {
                            Ok(_) => done += 1,
                            Err(LogError::Conflict) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let log = MerkleLog::open(&db, "shared").unwrap();
        assert_eq!(log.size().unwrap(), 100);
        let all: Vec<Vec<u8>> = (0..100).map(|i| log.leaf(i).unwrap()).collect();
        assert_eq!(log.root(100).unwrap(), naive_root(&all));
    }
}
