//! The gateway's database: one redb file, `<data_dir>/gateway.redb` (or a PostgreSQL
//! schema shared by the gateway's replicas: `[storage]`), holding the outbox,
//! receipts and log state, consents, the token vault, the research budgets, challenges and
//! the federation manifest journal (each module owns its trees).
//!
//! A write returns once it is on disk (see the `storage` crate): nothing here flushes.

use std::path::Path;

pub use service::db::{Db, Schema, StoreError, Tree};

/// The layout of `gateway.redb`.
pub const SCHEMA: Schema = Schema {
    name: "gateway",
    version: 1,
};

/// The database's name in `data_dir` (`gateway.redb`; `gateway.sled` was an earlier
/// fedgate's, and is refused).
pub const NAME: &str = "gateway";

/// Opens (creating if needed) the gateway's database in `data_dir`. An earlier fedgate's
/// sled database there (`gateway.sled`) is refused, naming it: it may hold access events
/// not yet shipped.
pub fn open(data_dir: &Path) -> Result<Db, StoreError> {
    service::db::open_in(data_dir, NAME, SCHEMA, service::db::GATEWAY_CACHE_BYTES)
}

/// Opens the gateway's database as its `[storage]` section says: the file in `data_dir`,
/// or the PostgreSQL schema its replicas share (default schema: `gateway`).
pub fn open_configured(
    storage: &service::db::StorageConfig,
    data_dir: &Path,
) -> Result<Db, StoreError> {
    service::db::open_configured(
        storage,
        data_dir,
        NAME,
        SCHEMA,
        service::db::GATEWAY_CACHE_BYTES,
    )
}

/// A database in memory, for tests.
pub fn temporary() -> Result<Db, StoreError> {
    Db::temporary(SCHEMA)
}
