//! What an import reports: counts per type, skipped entries, failed files (no content).

use std::collections::BTreeMap;

use serde::Serialize;

/// An entry left out of an import, and why. Never the entry's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub file: String,
    /// Index in `Bundle.entry`.
    pub entry: usize,
    pub resource_type: Option<String>,
    pub reason: String,
}

/// A file that could not be imported at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedFile {
    pub file: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Bundles imported (with or without skipped entries).
    pub bundles: usize,
    /// Resources written, per type.
    pub imported: BTreeMap<String, usize>,
    pub skipped: Vec<Skipped>,
    /// Files that could not be read or parsed (only from [`import_paths`]).
    pub failed: Vec<FailedFile>,
}

impl ImportReport {
    pub fn merge(&mut self, other: ImportReport) {
        self.bundles += other.bundles;
        for (t, n) in other.imported {
            *self.imported.entry(t).or_default() += n;
        }
        self.skipped.extend(other.skipped);
        self.failed.extend(other.failed);
    }

    pub fn total_imported(&self) -> usize {
        self.imported.values().sum()
    }
}
