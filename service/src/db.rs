//! Each service's embedded database: opening it with the settings every service shares,
//! and the federation registry's journal in it.
//!
//! The database itself (redb, one writer thread with group commit: a write returns once it
//! is on disk) is the `storage` crate; this module is where services meet it.

use std::path::{Path, PathBuf};

use federation::registry::{Governance, Journal, JournalError, Registry, RegistryError};
use serde::Deserialize;
pub use storage::{Db, PgOptions, Schema, Snapshot, StoreError, Tree, WriteTx};

use crate::config::ConfigError;

/// A service's `[storage]` section: where its state is kept.
///
/// ```toml
/// [storage]
/// backend = "postgres"          # or "embedded", the default: a file in data_dir
/// url = "postgres://fedgate@db.example.org:5432/fedgate?sslmode=require"
/// password_file = "db-password" # mode 0600; the URL itself must not hold a password
/// schema = "gateway"            # default: the service's name
/// ca_file = "db-ca.pem"         # roots for TLS to the database (default: the web roots)
/// pool = 8                      # reader connections
/// commit_delay_us = 500         # under load, wait this long for more writes per commit
/// ```
///
/// `commit_delay_us` (either backend; default [`DEFAULT_COMMIT_DELAY_US`], 0 turns it off,
/// at most 10,000): when writes arrive together, the writer waits up to this long for
/// more before it commits, so that one commit (one `fdatasync`, or one PostgreSQL round of
/// commit) carries more of them. A write arriving alone is committed at once. Every write
/// is still answered only once it is durable; under load each waits up to this much
/// longer, and the gateway spends less CPU per exchange (docs/performance.md, "Commits
/// that wait for company").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_pool")]
    pub pool: usize,
    #[serde(default = "default_commit_delay_us")]
    pub commit_delay_us: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::default(),
            url: None,
            password_file: None,
            schema: None,
            ca_file: None,
            pool: default_pool(),
            commit_delay_us: default_commit_delay_us(),
        }
    }
}

/// The commit delay a service's database gets unless `[storage]` says otherwise, µs.
pub const DEFAULT_COMMIT_DELAY_US: u64 = 500;

fn default_commit_delay_us() -> u64 {
    DEFAULT_COMMIT_DELAY_US
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One redb file per service in its `data_dir`: nothing else to run.
    #[default]
    Embedded,
    /// A PostgreSQL schema, which several processes of the service may share.
    Postgres,
}

fn default_pool() -> usize {
    8
}

impl StorageConfig {
    /// Makes the section's files relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for f in [self.password_file.as_mut(), self.ca_file.as_mut()]
            .into_iter()
            .flatten()
        {
            crate::config::resolve(base, f);
        }
    }

    /// Checks the section: a postgres backend needs a URL without a password, a plain
    /// schema name, a password file only its owner can read, a readable CA file.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_string(),
            key,
            message,
        };
        let most = storage::MAX_COMMIT_DELAY.as_micros();
        if u128::from(self.commit_delay_us) > most {
            return Err(invalid(
                "storage.commit_delay_us",
                format!("must be at most {most} (µs)"),
            ));
        }
        if self.backend == Backend::Embedded {
            if self.url.is_some() || self.password_file.is_some() || self.ca_file.is_some() {
                return Err(invalid(
                    "storage.backend",
                    "is \"embedded\" (the default), but the section sets PostgreSQL keys; set backend = \"postgres\"".into(),
                ));
            }
            return Ok(());
        }
        let Some(url) = &self.url else {
            return Err(invalid(
                "storage.url",
                "is required with backend = \"postgres\" (postgres://user@host:port/database)"
                    .into(),
            ));
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("storage.url", "must be a postgres:// URL".into()));
        }
        let authority = url
            .split_once("://")
            .map(|(_, r)| r.split('/').next().unwrap_or_default())
            .unwrap_or_default();
        if authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
            || url.contains("password=")
        {
            return Err(invalid(
                "storage.url",
                "holds a password; put it in storage.password_file (mode 0600) instead".into(),
            ));
        }
        if let Some(schema) = &self.schema {
            if !storage::valid_schema_name(schema) {
                return Err(invalid(
                    "storage.schema",
                    "must be a lower-case name of letters, digits and _ (not starting with pg_)"
                        .into(),
                ));
            }
        }
        if !(1..=64).contains(&self.pool) {
            return Err(invalid("storage.pool", "must be between 1 and 64".into()));
        }
        if let Some(file) = &self.password_file {
            federation::keys::read_private(file)
                .map_err(|e| invalid("storage.password_file", e.to_string()))?;
        }
        if let Some(file) = &self.ca_file {
            std::fs::metadata(file)
                .map_err(|e| invalid("storage.ca_file", format!("{}: {e}", file.display())))?;
        }
        Ok(())
    }

    /// `commit_delay_us` as a duration.
    pub fn commit_delay(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.commit_delay_us)
    }

    /// The PostgreSQL options, for the schema `default_schema` unless the section names
    /// one; `None` for the embedded backend. Reads the password and CA files.
    pub fn postgres(
        &self,
        default_schema: &str,
        application: &str,
    ) -> Result<Option<PgOptions>, StoreError> {
        if self.backend == Backend::Embedded {
            return Ok(None);
        }
        let url = self.url.clone().unwrap_or_default();
        let unusable = |file: &Path, reason: String| StoreError::Config {
            at: file.display().to_string(),
            reason,
        };
        let password = match &self.password_file {
            None => None,
            Some(file) => {
                let bytes = federation::keys::read_private(file)
                    .map_err(|e| unusable(file, e.to_string()))?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| unusable(file, "the password is not UTF-8".into()))?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
        };
        let ca_pem = match &self.ca_file {
            None => None,
            Some(file) => Some(std::fs::read(file).map_err(|e| unusable(file, e.to_string()))?),
        };
        Ok(Some(PgOptions {
            url,
            password,
            schema: self
                .schema
                .clone()
                .unwrap_or_else(|| default_schema.to_string()),
            ca_pem,
            readers: self.pool,
            application: application.to_string(),
        }))
    }
}

