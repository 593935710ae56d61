//! Evidence packages: what an auditor takes away from the log to show someone who does not
//! run it, and how that person checks it offline (`fedgate visibility verify-evidence`).
//!
//! The file is JSON:
//! ```text
//! { "format": "fedgate-evidence/1",
//!   "package": "<the package, as JSON text>",
//!   "signature": "<base64 Ed25519 signature over the package text's UTF-8 bytes>",
//!   "signer": "<the log's checkpoint verifier key: name+keyid+base64(0x01||key)>" }
//! ```
//! The package: `log` (the log's DID), `createdAt`, `createdBy` (the auditor's DID),
//! `query` (the filters that selected the events), `checkpoint` (a C2SP signed note of the
//! log), `complete` (false when more events matched than the package holds) and
//! `entries`: each `{leafIndex, leaf (base64 of the leaf exactly as logged), entry (the
//! same, parsed, for reading), proof (hex hashes)}`.
//!
//! [`verify`] checks, and names the first thing that fails: the signer (equal to the key
//! the verifier pins, when one is given), the package's signature, the checkpoint's
//! signature by the same key and its origin, then for every entry that the readable
//! `entry` is the leaf, that the leaf's RFC 6962 inclusion proof leads to the checkpoint's
//! root, and that the event matches the package's query. A package edited anywhere fails.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use federation::checkpoint::{self, Checkpoint, NoteError, NoteVerifier};
use federation::log::{leaf_hash, verify_inclusion, Hash, ProofError};
use federation::wire::LogEntry;

use crate::query::{EventsQuery, Filter};

/// The `format` of an evidence file.
pub const FORMAT: &str = "fedgate-evidence/1";

/// The largest evidence file read.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

/// An evidence file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    package: String,
    signature: String,
    signer: String,
    /// How to verify the file (for the person who opens it; not checked).
    #[serde(default)]
    verify: Option<String>,
}

/// The signed content of an evidence file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Package {
    pub(crate) log: String,
    pub(crate) created_at: String,
    pub(crate) created_by: String,
    pub(crate) query: Value,
    pub(crate) checkpoint: String,
    pub(crate) complete: bool,
    pub(crate) entries: Vec<Entry>,
}

/// One leaf of the log in a package.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) leaf_index: u64,
    pub(crate) leaf: String,
    pub(crate) entry: Value,
    pub(crate) proof: Vec<String>,
}

/// Why an evidence package does not verify. Names the entry, never quotes event content.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("the file is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not an evidence file: {0}")]
    Malformed(String),
    #[error("unknown format {0:?} (this fedgate reads {FORMAT})")]
    Format(String),
    #[error("the signer key is unusable: {0}")]
    Signer(NoteError),
    #[error("the package is signed by {found}, not by the key given ({pinned})")]
    OtherSigner { found: String, pinned: String },
    #[error(
        "the package's signature does not verify: the package was changed or not signed by the log"
    )]
    Signature,
    #[error("the checkpoint does not verify: {0}")]
    Checkpoint(NoteError),
    #[error("the checkpoint is from {checkpoint}, the package names the log {log}")]
    Origin { checkpoint: String, log: String },
    #[error("entry #{position} (leaf {leaf}): {reason}")]
    Entry {
        position: usize,
        leaf: u64,
        reason: String,
    },
    #[error("entry #{position} (leaf {leaf}): the inclusion proof does not lead to the checkpoint's root ({source})")]
    Inclusion {
        position: usize,
        leaf: u64,
        source: ProofError,
    },
}

/// What a verified package holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The log's DID (the checkpoint's origin).
    pub log: String,
    /// The signer's verifier key.
    pub signer: String,
    /// Whether the signer was the key given to [`verify`].
    pub pinned: bool,
    /// The checkpoint's tree size and root.
    pub tree_size: u64,
    pub root: Hash,
    /// Leaves in the package: access events and review resolutions.
    pub accesses: usize,
    pub reviews: usize,
    /// The query, as JSON text.
    pub query: String,
    pub created_at: String,
    pub created_by: String,
    /// False when more events matched than the package holds.
    pub complete: bool,
}

fn ed25519_key(vkey: &str) -> Result<(NoteVerifier, ed25519_dalek::VerifyingKey), EvidenceError> {
    let verifier = NoteVerifier::parse_vkey(vkey).map_err(EvidenceError::Signer)?;
    // parse_vkey checked the shape: name+id+base64(0x01 || 32-byte key).
    let key = vkey
        .splitn(3, '+')
        .nth(2)
        .and_then(|k| B64.decode(k).ok())
        .filter(|k| k.len() == 33 && k[0] == 1)
        .and_then(|k| <[u8; 32]>::try_from(&k[1..]).ok())
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
        .ok_or(EvidenceError::Signer(NoteError::InvalidPublicKey))?;
    Ok((verifier, key))
}

