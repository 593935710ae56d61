//! `cargo bench -p federation --bench verify`: verification cost against its floor.
//!
//! Prints, in one run and on one core: raw Ed25519 verifies/s (the floor), JWT VC
//! verifies/s, Data Integrity VC verifies/s, and JWT VP (holder + 2 credentials)
//! verifies/s, each also as a ratio to the floor. The status list is served by a real
//! loopback server and cached, as in a running gateway.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey, Verifier as _};
use federation::credentials::{self, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};

fn per_second(mut f: impl FnMut(), budget: Duration) -> f64 {
    // Warm up once (caches, lazy statics), then count.
    f();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn bench(c: &mut Criterion) {
    // One worker thread: figures are per core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fed = rt.block_on(common::federation());
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).expect("key");
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).expect("key");
    let (jwt_vc, _) = rt.block_on(common::privilege(
        &fed.office,
        clinician.did(),
        ProofFormat::Jwt,
    ));
    let (di_vc, _) = rt.block_on(common::privilege(
        &fed.office,
        clinician.did(),
        ProofFormat::DataIntegrity,
    ));
    let consent = rt.block_on(common::self_issued_consent(
        &patient,
        clinician.did(),
        ProofFormat::Jwt,
    ));
    let binding = PresentationBinding {
        challenge: "bench".into(),
        domain: common::HOSPITAL_B.into(),
    };
    let vp = rt
        .block_on(credentials::present(
            &[jwt_vc.clone(), consent],
            &clinician,
            &binding,
            ProofFormat::Jwt,
        ))
        .expect("vp");

    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let msg = b"fedgate floor: one Ed25519 signature over a short message";
    let sig = sk.sign(msg);
    let vk = sk.verifying_key();

    let budget = Duration::from_secs(3);
    let floor = per_second(|| assert!(vk.verify(msg, &sig).is_ok()), budget);
    let jwt = per_second(
        || assert!(rt.block_on(fed.verifier.verify_credential(&jwt_vc)).is_ok()),
        budget,
    );
    let di = per_second(
        || assert!(rt.block_on(fed.verifier.verify_credential(&di_vc)).is_ok()),
        budget,
    );
    let jwt_vp = per_second(
        || {
            assert!(rt
                .block_on(fed.verifier.verify_presentation(&vp, &binding))
                .is_ok())
        },
        budget,
    );
    println!("\nverification throughput, one core (same run):");
    println!("  raw Ed25519 verify (floor)        {floor:>10.0}/s  1.00");
    println!(
        "  JWT VC verify                     {jwt:>10.0}/s  {:.2} of floor",
        jwt / floor
    );
    println!(
        "  Data Integrity VC verify          {di:>10.0}/s  {:.3} of floor",
        di / floor
    );
    println!(
        "  JWT VP (holder + 2 VCs) verify    {jwt_vp:>10.0}/s  {:.2} of floor/3 (3 signatures)",
        jwt_vp / (floor / 3.0)
    );

    let mut g = c.benchmark_group("verify");
    g.sample_size(20);
    g.bench_function("ed25519_raw", |b| b.iter(|| vk.verify(msg, &sig).is_ok()));
    g.bench_function("jwt_vc", |b| {
        b.iter(|| rt.block_on(fed.verifier.verify_credential(&jwt_vc)).is_ok())
    });
    g.bench_function("di_vc", |b| {
        b.iter(|| rt.block_on(fed.verifier.verify_credential(&di_vc)).is_ok())
    });
    g.bench_function("jwt_vp_holder_plus_2", |b| {
        b.iter(|| {
            rt.block_on(fed.verifier.verify_presentation(&vp, &binding))
                .is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
