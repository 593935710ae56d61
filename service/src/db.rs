//! Opening the embedded sled databases, with the settings every service shares.
//!
//! sled keeps pages it has read in its own cache, 1 GiB by default: under load a gateway
//! (record store, vault, outbox) or a growing visibility log kept every page it ever
//! touched resident. The operating system's page cache still holds the files, so a
//! bounded sled cache costs a copy, not a disk read.

use std::path::Path;

/// Bytes of sled's page cache per database.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The gateway's: a gateway reading large records filled both of its databases' caches at
/// 32 MiB and kept them; at 8 MiB the exchange's time did not change (docs/performance.md,
/// "Memory across large exchanges").
pub const GATEWAY_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Opens (creating if needed) the sled database at `path` with a bounded cache.
pub fn open(path: &Path) -> sled::Result<sled::Db> {
    open_with_cache(path, CACHE_BYTES)
}

/// As [`open`], with a cache of `cache_bytes`.
pub fn open_with_cache(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .open()
}