/// Verifies an evidence file (see the module's documentation). `pinned`: the log's
/// checkpoint verifier key as the verifier knows it (from the log's `/v1/keys` or the
/// federation); without it, the key in the file is used and [`Verified::pinned`] is false.
pub fn verify(file: &[u8], pinned: Option<&str>) -> Result<Verified, EvidenceError> {
    if file.len() > MAX_FILE_BYTES {
        return Err(EvidenceError::TooLarge);
    }
    let file: File = serde_json::from_slice(file).map_err(|e| {
        EvidenceError::Malformed(format!("{:?} at line {}", e.classify(), e.line()))
    })?;
    if file.format != FORMAT {
        return Err(EvidenceError::Format(
            file.format.chars().take(64).collect(),
        ));
    }
    if let Some(p) = pinned {
        if p.trim() != file.signer {
            return Err(EvidenceError::OtherSigner {
                found: file.signer.chars().take(200).collect(),
                pinned: p.trim().to_string(),
            });
        }
    }
    let (verifier, key) = ed25519_key(&file.signer)?;
    let signature = B64
        .decode(&file.signature)
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
        .map(|s| ed25519_dalek::Signature::from_bytes(&s))
        .ok_or(EvidenceError::Signature)?;
    key.verify_strict(file.package.as_bytes(), &signature)
        .map_err(|_| EvidenceError::Signature)?;
    let package: Package = serde_json::from_str(&file.package)
        .map_err(|e| EvidenceError::Malformed(format!("package: {:?}", e.classify())))?;
    let cp: Checkpoint = checkpoint::open(&package.checkpoint, std::slice::from_ref(&verifier))
        .map_err(EvidenceError::Checkpoint)?;
    if cp.origin != package.log {
        return Err(EvidenceError::Origin {
            checkpoint: cp.origin,
            log: package.log,
        });
    }
    let query: EventsQuery = serde_json::from_value(package.query.clone())
        .map_err(|e| EvidenceError::Malformed(format!("query: {:?}", e.classify())))?;
    let filter =
        Filter::from_query(&query).map_err(|e| EvidenceError::Malformed(format!("query: {e}")))?;
    let (mut accesses, mut reviews) = (0, 0);
    for (position, e) in package.entries.iter().enumerate() {
        let fail = |reason: &str| EvidenceError::Entry {
            position,
            leaf: e.leaf_index,
            reason: reason.to_string(),
        };
        let leaf = B64
            .decode(&e.leaf)
            .map_err(|_| fail("the leaf is not base64"))?;
        let entry: LogEntry =
            serde_json::from_slice(&leaf).map_err(|_| fail("the leaf is not a log entry"))?;
        let readable: LogEntry = serde_json::from_value(e.entry.clone())
            .map_err(|_| fail("the readable entry is not a log entry"))?;
        if readable != entry {
            return Err(fail("the readable entry differs from the leaf"));
        }
        let proof = e
            .proof
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| Hash::try_from(b.as_slice()).ok())
            })
            .collect::<Option<Vec<Hash>>>()
            .ok_or_else(|| fail("a proof hash is not 32 bytes of hex"))?;
        verify_inclusion(&leaf_hash(&leaf), e.leaf_index, cp.size, &proof, &cp.root).map_err(
            |source| EvidenceError::Inclusion {
                position,
                leaf: e.leaf_index,
                source,
            },
        )?;
        match &entry {
            LogEntry::Access { event } => {
                if !filter_ignoring_review(&filter, event) {
                    return Err(fail("the event does not match the package's query"));
                }
                accesses += 1;
            }
            LogEntry::Review { .. } => reviews += 1,
        }
    }
    Ok(Verified {
        log: package.log,
        signer: file.signer,
        pinned: pinned.is_some(),
        tree_size: cp.size,
        root: cp.root,
        accesses,
        reviews,
        query: package.query.to_string(),
        created_at: package.created_at,
        created_by: package.created_by,
        complete: package.complete,
    })
}

