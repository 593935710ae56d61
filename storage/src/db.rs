//! Opening a database file, its schema version, and consistent read snapshots.

use std::ops::{ControlFlow, RangeBounds};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::error::StoreError;
use crate::table::{
    borrowed, definition, prefix_range, scan_table, Entry, Named, ReadTable, TABLE_OF_SCHEMAS,
};
use crate::write::{job, WriteTx, Writer};

/// Bytes of redb's page cache per database (redb's own default is 1 GiB). The operating
/// system's page cache still holds the file, so a small cache costs a copy, not a read.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Which service's layout a file holds, and its version. A file whose stored version is
/// newer than the running code's is refused: an older binary must not write a layout it
/// does not know.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    pub name: &'static str,
    pub version: u64,
}

/// An open database. Clones share it; the file closes when the last clone is dropped.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    writer: Writer,
    path: Option<PathBuf>,
    /// Labels metrics.
    name: &'static str,
}

/// Where the trees are kept.
enum Engine {
    Redb(Arc<redb::Database>),
    Postgres(Box<crate::pg::Pg>),
}

impl Db {
    /// Opens the database file at `path`, creating it (and its folder) if needed.
    pub fn open(path: &Path, schema: Schema) -> Result<Db, StoreError> {
        Db::open_with_cache(path, schema, CACHE_BYTES)
    }

