//! What can go wrong with the database, each naming the file where a person must act.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file (or its folder) could not be created or read.
    #[error("database {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    /// Another process (or this one) has the file open.
    #[error("database {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    /// The file is not a database, or its contents are damaged beyond redb's repair.
    #[error("database {} is not readable: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A newer fedgate (or a newer redb) wrote the file; this one must not change it.
    #[error(
        "database {at} was written by a newer fedgate ({what} {found}, this version reads up to {supported}); run the newer version"
    )]
    Newer {
        at: String,
        what: &'static str,
        found: u64,
        supported: u64,
    },
    /// A folder is where the database file should be: a sled database of an earlier
    /// fedgate, or a mistake.
    #[error(
        "{} is a folder, not a database file: an earlier fedgate's sled database? this version does not read it; keep it until what it holds is moved (docs/deploy.md, \"Upgrading from sled\")",
        path.display()
    )]
    Folder { path: PathBuf },
    /// The PostgreSQL settings cannot work (a URL that does not parse or holds a password,
    /// a bad schema name, an unusable CA file).
    #[error("database {at}: {reason}")]
    Config { at: String, reason: String },
    /// The PostgreSQL server could not be reached, or refused the connection (a wrong
    /// password, an unknown database): the server's own reason.
    #[error("database {at}: cannot connect: {reason}")]
    Unreachable { at: String, reason: String },
    /// A PostgreSQL statement failed.
    #[error("database: {0}")]
    Postgres(String),
    /// A read or a commit failed.
    #[error("database: {0}")]
    Storage(#[from] redb::Error),
    /// A key written as new ([`crate::WriteTx::put_new`]) exists: the code that wrote it
    /// assumed what the database does not hold.
    #[error("database tree {tree}: a key written as new exists already")]
    Exists { tree: String },
    /// A stored value is not what the code that reads it expects.
    #[error("database tree {tree} holds an unreadable entry")]
    Unreadable { tree: String },
    /// The commit that would have made this write durable failed (or another write of its
    /// batch could not be undone); nothing of the batch was kept.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The writer thread is gone: an earlier commit failed and the database refuses writes
    /// until the service restarts (and redb repairs the file).
    #[error("database refuses writes after a failed commit; restart the service")]
    Stopped,
}

impl StoreError {
    /// An unreadable entry in `tree`.
    pub fn unreadable(tree: &str) -> Self {
        StoreError::Unreadable {
            tree: tree.to_string(),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError
);
