//! The PostgreSQL backend: the same trees, snapshots and group-committed writes as the
//! embedded redb file, kept in a PostgreSQL schema that several processes share.
//!
//! Layout: one table, `<schema>.fedgate_kv (tree, key, value)` with the primary key
//! `(tree, key)`, so that every read is an index lookup or an index range scan;
//! `<schema>.fedgate_counts`, each tree's entry count, kept by the same statements; and
//! `<schema>.fedgate_migrations` saying which versioned migrations were applied. Migrations
//! run at open, one process at a time, and a schema migrated by a newer fedgate is refused.
//!
//! Writes: one writer thread per process with one connection, taking every write that
//! arrived while the previous commit ran, as the redb writer does. Each batch is one
//! transaction that first takes a transaction-scoped advisory lock on the schema, so that
//! the batches of every process sharing the schema run one after another, each reading
//! what the previous committed (READ COMMITTED reads the latest committed row at every
//! statement). That is what makes "single use" and "spent once" hold across replicas
//! without a retry loop: a write closure sees the database exactly as a redb write would.
//! The lock is the transaction's: a process that dies or is cut off loses it with its
//! connection, and `idle_in_transaction_session_timeout` ends a transaction whose process
//! stopped (paused) while holding it, so that the others go on and the paused one's commit
//! fails when it wakes up. A batch's result is handed back only after `COMMIT` returned,
//! which with the server's default `synchronous_commit = on` is after the WAL is flushed.
//!
//! Reads: a pool of reader threads, each with its own connection; a caller's thread sends
//! the query and waits. Each read statement sees the latest committed state, so a
//! [`crate::Snapshot`] on this backend is not one fixed moment: every store reads
//! append-only or single-key data through it (say so where that changes).
//!
//! Why threads rather than async: the stores' reads are synchronous calls made from async
//! handlers and blocking tools alike, and the synchronous client cannot run on a tokio
//! worker thread. A thread per connection keeps both working, as the redb writer does.
//!
//! Losing the database is not fatal: a failed connection or commit fails the writes of
//! that batch (the service answers 503), and the next write or read connects again.

use std::collections::HashMap;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::NoTls;

use crate::error::StoreError;
use crate::pg_conn::{walk, Conn};
use crate::pg_tx::BatchTx;
use crate::write::{Batches, CommitFailure, Pending, Ran, Visit};

/// The advisory-lock class of fedgate's write lock (the first of the two lock keys; the
/// second is the schema's hash).
const LOCK_CLASS: i32 = 0x0fed_9a7e;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The versioned migrations of the layout, in order. Never edit one that has shipped: add
/// the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "trees of byte keys and values",
        "CREATE TABLE {schema}.fedgate_kv (
             tree text NOT NULL,
             key bytea NOT NULL,
             value bytea NOT NULL,
             PRIMARY KEY (tree, key)
         )",
    ),
    // `count(*)` walks a tree's whole index range, and the gateway asks for its outbox's
    // length on every append: an outbox that grew during a visibility outage made every
    // append slower, under the write lock every replica shares.
    (
        2,
        "entries per tree, kept by every write",
        "CREATE TABLE {schema}.fedgate_counts (
             tree text PRIMARY KEY,
             n bigint NOT NULL
         );
         INSERT INTO {schema}.fedgate_counts (tree, n)
             SELECT tree, count(*) FROM {schema}.fedgate_kv GROUP BY tree",
    ),
];

/// Where a service's PostgreSQL state is, and how to reach it.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/database[?sslmode=require]`, without a password.
    pub url: String,
    /// The password (from the service's password file), if the server asks for one.
    pub password: Option<String>,
    /// The PostgreSQL schema holding this service's tables.
    pub schema: String,
    /// PEM certificates to trust for TLS to the database; without them, the public web
    /// roots. TLS is used when the URL says `sslmode=require` (or `prefer`).
    pub ca_pem: Option<Vec<u8>>,
    /// Reader connections (the writer has one more of its own).
    pub readers: usize,
    /// Shown to the server as `application_name` (which service this is).
    pub application: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never shown.
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("readers", &self.readers)
            .finish_non_exhaustive()
    }
}