    /// As [`Db::open`], with `cache_bytes` of page cache.
    pub fn open_with_cache(
        path: &Path,
        schema: Schema,
        cache_bytes: usize,
    ) -> Result<Db, StoreError> {
        if path.is_dir() {
            return Err(StoreError::Folder {
                path: path.to_path_buf(),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        // redb's checks that "no file it wrote can fail" panic in debug builds; a damaged
        // file must still be a one-line error.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(path)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(open_error(path, e)),
            Err(_) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: "the file's structure is damaged".into(),
                })
            }
        };
        Db::start(db, Some(path.to_path_buf()), schema)
    }

    /// A database in memory, gone when the last clone is dropped: for tests.
    pub fn temporary(schema: Schema) -> Result<Db, StoreError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Storage(e.into()))?;
        Db::start(db, None, schema)
    }

    /// A database on `backend` rather than a file: for tests that simulate what a disk
    /// keeps through a power loss.
    pub fn with_backend(
        backend: impl redb::StorageBackend,
        schema: Schema,
    ) -> Result<Db, StoreError> {
        let opened = catch_unwind(AssertUnwindSafe(|| {
            redb::Builder::new().create_with_backend(backend)
        }));
        match opened {
            Ok(Ok(db)) => Db::start(db, None, schema),
            Ok(Err(e)) => Err(open_error(Path::new("(backend)"), e)),
            Err(_) => Err(StoreError::Corrupt {
                path: PathBuf::from("(backend)"),
                reason: "the file's structure is damaged".into(),
            }),
        }
    }

    fn start(db: redb::Database, path: Option<PathBuf>, schema: Schema) -> Result<Db, StoreError> {
        let db = Arc::new(db);
        let writer = Writer::start(db.clone(), path.as_deref(), schema.name)?;
        let store = Db {
            inner: Arc::new(Inner {
                engine: Engine::Redb(db),
                writer,
                path,
                name: schema.name,
            }),
        };
        store.check_schema(schema)?;
        Ok(store)
    }

    /// Opens the service's state in a PostgreSQL schema, which other processes of the same
    /// service may share: connects, applies pending migrations (refusing a schema that a
    /// newer fedgate migrated), and checks the service's layout version as [`Db::open`]
    /// does. See the `pg` module for how writes of several processes are ordered.
    pub fn open_postgres(options: &crate::PgOptions, schema: Schema) -> Result<Db, StoreError> {
        let (pg, connector) = crate::pg::Pg::open(options)?;
        let stats = pg.stats();
        let name = schema.name;
        let shown = pg.shown().to_string();
        let writer = Writer::spawn(
            move |jobs, _flag, batches| {
                crate::pg::run_writer(&connector, &jobs, name, &stats, batches)
            },
            |e| StoreError::Config {
                at: shown,
                reason: format!("starting the writer thread: {e}"),
            },
        )?;
        let store = Db {
            inner: Arc::new(Inner {
                engine: Engine::Postgres(Box::new(pg)),
                writer,
                path: None,
                name: schema.name,
            }),
        };
        store.check_schema(schema)?;
        Ok(store)
    }

    /// Where this database is, for messages: its file, or its PostgreSQL URL and schema.
    pub fn location(&self) -> String {
        match (&self.inner.engine, &self.inner.path) {
            (Engine::Postgres(pg), _) => pg.shown().to_string(),
            (Engine::Redb(_), Some(path)) => path.display().to_string(),
            (Engine::Redb(_), None) => "(in memory)".into(),
        }
    }

    /// Whether this database is shared through PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.engine, Engine::Postgres(_))
    }

    /// Sets the connection-pool gauges (PostgreSQL only): called when metrics are rendered.
    pub fn record_metrics(&self) {
        if let Engine::Postgres(pg) = &self.inner.engine {
            pg.record_metrics(self.inner.name);
        }
    }

    fn check_schema(&self, schema: Schema) -> Result<(), StoreError> {
        let stored = match self.read()?.get(TABLE_OF_SCHEMAS, schema.name.as_bytes())? {
            None => None,
            Some(bytes) => Some(
                <[u8; 8]>::try_from(bytes.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::unreadable(TABLE_OF_SCHEMAS))?,
            ),
        };
        match stored {
            Some(found) if found > schema.version => Err(StoreError::Newer {
                at: self.location(),
                what: "schema",
                found,
                supported: schema.version,
            }),
            Some(found) if found == schema.version => Ok(()),
            // New, or older: no layout change has needed a migration yet, so the version
            // is brought up to date.
            _ => self.write_blocking(move |tx| {
                tx.insert(
                    TABLE_OF_SCHEMAS,
                    schema.name.as_bytes(),
                    &schema.version.to_be_bytes(),
                )
                .map(|_| ())
            }),
        }
    }

    /// Lets the writer wait up to `delay` (at most [`MAX_COMMIT_DELAY`](crate::MAX_COMMIT_DELAY))
    /// for more writes before it commits, when writes are arriving together: fewer commits
    /// under load, each write still answered only once it is durable. Zero (the default)
    /// commits what has arrived at once. See the `write` module.
    pub fn set_commit_delay(&self, delay: std::time::Duration) {
        self.inner.writer.set_commit_delay(delay);
    }

    /// Whether the database can be read and written now: a read transaction opens, and no
    /// failed commit has stopped the writer. For readiness checks.
    pub fn health(&self) -> Result<(), StoreError> {
        if self.inner.writer.is_stopped() {
            return Err(StoreError::Stopped);
        }
        match &self.inner.engine {
            Engine::Redb(db) => {
                db.begin_read()?;
                Ok(())
            }
            Engine::Postgres(pg) => {
                pg.health()?;
                if pg.writer_down() {
                    // An empty write: the writer connects again, takes the write lock and
                    // commits, or says why it cannot.
                    self.write_blocking(|_| Ok::<(), StoreError>(()))?;
                }
                Ok(())
            }
        }
    }

    /// The file this database is in (none for a temporary one).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// A consistent view of every tree as of now; later commits do not change it.
    ///
    /// On PostgreSQL, each read of a snapshot sees the latest committed state instead (the
    /// `pg` module says why that is enough for fedgate's stores).
    pub fn read(&self) -> Result<Snapshot, StoreError> {
        Ok(match &self.inner.engine {
            Engine::Redb(db) => Snapshot::Redb(db.begin_read()?),
            Engine::Postgres(_) => Snapshot::Pg(self.clone()),
        })
    }

    fn pg(&self) -> Option<&crate::pg::Pg> {
        match &self.inner.engine {
            Engine::Postgres(pg) => Some(pg),
            Engine::Redb(_) => None,
        }
    }

    /// Runs `f` in a write transaction and returns its result once the transaction is on
    /// disk (`fdatasync` returned). If `f` fails, nothing it did is kept.
    ///
    /// `f` runs on the writer thread: it must not wait for another write of the same
    /// database (that write would wait for `f`). Everything it must change goes through
    /// its `WriteTx`.
    pub async fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inner.writer.send(job(f, move |r| {
            let _ = reply.send(r);
        }));
        answer.await.map_err(|_| E::from(StoreError::Stopped))?
    }

    /// As [`Db::write`], blocking the calling thread until the commit (for code that is
    /// not async: command-line tools, start-up).
    pub fn write_blocking<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.inner.writer.send(job(f, move |r| {
            let _ = reply.send(r);
        }));
        answer.recv().map_err(|_| E::from(StoreError::Stopped))?
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::InUse { path }
        }
        redb::DatabaseError::UpgradeRequired(v) => StoreError::Corrupt {
            path,
            reason: format!("file format {v} is older than this version reads"),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Corrupt {
                path,
                reason: io.to_string(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Open {
            path,
            reason: io.to_string(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))
            if reason.contains("Expected file format version") =>
        {
            StoreError::Newer {
                at: path.display().to_string(),
                what: "file format",
                found: reason
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                supported: 3,
            }
        }
        other => StoreError::Corrupt {
            path,
            reason: other.to_string(),
        },
    }
}

/// A read-only view of the database as of one moment.
pub enum Snapshot {
    #[doc(hidden)]
    Redb(redb::ReadTransaction),
    #[doc(hidden)]
    Pg(Db),
}

impl Snapshot {
    fn table(&self, tree: &(impl Named + ?Sized)) -> Result<Option<ReadTable>, StoreError> {
        let Snapshot::Redb(txn) = self else {
            return Ok(None);
        };
        match txn.open_table(definition(tree.name())) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The PostgreSQL backend, when this is a snapshot of one.
    fn pg(&self) -> Option<&crate::pg::Pg> {
        match self {
            Snapshot::Pg(db) => db.pg(),
            Snapshot::Redb(_) => None,
        }
    }

    /// The value at `key`.
    pub fn get(
        &self,
        tree: &(impl Named + ?Sized),
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pg) = self.pg() {
            let (tree, key) = (tree.name().to_string(), key.to_vec());
            return pg.read(move |c| c.get(&tree, &key));
        }
        match self.table(tree)? {
            None => Ok(None),
            Some(t) => Ok(t.get(key)?.map(|v| v.value().to_vec())),
        }
    }

    /// Calls `f` with each entry in `range`, in key order, until it breaks.
    pub fn scan<'a>(
        &self,
        tree: &(impl Named + ?Sized),
        range: impl RangeBounds<&'a [u8]> + 'a,
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return crate::pg::snapshot_scan(pg, tree.name(), range, false, &mut f);
        }
        match self.table(tree)? {
            None => Ok(()),
            Some(t) => scan_table(&t, range, false, f),
        }
    }

    /// Calls `f` with each entry whose key starts with `prefix`, in key order, until it
    /// breaks.
    pub fn scan_prefix(
        &self,
        tree: &(impl Named + ?Sized),
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let (start, end) = prefix_range(prefix);
        self.scan(tree, borrowed(&start, &end), f)
    }

    /// As [`Snapshot::scan`], from the last key down.
    pub fn scan_rev<'a>(
        &self,
        tree: &(impl Named + ?Sized),
        range: impl RangeBounds<&'a [u8]> + 'a,
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return crate::pg::snapshot_scan(pg, tree.name(), range, true, &mut f);
        }
        match self.table(tree)? {
            None => Ok(()),
            Some(t) => scan_table(&t, range, true, f),
        }
    }

    /// The first (lowest-keyed) entry.
    pub fn first(&self, tree: &(impl Named + ?Sized)) -> Result<Option<Entry>, StoreError> {
        if let Some(pg) = self.pg() {
            let tree = tree.name().to_string();
            return pg.read(move |c| c.end(&tree, false));
        }
        match self.table(tree)? {
            None => Ok(None),
            Some(t) => Ok(t
                .first()?
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))),
        }
    }

    /// The last (highest-keyed) entry.
    pub fn last(&self, tree: &(impl Named + ?Sized)) -> Result<Option<Entry>, StoreError> {
        if let Some(pg) = self.pg() {
            let tree = tree.name().to_string();
            return pg.read(move |c| c.end(&tree, true));
        }
        match self.table(tree)? {
            None => Ok(None),
            Some(t) => Ok(t
                .last()?
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))),
        }
    }

    /// How many entries the tree holds.
    pub fn len(&self, tree: &(impl Named + ?Sized)) -> Result<u64, StoreError> {
        if let Some(pg) = self.pg() {
            let tree = tree.name().to_string();
            return pg.read(move |c| c.len(&tree));
        }
        match self.table(tree)? {
            None => Ok(0),
            Some(t) => Ok(t.len()?),
        }
    }
}
