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

/// `count` synthetic patients (the default record sizes, seed 1) written to `dir` as one
/// transaction Bundle each: the files and the patients' MRNs.
pub(super) fn synthetic_patients(
    dir: &Path,
    count: usize,
) -> anyhow::Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let mut generator = synth::Generator::new(synth::Options::default());
    let (mut files, mut mrns) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let patient = generator.patient();
        let path = dir.join(format!("patient-{i:04}.json"));
        std::fs::write(&path, serde_json::to_vec(&patient.bundle)?)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        files.push(path);
        mrns.push(patient.identity.mrn.clone());
    }
    Ok((files, mrns))
}

/// Which of `patients` each of `holders` asks for: every patient is someone's when there
/// are at least as many patients as holders (holder `i` takes `i`, `i + holders`, ...);
/// otherwise holder `i` asks for patient `i % patients` alone.
pub(super) fn shares(holders: usize, patients: usize) -> Vec<Vec<usize>> {
    (0..holders)
        .map(|i| {
            if patients >= holders {
                (i..patients).step_by(holders).collect()
            } else {
                vec![i % patients.max(1)]
            }
        })
        .collect()
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
/// `settings` and every service's `commit_delay_us` when given, on `pg` with hospital A's
/// gateway as `replicas` processes when given.
pub(super) fn start_exchange_federation(
    dir: &Path,
    contracts: &str,
    more_records: Vec<PathBuf>,
    settings: &str,
    commit_delay_us: Option<u64>,
    replicated: Option<(&crate::harness::Postgres, usize)>,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    let storage = Storage {
        replicated,
        commit_delay_us,
    };
    start_federation_on(dir, contracts, more_records, settings, "", storage, say)
}

/// Where and how the started services keep their state.
#[derive(Default)]
struct Storage<'a> {
    /// PostgreSQL, with hospital A's gateway as this many replicas.
    replicated: Option<(&'a crate::harness::Postgres, usize)>,
    commit_delay_us: Option<u64>,
}

/// [`start_federation`], with more gateway configuration (TOML).
pub(super) fn start_federation_with(
    dir: &Path,
    contracts: &str,
    more_records: Vec<PathBuf>,
    more_config: &str,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    let storage = Storage::default();
    start_federation_on(dir, contracts, more_records, "", more_config, storage, say)
}

fn start_federation_on(
    dir: &Path,
    contracts: &str,
    more_records: Vec<PathBuf>,
    settings: &str,
    more_config: &str,
    storage: Storage<'_>,
    say: &dyn Fn(String),
) -> anyhow::Result<Federation> {
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot find fedgate itself: {e}"))?;
    let started = Instant::now();
    let mut builder = Federation::builder(&exe, dir, OFFICE, VISIBILITY);
    let mut replicas = 1;
    if let Some((pg, n)) = storage.replicated {
        builder = builder.postgres(pg);
        replicas = n;
    }
    if let Some(micros) = storage.commit_delay_us {
        builder = builder.commit_delay_us(micros);
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

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn every_patient_is_asked_for_when_there_are_enough() {
        let s = shares(3, 8);
        assert_eq!(s, vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
        let mut all: Vec<usize> = shares(50, 500).concat();
        all.sort_unstable();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        // Fewer patients than holders: holders share them, one patient each.
        assert_eq!(shares(4, 3), vec![vec![0], vec![1], vec![2], vec![0]]);
    }
}