/// Whether `name` can be a schema name here: lower-case letters, digits and `_`, starting
/// with a letter or `_`, at most 63 bytes (PostgreSQL's limit). It is put into SQL as an
/// identifier, so nothing else is allowed.
pub fn valid_schema_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("pg_")
}

/// How to make a connection (cloned into every thread).
#[derive(Clone)]
pub(crate) struct Connector {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    schema: String,
    /// The URL as shown in errors and logs (it never holds a password).
    shown: String,
}

impl Connector {
    fn new(options: &PgOptions) -> Result<Connector, StoreError> {
        let shown = redact(&options.url);
        let bad = |reason: String| StoreError::Config {
            at: shown.clone(),
            reason,
        };
        if !valid_schema_name(&options.schema) {
            return Err(bad(format!(
                "schema {:?} is not a plain lower-case PostgreSQL name",
                options.schema
            )));
        }
        let mut config: postgres::Config = options
            .url
            .parse()
            .map_err(|e: postgres::Error| bad(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(bad(
                "the URL holds a password; put it in the password file instead".into(),
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(bad("the URL names no host".into()));
        }
        if let Some(password) = &options.password {
            config.password(password.as_bytes());
        }
        config
            .application_name(&options.application)
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10));
        let tls = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => None,
            _ => Some(tls_connector(options.ca_pem.as_deref()).map_err(|e| bad(e.to_string()))?),
        };
        Ok(Connector {
            config,
            tls,
            schema: options.schema.clone(),
            shown,
        })
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
        .map_err(|e| StoreError::Unreachable {
            at: self.shown.clone(),
            reason: describe(&e),
        })?;
        let mut conn = Conn {
            client,
            schema: self.schema.clone(),
            statements: HashMap::new(),
        };
        // A transaction left open by a process that stopped (paused, not dead) must not
        // hold the write lock for ever; a statement must not wait for ever either.
        conn.client
            .batch_execute(
                "SET idle_in_transaction_session_timeout = '10s';
                 SET lock_timeout = '15s';
                 SET statement_timeout = '30s'",
            )
            .map_err(|e| self.failed(&e))?;
        Ok(conn)
    }

    fn failed(&self, e: &postgres::Error) -> StoreError {
        StoreError::Unreachable {
            at: self.shown.clone(),
            reason: describe(e),
        }
    }
}

/// `url` without its user information's password and without its query: what errors and
/// logs may show.
fn redact(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(the storage URL)".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_string(),
    };
    format!("{scheme}://{authority}{path}")
}

/// Why the TLS settings for the database cannot be built.
#[derive(Debug, thiserror::Error)]
enum TlsSetupError {
    #[error("the CA file is not PEM: {0}")]
    NotPem(std::io::Error),
    #[error("the CA file holds an unusable certificate: {0}")]
    Unusable(rustls::Error),
    #[error("the CA file holds no certificate")]
    NoCertificate,
    #[error("TLS: {0}")]
    Tls(rustls::Error),
}

/// The TLS settings for connections to the database: rustls verifies the server's
/// certificate and name (libpq's `verify-full`), against `ca_pem` or the web roots.
fn tls_connector(
    ca_pem: Option<&[u8]>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let mut reader = pem;
            for cert in rustls_pemfile::certs(&mut reader) {
                roots
                    .add(cert.map_err(TlsSetupError::NotPem)?)
                    .map_err(TlsSetupError::Unusable)?;
            }
            if roots.is_empty() {
                return Err(TlsSetupError::NoCertificate);
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The server's own message (e.g. "password authentication failed for user \"x\""), or
/// the client's.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Postgres(describe(&e))
    }
}

