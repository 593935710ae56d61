//! Power loss, simulated: every write acknowledged before the power was cut is there after
//! the restart, whatever subset of the unsynced writes the disk happened to keep.
//!
//! The database runs on a disk model that keeps two images: what reads see (the page
//! cache) and what survives a power loss (the platter). A write lands in the first; only
//! `sync_data` copies it to the second. At a random moment the power is cut: the platter
//! image, plus a random subset of the writes not yet synced (some torn at a 512-byte
//! sector), is what the next start finds. This is the record-and-replay idea of ALICE and
//! CrashMonkey, at the storage backend, where no privileges are needed. A disk whose
//! `sync_data` does not reach the platter (as `sync_file_range` without a cache flush)
//! must make the same check fail: the harness is shown to catch a lost write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use storage::{Db, Schema, StorageBackend, StoreError};

const SCHEMA: Schema = Schema {
    name: "crash",
    version: 1,
};
const SECTOR: usize = 512;

#[derive(Debug)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct State {
    /// What reads see.
    cache: Vec<u8>,
    /// What survives a power loss.
    platter: Vec<u8>,
    /// Writes and resizes since the last sync, in order.
    unsynced: Vec<Op>,
    /// After the cut, every operation fails.
    cut: bool,
    /// Writes, resizes and syncs so far; the power is cut at the `cut_at`-th.
    ops: u64,
    cut_at: u64,
    /// What the disk kept at the cut, and how many writes were unsynced then.
    kept: Option<(Vec<u8>, usize)>,
    rng: Option<Rng>,
    syncs: u64,
}

#[derive(Debug)]
struct Disk {
    state: Mutex<State>,
    /// false: a `sync_data` that returns without reaching the platter.
    honest: bool,
}

impl Disk {
    /// A disk holding `image` whose power is cut at its `cut_at`-th write, resize or
    /// sync (never, for 0).
    fn new(honest: bool, image: Vec<u8>, cut_at: u64, rng: Option<Rng>) -> Arc<Disk> {
        Arc::new(Disk {
            state: Mutex::new(State {
                cache: image.clone(),
                platter: image,
                cut_at,
                rng,
                ..State::default()
            }),
            honest,
        })
    }

    /// What the disk kept at the cut, once the power is off.
    fn kept(&self) -> Option<(Vec<u8>, usize)> {
        self.state.lock().unwrap().kept.clone()
    }
}

impl State {
    /// Counts an operation; at the chosen one, cuts the power (the operation does not
    /// happen) and keeps the image the next start finds.
    fn tick(&mut self) -> Result<(), std::io::Error> {
        if self.cut {
            return Err(power_is_off());
        }
        self.ops += 1;
        if self.ops == self.cut_at {
            self.cut = true;
            let mut rng = self.rng.take().unwrap_or(Rng(1));
            self.kept = Some((self.survivors(&mut rng), self.unsynced.len()));
            return Err(power_is_off());
        }
        Ok(())
    }

    /// The platter, plus a random subset of the unsynced writes, some torn.
    fn survivors(&self, rng: &mut Rng) -> Vec<u8> {
        let state = self;
        let mut image = state.platter.clone();
        for op in &state.unsynced {
            match op {
                Op::SetLen(len) => {
                    if rng.below(2) == 0 {
                        image.resize(*len as usize, 0);
                    }
                }
                Op::Write(offset, data) => {
                    // Kept whole, dropped, or torn after some sectors.
                    let keep = match rng.below(3) {
                        0 => 0,
                        1 => data.len(),
                        _ => (rng.below(data.len().div_ceil(SECTOR) as u64) as usize * SECTOR)
                            .min(data.len()),
                    };
                    let start = *offset as usize;
                    if image.len() < start + keep {
                        image.resize(start + keep, 0);
                    }
                    image[start..start + keep].copy_from_slice(&data[..keep]);
                }
            }
        }
        image
    }
}

#[derive(Debug)]
struct Handle(Arc<Disk>);

fn power_is_off() -> std::io::Error {
    std::io::Error::other("the power is off")
}

impl StorageBackend for Handle {
    fn len(&self) -> Result<u64, std::io::Error> {
        let state = self.0.state.lock().unwrap();
        if state.cut {
            return Err(power_is_off());
        }
        Ok(state.cache.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let state = self.0.state.lock().unwrap();
        if state.cut {
            return Err(power_is_off());
        }
        let start = offset as usize;
        let source = state.cache.get(start..start + out.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
        })?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut state = self.0.state.lock().unwrap();
        state.tick()?;
        state.cache.resize(len as usize, 0);
        state.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut state = self.0.state.lock().unwrap();
        state.tick()?;
        state.syncs += 1;
        if self.0.honest {
            state.platter = state.cache.clone();
            state.unsynced.clear();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.0.state.lock().unwrap();
        state.tick()?;
        let start = offset as usize;
        if state.cache.len() < start + data.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "write past the end",
            ));
        }
        state.cache[start..start + data.len()].copy_from_slice(data);
        state.unsynced.push(Op::Write(offset, data.to_vec()));
        Ok(())
    }
}

