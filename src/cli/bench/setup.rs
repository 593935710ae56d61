//! The federation under test: started here on loopback, or reached at a given URL.

use anyhow::anyhow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::harness::{fixture_mrn, fixtures, Custodian, Federation};

use super::*;

/// The data folder: removed when the bench made it, kept when the user named it.
pub(super) struct Scratch {
    pub(super) path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub(super) fn new(dir: Option<PathBuf>) -> anyhow::Result<Scratch> {
        let (path, keep) = match dir {
            Some(d) => (d, true),
            None => (
                std::env::temp_dir().join(format!("fedgate-bench-{}", uuid::Uuid::new_v4())),
                false,
            ),
        };
        std::fs::create_dir_all(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The MRN of the Patient in each of hospital A's fixture bundles.
pub(super) fn fixture_mrns() -> anyhow::Result<Vec<String>> {
    let mrns: Vec<String> = fixtures("hospital-a")?
        .iter()
        .filter_map(|file| fixture_mrn(file).ok())
        .collect();
    if mrns.is_empty() {
        return Err(anyhow!("no fixture patient with an MRN"));
    }
    Ok(mrns)
}

/// An office, the visibility service and hospital A's gateway with `contracts`, holding
/// the fixtures and the bundles in `more_records`.
pub(super) fn start_federation(
    dir: &Path,
    contracts: &str,
    more_records: Vec<PathBuf>,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    start_federation_with(dir, contracts, more_records, "", say)
}

/// The federation of `bench exchange`: [`start_federation`] with top-level gateway
/// `settings`, on `pg` with hospital A's gateway as `replicas` processes when given.
pub(super) fn start_exchange_federation(
    dir: &Path,
    contracts: &str,
    settings: &str,
    replicated: Option<(&crate::harness::Postgres, usize)>,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    start_federation_on(dir, contracts, Vec::new(), settings, "", replicated, say)
}

/// [`start_federation`], with more gateway configuration (TOML).
pub(super) fn start_federation_with(
    dir: &Path,
    contracts: &str,
    more_records: Vec<PathBuf>,
    more_config: &str,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    start_federation_on(dir, contracts, more_records, "", more_config, None, say)
}

fn start_federation_on(
    dir: &Path,
    contracts: &str,
    more_records: Vec<PathBuf>,
    settings: &str,
    more_config: &str,
    replicated: Option<(&crate::harness::Postgres, usize)>,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot find fedgate itself: {e}"))?;
    let started = Instant::now();
    let mut builder = Federation::builder(&exe, dir, OFFICE, VISIBILITY);
    let mut replicas = 1;
    if let Some((pg, n)) = replicated {
        builder = builder.postgres(pg);
        replicas = n;
    }
    // Events ship at the gateway's default pace, as in the figures of docs/performance.md.
    let fed = builder
        .status_push()
        .gateway(
            Custodian::new(HOSPITAL_A)
                .replicas(replicas)
                .settings(settings)
                .records(
                    fixtures("hospital-a")?
                        .into_iter()
                        .chain(more_records)
                        .collect(),
                )
                .config("[custodian]\nmin_cell_size = 3\n")
                .config(contracts)
                .config(more_config),
        )
        .start()?;
    let gateway = fed.gateway(HOSPITAL_A)?;
    say(format!(
        "federation up in {:.1} s: office {}, visibility {}, gateway {} (pid {})",
        started.elapsed().as_secs_f64(),
        fed.office.process.addr,
        fed.visibility.process.addr,
        gateway.process.addr,
        gateway.process.pid()
    ));
    Ok(fed)
}