type ReadJob = Box<dyn FnOnce(&mut Option<Conn>, &Connector) + Send>;

/// The open backend: reader threads, the writer thread, and what they share.
pub(crate) struct Pg {
    reads: Mutex<Option<mpsc::Sender<ReadJob>>>,
    readers: Vec<thread::JoinHandle<()>>,
    /// Reader threads (and connections at most).
    size: usize,
    connector: Connector,
    /// Reader connections busy now, and open (for /metrics).
    stats: Arc<PoolStats>,
}

#[derive(Default)]
pub(crate) struct PoolStats {
    busy: AtomicU64,
    open: AtomicU64,
    /// The writer could not reach the database at its last attempt.
    writer_down: AtomicBool,
}

impl Pg {
    /// Connects, applies pending migrations (refusing a schema newer than this code), and
    /// starts the reader threads. The writer is started by the caller with [`run_writer`].
    pub(crate) fn open(options: &PgOptions) -> Result<(Pg, Connector), StoreError> {
        let connector = Connector::new(options)?;
        let conn = off_runtime(|| {
            let mut conn = connector.connect()?;
            migrate_with(&mut conn, &connector)?;
            Ok(conn)
        })?;
        let (reads, jobs) = mpsc::channel::<ReadJob>();
        let jobs = Arc::new(Mutex::new(jobs));
        let stats = Arc::new(PoolStats::default());
        let mut readers = Vec::new();
        let mut first = Some(conn);
        for i in 0..options.readers.max(1) {
            let jobs = jobs.clone();
            let connector = connector.clone();
            let stats = stats.clone();
            let mut conn = first.take();
            if conn.is_some() {
                stats.open.fetch_add(1, Ordering::Relaxed);
            }
            let handle = thread::Builder::new()
                .name(format!("db-reader-{i}"))
                .spawn(move || loop {
                    let job = match jobs.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    stats.busy.fetch_add(1, Ordering::Relaxed);
                    let had = conn.is_some();
                    job(&mut conn, &connector);
                    match (had, conn.is_some()) {
                        (false, true) => stats.open.fetch_add(1, Ordering::Relaxed),
                        (true, false) => stats.open.fetch_sub(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    stats.busy.fetch_sub(1, Ordering::Relaxed);
                })
                .map_err(|e| StoreError::Config {
                    at: connector_shown(options),
                    reason: format!("starting a reader thread: {e}"),
                })?;
            readers.push(handle);
        }
        Ok((
            Pg {
                reads: Mutex::new(Some(reads)),
                readers,
                size: options.readers.max(1),
                connector: connector.clone(),
                stats,
            },
            connector,
        ))
    }

    /// Runs `f` on a reader connection (connecting first if it has none) and waits. A
    /// connection found broken (the server restarted, a network cut) is replaced and `f`
    /// runs once more on the new one: a read changes nothing, so trying again is safe,
    /// and the first request after the database is back does not fail on a stale
    /// connection.
    pub(crate) fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Conn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: ReadJob = Box::new(move |slot, connector| {
            let mut tries = 0;
            let result = loop {
                tries += 1;
                if slot.is_none() {
                    match connector.connect() {
                        Ok(conn) => *slot = Some(conn),
                        Err(e) => break Err(e),
                    }
                }
                let Some(conn) = slot.as_mut() else {
                    break Err(StoreError::Stopped);
                };
                let result = f(conn);
                if result.is_ok() || !broken(conn) {
                    break result;
                }
                // A broken connection is dropped; the next read connects again.
                *slot = None;
                if tries >= 2 {
                    break result;
                }
            };
            let _ = reply.send(result);
        });
        let sent = match self.reads.lock() {
            Ok(reads) => reads.as_ref().map(|r| r.send(job).is_ok()).unwrap_or(false),
            Err(_) => false,
        };
        if !sent {
            return Err(StoreError::Stopped);
        }
        wait(|| answer.recv()).map_err(|_| StoreError::Stopped)?
    }

    pub(crate) fn shown(&self) -> &str {
        &self.connector.shown
    }

    /// Whether the database answers now (a round trip on a reader).
    ///
    /// Only the readers' side is checked here; [`crate::Db::health`] sends an empty write
    /// through the writer while its last attempt failed, since an idle service that is
    /// not ready gets no writes that would show it is back.
    pub(crate) fn health(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.client.is_valid(Duration::from_secs(2))?;
            Ok(())
        })
    }

    /// Whether the writer's last attempt failed to reach the database.
    pub(crate) fn writer_down(&self) -> bool {
        self.stats.writer_down.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }

    pub(crate) fn record_metrics(&self, name: &'static str) {
        metrics::gauge!("fedgate_db_pool_size", "db" => name).set(self.size as f64);
        metrics::gauge!("fedgate_db_pool_busy", "db" => name)
            .set(self.stats.busy.load(Ordering::Relaxed) as f64);
        metrics::gauge!("fedgate_db_pool_open", "db" => name)
            .set(self.stats.open.load(Ordering::Relaxed) as f64);
    }
}

