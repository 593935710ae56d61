//! The log's proofs: RFC 6962 hashing and the verifiers of inclusion and consistency
//! proofs, for gateways and auditors (the log's storage is the visibility service's).
//!
//! The verifiers ([`verify_inclusion`], [`verify_consistency`]) are pure functions: they
//! follow RFC 9162 §2.1.3.2 and §2.1.4.2 and reject malformed proofs with an error,
//! whatever their length or the sizes claimed.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// The largest level a node can have: a complete subtree of 2^63 leaves.
pub const MAX_LEVEL: u32 = 63;

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// Why a proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old} is larger than the new size {new}")]
    OldAfterNew { old: u64, new: u64 },
    #[error("consistency with the empty tree is not proven by a proof")]
    EmptyOldTree,
    #[error("proof has {got} hashes where {want} are needed")]
    WrongLength { got: usize, want: usize },
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// The largest power of two strictly smaller than `n` (`n` ≥ 2), RFC 6962's split point.
/// Saturating so that no input, even one the callers never pass, can overflow.
pub fn split_point(n: u64) -> u64 {
    1u64 << 63u32.saturating_sub(n.saturating_sub(1).leading_zeros())
}

/// (inner, border) of RFC 9162's inclusion proof decomposition: how many proof hashes
/// sit below the point where the leaf's path leaves the tree's right border, and on it.
fn inclusion_decomposition(index: u64, size: u64) -> (u32, u32) {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (inner, border) = inclusion_decomposition(index, size);
    let want = (inner + border) as usize;
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Verifies that the tree of `new_size` leaves with `new_root` extends the tree of
/// `old_size` leaves with `old_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof
/// and equal roots. The empty tree is a prefix of every tree, so no proof is defined for
/// it and asking is an error: a verifier that has seen no tree yet has nothing to check.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldAfterNew {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }

    // Exact length first, so that a hostile proof costs no hashing at all.
    let old_is_pow2 = old_size.is_power_of_two();
    let shift = old_size.trailing_zeros();
    let (inner, border) = inclusion_decomposition(old_size - 1, new_size);
    let want = (inner.saturating_sub(shift) + border) as usize + usize::from(!old_is_pow2);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }

    // Step 1: an old tree that is a complete subtree is itself the proof's first node.
    let mut path = std::iter::once(old_root)
        .filter(|_| old_is_pow2)
        .chain(proof.iter());
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let first = path.next().ok_or(ProofError::WrongLength {
        got: proof.len(),
        want,
    })?;
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_reject_hostile_inputs_without_panicking() {
        let root = [1u8; 32];
        let lh = [2u8; 32];
        let long = vec![[3u8; 32]; 200];
        for (index, size) in [
            (0u64, 0u64),
            (5, 5),
            (6, 5),
            (u64::MAX, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (0, u64::MAX),
            (1 << 63, u64::MAX),
            (0, 1),
        ] {
            for len in [0usize, 1, 63, 64, 65, 200] {
                assert!(verify_inclusion(&lh, index, size, &long[..len], &root).is_err());
            }
        }
        for (old, new) in [
            (0u64, 0u64),
            (0, 5),
            (6, 5),
            (1, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            (u64::MAX, u64::MAX),
            (1, 2),
            (3, 1 << 40),
        ] {
            for len in [0usize, 1, 2, 63, 64, 65, 128, 200] {
                assert!(verify_consistency(old, new, &root, &lh, &long[..len]).is_err());
            }
        }
        // Equal sizes and roots with an empty proof is the one trivially valid case.
        assert!(verify_consistency(7, 7, &root, &root, &[]).is_ok());
        assert_eq!(
            verify_consistency(7, 7, &root, &lh, &[]),
            Err(ProofError::RootMismatch)
        );
        // A one-leaf tree: the leaf hash is the root and the proof is empty.
        assert!(verify_inclusion(&lh, 0, 1, &[], &lh).is_ok());
    }
}
