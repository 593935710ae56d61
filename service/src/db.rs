//! Each service's embedded database: opening it with the settings every service shares,
//! and the federation registry's journal in it.
//!
//! The database itself (redb, one writer thread with group commit: a write returns once it
//! is on disk) is the `storage` crate; this module is where services meet it.

use std::path::Path;

use federation::registry::{Governance, Journal, JournalError, Registry, RegistryError};
pub use storage::{Db, Schema, Snapshot, StoreError, Tree, WriteTx};

/// Bytes of page cache per database. The operating system's page cache still holds the
/// file, so a bounded cache costs a copy, not a disk read.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The gateway's: a gateway reading large records filled its caches and kept them; at
/// 8 MiB the exchange's time did not change (docs/performance.md, "Memory across large
/// exchanges").
pub const GATEWAY_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Opens (creating if needed) the database file at `path`, holding `schema`'s layout.
pub fn open(path: &Path, schema: Schema) -> Result<Db, StoreError> {
    Db::open_with_cache(path, schema, CACHE_BYTES)
}

/// As [`open`], with a cache of `cache_bytes`.
pub fn open_with_cache(path: &Path, schema: Schema, cache_bytes: usize) -> Result<Db, StoreError> {
    Db::open_with_cache(path, schema, cache_bytes)
}

/// [`open_in`] with the shared cache size.
pub fn open_service_db(dir: &Path, name: &str, schema: Schema) -> Result<Db, StoreError> {
    open_in(dir, name, schema, CACHE_BYTES)
}

/// Opens (creating if needed) `<dir>/<name>.redb`, holding `schema`'s layout. An earlier
/// fedgate's sled database (`<dir>/<name>.sled`) beside it is refused rather than silently
/// left behind: it may hold access events not yet shipped.
pub fn open_in(
    dir: &Path,
    name: &str,
    schema: Schema,
    cache_bytes: usize,
) -> Result<Db, StoreError> {
    let legacy = dir.join(format!("{name}.sled"));
    if legacy.exists() {
        return Err(StoreError::Folder { path: legacy });
    }
    Db::open_with_cache(&dir.join(format!("{name}.redb")), schema, cache_bytes)
}

/// The database's part of a service's `/readyz`: whether it can be read and written now
/// (no failed commit has stopped its writer), and `{"ready": .., "error": ..}` to show.
/// The file's path is not shown: the endpoint is unauthenticated.
pub fn readiness(db: &Db) -> (bool, serde_json::Value) {
    match db.health() {
        Ok(()) => (true, serde_json::json!({ "ready": true })),
        Err(e) => (
            false,
            serde_json::json!({ "ready": false, "error": e.to_string() }),
        ),
    }
}

/// A `/readyz` answer for a service whose readiness is its database's: 200 with
/// `{"database": ..}`, or 503 problem+json carrying the same as `state`.
pub fn readyz_response(db: &Db) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (ready, database) = readiness(db);
    let body = serde_json::json!({ "database": database });
    if ready {
        (axum::http::StatusCode::OK, axum::Json(body)).into_response()
    } else {
        crate::http::service_unavailable("the database refuses writes; restart the service")
            .with("state", body)
            .into_response()
    }
}

/// The tree in which a service keeps the federation manifests it installed.
const MANIFEST_JOURNAL: &str = "manifest_journal";

/// A [`Registry`] that keeps the manifests it installs in `db` and replays them at start.
pub fn journaled_registry(
    db: &Db,
    governance: Governance,
    dev_mode: bool,
) -> Result<Registry, RegistryError> {
    Registry::with_journal(
        governance,
        dev_mode,
        Box::new(ManifestJournal(db.tree(MANIFEST_JOURNAL))),
    )
}

/// The registry's journal: manifests keyed by their version (big-endian, so in order).
struct ManifestJournal(Tree);

impl Journal for ManifestJournal {
    fn entries(&self) -> Result<Vec<Vec<u8>>, JournalError> {
        let entries = self.0.entries().map_err(|e| JournalError(Box::new(e)))?;
        Ok(entries.into_iter().map(|(_, v)| v).collect())
    }

    fn keep(&self, version: u64, entry: &[u8]) -> Result<(), JournalError> {
        let (tree, entry) = (self.0.clone(), entry.to_vec());
        // Installs are rare and synchronous; this waits for the commit on this thread.
        self.0
            .db()
            .write_blocking(move |tx| tx.insert(&tree, &version.to_be_bytes(), &entry).map(|_| ()))
            .map_err(|e: StoreError| JournalError(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_journal_keeps_versions_in_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let schema = Schema {
            name: "test",
            version: 1,
        };
        {
            let journal = ManifestJournal(open(&path, schema).unwrap().tree(MANIFEST_JOURNAL));
            for version in [300u64, 2, 1] {
                journal
                    .keep(version, version.to_string().as_bytes())
                    .unwrap();
            }
        }
        let journal = ManifestJournal(open(&path, schema).unwrap().tree(MANIFEST_JOURNAL));
        assert_eq!(
            journal.entries().unwrap(),
            vec![b"1".to_vec(), b"2".to_vec(), b"300".to_vec()]
        );
    }

    #[test]
    fn an_earlier_sled_database_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema {
            name: "test",
            version: 1,
        };
        std::fs::create_dir(dir.path().join("gateway.sled")).unwrap();
        let e = open_service_db(dir.path(), "gateway", schema)
            .err()
            .unwrap();
        assert!(e.to_string().contains("gateway.sled"), "{e}");
        assert!(!dir.path().join("gateway.redb").exists());
        assert!(open_service_db(dir.path(), "visibility", schema).is_ok());
    }
}