/// Runs `f`, which blocks until a database thread answers. On a worker thread of a
/// multi-threaded tokio runtime, the runtime is told first, so that the worker's other
/// tasks move to another thread meanwhile instead of waiting behind a round trip: the
/// stores' reads are synchronous calls from async handlers.
fn wait<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Whether `conn` can no longer be used (checked after a failure).
fn broken(conn: &mut Conn) -> bool {
    conn.client.is_closed() || conn.client.is_valid(Duration::from_secs(2)).is_err()
}

fn connector_shown(options: &PgOptions) -> String {
    redact(&options.url)
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Ok(mut reads) = self.reads.lock() {
            reads.take();
        }
        for handle in self.readers.drain(..) {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// The migration bookkeeping table and the lock that makes one process migrate at a time.
fn prepare_migrations(conn: &mut Conn) -> Result<(), postgres::Error> {
    let schema = conn.schema.clone();
    conn.execute(&format!(
        "BEGIN;
         SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext('{schema}'));
         CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".fedgate_migrations (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         COMMIT;"
    ))
}

/// What migrations a schema has, and which this code knows.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// Applied: (version, description, when, as the server's text).
    pub applied: Vec<(i32, String, String)>,
    /// Known to this code and not applied yet.
    pub pending: Vec<(i32, &'static str)>,
    /// The newest version this code knows.
    pub supported: i32,
}

fn status_with(conn: &mut Conn) -> Result<MigrationStatus, StoreError> {
    prepare_migrations(conn)?;
    let schema = conn.schema.clone();
    let rows = conn.client.query(
        &format!(
            "SELECT version, description, applied_at::text FROM \"{schema}\".fedgate_migrations ORDER BY version"
        ),
        &[],
    )?;
    let applied: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let pending = MIGRATIONS
        .iter()
        .filter(|(v, _, _)| !applied.iter().any(|(a, _, _)| a == v))
        .map(|(v, d, _)| (*v, *d))
        .collect();
    Ok(MigrationStatus {
        applied,
        pending,
        supported: MIGRATIONS.iter().map(|(v, _, _)| *v).max().unwrap_or(0),
    })
}

/// Applies every pending migration, each in its own transaction under the lock; refuses a
/// schema that a newer fedgate migrated. Returns the versions applied.
fn migrate_with(conn: &mut Conn, connector: &Connector) -> Result<Vec<i32>, StoreError> {
    let status = status_with(conn)?;
    if let Some((found, _, _)) = status.applied.iter().max_by_key(|(v, _, _)| *v) {
        if *found > status.supported {
            return Err(StoreError::Newer {
                at: format!("{} schema {}", connector.shown, conn.schema),
                what: "database schema",
                found: u64::try_from(*found).unwrap_or(0),
                supported: u64::try_from(status.supported).unwrap_or(0),
            });
        }
    }
    let schema = conn.schema.clone();
    let mut done = Vec::new();
    for (version, description, sql) in MIGRATIONS {
        let mut txn = conn.client.transaction()?;
        txn.execute(
            &format!("SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext('{schema}'))"),
            &[],
        )?;
        let applied = txn.query_opt(
            &format!("SELECT 1 FROM \"{schema}\".fedgate_migrations WHERE version = $1"),
            &[version],
        )?;
        if applied.is_some() {
            continue;
        }
        txn.batch_execute(&sql.replace("{schema}", &format!("\"{schema}\"")))?;
        txn.execute(
            &format!(
                "INSERT INTO \"{schema}\".fedgate_migrations (version, description) VALUES ($1, $2)"
            ),
            &[version, description],
        )?;
        txn.commit()?;
        tracing::info!(schema, version, description, "database migration applied");
        done.push(*version);
    }
    Ok(done)
}

/// The migrations of the schema in `options` (connecting once).
pub fn migration_status(options: &PgOptions) -> Result<MigrationStatus, StoreError> {
    let connector = Connector::new(options)?;
    off_runtime(|| status_with(&mut connector.connect()?))
}

/// Applies the pending migrations of the schema in `options`; returns the versions applied.
pub fn migrate(options: &PgOptions) -> Result<Vec<i32>, StoreError> {
    let connector = Connector::new(options)?;
    off_runtime(|| migrate_with(&mut connector.connect()?, &connector))
}

/// Runs `f` on a thread of its own: the synchronous client runs a runtime of its own, which
/// must not start on a thread that is already driving async tasks.
fn off_runtime<R: Send>(f: impl FnOnce() -> Result<R, StoreError> + Send) -> Result<R, StoreError> {
    thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|_| Err(StoreError::Postgres("a database thread panicked".into())))
    })
}

