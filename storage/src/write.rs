//! The one writer thread and its group commit.
//!
//! Every write is a closure sent to the writer thread. The thread takes the first one that
//! arrives and every other one already waiting (up to [`MAX_BATCH`]), runs them in order in
//! one redb write transaction, commits it with `Durability::Immediate` (one `fdatasync`), and
//! only then hands each closure's result back. A batch is what arrived while the previous
//! commit ran, so one writer pays one fsync and many writers share one.
//!
//! Under load, the thread may also wait a little for more writes before it commits (the
//! commit delay, [`Db::set_commit_delay`](crate::Db::set_commit_delay), as PostgreSQL's
//! `commit_delay`): a commit's own cost (redb's page bookkeeping, the pages written and the
//! `fdatasync`) hardly depends on how many writes it carries, and at a few thousand a second
//! it was most of the writer's time. It waits only when writes are arriving together (the
//! batch at hand, or the one before it, carried more than one), so a write that arrives
//! alone is committed at once and an idle service's writes are never delayed.
//!
//! A closure that returns an error has its own changes undone (each insert and remove keeps
//! the value it replaced) and the others in the batch still commit. A commit that fails
//! fails the whole batch, and the writer then refuses writes: redb refuses them too until
//! the file is reopened (and repaired), which is a restart.

use std::ops::{Bound, ControlFlow, RangeBounds};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redb::{ReadableTable, ReadableTableMetadata};

use crate::error::StoreError;
use crate::table::{borrowed, definition, prefix_range, scan_table, Entry, Named};

/// The most closures one commit takes.
const MAX_BATCH: usize = 1024;

/// The longest commit delay a database accepts: beyond it, what a write waits for is a
/// commit that others could have joined long before.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(10);

/// A write waiting for the writer thread.
pub(crate) trait Pending: Send {
    /// Runs the closure in `txn`. On error, its changes are already undone.
    fn run(self: Box<Self>, txn: &redb::WriteTransaction) -> Ran;
    /// Runs the closure in a transaction of another backend (PostgreSQL), open on `ops`.
    fn run_on(self: Box<Self>, ops: &mut dyn TxOps) -> Ran;
    /// Answers without running: the batch or the writer failed first.
    fn refuse(self: Box<Self>, error: StoreError);
}

/// What running one closure left to do once the commit is decided.
pub(crate) struct Ran {
    /// It changed something (an all-failed or read-only batch is not committed).
    pub(crate) wrote: bool,
    /// Its changes could not be undone, or it panicked half-way: the batch must not commit.
    pub(crate) poisoned: Option<String>,
    /// Hands the result back: with `Ok` once committed, or the commit's error.
    pub(crate) answer: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

struct Job<F, R, E> {
    f: F,
    reply: Box<dyn FnOnce(Result<R, E>) + Send>,
}

impl<F, R, E> Pending for Job<F, R, E>
where
    F: FnOnce(&mut WriteTx<'_>) -> Result<R, E> + Send,
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, txn: &redb::WriteTransaction) -> Ran {
        (*self).run_in(WriteTx::new(txn))
    }

    fn run_on(self: Box<Self>, ops: &mut dyn TxOps) -> Ran {
        (*self).run_in(WriteTx::with_ops(ops))
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        (self.reply)(Err(E::from(error)));
    }
}

impl<F, R, E> Job<F, R, E>
where
    F: FnOnce(&mut WriteTx<'_>) -> Result<R, E> + Send,
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run_in(self, mut tx: WriteTx<'_>) -> Ran {
        let Job { f, reply } = self;
        let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut tx)));
        match outcome {
            Ok(Ok(value)) => match tx.keep() {
                Ok(()) => Ran {
                    wrote: tx.wrote(),
                    poisoned: None,
                    answer: Box::new(move |committed| {
                        reply(committed.map(|()| value).map_err(E::from))
                    }),
                },
                Err(e) => {
                    let reason = e.to_string();
                    Ran {
                        wrote: false,
                        poisoned: Some(reason.clone()),
                        answer: Box::new(move |_| reply(Err(E::from(StoreError::Commit(reason))))),
                    }
                }
            },
            Ok(Err(error)) => {
                let poisoned = tx.undo_all().err().map(|e| e.to_string());
                Ran {
                    wrote: false,
                    poisoned,
                    answer: Box::new(move |_| reply(Err(error))),
                }
            }
            Err(_) => Ran {
                wrote: false,
                poisoned: Some("a write panicked".into()),
                answer: Box::new(move |_| {
                    reply(Err(E::from(StoreError::Commit("a write panicked".into()))))
                }),
            },
        }
    }
}

