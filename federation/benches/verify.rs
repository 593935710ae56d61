//! `cargo bench -p federation --bench verify`: verification cost against its floor.
//!
//! Prints, in one run and on one core: raw Ed25519 verifies/s (the floor), then JWT VC,
//! Data Integrity VC, JWT VP (holder + 2 JWT credentials) and Data Integrity VP (holder +
//! 2 Data Integrity credentials) verifies/s, each cold (proof cache disabled: every
//! signature checked) and warm (the credentials' proofs cached, as for a clinician's second
//! request), each also as a ratio to the floor. The operations are measured in
//! interleaved rounds and reported as medians, so that load from elsewhere on a shared
//! machine weighs on the floor and the operations alike. The status list is served by a
//! real loopback server and cached, as in a running gateway.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey, Verifier as _};
use federation::credentials::{self, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::verify::{ProofCache, Verifier};

/// One operation of the throughput table: its name, the signatures it needs (its floor is
/// the raw verification rate divided by them) and the work.
struct Op<'a> {
    name: &'static str,
    signatures: f64,
    run: Box<dyn FnMut() + 'a>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Rates per second of `ops`, measured in interleaved slices of `slice` over `rounds`
/// rounds: a burst of load from elsewhere on a shared machine hits the floor and the
/// operations alike. Returns each op's median rate and the median of its per-round
/// ratios to the floor (`ops[0]`, one signature) divided by its signatures.
fn interleaved(ops: &mut [Op], rounds: usize, slice: Duration) -> Vec<(f64, f64)> {
    for op in ops.iter_mut() {
        // Warm up once (caches, lazy statics).
        (op.run)();
    }
    let mut rates = vec![Vec::with_capacity(rounds); ops.len()];
    for _ in 0..rounds {
        for (i, op) in ops.iter_mut().enumerate() {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < slice {
                (op.run)();
                n += 1;
            }
            rates[i].push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    let floor = rates[0].clone();
    ops.iter()
        .zip(&rates)
        .map(|(op, r)| {
            let ratios = r
                .iter()
                .zip(&floor)
                .map(|(x, f)| x / (f / op.signatures))
                .collect();
            (median(r.clone()), median(ratios))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    // One worker thread: figures are per core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fed = rt.block_on(test_support::federation());
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).expect("key");
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).expect("key");
    let (jwt_vc, _) = rt.block_on(test_support::privilege(
        &fed.office,
        clinician.did(),
        ProofFormat::Jwt,
    ));
    let (di_vc, _) = rt.block_on(test_support::privilege(
        &fed.office,
        clinician.did(),
        ProofFormat::DataIntegrity,
    ));
    let consent = rt.block_on(test_support::self_issued_consent(
        &patient,
        clinician.did(),
        ProofFormat::Jwt,
    ));
    let consent_di = rt.block_on(test_support::self_issued_consent(
        &patient,
        clinician.did(),
        ProofFormat::DataIntegrity,
    ));
    let binding = PresentationBinding {
        challenge: "bench".into(),
        domain: test_support::HOSPITAL_B.into(),
    };
    let vp = rt
        .block_on(credentials::present(
            &[jwt_vc.clone(), consent],
            &clinician,
            &binding,
            ProofFormat::Jwt,
        ))
        .expect("vp");
    let di_presentation = rt
        .block_on(credentials::present(
            &[di_vc.clone(), consent_di.clone()],
            &clinician,
            &binding,
            ProofFormat::DataIntegrity,
        ))
        .expect("di vp");
    // The holder's signature over a JWT presentation does not canonicalize the embedded
    // Data Integrity credentials, so their cached proofs are all that is left of them.
    let jwt_vp_of_di = rt
        .block_on(credentials::present(
            &[di_vc.clone(), consent_di.clone()],
            &clinician,
            &binding,
            ProofFormat::Jwt,
        ))
        .expect("jwt vp of di credentials");
    // Same resolver, trust and status cache; no proof cache.
    let cold = Verifier::new(
        fed.verifier.resolver.clone(),
        fed.trust.clone(),
        fed.verifier.status.clone(),
    )
    .with_proof_cache(ProofCache::disabled());
    let warm = &fed.verifier;

    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let msg = b"fedgate floor: one Ed25519 signature over a short message";
    let sig = sk.sign(msg);
    let vk = sk.verifying_key();

    let check_vc =
        |v: &Verifier, c: &serde_json::Value| assert!(rt.block_on(v.verify_credential(c)).is_ok());
    let check_vp = |v: &Verifier, p: &serde_json::Value| {
        assert!(rt.block_on(v.verify_presentation(p, &binding)).is_ok())
    };
    let mut ops = vec![
        Op {
            name: "raw Ed25519 verify (floor)",
            signatures: 1.0,
            run: Box::new(|| assert!(vk.verify(msg, &sig).is_ok())),
        },
        Op {
            name: "JWT VC, cold",
            signatures: 1.0,
            run: Box::new(|| check_vc(&cold, &jwt_vc)),
        },
        Op {
            name: "JWT VC, proof cached",
            signatures: 1.0,
            run: Box::new(|| check_vc(warm, &jwt_vc)),
        },
        Op {
            name: "Data Integrity VC, cold",
            signatures: 1.0,
            run: Box::new(|| check_vc(&cold, &di_vc)),
        },
        Op {
            name: "Data Integrity VC, proof cached",
            signatures: 1.0,
            run: Box::new(|| check_vc(warm, &di_vc)),
        },
        Op {
            name: "JWT VP (holder + 2 VCs), cold",
            signatures: 3.0,
            run: Box::new(|| check_vp(&cold, &vp)),
        },
        Op {
            name: "JWT VP (holder + 2 VCs), VCs cached",
            signatures: 3.0,
            run: Box::new(|| check_vp(warm, &vp)),
        },
        Op {
            name: "DI VP (holder + 2 DI VCs), cold",
            signatures: 3.0,
            run: Box::new(|| check_vp(&cold, &di_presentation)),
        },
        Op {
            name: "DI VP (holder + 2 DI VCs), VCs cached",
            signatures: 3.0,
            run: Box::new(|| check_vp(warm, &di_presentation)),
        },
        Op {
            name: "JWT VP (holder + 2 DI VCs), VCs cached",
            signatures: 3.0,
            run: Box::new(|| check_vp(warm, &jwt_vp_of_di)),
        },
    ];
    // 12 rounds of 250 ms per operation: about 30 s in all.
    let labels: Vec<(&str, f64)> = ops.iter().map(|o| (o.name, o.signatures)).collect();
    let results = interleaved(&mut ops, 12, Duration::from_millis(250));
    drop(ops);
    println!("\nverification throughput, one core, medians of interleaved rounds (same run):");
    for ((name, signatures), (rate, ratio)) in labels.iter().zip(&results) {
        println!("  {name:<40} {rate:>10.0}/s  {ratio:.3} of floor/{signatures}");
    }
    let stats = warm.proofs.stats();
    println!(
        "  proof cache: {} hits, {} misses, {} proofs checked",
        stats.hits, stats.misses, stats.proof_checks
    );

    let mut g = c.benchmark_group("verify");
    g.sample_size(20);
    g.bench_function("ed25519_raw", |b| b.iter(|| vk.verify(msg, &sig).is_ok()));
    g.bench_function("jwt_vc", |b| {
        b.iter(|| rt.block_on(cold.verify_credential(&jwt_vc)).is_ok())
    });
    g.bench_function("di_vc", |b| {
        b.iter(|| rt.block_on(cold.verify_credential(&di_vc)).is_ok())
    });
    g.bench_function("di_vc_cached", |b| {
        b.iter(|| rt.block_on(warm.verify_credential(&di_vc)).is_ok())
    });
    g.bench_function("jwt_vp_holder_plus_2", |b| {
        b.iter(|| rt.block_on(cold.verify_presentation(&vp, &binding)).is_ok())
    });
    g.bench_function("jwt_vp_holder_plus_2_cached", |b| {
        b.iter(|| rt.block_on(warm.verify_presentation(&vp, &binding)).is_ok())
    });
    g.bench_function("di_vp_holder_plus_2_cached", |b| {
        b.iter(|| {
            rt.block_on(warm.verify_presentation(&di_presentation, &binding))
                .is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