/// The writer thread's loop: batches as the embedded writer takes them, each one
/// transaction under the schema's write lock. A failure fails the batch and drops the
/// connection; the next batch connects again.
pub(crate) fn run_writer(
    connector: &Connector,
    jobs: &mpsc::Receiver<Box<dyn Pending>>,
    name: &'static str,
    stats: &PoolStats,
    mut batches: Batches,
) {
    let mut conn: Option<Conn> = None;
    while let Some(batch) = batches.next(jobs) {
        if conn.is_none() {
            match connector.connect() {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    stats.writer_down.store(true, Ordering::Release);
                    metrics::counter!("fedgate_db_commit_failures_total", "db" => name)
                        .increment(1);
                    tracing::warn!(db = name, error = %e, "the database is unreachable; writes fail until it is back");
                    let reason = e.to_string();
                    for job in batch {
                        job.refuse(StoreError::Unreachable {
                            at: connector.shown.clone(),
                            reason: reason.clone(),
                        });
                    }
                    continue;
                }
            }
        }
        let writes = batch.len();
        let started = Instant::now();
        // The transaction and its lock; on a connection found broken (the server
        // restarted while this one was idle), once more on a new one: nothing ran yet.
        let mut began = conn.as_mut().map(begin);
        if matches!(began, Some(Err(_))) && conn.as_mut().is_some_and(broken) {
            conn = connector.connect().ok();
            began = conn.as_mut().map(begin);
        }
        let (Some(c), Some(Ok(waited))) = (conn.as_mut(), began) else {
            stats.writer_down.store(true, Ordering::Release);
            metrics::counter!("fedgate_db_commit_failures_total", "db" => name).increment(1);
            for job in batch {
                job.refuse(StoreError::Unreachable {
                    at: connector.shown.clone(),
                    reason: "the database did not start a transaction".into(),
                });
            }
            if conn.as_mut().is_some_and(broken) {
                conn = None;
            }
            continue;
        };
        match commit_batch(c, batch, connector, waited) {
            Ok(waited) => {
                stats.writer_down.store(false, Ordering::Release);
                metrics::histogram!("fedgate_db_lock_wait_seconds", "db" => name)
                    .record(waited.as_secs_f64());
            }
            Err(reason) => {
                metrics::counter!("fedgate_db_commit_failures_total", "db" => name).increment(1);
                tracing::warn!(db = name, error = %reason, "a database commit failed; its writes were refused");
                if broken(c) {
                    stats.writer_down.store(true, Ordering::Release);
                    conn = None;
                }
            }
        }
        metrics::histogram!("fedgate_db_commit_seconds", "db" => name)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("fedgate_db_commit_writes", "db" => name).record(writes as f64);
    }
}