/// The handle on the writer thread; dropping it stops the thread and waits for it, so that
/// the file is closed (and its lock released) when the last [`Db`] clone is gone.
pub(crate) struct Writer {
    queue: Option<mpsc::Sender<Box<dyn Pending>>>,
    thread: Option<JoinHandle<()>>,
    /// Set once a commit failed: the database refuses writes from then on.
    stopped: Arc<AtomicBool>,
    /// How long, in µs, the thread may wait for more writes before committing under load.
    delay_us: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer of `db`; `name` labels its metrics.
    pub(crate) fn start(
        db: Arc<redb::Database>,
        path: Option<&Path>,
        name: &'static str,
    ) -> Result<Writer, StoreError> {
        Writer::spawn(
            move |jobs, flag, batches| run(&db, &jobs, name, &flag, batches),
            |e| StoreError::Open {
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                reason: format!("starting the writer thread: {e}"),
            },
        )
    }

    /// Starts a writer thread running `body` on the queue of writes.
    pub(crate) fn spawn(
        body: impl FnOnce(mpsc::Receiver<Box<dyn Pending>>, Arc<AtomicBool>, Batches) + Send + 'static,
        failed: impl FnOnce(std::io::Error) -> StoreError,
    ) -> Result<Writer, StoreError> {
        let (queue, jobs) = mpsc::channel::<Box<dyn Pending>>();
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = stopped.clone();
        let delay_us = Arc::new(AtomicU64::new(0));
        let batches = Batches::new(delay_us.clone());
        let thread = thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || body(jobs, flag, batches))
            .map_err(failed)?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
            stopped,
            delay_us,
        })
    }

    /// Sets the commit delay (at most [`MAX_COMMIT_DELAY`]); it applies from the next batch.
    pub(crate) fn set_commit_delay(&self, delay: Duration) {
        let micros = delay.min(MAX_COMMIT_DELAY).as_micros();
        self.delay_us
            .store(u64::try_from(micros).unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether a failed commit stopped the writer.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn send(&self, job: Box<dyn Pending>) {
        match &self.queue {
            Some(queue) => {
                if let Err(mpsc::SendError(job)) = queue.send(job) {
                    job.refuse(StoreError::Stopped);
                }
            }
            None => job.refuse(StoreError::Stopped),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            // The last handle may be dropped by a write running on the writer thread itself.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run(
    db: &redb::Database,
    jobs: &mpsc::Receiver<Box<dyn Pending>>,
    name: &'static str,
    flag: &AtomicBool,
    mut batches: Batches,
) {
    let mut stopped: Option<String> = None;
    while let Some(batch) = batches.next(jobs) {
        if let Some(reason) = &stopped {
            tracing::debug!(reason, "a write was refused: the database refuses writes");
            for job in batch {
                job.refuse(StoreError::Stopped);
            }
            continue;
        }
        let writes = batch.len();
        let started = Instant::now();
        let committed = commit_batch(db, batch, flag);
        metrics::histogram!("fedgate_db_commit_seconds", "db" => name)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("fedgate_db_commit_writes", "db" => name).record(writes as f64);
        if let Err(reason) = committed {
            metrics::counter!("fedgate_db_commit_failures_total", "db" => name).increment(1);
            tracing::error!(
                db = name,
                error = %reason,
                "a database commit failed; this service refuses writes until it restarts"
            );
            stopped = Some(reason.0);
        }
    }
}

/// Takes the writes of each commit from the queue (see the module's comment).
pub(crate) struct Batches {
    /// The commit delay in µs (0: none), set through [`Writer::set_commit_delay`].
    delay_us: Arc<AtomicU64>,
    /// How many writes the previous batch carried.
    previous: usize,
}

impl Batches {
    pub(crate) fn new(delay_us: Arc<AtomicU64>) -> Batches {
        Batches {
            delay_us,
            previous: 0,
        }
    }

    /// The next batch: the first write to arrive (waiting for it) and every other one
    /// already waiting, up to [`MAX_BATCH`]; under load (this batch or the previous one
    /// carries more than one write), also those arriving within the commit delay of the
    /// first. `None` once every handle on the queue is gone.
    pub(crate) fn next<T>(&mut self, jobs: &mpsc::Receiver<T>) -> Option<Vec<T>> {
        let first = jobs.recv().ok()?;
        let until = Instant::now() + Duration::from_micros(self.delay_us.load(Ordering::Relaxed));
        let mut batch = vec![first];
        drain(jobs, &mut batch);
        let under_load = batch.len() > 1 || self.previous > 1;
        if under_load && batch.len() < MAX_BATCH {
            // Slept through rather than waited on the queue: a write sent meanwhile then
            // costs its sender no wake-up of this thread (at thousands of writes a second,
            // waking it for each cost more than the delay saved).
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                thread::sleep(left);
                drain(jobs, &mut batch);
            }
        }
        self.previous = batch.len();
        Some(batch)
    }
}

/// Moves what is waiting in `jobs` into `batch`, up to [`MAX_BATCH`].
fn drain<T>(jobs: &mpsc::Receiver<T>, batch: &mut Vec<T>) {
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Why a batch was not committed: redb's message, handed to every write of the batch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CommitFailure(pub(crate) String);

/// Runs one batch in one transaction and commits it. Err: the database must stop writing.
/// `stopped` is set before any write of a failed batch hears of it, so that whoever hears
/// of the failure also finds the database not ready.
fn commit_batch(
    db: &redb::Database,
    batch: Vec<Box<dyn Pending>>,
    stopped: &AtomicBool,
) -> Result<(), CommitFailure> {
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            stopped.store(true, Ordering::Release);
            let reason = e.to_string();
            for job in batch {
                job.refuse(StoreError::Commit(reason.clone()));
            }
            return Err(CommitFailure(reason));
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    let mut wrote = false;
    let mut poisoned = None;
    let mut jobs = batch.into_iter();
    for job in jobs.by_ref() {
        let ran = job.run(&txn);
        wrote |= ran.wrote;
        answers.push(ran.answer);
        if ran.poisoned.is_some() {
            poisoned = ran.poisoned;
            break;
        }
    }
    let outcome = match poisoned {
        Some(reason) => {
            stopped.store(true, Ordering::Release);
            let _ = txn.abort();
            for job in jobs {
                job.refuse(StoreError::Commit(reason.clone()));
            }
            Err(CommitFailure(reason))
        }
        None if !wrote => txn.abort().map_err(|e| CommitFailure(e.to_string())),
        None => txn.commit().map_err(|e| CommitFailure(e.to_string())),
    };
    if outcome.is_err() {
        stopped.store(true, Ordering::Release);
    }
    for answer in answers {
        answer(match &outcome {
            Ok(()) => Ok(()),
            Err(failure) => Err(StoreError::Commit(failure.0.clone())),
        });
    }
    outcome
}

/// `f` as a write for the writer thread; `reply` gets its result once it is decided.
pub(crate) fn job<F, R, E>(
    f: F,
    reply: impl FnOnce(Result<R, E>) + Send + 'static,
) -> Box<dyn Pending>
where
    F: FnOnce(&mut WriteTx<'_>) -> Result<R, E> + Send + 'static,
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    Box::new(Job {
        f,
        reply: Box::new(reply),
    })
}

/// (tree, key, the value before): what undoing one change needs.
type Change = (Arc<str>, Vec<u8>, Option<Vec<u8>>);

type WriteTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// One write's view of the database: it reads what earlier writes of the same batch and
/// its own changes left, and its changes are undone if it returns an error.
pub struct WriteTx<'t> {
    ops: Ops<'t>,
    /// Each change, oldest first, with the value it replaced (redb only).
    undo: Vec<Change>,
    /// It changed something.
    changed: bool,
}

/// The transaction a write runs in, on either backend.
enum Ops<'t> {
    Redb {
        txn: &'t redb::WriteTransaction,
        tables: Vec<(Arc<str>, WriteTable<'t>)>,
    },
    Other(&'t mut dyn TxOps),
}

/// What a write needs of a backend other than redb (PostgreSQL's batch transaction). Kept
/// here so that this module needs nothing of that backend's. Such a backend undoes a
/// failed closure itself ([`TxOps::job_end`]), so no undo log is kept for it.
pub(crate) trait TxOps {
    fn get(&mut self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values at `keys`, in their order.
    fn get_many(&mut self, tree: &str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Sets (`Some`) or removes (`None`) `key`. `seen`: whether the key held a value, when
    /// the write read it just before.
    fn set(&mut self, tree: &str, key: &[u8], value: Option<&[u8]>, seen: Option<bool>);
    fn len(&mut self, tree: &str) -> Result<u64, StoreError>;
    /// The first or (`last`) the last entry.
    fn end(&mut self, tree: &str, last: bool) -> Result<Option<Entry>, StoreError>;
    fn scan_range(
        &mut self,
        tree: &str,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        f: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
    /// The running closure ended: keep its changes, or take them all back.
    fn job_end(&mut self, keep: bool) -> Result<(), StoreError>;
}

/// What a scan calls with each entry.
pub(crate) type Visit<'f> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'f;

impl<'t> WriteTx<'t> {
    fn new(txn: &'t redb::WriteTransaction) -> Self {
        WriteTx {
            ops: Ops::Redb {
                txn,
                tables: Vec::new(),
            },
            undo: Vec::new(),
            changed: false,
        }
    }

    pub(crate) fn with_ops(ops: &'t mut dyn TxOps) -> Self {
        WriteTx {
            ops: Ops::Other(ops),
            undo: Vec::new(),
            changed: false,
        }
    }

    /// The value at `key`.
    pub fn get(
        &mut self,
        tree: &(impl Named + ?Sized),
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match &mut self.ops {
            Ops::Redb { txn, tables } => Ok(table(txn, tables, tree.name())?
                .get(key)?
                .map(|v| v.value().to_vec())),
            Ops::Other(conn) => conn.get(tree.name(), key),
        }
    }

    /// The values at `keys`, in their order: one round trip on PostgreSQL, where a loop
    /// of [`WriteTx::get`] is one per key.
    pub fn get_many(
        &mut self,
        tree: &(impl Named + ?Sized),
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        match &mut self.ops {
            Ops::Redb { txn, tables } => {
                let table = table(txn, tables, tree.name())?;
                keys.iter()
                    .map(|k| Ok(table.get(*k)?.map(|v| v.value().to_vec())))
                    .collect()
            }
            Ops::Other(conn) => conn.get_many(tree.name(), keys),
        }
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(
        &mut self,
        tree: &(impl Named + ?Sized),
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.changed = true;
        match &mut self.ops {
            Ops::Redb { txn, tables } => {
                let before = table(txn, tables, tree.name())?
                    .insert(key, value)?
                    .map(|v| v.value().to_vec());
                self.undo
                    .push((tree.name().into(), key.to_vec(), before.clone()));
                Ok(before)
            }
            Ops::Other(conn) => {
                let before = conn.get(tree.name(), key)?;
                conn.set(tree.name(), key, Some(value), Some(before.is_some()));
                Ok(before)
            }
        }
    }

    /// Sets `key` to `value` without reading what it replaces: on PostgreSQL, no round
    /// trip until the batch commits (or a read needs it). For keys a write makes anew
    /// (a log's next leaf, an index entry).
    pub fn put(
        &mut self,
        tree: &(impl Named + ?Sized),
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        match &mut self.ops {
            Ops::Redb { .. } => self.insert(tree, key, value).map(drop),
            Ops::Other(conn) => {
                self.changed = true;
                conn.set(tree.name(), key, Some(value), None);
                Ok(())
            }
        }
    }

    /// Sets `key`, which the caller knows no write has made before (a log's next leaf, an
    /// index entry naming it), without reading it: on PostgreSQL, not even the count's
    /// check at commit (such keys are copied in together). A key that did exist fails the
    /// write ([`StoreError::Exists`]; on PostgreSQL at commit, failing the batch's writes)
    /// and nothing is overwritten: use [`WriteTx::put`] where the key may exist.
    pub fn put_new(
        &mut self,
        tree: &(impl Named + ?Sized),
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StoreError> {
        match &mut self.ops {
            Ops::Redb { .. } => match self.insert(tree, key, value)? {
                None => Ok(()),
                // The job fails, and its undo log puts the old value back.
                Some(_) => Err(StoreError::Exists {
                    tree: tree.name().to_string(),
                }),
            },
            Ops::Other(conn) => {
                self.changed = true;
                conn.set(tree.name(), key, Some(value), Some(false));
                Ok(())
            }
        }
    }

    /// Removes `key`; returns the value it held.
    pub fn remove(
        &mut self,
        tree: &(impl Named + ?Sized),
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let before = match &mut self.ops {
            Ops::Redb { txn, tables } => {
                let before = table(txn, tables, tree.name())?
                    .remove(key)?
                    .map(|v| v.value().to_vec());
                if let Some(old) = &before {
                    self.undo
                        .push((tree.name().into(), key.to_vec(), Some(old.clone())));
                }
                before
            }
            Ops::Other(conn) => {
                let before = conn.get(tree.name(), key)?;
                if before.is_some() {
                    conn.set(tree.name(), key, None, Some(true));
                }
                before
            }
        };
        self.changed |= before.is_some();
        Ok(before)
    }

    /// Calls `f` with each entry in `range`, in key order, until it breaks.
    pub fn scan<'a>(
        &mut self,
        tree: &(impl Named + ?Sized),
        range: impl RangeBounds<&'a [u8]> + 'a,
        f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk(tree.name(), range, false, f)
    }

    /// As [`WriteTx::scan`], from the last key down.
    pub fn scan_rev<'a>(
        &mut self,
        tree: &(impl Named + ?Sized),
        range: impl RangeBounds<&'a [u8]> + 'a,
        f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.walk(tree.name(), range, true, f)
    }

    fn walk<'a>(
        &mut self,
        tree: &str,
        range: impl RangeBounds<&'a [u8]> + 'a,
        reverse: bool,
        f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        match &mut self.ops {
            Ops::Redb { txn, tables } => scan_table(&*table(txn, tables, tree)?, range, reverse, f),
            Ops::Other(conn) => {
                let mut f = f;
                conn.scan_range(
                    tree,
                    (range.start_bound().cloned(), range.end_bound().cloned()),
                    reverse,
                    &mut f,
                )
            }
        }
    }

    /// Every key that starts with `prefix`, in order.
    pub fn keys_with_prefix(
        &mut self,
        tree: &(impl Named + ?Sized),
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let (start, end) = prefix_range(prefix);
        let mut keys = Vec::new();
        self.scan(tree, borrowed(&start, &end), |k, _| {
            keys.push(k.to_vec());
            ControlFlow::Continue(())
        })?;
        Ok(keys)
    }

    /// The last (highest-keyed) entry.
    pub fn last(&mut self, tree: &(impl Named + ?Sized)) -> Result<Option<Entry>, StoreError> {
        match &mut self.ops {
            Ops::Redb { txn, tables } => Ok(table(txn, tables, tree.name())?
                .last()?
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))),
            Ops::Other(conn) => conn.end(tree.name(), true),
        }
    }

    /// How many entries the tree holds.
    pub fn len(&mut self, tree: &(impl Named + ?Sized)) -> Result<u64, StoreError> {
        match &mut self.ops {
            Ops::Redb { txn, tables } => Ok(table(txn, tables, tree.name())?.len()?),
            Ops::Other(conn) => conn.len(tree.name()),
        }
    }

    /// Puts back what this write changed, newest change first.
    fn undo_all(&mut self) -> Result<(), StoreError> {
        match &mut self.ops {
            Ops::Redb { txn, tables } => {
                while let Some((tree, key, before)) = self.undo.pop() {
                    let table = table(txn, tables, &tree)?;
                    match before {
                        Some(value) => {
                            table.insert(key.as_slice(), value.as_slice())?;
                        }
                        None => {
                            table.remove(key.as_slice())?;
                        }
                    }
                }
                Ok(())
            }
            Ops::Other(conn) => conn.job_end(false),
        }
    }

    /// The write succeeded: its changes stay in the batch.
    fn keep(&mut self) -> Result<(), StoreError> {
        match &mut self.ops {
            Ops::Redb { .. } => Ok(()),
            Ops::Other(conn) => conn.job_end(true),
        }
    }

    /// Whether this write changed anything.
    fn wrote(&self) -> bool {
        self.changed
    }
}

/// The redb table of `tree` in `txn`, opened once per write.
fn table<'t, 'x>(
    txn: &'t redb::WriteTransaction,
    tables: &'x mut Vec<(Arc<str>, WriteTable<'t>)>,
    tree: &str,
) -> Result<&'x mut WriteTable<'t>, StoreError> {
    let at = match tables.iter().position(|(n, _)| **n == *tree) {
        Some(at) => at,
        None => {
            let t = txn.open_table(definition(tree))?;
            tables.push((tree.into(), t));
            tables.len() - 1
        }
    };
    Ok(&mut tables[at].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(delay: Duration) -> Batches {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        Batches::new(Arc::new(AtomicU64::new(micros)))
    }

    /// Sends `n` more writes from another thread, one every `gap`.
    fn trickle(queue: mpsc::Sender<u32>, n: u32, gap: Duration) -> JoinHandle<()> {
        thread::spawn(move || {
            for i in 0..n {
                thread::sleep(gap);
                if queue.send(100 + i).is_err() {
                    return;
                }
            }
        })
    }

    #[test]
    fn without_a_delay_a_batch_is_what_is_already_waiting() {
        let (queue, jobs) = mpsc::channel();
        for i in 0..3 {
            queue.send(i).unwrap();
        }
        let later = trickle(queue.clone(), 1, Duration::from_millis(50));
        let mut batches = batches(Duration::ZERO);
        assert_eq!(batches.next(&jobs), Some(vec![0, 1, 2]));
        assert_eq!(batches.next(&jobs), Some(vec![100]));
        later.join().unwrap();
        drop(queue);
        assert_eq!(batches.next(&jobs), None);
    }

    #[test]
    fn writes_arriving_together_wait_for_those_within_the_delay() {
        let (queue, jobs) = mpsc::channel();
        queue.send(0).unwrap();
        queue.send(1).unwrap();
        // Two more, well inside the delay: the batch takes them instead of committing the
        // first two alone.
        let later = trickle(queue.clone(), 2, Duration::from_millis(20));
        let mut batches = batches(Duration::from_millis(500));
        assert_eq!(batches.next(&jobs), Some(vec![0, 1, 100, 101]));
        later.join().unwrap();
    }

    #[test]
    fn a_write_arriving_alone_is_not_delayed() {
        let (queue, jobs) = mpsc::channel();
        queue.send(0).unwrap();
        // Arrives long after the first: had the first waited for the delay, it would share
        // its batch.
        let later = trickle(queue.clone(), 1, Duration::from_millis(200));
        let mut batches = batches(Duration::from_secs(5));
        assert_eq!(batches.next(&jobs), Some(vec![0]));
        assert_eq!(batches.next(&jobs), Some(vec![100]));
        later.join().unwrap();
    }

    #[test]
    fn after_a_batch_of_several_the_next_write_waits_for_company() {
        let (queue, jobs) = mpsc::channel();
        queue.send(0).unwrap();
        queue.send(1).unwrap();
        let mut batches = batches(Duration::from_millis(300));
        // Nothing else comes: the batch waits out its delay and commits the two.
        assert_eq!(batches.next(&jobs), Some(vec![0, 1]));
        // Under load (the last batch carried two), a lone write waits for the next one.
        queue.send(2).unwrap();
        let later = trickle(queue.clone(), 1, Duration::from_millis(20));
        assert_eq!(batches.next(&jobs), Some(vec![2, 100]));
        later.join().unwrap();
    }

    #[test]
    fn the_delay_is_capped() {
        let writer = Writer::spawn(|_, _, _| {}, |_| StoreError::Stopped).unwrap();
        writer.set_commit_delay(Duration::from_secs(3600));
        assert_eq!(
            writer.delay_us.load(Ordering::Relaxed),
            u64::try_from(MAX_COMMIT_DELAY.as_micros()).unwrap()
        );
        writer.set_commit_delay(Duration::from_micros(500));
        assert_eq!(writer.delay_us.load(Ordering::Relaxed), 500);
    }
}
