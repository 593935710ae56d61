//! Opening the embedded sled databases, with the settings every service shares.
//!
//! sled keeps pages it has read in its own cache, 1 GiB by default: under load a gateway
//! (record store, vault, outbox) or a growing visibility log kept every page it ever
//! touched resident. The operating system's page cache still holds the files, so a
//! bounded sled cache costs a copy, not a disk read.

use std::path::Path;

/// Bytes of sled's page cache per database.
pub const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Opens (creating if needed) the sled database at `path` with a bounded cache.
pub fn open(path: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .open()
}