/// Begins a batch's transaction and takes the schema's write lock; returns the time spent
/// waiting for the lock.
fn begin(conn: &mut Conn) -> Result<Duration, postgres::Error> {
    let schema = conn.schema.clone();
    let asked = Instant::now();
    match conn.execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext('{schema}'))"
    )) {
        Ok(()) => Ok(asked.elapsed()),
        Err(e) => {
            let _ = conn.execute("ROLLBACK");
            Err(e)
        }
    }
}

/// Runs one batch in the transaction [`begin`] opened, and commits it. Ok: committed,
/// with the time spent waiting for the write lock. Err: nothing of the batch was kept,
/// and every write was told.
fn commit_batch(
    conn: &mut Conn,
    batch: Vec<Box<dyn Pending>>,
    connector: &Connector,
    waited: Duration,
) -> Result<Duration, CommitFailure> {
    let mut answers = Vec::with_capacity(batch.len());
    let mut poisoned = None;
    let mut jobs = batch.into_iter();
    let mut tx = BatchTx::new(conn);
    for job in jobs.by_ref() {
        let ran: Ran = job.run_on(&mut tx);
        answers.push(ran.answer);
        if ran.poisoned.is_some() {
            poisoned = ran.poisoned;
            break;
        }
    }
    // What the batch's writes left waiting goes to the server before the commit.
    if poisoned.is_none() {
        poisoned = tx.flush().err().map(|e| e.to_string());
    }
    let outcome = match poisoned {
        // PostgreSQL undoes the whole transaction: nothing is kept, and the service goes
        // on (unlike the embedded file, nothing is left half-written).
        Some(reason) => {
            let _ = conn.execute("ROLLBACK");
            for job in jobs {
                job.refuse(StoreError::Commit(reason.clone()));
            }
            Err(CommitFailure(reason))
        }
        None => conn
            .execute("COMMIT")
            .map_err(|e| CommitFailure(connector.failed(&e).to_string())),
    };
    for answer in answers {
        answer(match &outcome {
            Ok(()) => Ok(()),
            Err(failure) => Err(StoreError::Commit(failure.0.clone())),
        });
    }
    outcome.map(|()| waited)
}

/// A snapshot's reads on this backend (see the module docs: each read sees the latest
/// committed state).
pub(crate) fn snapshot_scan<'a>(
    pg: &Pg,
    tree: &str,
    range: impl RangeBounds<&'a [u8]>,
    reverse: bool,
    f: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
    walk(
        bounds,
        reverse,
        |start, end| {
            let (tree, start, end) = (tree.to_string(), owned(start), owned(end));
            pg.read(move |conn| conn.page(&tree, as_ref(&start), as_ref(&end), reverse))
        },
        f,
    )
}

fn owned(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    b.map(<[u8]>::to_vec)
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    b.as_ref().map(Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hold_no_secret() {
        assert_eq!(
            redact("postgres://u:pw@db:5432/x?sslmode=require&password=pw"),
            "postgres://u@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact("host=db password=pw"), "(the storage URL)");
        assert!(valid_schema_name("gateway_a1"));
        for bad in ["", "Gateway", "1a", "a-b", "pg_x", "a\"b"] {
            assert!(!valid_schema_name(bad), "{bad}");
        }
    }
}
