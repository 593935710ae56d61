//! The floor of each scenario (the cryptography it cannot avoid), measured in the same run.

use anyhow::anyhow;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use federation::keys::{KeyAlgorithm, KeyPair};
use serde_json::json;

use super::*;

pub(super) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Mean time of `f` over about `budget`, after one warm-up call, µs.
pub(super) fn mean_us(budget: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<f64> {
    if !f() {
        return Err(anyhow!("a floor measurement failed"));
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        if !f() {
            return Err(anyhow!("a floor measurement failed"));
        }
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64)
}

/// One Ed25519 verification (ed25519-dalek, key already parsed) over `message_len`
/// bytes, µs.
pub(super) fn ed25519_verify_us(message_len: usize) -> anyhow::Result<f64> {
    let key = KeyPair::generate_did_key(KeyAlgorithm::Ed25519)?;
    let signing = key
        .ed25519_signing_key()
        .ok_or_else(|| anyhow!("no Ed25519 signing key for the floor"))?;
    let payload = json!({ "pad": "x".repeat(message_len.saturating_sub(40)) });
    let jws = federation::jose::sign(&payload, &key, "floor")?;
    let (input, sig) = jws
        .rsplit_once('.')
        .ok_or_else(|| anyhow!("malformed JWS for the floor"))?;
    let sig_bytes = federation::b64::decode(sig)?;
    let signature = TryFrom::try_from(sig_bytes.as_slice())
        .ok()
        .ok_or_else(|| anyhow!("malformed signature for the floor"))?;
    let verifying = signing.verifying_key();
    let message = input.as_bytes();
    mean_us(Duration::from_millis(500), || {
        verifying.verify_strict(message, &signature).is_ok()
    })
}

/// One policy decision of `domain` on the gateway's sample input with the repository's
/// policies, µs.
pub(super) async fn decision_us(policies: &Path, domain: &'static str) -> anyhow::Result<f64> {
    // Every decision evaluated: the floor is the policy's work, not a cache lookup.
    let options = gateway::policy::PolicyOptions {
        cache_entries: 0,
        ..gateway::policy::PolicyOptions::default()
    };
    let bundle = gateway::policy::PolicyBundle::load_with(policies, options)
        .map_err(|e| anyhow!("policies: {e}"))?;
    tokio::task::spawn_blocking(move || {
        let input = gateway::policy::sample_input(domain);
        mean_us(Duration::from_millis(500), || {
            bundle.evaluate(domain, &input).allow
        })
    })
    .await?
}

/// The floor of a request that needs `signatures` signature checks, each over
/// `signed_bytes` (what the holder signed: the presentation as sent, whose every byte the
/// check hashes), and one decision.
pub(super) async fn request_floor(
    policies: &Path,
    domain: &'static str,
    signatures: usize,
    signed_bytes: usize,
    measured_per_second: f64,
) -> anyhow::Result<Floor> {
    let sig = ed25519_verify_us(signed_bytes)?;
    let decision = decision_us(policies, domain).await?;
    let per_request = signatures as f64 * sig + decision;
    let cores = cores();
    let per_second = cores as f64 * 1e6 / per_request;
    Ok(Floor {
        made_of: format!(
            "{signatures} Ed25519 verification{} of {signed_bytes} bytes + one {domain} decision",
            if signatures == 1 { "" } else { "s" }
        ),
        per_request_us: per_request,
        cores,
        per_second,
        ratio: measured_per_second / per_second,
        parts_us: BTreeMap::from([
            ("ed25519_verify".to_string(), sig),
            (format!("{domain}_decision"), decision),
        ]),
    })
}
