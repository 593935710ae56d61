//! `cargo bench -p federation --bench verify`: verification cost against its floor.
//!
//! Prints, in one run and on one core: raw Ed25519 verifies/s (the floor), then JWT VC,
//! Data Integrity VC, JWT VP (holder + 2 JWT credentials) and Data Integrity VP (holder +
//! 2 Data Integrity credentials) verifies/s, each cold (proof cache disabled: every
//! signature checked) and warm (the credentials' proofs cached, as for a clinician's second
//! request), each also as a ratio to the floor. The status list is served by a real
//! loopback server and cached, as in a running gateway.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey, Verifier as _};
use federation::credentials::{self, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::verify::{ProofCache, Verifier};

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
    let consent_di = rt.block_on(common::self_issued_consent(
        &patient,
        clinician.did(),
        ProofFormat::DataIntegrity,
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

    let budget = Duration::from_secs(3);
    let floor = per_second(|| assert!(vk.verify(msg, &sig).is_ok()), budget);
    let vc_rate = |v: &Verifier, vc: &serde_json::Value| {
        per_second(
            || assert!(rt.block_on(v.verify_credential(vc)).is_ok()),
            budget,
        )
    };
    let vp_rate = |v: &Verifier, vp: &serde_json::Value| {
        per_second(
            || assert!(rt.block_on(v.verify_presentation(vp, &binding)).is_ok()),
            budget,
        )
    };
    let jwt = vc_rate(&cold, &jwt_vc);
    let jwt_warm = vc_rate(warm, &jwt_vc);
    let di = vc_rate(&cold, &di_vc);
    let di_warm = vc_rate(warm, &di_vc);
    let jwt_vp = vp_rate(&cold, &vp);
    let jwt_vp_warm = vp_rate(warm, &vp);
    let di_vp = vp_rate(&cold, &di_presentation);
    let di_vp_warm = vp_rate(warm, &di_presentation);
    let jwt_vp_of_di_warm = vp_rate(warm, &jwt_vp_of_di);
    println!("\nverification throughput, one core (same run):");
    println!("  raw Ed25519 verify (floor)               {floor:>10.0}/s  1.00");
    let line = |name: &str, rate: f64, signatures: f64| {
        println!(
            "  {name:<40} {rate:>10.0}/s  {:.3} of floor/{signatures}",
            rate / (floor / signatures)
        )
    };
    line("JWT VC, cold", jwt, 1.0);
    line("JWT VC, proof cached", jwt_warm, 1.0);
    line("Data Integrity VC, cold", di, 1.0);
    line("Data Integrity VC, proof cached", di_warm, 1.0);
    line("JWT VP (holder + 2 VCs), cold", jwt_vp, 3.0);
    line("JWT VP (holder + 2 VCs), VCs cached", jwt_vp_warm, 3.0);
    line("DI VP (holder + 2 DI VCs), cold", di_vp, 3.0);
    line("DI VP (holder + 2 DI VCs), VCs cached", di_vp_warm, 3.0);
    line(
        "JWT VP (holder + 2 DI VCs), VCs cached",
        jwt_vp_of_di_warm,
        3.0,
    );
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
