//! The embedded database every fedgate service keeps its state in: one redb file per
//! service, named trees of byte keys and values, and writes that are on disk before they
//! return.
//!
//! - [`db`]: opening a file (one-line errors for a missing folder, a file in use, a corrupt
//!   file, one written by a newer fedgate), the schema version, read snapshots.
//! - [`write`]: the one writer thread and its group commit: every write of every task that
//!   arrives while a commit runs shares the next commit and its one `fdatasync`, and each
//!   write's result is handed back only after that `fdatasync` returned.
//! - [`tree`]: a named tree and its reads; `table`: what reads and writes share (a tree's
//!   name, its redb table, walking a range of keys).
//!
//! Why redb: it commits with `fdatasync` (`Durability::Immediate`), so "durable before the
//! response" is true; sled 0.34, which it replaces, neither fsynced on the request path nor
//! is maintained.

mod db;
mod error;
mod pg;
mod pg_conn;
mod pg_tx;
mod table;
mod tree;
mod write;

pub use db::{Db, Schema, Snapshot};
pub use error::StoreError;
pub use pg::{migrate, migration_status, valid_schema_name, MigrationStatus, PgOptions};
pub use table::{Entry, Named};
pub use tree::Tree;
pub use write::{WriteTx, MAX_COMMIT_DELAY};

/// What a database can be kept on besides a file (see [`Db::with_backend`]).
pub use redb::StorageBackend;