/// Opens a service's database as its `[storage]` section says: `<dir>/<name>.redb` (see
/// [`open_in`]), or the PostgreSQL schema (default: `name`).
pub fn open_configured(
    storage: &StorageConfig,
    dir: &Path,
    name: &str,
    schema: Schema,
    cache_bytes: usize,
) -> Result<Db, StoreError> {
    let db = match storage.postgres(name, &format!("fedgate {name}"))? {
        Some(options) => Db::open_postgres(&options, schema)?,
        None => open_in(dir, name, schema, cache_bytes)?,
    };
    db.set_commit_delay(storage.commit_delay());
    Ok(db)
}

/// Bytes of page cache per database. The operating system's page cache still holds the
/// file, so a bounded cache costs a copy, not a disk read.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The visibility service's: its reads are the latest checkpoint and proofs near the log's
/// end, and appends write new pages. Half of [`CACHE_BYTES`] took 15-18 MB off its peak
/// RSS while ingesting 1.3 M events, for 1-2 % of the events appended per second
/// (docs/performance.md, "Visibility ingest: a million events").
pub const VISIBILITY_CACHE_BYTES: usize = 16 * 1024 * 1024;

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
        Ok(()) => (
            true,
            serde_json::json!({ "ready": true, "backend": backend(db) }),
        ),
        Err(e) => (
            false,
            serde_json::json!({ "ready": false, "backend": backend(db), "error": e.to_string() }),
        ),
    }
}

fn backend(db: &Db) -> &'static str {
    if db.is_postgres() {
        "postgres"
    } else {
        "embedded"
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
        crate::http::service_unavailable("the database cannot be written now")
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

    #[test]
    fn the_commit_delay_has_a_default_and_a_bound_and_every_write_is_answered() {
        let default: StorageConfig = toml::from_str("").unwrap();
        assert_eq!(default.commit_delay_us, DEFAULT_COMMIT_DELAY_US);
        assert_eq!(
            StorageConfig::default().commit_delay_us,
            DEFAULT_COMMIT_DELAY_US
        );
        assert!(default.validate("gateway.toml").is_ok());
        let off: StorageConfig = toml::from_str("commit_delay_us = 0").unwrap();
        assert!(off.validate("gateway.toml").is_ok());
        let long: StorageConfig = toml::from_str("commit_delay_us = 10001").unwrap();
        let e = long.validate("gateway.toml").err().unwrap().to_string();
        assert!(e.contains("storage.commit_delay_us"), "{e}");
        assert!(e.contains("10000"), "{e}");

        // A database opened as configured answers every write of a burst, each durable.
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema {
            name: "test",
            version: 1,
        };
        let long_wait: StorageConfig = toml::from_str("commit_delay_us = 10000").unwrap();
        let db = open_configured(&long_wait, dir.path(), "test", schema, CACHE_BYTES).unwrap();
        let tree = db.tree("t");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let writes = (0u32..64).map(|i| {
                let tree = tree.clone();
                tokio::spawn(async move {
                    let key = i.to_be_bytes();
                    let db = tree.db().clone();
                    db.write(move |tx| tx.insert(&tree, &key, b"v").map(|_| ()))
                        .await
                })
            });
            for write in writes.collect::<Vec<_>>() {
                write.await.unwrap().unwrap();
            }
        });
        drop(tree);
        drop(db);
        let db = open_configured(&off, dir.path(), "test", schema, CACHE_BYTES).unwrap();
        assert_eq!(db.tree("t").len().unwrap(), 64);
    }
}