/// Whether `event` matches `filter` but for its review state, which a package cannot show
/// (it changes after the fact).
fn filter_ignoring_review(filter: &Filter, event: &federation::events::AccessEvent) -> bool {
    let without = Filter {
        review: None,
        ..filter.clone()
    };
    without.matches(event, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::Leaves;
    use crate::store::{Store, SCHEMA};
    use ed25519_dalek::{Signer as _, SigningKey};
    use federation::events::AccessEvent;
    use serde_json::json;

    const LOG: &str = "did:web:visibility.test";

    /// A log of five events of patient `ref-1`, and its signed checkpoint.
    async fn log() -> (Vec<LogEntry>, Vec<Vec<u8>>, Vec<Vec<Hash>>, String) {
        let store = Store::open(service::db::Db::temporary(SCHEMA).unwrap()).unwrap();
        let entries: Vec<LogEntry> = (0..5)
            .map(|_| LogEntry::Access {
                event: AccessEvent {
                    patient_ref: Some("ref-1".into()),
                    ..test_support::allowed_event("did:web:hospital-a.test")
                },
            })
            .collect();
        let leaves: Vec<Vec<u8>> = entries.iter().map(federation::wire::leaf_bytes).collect();
        let (s, e, l) = (store.clone(), entries.clone(), Leaves::new(leaves.clone()));
        store
            .db
            .write(move |tx| s.append_in(tx, &e, &l))
            .await
            .unwrap();
        let root = store.log.root(5).unwrap();
        let proofs = (0..5)
            .map(|i| {
                let snapshot = store.db.read().unwrap();
                store
                    .log
                    .view(&snapshot)
                    .unwrap()
                    .inclusion_proof(i, 5)
                    .unwrap()
            })
            .collect();
        let note = Checkpoint::new(LOG, 5, root)
            .sign(LOG, &SigningKey::from_bytes(&[3; 32]))
            .unwrap();
        (entries, leaves, proofs, note)
    }

    /// An evidence file signed with `key` (the log's is `[3; 32]`).
    fn file(key: &SigningKey, package: &Package) -> Vec<u8> {
        let text = serde_json::to_string(package).unwrap();
        serde_json::to_vec(&json!({
            "format": FORMAT,
            "package": text,
            "signature": B64.encode(key.sign(text.as_bytes()).to_bytes()),
            "signer": NoteVerifier::from_signing_key(LOG, key).unwrap().vkey(),
        }))
        .unwrap()
    }

    fn package(
        entries: &[LogEntry],
        leaves: &[Vec<u8>],
        proofs: &[Vec<Hash>],
        note: &str,
    ) -> Package {
        Package {
            log: LOG.into(),
            created_at: "2026-03-01T00:00:00Z".into(),
            created_by: "did:key:zauditor".into(),
            query: json!({"patient_ref": "ref-1"}),
            checkpoint: note.into(),
            complete: true,
            entries: (0..entries.len())
                .map(|i| Entry {
                    leaf_index: i as u64,
                    leaf: B64.encode(&leaves[i]),
                    entry: serde_json::to_value(&entries[i]).unwrap(),
                    proof: proofs[i].iter().map(hex::encode).collect(),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_package_verifies_and_every_change_is_caught_by_the_right_check() {
        let (entries, leaves, proofs, note) = log().await;
        let key = SigningKey::from_bytes(&[3; 32]);
        let vkey = NoteVerifier::from_signing_key(LOG, &key).unwrap().vkey();
        let good = package(&entries, &leaves, &proofs, &note);
        let v = verify(&file(&key, &good), Some(&vkey)).unwrap();
        assert_eq!((v.accesses, v.reviews, v.tree_size), (5, 0, 5));

        // Even signed again with the log's own key, a changed event is not in the log.
        let mut changed = entries.clone();
        if let LogEntry::Access { event } = &mut changed[2] {
            event.purpose = "HPAYMT".into();
        }
        let changed_leaves: Vec<Vec<u8>> =
            changed.iter().map(federation::wire::leaf_bytes).collect();
        let p = package(&changed, &changed_leaves, &proofs, &note);
        let err = verify(&file(&key, &p), Some(&vkey)).unwrap_err();
        assert!(
            matches!(err, EvidenceError::Inclusion { position: 2, .. }),
            "{err}"
        );

        // A proof hash changed.
        let mut bad_proofs = proofs.clone();
        bad_proofs[4][0][0] ^= 1;
        let p = package(&entries, &leaves, &bad_proofs, &note);
        let err = verify(&file(&key, &p), None).unwrap_err();
        assert!(
            matches!(err, EvidenceError::Inclusion { position: 4, .. }),
            "{err}"
        );

        // An event that the stated query does not select.
        let mut p = package(&entries, &leaves, &proofs, &note);
        p.query = json!({"patient_ref": "ref-2"});
        let err = verify(&file(&key, &p), None).unwrap_err();
        assert!(
            matches!(err, EvidenceError::Entry { position: 0, .. }),
            "{err}"
        );

        // Signed by another key: refused when the log's key is pinned; and that key's
        // package cannot carry the log's checkpoint.
        let other = SigningKey::from_bytes(&[4; 32]);
        let err = verify(&file(&other, &good), Some(&vkey)).unwrap_err();
        assert!(matches!(err, EvidenceError::OtherSigner { .. }), "{err}");
        let err = verify(&file(&other, &good), None).unwrap_err();
        assert!(matches!(err, EvidenceError::Checkpoint(_)), "{err}");

        // Not an evidence file at all.
        assert!(matches!(
            verify(b"{}", None).unwrap_err(),
            EvidenceError::Malformed(_)
        ));
        assert!(verify(b"\xff", None).is_err());
    }
}
