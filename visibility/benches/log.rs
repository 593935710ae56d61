//! `cargo bench -p visibility --bench log`: visibility log throughput and proof latency.
//!
//! Prints, in one run:
//! - appends/s in batches of 1,000 access events, with one checkpoint (root + Ed25519
//!   signed note) per simulated second of events; each write is on disk (`fdatasync`)
//!   when it returns, as the visibility service's are before it hands out receipts. Once
//!   with a write per batch, once with the batches of one checkpoint in one write;
//! - the time to build a 1,000,000-leaf log, then inclusion and consistency proof latency
//!   at that size, and the verifier's cost.
//!
//! `-- --test` runs everything once, small (20,000 leaves, fractions of a second), to show
//! that the bench still works.

use std::error::Error;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use federation::checkpoint::{self, Checkpoint, NoteVerifier};
use federation::events::{AccessEvent, Outcome};
use federation::log::{leaf_hash, verify_consistency, verify_inclusion};
use storage::Db;
use visibility::merkle::{Leaves, MerkleLog};

const BATCH: usize = 1_000;
const ORIGIN: &str = "visibility.fedgate.example/log";
/// The database's page cache (the service's is 32 MiB; a bench of a million leaves gets
/// more, as it did before).
const CACHE_BYTES: usize = 512 * 1024 * 1024;

type Res<T> = Result<T, Box<dyn Error>>;