/// xorshift: reproducible crash points without a dependency.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn value_of(writer: u64, seq: u64) -> Vec<u8> {
    format!("event {writer}/{seq} ").repeat(20).into_bytes()
}

/// Runs writers against a disk whose power is cut at a random write, resize or sync,
/// restarts from what the disk kept, and returns the acknowledged writes that are missing
/// and how many writes were in flight (unsynced) at the cut.
async fn one_power_cut(honest: bool, seed: u64) -> (Vec<(u64, u64)>, usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let cut_at = 30 + rng.below(1500);
    let disk = Disk::new(honest, Vec::new(), cut_at, Some(rng));
    let db = Db::with_backend(Handle(disk.clone()), SCHEMA).unwrap();
    let tree = db.tree("events");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (tree, acked) = (tree.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for seq in 0..10_000u64 {
                let key = [w.to_be_bytes(), seq.to_be_bytes()].concat();
                if tree.insert(&key, &value_of(w, seq)).await.is_err() {
                    return; // the power is off
                }
                acked.lock().unwrap().push((w, seq));
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let Some((image, in_flight)) = disk.kept() else {
        panic!("seed {seed}: 80,000 writes finished before the power cut at operation {cut_at}");
    };
    drop(tree);
    drop(db);

    // The restart: redb repairs what it finds; every acknowledged write must be there.
    let db = match Db::with_backend(Handle(Disk::new(true, image, 0, None)), SCHEMA) {
        Ok(db) => db,
        // A disk that lied may leave nothing readable: everything acknowledged is lost.
        Err(_) if !honest => return (acked.lock().unwrap().clone(), in_flight),
        Err(e) => panic!("the database did not reopen after the power cut: {e}"),
    };
    let tree = db.tree("events");
    let acked = acked.lock().unwrap().clone();
    let lost = acked
        .into_iter()
        .filter(|&(w, seq)| {
            let key = [w.to_be_bytes(), seq.to_be_bytes()].concat();
            tree.get(&key).ok().flatten() != Some(value_of(w, seq))
        })
        .collect();
    (lost, in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_a_power_cut() {
    let run = async {
        let mut cut_mid_commit = 0;
        for seed in 1..=100 {
            let (lost, in_flight) = one_power_cut(true, seed).await;
            assert!(
                lost.is_empty(),
                "seed {seed}: {} acknowledged writes lost, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
            cut_mid_commit += usize::from(in_flight > 0);
        }
        cut_mid_commit
    };
    let cut_mid_commit = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("100 power cuts did not finish in 300 s");
    // The cuts that matter fall between a commit's writes and its sync.
    assert!(
        cut_mid_commit >= 50,
        "only {cut_mid_commit} of 100 cuts fell inside a commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_that_acknowledges_unsynced_writes_is_caught() {
    let run = async {
        let mut lost = 0;
        for seed in 1..=10 {
            lost += one_power_cut(false, seed).await.0.len();
        }
        lost
    };
    let lost = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("10 power cuts did not finish in 300 s");
    assert!(
        lost > 0,
        "the harness did not notice writes lost by a lying disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_one_sync() {
    let disk = Disk::new(true, Vec::new(), 0, None);
    let db = Db::with_backend(Handle(disk.clone()), SCHEMA).unwrap();
    let tree = db.tree("events");
    let before = disk.state.lock().unwrap().syncs;
    let mut writers = Vec::new();
    for w in 0..64u64 {
        let tree = tree.clone();
        writers.push(tokio::spawn(async move {
            for seq in 0..20u64 {
                let key = [w.to_be_bytes(), seq.to_be_bytes()].concat();
                tree.insert(&key, &value_of(w, seq)).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let syncs = disk.state.lock().unwrap().syncs - before;
    assert_eq!(tree.len().unwrap(), 64 * 20);
    // One sync per write would be 1,280; the writers waiting during a commit share the next.
    assert!(syncs * 4 < 64 * 20, "{syncs} syncs for 1,280 writes");
}

#[tokio::test]
async fn a_failed_commit_stops_writes_and_health_says_so() {
    let disk = Disk::new(true, Vec::new(), 0, None);
    let db = Db::with_backend(Handle(disk.clone()), SCHEMA).unwrap();
    let tree = db.tree("events");
    tree.insert(b"before", b"1").await.unwrap();
    assert!(db.health().is_ok());
    {
        // The next write or sync of the disk fails.
        let mut state = disk.state.lock().unwrap();
        state.cut_at = state.ops + 1;
    }
    let first = tree.insert(b"during", b"2").await;
    assert!(matches!(first, Err(StoreError::Commit(_))), "{first:?}");
    assert!(matches!(db.health(), Err(StoreError::Stopped)));
    let later = tree.insert(b"after", b"3").await;
    assert!(matches!(later, Err(StoreError::Stopped)), "{later:?}");
}