/// A realistic leaf: one serialized access event (about 600 bytes).
fn event(i: u64) -> Res<Vec<u8>> {
    let ev = AccessEvent {
        id: format!("01900000-0000-7000-8000-{i:012x}"),
        time: Utc
            .timestamp_opt(1_700_000_000 + (i / 1000) as i64, 0)
            .single()
            .ok_or("timestamp")?,
        custodian: "did:web:hospital-a.example".into(),
        requester_org: Some("did:web:hospital-b.example".into()),
        requester: Some("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".into()),
        patient_ref: Some(format!(
            "pseud-{:016x}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )),
        patient_did_digests: vec![federation::events::patient_did_digest(&format!(
            "did:key:patient{i}"
        ))],
        domain: "treatment".into(),
        purpose: "TREAT".into(),
        data_classes: vec!["Observation".into(), "MedicationStatement".into()],
        record_count: i % 40,
        decision: if i.is_multiple_of(17) {
            Outcome::Deny
        } else {
            Outcome::Allow
        },
        decision_id: format!("dec-{i}"),
        reasons: vec!["consent.active".into(), "privilege.matches".into()],
        policy_digest: "sha256:4f1c0e7a2b6d9e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071"
            .into(),
        credential_ids: vec![format!("urn:uuid:cred-{i}")],
        failed_check: None,
        break_glass: false,
        justification: None,
        review_required: false,
        expires_at: None,
        privacy: None,
    };
    Ok(serde_json::to_vec(&ev)?)
}

fn batches(start: u64, count: usize) -> Res<Vec<Vec<Vec<u8>>>> {
    (0..count)
        .map(|b| {
            let first = start + (b * BATCH) as u64;
            (first..first + BATCH as u64).map(event).collect()
        })
        .collect()
}

fn temp_db(dir: &tempfile::TempDir, name: &str) -> Res<Db> {
    Ok(Db::open_with_cache(
        &dir.path().join(format!("{name}.redb")),
        visibility::SCHEMA,
        CACHE_BYTES,
    )?)
}

/// Appends `batches` in one durable write.
fn append(log: &MerkleLog, batches: Vec<Vec<Vec<u8>>>) -> Res<()> {
    let leaves: Vec<Leaves> = batches.into_iter().map(Leaves::new).collect();
    let l = log.clone();
    log.db().write_blocking(move |tx| {
        for batch in &leaves {
            l.append_in(tx, batch)?;
        }
        Ok::<_, visibility::merkle::LogError>(())
    })?;
    Ok(())
}

fn checkpoint(log: &MerkleLog, key: &SigningKey) -> Res<String> {
    let size = log.size()?;
    Ok(Checkpoint::new(ORIGIN, size, log.root(size)?).sign("visibility", key)?)
}

struct Run {
    events: u64,
    checkpoints: u64,
    elapsed: Duration,
    checkpoint_time: Duration,
}

/// Appends batches for `budget`, signing a checkpoint every `per_checkpoint` batches;
/// `grouped`: the batches of one checkpoint in one write, else a write per batch.
fn run(
    log: &MerkleLog,
    key: &SigningKey,
    pool: &[Vec<Vec<u8>>],
    per_checkpoint: usize,
    grouped: bool,
    budget: Duration,
) -> Res<Run> {
    let (mut events, mut checkpoints) = (0u64, 0u64);
    let mut checkpoint_time = Duration::ZERO;
    let start = Instant::now();
    let mut b = 0usize;
    while start.elapsed() < budget {
        let mut group = Vec::new();
        for _ in 0..per_checkpoint {
            let batch = pool[b % pool.len()].clone();
            if grouped {
                group.push(batch);
            } else {
                append(log, vec![batch])?;
            }
            b += 1;
            events += BATCH as u64;
        }
        if grouped {
            append(log, group)?;
        }
        let t = Instant::now();
        let note = checkpoint(log, key)?;
        checkpoint_time += t.elapsed();
        checkpoints += 1;
        std::hint::black_box(note);
    }
    Ok(Run {
        events,
        checkpoints,
        elapsed: start.elapsed(),
        checkpoint_time,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn bench(c: &mut Criterion) {
    // Setup failures end the run with a message rather than a panic backtrace.
    if let Err(e) = bench_log(c) {
        eprintln!("log bench failed: {e}");
        std::process::exit(1);
    }
}

fn bench_log(c: &mut Criterion) -> Res<()> {
    // `cargo bench -- --test`: once, small.
    let quick = std::env::args().any(|a| a == "--test");
    let big: u64 = if quick { 20_000 } else { 1_000_000 };
    let (warm_up, budget) = if quick {
        (Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (Duration::from_secs(2), Duration::from_secs(8))
    };
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let verifier = NoteVerifier::from_signing_key("visibility", &key)?;
    let dir = tempfile::tempdir()?;

    // 1. Append throughput with a checkpoint per simulated second.
    let pool = batches(0, 20)?;
    println!(
        "\nvisibility log (leaf = one access event, {} bytes)",
        pool[0][0].len()
    );
    let db = temp_db(&dir, "append")?;
    let log = MerkleLog::open(&db, "bench")?;
    // Warm-up measures the raw rate, which sets how many batches make one second.
    let warm = run(&log, &key, &pool, 1, false, warm_up)?;
    let per_second = ((warm.events as f64 / warm.elapsed.as_secs_f64()) / BATCH as f64)
        .round()
        .max(1.0) as usize;
    for grouped in [false, true] {
        let r = run(&log, &key, &pool, per_second, grouped, budget)?;
        println!(
            "  append, batches of {BATCH}, {}, checkpoint every {per_second} batches: \
             {:>9.0} events/s  ({} events, {} checkpoints, root+sign {:.2} ms each)",
            if grouped {
                "one write per checkpoint"
            } else {
                "one write per batch"
            },
            r.events as f64 / r.elapsed.as_secs_f64(),
            r.events,
            r.checkpoints,
            r.checkpoint_time.as_secs_f64() * 1e3 / r.checkpoints.max(1) as f64,
        );
    }
    let note = checkpoint(&log, &key)?;
    let t = Instant::now();
    let opened = checkpoint::open(&note, &[verifier])?;
    println!(
        "  checkpoint open+verify: {:.1} µs (size {})",
        t.elapsed().as_secs_f64() * 1e6,
        opened.size
    );
    drop(log);
    drop(db);

    // 2. A 1,000,000-leaf log, built once (each write durable when it returns).
    let db = temp_db(&dir, "big")?;
    let log = MerkleLog::open(&db, "big")?;
    let t = Instant::now();
    let chunk = 10usize;
    let mut next = 0u64;
    let mut appending = Duration::ZERO;
    while next < big {
        let leaves: Vec<Vec<u8>> = batches(next, chunk)?.into_iter().flatten().collect();
        let count = leaves.len() as u64;
        // Encoding events is the gateway's cost, not the log's: time the append alone.
        let a = Instant::now();
        append(&log, vec![leaves])?;
        appending += a.elapsed();
        next += count;
    }
    let build = t.elapsed();
    println!(
        "  built {big} leaves in {:.1} s wall ({:.1} s of it appending: \
         {:.0} events/s, batches of {})",
        build.as_secs_f64(),
        appending.as_secs_f64(),
        big as f64 / appending.as_secs_f64(),
        chunk * BATCH
    );

    let t = Instant::now();
    let root = log.root(big)?;
    println!("  root({big}): {:.1} µs", t.elapsed().as_secs_f64() * 1e6);

    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut lat = Vec::with_capacity(5_000);
    let mut verify_time = Duration::ZERO;
    for _ in 0..if quick { 200 } else { 5_000 } {
        let index = rand() % big;
        let t = Instant::now();
        let proof = log.inclusion_proof(index, big)?;
        lat.push(t.elapsed());
        let lh = leaf_hash(&log.leaf(index)?);
        let t = Instant::now();
        verify_inclusion(&lh, index, big, &proof, &root)?;
        verify_time += t.elapsed();
    }
    lat.sort();
    println!(
        "  inclusion proof at {big}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; verify {:.1} µs",
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
        lat[lat.len() - 1].as_secs_f64() * 1e6,
        verify_time.as_secs_f64() * 1e6 / lat.len() as f64,
    );

    let mut lat = Vec::with_capacity(1_000);
    for _ in 0..if quick { 100 } else { 1_000 } {
        let old = rand() % big + 1;
        let t = Instant::now();
        let proof = log.consistency_proof(old, big)?;
        lat.push(t.elapsed());
        let old_root = log.root(old)?;
        verify_consistency(old, big, &old_root, &root, &proof)?;
    }
    lat.sort();
    println!(
        "  consistency proof to {big}: p50 {:.1} µs, p99 {:.1} µs",
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
    );

    let mut g = c.benchmark_group("log");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("inclusion_proof_1m", |b| {
        b.iter(|| log.inclusion_proof(rand() % big, big).map(|p| p.len()))
    });
    g.finish();
    Ok(())
}

criterion_group!(benches, bench);
criterion_main!(benches);
